//! The spool: a job's output files and rows kept on local disk so that nothing is lost when
//! storing them fails, and a later attempt can finish the job. With Supabase storage a job is
//! saved here before its upload (write-ahead) and discarded once stored; a job whose storing
//! failed for good is saved (again) and flushed later.
//!
//! Layout under the spool folder (normally `DATA_DIR/spool/`):
//!
//! ```text
//! {job_id}/manifest.json   the pending rows and, per image, its key, content type and file
//! {job_id}/image-0         the first file (any kind: PNG, MP4, FLAC...), as it was to be uploaded
//! {job_id}/refused         present when storage refused the job for good: why (not retried
//!                          until the gateway restarts)
//! .{job_id}.tmp-{uuid}/    a save in progress (ignored; renamed into place when complete)
//! .staging/{job_id}-{uuid}/ a job's downloads from ComfyUI in progress (see [`Staging`])
//! ```
//!
//! Files come in as paths, not bytes: a save hard-links them (or, across file systems, copies
//! them as a stream), so a 300 MB video is never held in memory and usually not even copied.
//!
//! A save is atomic: everything is written and synced in a hidden temporary folder that is then
//! renamed to `{job_id}`, so [`Spool::pending`] never sees half a job. A flush uploads the images
//! under their original keys and records the rows, then deletes the folder; if any step fails the
//! folder stays for the next try, and because uploads overwrite and rows upsert, redoing the
//! steps that had already succeeded is harmless.
//!
//! Flush from one thread at a time (start-up, then a periodic timer); saves may run concurrently
//! with that.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ImageRecord, Storage, StorageError};
use crate::{durable, ids};

const MANIFEST: &str = "manifest.json";

const STAGING: &str = ".staging";

/// Beside a job's manifest: storage refused the job and why (see [`Spool::mark_refused`]).
const REFUSED: &str = "refused";

/// A file handed to [`Spool::save`]: its storage key, where it is now, and its content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingFile {
    /// Where it goes in storage, e.g. `{job_id}/0.mp4`.
    pub key: String,
    /// The file as it was to be uploaded; the spool links or copies it, never moves it.
    pub path: PathBuf,
    /// Its MIME type, e.g. `video/mp4`.
    pub content_type: String,
}

/// A folder for one job's downloads from ComfyUI, on the spool's file system so that spooling
/// them is a hard link. It is removed, with everything in it, when dropped.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
}

impl Staging {
    /// The path of a staged file named `name` (a plain name, e.g. `0.part`).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A file [`Staging::receive`] wrote: where it is, its first bytes and its size.
#[derive(Debug)]
pub struct Received {
    /// The staged file.
    pub path: PathBuf,
    /// Its first bytes (up to the `head_len` asked for), to tell what it is.
    pub head: Vec<u8>,
    /// Its size.
    pub bytes: u64,
}

/// Why [`Staging::receive`] failed: reading the source, or writing the local file.
#[derive(Debug)]
pub enum ReceiveError {
    /// The source failed (for a download: the connection broke, timed out, or sent too much).
    Read(io::Error),
    /// The staged file could not be written (disk full, permissions...).
    Write(io::Error),
}

impl std::fmt::Display for ReceiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReceiveError::Read(e) => write!(f, "reading the file: {e}"),
            ReceiveError::Write(e) => write!(f, "writing the staged file: {e}"),
        }
    }
}

impl std::error::Error for ReceiveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReceiveError::Read(e) | ReceiveError::Write(e) => Some(e),
        }
    }
}

/// Bytes moved per read while receiving: the only buffer a download needs, whatever its size.
pub const RECEIVE_BUFFER: usize = 256 * 1024;

impl Staging {
    /// Copies `source` into the staged file `name` as it arrives, through one
    /// [`RECEIVE_BUFFER`]-sized buffer, keeping the first `head_len` bytes aside; the file is
    /// synced to disk before this returns. A staged file is scratch, written in place: what
    /// keeps it is [`crate::durable::copy_file`] into the spool or local storage.
    pub fn receive(
        &self,
        name: &str,
        source: &mut impl Read,
        head_len: usize,
    ) -> Result<Received, ReceiveError> {
        let path = self.path(name);
        let mut file = File::create(&path).map_err(ReceiveError::Write)?;
        let mut buffer = vec![0u8; RECEIVE_BUFFER];
        let mut head = Vec::new();
        let mut bytes = 0u64;
        loop {
            let n = match source.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReceiveError::Read(e)),
            };
            let wanted = head_len.saturating_sub(head.len()).min(n);
            head.extend_from_slice(&buffer[..wanted]);
            file.write_all(&buffer[..n]).map_err(ReceiveError::Write)?;
            bytes += n as u64;
        }
        file.sync_all().map_err(ReceiveError::Write)?;
        Ok(Received { path, head, bytes })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("removing staged downloads {}: {e}", self.dir.display());
            }
        }
    }
}

