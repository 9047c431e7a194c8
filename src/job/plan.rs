//! What a job will run: a validated request, kept until a backend takes it and saved with the job
//! so that a restarted gateway can still send it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;

use crate::api::{ApiError, ErrorCode, GenerateRequest};
use crate::workflow::{self, InputImage, Resolved, Templates, WorkflowFailure};

/// Where the graph comes from.
#[derive(Debug, Clone)]
pub enum GraphSource {
    /// A template filled with validated parameters.
    Template {
        /// The template's name.
        name: String,
        /// The parameters as resolved (seed drawn, images decoded).
        resolved: Resolved,
    },
    /// A raw API-format graph, sent as it is.
    Raw(Value),
}

/// A validated request, ready to be sent to any backend.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The workflow name reported in events and metadata (`"graph"` for a raw graph).
    pub workflow: String,
    /// What to fill and send.
    pub source: GraphSource,
}

/// Why a graph could not be built for a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFailure(pub String);

impl Plan {
    /// Validates `request` against the templates; nothing is sent anywhere yet.
    pub fn new(templates: &Templates, request: GenerateRequest) -> Result<Plan, ApiError> {
        match request {
            GenerateRequest::Graph { graph } => {
                // A workflow as ComfyUI saves it is converted now: nothing is queued if it
                // cannot be.
                let graph = if workflow::ui::is_ui_format(&graph) {
                    templates
                        .convert_ui(&graph)
                        .map(Value::Object)
                        .map_err(|e| workflow_failure("graph", &e))?
                } else {
                    graph
                };
                workflow::check_raw_graph(&graph).map_err(|errors| {
                    ApiError::new(ErrorCode::InvalidParams, format!("graph: {errors}"))
                        .with_details(errors.to_details())
                })?;
                Ok(Plan {
                    workflow: "graph".into(),
                    source: GraphSource::Raw(graph),
                })
            }
            GenerateRequest::Template { workflow, params } => {
                let template = templates.get(&workflow).ok_or_else(|| {
                    let known: Vec<&str> = templates.names().collect();
                    ApiError::new(
                        ErrorCode::UnknownWorkflow,
                        format!("no workflow template is named {workflow:?}"),
                    )
                    .with_details(json!({ "workflow": workflow, "available": known }))
                })?;
                let resolved = template.resolve(&params).map_err(|errors| {
                    ApiError::new(ErrorCode::InvalidParams, format!("{workflow}: {errors}"))
                        .with_details(errors.to_details())
                })?;
                if template.is_ui() {
                    // Converted again when the job is sent; checked now so that a workflow
                    // that cannot be converted is refused before anything is queued.
                    template
                        .api_graph()
                        .map_err(|e| workflow_failure(&workflow, &e))?;
                }
                Ok(Plan {
                    workflow: workflow.clone(),
                    source: GraphSource::Template {
                        name: workflow,
                        resolved,
                    },
                })
            }
        }
    }

    /// The parameters as resolved (seed drawn), for events and metadata.
    pub fn params(&self) -> Value {
        match &self.source {
            GraphSource::Template { resolved, .. } => json!(resolved.values),
            GraphSource::Raw(_) => json!({}),
        }
    }

    /// The seed, when the template has one.
    pub fn seed(&self) -> Option<u64> {
        match &self.source {
            GraphSource::Template { resolved, .. } => resolved.seed,
            GraphSource::Raw(_) => None,
        }
    }

    /// The images to upload before the graph can be built.
    pub fn input_images(&self) -> &[InputImage] {
        match &self.source {
            GraphSource::Template { resolved, .. } => &resolved.images,
            GraphSource::Raw(_) => &[],
        }
    }

