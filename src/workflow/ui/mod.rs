//! Workflows as ComfyUI saves them (the "UI format": `nodes`, `links`, `widgets_values`, groups,
//! subgraphs...) converted to the API format ComfyUI's `/prompt` takes, as the frontend's own
//! `graphToPrompt()` does it, on the server.
//!
//! The node definitions of the ComfyUI that will run the graph ([`NodeDefs`], read from its
//! `/object_info`) give each class's inputs in order, which maps `widgets_values` to input
//! names. The rules, as the frontend applies them:
//! - node ids stay the UI ids; nodes inside a subgraph instance get `"INSTANCE:INNER"`
//!   (`"A:B:C"` when nested); instances themselves are not sent;
//! - frontend-only nodes (`Reroute`, `PrimitiveNode`, `Note`, `MarkdownNote`) are not sent; links
//!   pass through reroutes (legacy nodes, and native reroutes, which are only drawing), and a
//!   primitive's value replaces the value of each widget it feeds;
//! - a seed-like input's "control after generate" value, and upload buttons, take a slot of
//!   `widgets_values` but are not inputs;
//! - muted nodes (mode 2) are not sent, nor the inputs they fed; bypassed nodes (mode 4) are not
//!   sent and a link through one goes to the input that stands in for its output;
//! - a promoted widget's value on a subgraph instance replaces the value of the widget it feeds;
//! - text widgets with `dynamicPrompts` lose their comments and get one option of each
//!   `{a|b}` group, drawn at random, as on each queueing in the browser.
//!
//! ```
//! use comfyui_gateway::workflow::ui::{self, NodeDefs};
//! use serde_json::json;
//!
//! let defs = NodeDefs::from_object_info(&json!({
//!     "EmptyLatentImage": {"input": {"required": {
//!         "width": ["INT", {"default": 512}], "height": ["INT", {"default": 512}]}},
//!         "input_order": {"required": ["width", "height"]}, "display_name": "Empty Latent Image"},
//! }));
//! let saved = json!({"nodes": [{"id": 5, "type": "EmptyLatentImage", "mode": 0,
//!     "widgets_values": [768, 640]}], "links": []});
//! assert!(ui::is_ui_format(&saved));
//! let api = ui::convert(&saved, &defs).unwrap();
//! assert_eq!(api["5"]["inputs"], json!({"width": 768, "height": 640}));
//! ```

mod defs;
mod dynamic_prompt;
mod embedded;
mod expand;
mod graph;
mod replace;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

pub use defs::{ClassDef, NodeDefs, WidgetDef, WidgetKind};
pub use embedded::{EmbeddedError, workflow_from_file};
pub use expand::VIRTUAL_TYPES;

/// Whether `value` is a workflow in the UI format (an object with a `nodes` list) rather than
/// an API-format graph (an object of nodes keyed by id). Cheap: looks at one field.
pub fn is_ui_format(value: &Value) -> bool {
    value.get("nodes").is_some_and(Value::is_array)
}

/// The node classes a UI workflow uses (in subgraphs too), leaving out frontend-only types and
/// subgraph instances: the classes whose definitions [`convert`] needs.
pub fn classes_used(ui: &Value) -> BTreeSet<String> {
    let Ok(workflow) = graph::Workflow::read(ui) else {
        return BTreeSet::new();
    };
    workflow
        .graphs
        .iter()
        .flat_map(|g| g.nodes.iter())
        .map(|node| node.kind.as_str())
        .filter(|kind| {
            !VIRTUAL_TYPES.contains(kind) && !workflow.subgraph_index.contains_key(*kind)
        })
        .map(str::to_owned)
        .collect()
}

