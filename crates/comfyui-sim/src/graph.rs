//! A queued prompt's graph in API format: `{"3": {"class_type": "KSampler", "inputs": {...}}}`,
//! parsed against the known node classes, plus the orderings execution needs.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value};

use super::nodes::{self, NodeClass};

/// One node of a parsed graph.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub id: String,
    pub class: &'static NodeClass,
    /// The `inputs` object as the client sent it (links and widget values).
    pub inputs: Map<String, Value>,
}

/// A graph whose every node names a known class.
#[derive(Debug, Clone)]
pub(crate) struct Graph {
    pub nodes: BTreeMap<String, Node>,
}

/// Why a graph could not even be read: becomes a 400 answer with this error.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StructureError {
    /// `invalid_prompt` (also for an unknown class, as ComfyUI 0.3.64 says it).
    pub kind: &'static str,
    pub message: String,
    pub details: String,
    pub extra_info: Value,
}

impl StructureError {
    fn invalid(message: impl Into<String>, details: String) -> StructureError {
        StructureError {
            kind: "invalid_prompt",
            message: message.into(),
            details,
            extra_info: Value::Object(Map::new()),
        }
    }
}

/// Orders node ids the way people read them: numerically when both are numbers ("9" < "10").
pub(crate) fn id_order(a: &str, b: &str) -> Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

/// Sorts node ids with [`id_order`].
pub(crate) fn sort_ids(ids: &mut [String]) {
    ids.sort_by(|a, b| id_order(a, b));
}

/// The `(node_id, slot)` of a link value `["4", 1]`, if `v` is a well-formed link.
pub(crate) fn as_link(v: &Value) -> Option<(&str, usize)> {
    let items = v.as_array()?;
    if items.len() != 2 {
        return None;
    }
    let id = items[0].as_str()?;
    let slot = usize::try_from(items[1].as_u64()?).ok()?;
    Some((id, slot))
}

impl Graph {
    /// Reads the graph, requiring a `class_type` naming a known class on every node.
    pub(crate) fn parse(graph: &Value) -> Result<Graph, StructureError> {
        let Some(map) = graph.as_object() else {
            return Err(StructureError::invalid(
                "Cannot execute because the prompt is not a JSON object.",
                String::new(),
            ));
        };
        let mut ids: Vec<String> = map.keys().cloned().collect();
        sort_ids(&mut ids);
        let mut nodes = BTreeMap::new();
        for id in ids {
            let node = &map[&id];
            let Some(class_type) = node.get("class_type").and_then(Value::as_str) else {
                return Err(StructureError::invalid(
                    "Cannot execute because a node is missing the class_type property.",
                    format!("Node ID '#{id}'"),
                ));
            };
            let Some(class) = nodes::find(class_type) else {
                // ComfyUI 0.3.64's words; newer versions answer `missing_node_type`.
                return Err(StructureError {
                    kind: "invalid_prompt",
                    message: format!("Cannot execute because node {class_type} does not exist."),
                    details: format!("Node ID '#{id}'"),
                    extra_info: Value::Object(Map::new()),
                });
            };
            let inputs = node
                .get("inputs")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            nodes.insert(id.clone(), Node { id, class, inputs });
        }
        Ok(Graph { nodes })
    }

    /// Ids of the output nodes, in id order.
    pub(crate) fn output_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .nodes
            .values()
            .filter(|n| n.class.output_node)
            .map(|n| n.id.clone())
            .collect();
        sort_ids(&mut ids);
        ids
    }

    /// The nodes `id` links to, in the order its class declares the inputs.
    pub(crate) fn upstream(&self, id: &str) -> Vec<String> {
        let Some(node) = self.nodes.get(id) else {
            return Vec::new();
        };
        node.class
            .inputs
            .iter()
            .filter_map(|input| node.inputs.get(input.name))
            .filter_map(as_link)
            .map(|(up, _)| up.to_string())
            .collect()
    }

    /// Every node needed for `outputs`, each after the nodes it reads from.
    ///
    /// Depth first from each output in id order, inputs in declared order, like ComfyUI walks
    /// the graph; a cycle (rejected by validation anyway) is cut rather than looped on.
    pub(crate) fn execution_order(&self, outputs: &[String]) -> Vec<String> {
        let mut order = Vec::new();
        let mut done = HashSet::new();
        let mut visiting = HashSet::new();
        for output in outputs {
            self.visit(output, &mut done, &mut visiting, &mut order);
        }
        order
    }

    fn visit(
        &self,
        id: &str,
        done: &mut HashSet<String>,
        visiting: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) {
        if done.contains(id) || !self.nodes.contains_key(id) || !visiting.insert(id.to_string()) {
            return;
        }
        for up in self.upstream(id) {
            self.visit(&up, done, visiting, order);
        }
        visiting.remove(id);
        done.insert(id.to_string());
        order.push(id.to_string());
    }

    /// The type that output `slot` of node `id` carries, if both exist.
    pub(crate) fn output_type(&self, id: &str, slot: usize) -> Option<&'static str> {
        let node = self.nodes.get(id)?;
        node.class.outputs.get(slot).map(|(t, _)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn txt2img() -> Value {
        json!({
            "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["6", 0],
                  "negative": ["7", 0], "latent_image": ["5", 0], "seed": 1, "steps": 2, "cfg": 7,
                  "sampler_name": "euler", "scheduler": "normal", "denoise": 1}},
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x"}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}}
        })
    }

    #[test]
    fn order_puts_every_node_after_its_inputs() {
        let graph = Graph::parse(&txt2img()).expect("valid graph");
        let order = graph.execution_order(&graph.output_ids());
        assert_eq!(order, ["4", "6", "7", "5", "3", "8", "9"]);
    }

    #[test]
    fn unknown_class_is_named_with_its_node() {
        let err = Graph::parse(&json!({"3": {"class_type": "Foo", "inputs": {}}}))
            .expect_err("Foo is unknown");
        assert_eq!(err.kind, "invalid_prompt");
        assert_eq!(
            err.message,
            "Cannot execute because node Foo does not exist."
        );
        assert_eq!(err.details, "Node ID '#3'");
    }

    #[test]
    fn ids_sort_numerically() {
        let mut ids = vec!["10".to_string(), "9".to_string(), "a".to_string()];
        sort_ids(&mut ids);
        assert_eq!(ids, ["9", "10", "a"]);
    }
}
