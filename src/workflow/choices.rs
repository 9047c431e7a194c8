//! Choices from the ComfyUI that runs the job: a string parameter written into a ComfyUI combo
//! input (a checkpoint, LoRA, VAE, sampler, scheduler...) offers the values that input accepts
//! on the configured backends, read from their `/object_info`.
//!
//! - A combo input is one whose `/object_info` spec starts with a list of values
//!   (`[["a.safetensors", "b.safetensors"], {...}]`) or, in newer ComfyUI, is
//!   `["COMBO", {"options": [...]}]`.
//! - Only the node classes the templates write to are read (`/object_info/{class}`), once per
//!   backend, on first use: start-up never waits for ComfyUI. A backend that could not be read
//!   is asked again after [`RETRY_AFTER`], and at once by [`Installed::refresh`] (called when a
//!   backend restarts and by `POST /workflows/refresh`).
//! - With several backends a parameter's `choices` are the values every readable backend has;
//!   `partial_choices` names the backends of the others. A request must use one of `choices`
//!   (any backend may run the job); that is checked before anything is queued.
//! - When no backend could be read, the parameter stays free text and its schema says why.
//! - The same cache gives the node definitions that convert workflows as ComfyUI saves them
//!   ([`NodeDefsSource`]): each class is read once per backend, on first use, with the same
//!   retry delay and refresh.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::definitions::{DefsUnavailable, NodeDefsSource, WorkflowFailure};
use super::params::{ParamDefault, ParamErrors, ParamType};
use super::ui::{ClassDef, NodeDefs};
use super::{Template, Templates};
use crate::comfyui::ComfyClient;

/// How long a backend whose `/object_info` could not be read is left alone before the next
/// request asks it again.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);

/// The combo inputs of the node classes the templates use, per backend, read on demand.
pub struct Installed {
    backends: Vec<Backend>,
    /// Node classes that some template's string parameter writes to.
    classes: BTreeSet<String>,
}

struct Backend {
    client: ComfyClient,
    state: Mutex<State>,
    defs: Mutex<DefsCache>,
}

/// The node definitions read from one backend so far.
#[derive(Default)]
struct DefsCache {
    /// Class → its definition, or `None` when this backend does not have it.
    classes: BTreeMap<String, Option<ClassDef>>,
    /// The last failure to read, and when.
    failed: Option<(String, Instant)>,
}

/// One backend's combo inputs: class → input → allowed values. A class it lacks is absent.
type Combos = BTreeMap<String, BTreeMap<String, Vec<String>>>;

/// What is known of one backend.
enum State {
    /// Not asked yet.
    Unread,
    /// Its combo inputs.
    Read(Arc<Combos>),
    /// It could not be read, for this reason, at this time.
    Failed { reason: String, at: Instant },
}

/// One parameter's allowed values across the backends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParamChoices {
    /// Values every readable backend has, in the first backend's order.
    pub choices: Vec<String>,
    /// Values only some backends have → the base URLs of those that have them.
    pub partial: BTreeMap<String, Vec<String>>,
    /// Backends that could not be read → why (their values are not counted).
    pub unavailable: BTreeMap<String, String>,
}

impl ParamChoices {
    /// The overlay the parameter's schema gets: `choices`, `partial_choices`, and a note when
    /// some backends could not be read.
    fn schema_fields(&self, out: &mut Map<String, Value>) {
        out.insert("choices".into(), json!(self.choices));
        if !self.partial.is_empty() {
            out.insert("partial_choices".into(), json!(self.partial));
        }
        if !self.unavailable.is_empty() {
            out.insert("choices_unavailable".into(), json!(self.unavailable));
            out.insert(
                "choices_note".into(),
                "Installed values of the backends that answered; the others could not be read."
                    .into(),
            );
        }
    }
}

