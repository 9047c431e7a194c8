//! The registry of jobs: the one piece of shared mutable state besides each job's own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::Job;
use crate::api::{ApiError, ErrorCode};
use crate::ids::JobId;

/// Keeps every job findable by id: unfinished ones always, finished ones for `retention`.
pub struct JobRegistry {
    jobs: Mutex<HashMap<JobId, Arc<Job>>>,
    max_active: usize,
    retention: Duration,
}

impl JobRegistry {
    /// A registry admitting at most `max_active` unfinished jobs and remembering finished ones
    /// for `retention`.
    pub fn new(max_active: usize, retention: Duration) -> JobRegistry {
        JobRegistry {
            jobs: Mutex::new(HashMap::new()),
            max_active,
            retention,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates and registers a job, or refuses with `429 overloaded` when `max_active`
    /// unfinished jobs exist already. Forgets expired finished jobs on the way.
    pub fn admit(&self, workflow: &str) -> Result<Arc<Job>, ApiError> {
        let mut jobs = self.lock();
        let now = Instant::now();
        jobs.retain(|_, job| !self.expired(job, now));
        let active = jobs.values().filter(|job| !job.is_finished()).count();
        if active >= self.max_active {
            return Err(ApiError::new(
                ErrorCode::Overloaded,
                format!(
                    "{active} jobs are running, the most this gateway accepts (MAX_ACTIVE_JOBS); try again shortly"
                ),
            ));
        }
        let job = Arc::new(Job::new(workflow));
        jobs.insert(job.id().clone(), Arc::clone(&job));
        Ok(job)
    }

    fn expired(&self, job: &Job, now: Instant) -> bool {
        job.finished_at()
            .is_some_and(|end| now.duration_since(end) >= self.retention)
    }

    /// The job with this id, unless unknown or expired.
    pub fn get(&self, id: &JobId) -> Option<Arc<Job>> {
        let job = self.lock().get(id).cloned()?;
        (!self.expired(&job, Instant::now())).then_some(job)
    }

    /// Removes a job that never started (ComfyUI refused or was unreachable).
    pub fn forget(&self, id: &JobId) {
        self.lock().remove(id);
    }

    /// Forgets finished jobs older than the retention; returns how many were dropped.
    pub fn prune(&self) -> usize {
        let mut jobs = self.lock();
        let before = jobs.len();
        let now = Instant::now();
        jobs.retain(|_, job| !self.expired(job, now));
        before - jobs.len()
    }

    /// Unfinished jobs now.
    pub fn active(&self) -> usize {
        self.lock()
            .values()
            .filter(|job| !job.is_finished())
            .count()
    }

    /// Every job held now (unfinished and remembered).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no job is held.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Every unfinished job (for shutdown and metrics).
    pub fn unfinished(&self) -> Vec<Arc<Job>> {
        self.lock()
            .values()
            .filter(|job| !job.is_finished())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobState;

    #[test]
    fn admits_up_to_the_limit() {
        let reg = JobRegistry::new(2, Duration::from_secs(60));
        let a = reg.admit("w").expect("first");
        let _b = reg.admit("w").expect("second");
        let err = reg.admit("w").err().map(|e| e.code);
        assert_eq!(err, Some(ErrorCode::Overloaded));
        a.finish(JobState::Cancelled);
        assert!(reg.admit("w").is_ok(), "a finished job frees its slot");
    }

    #[test]
    fn finished_jobs_are_forgotten_after_retention() {
        let reg = JobRegistry::new(8, Duration::ZERO);
        let job = reg.admit("w").expect("admitted");
        assert!(
            reg.get(job.id()).is_some(),
            "unfinished jobs are never forgotten"
        );
        job.finish(JobState::Cancelled);
        assert!(reg.get(job.id()).is_none());
        assert_eq!(reg.prune(), 1);
        assert!(reg.is_empty());
    }
}
