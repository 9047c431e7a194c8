//! `POST /prompt` validation with ComfyUI's error vocabulary.
//!
//! ComfyUI validates each output node and everything it depends on; an output fails when any
//! node it needs fails. The prompt is refused only when every output fails; otherwise it runs the
//! good outputs and still reports the bad nodes in `node_errors`.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};

use super::graph::{Graph, StructureError, as_link};
use super::nodes::{ChoiceList, InputDef, InputKind};

/// A 400 body: `{"error": {type, message, details, extra_info}, "node_errors": {...}}`.
pub(crate) fn error_body(kind: &str, message: &str, details: &str, node_errors: Value) -> Value {
    json!({
        "error": {"type": kind, "message": message, "details": details, "extra_info": {}},
        "node_errors": node_errors,
    })
}

/// The 400 body for a graph that cannot be read at all.
pub(crate) fn structure_error_body(err: &StructureError) -> Value {
    let mut body = error_body(err.kind, &err.message, &err.details, json!({}));
    body["error"]["extra_info"] = err.extra_info.clone();
    body
}

/// What validation decided for a readable graph.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Run these outputs; `node_errors` lists nodes of outputs that were dropped (often empty).
    Accepted {
        outputs: Vec<String>,
        node_errors: Map<String, Value>,
    },
    /// Refuse with this 400 body.
    Rejected(Value),
}

/// Validates `graph`; `input_files` are the names `LoadImage` may refer to.
pub(crate) fn validate_prompt(graph: &Graph, input_files: &[String]) -> Verdict {
    let outputs = graph.output_ids();
    if outputs.is_empty() {
        return Verdict::Rejected(error_body(
            "prompt_no_outputs",
            "Prompt has no outputs",
            "",
            json!({}),
        ));
    }
    let mut validator = Validator {
        graph,
        files: input_files,
        results: HashMap::new(),
        valid: HashMap::new(),
        visiting: HashSet::new(),
    };
    let mut good = Vec::new();
    let mut node_errors = Map::new();
    for output in &outputs {
        if validator.validate(output) {
            good.push(output.clone());
            continue;
        }
        for id in graph.execution_order(std::slice::from_ref(output)) {
            let Some(errors) = validator.results.get(&id).filter(|e| !e.is_empty()) else {
                continue;
            };
            let entry = node_errors.entry(id.clone()).or_insert_with(|| {
                json!({"errors": errors, "dependent_outputs": [], "class_type": graph.nodes[&id].class.name})
            });
            if let Some(deps) = entry["dependent_outputs"].as_array_mut() {
                deps.push(json!(output));
            }
        }
    }
    if good.is_empty() {
        // ComfyUI lists only the output nodes' own errors here ("" when an output failed
        // because of a node upstream, whose errors are in `node_errors`).
        let details = describe(outputs.iter().filter_map(|o| validator.results.get(o)));
        return Verdict::Rejected(error_body(
            "prompt_outputs_failed_validation",
            "Prompt outputs failed validation",
            &details,
            Value::Object(node_errors),
        ));
    }
    Verdict::Accepted {
        outputs: good,
        node_errors,
    }
}

/// The rejection `fail_next(Failure::ValidationError)` asks for: one plausible node error on the
/// first node (in execution order) that has a widget value.
pub(crate) fn simulated_rejection(graph: &Graph, outputs: &[String]) -> Value {
    let order = graph.execution_order(outputs);
    let target = order
        .iter()
        .filter_map(|id| graph.nodes.get(id))
        .find_map(|node| {
            node.class
                .inputs
                .iter()
                .find(|i| !matches!(i.kind, InputKind::Link(_)))
                .map(|input| (node, input.name))
        })
        .or_else(|| {
            order
                .first()
                .and_then(|id| graph.nodes.get(id))
                .map(|node| (node, node.class.inputs.first().map_or("", |i| i.name)))
        });
    let mut node_errors = Map::new();
    if let Some((node, input_name)) = target {
        node_errors.insert(
            node.id.clone(),
            json!({
                "errors": [{
                    "type": "custom_validation_failed",
                    "message": "Simulated validation failure",
                    "details": format!("{input_name}: rejected by the simulator"),
                    "extra_info": {"input_name": input_name},
                }],
                "dependent_outputs": outputs,
                "class_type": node.class.name,
            }),
        );
    }
    let details = describe(
        outputs
            .iter()
            .filter_map(|o| node_errors.get(o)?["errors"].as_array()),
    );
    error_body(
        "prompt_outputs_failed_validation",
        "Prompt outputs failed validation",
        &details,
        Value::Object(node_errors),
    )
}