impl Installed {
    /// A cache for these backends and the classes `templates` write to. Contacts nothing.
    pub fn new(backends: &[ComfyClient], templates: &Templates) -> Installed {
        let classes = templates
            .iter()
            .flat_map(|template| {
                template
                    .parameters
                    .values()
                    .filter(|spec| spec.kind == ParamType::String)
                    .flat_map(|spec| spec.targets.iter())
                    .filter_map(|target| class_of(template, &target.node))
            })
            .collect();
        let backends = backends
            .iter()
            .map(|client| Backend {
                client: client.clone(),
                state: Mutex::new(State::Unread),
                defs: Mutex::new(DefsCache::default()),
            })
            .collect();
        Installed { backends, classes }
    }

    /// Reads `backend` (a base URL as [`ComfyClient::base_url`] gives it) again now, e.g. after
    /// it restarted with other models, and forgets the node definitions read from it (read again
    /// when next needed). Returns the reason when it could not be read; an unknown URL is an
    /// error too.
    pub fn refresh(&self, backend: &str) -> Result<(), String> {
        let found = self
            .backends
            .iter()
            .find(|b| b.client.base_url() == backend.trim_end_matches('/'));
        match found {
            Some(b) => {
                forget_defs(b);
                self.read(b).map(drop)
            }
            None => Err(format!("{backend} is not one of the configured backends")),
        }
    }

    /// Reads every backend again now (and forgets their node definitions); base URL → `null`
    /// when read, or the reason it was not.
    pub fn refresh_all(&self) -> BTreeMap<String, Option<String>> {
        self.backends
            .iter()
            .map(|b| {
                forget_defs(b);
                (b.client.base_url().to_string(), self.read(b).err())
            })
            .collect()
    }

    /// The allowed values of every string parameter of `template` that is written into a combo
    /// input on at least one backend that could be read, by parameter name.
    pub fn for_template(&self, template: &Template) -> BTreeMap<String, ParamChoices> {
        self.template_view(template).0
    }

    /// [`for_template`](Self::for_template), plus the backends that could not be read → why.
    fn template_view(
        &self,
        template: &Template,
    ) -> (BTreeMap<String, ParamChoices>, BTreeMap<String, String>) {
        let mut unavailable = BTreeMap::new();
        let mut readable = Vec::new();
        let has_strings = template
            .parameters
            .values()
            .any(|spec| spec.kind == ParamType::String);
        if !has_strings {
            return (BTreeMap::new(), unavailable); // nothing to look up: ComfyUI is not asked
        }
        for backend in &self.backends {
            let url = backend.client.base_url();
            match self.cached(backend) {
                Ok(combos) => readable.push((url, combos)),
                Err(reason) => _ = unavailable.insert(url.to_string(), reason),
            }
        }
        let mut out = BTreeMap::new();
        for (name, spec) in &template.parameters {
            if spec.kind != ParamType::String {
                continue;
            }
            let targets: Vec<(String, &str)> = spec
                .targets
                .iter()
                .filter_map(|t| Some((class_of(template, &t.node)?, t.input.as_str())))
                .collect();
            let per_backend: Vec<(&str, Vec<String>)> = readable
                .iter()
                .filter_map(|(url, combos)| Some((*url, values_for(combos, &targets)?)))
                .collect();
            if per_backend.is_empty() {
                continue; // not a combo input on any backend that answered
            }
            let mut choices = aggregate(&per_backend);
            choices.unavailable = unavailable.clone();
            if let Some(allowed) = &spec.enum_values {
                // The template's own list narrows what is installed.
                choices.choices.retain(|v| allowed.iter().any(|a| a == v));
                choices
                    .partial
                    .retain(|v, _| allowed.iter().any(|a| a == v));
            }
            out.insert(name.clone(), choices);
        }
        (out, unavailable)
    }

