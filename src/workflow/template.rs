//! One workflow template: parsing and checking its file, describing it to clients, resolving a
//! request's parameters and filling the graph with them.

use std::collections::{BTreeMap, btree_map::Entry};
use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::definitions::{DefsHandle, WorkflowFailure};
use super::graph::{link_source, node_problem};
use super::input_image::InputImage;
use super::params::{ParamErrors, ParamFile, ParamSpec, ParamType, Resolution, Target};
use super::ui::{self, ConvertError, NodeProblem};

/// Request keys that are never template parameters: the template's name, a raw graph, and the
/// object of the gateway's own fields (`api::OPTIONS_FIELD`). A template naming a parameter
/// like one of them is refused at start-up. (A parameter may share a name with one of the
/// gateway's top-level fields, such as `quality`: the template's parameter then takes that
/// name, and the gateway's field is given in `options`.)
pub const RESERVED_PARAMETER_NAMES: &[&str] = &["workflow", "graph", "options"];

/// A checked workflow template: a ComfyUI API-format graph, or a workflow as ComfyUI saves it,
/// and the parameters a client may set.
///
/// Every target of every parameter names an existing node and one of its literal (non-link)
/// inputs, and no two parameters write the same input. For a workflow as ComfyUI saves it, the
/// node is checked when the file is loaded and the input once the workflow is converted (that
/// needs the node definitions of ComfyUI).
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    /// The template's name: its file stem, and the `workflow` a request names.
    pub name: String,
    /// What the template does, for people choosing one.
    pub description: String,
    /// The parameters, by name.
    pub parameters: BTreeMap<String, ParamSpec>,
    /// The API-format graph as the file has it; parameters fill copies of it. Empty when the
    /// template is a workflow as ComfyUI saves it ([`Template::ui`]).
    pub graph: Map<String, Value>,
    /// Which of ComfyUI's file types a job keeps (the file's `outputs` field).
    pub outputs: OutputTypes,
    /// The workflow as ComfyUI saved it, when the template is one: converted to an API graph
    /// each time one is needed, with the backends' node definitions.
    pub ui: Option<UiWorkflow>,
}

/// A template's workflow as ComfyUI saves it (the UI format).
#[derive(Debug, Clone, PartialEq)]
pub struct UiWorkflow {
    /// The workflow as saved.
    pub workflow: std::sync::Arc<Value>,
    /// Its nodes by API-format id (`"5:12"` inside subgraph instance 5) → type.
    pub nodes: BTreeMap<String, String>,
    /// Where node definitions come from (set by [`super::Templates::use_node_defs`]).
    pub(super) defs: DefsHandle,
}

/// Which of ComfyUI's file types a job collects and stores: a template's `"outputs"` field.
///
/// ComfyUI writes saved files (`SaveImage`, `SaveVideo`, `SaveAudio`...) with type `output`, and
/// previews (`PreviewImage`, `PreviewAudio`...) with type `temp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputTypes {
    /// No `outputs` field: the saved files, or the previews when the graph saved none (so that a
    /// graph ending in `PreviewImage` still gives its images).
    #[default]
    SavedOrPreviews,
    /// `["output"]`: saved files only.
    Saved,
    /// `["temp"]`: previews only.
    Previews,
    /// `["output", "temp"]`: both.
    Both,
}

impl OutputTypes {
    /// Reads a template's `outputs` list: `"output"` and/or `"temp"`, at least one.
    fn from_list(list: &[String]) -> Result<OutputTypes, String> {
        if let Some(odd) = list
            .iter()
            .find(|t| !matches!(t.as_str(), "output" | "temp"))
        {
            return Err(format!(
                "{odd:?} is not a ComfyUI file type: use \"output\" and/or \"temp\""
            ));
        }
        let has = |name: &str| list.iter().any(|t| t == name);
        match (has("output"), has("temp")) {
            (true, true) => Ok(OutputTypes::Both),
            (true, false) => Ok(OutputTypes::Saved),
            (false, true) => Ok(OutputTypes::Previews),
            (false, false) => Err("the list is empty: name \"output\" and/or \"temp\"".into()),
        }
    }

    /// Whether a file of ComfyUI type `kind` (`output`, `temp`, ...) is wanted, given whether the
    /// prompt saved any `output` file at all.
    pub fn wants(self, kind: &str, saved_any: bool) -> bool {
        let temp = kind == "temp";
        match self {
            OutputTypes::SavedOrPreviews => temp != saved_any,
            OutputTypes::Saved => !temp,
            OutputTypes::Previews => temp,
            OutputTypes::Both => true,
        }
    }
}

