//! A job's events: numbered, kept for replay, and fanned out to live watchers.

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::sse;

/// The kinds of event a job emits, in the order a client meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The gateway accepted the job into its queue.
    Queued,
    /// A ComfyUI backend accepted the job's prompt.
    Dispatched,
    /// A progress tick.
    Progress,
    /// The newest live preview image (only for jobs that asked for previews).
    Preview,
    /// Terminal: the outputs are stored.
    Complete,
    /// Terminal: the job failed.
    Error,
    /// Terminal: the job was cancelled.
    Cancelled,
}

impl EventKind {
    /// The SSE `event:` name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Queued => "queued",
            EventKind::Dispatched => "dispatched",
            EventKind::Progress => "progress",
            EventKind::Preview => "preview",
            EventKind::Complete => "complete",
            EventKind::Error => "error",
            EventKind::Cancelled => "cancelled",
        }
    }

    /// Whether this event ends the job's stream.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventKind::Complete | EventKind::Error | EventKind::Cancelled
        )
    }
}

/// One event as every watcher receives it; `data` is the one-line JSON already serialised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// 1, 2, 3... within the job.
    pub id: u64,
    /// What happened.
    pub kind: EventKind,
    /// The event's data object as JSON text (always carries `job_id`).
    pub data: String,
}

impl Event {
    /// The event framed for an SSE stream.
    pub fn to_sse(&self) -> String {
        sse::format_event(self.id, self.kind.as_str(), &self.data)
    }
}

/// What a new watcher gets: the events it missed, then a channel of the ones to come.
pub struct Subscription {
    /// Events already emitted after the watcher's last seen id, oldest first.
    pub replay: Vec<Arc<Event>>,
    /// Later events; `None` when the job has already ended (the replay then holds its end).
    pub live: Option<Receiver<Arc<Event>>>,
}

/// The progress tick of a job still waiting in the gateway's queue, kept in 24 bytes instead of
/// a few hundred: a night's batch of 10,000 waiting jobs ticks 10,000 times a second, and its
/// newest tick must stay replayable.
#[derive(Debug, Clone, Copy)]
pub struct WaitingTick {
    /// The job's place in the gateway's queue.
    pub queue_position: Option<u32>,
    /// Milliseconds since the job was accepted.
    pub elapsed_ms: u64,
}

impl WaitingTick {
    /// The `progress` data of a waiting job, the same fields a running job's ticks carry.
    pub fn to_json(self, job_id: &str) -> String {
        let position = self
            .queue_position
            .map_or_else(|| "null".to_string(), |p| p.to_string());
        format!(
            "{{\"backend\":null,\"elapsed_ms\":{},\"job_id\":\"{job_id}\",\"node\":null,\
             \"node_type\":null,\"percent\":0.0,\"queue_position\":{position},\
             \"state\":\"queued\",\"step\":null,\"steps\":null}}",
            self.elapsed_ms
        )
    }
}

/// An event as the log keeps it.
#[derive(Debug, Clone)]
enum Stored {
    Full(Arc<Event>),
    Waiting(u64, WaitingTick),
}

impl Stored {
    fn id(&self) -> u64 {
        match self {
            Stored::Full(event) => event.id,
            Stored::Waiting(id, _) => *id,
        }
    }

    /// Whether this is a progress snapshot (of which the log keeps only the newest).
    fn is_progress(&self) -> bool {
        match self {
            Stored::Full(event) => event.kind == EventKind::Progress,
            Stored::Waiting(..) => true,
        }
    }

    fn materialise(&self, job_id: &str) -> Arc<Event> {
        match self {
            Stored::Full(event) => Arc::clone(event),
            Stored::Waiting(id, tick) => Arc::new(Event {
                id: *id,
                kind: EventKind::Progress,
                data: tick.to_json(job_id),
            }),
        }
    }
}

/// The events of one job worth replaying, plus the channels of its live watchers.
///
/// Its size is constant in time: it keeps every event but progress ticks and previews, and of
/// those only the newest one of each kind (a progress snapshot replaces the previous one, so a
/// job waiting all night costs one tick, not one per second). A watcher re-attaching from any id
/// gets every non-progress event after it and the newest progress. Ids stay 1, 2, 3... as
/// emitted, so a replay may skip the ids of the ticks that were replaced.
///
/// The log lives inside the job's mutex, so subscribing (copying the replay and registering the
/// channel) and publishing are atomic with respect to each other: a watcher sees every event
/// exactly once, with no gap between replay and live.
pub struct EventLog {
    job_id: String,
    events: Vec<Stored>,
    watchers: Vec<Sender<Arc<Event>>>,
    next_id: u64,
    finished: bool,
}