    /// The template as `GET /workflows/{name}` shows it: [`Template::schema`] with each combo
    /// parameter's `choices` (and `partial_choices`, `choices_unavailable`, `choices_note`).
    /// When backends could not be read, the template itself says so in `choices_unavailable`
    /// and `choices_note`, and its combo parameters stay free text. The OpenAPI document is
    /// built from this same value.
    pub fn schema(&self, template: &Template) -> Value {
        let mut schema = template.schema();
        if template.is_ui() {
            schema["format"] = json!("ui");
            match template.api_graph() {
                Ok(_) => schema["available"] = json!(true),
                Err(WorkflowFailure::Unavailable(e)) => {
                    schema["available"] = json!(false);
                    schema["unavailable"] = json!(format!(
                        "this template is a workflow as ComfyUI saves it; converting it needs \
                         the node definitions of ComfyUI: {e}"
                    ));
                }
                Err(WorkflowFailure::Invalid(e)) => {
                    schema["available"] = json!(false);
                    schema["unavailable"] = json!(e.to_string());
                    schema["problems"] = json!(e.nodes());
                }
            }
        }
        let (choices, unavailable) = self.template_view(template);
        if let Some(parameters) = schema["parameters"].as_object_mut() {
            for (name, param_choices) in &choices {
                if let Some(Value::Object(fields)) = parameters.get_mut(name) {
                    param_choices.schema_fields(fields);
                }
            }
        }
        if !unavailable.is_empty() && !self.classes.is_empty() {
            schema["choices_unavailable"] = json!(unavailable);
            schema["choices_note"] = json!(
                "The installed values (models, samplers...) of these ComfyUI backends could not \
                 be read from /object_info; parameters that need them are free text until they \
                 can (POST /workflows/refresh asks again)."
            );
        }
        schema
    }

    /// Checks that every combo parameter of a request (given, or its default) names a value
    /// every backend has installed. Parameters whose values are unknown pass; wrong types are
    /// left to [`Template::resolve`].
    pub fn check(
        &self,
        template: &Template,
        params: &Map<String, Value>,
    ) -> Result<(), (ParamErrors, BTreeMap<String, Vec<String>>)> {
        let mut errors = ParamErrors::default();
        let mut installed = BTreeMap::new();
        for (name, choices) in self.for_template(template) {
            let default = match template
                .parameters
                .get(&name)
                .and_then(|s| s.default.as_ref())
            {
                Some(ParamDefault::Value(Value::String(v))) => Some(v.as_str()),
                _ => None,
            };
            let (value, is_default) = match params.get(&name) {
                Some(Value::String(v)) => (v.as_str(), false),
                Some(_) => continue,
                None => match default {
                    Some(v) => (v, true),
                    None => continue,
                },
            };
            if choices.choices.iter().any(|c| c == value) {
                continue;
            }
            errors.insert(&name, problem(value, is_default, &choices));
            installed.insert(name, choices.choices);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err((errors, installed))
        }
    }

    /// The backend's combos, reading it when it was never read or failed long enough ago.
    fn cached(&self, backend: &Backend) -> Result<Arc<Combos>, String> {
        {
            let mut state = backend.state.lock().unwrap_or_else(PoisonError::into_inner);
            match &mut *state {
                State::Read(combos) => return Ok(Arc::clone(combos)),
                State::Failed { reason, at } if at.elapsed() < RETRY_AFTER => {
                    return Err(reason.clone());
                }
                // This request retries; the others keep the failure meanwhile instead of all
                // waiting on the same unresponsive backend.
                State::Failed { at, .. } => *at = Instant::now(),
                State::Unread => {}
            }
        }
        self.read(backend)
    }

    /// Asks the backend now (the lock is not held meanwhile) and keeps the answer.
    fn read(&self, backend: &Backend) -> Result<Arc<Combos>, String> {
        let result = read_combos(&backend.client, &self.classes).map(Arc::new);
        let state = match &result {
            Ok(combos) => State::Read(Arc::clone(combos)),
            Err(reason) => {
                log::warn!(
                    "cannot read the installed models of ComfyUI at {}: {reason}; combo \
                     parameters stay free text",
                    backend.client.base_url()
                );
                State::Failed {
                    reason: reason.clone(),
                    at: Instant::now(),
                }
            }
        };
        *backend.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
        result
    }
}