/// The nodes a UI workflow would send, by their API-format id (`"12"`, `"5:12"` inside
/// subgraph instance 5), with their types; muted and bypassed ones included, frontend-only
/// nodes and subgraph instances left out. Needs no node definitions.
pub fn node_types(ui: &Value) -> Result<BTreeMap<String, String>, ConvertError> {
    let workflow = graph::Workflow::read(ui).map_err(ConvertError::Shape)?;
    let mut out = BTreeMap::new();
    collect_nodes(&workflow, 0, "", &mut out, 0);
    Ok(out)
}

fn collect_nodes(
    workflow: &graph::Workflow<'_>,
    g: usize,
    prefix: &str,
    out: &mut BTreeMap<String, String>,
    depth: usize,
) {
    for node in &workflow.graphs[g].nodes {
        let id = format!("{prefix}{}", node.id);
        match workflow.subgraph_index.get(&node.kind) {
            Some(&inner) if depth < 32 => {
                collect_nodes(workflow, inner, &format!("{id}:"), out, depth + 1);
            }
            Some(_) => {}
            None if VIRTUAL_TYPES.contains(&node.kind.as_str()) => {}
            None => _ = out.insert(id, node.kind.clone()),
        }
    }
}

/// Converts a UI-format workflow to the API format, with the node definitions of the ComfyUI
/// that will run it. Dynamic-prompt choices are drawn at random.
pub fn convert(ui: &Value, defs: &NodeDefs) -> Result<Map<String, Value>, ConvertError> {
    convert_with(ui, defs, &mut random_index)
}

/// [`convert`] with the dynamic-prompt choice made by `pick(n)` (an index below `n`).
pub fn convert_with(
    ui: &Value,
    defs: &NodeDefs,
    pick: &mut dyn FnMut(usize) -> usize,
) -> Result<Map<String, Value>, ConvertError> {
    let workflow = graph::Workflow::read(ui).map_err(ConvertError::Shape)?;
    let output = expand::convert(&workflow, defs, pick).map_err(ConvertError::Nodes)?;
    if output.is_empty() {
        return Err(ConvertError::Shape(
            "the workflow has no node that ComfyUI would run (all are notes, muted or bypassed)"
                .into(),
        ));
    }
    Ok(output)
}

fn random_index(n: usize) -> usize {
    let mut bytes = [0u8; 8];
    crate::ids::fill_random(&mut bytes);
    usize::try_from(u64::from_le_bytes(bytes) % n.max(1) as u64).unwrap_or(0)
}

/// One node that cannot be converted, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeProblem {
    /// Its id in the API format (`"12"`, `"5:12"` inside subgraph instance 5).
    pub id: String,
    /// Its type, as saved.
    #[serde(rename = "type")]
    pub node_type: String,
    /// Its title, as the frontend shows it.
    pub title: String,
    /// What is wrong and what to install or fix.
    pub reason: String,
}

impl fmt::Display for NodeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} ({}", self.id, self.node_type)?;
        if self.title != self.node_type {
            write!(f, ", {:?}", self.title)?;
        }
        write!(f, "): {}", self.reason)
    }
}

/// Why a UI workflow could not be converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvertError {
    /// It is not a workflow of the UI shape (no node list, nodes without id or type).
    Shape(String),
    /// These nodes cannot be converted, each for its reason.
    Nodes(Vec<NodeProblem>),
}

impl ConvertError {
    /// The nodes that cannot be converted (none for a shape problem).
    pub fn nodes(&self) -> &[NodeProblem] {
        match self {
            ConvertError::Shape(_) => &[],
            ConvertError::Nodes(nodes) => nodes,
        }
    }
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvertError::Shape(reason) => write!(f, "not a workflow ComfyUI could save: {reason}"),
            ConvertError::Nodes(nodes) => {
                let s = if nodes.len() == 1 { "" } else { "s" };
                write!(f, "{} node{s} cannot be converted: ", nodes.len())?;
                let lines: Vec<String> = nodes.iter().map(ToString::to_string).collect();
                f.write_str(&lines.join("; "))
            }
        }
    }
}

impl std::error::Error for ConvertError {}
