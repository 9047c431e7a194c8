//! Partial graphs: when some output branches of a prompt fail validation and others pass,
//! ComfyUI answers `POST /prompt` with 200, runs the valid branches, and lists the failures in
//! `node_errors`. [`dropped_outputs`] turns that into one warning per output node that will not
//! run, so a client learns why it got fewer outputs than its graph has.
//!
//! `node_errors` maps each node that failed validation to
//! `{"errors": [{"type", "message", "details", "extra_info": {"input_name", ...}}],
//! "dependent_outputs": ["9", ...], "class_type": "KSampler"}`: the failing node need not be an
//! output node itself; `dependent_outputs` names the output nodes it takes down.

use serde_json::{Map, Value, json};

use super::compare_node_ids;

/// One warning per output node ComfyUI dropped, in node id order:
///
/// ```json
/// {"code": "output_dropped", "node": "12", "class_type": "SaveAudio",
///  "message": "output node 12 (SaveAudio) will not run: node 10 (KSampler): Value not in list: ...",
///  "causes": [{"node": "10", "class_type": "KSampler", "type": "value_not_in_list",
///              "message": "Value not in list", "details": "...", "input": "ckpt_name"}]}
/// ```
///
/// `graph` is the API-format graph that was queued; it names the output nodes' classes (the
/// `class_type` in `node_errors` is the failing node's). Empty when `node_errors` is empty or not
/// of ComfyUI's shape; entries of unexpected shape are skipped, never a panic.
pub fn dropped_outputs(node_errors: &Value, graph: &Value) -> Vec<Value> {
    let Some(failing) = node_errors.as_object() else {
        return Vec::new();
    };
    let mut failing_ids: Vec<&String> = failing.keys().collect();
    failing_ids.sort_by(|a, b| compare_node_ids(a, b));
    // Output node id -> the validation errors that take it down.
    let mut dropped: Vec<(String, Vec<Value>)> = Vec::new();
    for id in failing_ids {
        let node = &failing[id];
        let class = node["class_type"]
            .as_str()
            .or_else(|| graph[id.as_str()]["class_type"].as_str());
        let causes: Vec<Value> = node["errors"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .map(|error| cause(id, class, error))
            .collect();
        let outputs: Vec<String> = match node["dependent_outputs"].as_array() {
            Some(outputs) if !outputs.is_empty() => outputs.iter().filter_map(id_text).collect(),
            // An output node failing on its own inputs: it is its own dependent output.
            _ => vec![id.clone()],
        };
        for output in outputs {
            match dropped.iter_mut().find(|(known, _)| *known == output) {
                Some((_, known_causes)) => known_causes.extend(causes.iter().cloned()),
                None => dropped.push((output, causes.clone())),
            }
        }
    }
    dropped.sort_by(|(a, _), (b, _)| compare_node_ids(a, b));
    dropped
        .into_iter()
        .map(|(output, causes)| warning(&output, graph, node_errors, causes))
        .collect()
}

fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// One validation error as a warning's cause.
fn cause(node: &str, class: Option<&str>, error: &Value) -> Value {
    let mut cause = Map::new();
    cause.insert("node".into(), json!(node));
    cause.insert("class_type".into(), json!(class));
    for field in ["type", "message", "details"] {
        if let Some(text) = error[field].as_str() {
            cause.insert(field.into(), json!(text));
        }
    }
    if let Some(input) = error["extra_info"]["input_name"].as_str() {
        cause.insert("input".into(), json!(input));
    }
    Value::Object(cause)
}

fn warning(output: &str, graph: &Value, node_errors: &Value, causes: Vec<Value>) -> Value {
    let class = graph[output]["class_type"]
        .as_str()
        .or_else(|| node_errors[output]["class_type"].as_str());
    let why: Vec<String> = causes.iter().map(describe).collect();
    let mut message = match class {
        Some(class) => format!("output node {output} ({class}) will not run"),
        None => format!("output node {output} will not run"),
    };
    if why.is_empty() {
        message.push_str(": ComfyUI dropped it during validation");
    } else {
        message.push_str(": ");
        message.push_str(&why.join("; "));
    }
    json!({
        "code": "output_dropped",
        "node": output,
        "class_type": class,
        "message": message,
        "causes": causes,
    })
}

/// `node 10 (KSampler): Value not in list: ckpt_name: 'x' not in [...]`.
fn describe(cause: &Value) -> String {
    let node = cause["node"].as_str().unwrap_or("?");
    let mut text = match cause["class_type"].as_str() {
        Some(class) => format!("node {node} ({class})"),
        None => format!("node {node}"),
    };
    text.push_str(": ");
    text.push_str(cause["message"].as_str().unwrap_or("invalid"));
    if let Some(details) = cause["details"].as_str().filter(|d| !d.is_empty()) {
        text.push_str(": ");
        text.push_str(details);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph() -> Value {
        json!({
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
            "9": {"class_type": "SaveImage", "inputs": {}},
            "10": {"class_type": "KSampler", "inputs": {}},
            "12": {"class_type": "SaveAudio", "inputs": {}},
            "13": {"class_type": "SaveVideo", "inputs": {}},
        })
    }

    #[test]
    fn each_dropped_output_node_is_named_with_its_class_and_why() {
        // As ComfyUI answers a 200 for a graph with two broken branches out of three.
        let node_errors = json!({
            "10": {"errors": [{"type": "value_not_in_list", "message": "Value not in list",
                               "details": "sampler_name: 'eulr' not in ['euler', ...]",
                               "extra_info": {"input_name": "sampler_name"}}],
                   "dependent_outputs": ["13", "12"], "class_type": "KSampler"},
            "12": {"errors": [{"type": "required_input_missing",
                               "message": "Required input is missing", "details": "audio",
                               "extra_info": {"input_name": "audio"}}],
                   "dependent_outputs": ["12"], "class_type": "SaveAudio"}
        });
        let warnings = dropped_outputs(&node_errors, &graph());
        assert_eq!(warnings.len(), 2, "{warnings:#?}");
        assert_eq!(warnings[0]["code"], "output_dropped");
        assert_eq!(warnings[0]["node"], "12");
        assert_eq!(warnings[0]["class_type"], "SaveAudio");
        assert_eq!(
            warnings[0]["message"],
            "output node 12 (SaveAudio) will not run: node 10 (KSampler): Value not in list: \
             sampler_name: 'eulr' not in ['euler', ...]; node 12 (SaveAudio): Required input is \
             missing: audio"
        );
        assert_eq!(warnings[0]["causes"][0]["input"], "sampler_name");
        assert_eq!(warnings[0]["causes"][1]["type"], "required_input_missing");
        assert_eq!(warnings[1]["node"], "13");
        assert_eq!(warnings[1]["class_type"], "SaveVideo");
        assert_eq!(warnings[1]["causes"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn nothing_dropped_or_odd_shapes_give_no_or_partial_warnings() {
        assert!(dropped_outputs(&json!({}), &graph()).is_empty());
        assert!(dropped_outputs(&Value::Null, &graph()).is_empty());
        assert!(dropped_outputs(&json!([1, 2]), &graph()).is_empty());
        // No dependent_outputs, no errors, numeric ids, a node the graph does not have.
        let warnings = dropped_outputs(
            &json!({"9": {}, "77": {"dependent_outputs": [5], "errors": "nope"}}),
            &graph(),
        );
        let nodes: Vec<&Value> = warnings.iter().map(|w| &w["node"]).collect();
        assert_eq!(nodes, [&json!("5"), &json!("9")]);
        assert_eq!(warnings[0]["class_type"], Value::Null);
        assert_eq!(
            warnings[1]["message"],
            "output node 9 (SaveImage) will not run: ComfyUI dropped it during validation"
        );
    }
}
