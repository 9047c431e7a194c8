//! Where the node definitions for converting workflows as ComfyUI saves them come from: a
//! [`NodeDefsSource`] (the backends' `/object_info`, cached by [`super::Installed`]), shared by
//! the templates and the request code through a [`DefsHandle`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::ui::{self, ConvertError, NodeDefs};

/// Gives the definitions of node classes, as the ComfyUI backends have them.
pub trait NodeDefsSource: Send + Sync {
    /// The definitions of `classes` (a class no readable backend has is simply absent), or why
    /// no backend could be read.
    fn node_defs(&self, classes: &BTreeSet<String>) -> Result<NodeDefs, DefsUnavailable>;
}

/// No backend's node definitions could be read: base URL → why.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DefsUnavailable {
    /// Each backend and what went wrong reading it.
    pub backends: BTreeMap<String, String>,
}

impl fmt::Display for DefsUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.backends.is_empty() {
            return f.write_str("no ComfyUI is configured to read node definitions from");
        }
        let each: Vec<String> = self
            .backends
            .iter()
            .map(|(url, reason)| format!("{url}: {reason}"))
            .collect();
        write!(
            f,
            "the node definitions (/object_info) of ComfyUI could not be read ({})",
            each.join("; ")
        )
    }
}

/// Why a workflow as ComfyUI saves it could not be turned into an API graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkflowFailure {
    /// The definitions could not be read (yet): try again when ComfyUI answers.
    Unavailable(DefsUnavailable),
    /// The workflow itself cannot be converted: what to install or fix, per node.
    Invalid(ConvertError),
}

impl fmt::Display for WorkflowFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkflowFailure::Unavailable(e) => e.fmt(f),
            WorkflowFailure::Invalid(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for WorkflowFailure {}

/// A shared [`NodeDefsSource`], or none (templates parsed on their own, e.g. in tests). Every
/// handle compares equal: it is plumbing, not part of a template's meaning.
#[derive(Clone, Default)]
pub struct DefsHandle(Option<Arc<dyn NodeDefsSource>>);

impl DefsHandle {
    /// A handle on `source`.
    pub fn new(source: Arc<dyn NodeDefsSource>) -> DefsHandle {
        DefsHandle(Some(source))
    }

    /// Converts a UI-format workflow with the definitions of the classes it uses.
    pub fn convert(&self, workflow: &Value) -> Result<Map<String, Value>, WorkflowFailure> {
        let Some(source) = &self.0 else {
            return Err(WorkflowFailure::Unavailable(DefsUnavailable::default()));
        };
        let defs = source
            .node_defs(&ui::classes_used(workflow))
            .map_err(WorkflowFailure::Unavailable)?;
        ui::convert(workflow, &defs).map_err(WorkflowFailure::Invalid)
    }
}

impl fmt::Debug for DefsHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "DefsHandle(set)"
        } else {
            "DefsHandle(none)"
        })
    }
}

impl PartialEq for DefsHandle {
    fn eq(&self, _: &DefsHandle) -> bool {
        true
    }
}
