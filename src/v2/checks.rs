//! What a v2 workflow must pass before it is queued: API format (not the UI export), well-formed
//! nodes, links to nodes that exist, node classes a ComfyUI has, asset references that resolve.
//!
//! Each failure is a 422 in the contract's shape: `workflow_format_ui`, or `invalid_workflow`
//! with `details.node_errors` keyed by node id, each a list of `{field, reason, message}`.

use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Mutex, PoisonError};

use super::V2Error;
use crate::comfyui::ComfyClient;

/// Node classes a backend confirmed (`/object_info/{class}`); a class is asked about until one
/// backend has it, then never again.
#[derive(Default)]
pub struct KnownClasses(Mutex<HashSet<String>>);

impl KnownClasses {
    fn knows(&self, class: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(class)
    }

    fn learn(&self, class: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(class.to_string());
    }
}

/// Whether `workflow` is the UI export (`nodes` as a list, and `links`), not the API format.
pub fn is_ui_format(workflow: &Map<String, Value>) -> bool {
    workflow.get("nodes").is_some_and(Value::is_array) && workflow.contains_key("links")
}

/// Per-node problems: node id → list of `{field, reason, message}`.
#[derive(Default)]
struct NodeErrors(BTreeMap<String, Vec<Value>>);

impl NodeErrors {
    fn add(&mut self, node: &str, field: Option<&str>, reason: &str, message: String) {
        self.0
            .entry(node.to_string())
            .or_default()
            .push(json!({"field": field, "reason": reason, "message": message}));
    }

    fn into_error(self) -> Result<(), V2Error> {
        if self.0.is_empty() {
            return Ok(());
        }
        let first = self
            .0
            .iter()
            .next()
            .and_then(|(node, errors)| {
                Some(format!(
                    "Node {node}: {}",
                    errors.first()?["message"].as_str()?
                ))
            })
            .unwrap_or_default();
        let more = self.0.values().map(Vec::len).sum::<usize>() - 1;
        let message = if more == 0 {
            first
        } else {
            format!("{first} (and {more} more)")
        };
        Err(V2Error::new(422, "invalid_workflow", message)
            .with_details(json!({ "node_errors": self.0 })))
    }
}

/// The shape checks: every node an object with a string `class_type` and an object `inputs`,
/// every link `["id", index]` naming a node of the graph.
pub fn check_shape(workflow: &Map<String, Value>) -> Result<(), V2Error> {
    if workflow.is_empty() {
        return Err(V2Error::new(
            422,
            "invalid_workflow",
            "the workflow has no nodes",
        ));
    }
    let mut errors = NodeErrors::default();
    for (id, node) in workflow {
        let Some(fields) = node.as_object() else {
            errors.add(
                id,
                None,
                "invalid_node",
                "is not an object with class_type and inputs".into(),
            );
            continue;
        };
        if !fields.get("class_type").is_some_and(Value::is_string) {
            errors.add(
                id,
                Some("class_type"),
                "missing_class_type",
                "needs a string class_type".into(),
            );
        }
        let Some(inputs) = fields.get("inputs").and_then(Value::as_object) else {
            errors.add(
                id,
                Some("inputs"),
                "missing_inputs",
                "needs an object inputs".into(),
            );
            continue;
        };
        for (field, value) in inputs {
            if let Some(source) = link_source(value) {
                if !workflow.contains_key(source) {
                    errors.add(
                        id,
                        Some(field),
                        "missing_node",
                        format!(
                            "input '{field}' links to node {source}, which is not in the workflow"
                        ),
                    );
                }
            }
        }
    }
    errors.into_error()
}

fn link_source(value: &Value) -> Option<&str> {
    match value.as_array()?.as_slice() {
        [Value::String(node), index] if index.is_u64() => Some(node),
        _ => None,
    }
}