/// The combo inputs of `classes` on one backend.
fn read_combos(client: &ComfyClient, classes: &BTreeSet<String>) -> Result<Combos, String> {
    let mut out = BTreeMap::new();
    for class in classes {
        let Some(info) = client.node_info(class).map_err(|e| e.to_string())? else {
            continue;
        };
        let mut inputs = BTreeMap::new();
        for group in ["required", "optional"] {
            let Some(specs) = info["input"][group].as_object() else {
                continue;
            };
            for (input, spec) in specs {
                if let Some(values) = combo_values(spec) {
                    inputs.insert(input.clone(), values);
                }
            }
        }
        out.insert(class.clone(), inputs);
    }
    Ok(out)
}

/// The values of a combo input spec: `[[v1, v2, ...], {...}]`, or `["COMBO", {"options": [...]}]`
/// in newer ComfyUI. `None` for any other input. Non-string values are skipped.
pub fn combo_values(spec: &Value) -> Option<Vec<String>> {
    let list = match spec.get(0)? {
        Value::Array(values) => values,
        Value::String(kind) if kind == "COMBO" => spec.get(1)?.get("options")?.as_array()?,
        _ => return None,
    };
    Some(
        list.iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
    )
}

/// The values one backend allows for a parameter written to these (class, input) targets: the
/// values every combo target accepts. `None` when no target is a combo on this backend.
fn values_for(combos: &Combos, targets: &[(String, &str)]) -> Option<Vec<String>> {
    let mut lists = targets
        .iter()
        .filter_map(|(class, input)| combos.get(class)?.get(*input));
    let first = lists.next()?.clone();
    Some(lists.fold(first, |acc, list| {
        acc.into_iter().filter(|v| list.contains(v)).collect()
    }))
}

/// Splits the values of several backends into those all have and those only some have.
fn aggregate(per_backend: &[(&str, Vec<String>)]) -> ParamChoices {
    let mut seen: Vec<&String> = Vec::new();
    for (_, values) in per_backend {
        for value in values {
            if !seen.contains(&value) {
                seen.push(value);
            }
        }
    }
    let mut out = ParamChoices::default();
    for value in seen {
        let having: Vec<String> = per_backend
            .iter()
            .filter(|(_, values)| values.contains(value))
            .map(|(url, _)| url.to_string())
            .collect();
        if having.len() == per_backend.len() {
            out.choices.push(value.clone());
        } else {
            out.partial.insert(value.clone(), having);
        }
    }
    out
}

/// Why `value` is refused, listing what is installed.
fn problem(value: &str, is_default: bool, choices: &ParamChoices) -> String {
    let installed = if choices.choices.is_empty() {
        "none is installed on every backend".to_owned()
    } else {
        format!("installed: {}", choices.choices.join(", "))
    };
    if let Some(having) = choices.partial.get(value) {
        return format!(
            "{value:?} is installed only on {}, and any backend may run the job; {installed}",
            having.join(", ")
        );
    }
    if is_default {
        return format!(
            "the default {value:?} is not installed on ComfyUI; choose one ({installed})"
        );
    }
    format!("{value:?} is not installed on ComfyUI; {installed}")
}

/// The class of node `node` in the template's graph.
fn class_of(template: &Template, node: &str) -> Option<String> {
    template.node_class(node).map(str::to_owned)
}

