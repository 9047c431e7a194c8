//! The asset library: UUID-named records over the content-addressed blobs of [`crate::blobs`],
//! as the Comfy API v2 has them. A client's upload becomes an asset; so does every output a job
//! commits.
//!
//! Each record is one JSON file, `DATA_DIR/assets/{id}.json`, written through
//! [`crate::durable`], and all of them are read back at start-up into an in-memory index. The
//! bytes of an asset are its blob (`DATA_DIR/blobs/`) when the gateway keeps them; an output
//! stored in Supabase has no local blob, only its storage key, and is downloaded from there.
//!
//! What a file is (its content type and its [`AssetType`]) comes from [`crate::media`], from its
//! bytes and its name, never from what a client declares.
//!
//! This module knows nothing of HTTP: `crate::server::v2::assets` answers the routes, and the job code
//! registers outputs through [`AssetStore::register_output`].

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::blobs::{BlobHash, BlobStore};
use crate::media::{self, Kind, MediaType};
use crate::{durable, ids, timestamp};

/// How many leading bytes of an upload [`identify`] looks at: enough for every signature
/// [`crate::media::sniff`] knows.
pub const SNIFF_LEN: usize = 4096;

/// How long the `url` of an asset is said to stay valid (`url_expires_at`). The gateway's own
/// content URL does not expire; clients that plan by the expiry simply read the asset again.
pub const URL_TTL_SECS: u64 = 3600;

/// The contract's normalised kind of an asset (`OutputType`): nothing is silently dropped, an
/// unrecognised file is a `file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetType {
    /// A still or animated picture.
    Image,
    /// A moving picture.
    Video,
    /// Sound.
    Audio,
    /// Text.
    Text,
    /// Anything else (3D models, model weights, unknown bytes).
    File,
    /// A ComfyUI latent (`.latent`).
    Latent,
}

impl AssetType {
    /// The name on the wire: `image`, `video`, `audio`, `text`, `file` or `latent`.
    pub fn as_str(self) -> &'static str {
        match self {
            AssetType::Image => "image",
            AssetType::Video => "video",
            AssetType::Audio => "audio",
            AssetType::Text => "text",
            AssetType::File => "file",
            AssetType::Latent => "latent",
        }
    }

    /// The type of a file [`crate::media`] identified as `media`, named `name`.
    pub fn of(media: MediaType, name: &str) -> AssetType {
        match media.kind {
            Kind::Image => AssetType::Image,
            Kind::Video => AssetType::Video,
            Kind::Audio => AssetType::Audio,
            Kind::Model => AssetType::File,
            Kind::Other => {
                let extension = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
                match extension.as_deref() {
                    Some("latent") => AssetType::Latent,
                    Some("txt") => AssetType::Text,
                    _ => AssetType::File,
                }
            }
        }
    }
}

/// What a file is, from its first bytes (at most [`SNIFF_LEN`] are looked at) and its name:
/// its media type (the one table, [`crate::media`]) and its asset type.
pub fn identify(head: &[u8], name: &str) -> (MediaType, AssetType) {
    let media = media::identify(head, name);
    (media, AssetType::of(media, name))
}

/// One asset: a record over a blob. Immutable once minted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Asset {
    /// Its id, a UUID.
    pub id: String,
    /// The blake3 hash of its bytes.
    pub hash: BlobHash,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Its MIME type, e.g. `image/png` (from [`crate::media`]).
    pub content_type: String,
    /// Its normalised kind.
    #[serde(rename = "type")]
    pub kind: AssetType,
    /// Its name: the client's `file_path` for an upload, ComfyUI's file name for an output.
    pub file_path: Option<String>,
    /// The client's category tags (uploads only).
    #[serde(default)]
    pub tags: Vec<String>,
    /// When it was minted, RFC 3339 in UTC.
    pub created_at: String,
    /// The job that produced it (outputs only).
    #[serde(default)]
    pub job_id: Option<String>,
    /// The output node that produced it (outputs only).
    #[serde(default)]
    pub node_id: Option<String>,
    /// Its place among the job's outputs, from 0 (outputs only).
    #[serde(default)]
    pub output_index: Option<u32>,
    /// Where the job's storage keeps it, e.g. `{job_id}/0.png` (outputs only). An output whose
    /// bytes are not in the blob store (Supabase storage) is downloaded from there.
    #[serde(default)]
    pub storage_key: Option<String>,
}

