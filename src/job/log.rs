//! A job's events: numbered, kept for replay, and fanned out to live watchers.

use crossbeam_channel::{Receiver, Sender};
use std::sync::Arc;

use crate::sse;

/// The kinds of event a job emits, in the order a client meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// ComfyUI accepted the prompt.
    Queued,
    /// A progress tick.
    Progress,
    /// Terminal: the images are stored.
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
            EventKind::Progress => "progress",
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
#[derive(Debug, Clone, PartialEq)]
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

/// Every event of one job plus the channels of its live watchers.
///
/// The log lives inside the job's mutex, so subscribing (copying the replay and registering the
/// channel) and publishing are atomic with respect to each other: a watcher sees every event
/// exactly once, with no gap between replay and live.
#[derive(Default)]
pub struct EventLog {
    events: Vec<Arc<Event>>,
    watchers: Vec<Sender<Arc<Event>>>,
}

impl EventLog {
    /// Appends an event, numbering it, and hands it to every live watcher.
    ///
    /// Watchers whose receiving end is gone (the client disconnected) are dropped here. After a
    /// terminal event every watcher's channel is closed, which ends their streams.
    pub fn push(&mut self, kind: EventKind, data: String) -> Arc<Event> {
        let event = Arc::new(Event {
            id: self.events.len() as u64 + 1,
            kind,
            data,
        });
        self.events.push(Arc::clone(&event));
        self.watchers
            .retain(|watcher| watcher.send(Arc::clone(&event)).is_ok());
        if kind.is_terminal() {
            self.watchers.clear();
        }
        event
    }

    /// Subscribes a watcher that has seen events up to `last_seen` (0 for none).
    pub fn subscribe(&mut self, last_seen: u64) -> Subscription {
        let replay = self
            .events
            .iter()
            .filter(|e| e.id > last_seen)
            .cloned()
            .collect();
        if self.is_finished() {
            return Subscription { replay, live: None };
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        self.watchers.push(tx);
        Subscription {
            replay,
            live: Some(rx),
        }
    }

    /// Whether the terminal event has been emitted.
    pub fn is_finished(&self) -> bool {
        self.events.last().is_some_and(|e| e.kind.is_terminal())
    }

    /// How many watchers are attached now.
    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// How many events were emitted.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event was emitted yet.
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
        let mut log = EventLog::default();
        log.push(EventKind::Queued, "{}".into());
        log.push(EventKind::Progress, "{}".into());
        let sub = log.subscribe(1);
        assert_eq!(ids(&sub.replay), [2]);
        log.push(EventKind::Progress, "{}".into());
        log.push(EventKind::Complete, "{}".into());
        let live = sub.live.expect("job still running when subscribed");
        let rest: Vec<_> = live.iter().collect(); // ends: the terminal event closed the channel
        assert_eq!(ids(&rest), [3, 4]);
    }

    #[test]
    fn finished_job_replays_everything_and_has_no_live_channel() {
        let mut log = EventLog::default();
        log.push(EventKind::Queued, "{}".into());
        log.push(EventKind::Cancelled, "{}".into());
        let sub = log.subscribe(0);
        assert_eq!(ids(&sub.replay), [1, 2]);
        assert!(sub.live.is_none());
        assert!(log.is_finished());
    }

    #[test]
    fn departed_watchers_are_dropped() {
        let mut log = EventLog::default();
        let sub = log.subscribe(0);
        assert_eq!(log.watcher_count(), 1);
        drop(sub);
        log.push(EventKind::Queued, "{}".into());
        assert_eq!(log.watcher_count(), 0);
    }
}