impl NodeDefsSource for Installed {
    /// Each backend in turn gives the classes it has (read once, then cached); a class comes
    /// from the first backend that has it. Fails only when no backend could be read.
    fn node_defs(&self, classes: &BTreeSet<String>) -> Result<NodeDefs, DefsUnavailable> {
        let mut defs = NodeDefs::default();
        let mut unavailable = DefsUnavailable::default();
        let mut readable = 0;
        for backend in &self.backends {
            match backend_defs(backend, classes) {
                Ok(found) => {
                    readable += 1;
                    for (class, def) in found {
                        if defs.get(&class).is_none() {
                            defs.insert(&class, def);
                        }
                    }
                }
                Err(reason) => {
                    unavailable
                        .backends
                        .insert(backend.client.base_url().to_string(), reason);
                }
            }
        }
        if readable == 0 {
            return Err(unavailable);
        }
        Ok(defs)
    }
}

/// Forgets the node definitions read from `backend`: they are read again when next needed.
fn forget_defs(backend: &Backend) {
    *backend.defs.lock().unwrap_or_else(PoisonError::into_inner) = DefsCache::default();
}

/// The definitions of `classes` one backend has, reading those it was never asked for.
fn backend_defs(
    backend: &Backend,
    classes: &BTreeSet<String>,
) -> Result<Vec<(String, ClassDef)>, String> {
    let missing: Vec<String> = {
        let mut cache = backend.defs.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut cache.failed {
            Some((reason, at)) if at.elapsed() < RETRY_AFTER => return Err(reason.clone()),
            // This request retries; the others keep the failure meanwhile.
            Some((_, at)) => *at = Instant::now(),
            None => {}
        }
        classes
            .iter()
            .filter(|class| !cache.classes.contains_key(*class))
            .cloned()
            .collect()
    };
    let mut read = Vec::new();
    let mut failure = None;
    for class in missing {
        match backend.client.node_info(&class) {
            Ok(info) => {
                let def = info.and_then(|info| ClassDef::from_object_info(&class, &info));
                read.push((class, def));
            }
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    let mut cache = backend.defs.lock().unwrap_or_else(PoisonError::into_inner);
    cache.classes.extend(read);
    if let Some(reason) = failure {
        log::warn!(
            "cannot read node definitions from ComfyUI at {}: {reason}",
            backend.client.base_url()
        );
        cache.failed = Some((reason.clone(), Instant::now()));
        return Err(reason);
    }
    cache.failed = None;
    Ok(classes
        .iter()
        .filter_map(|class| Some((class.clone(), cache.classes.get(class)?.clone()?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_combo_forms_are_read() {
        let old = json!([["a.safetensors", "b.safetensors"], {"tooltip": "x"}]);
        assert_eq!(
            combo_values(&old),
            Some(vec!["a.safetensors".into(), "b.safetensors".into()])
        );
        let new = json!(["COMBO", {"options": ["euler", "heun"], "default": "euler"}]);
        assert_eq!(
            combo_values(&new),
            Some(vec!["euler".into(), "heun".into()])
        );
        assert_eq!(combo_values(&json!(["INT", {"min": 1}])), None);
        assert_eq!(combo_values(&json!(["MODEL"])), None);
        assert_eq!(combo_values(&json!("STRING")), None);
    }

    #[test]
    fn values_all_backends_have_are_choices_the_rest_partial() {
        let a = vec!["x".to_string(), "y".into(), "z".into()];
        let b = vec!["y".to_string(), "x".into(), "w".into()];
        let out = aggregate(&[("http://a", a), ("http://b", b)]);
        assert_eq!(out.choices, ["x", "y"]);
        assert_eq!(out.partial["z"], ["http://a"]);
        assert_eq!(out.partial["w"], ["http://b"]);
    }

    #[test]
    fn problems_list_what_is_installed() {
        let choices = ParamChoices {
            choices: vec!["a".into(), "b".into()],
            partial: [("c".to_string(), vec!["http://one".to_string()])].into(),
            unavailable: BTreeMap::new(),
        };
        let missing = problem("nope", false, &choices);
        assert!(missing.contains("\"nope\" is not installed") && missing.contains("a, b"));
        assert!(problem("c", false, &choices).contains("only on http://one"));
        assert!(problem("nope", true, &choices).starts_with("the default"));
    }
}
