//! Everything a ComfyUI process keeps in memory and loses when it dies: the queue, the history,
//! the files (inputs, outputs, temp), the node cache, plus the test controls.
//!
//! One `SimState` sits behind a mutex in the simulator; every method here is quick and does no
//! I/O, so the lock is never held across a socket write.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Write};
use std::sync::Arc;

use serde_json::{Value, json};

use super::Failure;
use super::compute::Outputs;

/// ComfyUI keeps at most this many history entries.
const MAX_HISTORY: usize = 10_000;

/// One queued prompt, as `/queue` and history show it.
#[derive(Debug, Clone)]
pub(crate) struct QueueItem {
    pub number: i64,
    pub prompt_id: String,
    /// The API graph exactly as the client sent it.
    pub graph: Value,
    /// `extra_data`, including `client_id` when the client gave one.
    pub extra_data: Value,
    /// The output node ids that passed validation.
    pub outputs: Vec<String>,
}

impl QueueItem {
    /// ComfyUI's queue item: `[number, prompt_id, graph, extra_data, outputs_to_execute]`.
    pub(crate) fn to_json(&self) -> Value {
        json!([
            self.number,
            self.prompt_id,
            self.graph,
            self.extra_data,
            self.outputs
        ])
    }

    /// The websocket client id whose socket gets this prompt's execution messages.
    pub(crate) fn client_id(&self) -> Option<String> {
        self.extra_data
            .get("client_id")
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}

/// The prompt the worker is executing.
#[derive(Debug, Clone)]
pub(crate) struct Running {
    pub item: QueueItem,
    /// The node executing now, for `executing` on reconnect.
    pub node: Option<String>,
}

/// Where a stored file lives: `type` (input/output/temp), subfolder and name, as `/view` names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FileKey {
    pub kind: String,
    pub subfolder: String,
    pub name: String,
}

impl FileKey {
    /// A key from its three parts.
    pub(crate) fn new(kind: &str, subfolder: &str, name: &str) -> FileKey {
        FileKey {
            kind: kind.into(),
            subfolder: subfolder.into(),
            name: name.into(),
        }
    }

    /// The key of an input file as `LoadImage` names it: `name` or `subfolder/name`.
    pub(crate) fn input(image: &str) -> FileKey {
        match image.rsplit_once('/') {
            Some((sub, name)) => FileKey::new("input", sub, name),
            None => FileKey::new("input", "", image),
        }
    }
}

/// A stored file's bytes: held whole, or (for the big files a memory benchmark asks for) a
/// head followed by deterministic filler that is produced while it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileData {
    /// Every byte, in memory.
    Bytes(Vec<u8>),
    /// `head`, then filler up to `len` bytes in all.
    Padded { head: Vec<u8>, len: u64 },
}

impl FileData {
    /// The size in bytes.
    pub(crate) fn len(&self) -> u64 {
        match self {
            FileData::Bytes(bytes) => bytes.len() as u64,
            FileData::Padded { head, len } => (*len).max(head.len() as u64),
        }
    }

    /// The bytes held in memory: all of them, or a padded file's head.
    pub(crate) fn head(&self) -> &[u8] {
        match self {
            FileData::Bytes(bytes) | FileData::Padded { head: bytes, .. } => bytes,
        }
    }

    /// Writes the whole file to `out`, filler included, 64 KiB at a time.
    pub(crate) fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(self.head())?;
        let FileData::Padded { head, len } = self else {
            return Ok(());
        };
        let block: Vec<u8> = (0..64 * 1024u32)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(7))
            .collect();
        let mut left = len.saturating_sub(head.len() as u64);
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            out.write_all(&block[..n])?;
            left -= n as u64;
        }
        Ok(())
    }
}

/// A cached node result: its outputs and, for output nodes, the UI output (`{"images": [...]}`).
#[derive(Debug, Clone)]
pub(crate) struct CachedNode {
    pub outputs: Outputs,
    pub ui: Option<Value>,
}

