//! The one error type of the ComfyUI client's HTTP side.

use std::fmt;

/// Longest error body kept in [`ComfyError::Status`], in bytes: enough for any error message
/// ComfyUI writes, short enough for a log line.
pub(crate) const MAX_ERROR_BODY: usize = 2000;

/// Why a call to ComfyUI failed.
///
/// The variants separate what a caller treats differently: ComfyUI being away
/// ([`Unreachable`](Self::Unreachable): try another backend or report `comfyui_unavailable`),
/// ComfyUI refusing the graph ([`Rejected`](Self::Rejected): the client's fault, with ComfyUI's
/// explanation), and ComfyUI answering in a way it should not ([`Status`](Self::Status),
/// [`BadResponse`](Self::BadResponse)).
#[derive(Debug, Clone, PartialEq)]
pub enum ComfyError {
    /// No answer: connection refused, name not resolved, reset, or a timeout expired.
    Unreachable {
        /// The URL that was called.
        url: String,
        /// What the network said, e.g. `Connection refused (os error 111)`.
        reason: String,
    },
    /// `POST /prompt` answered 400: ComfyUI validated the graph and said no.
    Rejected {
        /// ComfyUI's `error.type`, e.g. `prompt_outputs_failed_validation`; empty if absent.
        error_type: String,
        /// ComfyUI's `error.message`, e.g. `Prompt outputs failed validation`.
        message: String,
        /// ComfyUI's `error.details`, e.g. `Node ID '#3'`; often empty.
        details: String,
        /// ComfyUI's `node_errors` as it sent them: node id → `{errors, dependent_outputs,
        /// class_type}`. `{}` when the fault is not with one node.
        node_errors: serde_json::Value,
        /// ComfyUI's `error.extra_info` (for `missing_node_type`: `node_id`, `class_type`);
        /// `{}` when absent. Boxed: it is rare, and keeps the error small.
        extra_info: Box<serde_json::Value>,
    },
    /// ComfyUI answered with a status other than 2xx (and, for `/prompt`, other than a readable
    /// 400).
    Status {
        /// The URL that was called.
        url: String,
        /// The HTTP status, e.g. 404.
        status: u16,
        /// The start of the response body (at most 2000 bytes, decoded lossily).
        body: String,
    },
    /// ComfyUI answered 2xx, but the body was not what its API promises.
    BadResponse {
        /// The URL that was called.
        url: String,
        /// What was wrong, e.g. `missing "prompt_id"`.
        reason: String,
    },
    /// The caller asked for something this client cannot send: an unusable base URL, an upload
    /// name that cannot be put in a multipart header, or a websocket to an `https` ComfyUI.
    InvalidInput {
        /// What is wrong and, where possible, what to do instead.
        reason: String,
    },
}

impl ComfyError {
    /// Whether ComfyUI could not be reached at all (as opposed to answering badly).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ComfyError::Unreachable { .. })
    }
}

impl fmt::Display for ComfyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComfyError::Unreachable { url, reason } => {
                write!(f, "could not reach ComfyUI at {url}: {reason}")
            }
            ComfyError::Rejected {
                error_type,
                message,
                details,
                node_errors,
                ..
            } => {
                write!(f, "ComfyUI rejected the prompt")?;
                if !error_type.is_empty() {
                    write!(f, " ({error_type})")?;
                }
                write!(f, ": {message}")?;
                if !details.is_empty() {
                    write!(f, " [{details}]")?;
                }
                for line in describe_node_errors(node_errors) {
                    write!(f, "; {line}")?;
                }
                Ok(())
            }
            ComfyError::Status { url, status, body } => {
                write!(f, "ComfyUI answered {url} with HTTP {status}")?;
                match body.trim() {
                    "" => Ok(()),
                    text => write!(f, ": {text}"),
                }
            }
            ComfyError::BadResponse { url, reason } => {
                write!(f, "ComfyUI's answer to {url} was not understood: {reason}")
            }
            ComfyError::InvalidInput { reason } => f.write_str(reason),
        }
    }
}

impl std::error::Error for ComfyError {}

/// One readable line per validation error in ComfyUI's `node_errors`, in node id order, e.g.
/// `node 3 (KSampler): Value smaller than min: steps -1 < 1`.
///
/// Unexpected shapes are skipped rather than reported: this is for people, and the raw
/// `node_errors` stay available for machines.
pub fn describe_node_errors(node_errors: &serde_json::Value) -> Vec<String> {
    let Some(nodes) = node_errors.as_object() else {
        return Vec::new();
    };
    let mut ids: Vec<&String> = nodes.keys().collect();
    ids.sort_by(|a, b| super::compare_node_ids(a, b));
    let mut lines = Vec::new();
    for id in ids {
        let node = &nodes[id];
        let class = node["class_type"].as_str().unwrap_or("?");
        let errors = node["errors"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for error in errors {
            let message = error["message"].as_str().unwrap_or("invalid");
            let mut line = format!("node {id} ({class}): {message}");
            if let Some(details) = error["details"].as_str().filter(|d| !d.is_empty()) {
                line.push_str(": ");
                line.push_str(details);
            }
            lines.push(line);
        }
    }
    lines
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push('…');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rejections_read_as_a_sentence_naming_each_bad_node() {
        let err = ComfyError::Rejected {
            error_type: "prompt_outputs_failed_validation".into(),
            message: "Prompt outputs failed validation".into(),
            details: String::new(),
            node_errors: json!({
                "10": {"class_type": "SaveImage", "errors": [
                    {"type": "required_input_missing", "message": "Required input is missing",
                     "details": "images"}]},
                "3": {"class_type": "KSampler", "errors": [
                    {"type": "value_smaller_than_min", "message": "Value smaller than min",
                     "details": "steps -1 < 1"}]}
            }),
            extra_info: Box::new(json!({})),
        };
        assert_eq!(
            err.to_string(),
            "ComfyUI rejected the prompt (prompt_outputs_failed_validation): Prompt outputs \
             failed validation; node 3 (KSampler): Value smaller than min: steps -1 < 1; \
             node 10 (SaveImage): Required input is missing: images"
        );
    }

    #[test]
    fn odd_node_errors_are_skipped_not_fatal() {
        assert!(describe_node_errors(&json!([])).is_empty());
        assert!(describe_node_errors(&json!({"3": 5})).is_empty());
        assert_eq!(
            describe_node_errors(&json!({"3": {"errors": [{}]}})),
            vec!["node 3 (?): invalid"]
        );
    }

    #[test]
    fn only_unreachable_counts_as_unreachable() {
        let away = ComfyError::Unreachable {
            url: "http://127.0.0.1:1/prompt".into(),
            reason: "Connection refused".into(),
        };
        assert!(away.is_unreachable());
        assert_eq!(
            away.to_string(),
            "could not reach ComfyUI at http://127.0.0.1:1/prompt: Connection refused"
        );
        let status = ComfyError::Status {
            url: "u".into(),
            status: 500,
            body: String::new(),
        };
        assert!(!status.is_unreachable());
        assert_eq!(status.to_string(), "ComfyUI answered u with HTTP 500");
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("héllo".into(), 2), "h…");
        assert_eq!(truncate("short".into(), 10), "short");
    }
}