/// A folder of jobs whose images still have to reach storage.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// What `manifest.json` holds.
#[derive(Serialize, Deserialize, Debug)]
struct Manifest {
    job_id: String,
    images: Vec<SpooledImage>,
    rows: Vec<ImageRecord>,
}

/// One image in the manifest: where it goes and which file in the job folder holds it.
#[derive(Serialize, Deserialize, Debug)]
struct SpooledImage {
    key: String,
    content_type: String,
    file: String,
}

impl Spool {
    /// A spool in `dir`, created if missing.
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Spool> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(Spool { dir })
    }

    /// Removes a job's spooled images once they reached storage by another way. A job with
    /// nothing spooled is not an error.
    pub fn discard(&self, job_id: &str) -> io::Result<()> {
        check_job_id(job_id)?;
        match fs::remove_dir_all(self.dir.join(job_id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// How many images wait in the spool now (for metrics); 0 if it cannot be read.
    pub fn image_count(&self) -> usize {
        let Ok(jobs) = self.pending() else {
            return 0;
        };
        jobs.iter()
            .filter_map(|job| fs::read_dir(self.dir.join(job)).ok())
            .flat_map(|entries| entries.flatten())
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("image-"))
            .count()
    }

    /// The spool folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new, empty staging folder for `job_id`'s downloads (see [`Staging`]).
    pub fn staging(&self, job_id: &str) -> io::Result<Staging> {
        check_job_id(job_id)?;
        let dir = self
            .dir
            .join(STAGING)
            .join(format!("{job_id}-{}", ids::new_uuid()));
        fs::create_dir_all(&dir)?;
        Ok(Staging { dir })
    }

    /// Removes downloads a gateway stopped mid-job left behind; call once at start-up, before
    /// any job runs.
    pub fn clear_staging(&self) -> io::Result<()> {
        match fs::remove_dir_all(self.dir.join(STAGING)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Keeps a job's files and pending rows, replacing anything spooled earlier for the same
    /// job. Returns the job's folder, `{dir}/{job_id}`. Either the whole job is saved or, on
    /// error, nothing changes. The files are hard-linked where possible, else copied; the
    /// originals stay where they are.
    pub fn save(
        &self,
        job_id: &str,
        files: &[PendingFile],
        rows: &[ImageRecord],
    ) -> io::Result<PathBuf> {
        check_job_id(job_id)?;
        let temp = durable::temporary_beside(&self.dir.join(job_id))?;
        let result =
            write_job(&temp, job_id, files, rows).and_then(|()| self.publish(&temp, job_id));
        if result.is_err() {
            let _ = fs::remove_dir_all(&temp);
        }
        result
    }

    /// Renames a complete temporary folder to `{job_id}`, moving an older copy out of the way
    /// first (renaming onto a non-empty folder is not possible).
    fn publish(&self, temp: &Path, job_id: &str) -> io::Result<PathBuf> {
        let target = self.dir.join(job_id);
        let old = self.dir.join(format!(".old-{job_id}-{}", ids::new_uuid()));
        let replaced = match fs::rename(&target, &old) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        durable::rename(temp, &target)?;
        if replaced {
            let _ = fs::remove_dir_all(&old);
        }
        Ok(target)
    }

    /// Marks a spooled job as refused by storage (`reason`, e.g. `413 EntityTooLarge`): no
    /// amount of retrying uploads it until someone fixes the cause, so periodic flushes skip
    /// it; a start-up flush tries it again. Saving the job again clears the mark.
    pub fn mark_refused(&self, job_id: &str, reason: &str) -> io::Result<()> {
        check_job_id(job_id)?;
        durable::write_bytes(&self.dir.join(job_id).join(REFUSED), reason.as_bytes())
    }

    /// Why storage refused this spooled job, if it did (see [`Spool::mark_refused`]).
    pub fn refusal(&self, job_id: &str) -> Option<String> {
        check_job_id(job_id).ok()?;
        fs::read_to_string(self.dir.join(job_id).join(REFUSED)).ok()
    }

    /// The ids of the jobs waiting in the spool, sorted.
    pub fn pending(&self) -> io::Result<Vec<String>> {
        let mut jobs = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && entry.path().join(MANIFEST).is_file() {
                jobs.push(name);
            }
        }
        jobs.sort();
        Ok(jobs)
    }

    /// Uploads one spooled job's files, sets each row's `url` from the upload, records the
    /// rows, and then deletes the job's folder. Returns the rows as recorded. On any failure the
    /// folder stays for the next flush.
    pub fn flush_one(
        &self,
        job_id: &str,
        storage: &dyn Storage,
    ) -> Result<Vec<ImageRecord>, StorageError> {
        self.flush_one_with(job_id, storage, &mut |_, _| {})
    }

    /// Like [`Spool::flush_one`], telling `stored` of each file (its key and the spooled file,
    /// still on disk) the moment storage accepted it.
    pub fn flush_one_with(
        &self,
        job_id: &str,
        storage: &dyn Storage,
        stored: &mut dyn FnMut(&str, &Path),
    ) -> Result<Vec<ImageRecord>, StorageError> {
        let operation = format!("flushing spooled job {job_id}");
        check_job_id(job_id).map_err(|e| StorageError::io(&operation, e))?;
        let job_dir = self.dir.join(job_id);
        let manifest = read_manifest(&job_dir).map_err(|e| StorageError::io(&operation, e))?;
        let mut rows = manifest.rows;
        rows.iter_mut().for_each(ImageRecord::fill_in_content_type);
        for image in &manifest.images {
            let path = spooled_file(&job_dir, &image.file)
                .map_err(|e| StorageError::io(format!("{operation}: reading {}", image.key), e))?;
            let url = storage.put_file(&image.key, &path, &image.content_type)?;
            stored(&image.key, &path);
            for row in rows.iter_mut().filter(|row| row.storage_key == image.key) {
                row.url = url.clone();
            }
        }
        storage.record(&rows)?;
        if let Err(e) = fs::remove_dir_all(&job_dir) {
            // Everything is stored; a leftover folder only means a harmless repeat later.
            log::warn!(
                "{operation}: stored, but could not remove {}: {e}",
                job_dir.display()
            );
        }
        log::info!(
            "{operation}: {} files stored in {}",
            manifest.images.len(),
            storage.kind()
        );
        Ok(rows)
    }

    /// Flushes every pending job, oldest name first, and reports each outcome. A job that fails
    /// does not stop the others. If the spool folder cannot be listed, logs why and returns
    /// nothing.
    pub fn flush_all(
        &self,
        storage: &dyn Storage,
    ) -> Vec<(String, Result<Vec<ImageRecord>, StorageError>)> {
        let jobs = match self.pending() {
            Ok(jobs) => jobs,
            Err(e) => {
                log::warn!("listing the spool {}: {e}", self.dir.display());
                return Vec::new();
            }
        };
        jobs.into_iter()
            .map(|job| {
                let outcome = self.flush_one(&job, storage);
                if let Err(e) = &outcome {
                    log::warn!("{e}; the job stays in the spool");
                }
                (job, outcome)
            })
            .collect()
    }
}

/// Job ids name folders: allow only what a UUID (or a similar plain id) is made of.
fn check_job_id(job_id: &str) -> io::Result<()> {
    let plain = !job_id.is_empty()
        && job_id.len() <= 64
        && !job_id.starts_with('-')
        && job_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{job_id:?} is not a plain job id"),
        ))
    }
}

