//! The worker: runs queued prompts one at a time, FIFO, sending ComfyUI's execution messages to
//! the socket of the client that queued each prompt, caching node results, writing history.
//!
//! Message order per prompt, as real ComfyUI 0.3.64 sends it (the captures in
//! `tests/fixtures/captured/` hold the real traffic; `status` broadcasts interleave):
//! `status` (taken from the queue), `execution_start`, `execution_cached`, then per node that
//! runs: `progress_state` (the node running, `0.0` of `1.0`) *before* `executing`; per step of
//! a node with a progress bar `progress_state` (`k` of `n`, still running) followed by
//! `progress` and a binary preview (type 1), or by a type-4 preview and then `progress` for a
//! client that announced `supports_preview_metadata`; an output node's `executed`; then
//! `progress_state` with the node finished. `progress_state` is cumulative: every node that
//! ran so far, never a cached one. A cached output node sends only `executed` and its finished
//! `progress_state`. The end: `execution_success` | `execution_error` (its
//! `exception_message` ending in a newline, as ComfyUI formats it) | `execution_interrupted`,
//! then the history entry is written (after any history delay or hold: a client that reads
//! `/history` on the final message may have to ask again), `status` is broadcast, and
//! `executing {node: null}` comes last.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::compute::{self, Computed, Inputs, MediaSave, NodeFailure, NodeValue, Outputs};
use super::graph::{Graph, Node, as_link, sort_ids};
use super::render::{self, Frames, Picture};
use super::state::{CachedNode, FileData, FileKey, QueueItem, SimState};
use super::validate::to_int;
use super::ws::message;
use super::{Failure, PreviewFormat, Shared, SimEvent, media};

/// Milliseconds since the Unix epoch, ComfyUI's message timestamps.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The worker thread's body: runs prompts until the simulator shuts down.
pub(crate) fn run_worker(shared: Arc<Shared>) {
    while let Some(job) = next_job(&shared) {
        let prompt_id = job.item.prompt_id.clone();
        let generation = job.generation;
        let outcome = catch_unwind(AssertUnwindSafe(|| Execution::new(&shared, job).run()));
        if outcome.is_err() {
            log::error!("comfyui-sim: executing prompt {prompt_id} panicked");
            let mut st = shared.state();
            if st.generation == generation {
                st.running = None;
            }
            drop(st);
            shared.emit(SimEvent::Finished {
                prompt_id,
                outcome: "error".into(),
            });
        }
    }
}

struct Job {
    item: QueueItem,
    generation: u64,
    failure: Option<Failure>,
}

/// Waits for a prompt to run; `None` once the simulator shuts down.
fn next_job(shared: &Shared) -> Option<Job> {
    let mut st = shared.state();
    loop {
        if st.shutting_down {
            return None;
        }
        if let Some(item) = st.start_next() {
            return Some(Job {
                item,
                generation: st.generation,
                failure: st.exec_failure.take(),
            });
        }
        st = wait(shared, st);
    }
}

fn wait<'a>(shared: &Shared, st: MutexGuard<'a, SimState>) -> MutexGuard<'a, SimState> {
    shared
        .wake
        .wait(st)
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why a prompt stopped before finishing.
enum Halt {
    /// The simulated process died: say nothing more, touch nothing.
    Crashed,
    Interrupted {
        node: String,
    },
    Failed {
        node: String,
        failure: NodeFailure,
    },
}

/// One prompt being executed.
struct Execution<'a> {
    shared: &'a Shared,
    generation: u64,
    item: QueueItem,
    client: Option<String>,
    failure: Option<Failure>,
    graph: Graph,
    /// `status.messages` for the history entry.
    messages: Vec<Value>,
    /// Nodes done so far (cached or executed), in order.
    executed: Vec<String>,
    values: HashMap<String, Outputs>,
    /// UI outputs (`{"images": [...]}`) of output nodes.
    ui: BTreeMap<String, Value>,
    /// Per-node entries of `progress_state`.
    progress: Map<String, Value>,
}

