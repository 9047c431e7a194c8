//! The end of a successful run: collect every file the prompt's output nodes wrote (images,
//! videos, sounds, models: any entry with a `filename` under any key of `/history`), stream each
//! from ComfyUI into a staging folder, check and strip metadata where the format allows, store
//! them, record their metadata, and build the `complete` event. If storage fails for good, the
//! files are kept in the spool so that nothing finished is lost.
//!
//! A file never sits whole in memory on its way through, except PNG and WebP pictures, which are
//! read to check their structure and strip ComfyUI's metadata (they are a few MB). FLAC, MP3,
//! MP4 (MOV, M4A), Ogg (Opus, Vorbis) and WebM/Matroska files are stripped in place on disk
//! ([`crate::strip`]); every other file is stored byte for byte as ComfyUI wrote it.

use serde_json::{Value, json};
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::{Job, JobContext};
use crate::api::{ApiError, ErrorCode};
use crate::assets::{Asset, NewOutput};
use crate::blobs::{self, BlobHash};
use crate::comfyui::{ComfyClient, HistoryEntry, ImageRef, MAX_IMAGE_BYTES, OutputFile};
use crate::convert;
use crate::ids::{self, PromptId};
use crate::image::{self, PngMetadata};
use crate::media::{self, MediaType};
use crate::storage::spool::{PendingFile, ReceiveError, Staging};
use crate::storage::{ImageRecord, StorageError};
use crate::strip::{self, StripError};
use crate::timestamp;
use crate::workflow::OutputTypes;

/// Milestones for `timings_ms`.
pub(super) struct Timings {
    pub created: Instant,
    pub started: Option<Instant>,
    pub executed: Option<Instant>,
}

/// Everything `collect_and_store` needs to know about the job.
pub(super) struct StoreRequest<'a> {
    /// The job code's context (named `app` for the history of this module's code).
    pub app: &'a JobContext,
    pub job: &'a Job,
    pub client: &'a ComfyClient,
    pub prompt_id: &'a PromptId,
    pub workflow: &'a str,
    pub params: Value,
    pub seed: Option<u64>,
    /// The history entry, when it was already read (after a lost websocket).
    pub history: Option<HistoryEntry>,
    pub timings: Timings,
    /// Which of ComfyUI's file types to keep: the template's `outputs` (the default for raw
    /// graphs).
    pub outputs: OutputTypes,
    /// What the `complete` data reports under `warnings`, e.g. the output nodes a partial graph
    /// dropped ([`crate::comfyui::dropped_outputs`] of the `/prompt` answer's `node_errors`).
    pub warnings: Vec<Value>,
}

/// One file from ComfyUI, staged on local disk, checked, and ready to store.
struct Collected {
    node: String,
    source: ImageRef,
    key: String,
    media: MediaType,
    /// The staged file (in the job's staging folder).
    path: PathBuf,
    bytes: u64,
    width: Option<u32>,
    height: Option<u32>,
    /// The blake3 hash of the staged file as stored (`None` if it could not be read).
    hash: Option<BlobHash>,
    /// The size of the file that was hashed (the asset's `size_bytes`).
    hashed_bytes: Option<u64>,
}