/// Links (or copies) the files and writes the manifest into a new folder `dir`, synced to disk.
fn write_job(
    dir: &Path,
    job_id: &str,
    files: &[PendingFile],
    rows: &[ImageRecord],
) -> io::Result<()> {
    fs::create_dir(dir)?;
    let mut spooled = Vec::with_capacity(files.len());
    for (n, pending) in files.iter().enumerate() {
        let file = format!("image-{n}");
        durable::copy_file(&pending.path, &dir.join(&file))?;
        spooled.push(SpooledImage {
            key: pending.key.clone(),
            content_type: pending.content_type.clone(),
            file,
        });
    }
    let manifest = Manifest {
        job_id: job_id.to_string(),
        images: spooled,
        rows: rows.to_vec(),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
    durable::write_bytes(&dir.join(MANIFEST), &json)
}

fn read_manifest(job_dir: &Path) -> io::Result<Manifest> {
    let text = fs::read(job_dir.join(MANIFEST))?;
    serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The path of a file named in a manifest; the name must be a plain file inside the job folder.
fn spooled_file(job_dir: &Path, file: &str) -> io::Result<PathBuf> {
    let plain = file.starts_with("image-") && !file.contains(['/', '\\']) && !file.contains("..");
    if !plain {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("manifest names an unexpected file {file:?}"),
        ));
    }
    let path = job_dir.join(file);
    fs::metadata(&path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A storage that remembers what it was given, and can be told to fail uploads.
    #[derive(Default)]
    struct Memory {
        images: Mutex<Vec<(String, Vec<u8>, String)>>,
        rows: Mutex<Vec<ImageRecord>>,
        fail: bool,
    }

    impl Storage for Memory {
        fn kind(&self) -> &'static str {
            "memory"
        }
        fn put_image(&self, key: &str, bytes: &[u8], ct: &str) -> Result<String, StorageError> {
            if self.fail {
                return Err(StorageError::rejected("uploading", 503, None, None, "down"));
            }
            let mut images = self.images.lock().expect("test lock");
            images.push((key.into(), bytes.into(), ct.into()));
            Ok(format!("mem://{key}"))
        }
        fn record(&self, rows: &[ImageRecord]) -> Result<(), StorageError> {
            self.rows.lock().expect("test lock").extend_from_slice(rows);
            Ok(())
        }
        fn put_file(&self, key: &str, path: &Path, ct: &str) -> Result<String, StorageError> {
            let bytes = fs::read(path).map_err(|e| StorageError::io("reading", e))?;
            self.put_image(key, &bytes, ct)
        }
        fn check(&self) -> Result<(), StorageError> {
            Ok(())
        }
    }

    /// A file outside the spool, as a job's staging folder holds it.
    fn staged(spool: &Spool, key: &str, bytes: &[u8], content_type: &str) -> PendingFile {
        let dir = spool
            .dir()
            .parent()
            .expect("temp")
            .join(format!("staged-{}", ids::new_uuid()));
        fs::create_dir_all(&dir).expect("writable");
        let path = dir.join("0.part");
        fs::write(&path, bytes).expect("writable");
        PendingFile {
            key: key.into(),
            path,
            content_type: content_type.into(),
        }
    }

    fn spool() -> Spool {
        let dir = std::env::temp_dir().join(format!("gateway-spool-{}", ids::new_uuid()));
        Spool::new(dir).expect("temp is writable")
    }

    fn row(job: &str, index: u32) -> ImageRecord {
        ImageRecord {
            id: ids::new_uuid(),
            job_id: job.into(),
            prompt_id: None,
            workflow: "txt2img".into(),
            image_index: index,
            storage_key: format!("{job}/{index}.png"),
            url: String::new(),
            width: Some(8),
            height: Some(8),
            bytes: 3,
            kind: "image".into(),
            content_type: "image/png".into(),
            seed: Some(u64::MAX),
            params: serde_json::json!({}),
            created_at: "2026-11-24T04:49:01Z".into(),
        }
    }

    #[test]
    fn save_then_flush_delivers_everything_and_empties_the_spool() {
        let spool = spool();
        let job = ids::new_uuid();
        let files = vec![
            staged(&spool, &format!("{job}/0.png"), b"one", "image/png"),
            staged(&spool, &format!("{job}/1.mp4"), b"two", "video/mp4"),
        ];
        let path = spool
            .save(&job, &files, &[row(&job, 0), row(&job, 1)])
            .expect("saved");
        // The originals stay where they were; the spool has its own copies (or links).
        for file in &files {
            fs::remove_file(&file.path).expect("the original is still there");
        }
        assert_eq!(path, spool.dir().join(&job));
        assert_eq!(
            spool.pending().expect("listable"),
            std::slice::from_ref(&job)
        );

        let storage = Memory::default();
        let rows = spool.flush_one(&job, &storage).expect("flushed");
        let want = vec![
            (
                format!("{job}/0.png"),
                b"one".to_vec(),
                "image/png".to_string(),
            ),
            (
                format!("{job}/1.mp4"),
                b"two".to_vec(),
                "video/mp4".to_string(),
            ),
        ];
        assert_eq!(*storage.images.lock().expect("lock"), want);
        assert_eq!(rows[0].url, format!("mem://{job}/0.png"));
        assert_eq!(*storage.rows.lock().expect("lock"), rows);
        assert!(!path.exists());
        assert!(spool.pending().expect("listable").is_empty());
        fs::remove_dir_all(spool.dir()).expect("cleanup");
    }

    #[test]
    fn a_failed_flush_keeps_the_job_and_saving_again_replaces_it() {
        let spool = spool();
        let job = ids::new_uuid();
        let image = staged(&spool, &format!("{job}/0.png"), b"v1", "image/png");
        spool.save(&job, &[image], &[row(&job, 0)]).expect("saved");
        let failing = Memory {
            fail: true,
            ..Memory::default()
        };
        let outcomes = spool.flush_all(&failing);
        assert_eq!(outcomes.len(), 1);
        assert!(outcomes[0].1.as_ref().is_err_and(|e| e.is_transient()));
        assert_eq!(
            spool.pending().expect("listable"),
            std::slice::from_ref(&job)
        );

        let image = staged(&spool, &format!("{job}/0.png"), b"v2", "image/png");
        spool
            .save(&job, &[image], &[row(&job, 0)])
            .expect("saved again");
        let names: Vec<_> = fs::read_dir(spool.dir())
            .expect("listable")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            [std::ffi::OsString::from(&job)],
            "no temp folders left"
        );
        let storage = Memory::default();
        spool.flush_one(&job, &storage).expect("flushed");
        assert_eq!(storage.images.lock().expect("lock")[0].1, b"v2");
        fs::remove_dir_all(spool.dir()).expect("cleanup");
    }

    #[test]
    fn a_refusal_mark_is_read_back_and_saving_the_job_again_clears_it() {
        let spool = spool();
        let job = ids::new_uuid();
        assert_eq!(spool.refusal(&job), None, "no such job");
        let image = staged(&spool, &format!("{job}/0.png"), b"v1", "image/png");
        spool.save(&job, &[image], &[row(&job, 0)]).expect("saved");
        assert_eq!(spool.refusal(&job), None);
        spool
            .mark_refused(&job, "413 EntityTooLarge")
            .expect("marked");
        assert_eq!(spool.refusal(&job).as_deref(), Some("413 EntityTooLarge"));
        assert_eq!(
            spool.pending().expect("listable"),
            std::slice::from_ref(&job),
            "the mark is no job of its own"
        );
        assert!(spool.mark_refused("../elsewhere", "x").is_err());
        assert_eq!(spool.refusal("../elsewhere"), None);

        let image = staged(&spool, &format!("{job}/0.png"), b"v2", "image/png");
        spool
            .save(&job, &[image], &[row(&job, 0)])
            .expect("saved again");
        assert_eq!(spool.refusal(&job), None, "a new save starts unrefused");
        fs::remove_dir_all(spool.dir()).expect("cleanup");
    }

    /// A reader that hands out `len` generated bytes, then fails if told to.
    struct Generated {
        left: usize,
        fail_at_end: bool,
    }

    impl Read for Generated {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.left == 0 {
                return match self.fail_at_end {
                    true => Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset")),
                    false => Ok(0),
                };
            }
            let n = buf.len().min(self.left).min(10_000);
            buf[..n].fill(b'v');
            self.left -= n;
            Ok(n)
        }
    }

    #[test]
    fn receiving_writes_the_whole_stream_and_keeps_only_its_head() {
        let spool = spool();
        let staging = spool.staging(&ids::new_uuid()).expect("created");
        let len = 3 * RECEIVE_BUFFER + 17;
        let mut source = Generated {
            left: len,
            fail_at_end: false,
        };
        let received = staging
            .receive("0.part", &mut source, 100)
            .expect("received");
        assert_eq!(received.bytes, len as u64);
        assert_eq!(received.head, vec![b'v'; 100]);
        assert_eq!(
            fs::metadata(&received.path).expect("staged").len(),
            len as u64
        );

        let mut broken = Generated {
            left: 5,
            fail_at_end: true,
        };
        let error = staging
            .receive("1.part", &mut broken, 100)
            .expect_err("the source broke");
        assert!(matches!(error, ReceiveError::Read(_)), "{error:?}");
        fs::remove_dir_all(spool.dir()).expect("cleanup");
    }

    #[test]
    fn a_staging_disk_that_fails_is_a_write_error_not_a_read_error() {
        let spool = spool();
        let staging = spool.staging(&ids::new_uuid()).expect("created");
        // A full disk: every write to /dev/full fails with ENOSPC.
        #[cfg(target_os = "linux")]
        {
            std::os::unix::fs::symlink("/dev/full", staging.path("0.part")).expect("linked");
            let mut source = Generated {
                left: 2 * RECEIVE_BUFFER,
                fail_at_end: false,
            };
            let error = staging
                .receive("0.part", &mut source, 100)
                .expect_err("the disk is full");
            assert!(matches!(error, ReceiveError::Write(_)), "{error:?}");
        }
        // The staging folder is gone (removed under the gateway's feet).
        fs::remove_dir_all(staging.dir()).expect("removable");
        let mut source = Generated {
            left: 10,
            fail_at_end: false,
        };
        let error = staging
            .receive("1.part", &mut source, 100)
            .expect_err("nowhere to write");
        assert!(matches!(error, ReceiveError::Write(_)), "{error:?}");
        assert!(
            error.to_string().starts_with("writing the staged file"),
            "{error}"
        );
        fs::remove_dir_all(spool.dir()).expect("cleanup");
    }

    #[test]
    fn staging_folders_vanish_when_dropped_and_are_not_spooled_jobs() {
        let spool = spool();
        let job = ids::new_uuid();
        let staging = spool.staging(&job).expect("created");
        fs::write(staging.path("0.part"), b"half a video").expect("writable");
        assert!(spool.pending().expect("listable").is_empty());
        assert_eq!(spool.image_count(), 0);
        let dir = staging.dir().to_path_buf();
        drop(staging);
        assert!(!dir.exists());

        // Left behind by a gateway that stopped mid-job: cleared at start-up.
        let left = spool.staging(&job).expect("created");
        fs::write(left.path("0.part"), b"x").expect("writable");
        std::mem::forget(left);
        spool.clear_staging().expect("cleared");
        assert!(!spool.dir().join(STAGING).exists());
        spool.clear_staging().expect("nothing to clear is fine");
        assert!(spool.staging("../x").is_err());
        fs::remove_dir_all(spool.dir()).expect("cleanup");
    }

    #[test]
    fn manifests_from_before_content_types_were_recorded_still_flush() {
        let spool = spool();
        let job = ids::new_uuid();
        let image = staged(&spool, &format!("{job}/0.jpg"), b"jpeg", "image/jpeg");
        let mut old_row = row(&job, 0);
        old_row.storage_key = format!("{job}/0.jpg");
        let dir = spool.save(&job, &[image], &[old_row]).expect("saved");
        // Rewrite the manifest as an older gateway wrote it: no kind, no content_type.
        let manifest = dir.join(MANIFEST);
        let mut json: serde_json::Value =
            serde_json::from_slice(&fs::read(&manifest).expect("readable")).expect("JSON");
        for row in json["rows"].as_array_mut().expect("rows") {
            let row = row.as_object_mut().expect("a row");
            row.remove("kind");
            row.remove("content_type");
        }
        fs::write(&manifest, json.to_string()).expect("writable");
        let storage = Memory::default();
        let rows = spool.flush_one(&job, &storage).expect("flushed");
        assert_eq!(
            (rows[0].kind.as_str(), rows[0].content_type.as_str()),
            ("image", "image/jpeg")
        );
        fs::remove_dir_all(spool.dir()).expect("cleanup");
    }

    #[test]
    fn job_ids_that_are_not_plain_names_are_refused() {
        let spool = spool();
        for bad in ["", "..", "../x", "a/b", ".hidden", "-rf"] {
            assert!(spool.save(bad, &[], &[]).is_err(), "{bad:?}");
        }
        fs::remove_dir_all(spool.dir()).expect("cleanup");
    }
}
