//! The conversion proper, following what the frontend's `graphToPrompt()` does: subgraph
//! instances expanded into their inner nodes (ids `"INSTANCE:INNER"`), every input resolved
//! through reroutes, frontend-only nodes, bypassed nodes and subgraph boundaries to the output
//! that really feeds it, widget values mapped by the class's input order, and links to nodes that
//! are not sent (muted ones) dropped at the end.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};

use super::NodeProblem;
use super::defs::{ClassDef, NodeDefs, WidgetDef};
use super::dynamic_prompt;
use super::graph::{Graph, Node, SUBGRAPH_INPUT_NODE, SUBGRAPH_OUTPUT_NODE, Slot, Workflow};
use super::replace::{self, DateParts, SAVE_NODE_TYPES};

/// Node types that exist only in the frontend and are never sent to ComfyUI.
pub const VIRTUAL_TYPES: [&str; 4] = ["Reroute", "PrimitiveNode", "Note", "MarkdownNote"];

const MODE_NEVER: i64 = 2;
const MODE_BYPASS: i64 = 4;

/// One node of the flattened graph (the frontend's "executable node DTO").
struct Dto {
    /// `"12"`, or `"5:12"` inside instance 5.
    exec_id: String,
    /// Index of its graph in [`Workflow::graphs`].
    graph: usize,
    /// Index of the node in that graph.
    node: usize,
    /// The DTO of the subgraph instance it is inside.
    parent: Option<usize>,
    /// Its mode, or that of a muted or bypassed instance around it.
    mode: i64,
    /// For a subgraph instance: its slots as the definition has them (links from the saved
    /// instance), and the values of its promoted widgets by slot.
    instance: Option<Instance>,
}

struct Instance {
    /// Index of the definition in [`Workflow::graphs`].
    definition: usize,
    inputs: Vec<Slot>,
    outputs: Vec<String>,
    promoted: Vec<Option<Value>>,
}

enum Resolved {
    Link(String, usize),
    Value(Value),
}

type Step<T> = Result<T, String>;