/// ComfyUI's `details` for a failed validation: one `message: details` line per error.
fn describe<'a>(errors: impl Iterator<Item = &'a Vec<Value>>) -> String {
    let mut lines = Vec::new();
    for error in errors.flatten() {
        let message = error["message"].as_str().unwrap_or_default();
        let details = error["details"].as_str().unwrap_or_default();
        lines.push(format!("{message}: {details}"));
    }
    lines.join("\n")
}

struct Validator<'a> {
    graph: &'a Graph,
    files: &'a [String],
    /// Errors found on each validated node (empty when the node itself is fine).
    results: HashMap<String, Vec<Value>>,
    /// Whether each validated node and everything upstream of it is valid.
    valid: HashMap<String, bool>,
    /// The chain of nodes being validated right now; a link back into it is a cycle.
    visiting: HashSet<String>,
}

impl Validator<'_> {
    /// Whether node `id` and everything it reads from are valid.
    fn validate(&mut self, id: &str) -> bool {
        if let Some(&ok) = self.valid.get(id) {
            return ok;
        }
        if !self.visiting.insert(id.to_string()) {
            return false;
        }
        let errors = self.node_errors(id);
        let mut ok = errors.is_empty();
        for up in self.graph.upstream(id) {
            if let Some(error) = self.inner_exception(id, &up) {
                // ComfyUI reports it on the upstream node, and validates nothing else of it.
                self.results.insert(up.clone(), vec![error]);
                self.valid.insert(up, false);
                ok = false;
                continue;
            }
            ok &= self.validate(&up);
        }
        self.visiting.remove(id);
        self.results.insert(id.to_string(), errors);
        self.valid.insert(id.to_string(), ok);
        ok
    }

    /// ComfyUI looks up a linked node's class without a guard: when node `up` links to a node
    /// the graph does not have, the `KeyError` escapes `up`'s validation and is reported, as
    /// `exception_during_inner_validation`, with the input of `consumer` that reads `up`.
    fn inner_exception(&self, consumer: &str, up: &str) -> Option<Value> {
        let upstream = self.graph.nodes.get(up)?;
        let missing = upstream.class.inputs.iter().find_map(|input| {
            let (target, _) = as_link(upstream.inputs.get(input.name)?)?;
            (!self.graph.nodes.contains_key(target)).then(|| target.to_string())
        })?;
        let node = self.graph.nodes.get(consumer)?;
        let (input, link) = node.class.inputs.iter().find_map(|input| {
            let value = node.inputs.get(input.name)?;
            let (target, _) = as_link(value)?;
            (target == up).then_some((input, value))
        })?;
        let message = format!("'{missing}'");
        Some(json!({
            "type": "exception_during_inner_validation",
            "message": "Exception when validating inner node",
            "details": message,
            "extra_info": {
                "input_name": input.name,
                "input_config": input.config(self.files),
                "exception_message": message,
                "exception_type": "KeyError",
                "traceback": [
                    "  File \"<comfyui-sim>/execution.py\", line 808, in validate_inputs\n    r = await validate_inputs(prompt_id, prompt, o_id, validated)\n",
                    "  File \"<comfyui-sim>/execution.py\", line 788, in validate_inputs\n    o_class_type = prompt[o_id]['class_type']\n",
                ],
                "linked_node": link,
            },
        }))
    }

    fn node_errors(&mut self, id: &str) -> Vec<Value> {
        let Some(node) = self.graph.nodes.get(id) else {
            return Vec::new();
        };
        let mut errors = Vec::new();
        for input in node.class.inputs {
            let Some(value) = node.inputs.get(input.name) else {
                if input.optional {
                    continue;
                }
                errors.push(json!({
                    "type": "required_input_missing",
                    "message": "Required input is missing",
                    "details": input.name,
                    "extra_info": {"input_name": input.name},
                }));
                continue;
            };
            let error = if value.is_array() {
                self.check_link(input, value)
            } else {
                check_widget(input, value, self.files)
            };
            errors.extend(error);
        }
        errors
    }

    fn check_link(&self, input: &InputDef, value: &Value) -> Option<Value> {
        let config = input.config(self.files);
        let bad_link = |message: String| {
            Some(json!({
                "type": "bad_linked_input",
                "message": message,
                "details": input.name,
                "extra_info": {"input_name": input.name, "input_config": config, "received_value": value},
            }))
        };
        let Some((up, slot)) = as_link(value) else {
            return bad_link(
                "Bad linked input, must be a length-2 list of [node_id, slot_index]".into(),
            );
        };
        if !self.graph.nodes.contains_key(up) {
            return bad_link(format!("Linked node #{up} does not exist"));
        }
        if self.visiting.contains(up) {
            return bad_link(format!("Dependency cycle detected through node #{up}"));
        }
        let Some(received) = self.graph.output_type(up, slot) else {
            return bad_link(format!("Node #{up} has no output slot {slot}"));
        };
        let expected = input.kind.type_name();
        if received != expected {
            return Some(json!({
                "type": "return_type_mismatch",
                "message": "Return type mismatch between linked nodes",
                "details": format!("{}, received_type({received}) mismatch input_type({expected})", input.name),
                "extra_info": {"input_name": input.name, "input_config": config,
                               "received_type": received, "linked_node": value},
            }));
        }
        None
    }
}