/// A template file exactly as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
    #[serde(default)]
    description: String,
    #[serde(default)]
    parameters: BTreeMap<String, ParamFile>,
    graph: Map<String, Value>,
    #[serde(default)]
    outputs: Option<Vec<String>>,
}

/// Why a template file's contents were refused. [`super::TemplateError`] adds the file.
#[derive(Debug)]
pub enum TemplateProblem {
    /// The file is not JSON of the template shape (unknown field, wrong type, bad `type` name).
    Json(serde_json::Error),
    /// The file name cannot serve as a template name in a URL.
    Name(String),
    /// The graph is malformed: a node without `class_type`/`inputs`, a link to a missing node.
    Graph(String),
    /// The `outputs` list names something other than `output` and `temp`, or nothing.
    Outputs(String),
    /// A parameter is incoherent or targets something the graph does not have.
    Parameter {
        /// The parameter's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for TemplateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateProblem::Json(err) => write!(f, "not a valid template file: {err}"),
            TemplateProblem::Name(name) => write!(
                f,
                "template name {name:?} may only use letters, digits, '-', '_' and '.'"
            ),
            TemplateProblem::Graph(reason) => write!(f, "graph: {reason}"),
            TemplateProblem::Outputs(reason) => write!(f, "outputs: {reason}"),
            TemplateProblem::Parameter { name, reason } => {
                write!(f, "parameter {name:?}: {reason}")
            }
        }
    }
}

impl std::error::Error for TemplateProblem {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TemplateProblem::Json(err) => Some(err),
            _ => None,
        }
    }
}

/// One request's parameters, fully checked: what to report and what to upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// Every parameter as used: given values, defaults, drawn random seeds. Image parameters
    /// appear as `{"bytes": N, "content_type": "image/png"}`, never as their data. An optional
    /// image that was not sent is absent.
    pub values: BTreeMap<String, Value>,
    /// The value of a parameter named `seed`, when there is one and it is a `u64`.
    pub seed: Option<u64>,
    /// The images to upload before the graph can be built, in parameter-name order.
    pub images: Vec<InputImage>,
}

/// Why a graph could not be built from resolved parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    /// An image was resolved for this parameter but no uploaded name was given for it.
    MissingUpload {
        /// The image parameter.
        param: String,
    },
    /// A target names a node or input the graph lacks (only possible for a hand-built template
    /// that skipped the load-time checks).
    MissingTarget {
        /// The parameter.
        param: String,
        /// Its target, `node.input`.
        target: String,
    },
    /// The template is a workflow as ComfyUI saves it, and it could not be converted.
    Workflow(WorkflowFailure),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::MissingUpload { param } => write!(
                f,
                "building the graph: image parameter {param:?} has no uploaded file name"
            ),
            BuildError::MissingTarget { param, target } => write!(
                f,
                "building the graph: parameter {param:?} targets {target}, which the graph lacks"
            ),
            BuildError::Workflow(failure) => write!(f, "converting the workflow: {failure}"),
        }
    }
}

impl std::error::Error for BuildError {}

impl Template {
    /// Parses and checks a template file's text; `name` is the name it will be known by.
    pub fn parse(name: &str, text: &str) -> Result<Template, TemplateProblem> {
        if !is_valid_name(name) {
            return Err(TemplateProblem::Name(name.to_owned()));
        }
        let value: Value = serde_json::from_str(text).map_err(TemplateProblem::Json)?;
        let file: TemplateFile = if ui::is_ui_format(&value) {
            // The workflow exactly as ComfyUI saved it: no parameters.
            TemplateFile {
                description: String::new(),
                parameters: BTreeMap::new(),
                graph: value.as_object().cloned().unwrap_or_default(),
                outputs: None,
            }
        } else {
            serde_json::from_value(value).map_err(TemplateProblem::Json)?
        };
        let ui = if ui::is_ui_format(&Value::Object(file.graph.clone())) {
            let workflow = Value::Object(file.graph.clone());
            let nodes =
                ui::node_types(&workflow).map_err(|e| TemplateProblem::Graph(e.to_string()))?;
            if nodes.is_empty() {
                return Err(TemplateProblem::Graph(
                    "the workflow has no node to run".into(),
                ));
            }
            Some(UiWorkflow {
                workflow: std::sync::Arc::new(workflow),
                nodes,
                defs: DefsHandle::default(),
            })
        } else {
            check_graph(&file.graph).map_err(TemplateProblem::Graph)?;
            None
        };
        let outputs = match &file.outputs {
            None => OutputTypes::default(),
            Some(list) => OutputTypes::from_list(list).map_err(TemplateProblem::Outputs)?,
        };
        let mut parameters = BTreeMap::new();
        let mut written: BTreeMap<Target, String> = BTreeMap::new();
        for (param, raw) in file.parameters {
            let problem = |reason| TemplateProblem::Parameter {
                name: param.clone(),
                reason,
            };
            if RESERVED_PARAMETER_NAMES.contains(&param.as_str()) {
                return Err(problem(format!(
                    "{param:?} is a key of the request itself (one of {}); rename the parameter",
                    RESERVED_PARAMETER_NAMES.join(", ")
                )));
            }
            let spec = ParamSpec::from_file(raw).map_err(problem)?;
            for target in &spec.targets {
                match &ui {
                    Some(ui) => check_ui_target(ui, target).map_err(problem)?,
                    None => check_target(&file.graph, target).map_err(problem)?,
                }
                match written.entry(target.clone()) {
                    Entry::Occupied(other) => {
                        return Err(problem(format!(
                            "targets {target}, which parameter {:?} also sets",
                            other.get()
                        )));
                    }
                    Entry::Vacant(slot) => _ = slot.insert(param.clone()),
                }
            }
            parameters.insert(param, spec);
        }
        Ok(Template {
            name: name.to_owned(),
            description: file.description,
            parameters,
            graph: if ui.is_some() { Map::new() } else { file.graph },
            outputs,
            ui,
        })
    }

