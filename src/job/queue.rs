//! The gateway's queue of jobs waiting for a backend: highest priority first, first come first
//! served within a priority, and jobs taken back from a failed backend ahead of everyone.
//!
//! [`JobQueue`] is the small interface the dispatcher and the request threads use, so that a
//! queue shared by several gateways can later replace the in-memory [`MemoryQueue`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::ids::JobId;

/// A job's place in line: what the queue orders by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket {
    /// Requeued jobs (their backend failed before starting them) go before any other.
    requeued: Reverse<bool>,
    /// Higher first.
    priority: Reverse<i32>,
    /// Arrival order within a priority.
    seq: u64,
}

impl Ticket {
    /// A new arrival with `priority`, the `seq`-th job accepted.
    pub fn new(priority: i32, seq: u64) -> Ticket {
        Ticket {
            requeued: Reverse(false),
            priority: Reverse(priority),
            seq,
        }
    }

    /// The arrival number.
    pub fn seq(self) -> u64 {
        self.seq
    }

    /// The same job, back at the front after its backend failed before starting it.
    pub fn requeued(self) -> Ticket {
        Ticket {
            requeued: Reverse(true),
            ..self
        }
    }
}

/// The queue of waiting jobs.
pub trait JobQueue: Send + Sync {
    /// Adds a job.
    fn push(&self, id: JobId, ticket: Ticket);
    /// Takes the job that should run next.
    fn pop(&self) -> Option<JobId>;
    /// Takes a job out (cancelled, timed out); false if it was not waiting.
    fn remove(&self, id: &JobId) -> bool;
    /// Waiting jobs.
    fn len(&self) -> usize;
    /// Whether no job waits.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Every waiting job's place in line (0 = next).
    fn positions(&self) -> HashMap<JobId, usize>;
    /// One job's place in line, if it waits.
    fn position(&self, id: &JobId) -> Option<usize>;
    /// How many waiting jobs go before `ticket` (the place a job with it would take).
    fn ahead_of(&self, ticket: Ticket) -> usize;
}

/// The in-memory queue: an ordered map from ticket to job, and the way back.
#[derive(Default)]
pub struct MemoryQueue {
    inner: Mutex<Lines>,
}

#[derive(Default)]
struct Lines {
    by_ticket: BTreeMap<Ticket, JobId>,
    tickets: HashMap<JobId, Ticket>,
}

impl MemoryQueue {
    fn lock(&self) -> MutexGuard<'_, Lines> {
        // Every operation leaves both maps consistent before it can panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl JobQueue for MemoryQueue {
    fn push(&self, id: JobId, ticket: Ticket) {
        let mut lines = self.lock();
        if let Some(old) = lines.tickets.insert(id.clone(), ticket) {
            lines.by_ticket.remove(&old);
        }
        lines.by_ticket.insert(ticket, id);
    }

    fn pop(&self) -> Option<JobId> {
        let mut lines = self.lock();
        let (_, id) = lines.by_ticket.pop_first()?;
        lines.tickets.remove(&id);
        Some(id)
    }

    fn remove(&self, id: &JobId) -> bool {
        let mut lines = self.lock();
        match lines.tickets.remove(id) {
            Some(ticket) => lines.by_ticket.remove(&ticket).is_some(),
            None => false,
        }
    }

    fn len(&self) -> usize {
        self.lock().tickets.len()
    }

    fn positions(&self) -> HashMap<JobId, usize> {
        let lines = self.lock();
        lines
            .by_ticket
            .values()
            .enumerate()
            .map(|(place, id)| (id.clone(), place))
            .collect()
    }

    fn position(&self, id: &JobId) -> Option<usize> {
        let lines = self.lock();
        let ticket = lines.tickets.get(id)?;
        Some(lines.by_ticket.range(..*ticket).count())
    }

    fn ahead_of(&self, ticket: Ticket) -> usize {
        self.lock().by_ticket.range(..ticket).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &MemoryQueue) -> Vec<JobId> {
        std::iter::from_fn(|| queue.pop()).collect()
    }

    #[test]
    fn higher_priority_first_then_arrival_order() {
        let queue = MemoryQueue::default();
        let ids: Vec<JobId> = (0..4).map(|_| JobId::new()).collect();
        queue.push(ids[0].clone(), Ticket::new(0, 1));
        queue.push(ids[1].clone(), Ticket::new(5, 2));
        queue.push(ids[2].clone(), Ticket::new(0, 3));
        queue.push(ids[3].clone(), Ticket::new(-1, 4));
        assert_eq!(queue.positions()[&ids[1]], 0);
        assert_eq!(queue.positions()[&ids[3]], 3);
        assert_eq!(queue.position(&ids[2]), Some(2));
        assert_eq!(
            queue.ahead_of(Ticket::new(1, 9)),
            1,
            "behind priority 5 only"
        );
        assert_eq!(
            drain(&queue),
            [
                ids[1].clone(),
                ids[0].clone(),
                ids[2].clone(),
                ids[3].clone()
            ]
        );
    }

    #[test]
    fn requeued_jobs_go_first_and_removal_works() {
        let queue = MemoryQueue::default();
        let (a, b, c) = (JobId::new(), JobId::new(), JobId::new());
        queue.push(a.clone(), Ticket::new(9, 5));
        queue.push(b.clone(), Ticket::new(0, 1).requeued());
        queue.push(c.clone(), Ticket::new(0, 6));
        assert!(queue.remove(&c));
        assert!(!queue.remove(&c));
        assert_eq!(queue.len(), 2);
        assert_eq!(drain(&queue), [b, a]);
        assert!(queue.is_empty());
    }
}