/// Checks a widget (non-link) value against its input definition.
fn check_widget(input: &InputDef, value: &Value, files: &[String]) -> Option<Value> {
    let config = input.config(files);
    let error = |kind: &str, message: String, details: String| {
        Some(json!({
            "type": kind,
            "message": message,
            "details": details,
            "extra_info": {"input_name": input.name, "input_config": config, "received_value": value},
        }))
    };
    let range = |below: bool, shown: String, limit: String| {
        if below {
            error(
                "value_smaller_than_min",
                format!("Value {shown} smaller than min of {limit}"),
                input.name.to_string(),
            )
        } else {
            error(
                "value_bigger_than_max",
                format!("Value {shown} bigger than max of {limit}"),
                input.name.to_string(),
            )
        }
    };
    let convert_failed = |type_name: &str, why: String| {
        let mut failure = error(
            "invalid_input_type",
            format!("Failed to convert an input value to a {type_name} value"),
            format!("{}, {}, {why}", input.name, display(value)),
        );
        if let Some(failure) = failure.as_mut() {
            failure["extra_info"]["exception_message"] = json!(why);
        }
        failure
    };
    match &input.kind {
        InputKind::Link(_) => error(
            "bad_linked_input",
            "Bad linked input, must be a length-2 list of [node_id, slot_index]".into(),
            input.name.to_string(),
        ),
        InputKind::Int { min, max, .. } => match to_int(value) {
            Err(why) => convert_failed("INT", why),
            Ok(v) if v < *min => range(true, v.to_string(), min.to_string()),
            Ok(v) if v > *max => range(false, v.to_string(), max.to_string()),
            Ok(_) => None,
        },
        InputKind::Float { min, max, .. } => match to_float(value) {
            Err(why) => convert_failed("FLOAT", why),
            Ok(v) if v < *min => range(true, py_float(v), py_float(*min)),
            Ok(v) if v > *max => range(false, py_float(v), py_float(*max)),
            Ok(_) => None,
        },
        // Python's `bool()` takes anything.
        InputKind::Bool { .. } => None,
        InputKind::Text { .. } => match to_text(value) {
            Err(why) => convert_failed("STRING", why),
            Ok(_) => None,
        },
        // LoadImage validates its own input (VALIDATE_INPUTS), which replaces the list check.
        InputKind::Choice(ChoiceList::InputImages) => {
            let name = value.as_str().unwrap_or_default();
            if files.iter().any(|f| f == name) {
                return None;
            }
            Some(json!({
                "type": "custom_validation_failed",
                "message": "Custom validation failed for node",
                "details": format!("{} - Invalid image file: {}", input.name, display(value)),
                "extra_info": {"input_name": input.name},
            }))
        }
        InputKind::Choice(list) => {
            let allowed = list.values(files);
            let ok = value
                .as_str()
                .is_some_and(|v| allowed.iter().any(|a| a == v));
            if ok {
                return None;
            }
            let shown: Vec<String> = allowed.iter().take(20).map(|a| format!("'{a}'")).collect();
            error(
                "value_not_in_list",
                "Value not in list".into(),
                format!(
                    "{}: '{}' not in [{}]",
                    input.name,
                    display(value),
                    shown.join(", ")
                ),
            )
        }
    }
}