/// Converts a workflow read by [`Workflow::read`]; problems are collected per node.
pub fn convert(
    workflow: &Workflow<'_>,
    defs: &NodeDefs,
    pick: &mut dyn FnMut(usize) -> usize,
) -> Result<Map<String, Value>, Vec<NodeProblem>> {
    let mut problems = Vec::new();
    let (overrides, replaced) = primitive_values(workflow);
    let mut flat = Flat {
        workflow,
        defs,
        overrides,
        dtos: Vec::new(),
        by_exec: HashMap::new(),
    };
    // Primitives marked "Run widget replace on values" pass through the file name replacements.
    for key in replaced {
        if let Some(Value::String(text)) = flat.overrides.get(&key).cloned() {
            let value = Value::String(flat.replace_in_name(&text));
            flat.overrides.insert(key, value);
        }
    }
    flat.add_graph(0, &[], None, &mut problems, &mut Vec::new());
    let mut output = Map::new();
    for index in 0..flat.dtos.len() {
        match flat.emit(index, pick) {
            Ok(Some((id, node))) => _ = output.insert(id, node),
            Ok(None) => {}
            Err(reason) => problems.push(flat.problem(index, reason)),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    // Inputs fed by nodes that are not sent (muted ones) are dropped, as the frontend does.
    let present: HashSet<String> = output.keys().cloned().collect();
    for node in output.values_mut() {
        if let Some(inputs) = node.get_mut("inputs").and_then(Value::as_object_mut) {
            inputs.retain(|_, value| match value.as_array().map(Vec::as_slice) {
                Some([Value::String(id), slot]) if slot.is_u64() => present.contains(id),
                _ => true,
            });
        }
    }
    Ok(output)
}

/// A widget of a node of a graph: (graph, node id, widget name).
type WidgetKey = (usize, String, String);

/// PrimitiveNode values, which the frontend writes into the widgets they feed (through legacy
/// reroutes too) before converting, and the widgets whose primitive asks for text replacements.
fn primitive_values(workflow: &Workflow<'_>) -> (HashMap<WidgetKey, Value>, Vec<WidgetKey>) {
    let mut out = HashMap::new();
    let mut replaced = Vec::new();
    for (g, graph) in workflow.graphs.iter().enumerate() {
        for node in graph.nodes.iter().filter(|n| n.kind == "PrimitiveNode") {
            let Some(value) = node.widgets_values.and_then(|v| v.get(0)) else {
                continue;
            };
            let mut sources = vec![node.id.as_str()];
            let mut seen = HashSet::new();
            while let Some(source) = sources.pop() {
                if !seen.insert(source) {
                    continue;
                }
                for link in graph.links.values().filter(|l| l.origin == source) {
                    let Some(target) = graph.node_index.get(&link.target).map(|&i| &graph.nodes[i])
                    else {
                        continue;
                    };
                    if target.kind == "Reroute" {
                        sources.push(target.id.as_str());
                    } else if let Some(widget) = target
                        .inputs
                        .get(link.target_slot)
                        .and_then(|s| s.widget.clone())
                    {
                        let key = (g, target.id.clone(), widget);
                        if node.replace_values {
                            replaced.push(key.clone());
                        }
                        out.insert(key, value.clone());
                    }
                }
            }
        }
    }
    (out, replaced)
}

struct Flat<'w, 'a> {
    workflow: &'w Workflow<'a>,
    defs: &'w NodeDefs,
    overrides: HashMap<WidgetKey, Value>,
    dtos: Vec<Dto>,
    by_exec: HashMap<String, usize>,
}

impl Flat<'_, '_> {
    /// Adds the nodes of graph `g` (inside the instances of `path`), expanding instances.
    /// `chain` holds the graphs being expanded, outermost first: a subgraph that contains
    /// itself is a problem, not an endless expansion.
    fn add_graph(
        &mut self,
        g: usize,
        path: &[String],
        parent: Option<usize>,
        problems: &mut Vec<NodeProblem>,
        chain: &mut Vec<usize>,
    ) {
        chain.push(g);
        let graph = &self.workflow.graphs[g];
        for (n, node) in graph.nodes.iter().enumerate() {
            let exec_id = path
                .iter()
                .map(String::as_str)
                .chain([node.id.as_str()])
                .collect::<Vec<_>>()
                .join(":");
            // Inner nodes keep their own modes, as in the frontend (which sets them when an
            // instance is muted or bypassed).
            let mode = node.mode;
            let definition = self.workflow.subgraph_index.get(&node.kind).copied();
            let index = self.dtos.len();
            self.by_exec.insert(exec_id.clone(), index);
            self.dtos.push(Dto {
                exec_id: exec_id.clone(),
                graph: g,
                node: n,
                parent,
                mode,
                instance: definition.map(|d| self.instance(node, d)),
            });
            if let Some(d) = definition {
                if chain.contains(&d) {
                    problems.push(self.problem(
                        index,
                        "its subgraph contains itself: open the workflow in ComfyUI and fix the \
                         subgraph"
                            .into(),
                    ));
                    continue;
                }
                let mut inner = path.to_vec();
                inner.push(node.id.clone());
                self.add_graph(d, &inner, Some(index), problems, chain);
            }
        }
        chain.pop();
    }

    /// An instance's slots, from its definition, and its promoted widget values.
    fn instance(&self, node: &Node<'_>, definition: usize) -> Instance {
        let def = &self.workflow.graphs[definition];
        let inputs: Vec<Slot> = def
            .io_inputs
            .iter()
            .enumerate()
            .map(|(i, io)| {
                let saved = node
                    .inputs
                    .iter()
                    .find(|s| s.name == io.name)
                    .or_else(|| node.inputs.get(i).filter(|s| s.name.is_empty()));
                Slot {
                    name: io.name.clone(),
                    kind: io.kind.clone(),
                    link: saved.and_then(|s| s.link),
                    widget: None,
                }
            })
            .collect();
        // Inputs that feed a widget inside get a widget on the instance, in input order; the
        // instance's widgets_values hold their values.
        let saved_values = node.widgets_values.and_then(Value::as_array);
        let inner: Vec<Option<(Value, usize)>> = def
            .io_inputs
            .iter()
            .enumerate()
            .map(|(i, io)| self.promoted_default(def, definition, i, &io.link_ids))
            .collect();
        // A promoted seed brings its "control after generate" slot along when the instance's
        // values have room for it (the layout of the widget inside).
        let widgets = inner.iter().flatten().count();
        let with_companions = saved_values.is_some_and(|v| v.len() > widgets);
        let mut promoted = Vec::new();
        let mut next = 0;
        for found in inner {
            match found {
                Some((default, companions)) => {
                    let value = saved_values
                        .and_then(|v| v.get(next))
                        .cloned()
                        .unwrap_or(default);
                    next += 1 + if with_companions { companions } else { 0 };
                    promoted.push(Some(value));
                }
                None => promoted.push(None),
            }
        }
        let outputs = def.io_outputs.iter().map(|o| o.kind.clone()).collect();
        Instance {
            definition,
            inputs,
            outputs,
            promoted,
        }
    }

    /// When subgraph input `slot` feeds a widget inside, that widget's saved value and the
    /// number of frontend-only slots that follow it.
    fn promoted_default(
        &self,
        def: &Graph<'_>,
        g: usize,
        slot: usize,
        link_ids: &[i64],
    ) -> Option<(Value, usize)> {
        let mut links: Vec<_> = link_ids.iter().filter_map(|id| def.links.get(id)).collect();
        if links.is_empty() {
            links = def
                .links
                .values()
                .filter(|l| l.origin == SUBGRAPH_INPUT_NODE && l.origin_slot == slot)
                .collect();
        }
        links.iter().find_map(|link| {
            let target = &def.nodes[*def.node_index.get(&link.target)?];
            let widget = target.inputs.get(link.target_slot)?.widget.clone()?;
            let class = self.defs.get(&target.kind);
            let values = class
                .map(|c| self.widget_values(g, target, c))
                .unwrap_or_default();
            let companions = class
                .and_then(|c| c.widgets.iter().find(|w| w.name == widget))
                .map_or(0, |w| w.companions);
            let value = values
                .into_iter()
                .find(|(name, _, _)| *name == widget)
                .map_or(Value::Null, |(_, value, _)| value);
            Some((value, companions))
        })
    }

    fn node(&self, index: usize) -> &Node<'_> {
        let dto = &self.dtos[index];
        &self.workflow.graphs[dto.graph].nodes[dto.node]
    }

    fn inputs(&self, index: usize) -> &[Slot] {
        match &self.dtos[index].instance {
            Some(instance) => &instance.inputs,
            None => &self.node(index).inputs,
        }
    }

    fn outputs(&self, index: usize) -> &[String] {
        match &self.dtos[index].instance {
            Some(instance) => &instance.outputs,
            None => &self.node(index).outputs,
        }
    }

    fn is_virtual(&self, index: usize) -> bool {
        VIRTUAL_TYPES.contains(&self.node(index).kind.as_str())
    }

    fn problem(&self, index: usize, reason: String) -> NodeProblem {
        let node = self.node(index);
        NodeProblem {
            id: self.dtos[index].exec_id.clone(),
            node_type: node.kind.clone(),
            title: self.title(node),
            reason,
        }
    }

    /// The node's title as the frontend shows it: the user's, else the class's display name.
    fn title(&self, node: &Node<'_>) -> String {
        match node.title {
            Some(title) => title.to_owned(),
            None => self
                .defs
                .get(&node.kind)
                .map_or_else(|| node.kind.clone(), |def| def.display_name.clone()),
        }
    }

    /// The widget values of a node: (name, value, whether it fits the widget's kind).
    fn widget_values(
        &self,
        g: usize,
        node: &Node<'_>,
        class: &ClassDef,
    ) -> Vec<(String, Value, bool)> {
        let saved = node.widgets_values;
        let mut cursor = 0;
        let mut out = Vec::new();
        for widget in &class.widgets {
            if widget.frontend_only {
                cursor += 1;
                continue;
            }
            let value = match saved {
                Some(Value::Array(values)) => {
                    let v = values.get(cursor).cloned();
                    cursor += 1 + widget.companions;
                    v
                }
                Some(Value::Object(by_name)) => by_name.get(&widget.name).cloned(),
                _ => None,
            };
            let value = value.unwrap_or_else(|| widget.default.clone());
            let key = (g, node.id.clone(), widget.name.clone());
            let (value, fits) = match self.overrides.get(&key) {
                // A primitive's value stands in for the saved one.
                Some(value) => (value.clone(), true),
                None => {
                    let fits = widget.kind.fits(&value);
                    (value, fits)
                }
            };
            out.push((widget.name.clone(), value, fits));
        }
        out
    }

    /// A file name prefix with its `%NODE.WIDGET%` and `%date:...%` patterns replaced.
    fn replace_in_name(&self, text: &str) -> String {
        if !text.contains('%') {
            return text.to_owned();
        }
        let lookup = |name: &str, widget: &str| -> Option<String> {
            let all = || {
                self.workflow
                    .graphs
                    .iter()
                    .enumerate()
                    .flat_map(|(g, graph)| graph.nodes.iter().map(move |node| (g, node)))
            };
            // Nodes of ComfyUI's classes get their type as S&R name when they have none (save
            // nodes excepted), as the frontend gives it when it creates them.
            let answers_to = |node: &Node<'_>| match node.sr_name {
                Some(sr_name) => sr_name == name,
                None => {
                    node.kind == name
                        && self.defs.get(name).is_some()
                        && !SAVE_NODE_TYPES.contains(&name)
                }
            };
            let (g, node) = all()
                .find(|(_, node)| answers_to(node))
                .or_else(|| all().find(|(_, node)| self.title(node) == name))?;
            let class = self.defs.get(&node.kind)?;
            let (_, value, _) = self
                .widget_values(g, node, class)
                .into_iter()
                .find(|(n, _, _)| n == widget)?;
            Some(js_string(&value))
        };
        replace::apply(text, DateParts::now_utc(), &lookup)
    }

    /// The API-format node for DTO `index`, or `None` when it is not sent.
    fn emit(
        &self,
        index: usize,
        pick: &mut dyn FnMut(usize) -> usize,
    ) -> Step<Option<(String, Value)>> {
        let dto = &self.dtos[index];
        if dto.instance.is_some()
            || self.is_virtual(index)
            || dto.mode == MODE_NEVER
            || dto.mode == MODE_BYPASS
        {
            return Ok(None);
        }
        let node = self.node(index);
        let Some(class) = self.defs.get(&node.kind) else {
            return Err(missing_class(node));
        };
        let mut inputs = Map::new();
        let mut misfits = Vec::new();
        // A widget fed by a link does not send its saved value: its fit does not matter.
        let linked: HashSet<&str> = node
            .inputs
            .iter()
            .filter(|slot| slot.link.is_some())
            .map(|slot| slot.widget.as_deref().unwrap_or(&slot.name))
            .collect();
        for (name, value, fits) in self.widget_values(dto.graph, node, class) {
            if !fits && !linked.contains(name.as_str()) {
                let widget = class.widgets.iter().find(|w| w.name == name);
                misfits.push(misfit(&name, widget, &value));
            }
            let value = match class.widgets.iter().find(|w| w.name == name) {
                Some(w) if w.dynamic_prompt => match &value {
                    Value::String(text) => Value::String(dynamic_prompt::resolve(text, pick)),
                    _ => value,
                },
                _ if name == "filename_prefix" && SAVE_NODE_TYPES.contains(&node.kind.as_str()) => {
                    match &value {
                        Value::String(text) => Value::String(self.replace_in_name(text)),
                        _ => value,
                    }
                }
                _ => value,
            };
            inputs.insert(name, wrap(value));
        }
        if !misfits.is_empty() {
            return Err(format!(
                "its saved widget values do not fit this ComfyUI's definition of {} ({}); the \
                 workflow may come from another version of the node: open it in this ComfyUI \
                 and save it again",
                node.kind,
                misfits.join("; ")
            ));
        }
        for slot in 0..self.inputs(index).len() {
            let name = self.inputs(index)[slot].name.clone();
            match self.resolve_input(index, slot, &mut HashSet::new(), None)? {
                None => {}
                Some(Resolved::Value(value)) => _ = inputs.insert(name, wrap(value)),
                Some(Resolved::Link(id, origin_slot)) => {
                    _ = inputs.insert(name, json!([id, origin_slot]))
                }
            }
        }
        let node_json = json!({
            "inputs": inputs,
            "class_type": node.kind,
            "_meta": {"title": self.title(node)},
        });
        Ok(Some((dto.exec_id.clone(), node_json)))
    }

    fn resolve_input(
        &self,
        index: usize,
        slot: usize,
        visited: &mut HashSet<String>,
        kind: Option<&str>,
    ) -> Step<Option<Resolved>> {
        let dto = &self.dtos[index];
        if !visited.insert(format!("{}[I]{slot}", dto.exec_id)) {
            return Err(format!("its links form a loop at node {}", dto.exec_id));
        }
        let Some(input) = self.inputs(index).get(slot) else {
            return Err(format!(
                "a link reaches its input #{slot}, which it does not have"
            ));
        };
        let Some(link_id) = input.link else {
            return Ok(None);
        };
        let graph = &self.workflow.graphs[dto.graph];
        let Some(link) = graph.links.get(&link_id) else {
            return Err(format!(
                "input {:?} uses link {link_id}, which the workflow does not have",
                input.name
            ));
        };
        if let Some(parent) = dto.parent
            && link.origin == SUBGRAPH_INPUT_NODE
        {
            let Some(instance) = &self.dtos[parent].instance else {
                return Ok(None);
            };
            let Some(outer) = instance.inputs.get(link.origin_slot) else {
                return Err(format!(
                    "input {:?} comes from subgraph input #{}, which the subgraph does not have",
                    input.name, link.origin_slot
                ));
            };
            if outer.link.is_none() {
                let promoted = instance.promoted.get(link.origin_slot).cloned().flatten();
                return Ok(promoted.map(Resolved::Value));
            }
            return self.resolve_input(parent, link.origin_slot, visited, None);
        }
        let origin = self.sibling(index, &link.origin).ok_or_else(|| {
            format!(
                "input {:?} links to node {}, which the workflow does not have",
                input.name, link.origin
            )
        })?;
        let kind = kind.unwrap_or(&input.kind).to_owned();
        self.resolve_output(origin, link.origin_slot, &kind, visited)
    }

    /// The DTO of node `id` in the same graph (and instance) as DTO `index`.
    fn sibling(&self, index: usize, id: &str) -> Option<usize> {
        let dto = &self.dtos[index];
        let exec = match dto.exec_id.rsplit_once(':') {
            Some((path, _)) => format!("{path}:{id}"),
            None => id.to_owned(),
        };
        self.by_exec.get(&exec).copied()
    }

    fn resolve_output(
        &self,
        index: usize,
        slot: usize,
        kind: &str,
        visited: &mut HashSet<String>,
    ) -> Step<Option<Resolved>> {
        let dto = &self.dtos[index];
        if !visited.insert(format!("{}[O]{slot}", dto.exec_id)) {
            return Err(format!("its links form a loop at node {}", dto.exec_id));
        }
        if dto.mode == MODE_BYPASS {
            return match self.bypass_slot(index, slot, kind) {
                Some(input) => self.resolve_input(index, input, visited, None),
                None => Ok(None),
            };
        }
        if let Some(instance) = &dto.instance {
            let def = &self.workflow.graphs[instance.definition];
            let link = def
                .io_outputs
                .get(slot)
                .and_then(|io| io.link_ids.iter().find_map(|id| def.links.get(id)))
                .or_else(|| {
                    def.links
                        .values()
                        .find(|l| l.target == SUBGRAPH_OUTPUT_NODE && l.target_slot == slot)
                });
            let Some(link) = link else {
                return Ok(None);
            };
            if link.origin == SUBGRAPH_INPUT_NODE {
                return self.resolve_input(index, link.origin_slot, visited, None);
            }
            let inner = format!("{}:{}", dto.exec_id, link.origin);
            let Some(&inner) = self.by_exec.get(&inner) else {
                return Err(format!(
                    "its subgraph output #{slot} comes from node {}, which the subgraph does not have",
                    link.origin
                ));
            };
            return self.resolve_output(inner, link.origin_slot, kind, visited);
        }
        if self.is_virtual(index) {
            if slot < self.inputs(index).len() {
                return self.resolve_input(index, slot, visited, Some(kind));
            }
            return Ok(None);
        }
        Ok(Some(Resolved::Link(dto.exec_id.clone(), slot)))
    }

    /// Which input of a bypassed node stands in for its output `slot` feeding a `kind` input:
    /// the same slot if the types fit, else the first input of exactly that type, else the first
    /// compatible one.
    fn bypass_slot(&self, index: usize, slot: usize, kind: &str) -> Option<usize> {
        let inputs = self.inputs(index);
        if kind == "*" {
            return if inputs.len() > slot {
                Some(slot)
            } else {
                (!inputs.is_empty()).then_some(0)
            };
        }
        let output = self.outputs(index).get(slot).map_or("*", String::as_str);
        if let Some(same) = inputs.get(slot)
            && connects(&same.kind, output)
            && connects(&same.kind, kind)
        {
            return Some(slot);
        }
        inputs.iter().position(|i| i.kind == kind).or_else(|| {
            inputs
                .iter()
                .position(|i| connects(&i.kind, output) && connects(&i.kind, kind))
        })
    }
}

