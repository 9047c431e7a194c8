//! Workflow templates: ComfyUI graphs with named, checked parameters.
//!
//! A template file `workflows/NAME.json` holds a ComfyUI API-format graph and the parameters a
//! client may set, each mapped to one or more node inputs:
//!
//! ```json
//! {
//!   "description": "Text to image",
//!   "parameters": {
//!     "prompt": {"type": "string", "required": true, "targets": ["6.text"]},
//!     "seed": {"type": "integer", "default": "random", "min": 0, "targets": ["3.seed"]}
//!   },
//!   "graph": {"3": {"class_type": "KSampler", "inputs": {"seed": 0}}, "...": "..."}
//! }
//! ```
//!
//! The flow for one request:
//! 1. [`Templates::load_dir`] at start-up: every template is parsed and checked once, so a
//!    broken file stops the gateway with its name and the reason instead of failing requests.
//! 2. [`Template::resolve`] checks a request's values (all of them, reporting every bad field)
//!    and settles defaults and random seeds, before anything is sent to ComfyUI.
//! 3. The caller uploads [`Resolved::images`] to ComfyUI and gets their names back.
//! 4. [`Template::build_graph`] writes the values and uploaded names into a copy of the graph.
//!
//! Clients may also send a raw graph; [`check_raw_graph`] checks only its shape.
//!
//! A template's graph (or the whole file) may also be the workflow exactly as ComfyUI saves it
//! (the UI format): [`ui`] converts it to the API format as ComfyUI's frontend does, with the
//! node definitions of the backends ([`NodeDefsSource`], implemented by [`Installed`]).
//!
//! ```
//! use comfyui_gateway::workflow::Template;
//!
//! let text = r#"{
//!   "parameters": {"steps": {"type": "integer", "default": 20, "min": 1, "targets": ["1.steps"]}},
//!   "graph": {"1": {"class_type": "KSampler", "inputs": {"steps": 1}}}
//! }"#;
//! let template = Template::parse("demo", text).unwrap();
//! let params = serde_json::json!({"steps": 30});
//! let resolved = template.resolve(params.as_object().unwrap()).unwrap();
//! let graph = template.build_graph(&resolved, &Default::default()).unwrap();
//! assert_eq!(graph["1"]["inputs"]["steps"], 30);
//! ```

mod choices;
mod definitions;
mod graph;
mod input_image;
mod params;
mod template;
pub mod ui;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use choices::{Installed, ParamChoices, RETRY_AFTER, combo_values};
pub use definitions::{DefsHandle, DefsUnavailable, NodeDefsSource, WorkflowFailure};
pub use graph::check_raw_graph;
pub use input_image::InputImage;
pub use params::{ParamDefault, ParamErrors, ParamSpec, ParamType, Target};
pub use template::{
    BuildError, OutputTypes, RESERVED_PARAMETER_NAMES, Resolved, Template, TemplateProblem,
    UiWorkflow,
};

/// All templates of a workflows directory, by name, and where the node definitions for
/// converting workflows as ComfyUI saves them come from.
#[derive(Debug, Clone, Default)]
pub struct Templates {
    by_name: BTreeMap<String, Template>,
    defs: DefsHandle,
}

/// Why the workflows directory could not be loaded: the directory or a file could not be read,
/// or a file is not a valid template. Names the path in every case.
#[derive(Debug)]
pub enum TemplateError {
    /// The directory itself could not be listed.
    ReadDir {
        /// The workflows directory.
        dir: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A template file could not be read.
    Read {
        /// The file.
        file: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A template file was read but is not a valid template.
    Invalid {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        problem: TemplateProblem,
    },
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TemplateError::ReadDir { dir, source } => write!(
                f,
                "cannot list the workflows directory {}: {source}",
                dir.display()
            ),
            TemplateError::Read { file, source } => write!(
                f,
                "cannot read workflow template {}: {source}",
                file.display()
            ),
            TemplateError::Invalid { file, problem } => {
                write!(
                    f,
                    "workflow template {} is invalid: {problem}",
                    file.display()
                )
            }
        }
    }
}

impl std::error::Error for TemplateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TemplateError::ReadDir { source, .. } | TemplateError::Read { source, .. } => {
                Some(source)
            }
            TemplateError::Invalid { problem, .. } => Some(problem),
        }
    }
}

impl Templates {
    /// Loads every `*.json` file of `dir` (not recursing; hidden files skipped), each named by
    /// its file stem. Files are checked in name order and the first broken one is the error, so
    /// start-up failures are reproducible. An empty directory gives an empty set.
    pub fn load_dir(dir: &Path) -> Result<Templates, TemplateError> {
        let read_dir_error = |source| TemplateError::ReadDir {
            dir: dir.to_path_buf(),
            source,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read_dir_error)? {
            let path = entry.map_err(read_dir_error)?.path();
            let hidden = path
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with('.'));
            let is_json = path.extension().is_some_and(|ext| ext == "json");
            if is_json && !hidden && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        files.iter().map(|file| load_file(file)).collect()
    }

    /// Converts workflows as ComfyUI saves them (templates, and raw graphs through
    /// [`Templates::convert_ui`]) with the node definitions `source` gives.
    pub fn use_node_defs(&mut self, source: std::sync::Arc<dyn NodeDefsSource>) {
        self.defs = DefsHandle::new(source);
        for template in self.by_name.values_mut() {
            if let Some(ui) = &mut template.ui {
                ui.defs = self.defs.clone();
            }
        }
    }

    /// The API graph of a workflow as ComfyUI saves it (a client's raw graph), converted with
    /// the backends' node definitions.
    pub fn convert_ui(
        &self,
        workflow: &serde_json::Value,
    ) -> Result<serde_json::Map<String, serde_json::Value>, WorkflowFailure> {
        self.defs.convert(workflow)
    }

    /// The template called `name`, if loaded.
    pub fn get(&self, name: &str) -> Option<&Template> {
        self.by_name.get(name)
    }

    /// The template names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// The templates, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Template> {
        self.by_name.values()
    }

    /// How many templates there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Collects templates, e.g. ones built with [`Template::parse`] in tests; a later template
/// replaces an earlier one of the same name.
impl FromIterator<Template> for Templates {
    fn from_iter<I: IntoIterator<Item = Template>>(templates: I) -> Templates {
        let by_name = templates
            .into_iter()
            .map(|template| (template.name.clone(), template))
            .collect();
        Templates {
            by_name,
            defs: DefsHandle::default(),
        }
    }
}

fn load_file(file: &Path) -> Result<Template, TemplateError> {
    let text = std::fs::read_to_string(file).map_err(|source| TemplateError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    let name = file
        .file_stem()
        .map(|stem| stem.to_string_lossy())
        .unwrap_or_default();
    Template::parse(&name, &text).map_err(|problem| TemplateError::Invalid {
        file: file.to_path_buf(),
        problem,
    })
}
