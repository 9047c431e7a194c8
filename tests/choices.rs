//! Combo parameters (checkpoint, sampler, scheduler) offer what ComfyUI has installed, read from
//! its `/object_info`; a request naming something else is refused before anything is queued.

mod common;

use comfyui_sim::{ComfySim, SimOptions};
use common::harness::{Harness, Options};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

const SIM_CHECKPOINTS: [&str; 2] = [
    "v1-5-pruned-emaonly.safetensors",
    "sd_xl_base_1.0.safetensors",
];

/// A ComfyUI that only answers `/object_info/{class}`, with checkpoints and samplers that a test
/// can change, and counts `POST /prompt` (it never accepts one).
struct FakeObjectInfo {
    server: Arc<tiny_http::Server>,
    url: String,
    checkpoints: Arc<Mutex<Vec<String>>>,
    prompts: Arc<Mutex<usize>>,
    /// `/object_info` requests received.
    reads: Arc<Mutex<usize>>,
    /// While true, `/object_info` answers 500.
    broken: Arc<Mutex<bool>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeObjectInfo {
    fn start(checkpoints: &[&str]) -> FakeObjectInfo {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind"));
        let port = server.server_addr().to_ip().expect("tcp").port();
        let checkpoints = Arc::new(Mutex::new(
            checkpoints
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>(),
        ));
        let prompts = Arc::new(Mutex::new(0));
        let reads = Arc::new(Mutex::new(0));
        let broken = Arc::new(Mutex::new(false));
        let (serving, list, count) = (
            Arc::clone(&server),
            Arc::clone(&checkpoints),
            Arc::clone(&prompts),
        );
        let (read_count, is_broken) = (Arc::clone(&reads), Arc::clone(&broken));
        let thread = std::thread::spawn(move || {
            while let Ok(mut request) = serving.recv() {
                let mut body = Vec::new();
                let _ = std::io::Read::read_to_end(request.as_reader(), &mut body);
                let url = request.url().to_string();
                if url.starts_with("/object_info") {
                    *read_count.lock().expect("reads") += 1;
                    if *is_broken.lock().expect("broken") {
                        let _ = request.respond(
                            tiny_http::Response::from_string("boom").with_status_code(500),
                        );
                        continue;
                    }
                }
                let answer = match url.as_str() {
                    "/object_info/CheckpointLoaderSimple" => {
                        let list = list.lock().expect("list").clone();
                        // The newer COMBO form, unlike the simulator's plain list.
                        json!({"CheckpointLoaderSimple": {"input": {"required": {
                            "ckpt_name": ["COMBO", {"options": list}]}}}})
                    }
                    "/object_info/KSampler" => json!({"KSampler": {"input": {"required": {
                        "sampler_name": [["euler", "dpmpp_2m"]],
                        "scheduler": [["normal", "karras"]],
                        "seed": ["INT", {"min": 0}]}}}}),
                    "/prompt" => {
                        *count.lock().expect("count") += 1;
                        json!({"error": {"type": "no", "message": "fake", "details": ""},
                               "node_errors": {}})
                    }
                    _ => json!({}),
                };
                let status = if url == "/prompt" { 400 } else { 200 };
                let response =
                    tiny_http::Response::from_string(answer.to_string()).with_status_code(status);
                let _ = request.respond(response);
            }
        });
        FakeObjectInfo {
            server,
            url: format!("http://127.0.0.1:{port}"),
            checkpoints,
            prompts,
            reads,
            broken,
            thread: Some(thread),
        }
    }

    fn set_checkpoints(&self, checkpoints: &[&str]) {
        *self.checkpoints.lock().expect("list") =
            checkpoints.iter().map(|c| c.to_string()).collect();
    }
}

impl Drop for FakeObjectInfo {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn backends(urls: &[&str]) -> Options {
    Options {
        vars: vec![("COMFYUI_URL", urls.join(","))],
        ..Options::default()
    }
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn prompts_sent(h: &Harness) -> usize {
    h.sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/prompt")
        .count()
}

#[test]
fn the_schema_offers_what_the_simulator_has_installed() {
    let h = Harness::start();
    let (status, schema) = h.get_json("/workflows/txt2img");
    assert_eq!(status, 200);
    let params = &schema["parameters"];
    assert_eq!(strings(&params["checkpoint"]["choices"]), SIM_CHECKPOINTS);
    assert_eq!(params["sampler"]["choices"][0], "euler");
    assert!(strings(&params["scheduler"]["choices"]).contains(&"karras"));
    for plain in ["prompt", "negative_prompt", "steps", "seed"] {
        assert!(
            params[plain].get("choices").is_none(),
            "{plain} is no combo"
        );
    }
    assert!(schema.get("choices_unavailable").is_none());
    // The list of all templates carries the same choices, and invert has none.
    let (_, list) = h.get_json("/workflows");
    let listed = list["workflows"]
        .as_array()
        .and_then(|w| w.iter().find(|t| t["name"] == "txt2img"))
        .expect("txt2img listed");
    assert_eq!(listed, &schema);
    // The simulator was asked only for the classes the templates need.
    let asked: Vec<String> = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/object_info"))
        .map(|r| r.path.clone())
        .collect();
    assert!(
        asked.iter().all(|p| p.starts_with("/object_info/")),
        "{asked:?}"
    );
}

#[test]
fn a_model_that_is_not_installed_is_refused_before_anything_is_queued() {
    let h = Harness::start();
    let request = json!({"workflow": "txt2img", "prompt": "a fox", "steps": 500,
                         "checkpoint": "missing.safetensors"});
    for path in ["/generate", "/jobs"] {
        let (status, body) = h.post_json(path, &request);
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"]["code"], "invalid_params");
        let problem = body["error"]["details"]["fields"]["checkpoint"]
            .as_str()
            .expect("the checkpoint is named");
        assert!(
            problem.contains("\"missing.safetensors\" is not installed"),
            "{problem}"
        );
        for installed in SIM_CHECKPOINTS {
            assert!(problem.contains(installed), "{problem}");
        }
        assert_eq!(
            strings(&body["error"]["details"]["installed"]["checkpoint"]),
            SIM_CHECKPOINTS
        );
        // Other bad fields are reported in the same answer.
        assert!(
            body["error"]["details"]["fields"]["steps"].is_string(),
            "{body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("checkpoint")
        );
    }
    assert_eq!(prompts_sent(&h), 0, "nothing reached ComfyUI");
    // An installed one goes through.
    let ok = json!({"workflow": "txt2img", "prompt": "a fox", "steps": 2, "width": 64,
                    "height": 64, "checkpoint": "sd_xl_base_1.0.safetensors"});
    let (status, body) = h.post_json("/generate", &ok);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn refresh_reads_the_backends_again() {
    let fake = FakeObjectInfo::start(&["a.safetensors"]);
    let h = Harness::with(backends(&[&fake.url]));
    let choices = |h: &Harness| {
        let (_, schema) = h.get_json("/workflows/txt2img");
        strings(&schema["parameters"]["checkpoint"]["choices"])
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(choices(&h), ["a.safetensors"]);
    fake.set_checkpoints(&["a.safetensors", "b.safetensors"]);
    assert_eq!(choices(&h), ["a.safetensors"], "cached until refreshed");
    let (status, body) = h.post_json("/workflows/refresh", &json!({}));
    assert_eq!(status, 200);
    assert_eq!(body, json!({"backends": {fake.url.clone(): null}}));
    assert_eq!(choices(&h), ["a.safetensors", "b.safetensors"]);
    // What the backend monitor calls when a backend restarts.
    fake.set_checkpoints(&["c.safetensors"]);
    h.app
        .installed
        .refresh(&fake.url)
        .expect("the fake answers");
    assert_eq!(choices(&h), ["c.safetensors"]);
    assert!(h.app.installed.refresh("http://127.0.0.1:1").is_err());
    // The default checkpoint is no longer installed: a request relying on it is told so.
    let (status, body) = h.post_json("/jobs", &json!({"prompt": "a fox"}));
    assert_eq!(status, 400, "{body}");
    let problem = body["error"]["details"]["fields"]["checkpoint"]
        .as_str()
        .unwrap_or_default();
    assert!(problem.starts_with("the default"), "{problem}");
    assert!(problem.contains("c.safetensors"), "{problem}");
    assert_eq!(*fake.prompts.lock().expect("count"), 0);
}

#[test]
fn with_two_backends_the_choices_are_what_both_have() {
    let sim = ComfySim::start(SimOptions::default()).expect("a second simulator");
    let fake = FakeObjectInfo::start(&["v1-5-pruned-emaonly.safetensors", "other.safetensors"]);
    let h = Harness::with(backends(&[&sim.url(), &fake.url]));
    let (_, schema) = h.get_json("/workflows/txt2img");
    let checkpoint = &schema["parameters"]["checkpoint"];
    assert_eq!(
        strings(&checkpoint["choices"]),
        ["v1-5-pruned-emaonly.safetensors"]
    );
    assert_eq!(
        checkpoint["partial_choices"],
        json!({"sd_xl_base_1.0.safetensors": [sim.url()], "other.safetensors": [fake.url]})
    );
    assert_eq!(
        strings(&schema["parameters"]["sampler"]["choices"]),
        ["euler", "dpmpp_2m"]
    );
    // The OpenAPI document offers the same values.
    let (_, doc) = h.get_json("/openapi.json");
    let documented = &doc["components"]["schemas"]["Workflow_txt2img"]["properties"]["checkpoint"];
    assert_eq!(documented["enum"], checkpoint["choices"]);
    assert_eq!(
        documented["x-partial-choices"],
        checkpoint["partial_choices"]
    );
    // A model only one backend has is refused, saying where it is.
    let request = json!({"prompt": "a fox", "checkpoint": "sd_xl_base_1.0.safetensors"});
    let (status, body) = h.post_json("/jobs", &request);
    assert_eq!(status, 400, "{body}");
    let problem = body["error"]["details"]["fields"]["checkpoint"]
        .as_str()
        .unwrap_or_default();
    assert!(
        problem.contains(&format!("installed only on {}", sim.url())),
        "{problem}"
    );
    let sent = sim
        .requests()
        .iter()
        .filter(|r| r.path == "/prompt")
        .count();
    assert_eq!(sent + *fake.prompts.lock().expect("count"), 0);
}

#[test]
fn a_backend_that_cannot_be_read_leaves_free_text_and_says_so() {
    let refusing = common::RefusingPort::new();
    let dead = refusing.url();
    // Start-up does not wait for ComfyUI: the gateway serves though no backend answers.
    let h = Harness::with(backends(&[&dead]));
    let (status, schema) = h.get_json("/workflows/txt2img");
    assert_eq!(status, 200);
    assert!(schema["parameters"]["checkpoint"].get("choices").is_none());
    assert!(schema["choices_unavailable"][&dead].is_string(), "{schema}");
    assert!(
        schema["choices_note"]
            .as_str()
            .is_some_and(|n| n.contains("free text"))
    );
    // Any value passes the check; the request then fails for the real reason.
    let request = json!({"prompt": "a fox", "checkpoint": "whatever.safetensors"});
    let (status, body) = h.post_json("/jobs", &request);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "comfyui_unavailable");
    // The refresh route reports why.
    let (status, body) = h.post_json("/workflows/refresh", &json!({}));
    assert_eq!(status, 200);
    assert!(body["backends"][&dead].is_string(), "{body}");
}

#[test]
fn a_failed_read_is_not_repeated_by_every_request_until_refreshed() {
    let fake = FakeObjectInfo::start(&["a.safetensors"]);
    *fake.broken.lock().expect("broken") = true;
    let h = Harness::with(backends(&[&fake.url]));
    let reads = || *fake.reads.lock().expect("reads");
    let (_, schema) = h.get_json("/workflows/txt2img");
    assert!(
        schema["choices_unavailable"][&fake.url]
            .as_str()
            .is_some_and(|why| why.contains("500")),
        "{schema}"
    );
    let after_first = reads();
    assert_eq!(after_first, 1, "the first failing class ends the read");
    for _ in 0..3 {
        h.get_json("/workflows/txt2img");
    }
    assert_eq!(reads(), after_first, "not asked again within RETRY_AFTER");
    *fake.broken.lock().expect("broken") = false;
    let (_, body) = h.post_json("/workflows/refresh", &json!({}));
    assert_eq!(body["backends"][&fake.url], Value::Null);
    let (_, schema) = h.get_json("/workflows/txt2img");
    assert_eq!(
        strings(&schema["parameters"]["checkpoint"]["choices"]),
        ["a.safetensors"]
    );
    assert!(schema.get("choices_unavailable").is_none());
}
