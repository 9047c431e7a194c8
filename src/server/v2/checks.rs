//! What a v2 workflow must pass before it is queued: API format (not the UI export), well-formed
//! nodes, links to nodes that exist, node classes a ComfyUI has, asset references that resolve.
//!
//! Each failure is a 422 in the contract's shape: `workflow_format_ui`, or `invalid_workflow`
//! with `details.node_errors` keyed by node id, each a list of `{field, reason, message}`.

use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};

use super::V2Error;
use crate::blobs::BlobHash;
use crate::job::{BlobInput, INPUT_SUBFOLDER, InputTarget};
use crate::media;
use crate::workflow::NodeDefsSource;

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

/// Checks that every node's class is one the backends have and that each gets its required
/// inputs, from the backends' node definitions (`/object_info`, read and cached by
/// [`crate::workflow::Installed`], the same definitions UI-format workflows are converted with).
/// When no backend can be read at all the check is left to ComfyUI's own validation at dispatch
/// (the job then fails with `invalid_workflow`).
pub fn check_classes(
    workflow: &Map<String, Value>,
    definitions: &dyn NodeDefsSource,
) -> Result<(), V2Error> {
    let mut classes: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (id, node) in workflow {
        if let Some(class) = node["class_type"].as_str() {
            classes.entry(class).or_default().push(id);
        }
    }
    let wanted: BTreeSet<String> = classes.keys().map(|class| class.to_string()).collect();
    let defs = match definitions.node_defs(&wanted) {
        Ok(defs) => defs,
        Err(why) => {
            log::debug!("v2 node check left to ComfyUI: {why}");
            return Ok(());
        }
    };
    let mut errors = NodeErrors::default();
    for (class, nodes) in classes {
        let Some(definition) = defs.get(class) else {
            for node in &nodes {
                errors.add(
                    node,
                    Some("class_type"),
                    "unknown_class",
                    format!("node class '{class}' is not installed on this ComfyUI"),
                );
            }
            continue;
        };
        for node in nodes {
            let inputs = workflow[node]["inputs"].as_object();
            for name in &definition.required {
                if !inputs.is_some_and(|i| i.contains_key(name)) {
                    errors.add(
                        node,
                        Some(name),
                        "missing_input",
                        format!("{class}: required input '{name}' is missing"),
                    );
                }
            }
        }
    }
    errors.into_error()
}

/// Whether `value` is a `core/ASSET` reference.
pub fn is_asset_ref(value: &Value) -> bool {
    value.get("__type").and_then(Value::as_str) == Some("core/ASSET")
}

/// Turns every `core/ASSET` reference (a node input's value) into an input file of the job:
/// `resolve(id)` gives the asset's blob and extension; the reference becomes the name ComfyUI
/// will know the file by once the dispatcher has uploaded it to the chosen backend (once per
/// backend per blob, `job::ensure_input`). An id that does not resolve, a reference without
/// `info.id`, or one nested deeper than a node input refuses the submission with `422
/// missing_asset` naming every such id.
pub fn resolve_assets(
    workflow: &mut Map<String, Value>,
    resolve: impl Fn(&str) -> Option<(BlobHash, String)>,
) -> Result<Vec<BlobInput>, V2Error> {
    fn nested(value: &Value) -> bool {
        match value {
            Value::Object(map) => map.values().any(|v| is_asset_ref(v) || nested(v)),
            Value::Array(items) => items.iter().any(|v| is_asset_ref(v) || nested(v)),
            _ => false,
        }
    }
    let mut missing = BTreeSet::new();
    let mut inputs: Vec<BlobInput> = Vec::new();
    for (node, fields) in workflow.iter_mut() {
        let Some(node_inputs) = fields.get_mut("inputs").and_then(Value::as_object_mut) else {
            continue;
        };
        for (input, value) in node_inputs.iter_mut() {
            if !is_asset_ref(value) {
                if nested(value) {
                    missing.insert(format!(
                        "<a core/ASSET reference nested inside node {node}'s input {input}>"
                    ));
                }
                continue;
            }
            let Some(id) = value["info"]["id"].as_str() else {
                missing.insert("<a core/ASSET reference without info.id>".to_string());
                continue;
            };
            let Some((hash, ext)) = resolve(id) else {
                missing.insert(id.to_string());
                continue;
            };
            *value = Value::String(format!("{INPUT_SUBFOLDER}/{}.{ext}", hash.hex()));
            let target = InputTarget {
                node: node.clone(),
                input: input.clone(),
            };
            match inputs.iter_mut().find(|i| i.hash == hash && i.ext == ext) {
                Some(known) => known.targets.push(target),
                None => inputs.push(BlobInput {
                    hash,
                    ext,
                    targets: vec![target],
                }),
            }
        }
    }
    if missing.is_empty() {
        return Ok(inputs);
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

/// The extension an asset's blob is uploaded to ComfyUI with: its file name's, else its
/// content type's.
pub fn extension_for(file_path: Option<&str>, content_type: &str) -> String {
    let from_name = file_path
        .and_then(|path| path.rsplit('/').next())
        .and_then(|name| name.rsplit_once('.'))
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .filter(|ext| {
            !ext.is_empty() && ext.len() <= 8 && ext.chars().all(|c| c.is_ascii_alphanumeric())
        });
    from_name.unwrap_or_else(|| {
        media::by_content_type(content_type)
            .unwrap_or(media::UNKNOWN)
            .extension
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
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
    fn asset_references_become_input_files_or_are_refused() {
        let hash = BlobHash::of(b"pixels");
        let mut wf = graph(json!({
            "1": {"class_type": "LoadImage", "inputs": {"image": {"__type": "core/ASSET", "info": {"id": "a1"}}}},
            "2": {"class_type": "LoadImage", "inputs": {"image": {"__type": "core/ASSET", "info": {"id": "a1"}}}},
        }));
        let inputs = resolve_assets(&mut wf, |id| {
            (id == "a1").then(|| (hash, "png".to_string()))
        })
        .expect("known");
        assert_eq!(inputs.len(), 1, "one upload for one blob");
        assert_eq!(inputs[0].targets.len(), 2);
        assert_eq!(
            wf["1"]["inputs"]["image"],
            format!("gateway/{}.png", hash.hex())
        );
        let mut wf = graph(json!({
            "1": {"class_type": "LoadImage", "inputs": {"image": {"__type": "core/ASSET", "info": {}}}},
            "2": {"class_type": "LoadImage", "inputs": {"image": {"__type": "core/ASSET", "info": {"id": "zz"}}}},
            "3": {"class_type": "X", "inputs": {"list": [{"__type": "core/ASSET", "info": {"id": "a1"}}]}},
        }));
        let error = resolve_assets(&mut wf, |_| None).expect_err("unknown");
        assert_eq!((error.status, error.code), (422, "missing_asset"));
        assert_eq!(
            error.details["missing_ids"].as_array().map(Vec::len),
            Some(3)
        );
    }

    #[test]
    fn uploads_keep_a_sensible_extension() {
        assert_eq!(extension_for(Some("dir/Photo.JPG"), "image/jpeg"), "jpg");
        assert_eq!(extension_for(None, "image/png"), "png");
        assert_eq!(extension_for(Some("noext"), "application/x-thing"), "bin");
    }
}
