//! Following one prompt through ComfyUI's websocket messages: progress and outcome.
//!
//! Pure logic: the backend monitor feeds it every message of its prompt and the ticker reads a
//! snapshot on each tick.

use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};

use crate::comfyui::{ExecutionFailure, NodeState, WsEvent};
use crate::ids::PromptId;

/// How a prompt's execution ended, as the websocket told it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every output node ran (or was cached).
    Succeeded,
    /// A node raised an exception.
    Failed(ExecutionFailure),
    /// Someone interrupted the prompt.
    Interrupted {
        /// The node that was running, if ComfyUI said.
        node_id: Option<String>,
        /// Its class.
        node_type: Option<String>,
    },
}

/// The most a node with a `steps` input weighs in the percentage, whatever it claims.
const MAX_NODE_WEIGHT: u64 = 10_000;

/// The latest known state of one prompt.
///
/// `percent` is estimated over the whole graph: a node weighs its `steps` input when it has one
/// (samplers, where the time goes) and 1 otherwise; cached and finished nodes count as done, and
/// the running node counts by its `value / max`.
///
/// ComfyUI announces a node twice, in an order that changed between versions: real ComfyUI 0.3.x
/// sends `progress_state` (node running) *before* `executing`, older versions (and older
/// simulators) the other way round, and some send no `progress_state` at all. The tracker
/// therefore treats every announcement of the node already running as a repeat: only a message
/// naming a *different* node moves on, and a node counts as done when ComfyUI says it finished
/// (`progress_state`, `executed`, `execution_cached`) or when another node started after it
/// without `progress_state` having said anything about it.
pub struct ProgressTracker {
    prompt_id: PromptId,
    class_types: BTreeMap<String, String>,
    /// Each node's upstream nodes (the ids its links point at).
    upstream: BTreeMap<String, Vec<String>>,
    weights: BTreeMap<String, u64>,
    total_weight: u64,
    done: HashSet<String>,
    current: Option<String>,
    step: Option<(u64, u64)>,
    started: bool,
    /// Whether ComfyUI sends `progress_state`, which says when each node finished.
    tracked_by_state: bool,
    outcome: Option<Outcome>,
    queue_position: Option<usize>,
}

impl ProgressTracker {
    /// A tracker for `prompt_id`, running `graph` (API format).
    pub fn new(prompt_id: PromptId, graph: &Value) -> ProgressTracker {
        let mut class_types = BTreeMap::new();
        let mut upstream = BTreeMap::new();
        let mut weights = BTreeMap::new();
        if let Some(nodes) = graph.as_object() {
            for (id, node) in nodes {
                let class = node["class_type"].as_str().unwrap_or_default();
                class_types.insert(id.clone(), class.to_string());
                let links: Vec<String> = node["inputs"]
                    .as_object()
                    .into_iter()
                    .flat_map(|inputs| inputs.values())
                    .filter_map(|value| match value.as_array()?.as_slice() {
                        [Value::String(from), slot] if slot.is_u64() => Some(from.clone()),
                        _ => None,
                    })
                    .collect();
                upstream.insert(id.clone(), links);
                let steps = node["inputs"]["steps"].as_u64().unwrap_or(1);
                weights.insert(id.clone(), steps.clamp(1, MAX_NODE_WEIGHT));
            }
        }
        let total_weight = weights.values().sum::<u64>().max(1);
        ProgressTracker {
            prompt_id,
            class_types,
            upstream,
            weights,
            total_weight,
            done: HashSet::new(),
            current: None,
            step: None,
            started: false,
            tracked_by_state: false,
            outcome: None,
            queue_position: None,
        }
    }