impl Asset {
    /// The path of its content route, `/api/v2/assets/{id}/content`.
    pub fn content_path(&self) -> String {
        format!("/api/v2/assets/{}/content", self.id)
    }

    /// The contract's `Asset` object. `base_url` is the gateway's public base URL
    /// (`PUBLIC_BASE_URL`); `created_new` is given on create answers only.
    pub fn to_json(&self, base_url: &str, created_new: Option<bool>) -> Value {
        let mut body = json!({
            "id": self.id,
            "hash": self.hash,
            "size_bytes": self.size_bytes,
            "content_type": self.content_type,
            "type": self.kind,
            "file_path": self.file_path,
            "created_at": self.created_at,
            "url": self.url(base_url),
            "url_expires_at": url_expires_at(),
            "expires_at": null,
        });
        if let Some(created_new) = created_new {
            body["created_new"] = json!(created_new);
        }
        if let Some(job_id) = &self.job_id {
            body["job_id"] = json!(job_id);
        }
        body
    }

    /// The contract's `Output` object of a job's output (`node_id`, `name`, `type`... with the
    /// asset's `id`, `hash` and `url`).
    pub fn to_output_json(&self, base_url: &str) -> Value {
        json!({
            "node_id": self.node_id.clone().unwrap_or_default(),
            "name": self.file_path.clone().unwrap_or_default(),
            "type": self.kind,
            "content_type": self.content_type,
            "size_bytes": self.size_bytes,
            "id": self.id,
            "hash": self.hash,
            "url": self.url(base_url),
            "url_expires_at": url_expires_at(),
            "job_id": self.job_id,
        })
    }

    /// Its content URL: the gateway's content route (which redirects to storage when the
    /// bytes are not kept locally).
    pub fn url(&self, base_url: &str) -> String {
        format!("{}{}", base_url.trim_end_matches('/'), self.content_path())
    }
}

/// `url_expires_at`: [`URL_TTL_SECS`] from now.
fn url_expires_at() -> String {
    timestamp::rfc3339_from_unix_millis(timestamp::unix_millis() + URL_TTL_SECS * 1000)
}

/// An asset to mint over a blob the store already holds (see [`AssetStore::mint`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NewAsset {
    /// The blob.
    pub hash: BlobHash,
    /// The client's name for it.
    pub file_path: Option<String>,
    /// The client's tags.
    pub tags: Vec<String>,
}

/// What [`AssetStore::mint`] did.
#[derive(Debug, Clone)]
pub struct Minted {
    /// The asset.
    pub asset: Arc<Asset>,
    /// `true` if an identical uploaded asset (same blob, name and tags) already existed and is
    /// returned as it is; `false` if a new record was written.
    pub existing: bool,
}

/// An output a job committed, to register as an asset (see [`AssetStore::register_output`]).
#[derive(Debug, Clone)]
pub struct NewOutput<'a> {
    /// The job.
    pub job_id: &'a str,
    /// The output node.
    pub node_id: &'a str,
    /// ComfyUI's file name.
    pub name: &'a str,
    /// Its place among the job's outputs.
    pub index: u32,
    /// What it is, as the job's output code identified it.
    pub media: MediaType,
    /// Its hash, computed once from the staged file.
    pub hash: BlobHash,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Where the job's storage keeps it.
    pub storage_key: &'a str,
}

/// Why the store could not do what it was asked.
#[derive(Debug)]
pub enum AssetError {
    /// The store does not hold the blob (it was never stored, or was deleted meanwhile).
    BlobNotFound(BlobHash),
    /// Reading or writing a record failed.
    Io(io::Error),
}

impl std::fmt::Display for AssetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AssetError::BlobNotFound(hash) => write!(f, "no blob {hash} is stored"),
            AssetError::Io(e) => write!(f, "writing the asset record: {e}"),
        }
    }
}

impl std::error::Error for AssetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AssetError::Io(e) => Some(e),
            AssetError::BlobNotFound(_) => None,
        }
    }
}

