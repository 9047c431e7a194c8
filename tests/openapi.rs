//! `GET /openapi.json` describes exactly what the router serves: every route, method, status and
//! error code in one is in the other, and what the router really answers is documented.

mod common;

use comfyui_gateway::api::{COMMON_FIELDS, ErrorCode};
use comfyui_gateway::openapi::template_component;
use comfyui_gateway::server::v2;
use comfyui_gateway::server::{ENDPOINTS, Endpoint, ROUTER_ERRORS};
use common::harness::{Harness, Options, agent};
use serde_json::{Value, json};
use std::collections::BTreeSet;

fn document(h: &Harness) -> Value {
    let (status, doc) = h.get_json("/openapi.json");
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    doc
}

fn operation<'d>(doc: &'d Value, endpoint: &Endpoint) -> &'d Value {
    &doc["paths"][endpoint.path][endpoint.method.to_ascii_lowercase()]
}

/// The codes a documented response allows, from its `allOf` narrowing.
fn documented_codes(response: &Value) -> BTreeSet<String> {
    response["content"]["application/json"]["schema"]["allOf"][1]["properties"]["error"]
        ["properties"]["code"]["enum"]
        .as_array()
        .map(|codes| {
            codes
                .iter()
                .filter_map(|c| c.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_document_and_the_router_table_agree() {
    let h = Harness::start();
    let doc = document(&h);
    // Every row is documented with exactly its statuses and, per error status, its codes.
    for endpoint in ENDPOINTS {
        let op = operation(&doc, endpoint);
        let name = format!("{} {}", endpoint.method, endpoint.path);
        assert_eq!(op["operationId"], endpoint.operation_id, "{name}");
        let documented: BTreeSet<u16> = op["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{name} has responses"))
            .keys()
            .map(|s| s.parse().expect("a numeric status"))
            .collect();
        let served: BTreeSet<u16> = endpoint.statuses().into_iter().collect();
        assert_eq!(documented, served, "{name}");
        for code in endpoint.error_codes() {
            let response = &op["responses"][code.http_status().to_string()];
            assert!(
                documented_codes(response).contains(code.as_str()),
                "{name}: {code} is not documented"
            );
        }
        for (status, response) in op["responses"].as_object().expect("responses") {
            for code in documented_codes(response) {
                assert!(
                    endpoint
                        .error_codes()
                        .iter()
                        .any(|c| c.as_str() == code && c.http_status().to_string() == *status),
                    "{name}: documents {code} under {status}, which the table does not list"
                );
            }
        }
        assert_eq!(
            op.get("requestBody").is_some(),
            endpoint.request.is_some(),
            "{name}"
        );
    }
    // Nothing is documented that the table does not serve.
    for (path, methods) in doc["paths"].as_object().expect("paths") {
        for method in methods.as_object().expect("methods").keys() {
            assert!(
                ENDPOINTS
                    .iter()
                    .any(|e| e.path == path && e.method.eq_ignore_ascii_case(method))
                    || v2::ROUTES
                        .iter()
                        .any(|r| r.path == path && r.method.eq_ignore_ascii_case(method)),
                "{method} {path} is documented but not routed"
            );
        }
    }
    // Every error code is in the document with its status, and something can answer it.
    let schema = &doc["components"]["schemas"]["ErrorCode"];
    let listed: Vec<&str> = schema["enum"]
        .as_array()
        .expect("codes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, all);
    for code in ErrorCode::ALL {
        assert_eq!(schema["x-http-status"][code.as_str()], code.http_status());
        let answered = ROUTER_ERRORS.contains(&code)
            || ENDPOINTS.iter().any(|e| e.error_codes().contains(&code));
        assert!(answered, "{code} is answered by nothing");
    }
    let router: Vec<&str> = ROUTER_ERRORS.iter().map(|c| c.as_str()).collect();
    assert_eq!(doc["x-router-errors"], json!(router));
}

#[test]
fn the_v2_routes_are_documented_as_their_table_says() {
    let h = Harness::start();
    let doc = document(&h);
    let mut ids = BTreeSet::new();
    for route in v2::ROUTES {
        let name = format!("{} {}", route.method, route.path);
        let op = &doc["paths"][route.path][route.method.to_ascii_lowercase()];
        assert_eq!(op["x-contract-operation-id"], route.operation_id, "{name}");
        let id = op["operationId"]
            .as_str()
            .expect("an operation id")
            .to_string();
        assert!(
            ENDPOINTS.iter().all(|e| e.operation_id != id),
            "{name}: {id} is also a gateway operation"
        );
        assert!(ids.insert(id), "{name}: operation ids are unique");
        let documented: BTreeSet<u16> = op["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .map(|s| s.parse().expect("a numeric status"))
            .collect();
        let served: BTreeSet<u16> = route
            .answers
            .iter()
            .copied()
            .chain(route.error_codes().iter().map(|(status, _)| *status))
            .collect();
        assert_eq!(documented, served, "{name}");
        for (status, code) in route.error_codes() {
            let response = &op["responses"][status.to_string()];
            assert!(
                documented_codes(response).contains(code),
                "{name}: {code} is not documented under {status}"
            );
        }
    }
}

#[test]
fn every_reference_resolves() {
    let h = Harness::start();
    let doc = document(&h);
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 20, "the document uses references");
    for reference in refs {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{reference} is local"));
        assert!(doc.pointer(pointer).is_some(), "{reference} resolves");
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(target)) => out.push(target.clone()),
                    _ => collect_refs(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[test]
fn each_template_has_its_own_request_schema_from_get_workflows() {
    let h = Harness::start();
    let doc = document(&h);
    let schemas = &doc["components"]["schemas"];
    let mapping = &schemas["TemplateRequest"]["discriminator"]["mapping"];
    let (_, list) = h.get_json("/workflows");
    let templates = list["workflows"].as_array().expect("templates");
    assert_eq!(mapping.as_object().map(|m| m.len()), Some(templates.len()));
    for template in templates {
        let name = template["name"].as_str().expect("name");
        let component = template_component(name);
        assert_eq!(
            mapping[name],
            format!("#/components/schemas/{component}"),
            "{name}"
        );
        let request = &schemas[&component];
        assert_eq!(request["properties"]["workflow"]["const"], name);
        assert_eq!(request["additionalProperties"], false);
        let params = template["parameters"].as_object().expect("parameters");
        for (param, spec) in params {
            let documented = &request["properties"][param];
            assert!(documented.is_object(), "{name}.{param} is documented");
            if let Some(default) = spec.get("default").filter(|d| *d != "random") {
                assert_eq!(&documented["default"], default, "{name}.{param}");
            }
            for (ours, json_schema) in [("min", "minimum"), ("max", "maximum")] {
                assert_eq!(
                    spec.get(ours),
                    documented.get(json_schema),
                    "{name}.{param}"
                );
            }
            let required = request["required"]
                .as_array()
                .is_some_and(|r| r.iter().any(|p| p == param));
            assert_eq!(required, spec["required"] == true, "{name}.{param}");
        }
        for field in COMMON_FIELDS {
            assert!(
                request["properties"][field.name].is_object(),
                "{name} documents {}",
                field.name
            );
            // The gateway's own spelling, which no template parameter can take.
            assert!(
                request["properties"]["options"]["properties"][field.name].is_object(),
                "{name} documents options.{}",
                field.name
            );
        }
    }
    // Installed values are the enum of combo parameters.
    let checkpoint = &schemas["Workflow_txt2img"]["properties"]["checkpoint"];
    let (_, txt2img) = h.get_json("/workflows/txt2img");
    assert_eq!(
        checkpoint["enum"],
        txt2img["parameters"]["checkpoint"]["choices"]
    );
    // Every event of a stream has its schema, and the common fields carry their types.
    for event in ["queued", "progress", "complete", "error", "cancelled"] {
        let frames = schemas["SseEvent"]["oneOf"].as_array().expect("frames");
        assert!(
            frames
                .iter()
                .any(|f| f["properties"]["event"]["const"] == event)
        );
    }
    let format = &schemas["CommonFields"]["properties"]["output_format"];
    assert_eq!(format["enum"], json!(["png", "jpeg", "webp"]));
    assert_eq!(
        schemas["CommonFields"]["properties"]["priority"]["default"],
        0
    );
}

/// Sends one request and returns the status and (for JSON answers) the error code.
fn call(h: &Harness, method: &str, path: &str, body: Option<&Value>) -> (u16, Option<String>) {
    let url = h.url(path);
    let agent = agent();
    let response = match (method, body) {
        ("GET", _) => agent.get(&url).call(),
        ("DELETE", _) => agent.delete(&url).call(),
        ("POST", Some(body)) => agent
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .send(body.to_string().as_bytes()),
        ("POST", None) => agent.post(&url).send_empty(),
        ("PUT", _) => agent.put(&url).send_empty(),
        _ => panic!("no such method in this test: {method}"),
    };
    let mut response = response.expect("the gateway answers");
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .unwrap_or_default();
    let code = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(String::from));
    (status, code)
}

/// Checks an answer against the document: its status is listed for the operation, and so is
/// its error code under that status.
fn assert_documented(doc: &Value, endpoint: &Endpoint, answer: (u16, Option<String>)) {
    let (status, code) = answer;
    let name = format!("{} {}", endpoint.method, endpoint.path);
    let response = &operation(doc, endpoint)["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{name} answered {status}, which is not documented"
    );
    if let Some(code) = code {
        if status >= 400 {
            assert!(
                documented_codes(response).contains(&code),
                "{name} answered {status} {code}, which is not documented"
            );
        }
    }
}

fn endpoint(method: &str, path: &str) -> &'static Endpoint {
    ENDPOINTS
        .iter()
        .find(|e| e.method == method && e.path == path)
        .unwrap_or_else(|| panic!("{method} {path} is routed"))
}

#[test]
fn what_the_router_answers_is_documented() {
    let h = Harness::start();
    let doc = document(&h);
    let unknown_job = "00000000-0000-4000-8000-000000000000";
    let invert = json!({"workflow": "invert", "width": 8, "height": 8});
    // A finished job to look at.
    let (status, created) = {
        let (status, body) = h.post_json("/jobs", &invert);
        (status, body)
    };
    assert_eq!(status, 202);
    let job_id = created["job_id"].as_str().expect("job id").to_string();
    let events = format!("/jobs/{job_id}/events");
    assert_documented(
        &doc,
        endpoint("GET", "/jobs/{id}/events"),
        call(&h, "GET", &events, None),
    );
    let (_, done) = h.get_json(&format!("/jobs/{job_id}"));
    let image_path = done["result"]["images"][0]["url"]
        .as_str()
        .and_then(|url| url.find("/images/").map(|at| url[at..].to_string()))
        .expect("a stored image");
    let cases: Vec<(&str, &str, String, Option<Value>)> = vec![
        ("GET", "/", "/".into(), None),
        ("GET", "/openapi.json", "/openapi.json".into(), None),
        ("GET", "/health", "/health".into(), None),
        ("GET", "/ready", "/ready".into(), None),
        ("GET", "/metrics", "/metrics".into(), None),
        ("GET", "/workflows", "/workflows".into(), None),
        (
            "POST",
            "/workflows/refresh",
            "/workflows/refresh".into(),
            None,
        ),
        (
            "GET",
            "/workflows/{name}",
            "/workflows/txt2img".into(),
            None,
        ),
        ("GET", "/workflows/{name}", "/workflows/nope".into(), None),
        (
            "POST",
            "/generate",
            "/generate".into(),
            Some(invert.clone()),
        ),
        (
            "POST",
            "/generate",
            "/generate".into(),
            Some(json!({"workflow": "nope"})),
        ),
        (
            "POST",
            "/generate",
            "/generate".into(),
            Some(json!({"workflow": "invert", "width": 0})),
        ),
        ("POST", "/jobs", "/jobs".into(), Some(invert.clone())),
        (
            "POST",
            "/jobs",
            "/jobs".into(),
            Some(json!({"output_format": "gif"})),
        ),
        ("GET", "/jobs/{id}", format!("/jobs/{job_id}"), None),
        ("GET", "/jobs/{id}", format!("/jobs/{unknown_job}"), None),
        ("DELETE", "/jobs/{id}", format!("/jobs/{job_id}"), None),
        ("DELETE", "/jobs/{id}", format!("/jobs/{unknown_job}"), None),
        (
            "GET",
            "/jobs/{id}/events",
            format!("/jobs/{unknown_job}/events"),
            None,
        ),
        ("GET", "/images/{job_id}/{file}", image_path, None),
        (
            "GET",
            "/images/{job_id}/{file}",
            format!("/images/{unknown_job}/0.png"),
            None,
        ),
    ];
    let mut covered = BTreeSet::new();
    for (method, pattern, path, body) in &cases {
        let row = endpoint(method, pattern);
        let answer = call(&h, method, path, body.as_ref());
        assert_documented(&doc, row, answer);
        covered.insert((row.method, row.path));
    }
    covered.insert(("GET", "/jobs/{id}/events"));
    for row in ENDPOINTS {
        assert!(
            covered.contains(&(row.method, row.path)),
            "{} {} is not exercised by this test",
            row.method,
            row.path
        );
    }
    // A method a path does not take is 405 naming exactly the table's methods for it.
    for path in ["/health", "/jobs/x", "/workflows/refresh", "/generate"] {
        let mut response = agent().put(&h.url(path)).send_empty().expect("answers");
        assert_eq!(response.status().as_u16(), 405, "{path}");
        let allow = response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response.body_mut().read_to_string().expect("body");
        assert!(body.contains("method_not_allowed"), "{body}");
        let pattern_matches = |pattern: &str| {
            let a: Vec<&str> = pattern.split('/').collect();
            let b: Vec<&str> = path.split('/').collect();
            a.len() == b.len() && a.iter().zip(&b).all(|(p, s)| p.starts_with('{') || p == s)
        };
        let expected: Vec<&str> = ENDPOINTS
            .iter()
            .filter(|e| pattern_matches(e.path))
            .map(|e| e.method)
            .collect();
        assert_eq!(allow, expected.join(", "), "{path}");
    }
    let (status, body) = h.get_json("/no/such/path");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[test]
fn with_api_keys_only_the_public_rows_answer_without_one() {
    let h = Harness::with(Options {
        vars: vec![("API_KEYS", "k1".into())],
        ..Options::default()
    });
    for row in ENDPOINTS {
        let path = row
            .path
            .replace("{id}", "x")
            .replace("{name}", "txt2img")
            .replace("{job_id}", "x")
            .replace("{file}", "0.png");
        let (status, code) = call(&h, row.method, &path, Some(&json!({})));
        if row.public {
            assert_eq!(status, 200, "{} {path}", row.method);
        } else {
            assert_eq!(
                (status, code.as_deref()),
                (401, Some("unauthorized")),
                "{} {path}",
                row.method
            );
        }
    }
    // The document says which operations need the key.
    let mut response = agent()
        .get(&h.url("/openapi.json"))
        .header("Authorization", "Bearer k1")
        .call()
        .expect("answers");
    let doc: Value =
        serde_json::from_str(&response.body_mut().read_to_string().expect("body")).expect("JSON");
    assert_eq!(
        doc["paths"]["/jobs"]["post"]["security"],
        json!([{"bearer": []}])
    );
    assert_eq!(doc["paths"]["/health"]["get"]["security"], json!([]));
}

#[test]
fn the_page_links_to_the_document() {
    let h = Harness::start();
    let mut response = agent().get(&h.url("/")).call().expect("the page");
    let page = response.body_mut().read_to_string().expect("text");
    assert!(page.contains("href=\"/openapi.json\""));
}
