//! Warm-up: a small workflow (`WARMUP_WORKFLOW`, e.g. `invert` or `txt2img:steps=1`) run on each
//! backend when the gateway first reaches it and whenever it comes back after a restart, so that
//! ComfyUI has loaded its models before the first user job. `/ready` answers 503 while a warm-up
//! runs, and names a warm-up that failed, with ComfyUI's message; the gateway serves regardless.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::comfyui::{ComfyClient, ComfyError};
use crate::ids;
use crate::workflow::Templates;

/// What `WARMUP_WORKFLOW` names: a template and the parameters to run it with.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmupSpec {
    /// The template.
    pub workflow: String,
    /// Its parameters (values as JSON: `steps=1` is the number 1, `prompt=a cat` a string).
    pub params: Map<String, Value>,
}

impl WarmupSpec {
    /// Parses `NAME` or `NAME:KEY=VALUE,KEY=VALUE`; `Err` says what is expected.
    pub fn parse(raw: &str) -> Result<WarmupSpec, String> {
        let expected = || {
            "a template name, optionally followed by :KEY=VALUE pairs separated by commas, \
             e.g. invert or txt2img:steps=1,width=64"
                .to_string()
        };
        let (workflow, pairs) = raw.split_once(':').unwrap_or((raw, ""));
        let workflow = workflow.trim();
        if workflow.is_empty() {
            return Err(expected());
        }
        let mut params = Map::new();
        for pair in pairs.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(expected)?;
            let key = key.trim();
            if key.is_empty() {
                return Err(expected());
            }
            let value = value.trim();
            let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
            params.insert(key.to_string(), value);
        }
        Ok(WarmupSpec {
            workflow: workflow.to_string(),
            params,
        })
    }
}

impl fmt::Display for WarmupSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.workflow)?;
        let pairs: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect();
        if !pairs.is_empty() {
            write!(f, ":{}", pairs.join(","))?;
        }
        Ok(())
    }
}

/// Where one backend's warm-up stands.
#[derive(Debug, Clone, PartialEq)]
pub enum WarmupState {
    /// Running now.
    Running,
    /// Finished: the models are loaded.
    Done,
    /// ComfyUI refused or failed it: its message.
    Failed(String),
}

/// The warm-ups of every backend.
pub struct Warmup {
    spec: WarmupSpec,
    graph: Value,
    timeout: Duration,
    states: Mutex<BTreeMap<String, WarmupState>>,
}

/// How often `/history` is asked whether the warm-up prompt finished.
const POLL: Duration = Duration::from_millis(200);