    /// Leaves out of the percentage the output nodes ComfyUI dropped at validation (a partial
    /// graph: `/prompt` answered 200 with `node_errors`), and every node that only fed them:
    /// ComfyUI runs none of them, so the job reaches 100 % by the nodes that do run.
    pub fn drop_outputs<'a>(&mut self, outputs: impl IntoIterator<Item = &'a str>) {
        let mut dropped: HashSet<String> = outputs
            .into_iter()
            .filter(|id| self.weights.contains_key(*id))
            .map(str::to_string)
            .collect();
        if dropped.is_empty() {
            return;
        }
        loop {
            let feeds_only_dropped = |node: &String| {
                let mut consumers = self
                    .upstream
                    .iter()
                    .filter(|(_, from)| from.contains(node))
                    .map(|(id, _)| id)
                    .peekable();
                consumers.peek().is_some() && consumers.all(|c| dropped.contains(c))
            };
            let more: Vec<String> = self
                .weights
                .keys()
                .filter(|id| !dropped.contains(*id) && feeds_only_dropped(id))
                .cloned()
                .collect();
            if more.is_empty() {
                break;
            }
            dropped.extend(more);
        }
        self.weights.retain(|id, _| !dropped.contains(id));
        self.total_weight = self.weights.values().sum::<u64>().max(1);
    }

    /// Whether ComfyUI has started executing the prompt.
    pub fn started(&self) -> bool {
        self.started
    }

    /// How the prompt ended, once a terminal message arrived.
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// Records the prompt's place in ComfyUI's queue (0 = next or running).
    pub fn set_queue_position(&mut self, position: Option<usize>) {
        self.queue_position = position;
    }

    /// Takes in one websocket message. Messages about other prompts are ignored.
    ///
    /// Returns the outcome when this message ended the prompt's execution.
    pub fn observe(&mut self, event: &WsEvent) -> Option<&Outcome> {
        if self.outcome.is_some() {
            return None;
        }
        if event.prompt_id().is_some_and(|id| *id != self.prompt_id) {
            return None;
        }
        match event {
            WsEvent::ExecutionStart { .. } => self.start(),
            WsEvent::ExecutionCached { nodes, .. } => {
                self.start();
                self.done.extend(nodes.iter().cloned());
            }
            WsEvent::Executing { prompt_id, node } => {
                // Old ComfyUI versions omit prompt_id here; only trust the end marker when it
                // names our prompt or we know ours is the one running.
                if prompt_id.is_none() && !self.started {
                    return None;
                }
                self.start();
                match node {
                    Some(node) => self.move_to(node, true),
                    None => self.end(Outcome::Succeeded),
                }
            }
            WsEvent::Progress {
                node, value, max, ..
            } => {
                if !self.started {
                    return None;
                }
                if let Some(node) = node {
                    self.move_to(node, true);
                }
                self.step = Some((*value, *max));
            }
            WsEvent::ProgressState { nodes, .. } => {
                self.start();
                self.tracked_by_state = true;
                for node in nodes {
                    match node.state {
                        NodeState::Finished => {
                            self.done.insert(node.node_id.clone());
                        }
                        NodeState::Running => {
                            self.move_to(&node.node_id, false);
                            // A node without a progress bar of its own reports 0 of 1: no steps.
                            if node.value > 0 || node.max > 1 {
                                self.step = Some((node.value, node.max));
                            }
                        }
                        NodeState::Pending | NodeState::Unknown => {}
                    }
                }
            }
            WsEvent::Executed { node, .. } => {
                self.done.insert(node.clone());
            }
            WsEvent::ExecutionSuccess { .. } => self.end(Outcome::Succeeded),
            // A node that blocks its branch (`ExecutionBlocker` with a message) is reported with
            // an `execution_error` that ends nothing: ComfyUI goes on to `execution_success`.
            WsEvent::ExecutionError { failure, .. } if failure.is_blocked_branch() => {
                self.done.extend(failure.node_id.clone());
                return None;
            }
            WsEvent::ExecutionError { failure, .. } => self.end(Outcome::Failed(failure.clone())),
            WsEvent::ExecutionInterrupted {
                node_id, node_type, ..
            } => self.end(Outcome::Interrupted {
                node_id: node_id.clone(),
                node_type: node_type.clone(),
            }),
            _ => return None,
        }
        self.outcome.as_ref()
    }

    /// `node` is the one running now. A repeat announcement of the running node changes
    /// nothing (its step count stays); another node replaces it, and the one it replaces counts
    /// as done when `finishes_previous` and no `progress_state` has been tracking nodes' ends
    /// (a ComfyUI that sends `progress_state` says itself when each node finished, and a node
    /// it still calls running is not done).
    fn move_to(&mut self, node: &str, finishes_previous: bool) {
        if self.current.as_deref() == Some(node) {
            return;
        }
        let previous = self.current.replace(node.to_string());
        if finishes_previous && !self.tracked_by_state {
            self.done.extend(previous);
        }
        self.step = None;
    }

    fn start(&mut self) {
        self.started = true;
        self.queue_position = Some(0);
    }

    fn end(&mut self, outcome: Outcome) {
        if outcome == Outcome::Succeeded {
            self.done.extend(self.weights.keys().cloned());
            self.current = None;
            self.step = None;
        }
        self.outcome = Some(outcome);
    }

    /// Estimated completion of the whole graph, 0 to 100, one decimal.
    pub fn percent(&self) -> f64 {
        let done: u64 = self
            .done
            .iter()
            .filter_map(|node| self.weights.get(node))
            .sum();
        let running = match (&self.current, self.step) {
            (Some(node), Some((value, max))) if max > 0 && !self.done.contains(node) => {
                let weight = self.weights.get(node).copied().unwrap_or(1) as f64;
                weight * (value.min(max) as f64 / max as f64)
            }
            _ => 0.0,
        };
        let percent = (done as f64 + running) * 100.0 / self.total_weight as f64;
        (percent.min(100.0) * 10.0).round() / 10.0
    }

    /// The `progress` event's fields (without `job_id`).
    pub fn snapshot(&self, state: &str, elapsed_ms: u64) -> Value {
        let node_type = self
            .current
            .as_ref()
            .and_then(|node| self.class_types.get(node));
        json!({
            "state": state,
            "queue_position": self.queue_position,
            "node": self.current,
            "node_type": node_type,
            "step": self.step.map(|(value, _)| value),
            "steps": self.step.map(|(_, max)| max),
            "percent": self.percent(),
            "nodes_done": self.done.iter().filter(|node| self.weights.contains_key(*node)).count(),
            "nodes_total": self.weights.len(),
            "elapsed_ms": elapsed_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> PromptId {
        PromptId(s.to_string())
    }

    fn graph() -> Value {
        json!({
            "3": {"class_type": "KSampler", "inputs": {"steps": 18, "seed": 1}},
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {}},
            "8": {"class_type": "VAEDecode", "inputs": {}},
            "9": {"class_type": "SaveImage", "inputs": {}},
        })
    }

    fn executing(node: Option<&str>) -> WsEvent {
        WsEvent::Executing {
            prompt_id: Some(pid("p")),
            node: node.map(str::to_string),
        }
    }

    #[test]
    fn follows_a_run_and_weights_the_sampler_by_steps() {
        let mut t = ProgressTracker::new(pid("p"), &graph());
        assert_eq!(t.percent(), 0.0);
        t.observe(&WsEvent::ExecutionStart {
            prompt_id: pid("p"),
        });
        t.observe(&WsEvent::ExecutionCached {
            prompt_id: pid("p"),
            nodes: vec!["4".into()],
        });
        t.observe(&executing(Some("3")));
        t.observe(&WsEvent::Progress {
            prompt_id: Some(pid("p")),
            node: Some("3".into()),
            value: 9,
            max: 18,
        });
        // total weight 18 + 1 + 1 + 1 = 21; done: 4 (1) + half of 3 (9) = 10
        assert_eq!(t.percent(), 47.6);
        let snap = t.snapshot("running", 1500);
        assert_eq!(snap["node"], "3");
        assert_eq!(snap["node_type"], "KSampler");
        assert_eq!(snap["step"], 9);
        assert_eq!(snap["steps"], 18);
        assert_eq!(snap["queue_position"], 0);
        assert!(t.observe(&executing(Some("8"))).is_none());
        assert_eq!(t.observe(&executing(None)), Some(&Outcome::Succeeded));
        assert_eq!(t.percent(), 100.0);
    }

    #[test]
    fn ignores_other_prompts() {
        let mut t = ProgressTracker::new(pid("p"), &graph());
        t.observe(&WsEvent::ExecutionStart {
            prompt_id: pid("q"),
        });
        assert!(!t.started());
        let other_end = WsEvent::ExecutionSuccess {
            prompt_id: pid("q"),
        };
        assert!(t.observe(&other_end).is_none());
    }

    #[test]
    fn errors_and_interrupts_end_the_prompt() {
        let mut t = ProgressTracker::new(pid("p"), &graph());
        t.observe(&WsEvent::ExecutionStart {
            prompt_id: pid("p"),
        });
        let failure = ExecutionFailure {
            node_id: Some("3".into()),
            node_type: Some("KSampler".into()),
            exception_type: Some("RuntimeError".into()),
            exception_message: "CUDA out of memory".into(),
            traceback: vec![],
        };
        let ended = t.observe(&WsEvent::ExecutionError {
            prompt_id: pid("p"),
            failure: failure.clone(),
        });
        assert_eq!(ended, Some(&Outcome::Failed(failure)));

        let mut t = ProgressTracker::new(pid("p"), &graph());
        let ended = t.observe(&WsEvent::ExecutionInterrupted {
            prompt_id: pid("p"),
            node_id: Some("3".into()),
            node_type: None,
        });
        assert!(matches!(ended, Some(Outcome::Interrupted { .. })));
    }

    #[test]
    fn fully_cached_prompt_succeeds() {
        let mut t = ProgressTracker::new(pid("p"), &graph());
        t.observe(&WsEvent::ExecutionStart {
            prompt_id: pid("p"),
        });
        t.observe(&WsEvent::ExecutionCached {
            prompt_id: pid("p"),
            nodes: vec!["3".into(), "4".into(), "8".into(), "9".into()],
        });
        assert_eq!(t.percent(), 100.0);
        let end = WsEvent::ExecutionSuccess {
            prompt_id: pid("p"),
        };
        assert_eq!(t.observe(&end), Some(&Outcome::Succeeded));
    }
}

#[cfg(test)]
#[path = "progress_captured_tests.rs"]
mod captured_tests;
