//! Local-disk storage, the default: output files (images, videos, sounds, models) the gateway
//! serves itself, metadata as JSON lines.
//!
//! Layout under `DATA_DIR`:
//! - `images/{job_id}/{index}.{ext}`: each output file (`.png`, `.mp4`, `.gif`, `.wav`, ...: any
//!   extension of [`crate::media::KNOWN`]), written through [`crate::durable`] (a hidden
//!   temporary file in the same folder, a hard link or a streamed copy for
//!   [`Storage::put_file`], synced, renamed into place, the folder synced), so a reader never
//!   sees half a file;
//! - `generations.jsonl`: one [`ImageRecord`] per line, appended.
//!
//! Durability: both the image files and the JSONL file are `fsync`ed before the call returns, so
//! a job reported as stored survives a power cut. That costs a few milliseconds per job, nothing
//! next to a generation.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{ImageRecord, Storage, StorageError};
use crate::{durable, ids};

/// Stores images under `DATA_DIR/images/` and metadata in `DATA_DIR/generations.jsonl`.
#[derive(Debug)]
pub struct LocalStorage {
    data_dir: PathBuf,
    public_base_url: String,
    /// Held while appending to `generations.jsonl`, so lines from two jobs never interleave.
    jsonl_lock: Mutex<()>,
}

impl LocalStorage {
    /// Storage rooted at `data_dir`, handing out URLs under `public_base_url` (e.g.
    /// `http://127.0.0.1:8000`; a trailing `/` is ignored). Folders are created on first use.
    pub fn new(data_dir: PathBuf, public_base_url: String) -> LocalStorage {
        let public_base_url = public_base_url.trim_end_matches('/').to_string();
        LocalStorage {
            data_dir,
            public_base_url,
            jsonl_lock: Mutex::new(()),
        }
    }

    /// The file that serves `GET /images/{key}`, or `None` unless `key` has the exact form
    /// `{uuid}/{digits}.{ext}` with an extension of [`crate::media::KNOWN`]. Anything else
    /// (`..`, absolute paths, other names) is refused, so a request can never reach outside
    /// `DATA_DIR/images`. The file may not exist.
    pub fn image_path(&self, key: &str) -> Option<PathBuf> {
        let (job, file) = parse_key(key)?;
        Some(self.data_dir.join("images").join(job).join(file))
    }

    /// Where clients download the file stored at `key`: `{public_base_url}/images/{key}`.
    fn url_of(&self, key: &str) -> String {
        format!("{}/images/{key}", self.public_base_url)
    }

    /// Has `write` put the file for `key` at its [`image_path`](Self::image_path) and returns
    /// its URL; a key that path refuses is an error before anything is written.
    fn store(
        &self,
        key: &str,
        write: impl FnOnce(&Path) -> io::Result<()>,
    ) -> Result<String, StorageError> {
        let operation = format!("storing {key} on local disk");
        let path = self.image_path(key).ok_or_else(|| {
            StorageError::invalid(&operation, "the key is not of the form {uuid}/{n}.{ext}")
        })?;
        write(&path).map_err(|e| StorageError::io(&operation, e))?;
        Ok(self.url_of(key))
    }

    /// The `generations.jsonl` file rows are appended to.
    pub fn jsonl_path(&self) -> PathBuf {
        self.data_dir.join("generations.jsonl")
    }

    /// Repairs what a crash (`kill -9`, a power cut) can leave in `DATA_DIR`; run at start-up,
    /// before any job stores anything.
    ///
    /// - Temporary files and folders of saves that never finished (`.NAME.tmp-UUID` beside the
    ///   images, the spool's `.tmp-JOB-UUID/`, `.ready-probe-UUID`) are removed: a finished save
    ///   renames its temporary into place, so whatever is left was abandoned.
    /// - Every stored image gets its `generations.jsonl` row: an image whose row is missing (the
    ///   crash came between storing it and appending its row) gets one rebuilt from what the
    ///   file tells (job, index, size, dimensions, the file's time), with `params` saying
    ///   `{"reconciled": true, ...}`; what only the request knew (prompt id, workflow, seed,
    ///   parameters) is unknown (`workflow` is `"unknown"`).
    pub fn reconcile(&self) -> io::Result<Reconciled> {
        let mut done = Reconciled::default();
        if !self.data_dir.exists() {
            return Ok(done);
        }
        remove_leftovers(&self.data_dir, 0, &mut done)?;
        let recorded = self.recorded_keys()?;
        let mut rows = Vec::new();
        for key in self.stored_keys()? {
            if !recorded.contains(&key) {
                rows.push(self.rebuilt_row(&key)?);
            }
        }
        if !rows.is_empty() {
            self.record(&rows)
                .map_err(|e| io::Error::other(e.to_string()))?;
            done.rows_written = rows.iter().map(|row| row.storage_key.clone()).collect();
        }
        Ok(done)
    }

