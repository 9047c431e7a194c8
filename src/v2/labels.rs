//! The v2 fields of a job that the gateway's own job record does not carry (its `metadata`
//! labels), kept beside it in `DATA_DIR/v2/jobs/`.

use std::path::PathBuf;

/// Each v2 job's labels, on disk and in memory.
pub struct Labels {
    dir: PathBuf,
}

impl Labels {
    /// Opens (creating) `dir` and reads back every record in it.
    pub fn open(dir: PathBuf) -> std::io::Result<Labels> {
        std::fs::create_dir_all(&dir)?;
        Ok(Labels { dir })
    }

    /// Where the records live.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}
