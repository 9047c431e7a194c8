//! The deliveries waiting in memory, and who takes which next.
//!
//! Each receiver (a webhook URL) has its own queue, ordered by when each delivery is due and
//! then by arrival, so one job's webhooks leave in the order it emitted them (a retried one is
//! due later, and may arrive after later ones). A small pool of delivery threads takes the
//! next due delivery of a receiver that no thread is posting to: a slow or dead receiver holds
//! one thread and delays only its own deliveries.
//!
//! Memory stays bounded while receivers are slow: a job's `progress` deliveries collapse to the
//! newest (one waits per job and receiver; progress is never written to disk, a restart makes it
//! stale anyway), and every other event a job emits is one of a handful. Deliveries that must
//! survive a restart are written to disk by the `webhook-store` thread before their first
//! attempt, in order; nobody waits on a sleep: threads wait on one condition.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::store::Delivery;

/// A delivery in memory, with its attempts so far.
pub(super) struct Pending {
    pub delivery: Delivery,
    pub attempts: u32,
}

/// What a delivery thread got from [`Queue::take`]: post it, then [`Queue::done`].
pub(super) struct Taken {
    pub slot: u64,
    pub pending: Pending,
}

/// What became of an attempt, for [`Queue::done`].
pub(super) enum Attempted {
    /// Delivered or given up: forgotten.
    Finished,
    /// Failed: tried again at the instant given.
    RetryAt(Instant, Pending),
}

/// How a [`Queue::submit`] was taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Submitted {
    /// A new delivery waits.
    Added,
    /// It replaced the job's older `progress` delivery, which was never attempted.
    Collapsed,
    /// The service is stopping: nothing will send it.
    Refused,
}

/// The deliveries in memory and the condition every webhook thread waits on.
pub(super) struct Queue {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    next_slot: u64,
    slots: HashMap<u64, Slot>,
    receivers: HashMap<String, Receiver>,
    /// Receivers whose next delivery is due and saved, and that nobody posts to.
    ready: VecDeque<String>,
    /// When a receiver's next delivery falls due (entries may be stale: checked when due).
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    /// Deliveries to write to disk before their first attempt, in order.
    to_save: VecDeque<u64>,
    /// Deliveries the store thread is writing now.
    saving: usize,
    /// (receiver, job) → its `progress` delivery not attempted yet.
    progress: HashMap<(String, String), u64>,
    stopping: bool,
}

struct Slot {
    pending: Pending,
    due: Instant,
    saved: bool,
    in_flight: bool,
}

#[derive(Default)]
struct Receiver {
    /// (due, slot), earliest first; slots are numbered in arrival order.
    waiting: BTreeSet<(Instant, u64)>,
    busy: bool,
    listed: bool,
}

