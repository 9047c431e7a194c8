//! The Comfy API v2 response schemas the gateway must satisfy, written out for the tests (the
//! contract's `Job`, `Progress`, `Output`, `JobError`, `JobUrls`, `ErrorEnvelope` and the SSE
//! payloads), and a validator for the small JSON Schema subset they use: `type` (with
//! `nullable`), `enum`, `required`, `properties`, `additionalProperties` (a schema),
//! `items`, `minimum`/`maximum`, `format: date-time`/`uri`.

use serde_json::{Value, json};

/// The contract's job statuses.
pub const JOB_STATUSES: [&str; 7] = [
    "queued",
    "running",
    "succeeded",
    "canceling",
    "canceled",
    "failed",
    "expired",
];

/// A named schema of the contract.
pub fn schema(name: &str) -> Value {
    let string = json!({"type": "string"});
    let nullable_string = json!({"type": "string", "nullable": true});
    let nullable_int = json!({"type": "integer", "nullable": true});
    let time = json!({"type": "string", "format": "date-time"});
    match name {
        "JobStatus" => json!({"type": "string", "enum": JOB_STATUSES}),
        "Progress" => json!({
            "type": "object",
            "required": ["value", "nodes_done", "nodes_total"],
            "properties": {
                "value": {"type": "number", "minimum": 0, "maximum": 1},
                "nodes_done": {"type": "integer"},
                "nodes_total": {"type": "integer"},
                "current_node": nullable_string,
                "current_node_class": nullable_string,
                "step": nullable_int,
                "steps": nullable_int,
                "message": nullable_string,
            }
        }),
        "Output" => json!({
            "type": "object",
            "required": ["node_id", "name", "type", "content_type", "size_bytes", "id", "hash",
                         "url", "url_expires_at"],
            "properties": {
                "node_id": string, "name": string,
                "type": {"type": "string", "enum": ["image", "video", "audio", "text", "file", "latent"]},
                "content_type": string,
                "size_bytes": {"type": "integer"},
                "id": string,
                "hash": nullable_string,
                "url": {"type": "string", "format": "uri"},
                "url_expires_at": time,
                "job_id": nullable_string,
            }
        }),
        "Asset" => json!({
            "type": "object",
            "required": ["id", "hash", "size_bytes", "content_type", "created_at", "url",
                         "url_expires_at"],
            "properties": {
                "id": string,
                "hash": nullable_string,
                "size_bytes": {"type": "integer"},
                "content_type": string,
                "file_path": nullable_string,
                "created_new": {"type": "boolean"},
                "created_at": time,
                "url": {"type": "string", "format": "uri"},
                "url_expires_at": time,
                "expires_at": {"type": "string", "format": "date-time", "nullable": true},
                "job_id": nullable_string,
            }
        }),
        "JobError" => json!({
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": string, "message": string,
                "node_id": nullable_string, "class_type": nullable_string,
                "traceback": nullable_string,
            }
        }),
        "JobUrls" => json!({
            "type": "object",
            "required": ["self", "events", "cancel"],
            "properties": {"self": string, "events": string, "cancel": string}
        }),
        "Job" => json!({
            "type": "object",
            "required": ["id", "status", "created_at", "started_at", "completed_at", "expires_at",
                         "queue_position", "progress", "outputs", "error", "urls"],
            "properties": {
                "id": string,
                "status": schema("JobStatus"),
                "created_at": time,
                "started_at": {"type": "string", "format": "date-time", "nullable": true},
                "completed_at": {"type": "string", "format": "date-time", "nullable": true},
                "expires_at": time,
                "queue_position": nullable_int,
                "progress": nullable(schema("Progress")),
                "outputs": {"type": "array", "items": schema("Output")},
                "error": nullable(schema("JobError")),
                "metrics": {"type": "object", "additionalProperties": nullable_int},
                "metadata": {"type": "object", "additionalProperties": string},
                "urls": schema("JobUrls"),
            }
        }),
        "JobList" => json!({
            "type": "object",
            "required": ["jobs"],
            "properties": {
                "jobs": {"type": "array", "items": schema("Job")},
                "next_cursor": string,
            }
        }),
        "JobWorkflow" => json!({
            "type": "object",
            "required": ["workflow", "format"],
            "properties": {"workflow": {"type": "object"}, "format": {"type": "string", "enum": ["save", "api"]}}
        }),
        "ErrorEnvelope" => json!({
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": string, "message": string,
                    "details": {"type": "object", "nullable": true},
                }
            }}
        }),
        "StatusEvent" => json!({
            "type": "object",
            "required": ["status"],
            "properties": {"status": schema("JobStatus"), "queue_position": nullable_int}
        }),
        "PreviewEvent" => json!({
            "type": "object",
            "required": ["node_id", "content_type", "data_base64"],
            "properties": {"node_id": string, "content_type": string, "data_base64": string}
        }),
        "LogEvent" => json!({
            "type": "object",
            "required": ["level", "message"],
            "properties": {"level": string, "message": string}
        }),
        other => panic!("no schema {other}"),
    }
}