impl Warmup {
    /// A warm-up of `spec`, checked against the templates now (a bad `WARMUP_WORKFLOW` stops
    /// start-up); each run gives up after `timeout`.
    pub fn new(
        spec: WarmupSpec,
        templates: &Templates,
        timeout: Duration,
    ) -> Result<Warmup, String> {
        let template = templates.get(&spec.workflow).ok_or_else(|| {
            format!(
                "no template is named {:?} (found: {})",
                spec.workflow,
                templates.names().collect::<Vec<_>>().join(", ")
            )
        })?;
        if template.is_ui() {
            // Its graph needs ComfyUI's node definitions, and start-up never waits for ComfyUI.
            return Err(format!(
                "template {:?} is a workflow as ComfyUI saves it; a warm-up needs an API-format \
                 template (its graph is built at start-up, when ComfyUI may not answer yet)",
                spec.workflow
            ));
        }
        let resolved = template
            .resolve(&spec.params)
            .map_err(|errors| errors.to_string())?;
        if !resolved.images.is_empty() {
            return Err("a warm-up cannot take image parameters".into());
        }
        let graph = template
            .build_graph(&resolved, &BTreeMap::new())
            .map_err(|e| e.to_string())?;
        Ok(Warmup {
            spec,
            graph,
            timeout,
            states: Mutex::new(BTreeMap::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, WarmupState>> {
        self.states.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Each backend's warm-up state so far.
    pub fn states(&self) -> BTreeMap<String, WarmupState> {
        self.lock().clone()
    }

    /// Why the gateway is not ready because of warm-ups: running or failed ones.
    pub fn problems(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter_map(|(url, state)| match state {
                WarmupState::Running => Some(format!(
                    "ComfyUI at {url} is warming up (WARMUP_WORKFLOW={})",
                    self.spec
                )),
                WarmupState::Failed(why) => Some(format!(
                    "the warm-up (WARMUP_WORKFLOW={}) failed on ComfyUI at {url}: {why}",
                    self.spec
                )),
                WarmupState::Done => None,
            })
            .collect()
    }

    /// Starts the warm-up on `client`'s backend, on its own thread (a second start while one
    /// runs there is ignored).
    pub fn start(self: &Arc<Self>, client: ComfyClient) {
        {
            let mut states = self.lock();
            if states.get(client.base_url()) == Some(&WarmupState::Running) {
                return;
            }
            states.insert(client.base_url().to_string(), WarmupState::Running);
        }
        let warmup = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("warmup".into())
            .spawn(move || warmup.run(&client));
        if let Err(e) = spawned {
            log::error!("cannot start a warm-up thread: {e}");
        }
    }

    fn run(&self, client: &ComfyClient) {
        let url = client.base_url().to_string();
        log::info!("warming up ComfyUI at {url} with {}", self.spec);
        let started = Instant::now();
        let state = match self.run_once(client) {
            Ok(()) => {
                log::info!(
                    "ComfyUI at {url} is warmed up ({} ms)",
                    started.elapsed().as_millis()
                );
                WarmupState::Done
            }
            Err(why) => {
                log::warn!(
                    "the warm-up ({}) failed on ComfyUI at {url}: {why}",
                    self.spec
                );
                WarmupState::Failed(why)
            }
        };
        self.lock().insert(url, state);
    }

    /// Queues the warm-up prompt and follows it through `/history` until it ends.
    fn run_once(&self, client: &ComfyClient) -> Result<(), String> {
        let client_id = format!("gateway-warmup-{}", ids::new_uuid());
        let queued = client
            .queue_prompt(&self.graph, &client_id)
            .map_err(|e| match &e {
                ComfyError::Rejected { .. } => format!("ComfyUI refused the workflow: {e}"),
                _ => e.to_string(),
            })?;
        let give_up = Instant::now() + self.timeout;
        loop {
            match client.get_history(&queued.prompt_id) {
                Ok(Some(entry)) => {
                    let status = entry.status.as_ref();
                    if let Some(failure) = status.and_then(|s| s.error.as_ref()) {
                        return Err(format!(
                            "node {} ({}) failed: {}",
                            failure.node_id.as_deref().unwrap_or("?"),
                            failure.node_type.as_deref().unwrap_or("?"),
                            failure.exception_message
                        ));
                    }
                    if status.is_some_and(|s| s.interrupted) {
                        return Err("ComfyUI interrupted it".into());
                    }
                    return Ok(());
                }
                Ok(None) => {}
                Err(e) => log::debug!("warm-up: {e}"),
            }
            if Instant::now() >= give_up {
                return Err(format!(
                    "it was still unfinished after {} s",
                    self.timeout.as_secs()
                ));
            }
            thread::sleep(POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn specs_name_a_template_and_its_parameters() {
        let spec = WarmupSpec::parse("txt2img:steps=1, width=64,prompt=a cat").expect("valid");
        assert_eq!(spec.workflow, "txt2img");
        assert_eq!(spec.params["steps"], json!(1));
        assert_eq!(spec.params["width"], json!(64));
        assert_eq!(spec.params["prompt"], json!("a cat"));
        assert_eq!(WarmupSpec::parse("invert").expect("valid").params.len(), 0);
        assert!(WarmupSpec::parse("").is_err());
        assert!(WarmupSpec::parse("txt2img:steps").is_err());
        assert_eq!(spec.to_string(), "txt2img:prompt=a cat,steps=1,width=64");
    }

    #[test]
    fn a_ui_format_template_is_refused_without_asking_comfyui() {
        let saved = r#"{"nodes": [{"id": 1, "type": "EmptyImage", "mode": 0, "widgets_values": [8, 8, 1, 0]}], "links": []}"#;
        let template = crate::workflow::Template::parse("saved", saved).expect("a template");
        let templates: Templates = [template].into_iter().collect();
        let spec = WarmupSpec::parse("saved").expect("valid");
        let err = Warmup::new(spec, &templates, Duration::from_secs(1)).err();
        assert!(err.expect("refused").contains("API-format template"));
    }
}