    /// Whether the template is a workflow as ComfyUI saves it (converted on use).
    pub fn is_ui(&self) -> bool {
        self.ui.is_some()
    }

    /// The class of node `node` (an API-format id), whichever format the template is in.
    pub fn node_class(&self, node: &str) -> Option<&str> {
        match &self.ui {
            Some(ui) => ui.nodes.get(node).map(String::as_str),
            None => self.graph.get(node)?.get("class_type")?.as_str(),
        }
    }

    /// The API-format graph parameters are written into: the file's, or the conversion of the
    /// workflow as ComfyUI saved it, with every parameter target checked against it.
    pub fn api_graph(&self) -> Result<Map<String, Value>, WorkflowFailure> {
        let Some(ui) = &self.ui else {
            return Ok(self.graph.clone());
        };
        let graph = ui.defs.convert(&ui.workflow)?;
        let mut problems = Vec::new();
        for (param, spec) in &self.parameters {
            for target in &spec.targets {
                if let Err(reason) = check_target(&graph, target) {
                    let class = ui.nodes.get(&target.node).cloned().unwrap_or_default();
                    problems.push(NodeProblem {
                        id: target.node.clone(),
                        title: class.clone(),
                        node_type: class,
                        reason: format!("template parameter {param:?} {reason}"),
                    });
                }
            }
        }
        if problems.is_empty() {
            Ok(graph)
        } else {
            Err(WorkflowFailure::Invalid(ConvertError::Nodes(problems)))
        }
    }

    /// The template as `GET /workflows` shows it: `{"name", "description", "parameters": {name:
    /// {type, required, default, min, max, multiple_of, enum, description}}}`, absent
    /// constraints left out. Targets are not shown: clients need not know node ids.
    pub fn schema(&self) -> Value {
        let parameters: Map<String, Value> = self
            .parameters
            .iter()
            .map(|(name, spec)| (name.clone(), spec.schema()))
            .collect();
        serde_json::json!({
            "name": self.name,
            "description": self.description,
            "parameters": parameters,
        })
    }

    /// Checks a request's parameters (the body without its `workflow` key) against the template
    /// and settles every value: defaults applied, random seeds drawn, images decoded.
    /// Nothing is sent anywhere; on failure every bad field is reported, not just the first.
    pub fn resolve(&self, params: &Map<String, Value>) -> Result<Resolved, ParamErrors> {
        let mut errors = ParamErrors::default();
        for key in params.keys() {
            if !self.parameters.contains_key(key) {
                errors.insert(key, self.unknown_parameter_message());
            }
        }
        let mut values = BTreeMap::new();
        let mut images = Vec::new();
        for (name, spec) in &self.parameters {
            match spec.resolve(params.get(name)) {
                Err(message) => errors.insert(name, message),
                Ok(Resolution::Value(value)) => _ = values.insert(name.clone(), value),
                Ok(Resolution::Image(image)) => {
                    let summary = serde_json::json!({
                        "bytes": image.bytes.len(),
                        "content_type": image.content_type,
                    });
                    values.insert(name.clone(), summary);
                    images.push(InputImage {
                        param: name.clone(),
                        bytes: image.bytes,
                        content_type: image.content_type,
                        extension: image.extension,
                    });
                }
                Ok(Resolution::Absent) => {}
            }
        }
        errors.into_result()?;
        let seed = values.get("seed").and_then(Value::as_u64);
        Ok(Resolved {
            values,
            seed,
            images,
        })
    }