impl EventLog {
    /// An empty log for the job `job_id`; the first event gets id 1.
    pub fn new(job_id: &str) -> EventLog {
        EventLog::restore(job_id, Vec::new(), 1)
    }

    /// A log holding `events` (from a saved job), whose next event gets `next_id`.
    pub fn restore(job_id: &str, events: Vec<Event>, next_id: u64) -> EventLog {
        let finished = events.last().is_some_and(|e| e.kind.is_terminal());
        let last = events.last().map_or(0, |e| e.id);
        EventLog {
            job_id: job_id.to_string(),
            events: events
                .into_iter()
                .map(|e| Stored::Full(Arc::new(e)))
                .collect(),
            watchers: Vec::new(),
            next_id: next_id.max(last + 1),
            finished,
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Appends an event, numbering it, and hands it to every live watcher.
    ///
    /// Watchers whose receiving end is gone (the client disconnected) are dropped here. After a
    /// terminal event every watcher's channel is closed, which ends their streams.
    ///
    /// Only the newest progress snapshot and the newest preview are kept for replay (both are
    /// stale once a newer one exists), and no preview once the job has ended.
    pub fn push(&mut self, kind: EventKind, data: String) -> Arc<Event> {
        let event = Arc::new(Event {
            id: self.take_id(),
            kind,
            data,
        });
        if kind == EventKind::Progress {
            self.events.retain(|e| !e.is_progress());
        }
        if kind == EventKind::Preview || kind.is_terminal() {
            self.events
                .retain(|e| !matches!(e, Stored::Full(old) if old.kind == EventKind::Preview));
        }
        self.events.push(Stored::Full(Arc::clone(&event)));
        self.deliver(&event);
        if kind.is_terminal() {
            self.finished = true;
            self.watchers.clear();
        }
        event
    }

    /// Appends the progress tick of a waiting job, kept compact, in place of the previous
    /// progress snapshot.
    pub fn push_waiting(&mut self, tick: WaitingTick) {
        let id = self.take_id();
        let stored = Stored::Waiting(id, tick);
        if !self.watchers.is_empty() {
            let event = stored.materialise(&self.job_id);
            self.deliver(&event);
        }
        self.events.retain(|e| !e.is_progress());
        self.events.push(stored);
    }

    fn deliver(&mut self, event: &Arc<Event>) {
        self.watchers
            .retain(|watcher| watcher.send(Arc::clone(event)).is_ok());
    }

    /// Subscribes a watcher that has seen events up to `last_seen` (0 for none).
    pub fn subscribe(&mut self, last_seen: u64) -> Subscription {
        let start = self.events.partition_point(|e| e.id() <= last_seen);
        let replay = self.events[start..]
            .iter()
            .map(|e| e.materialise(&self.job_id))
            .collect();
        if self.finished {
            return Subscription { replay, live: None };
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        self.watchers.push(tx);
        Subscription {
            replay,
            live: Some(rx),
        }
    }

    /// Every event kept so far, oldest first, without subscribing.
    pub fn events(&self) -> Vec<Arc<Event>> {
        self.events
            .iter()
            .map(|e| e.materialise(&self.job_id))
            .collect()
    }

    /// The events worth saving across a restart: all but progress ticks and previews, which
    /// are stale by the time anyone could replay them.
    pub fn durable_events(&self) -> Vec<Event> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Stored::Full(event)
                    if !matches!(event.kind, EventKind::Progress | EventKind::Preview) =>
                {
                    Some((**event).clone())
                }
                _ => None,
            })
            .collect()
    }

    /// The id the next event will get.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Whether the terminal event has been emitted.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// How many watchers are attached now.
    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// How many events are kept for replay (constant in time: see [`EventLog`]).
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// How many events the job emitted so far (the id of the newest one; after a restart, ids
    /// the old process may have used are counted too).
    pub fn emitted(&self) -> u64 {
        self.next_id - 1
    }