impl Queue {
    /// An empty queue.
    pub fn new() -> Queue {
        Queue {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes in a delivery due now. `persist`: it must reach disk (the store thread writes it)
    /// before its first attempt. A `progress` delivery replaces the same job's older one to the
    /// same receiver if that one was never attempted.
    pub fn submit(&self, delivery: Delivery, persist: bool) -> Submitted {
        let mut state = self.lock();
        if state.stopping {
            return Submitted::Refused;
        }
        let url = delivery.url.clone();
        let progress_key =
            (delivery.event == "progress").then(|| (url.clone(), delivery.job_id.clone()));
        if let Some(key) = &progress_key {
            if let Some(&slot) = state.progress.get(key) {
                if let Some(older) = state.slots.get_mut(&slot) {
                    if !older.in_flight && older.pending.attempts == 0 {
                        older.pending.delivery = delivery;
                        return Submitted::Collapsed;
                    }
                }
            }
        }
        let slot = state.next_slot;
        state.next_slot += 1;
        let due = Instant::now();
        state.slots.insert(
            slot,
            Slot {
                pending: Pending {
                    delivery,
                    attempts: 0,
                },
                due,
                saved: !persist,
                in_flight: false,
            },
        );
        state
            .receivers
            .entry(url.clone())
            .or_default()
            .waiting
            .insert((due, slot));
        if let Some(key) = progress_key {
            state.progress.insert(key, slot);
        }
        if persist {
            state.to_save.push_back(slot);
        }
        schedule(&mut state, &url);
        drop(state);
        self.changed.notify_all();
        Submitted::Added
    }

    /// For the store thread: the next delivery to write to disk, waiting for one; `None` once
    /// the queue stops.
    pub fn next_to_save(&self) -> Option<(u64, Delivery)> {
        let mut state = self.lock();
        loop {
            if state.stopping {
                return None;
            }
            if let Some(slot) = state.to_save.pop_front() {
                if let Some(found) = state.slots.get(&slot) {
                    let delivery = found.pending.delivery.clone();
                    state.saving += 1;
                    return Some((slot, delivery));
                }
                continue;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// For the store thread: `slot` is on disk (or could not be written: it is tried anyway).
    pub fn saved(&self, slot: u64) {
        let mut state = self.lock();
        state.saving = state.saving.saturating_sub(1);
        let url = state.slots.get_mut(&slot).map(|found| {
            found.saved = true;
            found.pending.delivery.url.clone()
        });
        if let Some(url) = url {
            schedule(&mut state, &url);
        }
        drop(state);
        self.changed.notify_all();
    }

    /// Waits (at most until `deadline`) until every delivery submitted so far that must reach
    /// disk is there. Returns whether they all are.
    pub fn wait_saved(&self, deadline: Instant) -> bool {
        let mut state = self.lock();
        while !state.to_save.is_empty() || state.saving > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// For a delivery thread: the next due delivery of a receiver nobody posts to, waiting for
    /// one; `None` once the queue stops. Its receiver is busy until [`Queue::done`].
    pub fn take(&self) -> Option<Taken> {
        let mut state = self.lock();
        loop {
            if state.stopping {
                return None;
            }
            let now = Instant::now();
            while state
                .timers
                .peek()
                .is_some_and(|Reverse((due, _))| *due <= now)
            {
                if let Some(Reverse((_, url))) = state.timers.pop() {
                    schedule(&mut state, &url);
                }
            }
            if let Some(url) = state.ready.pop_front() {
                if let Some(taken) = take_from(&mut state, &url, now) {
                    return Some(taken);
                }
                continue;
            }
            let wait = state
                .timers
                .peek()
                .map(|Reverse((due, _))| due.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(3600));
            state = self
                .changed
                .wait_timeout(state, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// For a delivery thread: the attempt at `slot` ended; its receiver is free again.
    pub fn done(&self, slot: u64, attempted: Attempted) {
        let mut state = self.lock();
        let Some(mut found) = state.slots.remove(&slot) else {
            return;
        };
        let url = found.pending.delivery.url.clone();
        if let Attempted::RetryAt(due, pending) = attempted {
            found.pending = pending;
            found.due = due;
            found.in_flight = false;
            state.slots.insert(slot, found);
            state
                .receivers
                .entry(url.clone())
                .or_default()
                .waiting
                .insert((due, slot));
        }
        if let Some(receiver) = state.receivers.get_mut(&url) {
            receiver.busy = false;
        }
        schedule(&mut state, &url);
        drop(state);
        self.changed.notify_all();
    }

    /// How many deliveries wait in memory (being posted included).
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// Ends every wait: the threads return, what is on disk stays for the next start.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.changed.notify_all();
    }
}

/// Puts `url`'s receiver on the ready list if its next delivery is due and saved and nobody
/// posts to it, or sets a timer for when it falls due; forgets a receiver with nothing left.
fn schedule(state: &mut State, url: &str) {
    let Some(receiver) = state.receivers.get(url) else {
        return;
    };
    if receiver.busy || receiver.listed {
        return;
    }
    let Some(&(due, slot)) = receiver.waiting.first() else {
        state.receivers.remove(url);
        return;
    };
    if !state.slots.get(&slot).is_some_and(|found| found.saved) {
        return; // the store thread schedules it once written
    }
    if due <= Instant::now() {
        if let Some(receiver) = state.receivers.get_mut(url) {
            receiver.listed = true;
        }
        state.ready.push_back(url.to_string());
    } else {
        state.timers.push(Reverse((due, url.to_string())));
    }
}

/// Takes `url`'s next delivery if it is still due, saved and free; else reschedules.
fn take_from(state: &mut State, url: &str, now: Instant) -> Option<Taken> {
    let receiver = state.receivers.get_mut(url)?;
    receiver.listed = false;
    let next = receiver.waiting.first().copied();
    let ready = next.is_some_and(|(due, slot)| {
        due <= now && state.slots.get(&slot).is_some_and(|found| found.saved)
    });
    let (Some(key), true) = (next, ready) else {
        schedule(state, url);
        return None;
    };
    let receiver = state.receivers.get_mut(url)?;
    receiver.waiting.remove(&key);
    receiver.busy = true;
    let slot = key.1;
    let found = state.slots.get_mut(&slot)?;
    found.in_flight = true;
    let pending = Pending {
        delivery: found.pending.delivery.clone(),
        attempts: found.pending.attempts,
    };
    let progress_key = (url.to_string(), pending.delivery.job_id.clone());
    if state.progress.get(&progress_key) == Some(&slot) {
        state.progress.remove(&progress_key);
    }
    Some(Taken { slot, pending })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(url: &str, job: &str, event: &str, n: u32) -> Delivery {
        Delivery {
            id: format!("msg_{n:032x}"),
            url: url.into(),
            event: event.into(),
            job_id: job.into(),
            body: format!("{{\"n\":{n}}}"),
            created_unix: 0,
        }
    }

    #[test]
    fn progress_collapses_to_the_newest_per_job_and_receiver() {
        let queue = Queue::new();
        for n in 0..1000 {
            let job = format!("job-{}", n % 10);
            let submitted = queue.submit(delivery("http://r", &job, "progress", n), false);
            assert_eq!(
                submitted,
                if n < 10 {
                    Submitted::Added
                } else {
                    Submitted::Collapsed
                }
            );
        }
        assert_eq!(queue.len(), 10, "one progress delivery per job");
        let taken = queue.take().expect("one is due");
        assert_eq!(taken.pending.delivery.body, "{\"n\":990}", "the newest");
        // While it is being posted, the next tick waits beside it.
        queue.submit(delivery("http://r", "job-0", "progress", 2000), false);
        assert_eq!(queue.len(), 11);
        queue.done(taken.slot, Attempted::Finished);
        assert_eq!(queue.len(), 10);
    }

    #[test]
    fn a_busy_receiver_does_not_hold_up_the_others() {
        let queue = Queue::new();
        queue.submit(delivery("http://slow", "a", "queued", 1), false);
        queue.submit(delivery("http://slow", "a", "complete", 2), false);
        queue.submit(delivery("http://fast", "b", "queued", 3), false);
        let slow = queue.take().expect("due");
        assert_eq!(slow.pending.delivery.url, "http://slow");
        // The slow receiver is busy: the next one taken is the other receiver's.
        let fast = queue.take().expect("due");
        assert_eq!(fast.pending.delivery.url, "http://fast");
        queue.done(fast.slot, Attempted::Finished);
        queue.done(slow.slot, Attempted::Finished);
        let second = queue.take().expect("due");
        assert_eq!(second.pending.delivery.event, "complete", "in order");
        queue.done(second.slot, Attempted::Finished);
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn deliveries_to_keep_wait_until_saved_and_retries_wait_their_turn() {
        let queue = Queue::new();
        queue.submit(delivery("http://r", "a", "queued", 1), true);
        let (slot, saved) = queue.next_to_save().expect("one to save");
        assert_eq!(saved.event, "queued");
        assert!(!queue.wait_saved(Instant::now()), "not written yet");
        queue.saved(slot);
        assert!(queue.wait_saved(Instant::now()));
        let taken = queue.take().expect("saved, so due");
        let later = Instant::now() + Duration::from_millis(50);
        queue.done(taken.slot, Attempted::RetryAt(later, taken.pending));
        let again = queue.take().expect("due after the wait");
        assert!(Instant::now() >= later);
        assert_eq!(again.pending.delivery.event, "queued");
        queue.stop();
        assert!(queue.take().is_none());
    }
}