/// Fetches, processes and stores the prompt's output files; returns the `complete` data.
pub(super) fn collect_and_store(req: StoreRequest<'_>) -> Result<Value, ApiError> {
    let entry = match req.history {
        Some(ref entry) => entry.clone(),
        None => wait_for_history(&req)?,
    };
    if let Some(failure) = entry.status.as_ref().and_then(|s| s.error.as_ref()) {
        return Err(ApiError::new(
            ErrorCode::ExecutionFailed,
            format!("ComfyUI recorded a failure: {}", failure.exception_message),
        ));
    }
    let files = select_files(&entry, req.outputs);
    let staging = req
        .app
        .spool
        .staging(&req.job.id().to_string())
        .map_err(|e| {
            let sources: Vec<&ImageRef> = files.iter().map(|f| &f.file).collect();
            not_staged(&sources, &e.to_string())
        })?;
    let collected = fetch_all(&req, &staging, &files)?;
    let storing_started = Instant::now();
    let images = store_all(&req, &collected)?;
    drop(staging);
    let done = Instant::now();
    let t = &req.timings;
    let started = t.started.unwrap_or(storing_started);
    let executed = t.executed.unwrap_or(storing_started);
    Ok(json!({
        "job_id": req.job.id(),
        "prompt_id": req.prompt_id,
        "workflow": req.workflow,
        "images": images,
        "warnings": req.warnings,
        "params": req.params,
        "timings_ms": {
            "queued": millis(started.saturating_duration_since(t.created)),
            "running": millis(executed.saturating_duration_since(started)),
            "storing": millis(done.saturating_duration_since(executed)),
            "total": millis(done.saturating_duration_since(t.created)),
        },
    }))
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// ComfyUI announces success on the websocket a moment before it writes the history entry, so
/// poll for it briefly.
fn wait_for_history(req: &StoreRequest<'_>) -> Result<HistoryEntry, ApiError> {
    let give_up = Instant::now() + req.app.run.history_wait;
    // Short first pauses: ComfyUI writes history right after it announces success.
    let mut pause = Duration::from_millis(2);
    loop {
        let last_error = match req.client.get_history(req.prompt_id) {
            Ok(Some(entry)) => return Ok(entry),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        };
        if Instant::now() >= give_up {
            let why = last_error.unwrap_or_else(|| "it has no entry for the prompt".into());
            return Err(ApiError::new(
                ErrorCode::ComfyuiLost,
                format!(
                    "ComfyUI reported prompt {} finished, but its /history could not be read: {why}",
                    req.prompt_id
                ),
            ));
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// The files a client wants, in node order: every file under any output key, of the ComfyUI
/// types the template chose.
fn select_files(entry: &HistoryEntry, types: OutputTypes) -> Vec<&OutputFile> {
    let saved_any = entry.files().any(|f| !f.file.is_temp());
    entry
        .files()
        .filter(|f| types.wants(&f.file.kind, saved_any))
        .collect()
}

/// The error when the staging folder cannot be written: nothing was fetched, and ComfyUI still
/// has every file.
fn not_staged(comfyui_files: &[&ImageRef], why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::StorageFailed,
        format!(
            "ComfyUI's outputs could not be received on local disk ({why}); ComfyUI still has \
             them in its output folder"
        ),
    )
    .with_details(json!({ "cause": why, "comfyui_files": comfyui_files }))
}

fn fetch_all(
    req: &StoreRequest<'_>,
    staging: &Staging,
    files: &[&OutputFile],
) -> Result<Vec<Collected>, ApiError> {
    files
        .iter()
        .enumerate()
        .map(|(index, file)| fetch_one(req, staging, index, file))
        .collect()
}

/// Streams one file from ComfyUI into the staging folder, tells what it is, and checks and
/// strips it where its format allows.
fn fetch_one(
    req: &StoreRequest<'_>,
    staging: &Staging,
    index: usize,
    file: &OutputFile,
) -> Result<Collected, ApiError> {
    let source = &file.file;
    let lost = |why: String| {
        ApiError::new(
            ErrorCode::ComfyuiLost,
            format!(
                "ComfyUI finished, but fetching its file {}: {why}",
                source.filename
            ),
        )
        .with_details(json!({ "comfyui_file": source }))
    };
    let local = |why: String| not_staged(&[source], &why);
    let mut download = req
        .client
        .open_file(source)
        .map_err(|e| lost(e.to_string()))?;
    let received = staging
        .receive(&format!("{index}.part"), &mut download, media::HEAD_LEN)
        .map_err(|e| match e {
            ReceiveError::Read(e) => lost(e.to_string()),
            ReceiveError::Write(e) => local(e.to_string()),
        })?;
    let media = media::identify(&received.head, &source.filename);
    let Checked { media, bytes, size } = if matches!(media, media::PNG | media::WEBP) {
        check_and_strip(req, source, media, received.path.clone(), received.bytes)?
    } else {
        if req.app.run.png_metadata == PngMetadata::Strip {
            strip::strip_in_place(&received.path, media).map_err(|e| match e {
                StripError::Io(e) => local(e.to_string()),
                malformed => ApiError::internal(format!(
                    "ComfyUI's file {} is unusable: {malformed}; ComfyUI still has it in its \
                     output folder",
                    source.filename
                ))
                .with_details(json!({ "comfyui_file": source })),
            })?;
        }
        Checked {
            media,
            bytes: received.bytes,
            size: media::file_dimensions(&received.path, media, &received.head),
        }
    };
    // Last, once the staged file is final: its hash and size, for the asset it becomes.
    let hashed = hash_staged(req, &received.path);
    Ok(Collected {
        node: file.node_id.clone(),
        source: source.clone(),
        key: format!("{}/{index}.{}", req.job.id(), media.extension),
        media,
        path: received.path,
        bytes,
        width: size.map(|(w, _)| w),
        height: size.map(|(_, h)| h),
        hash: hashed.map(|(hash, _)| hash),
        hashed_bytes: hashed.map(|(_, size)| size),
    })
}

/// The blake3 hash and size of a staged output, computed once. With local storage the file
/// also joins the blob store (a hard link), so that it can be minted from and used as a job
/// input; with remote storage only the hash is kept. A failure costs the output its asset,
/// never the job.
fn hash_staged(req: &StoreRequest<'_>, path: &std::path::Path) -> Option<(BlobHash, u64)> {
    let hashed = if req.app.local.is_some() {
        req.app
            .assets
            .blobs()
            .put_file(path)
            .map(|outcome| (outcome.hash, outcome.size))
            .map_err(|e| e.to_string())
    } else {
        blobs::hash_file(path).map_err(|e| e.to_string())
    };
    hashed
        .inspect_err(|e| {
            log::warn!(
                "job {}: hashing the output {}: {e}; it gets no asset",
                req.job.id(),
                path.display()
            );
        })
        .ok()
}

/// A staged file as it will be stored: its type, its length, and its size in pixels if known.
struct Checked {
    media: MediaType,
    bytes: u64,
    size: Option<(u32, u32)>,
}

/// Reads a staged PNG or WebP, checks it, strips ComfyUI's metadata per `OUTPUT_METADATA`,
/// converts it to the request's `output_format`, and rewrites the staged file if any of that
/// changed it. Returns its type, its size in bytes and in pixels.
fn check_and_strip(
    req: &StoreRequest<'_>,
    source: &ImageRef,
    media: MediaType,
    path: PathBuf,
    len: u64,
) -> Result<Checked, ApiError> {
    let unusable = |why: String| {
        ApiError::internal(format!(
            "ComfyUI's image {} is unusable: {why}",
            source.filename
        ))
    };
    if len > MAX_IMAGE_BYTES {
        return Err(unusable(format!(
            "{len} bytes is more than the {MAX_IMAGE_BYTES} a PNG or WebP may have to be checked"
        )));
    }
    let original = fs::read(&path).map_err(|e| not_staged(&[source], &e.to_string()))?;
    let processed = image::process(original, &source.filename, req.app.run.png_metadata)
        .map_err(|e| unusable(e.to_string()))?;
    let options = req.job.options();
    let converted = convert::convert(
        &processed.bytes,
        processed.content_type,
        options.output_format,
        options.quality,
    )
    .map_err(|e| unusable(format!("converting it to {}: {e}", options.output_format)))?;
    let (media, bytes, width, height) = match converted {
        Some(converted) => {
            let media = media::by_content_type(converted.content_type).unwrap_or(media::UNKNOWN);
            (media, converted.bytes, converted.width, converted.height)
        }
        None => (media, processed.bytes, processed.width, processed.height),
    };
    let stored_len = bytes.len() as u64;
    if stored_len != len || media != media::identify(&bytes, &source.filename) {
        crate::durable::write_bytes(&path, &bytes)
            .map_err(|e| not_staged(&[source], &e.to_string()))?;
    }
    Ok(Checked {
        media,
        bytes: stored_len,
        size: (width > 0 && height > 0).then_some((width, height)),
    })
}

/// Stores every file and records the rows; on failure, spools them and says where.
///
/// For remote storage the files are spooled *before* the upload (write-ahead; a hard link, so
/// nearly free) and the spool entry is removed once storage has them, so that even a gateway
/// killed mid-upload loses nothing: the next start-up finishes the upload.
fn store_all(req: &StoreRequest<'_>, collected: &[Collected]) -> Result<Vec<Value>, ApiError> {
    let mut rows = rows_for(req, collected);
    let job_id = req.job.id().to_string();
    let write_ahead = req.app.local.is_none();
    if write_ahead {
        if let Err(e) = req
            .app
            .spool
            .save(&job_id, &pending_files(collected), &rows)
        {
            log::warn!("job {job_id}: could not spool files before uploading: {e}");
        }
    }
    let stored = upload_and_record(req, collected, &mut rows);
    if stored.is_ok() && write_ahead {
        if let Err(e) = req.app.spool.discard(&job_id) {
            log::warn!("job {job_id}: stored, but its spool entry stays: {e}");
        }
    }
    match stored {
        Ok(assets) => Ok(collected
            .iter()
            .zip(&rows)
            .zip(&assets)
            .map(|((c, row), asset)| {
                json!({
                    "url": row.url,
                    "key": c.key,
                    "kind": c.media.kind.as_str(),
                    "content_type": c.media.content_type,
                    "bytes": c.bytes,
                    "width": c.width,
                    "height": c.height,
                    "node": c.node,
                    "asset_id": asset.as_ref().map(|a| &a.id),
                    "hash": c.hash,
                })
            })
            .collect()),
        Err(error) => {
            if req.app.storage.kind() == "supabase" {
                req.app.metrics.supabase_error();
            }
            Err(spool(req, collected, &rows, &error))
        }
    }
}

fn pending_files(collected: &[Collected]) -> Vec<PendingFile> {
    collected
        .iter()
        .map(|c| PendingFile {
            key: c.key.clone(),
            path: c.path.clone(),
            content_type: c.media.content_type.to_string(),
        })
        .collect()
}

fn rows_for(req: &StoreRequest<'_>, collected: &[Collected]) -> Vec<ImageRecord> {
    let created_at = timestamp::now_rfc3339();
    collected
        .iter()
        .enumerate()
        .map(|(index, c)| ImageRecord {
            id: ids::new_uuid(),
            job_id: req.job.id().to_string(),
            prompt_id: Some(req.prompt_id.to_string()),
            workflow: req.workflow.to_string(),
            image_index: index as u32,
            storage_key: c.key.clone(),
            url: String::new(),
            width: c.width,
            height: c.height,
            bytes: c.bytes,
            kind: c.media.kind.as_str().to_string(),
            content_type: c.media.content_type.to_string(),
            seed: req.seed,
            params: req.params.clone(),
            created_at: created_at.clone(),
        })
        .collect()
}

/// Stores each file (each becomes an asset, and the job is told, the moment storage has it),
/// then records the rows. Returns each output's asset (`None` where it could not be made).
fn upload_and_record(
    req: &StoreRequest<'_>,
    collected: &[Collected],
    rows: &mut [ImageRecord],
) -> Result<Vec<Option<Arc<Asset>>>, StorageError> {
    let mut assets = Vec::with_capacity(collected.len());
    for (index, (c, row)) in collected.iter().zip(rows.iter_mut()).enumerate() {
        row.url = req
            .app
            .storage
            .put_file(&c.key, &c.path, c.media.content_type)?;
        let asset = register_output(req, index, c);
        if let Some(asset) = &asset {
            req.job.output_committed(Arc::clone(asset));
        }
        assets.push(asset);
    }
    req.app.storage.record(rows)?;
    Ok(assets)
}

/// Registers a stored output as an asset; a failure is logged and costs only the asset.
fn register_output(req: &StoreRequest<'_>, index: usize, c: &Collected) -> Option<Arc<Asset>> {
    let hash = c.hash?;
    let job_id = req.job.id().to_string();
    let registered = req.app.assets.register_output(NewOutput {
        job_id: &job_id,
        node_id: &c.node,
        name: &c.source.filename,
        index: u32::try_from(index).unwrap_or(u32::MAX),
        media: c.media,
        hash,
        size_bytes: c.hashed_bytes.unwrap_or(c.bytes),
        storage_key: &c.key,
    });
    registered
        .inspect_err(|e| log::warn!("job {job_id}: output {} gets no asset: {e}", c.key))
        .ok()
}

/// Keeps the files on disk for a later upload and builds the `storage_failed` error.
fn spool(
    req: &StoreRequest<'_>,
    collected: &[Collected],
    rows: &[ImageRecord],
    cause: &StorageError,
) -> ApiError {
    let comfyui_files: Vec<&ImageRef> = collected.iter().map(|c| &c.source).collect();
    let job_id = req.job.id().to_string();
    match req.app.spool.save(&job_id, &pending_files(collected), rows) {
        Ok(dir) if cause.is_refusal() => {
            let why = cause.hint().unwrap_or("storage refuses it");
            log::warn!(
                "job {job_id}: storage refused the outputs ({cause}); files kept in {}, not \
                 retried",
                dir.display()
            );
            if let Err(e) = req.app.spool.mark_refused(&job_id, &cause.to_string()) {
                log::warn!("job {job_id}: cannot mark its spooled files refused: {e}");
            }
            ApiError::new(
                ErrorCode::StorageFailed,
                format!(
                    "storage refused the outputs ({cause}): {why}. Retrying cannot fix this, so \
                     they will not be uploaded automatically; they are kept in {}. Once the \
                     cause is fixed, restart the gateway: it tries every spooled job again at \
                     start-up",
                    dir.display()
                ),
            )
            .with_details(json!({
                "spool_dir": dir,
                "keys": collected.iter().map(|c| &c.key).collect::<Vec<_>>(),
                "cause": cause.to_string(),
                "will_retry": false,
                "comfyui_files": comfyui_files,
            }))
        }
        Ok(dir) => {
            log::warn!(
                "job {job_id}: storage failed ({cause}); files spooled in {}",
                dir.display()
            );
            ApiError::new(
                ErrorCode::StorageFailed,
                format!(
                    "the outputs could not be stored ({cause}); they are kept in {} and will be \
                     uploaded automatically when storage works again",
                    dir.display()
                ),
            )
            .with_details(json!({
                "spool_dir": dir,
                "keys": collected.iter().map(|c| &c.key).collect::<Vec<_>>(),
                "cause": cause.to_string(),
                "will_retry": true,
                "comfyui_files": comfyui_files,
            }))
        }
        Err(spool_error) => {
            log::error!(
                "job {job_id}: storage failed ({cause}) and spooling failed: {spool_error}"
            );
            ApiError::new(
                ErrorCode::StorageFailed,
                format!(
                    "the outputs could not be stored ({cause}) nor kept on local disk \
                     ({spool_error}); ComfyUI still has them in its output folder"
                ),
            )
            .with_details(json!({ "cause": cause.to_string(), "comfyui_files": comfyui_files }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RequestOptions;
    use crate::app::App;
    use crate::job::{GraphSource, Plan};
    use std::sync::Arc;
    use std::thread::JoinHandle;

    /// A stand-in for ComfyUI's `/view`: serves the named files, 404 for anything else.
    struct FakeView {
        server: Arc<tiny_http::Server>,
        url: String,
        thread: Option<JoinHandle<()>>,
    }

    impl FakeView {
        fn start(files: Vec<(&'static str, Vec<u8>)>) -> FakeView {
            let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind"));
            let port = server.server_addr().to_ip().expect("tcp").port();
            let serving = Arc::clone(&server);
            let thread = thread::spawn(move || {
                while let Ok(request) = serving.recv() {
                    let file = files
                        .iter()
                        .find(|(name, _)| request.url().contains(&format!("filename={name}&")));
                    let response = match file {
                        Some((_, bytes)) => tiny_http::Response::from_data(bytes.clone()),
                        None => tiny_http::Response::from_data(b"not found".to_vec())
                            .with_status_code(404),
                    };
                    let _ = request.respond(response);
                }
            });
            FakeView {
                server,
                url: format!("http://127.0.0.1:{port}"),
                thread: Some(thread),
            }
        }
    }

    impl Drop for FakeView {
        fn drop(&mut self) {
            self.server.unblock();
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    /// An app storing on local disk in a fresh folder, with ComfyUI at `comfyui`.
    fn local_app(comfyui: &str) -> (App, PathBuf) {
        local_app_with(comfyui, "strip")
    }

    /// [`local_app`] with `OUTPUT_METADATA` set to `metadata`.
    fn local_app_with(comfyui: &str, metadata: &str) -> (App, PathBuf) {
        let data = std::env::temp_dir().join(format!("gateway-output-{}", ids::new_uuid()));
        let vars = [
            ("OUTPUT_METADATA", metadata.to_string()),
            ("COMFYUI_URL", comfyui.to_string()),
            (
                "WORKFLOWS_DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/workflows").into(),
            ),
            ("DATA_DIR", data.display().to_string()),
            ("PUBLIC_BASE_URL", "http://127.0.0.1:8000".into()),
        ];
        let config = crate::config::Config::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        })
        .expect("a valid config");
        (App::new(config).expect("the app builds"), data)
    }

    /// An MP4 as ffmpeg writes it: `ftyp`, `mdat`, then `moov` with an 832x480 video track.
    fn mp4() -> Vec<u8> {
        fn bmff(kind: &[u8], contents: &[u8]) -> Vec<u8> {
            let mut out = ((contents.len() + 8) as u32).to_be_bytes().to_vec();
            out.extend_from_slice(kind);
            out.extend_from_slice(contents);
            out
        }
        let mut tkhd = vec![0u8; 76];
        tkhd.extend((832u32 << 16).to_be_bytes());
        tkhd.extend((480u32 << 16).to_be_bytes());
        let mut out = bmff(b"ftyp", b"isom\0\0\x02\0isomiso2avc1mp41");
        out.extend(bmff(b"mdat", &[0x42; 5000]));
        out.extend(bmff(b"moov", &bmff(b"trak", &bmff(b"tkhd", &tkhd))));
        out
    }

    fn run_end(
        app: &App,
        comfyui: &str,
        history: Value,
        warnings: Vec<Value>,
    ) -> (Arc<Job>, Result<Value, ApiError>) {
        let plan = Plan {
            workflow: "txt2video".into(),
            source: GraphSource::Raw(json!({})),
            inputs: Vec::new(),
        };
        let job = Arc::new(Job::new(plan, RequestOptions::default(), 1));
        let ctx = JobContext {
            templates: Arc::clone(&app.templates),
            storage: Arc::clone(&app.storage),
            local: app.local.clone(),
            spool: Arc::clone(&app.spool),
            blobs: app.blobs.clone(),
            assets: Arc::clone(&app.assets),
            metrics: Arc::clone(&app.metrics),
            run: app.run.clone(),
            on_comeback: None,
        };
        let client = ComfyClient::new(comfyui, Default::default()).expect("a valid URL");
        let prompt_id = PromptId("p-video".into());
        let result = collect_and_store(StoreRequest {
            app: &ctx,
            job: &job,
            client: &client,
            prompt_id: &prompt_id,
            workflow: "txt2video",
            params: json!({"seed": 7}),
            seed: Some(7),
            history: Some(HistoryEntry::from_value(&history).expect("an entry")),
            timings: Timings {
                created: Instant::now(),
                started: None,
                executed: None,
            },
            outputs: OutputTypes::default(),
            warnings,
        });
        (job, result)
    }

    #[test]
    fn a_video_a_gif_and_a_sound_are_stored_locally_with_their_kinds() {
        let gif = b"GIF89a\x02\0\x03\0\x80\0\0\0\0\0\xff\xff\xff;".to_vec();
        // STREAMINFO (the last metadata block), then frames.
        let mut flac = b"fLaC\x80\0\0\x22".to_vec();
        flac.extend([7; 34]);
        flac.extend_from_slice(b"\xff\xf8 a sound");
        let view = FakeView::start(vec![
            ("ComfyUI_00001_.mp4", mp4()),
            ("AnimateDiff_00001.gif", gif.clone()),
            ("ComfyUI_00001_.flac", flac.clone()),
        ]);
        let (app, data) = local_app(&view.url);
        // As today's ComfyUI (SaveVideo, SaveAudio) and VideoHelperSuite report them.
        let history = json!({
            "outputs": {
                "58": {"images": [{"filename": "ComfyUI_00001_.mp4", "subfolder": "video",
                                   "type": "output"}], "animated": [true]},
                "60": {"gifs": [{"filename": "AnimateDiff_00001.gif", "subfolder": "",
                                 "type": "output", "format": "image/gif"}]},
                "61": {"audio": [{"filename": "ComfyUI_00001_.flac", "subfolder": "audio",
                                  "type": "output"}]}
            },
            "status": {"status_str": "success", "completed": true, "messages": []}
        });
        let dropped = json!({"code": "output_dropped", "node": "70"});
        let (job, result) = run_end(&app, &view.url, history, vec![dropped.clone()]);
        let data_json = result.expect("stored");
        let id = job.id().to_string();
        let images = data_json["images"].as_array().expect("a list");
        let summary: Vec<(String, &str, &str, Value, Value)> = images
            .iter()
            .map(|i| {
                (
                    i["key"].as_str().unwrap_or_default().to_string(),
                    i["kind"].as_str().unwrap_or_default(),
                    i["content_type"].as_str().unwrap_or_default(),
                    i["width"].clone(),
                    i["height"].clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    format!("{id}/0.mp4"),
                    "video",
                    "video/mp4",
                    json!(832),
                    json!(480)
                ),
                (
                    format!("{id}/1.gif"),
                    "image",
                    "image/gif",
                    json!(2),
                    json!(3)
                ),
                (
                    format!("{id}/2.flac"),
                    "audio",
                    "audio/flac",
                    json!(null),
                    json!(null)
                ),
            ]
        );
        assert_eq!(images[0]["bytes"], mp4().len());
        assert_eq!(
            images[0]["url"],
            format!("http://127.0.0.1:8000/images/{id}/0.mp4")
        );
        assert_eq!(data_json["warnings"], json!([dropped]));

        let local = app.local.as_ref().expect("local storage");
        let stored =
            |key: &str| fs::read(local.image_path(key).expect("servable")).expect("on disk");
        assert_eq!(stored(&format!("{id}/0.mp4")), mp4());
        assert_eq!(stored(&format!("{id}/1.gif")), gif);
        assert_eq!(stored(&format!("{id}/2.flac")), flac);
        let rows: Vec<ImageRecord> = fs::read_to_string(local.jsonl_path())
            .expect("rows written")
            .lines()
            .map(|line| serde_json::from_str(line).expect("a row"))
            .collect();
        let kinds: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.kind.as_str(), r.content_type.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("video", "video/mp4"),
                ("image", "image/gif"),
                ("audio", "audio/flac")
            ]
        );
        assert_eq!((rows[2].width, rows[2].height), (None, None));
        // Nothing left behind: no staged download, nothing spooled.
        let staging = app.spool.dir().join(".staging");
        assert_eq!(fs::read_dir(&staging).map_or(0, |d| d.count()), 0);
        assert!(app.spool.pending().expect("listable").is_empty());
        drop(view);
        fs::remove_dir_all(data).expect("cleanup");
    }

    #[test]
    fn a_file_comfyui_cannot_serve_is_comfyui_lost_and_leaves_nothing_staged() {
        let view = FakeView::start(vec![("a.png", b"unused".to_vec())]);
        let (app, data) = local_app(&view.url);
        let history = json!({"outputs": {"58": {"images": [
            {"filename": "gone.mp4", "subfolder": "video", "type": "output"}]}}});
        let (_, result) = run_end(&app, &view.url, history, Vec::new());
        let error = result.expect_err("the file is missing");
        assert_eq!(error.code, ErrorCode::ComfyuiLost);
        assert!(error.message.contains("gone.mp4"), "{}", error.message);
        let staging = app.spool.dir().join(".staging");
        assert_eq!(fs::read_dir(&staging).map_or(0, |d| d.count()), 0);
        let stored = fs::read_dir(data.join("images")).map_or(0, |d| d.count());
        assert_eq!(stored, 0, "nothing stored");
        drop(view);
        fs::remove_dir_all(data).expect("cleanup");
    }

    #[test]
    fn a_broken_sound_is_refused_when_stripping_and_stored_as_made_when_keeping() {
        // A FLAC whose comment block claims more bytes than the file holds.
        let broken = b"fLaC\x84\0\x10\0 cut short".to_vec();
        let view = FakeView::start(vec![("ComfyUI_00001_.flac", broken.clone())]);
        let history = json!({"outputs": {"61": {"audio": [
            {"filename": "ComfyUI_00001_.flac", "subfolder": "audio", "type": "output"}]}}});

        let (app, data) = local_app(&view.url);
        let (_, result) = run_end(&app, &view.url, history.clone(), Vec::new());
        let error = result.expect_err("it cannot be stripped");
        assert_eq!(error.code, ErrorCode::Internal);
        assert!(
            error.message.contains("ComfyUI_00001_.flac")
                && error.message.contains("malformed FLAC")
                && error.message.contains("ComfyUI still has it"),
            "{}",
            error.message
        );
        let staging = app.spool.dir().join(".staging");
        assert_eq!(fs::read_dir(&staging).map_or(0, |d| d.count()), 0);
        assert_eq!(
            fs::read_dir(data.join("images")).map_or(0, |d| d.count()),
            0
        );
        fs::remove_dir_all(data).expect("cleanup");

        let (app, data) = local_app_with(&view.url, "keep");
        let (job, result) = run_end(&app, &view.url, history, Vec::new());
        let stored = result.expect("kept as it is");
        assert_eq!(stored["images"][0]["key"], format!("{}/0.flac", job.id()));
        let local = app.local.as_ref().expect("local storage");
        let key = format!("{}/0.flac", job.id());
        let path = local.image_path(&key).expect("servable");
        assert_eq!(fs::read(path).expect("on disk"), broken);
        drop(view);
        fs::remove_dir_all(data).expect("cleanup");
    }

    fn entry(outputs: Value) -> HistoryEntry {
        HistoryEntry::from_value(&json!({"outputs": outputs})).expect("a history entry")
    }

    fn names(entry: &HistoryEntry, types: OutputTypes) -> Vec<&str> {
        select_files(entry, types)
            .into_iter()
            .map(|f| f.file.filename.as_str())
            .collect()
    }

    #[test]
    fn every_saved_file_is_selected_whatever_its_key_and_previews_as_the_template_says() {
        let video_and_preview = entry(json!({
            "9": {"images": [{"filename": "v.mp4", "subfolder": "video", "type": "output"}],
                  "animated": [true]},
            "12": {"gifs": [{"filename": "a.webm", "subfolder": "", "type": "output",
                             "format": "video/webm"}]},
            "14": {"audio": [{"filename": "s.flac", "subfolder": "audio", "type": "output"}]},
            "20": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]}
        }));
        let saved = ["v.mp4", "a.webm", "s.flac"];
        assert_eq!(names(&video_and_preview, OutputTypes::default()), saved);
        assert_eq!(names(&video_and_preview, OutputTypes::Saved), saved);
        assert_eq!(names(&video_and_preview, OutputTypes::Previews), ["p.png"]);
        assert_eq!(
            names(&video_and_preview, OutputTypes::Both),
            ["v.mp4", "a.webm", "s.flac", "p.png"]
        );

        // A graph that only previews: by default its previews are the result, as before.
        let only_previews = entry(json!({
            "20": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]}
        }));
        assert_eq!(names(&only_previews, OutputTypes::default()), ["p.png"]);
        assert!(names(&only_previews, OutputTypes::Saved).is_empty());
    }
}