    /// A copy of the graph with every resolved parameter written to all its targets. `uploaded`
    /// maps each image parameter to the name ComfyUI gave its upload; every image in `resolved`
    /// needs one. Parameters not in `resolved` leave their inputs as the graph has them.
    pub fn build_graph(
        &self,
        resolved: &Resolved,
        uploaded: &BTreeMap<String, String>,
    ) -> Result<Value, BuildError> {
        let graph = self.api_graph().map_err(BuildError::Workflow)?;
        self.fill_graph(graph, resolved, uploaded)
    }

    /// [`Template::build_graph`] into `graph`, the template's [`Template::api_graph`] made
    /// earlier (a workflow as ComfyUI saves it is then not converted again).
    pub fn fill_graph(
        &self,
        mut graph: Map<String, Value>,
        resolved: &Resolved,
        uploaded: &BTreeMap<String, String>,
    ) -> Result<Value, BuildError> {
        for (param, spec) in &self.parameters {
            let value = if spec.kind == ParamType::Image {
                match uploaded.get(param) {
                    Some(name) => Value::String(name.clone()),
                    None if resolved.images.iter().any(|image| image.param == *param) => {
                        return Err(BuildError::MissingUpload {
                            param: param.clone(),
                        });
                    }
                    None => continue,
                }
            } else {
                match resolved.values.get(param) {
                    Some(value) => value.clone(),
                    None => continue,
                }
            };
            for target in &spec.targets {
                let slot =
                    input_mut(&mut graph, target).ok_or_else(|| BuildError::MissingTarget {
                        param: param.clone(),
                        target: target.to_string(),
                    })?;
                *slot = value.clone();
            }
        }
        Ok(Value::Object(graph))
    }

    fn unknown_parameter_message(&self) -> String {
        let names: Vec<&str> = self.parameters.keys().map(String::as_str).collect();
        if names.is_empty() {
            return format!("unknown parameter; template {} takes none", self.name);
        }
        format!("unknown parameter; expected one of: {}", names.join(", "))
    }
}

/// Whether `name` can be a template name: non-empty, not hidden, URL-safe without escaping.
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks node shapes and that every link points at a node of the graph.
fn check_graph(graph: &Map<String, Value>) -> Result<(), String> {
    if graph.is_empty() {
        return Err("has no nodes".to_owned());
    }
    for (id, node) in graph {
        if let Some(problem) = node_problem(node) {
            return Err(format!("node {id:?} {problem}"));
        }
        for (input, value) in node_inputs(graph, id).into_iter().flatten() {
            if let Some(source) = link_source(value)
                && !graph.contains_key(source)
            {
                return Err(format!(
                    "node {id:?} input {input:?} links to node {source:?}, which is not in the graph"
                ));
            }
        }
    }
    Ok(())
}

/// Checks that a target of a workflow as ComfyUI saves it names one of its nodes (its input is
/// checked once the workflow is converted).
fn check_ui_target(ui: &UiWorkflow, target: &Target) -> Result<(), String> {
    if ui.nodes.contains_key(&target.node) {
        return Ok(());
    }
    let known: Vec<&str> = ui.nodes.keys().map(String::as_str).collect();
    Err(format!(
        "targets {target}, but the workflow has no node {:?} that ComfyUI runs (nodes inside a \
         subgraph are \"INSTANCE:INNER\"); it has: {}",
        target.node,
        known.join(", ")
    ))
}

/// Checks that a target names an existing node and one of its literal inputs.
fn check_target(graph: &Map<String, Value>, target: &Target) -> Result<(), String> {
    let Some(inputs) = node_inputs(graph, &target.node) else {
        return Err(format!(
            "targets {target}, but the graph has no node {:?}",
            target.node
        ));
    };
    let Some(value) = inputs.get(&target.input) else {
        let class = graph
            .get(&target.node)
            .and_then(|node| node.get("class_type"))
            .and_then(Value::as_str)
            .unwrap_or("?");
        let known: Vec<&str> = inputs.keys().map(String::as_str).collect();
        return Err(format!(
            "targets {target}, but node {:?} ({class}) has no input {:?}; it has: {}",
            target.node,
            target.input,
            known.join(", ")
        ));
    };
    if link_source(value).is_some() {
        return Err(format!(
            "targets {target}, which is a link to another node's output; parameters can only set literal inputs"
        ));
    }
    Ok(())
}

fn node_inputs<'g>(graph: &'g Map<String, Value>, node: &str) -> Option<&'g Map<String, Value>> {
    graph.get(node)?.get("inputs")?.as_object()
}

fn input_mut<'g>(graph: &'g mut Map<String, Value>, target: &Target) -> Option<&'g mut Value> {
    graph
        .get_mut(&target.node)?
        .get_mut("inputs")?
        .as_object_mut()?
        .get_mut(&target.input)
}