/// A JSON scalar as Python's `str()` would show it.
fn display(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        other => other.to_string(),
    }
}

/// A float as Python prints it (`1.0`, not `1`).
fn py_float(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{v:.1}")
    } else {
        v.to_string()
    }
}

/// Python's `int(value)` for JSON values; integers never pass through `f64`, so a `u64` seed
/// keeps every digit.
pub(crate) fn to_int(value: &Value) -> Result<i128, String> {
    match value {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Ok(i128::from(u))
            } else if let Some(i) = n.as_i64() {
                Ok(i128::from(i))
            } else {
                match n.as_f64() {
                    Some(f) if f.is_finite() => Ok(f.trunc() as i128),
                    _ => Err(format!("cannot convert float {n} to integer")),
                }
            }
        }
        Value::String(s) => s
            .trim()
            .parse::<i128>()
            .map_err(|_| format!("invalid literal for int() with base 10: '{s}'")),
        Value::Bool(b) => Ok(i128::from(*b)),
        Value::Null => Err(
            "int() argument must be a string, a bytes-like object or a real number, not 'NoneType'"
                .into(),
        ),
        _ => Err(
            "int() argument must be a string, a bytes-like object or a real number, not 'dict'"
                .into(),
        ),
    }
}

/// Python's `float(value)` for JSON values.
pub(crate) fn to_float(value: &Value) -> Result<f64, String> {
    match value {
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("could not convert number to float: '{n}'")),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("could not convert string to float: '{s}'")),
        Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        Value::Null => {
            Err("float() argument must be a string or a real number, not 'NoneType'".into())
        }
        _ => Err("float() argument must be a string or a real number, not 'dict'".into()),
    }
}

