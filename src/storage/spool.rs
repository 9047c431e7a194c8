//! The spool: a job's images and rows kept on local disk when storing them failed for good, so
//! that nothing is lost and a later attempt can finish the job.
//!
//! Layout under the spool folder (normally `DATA_DIR/spool/`):
//!
//! ```text
//! {job_id}/manifest.json   the pending rows and, per image, its key, content type and file
//! {job_id}/image-0         the image bytes, as they were to be uploaded
//! .tmp-{job_id}-{uuid}/    a save in progress (ignored; renamed into place when complete)
//! ```
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
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ImageRecord, Storage, StorageError};
use crate::ids;

const MANIFEST: &str = "manifest.json";

/// An image handed to [`Spool::save`]: its storage key, its bytes and its content type.
pub type PendingImage = (String, Vec<u8>, String);

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

    /// Keeps a job's images (`(key, bytes, content_type)`) and pending rows, replacing anything
    /// spooled earlier for the same job. Returns the job's folder, `{dir}/{job_id}`. Either the
    /// whole job is saved or, on error, nothing changes.
    pub fn save(
        &self,
        job_id: &str,
        images: &[PendingImage],
        rows: &[ImageRecord],
    ) -> io::Result<PathBuf> {
        check_job_id(job_id)?;
        let temp = self.dir.join(format!(".tmp-{job_id}-{}", ids::new_uuid()));
        let result =
            write_job(&temp, job_id, images, rows).and_then(|()| self.publish(&temp, job_id));
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
        fs::rename(temp, &target)?;
        sync_dir(&self.dir)?;
        if replaced {
            let _ = fs::remove_dir_all(&old);
        }
        Ok(target)
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

    /// Uploads one spooled job's images, sets each row's `url` from the upload, records the
    /// rows, and then deletes the job's folder. Returns the rows as recorded. On any failure the
    /// folder stays for the next flush.
    pub fn flush_one(
        &self,
        job_id: &str,
        storage: &dyn Storage,
    ) -> Result<Vec<ImageRecord>, StorageError> {
        let operation = format!("flushing spooled job {job_id}");
        check_job_id(job_id).map_err(|e| StorageError::io(&operation, e))?;
        let job_dir = self.dir.join(job_id);
        let manifest = read_manifest(&job_dir).map_err(|e| StorageError::io(&operation, e))?;
        let mut rows = manifest.rows;
        for image in &manifest.images {
            let bytes = read_image(&job_dir, &image.file)
                .map_err(|e| StorageError::io(format!("{operation}: reading {}", image.key), e))?;
            let url = storage.put_image(&image.key, &bytes, &image.content_type)?;
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
            "{operation}: {} images stored in {}",
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

/// Writes the images and the manifest into a new folder `dir`, synced to disk.
fn write_job(
    dir: &Path,
    job_id: &str,
    images: &[PendingImage],
    rows: &[ImageRecord],
) -> io::Result<()> {
    fs::create_dir(dir)?;
    let mut spooled = Vec::with_capacity(images.len());
    for (n, (key, bytes, content_type)) in images.iter().enumerate() {
        let file = format!("image-{n}");
        write_synced(&dir.join(&file), bytes)?;
        spooled.push(SpooledImage {
            key: key.clone(),
            content_type: content_type.clone(),
            file,
        });
    }
    let manifest = Manifest {
        job_id: job_id.to_string(),
        images: spooled,
        rows: rows.to_vec(),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
    write_synced(&dir.join(MANIFEST), &json)?;
    sync_dir(dir)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Makes a folder's entries (new files, renames) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn read_manifest(job_dir: &Path) -> io::Result<Manifest> {
    let text = fs::read(job_dir.join(MANIFEST))?;
    serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads an image named in a manifest; the name must be a plain file inside the job folder.
fn read_image(job_dir: &Path, file: &str) -> io::Result<Vec<u8>> {
    let plain = file.starts_with("image-") && !file.contains(['/', '\\']) && !file.contains("..");
    if !plain {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("manifest names an unexpected file {file:?}"),
        ));
    }
    fs::read(job_dir.join(file))
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
        fn check(&self) -> Result<(), StorageError> {
            Ok(())
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
            width: 8,
            height: 8,
            bytes: 3,
            seed: Some(u64::MAX),
            params: serde_json::json!({}),
            created_at: "2026-11-24T04:49:01Z".into(),
        }
    }

    #[test]
    fn save_then_flush_delivers_everything_and_empties_the_spool() {
        let spool = spool();
        let job = ids::new_uuid();
        let images = vec![
            (
                format!("{job}/0.png"),
                b"one".to_vec(),
                "image/png".to_string(),
            ),
            (
                format!("{job}/1.png"),
                b"two".to_vec(),
                "image/png".to_string(),
            ),
        ];
        let path = spool
            .save(&job, &images, &[row(&job, 0), row(&job, 1)])
            .expect("saved");
        assert_eq!(path, spool.dir().join(&job));
        assert_eq!(
            spool.pending().expect("listable"),
            std::slice::from_ref(&job)
        );

        let storage = Memory::default();
        let rows = spool.flush_one(&job, &storage).expect("flushed");
        assert_eq!(*storage.images.lock().expect("lock"), images);
        assert_eq!(rows[1].url, format!("mem://{job}/1.png"));
        assert_eq!(*storage.rows.lock().expect("lock"), rows);
        assert!(!path.exists());
        assert!(spool.pending().expect("listable").is_empty());
        fs::remove_dir_all(spool.dir()).expect("cleanup");
    }

    #[test]
    fn a_failed_flush_keeps_the_job_and_saving_again_replaces_it() {
        let spool = spool();
        let job = ids::new_uuid();
        let image = (
            format!("{job}/0.png"),
            b"v1".to_vec(),
            "image/png".to_string(),
        );
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

        let image = (
            format!("{job}/0.png"),
            b"v2".to_vec(),
            "image/png".to_string(),
        );
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
    fn job_ids_that_are_not_plain_names_are_refused() {
        let spool = spool();
        for bad in ["", "..", "../x", "a/b", ".hidden", "-rf"] {
            assert!(spool.save(bad, &[], &[]).is_err(), "{bad:?}");
        }
        fs::remove_dir_all(spool.dir()).expect("cleanup");
    }
}