/// The records, on disk and indexed in memory, with the blob store under them. Shared by the
/// request threads and the job's output workers.
#[derive(Debug)]
pub struct AssetStore {
    dir: PathBuf,
    blobs: BlobStore,
    /// Every record. Held only to read or change the index and to write one small record
    /// file, never while a body streams in.
    records: Mutex<Index>,
}

/// The records by id, and the ids by blob and by job, so that no lookup walks every record.
#[derive(Debug, Default)]
struct Index {
    by_id: HashMap<String, Arc<Asset>>,
    by_hash: HashMap<BlobHash, Vec<Arc<Asset>>>,
    by_job: HashMap<String, Vec<Arc<Asset>>>,
}

impl Index {
    fn insert(&mut self, asset: Arc<Asset>) {
        self.by_hash
            .entry(asset.hash)
            .or_default()
            .push(Arc::clone(&asset));
        if let Some(job_id) = &asset.job_id {
            self.by_job
                .entry(job_id.clone())
                .or_default()
                .push(Arc::clone(&asset));
        }
        self.by_id.insert(asset.id.clone(), asset);
    }

    fn remove(&mut self, id: &str) -> Option<Arc<Asset>> {
        let asset = self.by_id.remove(id)?;
        if let Some(same) = self.by_hash.get_mut(&asset.hash) {
            same.retain(|a| a.id != id);
            if same.is_empty() {
                self.by_hash.remove(&asset.hash);
            }
        }
        if let Some(job_id) = &asset.job_id {
            if let Some(outputs) = self.by_job.get_mut(job_id) {
                outputs.retain(|a| a.id != id);
                if outputs.is_empty() {
                    self.by_job.remove(job_id);
                }
            }
        }
        Some(asset)
    }

    fn with_hash(&self, hash: &BlobHash) -> &[Arc<Asset>] {
        self.by_hash.get(hash).map_or(&[], Vec::as_slice)
    }

    fn of_job(&self, job_id: &str) -> &[Arc<Asset>] {
        self.by_job.get(job_id).map_or(&[], Vec::as_slice)
    }
}