/// Python's `str(value)` for the scalars a string widget may receive.
pub(crate) fn to_text(value: &Value) -> Result<String, String> {
    match value {
        Value::Object(_) => Err("a string input cannot take an object".into()),
        other => Ok(display(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt2img() -> Value {
        json!({
            "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["6", 0],
                  "negative": ["7", 0], "latent_image": ["5", 0], "seed": 18446744073709551615u64,
                  "steps": 2, "cfg": 7, "sampler_name": "euler", "scheduler": "normal", "denoise": 1}},
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}}
        })
    }

    fn verdict(graph: Value) -> Verdict {
        validate_prompt(&Graph::parse(&graph).expect("readable graph"), &[])
    }

    fn rejected(graph: Value) -> Value {
        match verdict(graph) {
            Verdict::Rejected(body) => body,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn the_txt2img_template_is_accepted_with_the_largest_seed() {
        let v = verdict(txt2img());
        assert_eq!(
            v,
            Verdict::Accepted {
                outputs: vec!["9".into()],
                node_errors: Map::new()
            }
        );
    }

    #[test]
    fn unknown_checkpoint_is_value_not_in_list_and_blames_the_output() {
        let mut g = txt2img();
        g["4"]["inputs"]["ckpt_name"] = json!("nope.safetensors");
        let body = rejected(g);
        assert_eq!(body["error"]["type"], "prompt_outputs_failed_validation");
        let node = &body["node_errors"]["4"];
        assert_eq!(node["class_type"], "CheckpointLoaderSimple");
        assert_eq!(node["dependent_outputs"], json!(["9"]));
        assert_eq!(node["errors"][0]["type"], "value_not_in_list");
        assert_eq!(node["errors"][0]["extra_info"]["input_name"], "ckpt_name");
        assert!(
            node["errors"][0]["details"]
                .as_str()
                .unwrap_or_default()
                .starts_with("ckpt_name: 'nope.safetensors' not in ['v1-5")
        );
    }

    #[test]
    fn range_type_and_missing_inputs_are_each_reported() {
        let mut g = txt2img();
        g["3"]["inputs"]["steps"] = json!(0);
        g["3"]["inputs"]["denoise"] = json!(1.5);
        g["3"]["inputs"]["cfg"] = json!("lots");
        g["5"]["inputs"].as_object_mut().map(|m| m.remove("width"));
        let body = rejected(g);
        let types = |id: &str| -> Vec<String> {
            body["node_errors"][id]["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["type"].as_str().unwrap_or_default().to_string())
                .collect()
        };
        assert_eq!(
            types("3"),
            [
                "value_smaller_than_min",
                "invalid_input_type",
                "value_bigger_than_max"
            ]
        );
        assert_eq!(types("5"), ["required_input_missing"]);
        assert_eq!(
            body["node_errors"]["3"]["errors"][0]["message"],
            "Value 0 smaller than min of 1"
        );
    }

    #[test]
    fn malformed_and_mistyped_links_are_reported() {
        let mut g = txt2img();
        g["8"]["inputs"]["vae"] = json!(["4"]);
        g["3"]["inputs"]["model"] = json!(["4", 1]);
        let body = rejected(g);
        assert_eq!(
            body["node_errors"]["8"]["errors"][0]["type"],
            "bad_linked_input"
        );
        assert_eq!(
            body["node_errors"]["3"]["errors"][0]["type"],
            "return_type_mismatch"
        );
    }

    #[test]
    fn a_graph_without_outputs_is_refused() {
        let body = rejected(json!({"5": {"class_type": "EmptyLatentImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1}}}));
        assert_eq!(body["error"]["type"], "prompt_no_outputs");
    }

    #[test]
    fn one_good_output_is_enough_to_run() {
        let mut g = txt2img();
        g["10"] = json!({"class_type": "PreviewImage", "inputs": {}});
        match verdict(g) {
            Verdict::Accepted {
                outputs,
                node_errors,
            } => {
                assert_eq!(outputs, ["9"]);
                assert_eq!(
                    node_errors["10"]["errors"][0]["type"],
                    "required_input_missing"
                );
            }
            other => panic!("expected acceptance, got {other:?}"),
        }
    }

    #[test]
    fn ints_convert_like_python_without_losing_seed_digits() {
        assert_eq!(
            to_int(&json!(18446744073709551615u64)),
            Ok(u64::MAX as i128)
        );
        assert_eq!(to_int(&json!("42")), Ok(42));
        assert_eq!(to_int(&json!(3.9)), Ok(3));
        assert!(to_int(&json!("x")).is_err());
    }
}