impl<'a> Execution<'a> {
    fn new(shared: &'a Shared, job: Job) -> Execution<'a> {
        // Validated when queued; a graph that no longer parses runs as an empty one.
        let graph = Graph::parse(&job.item.graph).unwrap_or(Graph {
            nodes: BTreeMap::new(),
        });
        Execution {
            shared,
            generation: job.generation,
            client: job.item.client_id(),
            item: job.item,
            failure: job.failure,
            graph,
            messages: Vec::new(),
            executed: Vec::new(),
            values: HashMap::new(),
            ui: BTreeMap::new(),
            progress: Map::new(),
        }
    }

    fn prompt_id(&self) -> &str {
        &self.item.prompt_id
    }

    /// Sends a message to the prompt's client; returns when it was flushed, if it was.
    fn send(&self, kind: &str, data: Value) -> Option<Instant> {
        let client = self.client.as_deref()?;
        self.shared.hub.send_text(client, message(kind, data))
    }

    /// Sends a message that also belongs in the history entry's `status.messages`.
    fn send_recorded(&mut self, kind: &str, data: Value) {
        self.messages.push(json!([kind, data]));
        self.send(kind, data);
    }

    fn run(mut self) {
        self.shared.broadcast_status();
        let start = json!({"prompt_id": self.prompt_id(), "timestamp": now_ms()});
        self.send_recorded("execution_start", start);
        self.shared.emit(SimEvent::ExecutionStarted {
            prompt_id: self.item.prompt_id.clone(),
        });
        let order = self.graph.execution_order(&self.item.outputs);
        let result = self.execute_all(&order);
        match result {
            Ok(()) => self.finish_success(),
            Err(Halt::Crashed) => {}
            Err(Halt::Interrupted { node }) => self.finish_interrupted(&node),
            Err(Halt::Failed { node, failure }) => self.finish_error(&node, &failure),
        }
    }

    fn execute_all(&mut self, order: &[String]) -> Result<(), Halt> {
        let signatures = self.signatures(order)?;
        let mut cached = self.take_cached(order, &signatures)?;
        let mut cached_ids: Vec<String> = cached.keys().cloned().collect();
        sort_ids(&mut cached_ids);
        let data =
            json!({"nodes": cached_ids, "prompt_id": self.prompt_id(), "timestamp": now_ms()});
        self.send_recorded("execution_cached", data);
        let fail_at = self.failure_target(order, &cached);
        let block_at = self.block_target(order, &cached);
        let mut blocked: HashSet<String> = HashSet::new();
        for id in order {
            self.check(id)?;
            if block_at.as_deref() == Some(id.as_str()) {
                self.block(id);
                blocked.insert(id.clone());
                continue;
            }
            if self
                .graph
                .upstream(id)
                .iter()
                .any(|up| blocked.contains(up))
            {
                blocked.insert(id.clone()); // its input is the blocker: it does not run
                continue;
            }
            if let Some(hit) = cached.remove(id) {
                if let Some(ui) = hit.ui {
                    // ComfyUI reports a cached output node's files again, and the node as
                    // finished (with integers, unlike nodes that ran).
                    self.send_executed(id, &ui);
                    self.ui.insert(id.clone(), ui);
                    self.send_progress_state(id, json!(1), json!(1), "finished");
                }
                self.values.insert(id.clone(), hit.outputs);
                self.executed.push(id.clone());
                continue;
            }
            let signature = signatures.get(id).copied().unwrap_or_default();
            self.execute_node(id, signature, fail_at.as_deref() == Some(id.as_str()))?;
        }
        Ok(())
    }

    /// Each node's cache key: class, widget values, upstream keys, and for `LoadImage` the
    /// file's bytes (ComfyUI's `IS_CHANGED`), so a re-uploaded image is not served stale.
    fn signatures(&self, order: &[String]) -> Result<HashMap<String, u64>, Halt> {
        let st = self.live_state()?;
        let mut signatures: HashMap<String, u64> = HashMap::new();
        for id in order {
            let Some(node) = self.graph.nodes.get(id) else {
                continue;
            };
            let mut parts: Vec<Vec<u8>> = vec![node.class.name.as_bytes().to_vec()];
            for input in node.class.inputs {
                let value = node.inputs.get(input.name).cloned().unwrap_or(Value::Null);
                parts.push(input.name.as_bytes().to_vec());
                match as_link(&value) {
                    Some((up, slot)) => {
                        let up_sig = signatures.get(up).copied().unwrap_or_default();
                        parts.push(format!("link:{up_sig}:{slot}").into_bytes());
                    }
                    None => parts.push(value.to_string().into_bytes()),
                }
            }
            if node.class.name == "LoadImage" {
                let name = node
                    .inputs
                    .get("image")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let content = st.files.get(&FileKey::input(name));
                parts.push(content.map_or_else(Vec::new, |file| file.head().to_vec()));
            }
            let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            signatures.insert(id.clone(), render::stable_hash(&slices));
        }
        Ok(signatures)
    }

    /// Like ComfyUI's classic cache: keeps only entries this prompt can use, and returns the
    /// hits by node id.
    fn take_cached(
        &self,
        order: &[String],
        signatures: &HashMap<String, u64>,
    ) -> Result<HashMap<String, CachedNode>, Halt> {
        let mut st = self.live_state()?;
        let wanted: HashSet<u64> = signatures.values().copied().collect();
        st.cache.retain(|sig, _| wanted.contains(sig));
        Ok(order
            .iter()
            .filter_map(|id| {
                let hit = st.cache.get(signatures.get(id)?)?;
                Some((id.clone(), hit.clone()))
            })
            .collect())
    }

    /// The node an injected `ExecutionBlocked` blocks: the one named, else the first output
    /// node that is not cached.
    fn block_target(
        &self,
        order: &[String],
        cached: &HashMap<String, CachedNode>,
    ) -> Option<String> {
        let Some(Failure::ExecutionBlocked { node_id, .. }) = &self.failure else {
            return None;
        };
        if node_id.is_some() {
            return node_id.clone();
        }
        order
            .iter()
            .find(|id| {
                !cached.contains_key(*id)
                    && self
                        .graph
                        .nodes
                        .get(*id)
                        .is_some_and(|n| n.class.output_node)
            })
            .cloned()
    }

    /// A node that returns ComfyUI's `ExecutionBlocker` with a message: `executing`, then an
    /// `execution_error` of type `ExecutionBlocked` that ends nothing and is not recorded in
    /// history.
    fn block(&mut self, id: &str) {
        let Some(Failure::ExecutionBlocked { message, .. }) = &self.failure else {
            return;
        };
        let message = message.clone();
        let node_type = self.graph.nodes.get(id).map_or("", |n| n.class.name);
        self.send_progress_state(id, json!(0.0), json!(1.0), "running");
        let data = json!({"node": id, "display_node": id, "prompt_id": self.prompt_id()});
        self.send("executing", data);
        let error = json!({
            "prompt_id": self.prompt_id(),
            "node_id": id,
            "node_type": node_type,
            "executed": self.executed,
            "exception_message": format!("Execution Blocked: {message}"),
            "exception_type": "ExecutionBlocked",
            "traceback": [],
            "current_inputs": [],
            "current_outputs": [],
        });
        self.send("execution_error", error);
    }

    /// The node an injected `ExecutionError` fails at.
    fn failure_target(
        &self,
        order: &[String],
        cached: &HashMap<String, CachedNode>,
    ) -> Option<String> {
        let Some(Failure::ExecutionError { node_id, .. }) = &self.failure else {
            return None;
        };
        if node_id.is_some() {
            return node_id.clone();
        }
        let fresh: Vec<&String> = order
            .iter()
            .filter(|id| !cached.contains_key(*id))
            .collect();
        fresh
            .iter()
            .find(|id| {
                self.graph
                    .nodes
                    .get(**id)
                    .is_some_and(|n| n.class.has_steps())
            })
            .or(fresh.first())
            .map(|id| (*id).clone())
    }

    /// The state, unless the simulated process died since this prompt started.
    fn live_state(&self) -> Result<MutexGuard<'a, SimState>, Halt> {
        let st = self.shared.state();
        if st.generation == self.generation {
            Ok(st)
        } else {
            Err(Halt::Crashed)
        }
    }