/// The simulated process's memory.
#[derive(Debug)]
pub(crate) struct SimState {
    /// Bumped by every crash; work started under an older generation must not touch state.
    pub generation: u64,
    /// False between `crash()` and `restart()`.
    pub alive: bool,
    /// Set once when the simulator is dropped; the worker then ends.
    pub shutting_down: bool,
    /// Test control: pending prompts wait while paused.
    pub paused: bool,
    /// Test control: websocket upgrades are refused (a network blip), HTTP still answers.
    pub refuse_websockets: bool,
    /// Set by `/interrupt` for the running prompt.
    pub interrupt: bool,
    /// Test control: the failure the next prompt to start will suffer.
    pub exec_failure: Option<Failure>,
    /// Test control: refuse the next `/prompt` with node errors.
    pub reject_next: bool,
    /// Test control: the next `/prompt` requests get this odd answer instead of being queued.
    pub prompt_fault: Option<crate::PromptFault>,
    /// Test control: finished prompts wait before their history entry is written.
    pub history_held: bool,
    /// Waiting prompts by number: the order ComfyUI runs them in.
    pub pending: BTreeMap<i64, QueueItem>,
    pub running: Option<Running>,
    /// Node results by signature (class, inputs and upstream signatures).
    pub cache: HashMap<u64, CachedNode>,
    pub files: HashMap<FileKey, Arc<FileData>>,
    /// The highest `{prefix}_{counter}` per (type, subfolder, prefix), for the next save.
    counters: HashMap<(String, String, String), u32>,
    next_number: i64,
    /// Finished prompts, oldest first, and their entries.
    history_order: VecDeque<String>,
    history: HashMap<String, Value>,
}

impl SimState {
    /// A fresh, empty, running process.
    pub(crate) fn new() -> SimState {
        SimState {
            generation: 0,
            alive: true,
            shutting_down: false,
            paused: false,
            refuse_websockets: false,
            interrupt: false,
            exec_failure: None,
            reject_next: false,
            prompt_fault: None,
            history_held: false,
            pending: BTreeMap::new(),
            running: None,
            cache: HashMap::new(),
            files: HashMap::new(),
            counters: HashMap::new(),
            next_number: 0,
            history_order: VecDeque::new(),
            history: HashMap::new(),
        }
    }

    /// What the process forgets when it dies; test controls (pause, failures) survive.
    pub(crate) fn forget_everything(&mut self) {
        self.generation += 1;
        self.alive = false;
        self.interrupt = false;
        self.pending.clear();
        self.running = None;
        self.cache.clear();
        self.files.clear();
        self.counters.clear();
        self.next_number = 0;
        self.clear_history();
    }

    /// `exec_info.queue_remaining`: pending plus running prompts.
    pub(crate) fn queue_remaining(&self) -> usize {
        self.pending.len() + usize::from(self.running.is_some())
    }

    /// Queues a prompt and returns its number; `front` puts it before everything pending.
    pub(crate) fn enqueue(
        &mut self,
        prompt_id: String,
        graph: Value,
        extra_data: Value,
        outputs: Vec<String>,
        front: bool,
    ) -> i64 {
        let number = if front {
            -self.next_number
        } else {
            self.next_number
        };
        self.next_number += 1;
        let item = QueueItem {
            number,
            prompt_id,
            graph,
            extra_data,
            outputs,
        };
        self.pending.insert(number, item);
        number
    }

    /// Moves the first pending prompt to running, unless paused, dead or empty.
    pub(crate) fn start_next(&mut self) -> Option<QueueItem> {
        if !self.alive || self.paused || self.running.is_some() || self.pending.is_empty() {
            return None;
        }
        let (_, item) = self.pending.pop_first()?;
        self.interrupt = false;
        self.running = Some(Running {
            item: item.clone(),
            node: None,
        });
        Some(item)
    }

    /// Removes the pending prompts among `ids`; returns the ids actually removed.
    /// How many prompts wait (not counting the running one).
    pub(crate) fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn delete_pending(&mut self, ids: &[String]) -> Vec<String> {
        let mut removed = Vec::new();
        self.pending.retain(|_, item| {
            let hit = ids.contains(&item.prompt_id);
            if hit {
                removed.push(item.prompt_id.clone());
            }
            !hit
        });
        removed
    }

    /// Removes every pending prompt; returns their ids.
    pub(crate) fn clear_pending(&mut self) -> Vec<String> {
        std::mem::take(&mut self.pending)
            .into_values()
            .map(|item| item.prompt_id)
            .collect()
    }

    /// `GET /queue`.
    pub(crate) fn queue_json(&self) -> Value {
        let running: Vec<Value> = self.running.iter().map(|r| r.item.to_json()).collect();
        let pending: Vec<Value> = self.pending.values().map(QueueItem::to_json).collect();
        json!({"queue_running": running, "queue_pending": pending})
    }

    /// Records a finished prompt, dropping the oldest entry beyond ComfyUI's limit.
    pub(crate) fn add_history(&mut self, prompt_id: String, entry: Value) {
        if self.history.insert(prompt_id.clone(), entry).is_some() {
            self.history_order.retain(|id| *id != prompt_id);
        }
        self.history_order.push_back(prompt_id);
        while self.history_order.len() > MAX_HISTORY {
            if let Some(oldest) = self.history_order.pop_front() {
                self.history.remove(&oldest);
            }
        }
    }

