//! The end of a successful run: collect the images from ComfyUI, process and store them, record
//! their metadata, and build the `complete` event. If storage fails for good, the images are kept
//! in the spool so that nothing finished is lost.

use serde_json::{Value, json};
use std::thread;
use std::time::{Duration, Instant};

use super::Job;
use super::runner::Timings;
use crate::api::{ApiError, ErrorCode};
use crate::app::App;
use crate::comfyui::{ComfyClient, HistoryEntry, ImageRef};
use crate::ids::{self, PromptId};
use crate::image::{self, ProcessedImage};
use crate::storage::spool::PendingImage;
use crate::storage::{ImageRecord, StorageError};
use crate::timestamp;

/// Everything `collect_and_store` needs to know about the job.
pub(super) struct StoreRequest<'a> {
    pub app: &'a App,
    pub job: &'a Job,
    pub client: &'a ComfyClient,
    pub prompt_id: &'a PromptId,
    pub workflow: &'a str,
    pub params: Value,
    pub seed: Option<u64>,
    /// The history entry, when it was already read (after a lost websocket).
    pub history: Option<HistoryEntry>,
    pub timings: Timings,
}

/// One image from ComfyUI, processed and ready to store.
struct Collected {
    node: String,
    source: ImageRef,
    key: String,
    image: ProcessedImage,
}

/// Fetches, processes and stores the prompt's output images; returns the `complete` data.
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
    let collected = fetch_images(&req, &entry)?;
    let storing_started = Instant::now();
    let images = store_all(&req, &collected)?;
    let done = Instant::now();
    let t = &req.timings;
    let started = t.started.unwrap_or(storing_started);
    let executed = t.executed.unwrap_or(storing_started);
    Ok(json!({
        "job_id": req.job.id(),
        "prompt_id": req.prompt_id,
        "workflow": req.workflow,
        "images": images,
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
    let mut pause = Duration::from_millis(20);
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

/// The images a client wants: saved outputs, or temporary previews when the graph saved none.
fn select_images(entry: &HistoryEntry) -> Vec<(String, ImageRef)> {
    let of_kind = |temp: bool| -> Vec<(String, ImageRef)> {
        entry
            .images()
            .filter(|(_, image)| image.is_temp() == temp)
            .map(|(node, image)| (node.to_string(), image.clone()))
            .collect()
    };
    let saved = of_kind(false);
    if saved.is_empty() {
        of_kind(true)
    } else {
        saved
    }
}

fn fetch_images(req: &StoreRequest<'_>, entry: &HistoryEntry) -> Result<Vec<Collected>, ApiError> {
    let mut collected = Vec::new();
    for (index, (node, source)) in select_images(entry).into_iter().enumerate() {
        let bytes = req.client.get_image(&source).map_err(|e| {
            ApiError::new(
                ErrorCode::ComfyuiLost,
                format!(
                    "ComfyUI finished, but fetching its image {}: {e}",
                    source.filename
                ),
            )
            .with_details(json!({ "comfyui_file": source }))
        })?;
        let image =
            image::process(bytes, &source.filename, req.app.run.png_metadata).map_err(|e| {
                ApiError::internal(format!(
                    "ComfyUI's image {} is unusable: {e}",
                    source.filename
                ))
            })?;
        // Output conversion (issue 10): the request's `output_format`/`quality` once the job
        // carries its `RequestOptions`; PNG (the default) stores the image as it is.
        let output = crate::api::RequestOptions::default();
        let image = crate::convert::for_storage(image, output.output_format, output.quality)
            .map_err(|e| ApiError::internal(format!("converting {}: {e}", source.filename)))?;
        let key = format!("{}/{index}.{}", req.job.id(), extension(image.content_type));
        collected.push(Collected {
            node,
            source,
            key,
            image,
        });
    }
    Ok(collected)
}

fn extension(content_type: &str) -> &'static str {
    match content_type {
        "image/jpeg" => "jpg",
        "image/webp" => "webp",
        "image/gif" => "gif",
        _ => "png",
    }
}

/// Stores every image and records the rows; on failure, spools them and says where.
///
/// For remote storage the images are spooled *before* the upload (write-ahead) and the spool
/// entry is removed once storage has them, so that even a gateway killed mid-upload loses
/// nothing: the next start-up finishes the upload.
fn store_all(req: &StoreRequest<'_>, collected: &[Collected]) -> Result<Vec<Value>, ApiError> {
    let mut rows = rows_for(req, collected);
    let job_id = req.job.id().to_string();
    let write_ahead = req.app.local.is_none();
    if write_ahead {
        if let Err(e) = req
            .app
            .spool
            .save(&job_id, &pending_images(collected), &rows)
        {
            log::warn!("job {job_id}: could not spool images before uploading: {e}");
        }
    }
    let stored = upload_and_record(req, collected, &mut rows);
    if stored.is_ok() && write_ahead {
        if let Err(e) = req.app.spool.discard(&job_id) {
            log::warn!("job {job_id}: stored, but its spool entry stays: {e}");
        }
    }
    match stored {
        Ok(()) => Ok(collected
            .iter()
            .zip(&rows)
            .map(|(c, row)| {
                json!({
                    "url": row.url,
                    "key": c.key,
                    "width": c.image.width,
                    "height": c.image.height,
                    "bytes": c.image.bytes.len(),
                    "content_type": c.image.content_type,
                    "node": c.node,
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

fn pending_images(collected: &[Collected]) -> Vec<PendingImage> {
    collected
        .iter()
        .map(|c| {
            let content_type = c.image.content_type.to_string();
            (c.key.clone(), c.image.bytes.clone(), content_type)
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
            width: c.image.width,
            height: c.image.height,
            bytes: c.image.bytes.len() as u64,
            seed: req.seed,
            params: req.params.clone(),
            created_at: created_at.clone(),
        })
        .collect()
}

fn upload_and_record(
    req: &StoreRequest<'_>,
    collected: &[Collected],
    rows: &mut [ImageRecord],
) -> Result<(), StorageError> {
    for (c, row) in collected.iter().zip(rows.iter_mut()) {
        row.url = req
            .app
            .storage
            .put_image(&c.key, &c.image.bytes, c.image.content_type)?;
    }
    req.app.storage.record(rows)
}

/// Keeps the images on disk for a later upload and builds the `storage_failed` error.
fn spool(
    req: &StoreRequest<'_>,
    collected: &[Collected],
    rows: &[ImageRecord],
    cause: &StorageError,
) -> ApiError {
    let comfyui_files: Vec<&ImageRef> = collected.iter().map(|c| &c.source).collect();
    let job_id = req.job.id().to_string();
    match req
        .app
        .spool
        .save(&job_id, &pending_images(collected), rows)
    {
        Ok(dir) => {
            log::warn!(
                "job {job_id}: storage failed ({cause}); images spooled in {}",
                dir.display()
            );
            ApiError::new(
                ErrorCode::StorageFailed,
                format!(
                    "the images could not be stored ({cause}); they are kept in {} and will be \
                     uploaded automatically when storage works again",
                    dir.display()
                ),
            )
            .with_details(json!({
                "spool_dir": dir,
                "keys": collected.iter().map(|c| &c.key).collect::<Vec<_>>(),
                "cause": cause.to_string(),
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
                    "the images could not be stored ({cause}) nor kept on local disk \
                     ({spool_error}); ComfyUI still has them in its output folder"
                ),
            )
            .with_details(json!({ "cause": cause.to_string(), "comfyui_files": comfyui_files }))
        }
    }
}
