//! The UI format read into plain structures: the root graph and each subgraph definition, with
//! their nodes, slots and links, whichever of the two link encodings they use.

use std::collections::HashMap;

use serde_json::Value;

/// The id the frontend gives a subgraph's input node in its links.
pub const SUBGRAPH_INPUT_NODE: &str = "-10";
/// The id the frontend gives a subgraph's output node in its links.
pub const SUBGRAPH_OUTPUT_NODE: &str = "-20";

/// A saved workflow: the root graph and the subgraph definitions by id.
#[derive(Debug)]
pub struct Workflow<'a> {
    /// Index 0 is the root graph; the others are subgraph definitions.
    pub graphs: Vec<Graph<'a>>,
    /// Subgraph id (the `type` of its instances) → index in `graphs`.
    pub subgraph_index: HashMap<String, usize>,
}

/// One graph: the root, or a subgraph definition.
#[derive(Debug, Default)]
pub struct Graph<'a> {
    /// The nodes in file order.
    pub nodes: Vec<Node<'a>>,
    /// Node id → index in `nodes`.
    pub node_index: HashMap<String, usize>,
    /// Link id → link.
    pub links: HashMap<i64, Link>,
    /// A subgraph's inputs (the slots of its instances).
    pub io_inputs: Vec<IoSlot>,
    /// A subgraph's outputs.
    pub io_outputs: Vec<IoSlot>,
}

/// One node as saved.
#[derive(Debug)]
pub struct Node<'a> {
    /// Its id, as a string.
    pub id: String,
    /// Its type: a class name, a frontend-only type, or a subgraph id.
    pub kind: String,
    /// 0 always, 2 muted ("never"), 4 bypassed.
    pub mode: i64,
    /// The title the user gave it, if any.
    pub title: Option<&'a str>,
    /// Its input slots.
    pub inputs: Vec<Slot>,
    /// The types of its outputs.
    pub outputs: Vec<String>,
    /// The saved widget values.
    pub widgets_values: Option<&'a Value>,
    /// The node pack it comes from, as the frontend records it: the Comfy registry id
    /// (`properties.cnr_id`, `comfy-core` for ComfyUI's own nodes) or the repository
    /// (`properties.aux_id`), with the version (`properties.ver`).
    pub pack: Option<(&'a str, Option<&'a str>)>,
    /// Its "Node name for S&R" property: the name `%NODE.WIDGET%` replacements look for.
    pub sr_name: Option<&'a str>,
    /// A PrimitiveNode's "Run widget replace on values" property.
    pub replace_values: bool,
}

/// One input slot.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The input name (the key in the API format).
    pub name: String,
    /// Its type (`MODEL`, `INT`, `*`...).
    pub kind: String,
    /// The link feeding it.
    pub link: Option<i64>,
    /// The widget it stands for, when it is a widget converted to an input.
    pub widget: Option<String>,
}

/// One input or output of a subgraph definition.
#[derive(Debug, Clone)]
pub struct IoSlot {
    /// Its name.
    pub name: String,
    /// Its type.
    pub kind: String,
    /// The links inside the subgraph that start (input) or end (output) at it.
    pub link_ids: Vec<i64>,
}

/// One link.
#[derive(Debug, Clone)]
pub struct Link {
    /// The node it starts from.
    pub origin: String,
    /// That node's output slot.
    pub origin_slot: usize,
    /// The node it ends at.
    pub target: String,
    /// That node's input slot.
    pub target_slot: usize,
}

/// Why the file is not a UI workflow at all.
pub type ShapeError = String;