    /// The `storage_key` of every row in `generations.jsonl` (torn or foreign lines skipped).
    fn recorded_keys(&self) -> io::Result<HashSet<String>> {
        let text = match fs::read(self.jsonl_path()) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
            Err(e) => return Err(e),
        };
        Ok(text
            .split(|&b| b == b'\n')
            .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
            .filter_map(|row| Some(row.get("storage_key")?.as_str()?.to_owned()))
            .collect())
    }

    /// The key of every image file under `images/`, sorted.
    fn stored_keys(&self) -> io::Result<Vec<String>> {
        let images = self.data_dir.join("images");
        let mut keys = Vec::new();
        let Ok(jobs) = fs::read_dir(&images) else {
            return Ok(keys);
        };
        for job in jobs {
            let job = job?;
            if !job.file_type()?.is_dir() {
                continue;
            }
            for file in fs::read_dir(job.path())? {
                let file = file?;
                let key = format!(
                    "{}/{}",
                    job.file_name().to_string_lossy(),
                    file.file_name().to_string_lossy()
                );
                if file.file_type()?.is_file() && parse_key(&key).is_some() {
                    keys.push(key);
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// A row for a stored image whose row is missing, from what its file tells.
    fn rebuilt_row(&self, key: &str) -> io::Result<ImageRecord> {
        let (job_id, file) = parse_key(key)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an image key"))?;
        let path = self.data_dir.join("images").join(key);
        let metadata = fs::metadata(&path)?;
        // As much of the head as the job's own identification saw (a JPEG's size may come after
        // its EXIF), read to the end of that span even if one read returns less.
        let mut head = Vec::new();
        io::Read::read_to_end(
            &mut io::Read::take(fs::File::open(&path)?, crate::media::HEAD_LEN as u64),
            &mut head,
        )?;
        let media = crate::media::identify(&head, file);
        let dimensions = crate::media::file_dimensions(&path, media, &head);
        let stored_at = metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Ok(ImageRecord {
            id: ids::new_uuid(),
            job_id: job_id.to_owned(),
            prompt_id: None,
            workflow: "unknown".into(),
            image_index: file
                .split_once('.')
                .and_then(|(index, _)| index.parse().ok())
                .unwrap_or(0),
            storage_key: key.to_owned(),
            url: self.url_of(key),
            width: dimensions.map(|(width, _)| width),
            height: dimensions.map(|(_, height)| height),
            bytes: metadata.len(),
            kind: media.kind.as_str().to_string(),
            content_type: media.content_type.to_string(),
            seed: None,
            params: serde_json::json!({
                "reconciled": true,
                "note": "row rebuilt at start-up from the stored file: the gateway stopped \
                         between storing the image and recording it",
            }),
            created_at: crate::timestamp::rfc3339_from_unix_millis(stored_at),
        })
    }

    fn append_lines(&self, text: &[u8]) -> io::Result<()> {
        fs::create_dir_all(&self.data_dir)?;
        // A poisoned lock only means another thread panicked mid-append; the file is still
        // consistent line-wise because of the torn-line repair below.
        let _guard = self
            .jsonl_lock
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(self.jsonl_path())?;
        let mut buffer = Vec::with_capacity(text.len() + 1);
        if !ends_with_newline(&mut file)? {
            // An earlier write was cut short: end that torn line so ours starts cleanly.
            buffer.push(b'\n');
        }
        buffer.extend_from_slice(text);
        file.write_all(&buffer)?;
        file.sync_data()
    }
}

impl Storage for LocalStorage {
    fn kind(&self) -> &'static str {
        "local"
    }

    /// Writes `DATA_DIR/images/{key}` atomically and returns `{public_base_url}/images/{key}`.
    /// Only keys that [`LocalStorage::image_path`] accepts can be stored.
    fn put_image(
        &self,
        key: &str,
        bytes: &[u8],
        _content_type: &str,
    ) -> Result<String, StorageError> {
        self.store(key, |path| durable::write_bytes(path, bytes))
    }

    /// Puts a copy of the file at `DATA_DIR/images/{key}` atomically: a hard link when both are
    /// on one file system (no byte is copied), else a streamed copy; synced, then renamed into
    /// place. Returns `{public_base_url}/images/{key}`.
    fn put_file(
        &self,
        key: &str,
        source: &Path,
        _content_type: &str,
    ) -> Result<String, StorageError> {
        self.store(key, |path| durable::copy_file(source, path))
    }

    /// Appends one JSON line per row to `generations.jsonl` in a single write. A retry after a
    /// failed write may leave a duplicate line; readers should keep the last line per
    /// (`job_id`, `image_index`).
    fn record(&self, rows: &[ImageRecord]) -> Result<(), StorageError> {
        if rows.is_empty() {
            return Ok(());
        }
        let operation = format!(
            "appending {} to {}",
            super::count(rows.len(), "row"),
            self.jsonl_path().display()
        );
        let mut text = Vec::new();
        for row in rows {
            serde_json::to_writer(&mut text, row)
                .map_err(|e| StorageError::invalid(&operation, e.to_string()))?;
            text.push(b'\n');
        }
        self.append_lines(&text)
            .map_err(|e| StorageError::io(&operation, e))
    }

    /// Creates `DATA_DIR` if needed and writes (then removes) a probe file in it.
    fn check(&self) -> Result<(), StorageError> {
        let operation = format!("checking that {} is writable", self.data_dir.display());
        fs::create_dir_all(&self.data_dir).map_err(|e| StorageError::io(&operation, e))?;
        let probe = self
            .data_dir
            .join(format!(".ready-probe-{}", ids::new_uuid()));
        let result = fs::write(&probe, b"ok");
        // Remove even when the write failed half-way; a missing file is fine.
        let _ = fs::remove_file(&probe);
        result.map_err(|e| StorageError::io(&operation, e))
    }
}

/// What [`LocalStorage::reconcile`] repaired.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// Temporary files and folders removed.
    pub removed: Vec<PathBuf>,
    /// Storage keys of the images whose missing row was written.
    pub rows_written: Vec<String>,
}

impl Reconciled {
    /// Logs what was repaired (nothing when there was nothing to repair).
    pub fn log(&self) {
        for path in &self.removed {
            log::warn!("removed {} left by an interrupted save", path.display());
        }
        for key in &self.rows_written {
            log::warn!("image {key} had no generations.jsonl row: wrote one (reconciled)");
        }
    }
}

/// Whether `name` is a temporary file or folder of a save that never finished.
fn is_leftover(name: &str) -> bool {
    name.starts_with('.') && (name.contains(".tmp-") || name.starts_with(".ready-probe-"))
}

/// Removes the temporary files and folders that interrupted saves left under `data_dir` (also
/// for Supabase storage, whose spool lives there); returns what was removed.
pub fn remove_crash_leftovers(data_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut done = Reconciled::default();
    if data_dir.exists() {
        remove_leftovers(data_dir, 0, &mut done)?;
    }
    Ok(done.removed)
}

/// Removes leftovers under `dir`, looking a few levels down (`images/JOB/`, `spool/`).
fn remove_leftovers(dir: &Path, depth: usize, done: &mut Reconciled) -> io::Result<()> {
    const MAX_DEPTH: usize = 3;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if is_leftover(&entry.file_name().to_string_lossy()) {
            if kind.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
            done.removed.push(path);
        } else if kind.is_dir() && depth < MAX_DEPTH {
            remove_leftovers(&path, depth + 1, done)?;
        }
    }
    Ok(())
}