    /// The history entry of one prompt.
    pub(crate) fn history_entry(&self, prompt_id: &str) -> Option<&Value> {
        self.history.get(prompt_id)
    }

    /// `GET /history`: the newest `max_items` entries (all when `None`), oldest first, as JSON
    /// text so the order survives (a `serde_json::Map` would sort the ids).
    pub(crate) fn history_json(&self, max_items: Option<usize>) -> String {
        let skip = max_items.map_or(0, |n| self.history_order.len().saturating_sub(n));
        let fields: Vec<String> = self
            .history_order
            .iter()
            .skip(skip)
            .filter_map(|id| {
                let entry = self.history.get(id)?;
                Some(format!(
                    "{}: {}",
                    super::pyjson::dumps(&Value::from(id.as_str())),
                    super::pyjson::dumps(entry)
                ))
            })
            .collect();
        format!("{{{}}}", fields.join(", "))
    }

    /// `POST /history` `{"delete": [...]}`.
    pub(crate) fn delete_history(&mut self, ids: &[String]) {
        self.history_order.retain(|id| !ids.contains(id));
        self.history.retain(|id, _| !ids.contains(id));
    }

    /// `POST /history` `{"clear": true}`.
    pub(crate) fn clear_history(&mut self) {
        self.history_order.clear();
        self.history.clear();
    }

    /// Stores a file, remembering its counter if its name is `{prefix}_{counter}...`.
    pub(crate) fn store_file(&mut self, key: FileKey, data: FileData) {
        if let Some((prefix, counter)) = name_counter(&key.name) {
            let slot = (key.kind.clone(), key.subfolder.clone(), prefix.to_string());
            let highest = self.counters.entry(slot).or_insert(0);
            *highest = (*highest).max(counter);
        }
        self.files.insert(key, Arc::new(data));
    }

    /// Names `LoadImage` accepts: uploaded inputs as `name` or `subfolder/name`, sorted.
    pub(crate) fn input_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .files
            .keys()
            .filter(|k| k.kind == "input")
            .map(|k| {
                if k.subfolder.is_empty() {
                    k.name.clone()
                } else {
                    format!("{}/{}", k.subfolder, k.name)
                }
            })
            .collect();
        names.sort();
        names
    }

    /// The next free counter for `{filename}_{counter:05}_.ext` in one folder, like
    /// ComfyUI's `get_save_image_path` (highest existing counter plus one, whatever the
    /// extension).
    pub(crate) fn next_counter(&self, kind: &str, subfolder: &str, filename: &str) -> u32 {
        let slot = (
            kind.to_string(),
            subfolder.to_string(),
            filename.to_string(),
        );
        self.counters.get(&slot).map_or(1, |n| n + 1)
    }
}

/// The prefix and counter of a saved file's name: `ComfyUI_00012_.png` and `clip_00003.mp4`
/// give `("ComfyUI", 12)` and `("clip", 3)`.
fn name_counter(name: &str) -> Option<(&str, u32)> {
    let stem = name.split('.').next()?;
    let stem = stem.strip_suffix('_').unwrap_or(stem);
    let (prefix, digits) = stem.rsplit_once('_')?;
    if digits.len() < 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((prefix, digits.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_prompts_jump_the_queue_and_numbers_count_up() {
        let mut st = SimState::new();
        let a = st.enqueue("a".into(), json!({}), json!({}), vec![], false);
        let b = st.enqueue("b".into(), json!({}), json!({}), vec![], false);
        let c = st.enqueue("c".into(), json!({}), json!({}), vec![], true);
        assert_eq!((a, b, c), (0, 1, -2));
        let order: Vec<&str> = st.pending.values().map(|p| p.prompt_id.as_str()).collect();
        assert_eq!(order, ["c", "a", "b"]);
    }

    #[test]
    fn history_keeps_insertion_order_and_limits_items() {
        let mut st = SimState::new();
        for id in ["z", "a", "m"] {
            st.add_history(id.into(), json!({"id": id}));
        }
        assert_eq!(
            st.history_json(Some(2)),
            r#"{"a": {"id": "a"}, "m": {"id": "m"}}"#
        );
    }

    #[test]
    fn counters_continue_after_the_highest_file() {
        let mut st = SimState::new();
        assert_eq!(st.next_counter("output", "", "ComfyUI"), 1);
        st.store_file(
            FileKey::new("output", "", "ComfyUI_00012_.png"),
            FileData::Bytes(vec![]),
        );
        st.store_file(
            FileKey::new("output", "", "ComfyUI_00013.mp4"),
            FileData::Bytes(vec![]),
        );
        assert_eq!(st.next_counter("output", "", "ComfyUI"), 14);
        assert_eq!(st.next_counter("output", "", "Other"), 1);
    }
}
