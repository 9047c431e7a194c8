//! The Comfy API v2 part of `GET /openapi.json`: one operation per row of [`ROUTES`], with its
//! statuses and error codes from the table, and the contract's schemas (`V2Job`, `V2Asset`,
//! `V2Error`...). `crate::openapi` merges it into the gateway's document; `tests/openapi.rs`
//! checks the two against the table.

use serde_json::{Map, Value, json};

use super::{ROUTES, Route};

/// The document's operation id of a v2 route: the contract's, prefixed `v2` so it cannot
/// collide with the gateway's own (`getJob` is both).
pub fn operation_id(route: &Route) -> String {
    let mut chars = route.operation_id.chars();
    let first = chars.next().map(|c| c.to_ascii_uppercase());
    format!(
        "v2{}{}",
        first.map(String::from).unwrap_or_default(),
        chars.as_str()
    )
}

/// `paths` entries for every v2 route.
pub fn paths() -> Map<String, Value> {
    let mut paths = Map::new();
    for route in ROUTES {
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        entry[route.method.to_ascii_lowercase()] = operation(route);
    }
    paths
}

fn schema(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn operation(route: &Route) -> Value {
    let mut op = json!({
        "operationId": operation_id(route),
        "x-contract-operation-id": route.operation_id,
        "summary": route.summary,
        "tags": ["comfy-api-v2"],
        "responses": responses(route),
    });
    let mut parameters: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    match route.operation_id {
        "postJobs" | "postAssets" => parameters.push(json!({
            "name": "Idempotency-Key", "in": "header", "required": false,
            "schema": {"type": "string", "maxLength": 255},
            "description": "Stripe's rules: the same key and body replay the recorded answer \
                (Idempotency-Replayed: true); another body is 422 idempotency_key_reuse; a \
                retry while the first is answered is 409 idempotency_conflict. Kept 24 h."})),
        "listJobs" => parameters.extend([
            json!({"name": "status", "in": "query", "schema": {"type": "string"},
                   "description": "Comma-separated statuses to keep."}),
            json!({"name": "metadata", "in": "query", "style": "deepObject", "explode": true,
                   "schema": {"type": "object", "additionalProperties": {"type": "string"}},
                   "description": "metadata[<key>]=<value>: keep jobs carrying every label."}),
            json!({"name": "limit", "in": "query",
                   "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 50}}),
            json!({"name": "cursor", "in": "query", "schema": {"type": "string"},
                   "description": "next_cursor of the previous page."}),
        ]),
        "getAssetContent" => parameters.push(json!({
            "name": "Range", "in": "header", "required": false, "schema": {"type": "string"},
            "description": "One byte range, e.g. bytes=0-1048575."})),
        _ => {}
    }
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    match route.operation_id {
        "postJobs" => {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {
                "schema": schema("V2JobRequest")}}});
        }
        "postAssets" => {
            op["requestBody"] = json!({"required": true, "content": {"multipart/form-data": {
                "schema": {"type": "object", "required": ["file"], "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "content_type": {"type": "string"}, "file_path": {"type": "string"},
                    "expected_hash": {"type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}}}}}}});
        }
        "assetFromHash" => {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {
                "schema": {"type": "object", "required": ["hash"], "properties": {
                    "hash": {"type": "string"}, "file_path": {"type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}}}}}}});
        }
        _ => {}
    }
    if route.public {
        op["security"] = json!([]);
    }
    op
}

/// The body of a success answer of `route`.
fn success(route: &Route, status: u16) -> Value {
    let json_body = |name: &str| json!({"application/json": {"schema": schema(name)}});
    let content = match route.operation_id {
        "getHealthV2" => json!({"application/json": {"schema": {"type": "object",
            "required": ["status"], "properties": {"status": {"const": "healthy"}}}}}),
        "postJobs" | "getJob" | "cancelJob" => json_body("V2Job"),
        "listJobs" => json_body("V2JobList"),
        "getJobWorkflow" => json_body("V2JobWorkflow"),
        "getJobEvents" => json!({"text/event-stream": {"schema": {"type": "string",
            "description": "event: status | progress | preview | output | log, data: the \
                matching V2*Event schema (progress: V2Progress, output: V2Output); no id: \
                lines; ends after the terminal status."}}}),
        "postAssets" | "assetFromHash" | "getAsset" => json_body("V2Asset"),
        "getAssetContent" => json!({"application/octet-stream": {"schema": {
            "type": "string", "format": "binary"}}}),
        _ => Value::Null,
    };
    let mut answer = json!({ "description": description(route, status) });
    if !content.is_null() && status != 204 {
        answer["content"] = content;
    }
    if route.operation_id == "postJobs" {
        answer["headers"] = json!({"Idempotency-Replayed": {"schema": {"type": "boolean"},
            "description": "true when the answer was recorded for an earlier request with the \
                same Idempotency-Key and body."}});
    }
    answer
}

fn description(route: &Route, status: u16) -> &'static str {
    match (route.operation_id, status) {
        ("postJobs", 201) => "Saved and queued (or the recorded answer, replayed).",
        ("postAssets" | "assetFromHash", 201) => "A new asset over new bytes.",
        ("postAssets" | "assetFromHash", 200) => "An asset over bytes the gateway already had.",
        (_, 206) => "The requested range.",
        (_, 204) => "Deleted.",
        _ => "OK.",
    }
}

fn responses(route: &Route) -> Value {
    let mut responses = Map::new();
    for status in route.answers {
        responses.insert(status.to_string(), success(route, *status));
    }
    let mut by_status: std::collections::BTreeMap<u16, Vec<&str>> = Default::default();
    for (status, code) in route.error_codes() {
        by_status.entry(status).or_default().push(code);
    }
    for (status, codes) in by_status {
        let mut answer = json!({
            "description": codes.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "),
            "content": {"application/json": {"schema": {"allOf": [
                schema("V2Error"),
                {"type": "object", "properties": {"error": {"type": "object",
                    "properties": {"code": {"enum": codes}}}}},
            ]}}},
        });
        if matches!(status, 409 | 429) {
            answer["headers"] = json!({"Retry-After": {"schema": {"type": "integer"},
                "description": "Seconds to wait before retrying."}});
        }
        responses.insert(status.to_string(), answer);
    }
    Value::Object(responses)
}

/// The v2 schemas (`components.schemas`).
pub fn schemas() -> Vec<(&'static str, Value)> {
    let string = json!({"type": "string"});
    let nullable_string = json!({"type": ["string", "null"]});
    let nullable_int = json!({"type": ["integer", "null"]});
    let time = json!({"type": "string", "format": "date-time"});
    let nullable_time = json!({"type": ["string", "null"], "format": "date-time"});
    let statuses = json!(super::view::STATUSES);
    vec![
        (
            "V2JobStatus",
            json!({"type": "string", "enum": statuses,
            "description": "queued → running → succeeded | failed | expired; a cancel moves a \
                job through canceling to canceled."}),
        ),
        (
            "V2Progress",
            json!({
            "type": "object", "required": ["value", "nodes_done", "nodes_total"],
            "description": "The same numbers /generate's progress event carries: value is its \
                percent / 100.",
            "properties": {
                "value": {"type": "number", "minimum": 0, "maximum": 1},
                "nodes_done": {"type": "integer"}, "nodes_total": {"type": "integer"},
                "current_node": nullable_string, "current_node_class": nullable_string,
                "step": nullable_int, "steps": nullable_int, "message": nullable_string}}),
        ),
        (
            "V2Output",
            json!({
            "type": "object",
            "required": ["node_id", "name", "type", "content_type", "size_bytes", "id", "hash",
                         "url", "url_expires_at"],
            "properties": {
                "node_id": string, "name": string,
                "type": {"enum": ["image", "video", "audio", "text", "file", "latent"]},
                "content_type": string, "size_bytes": {"type": "integer"},
                "id": {"type": "string", "description": "The asset id (GET /api/v2/assets/{id})."},
                "hash": nullable_string, "url": {"type": "string", "format": "uri"},
                "url_expires_at": time, "job_id": nullable_string}}),
        ),
        (
            "V2JobError",
            json!({
            "type": "object", "required": ["code", "message"],
            "properties": {"code": string, "message": string, "node_id": nullable_string,
                           "class_type": nullable_string, "traceback": nullable_string}}),
        ),
        (
            "V2Job",
            json!({
            "type": "object",
            "required": ["id", "status", "created_at", "started_at", "completed_at",
                         "expires_at", "queue_position", "progress", "outputs", "error", "urls"],
            "properties": {
                "id": string, "status": schema("V2JobStatus"),
                "created_at": time, "started_at": nullable_time, "completed_at": nullable_time,
                "expires_at": time, "queue_position": nullable_int,
                "progress": {"oneOf": [schema("V2Progress"), {"type": "null"}]},
                "outputs": {"type": "array", "items": schema("V2Output")},
                "error": {"oneOf": [schema("V2JobError"), {"type": "null"}]},
                "metrics": {"type": "object", "additionalProperties": nullable_int},
                "metadata": {"type": "object", "additionalProperties": string},
                "priority": {"type": "integer"},
                "urls": {"type": "object", "required": ["self", "events", "cancel"],
                         "properties": {"self": string, "events": string, "cancel": string}}}}),
        ),
        (
            "V2JobRequest",
            json!({
            "type": "object", "required": ["workflow"],
            "properties": {
                "workflow": {"type": "object", "description": "The API-format graph; a \
                    core/ASSET reference ({\"__type\": \"core/ASSET\", \"info\": {\"id\"}}) \
                    may stand where a file name goes."},
                "metadata": {"type": "object", "maxProperties": 16,
                             "additionalProperties": {"type": "string", "maxLength": 256}},
                "priority": {"type": "integer", "default": 0,
                             "description": "Queue order: higher runs first."},
                "extra_data": {"type": "object", "minProperties": 1, "description": "Sent to \
                    ComfyUI's /prompt (a partner node's api_key_comfy_org); never stored."}}}),
        ),
        (
            "V2JobList",
            json!({
            "type": "object", "required": ["jobs"],
            "properties": {"jobs": {"type": "array", "items": schema("V2Job")},
                           "next_cursor": {"type": "string",
                                           "description": "Absent on the last page."}}}),
        ),
        (
            "V2JobWorkflow",
            json!({
            "type": "object", "required": ["workflow", "format"],
            "properties": {"workflow": {"type": "object"}, "format": {"enum": ["api", "save"]}}}),
        ),
        (
            "V2Asset",
            json!({
            "type": "object",
            "required": ["id", "hash", "size_bytes", "content_type", "created_at", "url",
                         "url_expires_at"],
            "properties": {"id": string, "hash": nullable_string,
                           "size_bytes": {"type": "integer"}, "content_type": string,
                           "file_path": nullable_string, "created_new": {"type": "boolean"},
                           "created_at": time, "url": {"type": "string", "format": "uri"},
                           "url_expires_at": time}}),
        ),
        (
            "V2Error",
            json!({
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["code", "message"],
                "properties": {"code": string, "message": string,
                               "details": {"type": ["object", "null"]}}}}}),
        ),
        (
            "V2StatusEvent",
            json!({"type": "object", "required": ["status"],
            "properties": {"status": schema("V2JobStatus"), "queue_position": nullable_int}}),
        ),
        (
            "V2PreviewEvent",
            json!({"type": "object",
            "required": ["node_id", "content_type", "data_base64"],
            "properties": {"node_id": string, "content_type": string, "data_base64": string}}),
        ),
        (
            "V2LogEvent",
            json!({"type": "object", "required": ["level", "message"],
            "properties": {"level": string, "message": string}}),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_with_its_statuses() {
        let paths = paths();
        for route in ROUTES {
            let op = &paths[route.path][route.method.to_ascii_lowercase()];
            for status in route
                .answers
                .iter()
                .chain(route.error_codes().iter().map(|(s, _)| s))
            {
                assert!(
                    op["responses"].get(status.to_string()).is_some(),
                    "{}",
                    route.path
                );
            }
        }
        assert_eq!(operation_id(&ROUTES[1]), "v2PostJobs");
    }
}