/// Splits a key of the form `{uuid}/{digits}.{ext}` into its folder and file name.
fn parse_key(key: &str) -> Option<(&str, &str)> {
    let (job, file) = key.split_once('/')?;
    let (index, extension) = file.split_once('.')?;
    let index_ok =
        !index.is_empty() && index.len() <= 10 && index.bytes().all(|b| b.is_ascii_digit());
    let extension_ok = crate::media::is_key_extension(extension);
    (ids::is_uuid(job) && index_ok && extension_ok).then_some((job, file))
}

/// The `Content-Type` to serve a stored file with, from its key's extension; `None` for keys
/// without a known one.
pub fn content_type_for(key: &str) -> Option<&'static str> {
    let (_, extension) = key.rsplit_once('.')?;
    crate::media::is_key_extension(extension).then(|| crate::media::content_type_for_key(key))
}

/// Whether `file` is empty or its last byte is a newline.
fn ends_with_newline(file: &mut File) -> io::Result<bool> {
    if file.seek(SeekFrom::End(0))? == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "3f2a9c1e-8b7d-4e6f-a5c4-0123456789ab";

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gateway-local-{}", ids::new_uuid()));
        fs::create_dir_all(&dir).expect("the temp dir is writable");
        dir
    }

    fn row(index: u32, seed: u64) -> ImageRecord {
        ImageRecord {
            id: ids::new_uuid(),
            job_id: JOB.into(),
            prompt_id: Some("p-1".into()),
            workflow: "txt2img".into(),
            image_index: index,
            storage_key: format!("{JOB}/{index}.png"),
            url: format!("http://127.0.0.1:8000/images/{JOB}/{index}.png"),
            width: Some(64),
            height: Some(64),
            bytes: 3,
            kind: "image".into(),
            content_type: "image/png".into(),
            seed: Some(seed),
            params: serde_json::json!({"prompt": "a fox", "seed": seed}),
            created_at: "2026-11-24T04:49:01Z".into(),
        }
    }

    #[test]
    fn images_land_under_images_and_get_public_urls() {
        let dir = temp_dir();
        let storage = LocalStorage::new(dir.clone(), "http://127.0.0.1:8000/".into());
        let key = format!("{JOB}/0.png");
        let url = storage
            .put_image(&key, b"png", "image/png")
            .expect("local disk works");
        assert_eq!(url, format!("http://127.0.0.1:8000/images/{key}"));
        let stored = dir.join("images").join(JOB).join("0.png");
        assert_eq!(fs::read(&stored).expect("the image exists"), b"png");
        assert_eq!(storage.image_path(&key), Some(stored));

        // No temporary files are left beside it.
        let names: Vec<_> = fs::read_dir(dir.join("images").join(JOB))
            .expect("the job folder exists")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["0.png"]);

        // Storing again replaces the file.
        storage
            .put_image(&key, b"png2", "image/png")
            .expect("local disk works");
        assert_eq!(
            fs::read(dir.join("images").join(&key)).expect("exists"),
            b"png2"
        );
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn records_are_one_json_line_each_and_appended() {
        let dir = temp_dir();
        let storage = LocalStorage::new(dir.clone(), "http://x".into());
        storage
            .record(&[row(0, u64::MAX), row(1, 7)])
            .expect("local disk works");
        storage.record(&[row(2, 8)]).expect("local disk works");
        let text = fs::read_to_string(dir.join("generations.jsonl")).expect("the file exists");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].contains("\"seed\":18446744073709551615"),
            "{}",
            lines[0]
        );
        let parsed: Vec<ImageRecord> = lines
            .iter()
            .map(|l| serde_json::from_str(l).expect("each line is a record"))
            .collect();
        assert_eq!(parsed[0].seed, Some(u64::MAX));
        assert_eq!(
            parsed.iter().map(|r| r.image_index).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn a_torn_last_line_does_not_swallow_the_next_record() {
        let dir = temp_dir();
        fs::write(dir.join("generations.jsonl"), b"{\"id\":\"cut sh").expect("writable");
        let storage = LocalStorage::new(dir.clone(), "http://x".into());
        let record = row(0, 1);
        storage
            .record(std::slice::from_ref(&record))
            .expect("local disk works");
        let text = fs::read_to_string(dir.join("generations.jsonl")).expect("exists");
        let last = text.lines().last().expect("two lines");
        let parsed: ImageRecord = serde_json::from_str(last).expect("a whole record");
        assert_eq!(parsed, record);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn image_path_accepts_only_job_index_keys() {
        let storage = LocalStorage::new(PathBuf::from("/data"), "http://x".into());
        for good in [
            format!("{JOB}/0.png"),
            format!("{JOB}/12.jpg"),
            format!("{JOB}/3.webp"),
            format!("{JOB}/4.gif"),
            format!("{JOB}/5.mp4"),
            format!("{JOB}/6.wav"),
            format!("{JOB}/7.glb"),
            format!("{JOB}/8.bin"),
        ] {
            assert!(storage.image_path(&good).is_some(), "{good}");
        }
        for bad in [
            "../etc/passwd".to_string(),
            format!("{JOB}/../0.png"),
            format!("../{JOB}/0.png"),
            format!("/{JOB}/0.png"),
            format!("{JOB}/0.png/x"),
            format!("{JOB}/..png"),
            format!("{JOB}/0.html"),
            format!("{JOB}/0.svg"),
            format!("{JOB}/0.PNG"),
            format!("{JOB}/0.png.tmp"),
            format!("{JOB}/.0.png.tmp-1"),
            format!("{JOB}/-1.png"),
            format!("{JOB}/0"),
            "not-a-uuid/0.png".to_string(),
            format!("{JOB}\\0.png"),
            String::new(),
        ] {
            assert_eq!(storage.image_path(&bad), None, "{bad}");
        }
    }

    #[test]
    fn put_image_refuses_keys_it_could_not_serve() {
        let dir = temp_dir();
        let storage = LocalStorage::new(dir.clone(), "http://x".into());
        let error = storage
            .put_image("../escape.png", b"x", "image/png")
            .expect_err("traversal is refused");
        assert!(!error.is_transient());
        assert!(!dir.join("escape.png").exists());
        assert!(
            !dir.parent()
                .expect("temp has a parent")
                .join("escape.png")
                .exists()
        );
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn check_reports_an_unwritable_data_dir() {
        let dir = temp_dir();
        let storage = LocalStorage::new(dir.clone(), "http://x".into());
        storage.check().expect("a temp dir is writable");
        assert_eq!(
            fs::read_dir(&dir).expect("exists").count(),
            0,
            "probe removed"
        );

        // A data dir that is a file cannot be created or written.
        let file = dir.join("a-file");
        fs::write(&file, b"x").expect("writable");
        let storage = LocalStorage::new(file, "http://x".into());
        let error = storage.check().expect_err("a file is not a folder");
        assert!(error.to_string().starts_with("checking that "), "{error}");
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type_for("a/0.png"), Some("image/png"));
        assert_eq!(content_type_for("a/0.jpg"), Some("image/jpeg"));
        assert_eq!(content_type_for("a/0.webp"), Some("image/webp"));
        assert_eq!(content_type_for("a/0.gif"), Some("image/gif"));
        assert_eq!(content_type_for("a/0.mp4"), Some("video/mp4"));
        assert_eq!(content_type_for("a/0.webm"), Some("video/webm"));
        assert_eq!(content_type_for("a/0.flac"), Some("audio/flac"));
        assert_eq!(content_type_for("a/0.html"), None);
    }

    #[test]
    fn gifs_videos_and_sounds_are_stored_from_files_and_served_back() {
        let dir = temp_dir();
        let storage = LocalStorage::new(dir.clone(), "http://127.0.0.1:8000".into());
        let staged = dir.join("staged");
        for (index, (extension, bytes)) in [
            ("gif", b"GIF89a\x01\0\x01\0".to_vec()),
            ("mp4", b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2".to_vec()),
            ("wav", b"RIFF\x24\0\0\0WAVEfmt ".to_vec()),
        ]
        .into_iter()
        .enumerate()
        {
            fs::write(&staged, &bytes).expect("writable");
            let key = format!("{JOB}/{index}.{extension}");
            let content_type = content_type_for(&key).expect("a known extension");
            let url = storage
                .put_file(&key, &staged, content_type)
                .expect("every kind is stored");
            assert_eq!(url, format!("http://127.0.0.1:8000/images/{key}"));
            let path = storage.image_path(&key).expect("and can be served");
            assert_eq!(fs::read(&path).expect("stored"), bytes);
            // The staged file stays for the caller, and later changes to it do not leak in.
            fs::remove_file(&staged).expect("the staged file is still there");
            assert_eq!(fs::read(&path).expect("still stored"), bytes);
        }
        let names: Vec<_> = fs::read_dir(dir.join("images").join(JOB))
            .expect("the job folder exists")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 3, "no temporary files left: {names:?}");

        let error = storage
            .put_file(&format!("{JOB}/0.html"), &dir, "text/html")
            .expect_err("not a storable key");
        assert!(!error.is_transient());
        let error = storage
            .put_file(&format!("{JOB}/9.mp4"), &dir.join("missing"), "video/mp4")
            .expect_err("no such file");
        assert_eq!(error.kind(), super::super::ErrorKind::Io);
        fs::remove_dir_all(dir).expect("cleanup");
    }

    /// A valid RGB PNG of the given size.
    fn tiny_png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        let mut writer = encoder.write_header().expect("in memory");
        let pixels = vec![0u8; (width * height * 3) as usize];
        writer.write_image_data(&pixels).expect("in memory");
        writer.finish().expect("in memory");
        out
    }

    #[test]
    fn reconcile_removes_leftovers_of_interrupted_saves() {
        let dir = temp_dir();
        let storage = LocalStorage::new(dir.clone(), "http://x".into());
        let job = dir.join("images").join(JOB);
        fs::create_dir_all(&job).expect("writable");
        let stray = job.join(format!(".0.png.tmp-{}", ids::new_uuid()));
        fs::write(&stray, b"half an image").expect("writable");
        let spool_temp = dir
            .join("spool")
            .join(format!(".tmp-{JOB}-{}", ids::new_uuid()));
        fs::create_dir_all(&spool_temp).expect("writable");
        fs::write(spool_temp.join("0.png"), b"x").expect("writable");
        let probe = dir.join(".ready-probe-1");
        fs::write(&probe, b"ok").expect("writable");
        let kept = dir.join("spool").join("keep-me");
        fs::write(&kept, b"x").expect("writable");

        let done = storage.reconcile().expect("reconciles");
        assert_eq!(done.removed.len(), 3, "{done:?}");
        assert!(!stray.exists() && !spool_temp.exists() && !probe.exists());
        assert!(kept.exists(), "only leftovers are removed");
        assert!(done.rows_written.is_empty(), "no image, no row");
        fs::remove_dir_all(dir).expect("cleanup");
    }

    #[test]
    fn reconcile_writes_the_missing_rows_and_only_those() {
        let dir = temp_dir();
        let storage = LocalStorage::new(dir.clone(), "http://127.0.0.1:8000".into());
        let png = tiny_png(3, 2);
        storage
            .put_image(&format!("{JOB}/0.png"), &png, "image/png")
            .expect("stored");
        storage.record(&[row(0, 7)]).expect("recorded");
        storage
            .put_image(&format!("{JOB}/1.png"), &png, "image/png")
            .expect("stored, then the process was killed before its row");

        let done = storage.reconcile().expect("reconciles");
        assert_eq!(done.rows_written, [format!("{JOB}/1.png")]);
        let text = fs::read_to_string(storage.jsonl_path()).expect("rows");
        let rows: Vec<ImageRecord> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("a row"))
            .collect();
        assert_eq!(rows.len(), 2);
        let rebuilt = &rows[1];
        assert_eq!(rebuilt.job_id, JOB);
        assert_eq!(rebuilt.image_index, 1);
        assert_eq!(rebuilt.storage_key, format!("{JOB}/1.png"));
        assert_eq!(
            rebuilt.url,
            format!("http://127.0.0.1:8000/images/{JOB}/1.png")
        );
        assert_eq!((rebuilt.width, rebuilt.height), (Some(3), Some(2)));
        assert_eq!(rebuilt.bytes, png.len() as u64);
        assert_eq!(rebuilt.params["reconciled"], true);
        assert!(ids::is_uuid(&rebuilt.id));

        // A JPEG whose frame header comes after 128 KiB of EXIF and ICC segments still gets
        // its size, as it did when the job stored it.
        let mut jpeg = vec![0xff, 0xd8];
        for _ in 0..2 {
            jpeg.extend_from_slice(&[0xff, 0xe1, 0xff, 0xff]);
            jpeg.extend(std::iter::repeat_n(0u8, 0xffff - 2));
        }
        jpeg.extend_from_slice(&[0xff, 0xc0, 0x00, 0x11, 8, 0x01, 0x2c, 0x01, 0x90]);
        jpeg.extend_from_slice(&[3, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1, 0xff, 0xd9]);
        let key = format!("{JOB}/2.jpg");
        storage
            .put_image(&key, &jpeg, "image/jpeg")
            .expect("stored, then the process was killed before its row");
        let done = storage.reconcile().expect("reconciles");
        assert_eq!(done.rows_written, [key]);
        let text = fs::read_to_string(storage.jsonl_path()).expect("rows");
        let last = text.lines().last().expect("a row");
        let rebuilt: ImageRecord = serde_json::from_str(last).expect("a row");
        assert_eq!((rebuilt.width, rebuilt.height), (Some(400), Some(300)));
        assert_eq!(rebuilt.content_type, "image/jpeg");

        let again = storage.reconcile().expect("reconciles");
        assert!(
            again.rows_written.is_empty(),
            "a second start-up adds nothing"
        );
        fs::remove_dir_all(dir).expect("cleanup");
    }
}