    /// Stops at a crash or an interrupt, like ComfyUI's check before each node and step.
    fn check(&self, node: &str) -> Result<(), Halt> {
        let st = self.live_state()?;
        if st.interrupt {
            return Err(Halt::Interrupted { node: node.into() });
        }
        Ok(())
    }

    /// The state once history may be written: after the history delay, and not while a test
    /// holds history back.
    fn history_released(&self) -> Result<MutexGuard<'a, SimState>, Halt> {
        let deadline = Instant::now() + self.shared.history_delay();
        let mut st = self.live_state()?;
        loop {
            if st.generation != self.generation {
                return Err(Halt::Crashed);
            }
            let now = Instant::now();
            if !st.history_held && now >= deadline {
                return Ok(st);
            }
            let wait = if now < deadline {
                deadline - now
            } else {
                std::time::Duration::from_secs(1)
            };
            st = self
                .shared
                .wake
                .wait_timeout(st, wait)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// Waits one step (the simulator's step delay, or `delay`), waking early for an interrupt
    /// or a crash.
    fn wait_step(&self, node: &str, delay: Option<std::time::Duration>) -> Result<(), Halt> {
        let deadline = Instant::now() + delay.unwrap_or_else(|| self.shared.step_delay());
        let mut st = self.live_state()?;
        loop {
            if st.generation != self.generation {
                return Err(Halt::Crashed);
            }
            if st.interrupt {
                return Err(Halt::Interrupted { node: node.into() });
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            st = self
                .shared
                .wake
                .wait_timeout(st, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    fn execute_node(&mut self, id: &str, signature: u64, inject_failure: bool) -> Result<(), Halt> {
        let Some(node) = self.graph.nodes.get(id).cloned() else {
            return Ok(());
        };
        {
            let mut st = self.live_state()?;
            if let Some(running) = st.running.as_mut() {
                running.node = Some(id.to_string());
            }
        }
        self.send_progress_state(id, json!(0.0), json!(1.0), "running");
        let data = json!({"node": id, "display_node": id, "prompt_id": self.prompt_id()});
        self.send("executing", data);
        if inject_failure
            && let Some(Failure::ExecutionError {
                exception_type,
                message,
                ..
            }) = &self.failure
        {
            let failure = NodeFailure {
                exception_type: exception_type.clone(),
                message: message.clone(),
            };
            return Err(Halt::Failed {
                node: id.into(),
                failure,
            });
        }
        let computed = {
            let inputs = Inputs {
                node: &node,
                upstream: &self.values,
            };
            compute::compute(&inputs, &|name| self.load_input(name))
        };
        let computed = computed.map_err(|failure| Halt::Failed {
            node: id.into(),
            failure,
        })?;
        let steps = if node.class.has_steps() {
            Some(self.run_steps(&node, &computed)?)
        } else {
            None
        };
        let (outputs, ui) = match computed {
            Computed::Values(values) => (values, None),
            Computed::Save {
                kind,
                prefix,
                frames,
            } => {
                let ui = self.save_images(id, kind, &prefix, &frames)?;
                (Vec::new(), Some(ui))
            }
            Computed::Media(save) => (Vec::new(), Some(self.save_media(id, save)?)),
        };
        let outputs = Arc::new(outputs);
        if let Some(ui) = &ui {
            self.send_executed(id, ui);
            self.ui.insert(id.to_string(), ui.clone());
        }
        let entry = CachedNode {
            outputs: Arc::clone(&outputs),
            ui,
        };
        self.live_state()?.cache.insert(signature, entry);
        self.values.insert(id.to_string(), outputs);
        self.executed.push(id.to_string());
        match steps {
            Some(max) => self.send_progress_state(id, json!(max), json!(max), "finished"),
            None => self.send_progress_state(id, json!(1.0), json!(1.0), "finished"),
        }
        Ok(())
    }

    fn load_input(&self, name: &str) -> Option<Arc<FileData>> {
        let st = self.shared.state();
        (st.generation == self.generation)
            .then(|| st.files.get(&FileKey::input(name)).cloned())
            .flatten()
    }

    /// A node's progress bar, step by step: wait, `progress_state`, then `progress` and the
    /// preview in the order the client's flags call for, the `Step` event, then any armed
    /// crash or socket close for this step. Returns the number of steps.
    ///
    /// The sampler previews when previews are on; the `SlowSteps` test node always sends a
    /// 64×64 JPEG, waits its own `step_ms` per step and raises at step `fail_at`, as the real
    /// test node does.
    fn run_steps(&mut self, node: &Node, computed: &Computed) -> Result<u32, Halt> {
        let int_input = |name: &str| node.inputs.get(name).and_then(|v| to_int(v).ok());
        let max = int_input("steps").map_or(1, |s| s.clamp(1, 10_000) as u32);
        let slow_steps = node.class.name == "SlowSteps";
        let step_delay = slow_steps.then(|| {
            let ms = int_input("step_ms").unwrap_or(0).clamp(0, 60_000);
            std::time::Duration::from_millis(ms as u64)
        });
        let fail_at = if slow_steps {
            int_input("fail_at").unwrap_or(0)
        } else {
            0
        };
        let preview_of = match computed {
            Computed::Values(values) => match values.first() {
                Some(NodeValue::Latent(frames)) => Some(frames.clone()),
                // Previews are an eighth of the picture's side: SlowSteps' are 64×64.
                Some(NodeValue::Image(frames)) if slow_steps => Some(Frames {
                    width: 512,
                    height: 512,
                    pictures: frames.pictures.clone(),
                }),
                _ => None,
            },
            Computed::Save { .. } | Computed::Media(_) => None,
        };
        let with_metadata = self
            .client
            .as_deref()
            .is_some_and(|c| self.shared.hub.wants_preview_metadata(c));
        let preview_format = match slow_steps {
            true => Some(PreviewFormat::Jpeg),
            false => self.shared.previews(),
        };
        for value in 1..=max {
            self.wait_step(&node.id, step_delay)?;
            if i128::from(value) == fail_at {
                return Err(Halt::Failed {
                    node: node.id.clone(),
                    failure: NodeFailure {
                        exception_type: "RuntimeError".into(),
                        message: format!("SlowSteps failed at step {value} as asked"),
                    },
                });
            }
            self.send_progress_state(&node.id, json!(value), json!(max), "running");
            let data =
                json!({"value": value, "max": max, "prompt_id": self.prompt_id(), "node": node.id});
            let preview = |this: &Self| {
                if let (Some(frames), Some(format)) = (preview_of.as_ref(), preview_format) {
                    let developed = f64::from(value) / f64::from(max);
                    this.send_preview(format, &node.id, value, frames, developed);
                }
            };
            let at = if with_metadata {
                preview(self);
                self.send("progress", data)
            } else {
                let at = self.send("progress", data);
                preview(self);
                at
            }
            .unwrap_or_else(Instant::now);
            self.shared.emit(SimEvent::Step {
                prompt_id: self.item.prompt_id.clone(),
                node: node.id.clone(),
                value,
                max,
                at,
            });
            match self.failure {
                Some(Failure::CrashAt { step }) if step == value => {
                    self.failure = None;
                    self.shared.crash();
                    return Err(Halt::Crashed);
                }
                Some(Failure::CloseSocketAt { step }) if step == value => {
                    self.failure = None;
                    self.shared.hub.close_all(self.generation);
                }
                _ => {}
            }
        }
        Ok(max)
    }

    /// A binary preview of the first image developing from grey as the steps go by: a type 4
    /// frame (`PREVIEW_IMAGE_WITH_METADATA`: metadata length, JSON metadata naming prompt and
    /// node, image) for a client that announced `supports_preview_metadata`, else type 1
    /// (`PREVIEW_IMAGE`: image format 1 JPEG or 2 PNG, image).
    fn send_preview(
        &self,
        format: PreviewFormat,
        node: &str,
        step: u32,
        frames: &Frames,
        developed: f64,
    ) {
        let Some(client) = self.client.as_deref() else {
            return;
        };
        let Some(picture) = frames.pictures.first() else {
            return;
        };
        let (w, h) = ((frames.width / 8).max(1), (frames.height / 8).max(1));
        let developing = Picture::Blend {
            base: Box::new(Picture::Blank),
            top: Box::new(picture.clone()),
            amount: developed,
        };
        let rgb = developing.render(w, h);
        let (image, format_code, mime) = match format {
            PreviewFormat::Png => match render::encode_png(w, h, &rgb, &[]) {
                Ok(png) => (png, 2u32, "image/png"),
                Err(e) => {
                    log::warn!("comfyui-sim: encoding a preview failed: {e}");
                    return;
                }
            },
            PreviewFormat::Jpeg => {
                let mean = rgb.iter().map(|&c| u64::from(c)).sum::<u64>() / rgb.len().max(1) as u64;
                let size = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
                (
                    media::grey_jpeg(size(w), size(h), mean as u8),
                    1,
                    "image/jpeg",
                )
            }
        };
        let with_metadata = self.shared.hub.wants_preview_metadata(client);
        let mut frame = Vec::with_capacity(image.len() + 256);
        if with_metadata {
            let metadata = json!({
                "node_id": node, "prompt_id": self.prompt_id(), "display_node_id": node,
                "parent_node_id": null, "real_node_id": node, "image_type": mime,
            })
            .to_string();
            frame.extend_from_slice(&4u32.to_be_bytes());
            frame.extend_from_slice(&(metadata.len() as u32).to_be_bytes());
            frame.extend_from_slice(metadata.as_bytes());
        } else {
            frame.extend_from_slice(&1u32.to_be_bytes());
            frame.extend_from_slice(&format_code.to_be_bytes());
        }
        frame.extend_from_slice(&image);
        let bytes = frame.len();
        if self.shared.hub.send_preview(client, frame).is_some() {
            self.shared.emit(SimEvent::PreviewSent {
                prompt_id: self.item.prompt_id.clone(),
                node: node.to_string(),
                step,
                with_metadata,
                bytes,
            });
        }
    }

    /// `progress_state`: every node that ran so far (cumulative), this one as `state`. ComfyUI
    /// writes `value`/`max` as floats (`0.0`, `1.0`) for nodes without a progress bar of their
    /// own and as integers from a progress bar.
    fn send_progress_state(&mut self, id: &str, value: Value, max: Value, state: &str) {
        let entry = json!({
            "value": value, "max": max, "state": state, "node_id": id, "prompt_id": self.prompt_id(),
            "display_node_id": id, "parent_node_id": null, "real_node_id": id,
        });
        self.progress.insert(id.to_string(), entry);
        let data = json!({"prompt_id": self.prompt_id(), "nodes": self.progress});
        self.send("progress_state", data);
    }

    fn send_executed(&self, id: &str, ui: &Value) {
        let data =
            json!({"node": id, "display_node": id, "output": ui, "prompt_id": self.prompt_id()});
        self.send("executed", data);
    }

    /// Renders and stores one PNG per batch item as `{prefix}_{counter:05}_.png`; a prefix
    /// `a/b` saves `b_...` into subfolder `a`, as ComfyUI does.
    fn save_images(
        &self,
        id: &str,
        kind: &str,
        prefix: &str,
        frames: &Frames,
    ) -> Result<Value, Halt> {
        let (subfolder, filename) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let texts = self.metadata();
        let mut pngs = Vec::with_capacity(frames.pictures.len());
        for picture in &frames.pictures {
            let rgb = picture.render(frames.width, frames.height);
            let png =
                render::encode_png(frames.width, frames.height, &rgb, &texts).map_err(|e| {
                    Halt::Failed {
                        node: id.into(),
                        failure: NodeFailure {
                            exception_type: "OSError".into(),
                            message: format!("cannot write PNG: {e}"),
                        },
                    }
                })?;
            pngs.push(png);
        }
        let mut st = self.live_state()?;
        let first = st.next_counter(kind, subfolder, filename);
        let mut images = Vec::new();
        for (counter, png) in (first..).zip(pngs) {
            let name = format!("{filename}_{counter:05}_.png");
            st.store_file(FileKey::new(kind, subfolder, &name), FileData::Bytes(png));
            images.push(json!({"filename": name, "subfolder": subfolder, "type": kind}));
        }
        Ok(json!({ "images": images }))
    }

    /// Stores a video or audio file as `{prefix}_{counter:05}{suffix}.{ext}` (and, for
    /// VideoHelperSuite, its workflow PNG), returning the UI output that names it.
    fn save_media(&self, id: &str, save: MediaSave) -> Result<Value, Halt> {
        let (subfolder, filename) = save.prefix.rsplit_once('/').unwrap_or(("", &save.prefix));
        let workflow_png = match &save.vhs {
            Some(vhs) => {
                let frames = &vhs.first_frame;
                let picture = frames.pictures.first().cloned().unwrap_or(Picture::Blank);
                let rgb = picture.render(frames.width, frames.height);
                let png = render::encode_png(frames.width, frames.height, &rgb, &self.metadata())
                    .map_err(|e| Halt::Failed {
                    node: id.into(),
                    failure: NodeFailure {
                        exception_type: "OSError".into(),
                        message: format!("cannot write PNG: {e}"),
                    },
                })?;
                Some(png)
            }
            None => None,
        };
        let data = save
            .data
            .write(&self.metadata())
            .map_err(|message| Halt::Failed {
                node: id.into(),
                failure: NodeFailure {
                    exception_type: "OSError".into(),
                    message,
                },
            })?;
        let mut st = self.live_state()?;
        let counter = st.next_counter(save.folder, subfolder, filename);
        let name = format!(
            "{filename}_{counter:05}{}.{}",
            save.counter_suffix, save.extension
        );
        let mut entry = json!({"filename": name, "subfolder": subfolder, "type": save.folder});
        if let (Some(vhs), Some(png)) = (&save.vhs, workflow_png) {
            let png_name = format!("{filename}_{counter:05}.png");
            st.store_file(
                FileKey::new(save.folder, subfolder, &png_name),
                FileData::Bytes(png),
            );
            let folder_path = if subfolder.is_empty() {
                save.folder.to_string()
            } else {
                format!("{}/{subfolder}", save.folder)
            };
            entry["format"] = json!(vhs.format);
            entry["frame_rate"] = json!(vhs.frame_rate);
            entry["workflow"] = json!(png_name);
            entry["fullpath"] = json!(format!("/comfyui/{folder_path}/{name}"));
        }
        st.store_file(FileKey::new(save.folder, subfolder, &name), data);
        let mut ui = json!({ save.ui_key: [entry] });
        if let Some(animated) = save.animated {
            ui["animated"] = json!([animated]);
        }
        Ok(ui)
    }

    /// The metadata ComfyUI's savers write, as `(key, JSON text)`: `prompt` (the API graph),
    /// then each `extra_pnginfo` entry the client passed in `extra_data` (the UI sends
    /// `workflow`; API clients usually send none), as `tEXt` chunks, `comf` chunks, EXIF or
    /// container tags depending on the saver.
    fn metadata(&self) -> Vec<(String, String)> {
        let mut tags = vec![("prompt".to_string(), render::ascii_json(&self.item.graph))];
        let extra = self
            .item
            .extra_data
            .get("extra_pnginfo")
            .and_then(Value::as_object);
        for (key, value) in extra.into_iter().flatten() {
            tags.push((key.clone(), render::ascii_json(value)));
        }
        tags
    }

    fn finish_success(mut self) {
        let data = json!({"prompt_id": self.prompt_id(), "timestamp": now_ms()});
        self.finish("execution_success", data, "success");
    }

    fn finish_error(mut self, node: &str, failure: &NodeFailure) {
        let node_type = self.graph.nodes.get(node).map_or("", |n| n.class.name);
        let current_inputs: Map<String, Value> = self
            .graph
            .nodes
            .get(node)
            .map(|n| {
                n.inputs
                    .iter()
                    .map(|(k, v)| (k.clone(), json!([v])))
                    .collect()
            })
            .unwrap_or_default();
        let data = json!({
            "prompt_id": self.prompt_id(),
            "node_id": node,
            "node_type": node_type,
            "executed": self.executed,
            // ComfyUI formats it as "{}\n".format(ex): the newline is on the wire.
            "exception_message": format!("{}\n", failure.message),
            "exception_type": failure.exception_type,
            "traceback": [
                format!("  File \"<comfyui-sim>/execution.py\", line 496, in execute ({node_type} #{node})\n"),
                format!("  File \"<comfyui-sim>/nodes.py\", in run\n    raise {}(\"{}\")\n", failure.exception_type, failure.message),
            ],
            "current_inputs": current_inputs,
            "current_outputs": self.executed,
            "timestamp": now_ms(),
        });
        self.finish("execution_error", data, "error");
    }

    fn finish_interrupted(mut self, node: &str) {
        let node_type = self.graph.nodes.get(node).map_or("", |n| n.class.name);
        let data = json!({
            "prompt_id": self.prompt_id(), "node_id": node, "node_type": node_type,
            "executed": self.executed, "timestamp": now_ms(),
        });
        self.finish("execution_interrupted", data, "interrupted");
    }

    /// Sends the final message, then (after any history delay or hold) writes the history
    /// entry, frees the queue, broadcasts `status` and sends `executing {node: null}`: like
    /// ComfyUI 0.3.64, whose clients may ask `/history` on the final message before the entry
    /// is there.
    fn finish(&mut self, kind: &str, data: Value, outcome: &str) {
        self.messages.push(json!([kind, data]));
        let success = outcome == "success";
        let meta: Map<String, Value> = self
            .ui
            .keys()
            .map(|id| {
                let entry = json!({"node_id": id, "display_node": id, "parent_node": null, "real_node_id": id});
                (id.clone(), entry)
            })
            .collect();
        let entry = json!({
            "prompt": self.item.to_json(),
            "outputs": self.ui,
            "status": {
                "status_str": if success { "success" } else { "error" },
                "completed": success,
                "messages": self.messages,
            },
            "meta": meta,
        });
        {
            let Ok(mut st) = self.live_state() else {
                return;
            };
            if let Some(running) = st.running.as_mut() {
                running.node = None;
            }
        }
        self.send(kind, data);
        {
            let Ok(mut st) = self.history_released() else {
                return;
            };
            st.add_history(self.item.prompt_id.clone(), entry);
            st.running = None;
        }
        self.shared.broadcast_status();
        self.send(
            "executing",
            json!({"node": null, "prompt_id": self.prompt_id()}),
        );
        self.shared.wake.notify_all();
        self.shared.emit(SimEvent::Finished {
            prompt_id: self.item.prompt_id.clone(),
            outcome: outcome.into(),
        });
    }
}