impl AssetStore {
    /// Opens the records in `dir` (creating it), over `blobs`. Temporary files a crash left are
    /// removed; a record that cannot be read is logged and skipped (never deleted).
    pub fn open(dir: impl Into<PathBuf>, blobs: BlobStore) -> io::Result<AssetStore> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let mut records = Index::default();
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if durable::is_temporary(&name) {
                if let Err(e) = fs::remove_file(&path) {
                    log::warn!("removing {}: {e}", path.display());
                }
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            match read_record(&path) {
                Ok(asset) => records.insert(Arc::new(asset)),
                Err(e) => log::warn!("skipping the asset record {}: {e}", path.display()),
            }
        }
        Ok(AssetStore {
            dir,
            blobs,
            records: Mutex::new(records),
        })
    }

    /// The blob store under the records.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // A panic cannot leave the map half-changed (single insert/remove), so a poisoned lock
        // is still safe to use.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The asset `id`, if it exists.
    pub fn get(&self, id: &str) -> Option<Arc<Asset>> {
        self.lock().by_id.get(id).cloned()
    }

    /// How many assets there are.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.lock().by_id.is_empty()
    }

    /// Whether a new asset may be minted over `hash` (`HEAD by-hash`, `from-hash`): the blob
    /// store holds its bytes.
    pub fn can_mint(&self, hash: &BlobHash) -> bool {
        self.blobs.contains(hash)
    }

    /// Where the bytes of `asset` are on local disk: its blob, when the store holds it.
    pub fn local_path(&self, asset: &Asset) -> Option<PathBuf> {
        self.blobs
            .contains(&asset.hash)
            .then(|| self.blobs.path(&asset.hash))
    }

    /// Mints an asset over the blob `new.hash`, or returns an identical uploaded one (same
    /// blob, name and tags, no job) as it is. Its type comes from the blob's first bytes and
    /// its name.
    pub fn mint(&self, new: NewAsset) -> Result<Minted, AssetError> {
        let head = self.head_of(&new.hash)?;
        let name = new.file_path.as_deref().unwrap_or("");
        let (media, kind) = identify(&head, name);
        let mut records = self.lock();
        // Checked under the lock: a delete removes unreferenced blobs under it too.
        let Some(size_bytes) = self.blobs.size(&new.hash) else {
            return Err(AssetError::BlobNotFound(new.hash));
        };
        let same = records
            .with_hash(&new.hash)
            .iter()
            .find(|a| a.job_id.is_none() && a.file_path == new.file_path && a.tags == new.tags);
        if let Some(asset) = same {
            return Ok(Minted {
                asset: Arc::clone(asset),
                existing: true,
            });
        }
        let asset = Asset {
            id: ids::new_uuid(),
            hash: new.hash,
            size_bytes,
            content_type: media.content_type.to_string(),
            kind,
            file_path: new.file_path,
            tags: new.tags,
            created_at: timestamp::now_rfc3339(),
            job_id: None,
            node_id: None,
            output_index: None,
            storage_key: None,
        };
        self.write(&asset).map_err(AssetError::Io)?;
        let asset = Arc::new(asset);
        records.insert(Arc::clone(&asset));
        Ok(Minted {
            asset,
            existing: false,
        })
    }

    /// Registers a job's committed output as an asset. Registering the same output (job and
    /// index) again returns the asset it already has, so a retried store does not mint twice.
    pub fn register_output(&self, output: NewOutput<'_>) -> io::Result<Arc<Asset>> {
        let mut records = self.lock();
        let known = records
            .of_job(output.job_id)
            .iter()
            .find(|a| a.output_index == Some(output.index));
        if let Some(asset) = known {
            return Ok(Arc::clone(asset));
        }
        let asset = Asset {
            id: ids::new_uuid(),
            hash: output.hash,
            size_bytes: output.size_bytes,
            content_type: output.media.content_type.to_string(),
            kind: AssetType::of(output.media, output.name),
            file_path: Some(output.name.to_string()),
            tags: Vec::new(),
            created_at: timestamp::now_rfc3339(),
            job_id: Some(output.job_id.to_string()),
            node_id: Some(output.node_id.to_string()),
            output_index: Some(output.index),
            storage_key: Some(output.storage_key.to_string()),
        };
        self.write(&asset)?;
        let asset = Arc::new(asset);
        records.insert(Arc::clone(&asset));
        Ok(asset)
    }

    /// The outputs job `job_id` committed so far, in output order (durable: read back after a
    /// restart).
    pub fn for_job(&self, job_id: &str) -> Vec<Arc<Asset>> {
        let mut outputs = self.lock().of_job(job_id).to_vec();
        outputs.sort_by_key(|a| a.output_index);
        outputs
    }

    /// Deletes the asset `id`: its record, and its blob when no other asset refers to it and
    /// `in_use` (asked about the blob, e.g. whether a waiting job takes it as an input) says
    /// nothing else needs it. Returns the deleted asset, or `None` if there was none.
    pub fn delete(
        &self,
        id: &str,
        in_use: impl FnOnce(&BlobHash) -> bool,
    ) -> io::Result<Option<Arc<Asset>>> {
        let mut records = self.lock();
        let Some(asset) = records.by_id.get(id).cloned() else {
            return Ok(None);
        };
        let path = self.record_path(&asset.id);
        match fs::remove_file(&path) {
            Ok(()) => durable::sync_parent(&path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        records.remove(id);
        let shared = !records.with_hash(&asset.hash).is_empty();
        if !shared && !in_use(&asset.hash) {
            if let Err(e) = self.blobs.remove(&asset.hash) {
                log::warn!("asset {id} deleted, but its blob {} stays: {e}", asset.hash);
            }
        }
        Ok(Some(asset))
    }

    /// Removes the blob `hash` if no asset refers to it (bytes an upload stored and then had to
    /// refuse); returns whether it was removed.
    pub fn remove_unreferenced_blob(&self, hash: &BlobHash) -> io::Result<bool> {
        let records = self.lock();
        if !records.with_hash(hash).is_empty() {
            return Ok(false);
        }
        self.blobs.remove(hash)?;
        Ok(true)
    }

    /// The first bytes of the blob `hash`.
    fn head_of(&self, hash: &BlobHash) -> Result<Vec<u8>, AssetError> {
        use std::io::Read;
        let file = self.blobs.open_blob(hash).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                AssetError::BlobNotFound(*hash)
            } else {
                AssetError::Io(e)
            }
        })?;
        let mut head = Vec::with_capacity(SNIFF_LEN);
        file.take(SNIFF_LEN as u64)
            .read_to_end(&mut head)
            .map_err(AssetError::Io)?;
        Ok(head)
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn write(&self, asset: &Asset) -> io::Result<()> {
        let text = serde_json::to_vec_pretty(asset).map_err(io::Error::other)?;
        durable::write_bytes(&self.record_path(&asset.id), &text)
    }
}

