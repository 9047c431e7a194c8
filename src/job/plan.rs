//! What a job will run: a validated request, kept until a backend takes it and saved with the job
//! so that a restarted gateway can still send it.
//!
//! Input files are not part of the plan: at submission each one goes to the blob store once
//! (`DATA_DIR/blobs`, content-addressed), and the plan keeps a [`BlobInput`] (its hash, its
//! extension and the node inputs that name it). The bytes are read again only when the job is
//! dispatched, so a waiting job holds no image in memory and its saved record stays small.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::api::{ApiError, ErrorCode, GenerateRequest};
use crate::blobs::{BlobHash, BlobStore};
use crate::workflow::{self, Resolved, Target, Templates, WorkflowFailure};
/// Where the graph comes from.
#[derive(Debug, Clone)]
pub enum GraphSource {
    /// A template filled with validated parameters.
    Template {
        /// The template's name.
        name: String,
        /// The parameters as resolved (seed drawn, images decoded).
        resolved: Resolved,
        /// The API graph of a template saved as ComfyUI saves it, converted when the request was
        /// checked so that sending it does not convert it again. `None` for an API-format
        /// template, and for a plan read back from its record (converted when sent).
        converted: Option<Arc<Map<String, Value>>>,
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
    /// The input files, in the blob store, to upload before the graph is sent.
    pub inputs: Vec<BlobInput>,
}

/// An input file of a job: a blob to upload into ComfyUI's input folder (once per backend, see
/// `job::ensure_input`), and the node inputs whose value becomes the name ComfyUI knows it by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInput {
    /// The file's contents, in the blob store.
    pub hash: BlobHash,
    /// Its extension without the dot (`png`, `jpg`, `webp`), for the uploaded name.
    pub ext: String,
    /// The node inputs that get the uploaded name (`LoadImage`'s `image`).
    pub targets: Vec<InputTarget>,
}

/// One node input of a graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputTarget {
    /// The node id (`"10"`).
    pub node: String,
    /// The input's name (`"image"`).
    pub input: String,
}

impl From<&Target> for InputTarget {
    fn from(target: &Target) -> InputTarget {
        InputTarget {
            node: target.node.clone(),
            input: target.input.clone(),
        }
    }
}

impl BlobInput {
    /// The content type to upload it with, from its extension.
    pub fn content_type(&self) -> &'static str {
        content_type_of(&self.ext)
    }
}

/// The content type of an input file with extension `ext`.
pub(super) fn content_type_of(ext: &str) -> &'static str {
    match ext {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        _ => "application/octet-stream",
    }
}

/// Why a graph could not be built for a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFailure(pub String);

