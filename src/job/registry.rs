//! The registry of jobs: every job findable by id, unfinished ones always, finished ones for the
//! retention period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::Job;
use crate::ids::JobId;

/// Keeps every job findable by id: unfinished ones always, finished ones for `retention`.
pub struct JobRegistry {
    jobs: Mutex<HashMap<JobId, Arc<Job>>>,
    retention: Duration,
}

impl JobRegistry {
    /// A registry remembering finished jobs for `retention`.
    pub fn new(retention: Duration) -> JobRegistry {
        JobRegistry {
            jobs: Mutex::new(HashMap::new()),
            retention,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a job.
    pub fn insert(&self, job: Arc<Job>) {
        self.lock().insert(job.id().clone(), job);
    }

    fn expired(&self, job: &Job, now: Instant) -> bool {
        job.finished_at()
            .is_some_and(|end| now.saturating_duration_since(end) >= self.retention)
    }

    /// The job with this id, unless unknown or expired.
    pub fn get(&self, id: &JobId) -> Option<Arc<Job>> {
        let job = self.lock().get(id).cloned()?;
        (!self.expired(&job, Instant::now())).then_some(job)
    }

    /// Removes a job (one that never started, or one whose record is gone).
    pub fn forget(&self, id: &JobId) {
        self.lock().remove(id);
    }

    /// Forgets finished jobs older than the retention; returns their ids.
    pub fn prune(&self) -> Vec<JobId> {
        let mut jobs = self.lock();
        let now = Instant::now();
        let expired: Vec<JobId> = jobs
            .values()
            .filter(|job| self.expired(job, now))
            .map(|job| job.id().clone())
            .collect();
        for id in &expired {
            jobs.remove(id);
        }
        expired
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

    /// Every job held now.
    pub fn all(&self) -> Vec<Arc<Job>> {
        self.lock().values().cloned().collect()
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
    use crate::api::RequestOptions;
    use crate::job::{GraphSource, JobState, Plan};

    fn job() -> Arc<Job> {
        let plan = Plan {
            workflow: "graph".into(),
            source: GraphSource::Raw(serde_json::json!({})),
            inputs: Vec::new(),
        };
        Arc::new(Job::new(plan, RequestOptions::default(), 1))
    }

    #[test]
    fn finished_jobs_are_forgotten_after_retention() {
        let reg = JobRegistry::new(Duration::ZERO);
        let job = job();
        reg.insert(Arc::clone(&job));
        assert!(
            reg.get(job.id()).is_some(),
            "unfinished jobs are never forgotten"
        );
        assert_eq!(reg.active(), 1);
        job.finish(JobState::Cancelled);
        assert!(reg.get(job.id()).is_none());
        assert_eq!(reg.prune(), [job.id().clone()]);
        assert!(reg.is_empty());
    }
}
