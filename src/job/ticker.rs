//! The ticker: one thread that publishes every unfinished job's `progress` event once per
//! `PROGRESS_INTERVAL_MS`, each job on its own phase (a second after it was accepted, two
//! seconds, ...), whatever its backend or the output pool is busy with.

use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::{Engine, Job};
use crate::ids::JobId;

/// A job and when its next tick is due.
struct Due {
    at: Instant,
    job: Arc<Job>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at.cmp(&other.at)
    }
}

/// How long the places in the gateway's queue computed for one round of ticks stay valid.
const POSITIONS_FRESH: Duration = Duration::from_millis(200);

/// The ticker thread's body: takes new jobs from `new_jobs`, ticks due ones, and ends when the
/// engine is gone.
pub(super) fn run(engine: &Weak<Engine>, new_jobs: &Receiver<Arc<Job>>) {
    let mut due: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut positions: Option<(Instant, HashMap<JobId, usize>)> = None;
    loop {
        let Some(interval) = engine
            .upgrade()
            .filter(|e| !e.is_stopped())
            .map(|e| e.ctx().run.progress_interval)
        else {
            return;
        };
        let next = due
            .peek()
            .map_or_else(|| Instant::now() + interval, |d| d.0.at);
        match new_jobs.recv_deadline(next) {
            Ok(job) => {
                let at = job.created() + interval;
                due.push(Reverse(Due { at, job }));
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let now = Instant::now();
        while due.peek().is_some_and(|d| d.0.at <= now) {
            let Some(Reverse(Due { at, job })) = due.pop() else {
                break;
            };
            // Computed outside the job's lock: it reads every held job's run.
            let fresh = positions
                .as_ref()
                .is_some_and(|(computed, _)| computed.elapsed() < POSITIONS_FRESH);
            if !fresh {
                positions = Some((Instant::now(), engine.positions()));
            }
            let ticked = job.tick(|id| {
                positions
                    .as_ref()
                    .and_then(|(_, places)| places.get(id).copied())
            });
            if !ticked {
                continue; // dropped: a finished job never ticks again
            }
            let mut next = at + interval;
            if next <= now {
                next = now + interval; // fell behind (a busy machine): keep the cadence, no burst
            }
            due.push(Reverse(Due { at: next, job }));
        }
    }
}
