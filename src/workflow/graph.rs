//! The shape of a ComfyUI API-format graph, checked without any ComfyUI semantics.
//!
//! An API-format graph (what ComfyUI's "Export (API)" writes) is an object of nodes keyed by id;
//! each node has a `class_type` string and an `inputs` object whose values are literals or links
//! `["node_id", output_index]`. Whether the classes and inputs exist is ComfyUI's business.

use serde_json::Value;

use super::params::ParamErrors;

/// Checks a raw graph sent by a client (`{"graph": {...}}`) for the shape ComfyUI needs before
/// it can even say what is wrong: an object with at least one node, each an object with a string
/// `class_type` and an object `inputs`. Fields in the errors are `graph` and `graph.NODE_ID`; all
/// broken nodes are reported.
pub fn check_raw_graph(graph: &Value) -> Result<(), ParamErrors> {
    let mut errors = ParamErrors::default();
    match graph.as_object() {
        None => errors.insert("graph", "must be an object of nodes keyed by node id"),
        Some(nodes) if nodes.is_empty() => errors.insert("graph", "must contain at least one node"),
        Some(nodes) => {
            for (id, node) in nodes {
                if let Some(problem) = node_problem(node) {
                    errors.insert(format!("graph.{id}"), problem);
                }
            }
        }
    }
    errors.into_result()
}

/// What is wrong with one node's shape, as a phrase ("needs a string class_type"), or `None`.
pub(super) fn node_problem(node: &Value) -> Option<String> {
    let Some(fields) = node.as_object() else {
        return Some("must be an object with class_type and inputs".to_owned());
    };
    let mut problems = Vec::new();
    if !fields.get("class_type").is_some_and(Value::is_string) {
        problems.push("needs a string class_type");
    }
    if !fields.get("inputs").is_some_and(Value::is_object) {
        problems.push("needs an object inputs");
    }
    (!problems.is_empty()).then(|| problems.join(" and "))
}

/// The node id an input value links to, if it is a link `["node_id", output_index]`.
pub(super) fn link_source(value: &Value) -> Option<&str> {
    match value.as_array()?.as_slice() {
        [Value::String(node), index] if index.is_u64() => Some(node),
        _ => None,
    }
}