fn read_record(path: &Path) -> io::Result<Asset> {
    let text = fs::read(path)?;
    let asset: Asset =
        serde_json::from_slice(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if !ids::is_uuid(&asset.id) || path.file_stem() != Some(std::ffi::OsStr::new(&asset.id)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the record's id is not its file name",
        ));
    }
    Ok(asset)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_HEAD: &[u8] = &[
        0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n', 0, 0, 0, 13,
    ];

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("assets-test-{}", ids::new_uuid()))
    }

    fn open(dir: &Path) -> AssetStore {
        let blobs = BlobStore::open(dir.join("blobs")).expect("blobs");
        AssetStore::open(dir.join("assets"), blobs).expect("assets")
    }

    fn put(store: &AssetStore, bytes: &[u8]) -> BlobHash {
        store
            .blobs()
            .put(&mut &bytes[..], 1 << 20, None)
            .expect("put")
            .hash
    }

    fn upload(name: &str, hash: BlobHash) -> NewAsset {
        NewAsset {
            hash,
            file_path: Some(name.to_string()),
            tags: vec!["input".to_string()],
        }
    }

    #[test]
    fn types_come_from_the_media_table_and_the_name() {
        assert_eq!(identify(PNG_HEAD, "x.bin").1, AssetType::Image);
        assert_eq!(identify(PNG_HEAD, "x.bin").0.content_type, "image/png");
        assert_eq!(identify(b"fLaC....", "").1, AssetType::Audio);
        assert_eq!(identify(b"", "clip.mp4").1, AssetType::Video);
        assert_eq!(identify(b"", "a.latent").1, AssetType::Latent);
        assert_eq!(identify(b"hello", "notes.txt").1, AssetType::Text);
        assert_eq!(identify(b"glTF", "m.glb").1, AssetType::File);
        let (media, kind) = identify(b"<html>", "page.html");
        assert_eq!(
            (media.content_type, kind),
            ("application/octet-stream", AssetType::File)
        );
    }

    #[test]
    fn minted_assets_survive_a_reopen_and_identical_uploads_are_not_minted_twice() {
        let dir = scratch();
        let store = open(&dir);
        let hash = put(&store, PNG_HEAD);
        let first = store.mint(upload("photo.png", hash)).expect("mint");
        assert!(!first.existing);
        assert!(ids::is_uuid(&first.asset.id));
        assert_eq!(first.asset.size_bytes, PNG_HEAD.len() as u64);
        assert_eq!(first.asset.content_type, "image/png");
        assert_eq!(first.asset.kind, AssetType::Image);
        let again = store.mint(upload("photo.png", hash)).expect("mint again");
        assert!(again.existing);
        assert_eq!(again.asset.id, first.asset.id);
        let renamed = store.mint(upload("other.png", hash)).expect("other name");
        assert!(!renamed.existing);
        assert_ne!(renamed.asset.id, first.asset.id);

        drop(store);
        let reopened = open(&dir);
        assert_eq!(reopened.len(), 2);
        assert_eq!(
            reopened.get(&first.asset.id).as_deref(),
            Some(&*first.asset)
        );
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn minting_over_an_unknown_blob_is_refused() {
        let dir = scratch();
        let store = open(&dir);
        let hash = BlobHash::of(b"never stored");
        assert!(!store.can_mint(&hash));
        match store.mint(upload("x.png", hash)) {
            Err(AssetError::BlobNotFound(missing)) => assert_eq!(missing, hash),
            other => panic!("expected BlobNotFound, got {other:?}"),
        }
        assert!(store.is_empty());
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn deleting_keeps_a_blob_another_asset_uses_and_removes_the_last_reference() {
        let dir = scratch();
        let store = open(&dir);
        let hash = put(&store, b"shared bytes");
        let one = store.mint(upload("a.bin", hash)).expect("a").asset;
        let two = store.mint(upload("b.bin", hash)).expect("b").asset;
        assert_eq!(
            store
                .delete(&one.id, |_| false)
                .expect("delete")
                .map(|a| a.id.clone()),
            Some(one.id.clone())
        );
        assert!(store.get(&one.id).is_none());
        assert!(store.can_mint(&hash), "b.bin still uses the blob");
        assert!(store.delete(&one.id, |_| false).expect("again").is_none());
        // Bytes something else still needs (a waiting job's input) stay.
        let three = store.mint(upload("c.bin", hash)).expect("c").asset;
        store.delete(&two.id, |_| false).expect("delete b");
        store.delete(&three.id, |h| *h == hash).expect("delete c");
        assert!(store.can_mint(&hash), "in use elsewhere");
        let four = store.mint(upload("d.bin", hash)).expect("d").asset;
        store.delete(&four.id, |_| false).expect("delete d");
        assert!(!store.can_mint(&hash));
        drop(store);
        assert!(open(&dir).is_empty());
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn outputs_are_listed_per_job_in_order_and_registered_once() {
        let dir = scratch();
        let store = open(&dir);
        let output = |index: u32, name: &'static str| NewOutput {
            job_id: "job-1",
            node_id: "9",
            name,
            index,
            media: media::PNG,
            hash: BlobHash::of(name.as_bytes()),
            size_bytes: 10,
            storage_key: "job-1/0.png",
        };
        let second = store.register_output(output(1, "b.png")).expect("second");
        let first = store.register_output(output(0, "a.png")).expect("first");
        let again = store.register_output(output(0, "a.png")).expect("again");
        assert_eq!(again.id, first.id);
        let listed: Vec<String> = store
            .for_job("job-1")
            .iter()
            .map(|a| a.id.clone())
            .collect();
        assert_eq!(listed, [first.id.clone(), second.id.clone()]);
        assert!(store.for_job("job-2").is_empty());
        let view = first.to_output_json("http://127.0.0.1:1/");
        assert_eq!(view["node_id"], "9");
        assert_eq!(view["name"], "a.png");
        assert_eq!(view["type"], "image");
        assert_eq!(view["job_id"], "job-1");
        assert_eq!(view["hash"], BlobHash::of(b"a.png").to_string());
        assert_eq!(
            view["url"],
            format!("http://127.0.0.1:1/api/v2/assets/{}/content", first.id)
        );
        drop(store);
        assert_eq!(open(&dir).for_job("job-1").len(), 2);
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_damaged_record_is_skipped_not_fatal() {
        let dir = scratch();
        let store = open(&dir);
        let hash = put(&store, b"kept");
        let kept = store.mint(upload("k.bin", hash)).expect("mint").asset;
        drop(store);
        fs::write(
            dir.join("assets").join(format!("{}.json", ids::new_uuid())),
            b"{",
        )
        .expect("damaged");
        let leftover = durable::temporary_beside(&dir.join("assets/x.json")).expect("temp");
        fs::write(&leftover, b"half").expect("leftover");
        let reopened = open(&dir);
        assert_eq!(reopened.len(), 1);
        assert!(reopened.get(&kept.id).is_some());
        assert!(!leftover.exists());
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn the_asset_view_has_the_contract_fields() {
        let dir = scratch();
        let store = open(&dir);
        let hash = put(&store, PNG_HEAD);
        let asset = store.mint(upload("photo.png", hash)).expect("mint").asset;
        let view = asset.to_json("http://127.0.0.1:9", Some(true));
        for field in [
            "id",
            "hash",
            "size_bytes",
            "content_type",
            "created_at",
            "url",
            "url_expires_at",
        ] {
            assert!(!view[field].is_null(), "{field} in {view}");
        }
        assert_eq!(view["created_new"], true);
        assert_eq!(view["file_path"], "photo.png");
        assert!(view.get("job_id").is_none());
        assert!(asset.to_json("http://x", None).get("created_new").is_none());
        fs::remove_dir_all(dir).ok();
    }
}