/// Refuses node classes no backend has. A class is confirmed by the first backend that
/// answers `/object_info/{class}` with it; when no backend answers at all the check is left to
/// ComfyUI's own validation at dispatch (the job then fails with `invalid_workflow`).
pub fn check_classes(
    workflow: &Map<String, Value>,
    backends: &[ComfyClient],
    known: &KnownClasses,
) -> Result<(), V2Error> {
    let mut classes: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, node) in workflow {
        if let Some(class) = node["class_type"].as_str() {
            classes.entry(class).or_default().push(id);
        }
    }
    let mut errors = NodeErrors::default();
    for (class, nodes) in classes {
        if known.knows(class) {
            continue;
        }
        let mut answered = false;
        let mut found = false;
        for backend in backends {
            match backend.node_info(class) {
                Ok(Some(_)) => {
                    found = true;
                    break;
                }
                Ok(None) => answered = true,
                Err(e) => log::debug!("asking {} about {class}: {e}", backend.base_url()),
            }
        }
        if found {
            known.learn(class);
        } else if answered {
            for node in nodes {
                errors.add(
                    node,
                    Some("class_type"),
                    "unknown_class",
                    format!("node class '{class}' is not installed on this ComfyUI"),
                );
            }
        }
    }
    errors.into_error()
}

/// Whether `value` is a `core/ASSET` reference.
pub fn is_asset_ref(value: &Value) -> bool {
    value.get("__type").and_then(Value::as_str) == Some("core/ASSET")
}

/// Replaces every `core/ASSET` reference by `name(id)`; an id `name` cannot resolve is
/// collected and the whole submission refused with `422 missing_asset`.
pub fn resolve_assets(
    workflow: &mut Map<String, Value>,
    name: impl Fn(&str) -> Option<String>,
) -> Result<(), V2Error> {
    fn walk(
        value: &mut Value,
        name: &dyn Fn(&str) -> Option<String>,
        missing: &mut BTreeSet<String>,
    ) {
        if is_asset_ref(value) {
            match value["info"]["id"].as_str() {
                Some(id) => match name(id) {
                    Some(resolved) => *value = Value::String(resolved),
                    None => {
                        missing.insert(id.to_string());
                    }
                },
                None => {
                    missing.insert("<a core/ASSET reference without info.id>".to_string());
                }
            }
            return;
        }
        match value {
            Value::Object(map) => map.values_mut().for_each(|v| walk(v, name, missing)),
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, name, missing)),
            _ => {}
        }
    }
    let mut missing = BTreeSet::new();
    for node in workflow.values_mut() {
        if let Some(inputs) = node.get_mut("inputs") {
            walk(inputs, &name, &mut missing);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing.into_iter().collect();
    Err(V2Error::new(
        422,
        "missing_asset",
        format!(
            "unknown or unusable asset reference(s): {}",
            list.join(", ")
        ),
    )
    .with_details(json!({ "missing_ids": list })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn the_ui_export_is_told_apart() {
        assert!(is_ui_format(&graph(json!({"nodes": [], "links": []}))));
        assert!(!is_ui_format(&graph(
            json!({"1": {"class_type": "A", "inputs": {}}})
        )));
    }

    #[test]
    fn shape_problems_are_per_node() {
        let bad = graph(json!({
            "1": {"class_type": "A", "inputs": {"x": ["9", 0]}},
            "2": {"inputs": {}},
            "3": "no",
        }));
        let error = check_shape(&bad).expect_err("refused");
        assert_eq!((error.status, error.code), (422, "invalid_workflow"));
        let nodes = &error.details["node_errors"];
        assert_eq!(nodes["1"][0]["reason"], "missing_node");
        assert_eq!(nodes["1"][0]["field"], "x");
        assert_eq!(nodes["2"][0]["field"], "class_type");
        assert_eq!(nodes["3"][0]["reason"], "invalid_node");
        assert!(check_shape(&graph(json!({"1": {"class_type": "A", "inputs": {}}}))).is_ok());
    }

    #[test]
    fn asset_references_are_replaced_or_refused() {
        let mut wf = graph(json!({
            "1": {"class_type": "LoadImage", "inputs": {"image": {"__type": "core/ASSET", "info": {"id": "a1"}}}},
        }));
        resolve_assets(&mut wf, |id| (id == "a1").then(|| "blob.png".to_string())).expect("known");
        assert_eq!(wf["1"]["inputs"]["image"], "blob.png");
        let mut wf = graph(json!({
            "1": {"class_type": "LoadImage", "inputs": {"image": {"__type": "core/ASSET", "info": {}}}},
            "2": {"class_type": "LoadImage", "inputs": {"image": {"__type": "core/ASSET", "info": {"id": "zz"}}}},
        }));
        let error = resolve_assets(&mut wf, |_| None).expect_err("unknown");
        assert_eq!((error.status, error.code), (422, "missing_asset"));
        assert_eq!(
            error.details["missing_ids"].as_array().map(Vec::len),
            Some(2)
        );
    }
}