impl Plan {
    /// Validates `request` against the templates and puts its input images in `blobs`;
    /// nothing is sent anywhere yet.
    pub fn new(
        templates: &Templates,
        request: GenerateRequest,
        blobs: &BlobStore,
    ) -> Result<Plan, ApiError> {
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
                    inputs: Vec::new(),
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
                let mut resolved = template.resolve(&params).map_err(|errors| {
                    ApiError::new(ErrorCode::InvalidParams, format!("{workflow}: {errors}"))
                        .with_details(errors.to_details())
                })?;
                // Converted now, once: a workflow that cannot be converted is refused before
                // anything is queued, and the job sends the graph made here.
                let converted = if template.is_ui() {
                    let graph = template
                        .api_graph()
                        .map_err(|e| workflow_failure(&workflow, &e))?;
                    Some(Arc::new(graph))
                } else {
                    None
                };
                // The images leave memory for the blob store; the plan keeps their hashes.
                let mut inputs = Vec::new();
                for image in std::mem::take(&mut resolved.images) {
                    let stored = blobs
                        .put(&mut image.bytes.as_slice(), u64::MAX, None)
                        .map_err(|e| {
                            ApiError::internal(format!(
                                "the input image {} could not be kept in {}: {e}",
                                image.param,
                                blobs.dir().display()
                            ))
                        })?;
                    let targets = template
                        .parameters
                        .get(&image.param)
                        .map(|spec| spec.targets.iter().map(InputTarget::from).collect())
                        .unwrap_or_default();
                    inputs.push(BlobInput {
                        hash: stored.hash,
                        ext: image.extension.to_string(),
                        targets,
                    });
                }
                Ok(Plan {
                    workflow: workflow.clone(),
                    source: GraphSource::Template {
                        name: workflow,
                        resolved,
                        converted,
                    },
                    inputs,
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

    /// The graph to send, given the names ComfyUI knows the inputs by (`names[i]` for
    /// `inputs[i]`).
    pub fn build_graph(
        &self,
        templates: &Templates,
        names: &[String],
    ) -> Result<Value, BuildFailure> {
        let mut graph = match &self.source {
            GraphSource::Raw(graph) => graph.clone(),
            GraphSource::Template {
                name,
                resolved,
                converted,
            } => {
                let template = templates.get(name).ok_or_else(|| {
                    BuildFailure(format!("the template {name:?} is no longer loaded"))
                })?;
                let none = BTreeMap::new();
                match converted {
                    Some(graph) => template.fill_graph(Map::clone(graph), resolved, &none),
                    None => template.build_graph(resolved, &none),
                }
                .map_err(|e| BuildFailure(format!("filling template {name}: {e}")))?
            }
        };
        for (input, name) in self.inputs.iter().zip(names) {
            for target in &input.targets {
                let slot = graph
                    .get_mut(&target.node)
                    .and_then(|node| node.get_mut("inputs"))
                    .and_then(|inputs| inputs.as_object_mut())
                    .ok_or_else(|| {
                        BuildFailure(format!(
                            "the graph has no node {} with inputs for the input file {}",
                            target.node, input.hash
                        ))
                    })?;
                slot.insert(target.input.clone(), Value::String(name.clone()));
            }
        }
        Ok(graph)
    }

    /// The plan as saved with its job: input files as blob references, never their bytes.
    pub fn to_record(&self) -> PlanRecord {
        match &self.source {
            GraphSource::Raw(graph) => PlanRecord::Graph {
                graph: graph.clone(),
                inputs: self.inputs.clone(),
            },
            GraphSource::Template { name, resolved, .. } => PlanRecord::Template {
                name: name.clone(),
                values: resolved.values.clone(),
                seed: resolved.seed,
                inputs: self.inputs.clone(),
                images: Vec::new(),
            },
        }
    }

    /// The plan a saved record describes. A record written by an older gateway, with its images
    /// inside it (base64), has them put in `blobs` (`templates` tells where they go).
    pub fn from_record(
        record: PlanRecord,
        templates: &Templates,
        blobs: &BlobStore,
    ) -> Result<Plan, String> {
        match record {
            PlanRecord::Graph { graph, inputs } => Ok(Plan {
                workflow: "graph".into(),
                source: GraphSource::Raw(graph),
                inputs,
            }),
            PlanRecord::Template {
                name,
                values,
                seed,
                mut inputs,
                images,
            } => {
                for image in images {
                    inputs.push(image.into_blob(&name, templates, blobs)?);
                }
                Ok(Plan {
                    workflow: name.clone(),
                    source: GraphSource::Template {
                        name,
                        resolved: Resolved {
                            values,
                            seed,
                            images: Vec::new(),
                        },
                        converted: None,
                    },
                    inputs,
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
        /// Input files, as blob references.
        #[serde(default)]
        inputs: Vec<BlobInput>,
        /// Input images inside the record, as gateways before the blob store wrote them; read
        /// back (into the blob store), never written.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        images: Vec<SavedImage>,
    },
    /// A raw graph.
    Graph {
        /// The graph.
        graph: Value,
        /// Input files, as blob references.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        inputs: Vec<BlobInput>,
    },
}

/// An input image as older gateways saved it: base64 inside the job's file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedImage {
    param: String,
    content_type: String,
    base64: String,
}

impl SavedImage {
    /// Moves the image into `blobs`, aimed at the targets of its parameter in `template`.
    fn into_blob(
        self,
        template: &str,
        templates: &Templates,
        blobs: &BlobStore,
    ) -> Result<BlobInput, String> {
        let ext = match self.content_type.as_str() {
            "image/png" => "png",
            "image/jpeg" => "jpg",
            "image/webp" => "webp",
            other => return Err(format!("input image of unknown type {other:?}")),
        };
        let bytes = STANDARD
            .decode(self.base64.as_bytes())
            .map_err(|e| format!("input image {}: {e}", self.param))?;
        let targets = templates
            .get(template)
            .and_then(|t| t.parameters.get(&self.param))
            .map(|spec| spec.targets.iter().map(InputTarget::from).collect())
            .ok_or_else(|| {
                format!(
                    "input image {}: template {template} has no such parameter",
                    self.param
                )
            })?;
        let stored = blobs
            .put(&mut bytes.as_slice(), u64::MAX, None)
            .map_err(|e| format!("input image {}: {e}", self.param))?;
        Ok(BlobInput {
            hash: stored.hash,
            ext: ext.to_string(),
            targets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_with_images_inside_moves_them_to_the_blob_store_and_is_saved_small() {
        let dir = std::env::temp_dir().join(format!("plan-blobs-{}", crate::ids::new_uuid()));
        let blobs = BlobStore::open(&dir).expect("a blob store");
        let workflows = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
        let templates = Templates::load_dir(&workflows).expect("the shipped templates");
        let png = b"\x89PNG\r\n\x1a\nnot really a picture".to_vec();
        let legacy = json!({
            "kind": "template", "name": "img2img", "values": {"prompt": "x"}, "seed": 3,
            "images": [{"param": "image", "content_type": "image/png",
                        "base64": STANDARD.encode(&png)}],
        });
        let record: PlanRecord = serde_json::from_value(legacy).expect("an old record reads");
        let plan = Plan::from_record(record, &templates, &blobs).expect("restorable");
        let hash = BlobHash::of(&png);
        assert_eq!(
            plan.inputs,
            [BlobInput {
                hash,
                ext: "png".into(),
                targets: vec![InputTarget {
                    node: "10".into(),
                    input: "image".into()
                }],
            }]
        );
        assert_eq!(std::fs::read(blobs.path(&hash)).expect("kept"), png);
        let saved = serde_json::to_string(&plan.to_record()).expect("serialisable");
        assert!(!saved.contains("base64"), "{saved}");
        assert!(saved.contains(&hash.to_string()), "{saved}");
        let graph = plan
            .build_graph(&templates, &["gateway/x.png".to_string()])
            .expect("a graph");
        assert_eq!(graph["10"]["inputs"]["image"], "gateway/x.png");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The conversion fixtures' node definitions, counting how often they are asked for.
    #[derive(Default)]
    struct CountingDefs(std::sync::atomic::AtomicUsize);

    impl workflow::NodeDefsSource for CountingDefs {
        fn node_defs(
            &self,
            _classes: &std::collections::BTreeSet<String>,
        ) -> Result<workflow::ui::NodeDefs, workflow::DefsUnavailable> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let info: Value =
                serde_json::from_str(include_str!("../../tests/fixtures/ui/object_info.json"))
                    .expect("fixture is JSON");
            Ok(workflow::ui::NodeDefs::from_object_info(&info))
        }
    }

    #[test]
    fn a_ui_template_is_converted_once_when_checked_and_not_again_when_sent() {
        let dir = std::env::temp_dir().join(format!("plan-ui-{}", crate::ids::new_uuid()));
        let blobs = BlobStore::open(&dir).expect("a blob store");
        let case: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/ui/basic.json")).expect("JSON");
        let template =
            workflow::Template::parse("saved", &case["workflow"].to_string()).expect("a template");
        let mut templates: Templates = [template].into_iter().collect();
        let defs = Arc::new(CountingDefs::default());
        templates.use_node_defs(defs.clone());
        let conversions = || defs.0.load(std::sync::atomic::Ordering::SeqCst);
        let request = GenerateRequest::Template {
            workflow: "saved".into(),
            params: Map::new(),
        };
        let plan = Plan::new(&templates, request, &blobs).expect("a plan");
        assert_eq!(conversions(), 1);
        for _ in 0..2 {
            assert_eq!(
                plan.build_graph(&templates, &[]).expect("a graph"),
                case["api"]
            );
        }
        assert_eq!(conversions(), 1, "sending converts nothing again");

        // A plan read back from its record has no conversion with it: made when sent.
        let restored = Plan::from_record(plan.to_record(), &templates, &blobs).expect("restored");
        assert_eq!(
            restored.build_graph(&templates, &[]).expect("a graph"),
            case["api"]
        );
        assert_eq!(conversions(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