/// Whether slots of types `a` and `b` may connect (litegraph's rule: `*` fits anything, case is
/// ignored, `A,B` lists alternatives).
fn connects(a: &str, b: &str) -> bool {
    if a == "*" || b == "*" || a == b {
        return true;
    }
    let (a, b) = (a.to_lowercase(), b.to_lowercase());
    if !a.contains(',') && !b.contains(',') {
        return a == b;
    }
    a.split(',').any(|x| b.split(',').any(|y| x == y))
}

/// A value as JavaScript's `value + ''` writes it (`1.0` is `1`, `null` is empty).
fn js_string(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 1e21 => format!("{f:.0}"),
            _ => n.to_string(),
        },
        Value::Array(items) => items.iter().map(js_string).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Arrays would read as links: the frontend wraps them, and ComfyUI unwraps them.
fn wrap(value: Value) -> Value {
    match value {
        Value::Array(items) => json!({"__value__": items}),
        other => other,
    }
}

/// Why a node's type is unknown, and what to install: the pack the workflow names, if any.
fn missing_class(node: &Node<'_>) -> String {
    let kind = &node.kind;
    if kind.starts_with("workflow>") || kind.starts_with("workflow/") {
        return "it is a group node (a legacy frontend feature): open the workflow in ComfyUI, \
                convert the group node to a subgraph and save it again"
            .into();
    }
    let saved_with = |version: Option<&str>| version.map_or(String::new(), |v| format!(" {v}"));
    match node.pack {
        Some(("comfy-core", version)) => format!(
            "node type {kind:?} is not installed on ComfyUI: it is one of ComfyUI's own nodes \
             (the workflow was saved with ComfyUI{}); update ComfyUI, or remove the node",
            saved_with(version)
        ),
        Some((pack, version)) => format!(
            "node type {kind:?} is not installed on ComfyUI: install the custom node pack \
             {pack:?}{} (ComfyUI-Manager's \"Install Missing Custom Nodes\" finds it) and \
             restart ComfyUI, or remove the node",
            saved_with(version)
        ),
        None => format!(
            "node type {kind:?} is not installed on ComfyUI: install the custom node pack that \
             provides it (ComfyUI-Manager's \"Install Missing Custom Nodes\" finds it) and \
             restart ComfyUI, or remove the node"
        ),
    }
}

fn misfit(name: &str, widget: Option<&WidgetDef>, value: &Value) -> String {
    let kind = widget.map_or("?", |w| w.kind.as_str());
    let mut shown = value.to_string();
    if shown.chars().count() > 60 {
        shown = shown.chars().take(57).chain("...".chars()).collect();
    }
    format!("{name} ({kind}) holds {shown}")
}
