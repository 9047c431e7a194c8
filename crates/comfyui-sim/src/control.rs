//! The simulator's own control endpoints, under `/sim/`, so that a running `comfyui-sim` (the
//! demo, a manual test) can be told to fail or slow down with curl. ComfyUI has no such paths,
//! so they never clash with its API.
//!
//! ```text
//! POST /sim/fail_next  {"failure": "execution_error", "node_id": "3", "message": "CUDA out of memory"}
//!                      {"failure": "execution_blocked", "node_id": "9", "message": "NSFW"}  a branch is blocked, the prompt goes on
//!                      {"failure": "crash_at", "step": 5}          the process "dies" at that step
//!                      {"failure": "close_socket_at", "step": 5}   websockets drop, the prompt goes on
//!                      {"failure": "validation_error"}             the next /prompt is refused
//! POST /sim/step_ms    {"ms": 500}                                 slower (or faster) sampler steps
//! POST /sim/previews   {"format": "jpeg"}                          sampler previews on ("png", "jpeg") or off (null)
//! ```

use serde_json::{Value, json};
use std::time::Duration;

use super::http::Reply;
use super::{Failure, PreviewFormat, Shared, lock};

/// Answers a `/sim/...` request, or `None` when the path is not one of them.
pub(super) fn route(shared: &Shared, path: &str, body: &[u8]) -> Option<Reply> {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let reply = match path {
        "/sim/fail_next" => match failure_from_json(&request) {
            Ok(failure) => {
                let armed = format!("{failure:?}");
                let mut state = shared.state();
                match failure {
                    Failure::ValidationError => state.reject_next = true,
                    other => state.exec_failure = Some(other),
                }
                Reply::json(200, &json!({ "armed": armed }))
            }
            Err(problem) => Reply::json(400, &json!({ "error": problem })),
        },
        "/sim/step_ms" => match request["ms"].as_u64() {
            Some(ms) => {
                *lock(&shared.step_delay) = Duration::from_millis(ms);
                Reply::json(200, &json!({ "step_ms": ms }))
            }
            None => Reply::json(400, &json!({ "error": "expected {\"ms\": N}" })),
        },
        "/sim/previews" => match request["format"].as_str() {
            Some("png") => set_previews(shared, Some(PreviewFormat::Png)),
            Some("jpeg") => set_previews(shared, Some(PreviewFormat::Jpeg)),
            None if request["format"].is_null() => set_previews(shared, None),
            _ => Reply::json(
                400,
                &json!({ "error": "expected {\"format\": \"png\" | \"jpeg\" | null}" }),
            ),
        },
        _ => return None,
    };
    Some(reply)
}

fn set_previews(shared: &Shared, format: Option<PreviewFormat>) -> Reply {
    *lock(&shared.previews) = format;
    Reply::json(
        200,
        &json!({ "previews": format.map(|f| format!("{f:?}")) }),
    )
}

/// Reads a [`Failure`] from its JSON form (see the module docs).
fn failure_from_json(request: &Value) -> Result<Failure, String> {
    let step = || {
        request["step"]
            .as_u64()
            .and_then(|s| u32::try_from(s).ok())
            .ok_or_else(|| "this failure needs \"step\": N".to_string())
    };
    match request["failure"].as_str() {
        Some("execution_error") => Ok(Failure::ExecutionError {
            node_id: request["node_id"].as_str().map(str::to_string),
            exception_type: request["exception_type"]
                .as_str()
                .unwrap_or("RuntimeError")
                .to_string(),
            message: request["message"]
                .as_str()
                .unwrap_or("simulated failure")
                .to_string(),
        }),
        Some("execution_blocked") => Ok(Failure::ExecutionBlocked {
            node_id: request["node_id"].as_str().map(str::to_string),
            message: request["message"]
                .as_str()
                .unwrap_or("blocked by the simulator")
                .to_string(),
        }),
        Some("crash_at") => Ok(Failure::CrashAt { step: step()? }),
        Some("close_socket_at") => Ok(Failure::CloseSocketAt { step: step()? }),
        Some("validation_error") => Ok(Failure::ValidationError),
        _ => Err(
            "\"failure\" must be execution_error, execution_blocked, crash_at, \
                  close_socket_at or validation_error"
                .to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_parse_from_json() {
        let parsed = failure_from_json(&json!({"failure": "crash_at", "step": 4}));
        assert_eq!(parsed, Ok(Failure::CrashAt { step: 4 }));
        let parsed = failure_from_json(&json!({"failure": "execution_error", "node_id": "3"}));
        assert!(
            matches!(parsed, Ok(Failure::ExecutionError { node_id: Some(ref n), .. }) if n == "3")
        );
        let parsed = failure_from_json(&json!({"failure": "execution_blocked", "message": "no"}));
        assert_eq!(
            parsed,
            Ok(Failure::ExecutionBlocked {
                node_id: None,
                message: "no".into()
            })
        );
        assert!(failure_from_json(&json!({"failure": "crash_at"})).is_err());
        assert!(failure_from_json(&json!({"failure": "meteor"})).is_err());
    }
}