    /// The graph to send, given the names ComfyUI gave the uploaded input images.
    pub fn build_graph(
        &self,
        templates: &Templates,
        uploaded: &BTreeMap<String, String>,
    ) -> Result<Value, BuildFailure> {
        match &self.source {
            GraphSource::Raw(graph) => Ok(graph.clone()),
            GraphSource::Template { name, resolved } => {
                let template = templates.get(name).ok_or_else(|| {
                    BuildFailure(format!("the template {name:?} is no longer loaded"))
                })?;
                template
                    .build_graph(resolved, uploaded)
                    .map_err(|e| BuildFailure(format!("filling template {name}: {e}")))
            }
        }
    }

    /// The plan as saved with its job.
    pub fn to_record(&self) -> PlanRecord {
        match &self.source {
            GraphSource::Raw(graph) => PlanRecord::Graph {
                graph: graph.clone(),
            },
            GraphSource::Template { name, resolved } => PlanRecord::Template {
                name: name.clone(),
                values: resolved.values.clone(),
                seed: resolved.seed,
                images: resolved
                    .images
                    .iter()
                    .map(|image| SavedImage {
                        param: image.param.clone(),
                        content_type: image.content_type.to_string(),
                        base64: STANDARD.encode(&image.bytes),
                    })
                    .collect(),
            },
        }
    }

    /// The plan a saved record describes.
    pub fn from_record(record: PlanRecord) -> Result<Plan, String> {
        match record {
            PlanRecord::Graph { graph } => Ok(Plan {
                workflow: "graph".into(),
                source: GraphSource::Raw(graph),
            }),
            PlanRecord::Template {
                name,
                values,
                seed,
                images,
            } => {
                let images = images
                    .into_iter()
                    .map(SavedImage::into_input)
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(Plan {
                    workflow: name.clone(),
                    source: GraphSource::Template {
                        name,
                        resolved: Resolved {
                            values,
                            seed,
                            images,
                        },
                    },
                })
            }
        }
    }
}

/// The answer to a workflow as ComfyUI saves it that could not be converted: 503
/// `comfyui_unavailable` while the node definitions cannot be read, 400 `invalid_workflow`
/// naming every node that cannot be converted otherwise. `what` is `"graph"` or the template.
pub fn workflow_failure(what: &str, failure: &WorkflowFailure) -> ApiError {
    match failure {
        WorkflowFailure::Unavailable(e) => ApiError::new(
            ErrorCode::ComfyuiUnavailable,
            format!(
                "{what} is a workflow as ComfyUI saves it; converting it needs the node \
                 definitions of ComfyUI, which cannot be read yet: {e}"
            ),
        )
        .with_details(json!({ "backends": e.backends })),
        WorkflowFailure::Invalid(e) => {
            ApiError::new(ErrorCode::InvalidWorkflow, format!("{what}: {e}"))
                .with_details(json!({ "nodes": e.nodes() }))
        }
    }
}

/// A plan as it is written to disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlanRecord {
    /// A template and its resolved parameters.
    Template {
        /// The template's name.
        name: String,
        /// The resolved parameter values.
        values: BTreeMap<String, Value>,
        /// The seed, exact (a `u64`, never through `f64`).
        seed: Option<u64>,
        /// Input images.
        images: Vec<SavedImage>,
    },
    /// A raw graph.
    Graph {
        /// The graph.
        graph: Value,
    },
}

/// An input image as saved: base64 inside the job's file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedImage {
    param: String,
    content_type: String,
    base64: String,
}

impl SavedImage {
    fn into_input(self) -> Result<InputImage, String> {
        let (content_type, extension) = match self.content_type.as_str() {
            "image/png" => ("image/png", "png"),
            "image/jpeg" => ("image/jpeg", "jpg"),
            "image/webp" => ("image/webp", "webp"),
            other => return Err(format!("input image of unknown type {other:?}")),
        };
        let bytes = STANDARD
            .decode(self.base64.as_bytes())
            .map_err(|e| format!("input image {}: {e}", self.param))?;
        Ok(InputImage {
            param: self.param,
            bytes,
            content_type,
            extension,
        })
    }
}