impl<'a> Workflow<'a> {
    /// Reads the root graph and `definitions.subgraphs`.
    pub fn read(ui: &'a Value) -> Result<Workflow<'a>, ShapeError> {
        let root = read_graph(ui).map_err(|e| format!("the workflow {e}"))?;
        let mut graphs = vec![root];
        let mut subgraph_index = HashMap::new();
        for def in items(ui.get("definitions").and_then(|d| d.get("subgraphs"))) {
            let Some(id) = def.get("id").and_then(Value::as_str) else {
                return Err("a subgraph definition has no string id".into());
            };
            let mut graph = read_graph(def).map_err(|e| format!("subgraph {id} {e}"))?;
            graph.io_inputs = read_io(def.get("inputs"));
            graph.io_outputs = read_io(def.get("outputs"));
            subgraph_index.insert(id.to_owned(), graphs.len());
            graphs.push(graph);
        }
        Ok(Workflow {
            graphs,
            subgraph_index,
        })
    }
}

fn read_graph(value: &Value) -> Result<Graph<'_>, ShapeError> {
    let Some(nodes) = value.get("nodes").and_then(Value::as_array) else {
        return Err("has no \"nodes\" list".into());
    };
    let mut graph = Graph::default();
    for (n, node) in nodes.iter().enumerate() {
        let Some(id) = node.get("id").and_then(id_string) else {
            return Err(format!("node #{} has no id", n + 1));
        };
        let Some(kind) = node.get("type").and_then(Value::as_str) else {
            return Err(format!("node {id} has no type"));
        };
        let inputs = items(node.get("inputs"))
            .map(|slot| Slot {
                name: slot_name(slot),
                kind: slot_type(slot),
                link: slot.get("link").and_then(Value::as_i64),
                widget: slot
                    .get("widget")
                    .and_then(|w| w.get("name"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            })
            .collect();
        let outputs = items(node.get("outputs")).map(slot_type).collect();
        graph.node_index.insert(id.clone(), graph.nodes.len());
        graph.nodes.push(Node {
            id,
            kind: kind.to_owned(),
            mode: node.get("mode").and_then(Value::as_i64).unwrap_or(0),
            title: node.get("title").and_then(Value::as_str),
            inputs,
            outputs,
            widgets_values: node.get("widgets_values"),
            pack: pack_of(node),
            sr_name: node
                .get("properties")
                .and_then(|p| p.get("Node name for S&R"))
                .and_then(Value::as_str),
            replace_values: node
                .get("properties")
                .and_then(|p| p.get("Run widget replace on values"))
                .is_some_and(|v| v.as_bool() == Some(true)),
        });
    }
    for link in items(value.get("links")) {
        if let Some((id, link)) = read_link(link) {
            graph.links.insert(id, link);
        }
    }
    Ok(graph)
}

/// A link as `[id, origin, origin_slot, target, target_slot, type]` (root graphs) or as an
/// object with those names (subgraphs).
fn read_link(value: &Value) -> Option<(i64, Link)> {
    let field = |index: usize, name: &str| match value {
        Value::Array(items) => items.get(index),
        _ => value.get(name),
    };
    let slot = |v: Option<&Value>| {
        v.and_then(Value::as_u64)
            .and_then(|s| usize::try_from(s).ok())
    };
    Some((
        field(0, "id")?.as_i64()?,
        Link {
            origin: id_string(field(1, "origin_id")?)?,
            origin_slot: slot(field(2, "origin_slot"))?,
            target: id_string(field(3, "target_id")?)?,
            target_slot: slot(field(4, "target_slot"))?,
        },
    ))
}

fn pack_of(node: &Value) -> Option<(&str, Option<&str>)> {
    let properties = node.get("properties")?;
    let text = |key: &str| {
        properties
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let pack = text("cnr_id").or_else(|| text("aux_id"))?;
    Some((pack, text("ver")))
}

fn read_io(value: Option<&Value>) -> Vec<IoSlot> {
    items(value)
        .map(|slot| IoSlot {
            name: slot_name(slot),
            kind: slot_type(slot),
            link_ids: items(slot.get("linkIds"))
                .filter_map(Value::as_i64)
                .collect(),
        })
        .collect()
}

/// A node id as the API format spells it: numbers in decimal, strings as they are.
pub fn id_string(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// The elements of a JSON array, none when `value` is absent or not an array.
fn items(value: Option<&Value>) -> impl Iterator<Item = &Value> {
    value.and_then(Value::as_array).into_iter().flatten()
}

/// A slot's `name`, empty when it has none.
fn slot_name(slot: &Value) -> String {
    slot.get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// A slot's `type` ([`type_string`]), empty when it has none.
fn slot_type(slot: &Value) -> String {
    slot.get("type").map(type_string).unwrap_or_default()
}

/// A slot type as text; litegraph writes `0` or `""` for "any", which we spell `*`.
fn type_string(value: &Value) -> String {
    match value {
        Value::String(s) if s.is_empty() => "*".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) if n.as_i64() == Some(0) => "*".into(),
        other => other.to_string(),
    }
}