    /// Whether no event is kept.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(events: &[Arc<Event>]) -> Vec<u64> {
        events.iter().map(|e| e.id).collect()
    }

    #[test]
    fn replay_then_live_without_gap_or_repeat() {
        let mut log = EventLog::new("j");
        log.push(EventKind::Queued, "{}".into());
        log.push(EventKind::Progress, "{}".into());
        let sub = log.subscribe(1);
        assert_eq!(ids(&sub.replay), [2]);
        log.push(EventKind::Progress, "{}".into());
        log.push(EventKind::Complete, "{}".into());
        let live = sub.live.expect("job still running when subscribed");
        let rest: Vec<_> = live.iter().collect(); // ends: the terminal event closed the channel
        assert_eq!(ids(&rest), [3, 4], "a live watcher sees every tick");
    }

    #[test]
    fn finished_job_replays_everything_and_has_no_live_channel() {
        let mut log = EventLog::new("j");
        log.push(EventKind::Queued, "{}".into());
        log.push(EventKind::Cancelled, "{}".into());
        let sub = log.subscribe(0);
        assert_eq!(ids(&sub.replay), [1, 2]);
        assert!(sub.live.is_none());
        assert!(log.is_finished());
    }

    #[test]
    fn departed_watchers_are_dropped() {
        let mut log = EventLog::new("j");
        let sub = log.subscribe(0);
        assert_eq!(log.watcher_count(), 1);
        drop(sub);
        log.push(EventKind::Queued, "{}".into());
        assert_eq!(log.watcher_count(), 0);
    }

    #[test]
    fn waiting_ticks_replay_as_full_progress_events() {
        let mut log = EventLog::new("j1");
        log.push(EventKind::Queued, "{}".into());
        let live = log.subscribe(1).live.expect("running");
        let tick = WaitingTick {
            queue_position: Some(7),
            elapsed_ms: 1000,
        };
        log.push_waiting(tick);
        let sent = live.try_recv().expect("delivered live");
        let replayed = log.subscribe(1).replay;
        assert_eq!(*replayed[0], *sent);
        let data: serde_json::Value = serde_json::from_str(&sent.data).expect("JSON");
        assert_eq!(data["queue_position"], 7);
        assert_eq!(data["state"], "queued");
        assert_eq!(data["job_id"], "j1");
    }

    #[test]
    fn only_the_newest_preview_is_kept_and_none_after_the_end() {
        let mut log = EventLog::new("j");
        log.push(EventKind::Preview, "{}".into());
        log.push(EventKind::Progress, "{}".into());
        log.push(EventKind::Preview, "{}".into());
        assert_eq!(ids(&log.subscribe(0).replay), [2, 3]);
        log.push(EventKind::Complete, "{}".into());
        assert_eq!(ids(&log.subscribe(0).replay), [2, 4]);
    }

    #[test]
    fn a_log_keeps_every_other_event_and_only_the_newest_progress() {
        let mut log = EventLog::new("j");
        log.push(EventKind::Queued, "{}".into()); // 1
        for n in 0..1000u64 {
            log.push_waiting(WaitingTick {
                queue_position: Some(5),
                elapsed_ms: n,
            }); // 2..=1001
        }
        assert_eq!(log.len(), 2, "a night of waiting ticks costs one tick");
        log.push(EventKind::Dispatched, "{}".into()); // 1002
        log.push(EventKind::Progress, "{\"n\":1}".into()); // 1003
        log.push(EventKind::Progress, "{\"n\":2}".into()); // 1004
        log.push(EventKind::Preview, "{}".into()); // 1005
        log.push(EventKind::Progress, "{\"n\":3}".into()); // 1006
        assert_eq!(log.len(), 4);
        assert_eq!(log.emitted(), 1006);
        // From any id: every non-progress event after it, and the newest progress.
        assert_eq!(ids(&log.subscribe(0).replay), [1, 1002, 1005, 1006]);
        assert_eq!(ids(&log.subscribe(500).replay), [1002, 1005, 1006]);
        assert_eq!(ids(&log.subscribe(1003).replay), [1005, 1006]);
        assert_eq!(ids(&log.subscribe(1006).replay), Vec::<u64>::new());
        assert_eq!(log.subscribe(0).replay[3].data, "{\"n\":3}");
        // A waiting tick replaces a running snapshot too (a job requeued), and ids go on.
        log.push_waiting(WaitingTick {
            queue_position: Some(0),
            elapsed_ms: 9,
        });
        assert_eq!(ids(&log.subscribe(0).replay), [1, 1002, 1005, 1007]);
        log.push(EventKind::Error, "{}".into());
        assert_eq!(ids(&log.subscribe(0).replay), [1, 1002, 1007, 1008]);
    }

    #[test]
    fn a_restored_log_continues_its_ids_and_keeps_durable_events() {
        let mut log = EventLog::new("j");
        log.push(EventKind::Queued, "{}".into());
        log.push(EventKind::Progress, "{}".into());
        log.push(EventKind::Dispatched, "{}".into());
        let durable = log.durable_events();
        assert_eq!(durable.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 3]);
        let mut restored = EventLog::restore("j", durable, 10);
        assert_eq!(restored.push(EventKind::Progress, "{}".into()).id, 10);
        assert_eq!(ids(&restored.subscribe(1).replay), [3, 10]);
    }
}