/// The schema of an SSE event's data, by event name.
pub fn event_schema(event: &str) -> Value {
    match event {
        "status" => schema("StatusEvent"),
        "progress" => schema("Progress"),
        "preview" => schema("PreviewEvent"),
        "output" => schema("Output"),
        "log" => schema("LogEvent"),
        other => panic!("the contract has no {other:?} event"),
    }
}

fn nullable(mut schema: Value) -> Value {
    schema["nullable"] = json!(true);
    schema
}

/// Panics, naming the path and the rule, unless `value` satisfies the named schema.
pub fn assert_valid(name: &str, value: &Value) {
    let mut problems = Vec::new();
    check(&schema(name), value, "$", &mut problems);
    assert!(
        problems.is_empty(),
        "not a valid {name}: {problems:?}\n{value:#}"
    );
}

/// Like [`assert_valid`] for an SSE event's data.
pub fn assert_valid_event(event: &str, data: &Value) {
    let mut problems = Vec::new();
    check(&event_schema(event), data, "$", &mut problems);
    assert!(
        problems.is_empty(),
        "not a valid {event} event: {problems:?}\n{data:#}"
    );
}

fn check(schema: &Value, value: &Value, path: &str, problems: &mut Vec<String>) {
    if value.is_null() {
        if schema["nullable"] != json!(true) {
            problems.push(format!("{path}: null but not nullable"));
        }
        return;
    }
    if let Some(kind) = schema["type"].as_str() {
        let ok = match kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        if !ok {
            problems.push(format!("{path}: expected {kind}, got {value}"));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            problems.push(format!("{path}: {value} is not one of {allowed:?}"));
        }
    }
    if let Some(n) = value.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|min| n < min) {
            problems.push(format!("{path}: {n} below the minimum"));
        }
        if schema["maximum"].as_f64().is_some_and(|max| n > max) {
            problems.push(format!("{path}: {n} above the maximum"));
        }
    }
    if let Some(text) = value.as_str() {
        match schema["format"].as_str() {
            Some("date-time") if !looks_like_date_time(text) => {
                problems.push(format!("{path}: {text:?} is not an RFC 3339 date-time"));
            }
            Some("uri") if !text.contains("://") => {
                problems.push(format!("{path}: {text:?} is not an absolute URI"));
            }
            _ => {}
        }
    }
    if let Some(object) = value.as_object() {
        for field in schema["required"].as_array().into_iter().flatten() {
            let field = field.as_str().unwrap_or_default();
            if !object.contains_key(field) {
                problems.push(format!("{path}: missing required {field}"));
            }
        }
        let properties = schema["properties"].as_object();
        for (key, item) in object {
            let sub = format!("{path}.{key}");
            match properties.and_then(|p| p.get(key)) {
                Some(property) => check(property, item, &sub, problems),
                None => {
                    if schema["additionalProperties"].is_object() {
                        check(&schema["additionalProperties"], item, &sub, problems);
                    }
                }
            }
        }
    }
    if let (Some(items), Some(schema)) = (value.as_array(), schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(schema, item, &format!("{path}[{i}]"), problems);
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
fn looks_like_date_time(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b't')
        && b[13] == b':'
        && b[16] == b':'
        && (text.ends_with('Z') || text.ends_with('z') || text[19..].contains(['+', '-']))
}

#[test]
fn the_validator_refuses_what_the_contract_refuses() {
    let mut problems = Vec::new();
    check(
        &schema("Progress"),
        &json!({"value": 1.5, "nodes_done": 1}),
        "$",
        &mut problems,
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_valid(
        "ErrorEnvelope",
        &json!({"error": {"code": "x", "message": "y", "details": null}}),
    );
}
