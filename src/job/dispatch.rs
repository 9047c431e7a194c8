//! The dispatcher: one thread that hands waiting jobs to backends with a free slot.
//!
//! Each backend holds at most `1 + QUEUE_AHEAD` of the gateway's prompts (the one it runs and
//! the ones it will run next), so its GPU never idles and no job waits behind a dead or slow
//! backend. The next job goes to the backend with the most free slots.
//!
//! A backend that answers `/prompt` with a server error (or a 2xx without a `prompt_id`) rests
//! for a second while the others go on; the job goes back to the front of the queue
//! and is tried again, at most [`PROMPT_ATTEMPTS`] times in all, then ends with
//! `comfyui_error`.

use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use super::backend::Backend;
use super::{Engine, Job, JobState};
use crate::api::{ApiError, ErrorCode};
use crate::blobs::{BlobHash, BlobStore};
use crate::comfyui::ComfyError;

/// The subfolder of ComfyUI's `input` folder where job inputs go, each named `<hex>.<ext>`
/// after the blake3 hash of its contents.
pub const INPUT_SUBFOLDER: &str = "gateway";

/// How many bad `/prompt` answers (server errors, or a 2xx without a `prompt_id`) a job gets
/// before it ends with `comfyui_error`.
pub const PROMPT_ATTEMPTS: u32 = 3;

/// The dispatcher: whenever a backend has a free slot and a job waits, sends the job's prompt.
pub(super) fn run(engine: &Weak<Engine>) {
    let woken = match engine.upgrade() {
        Some(engine) => engine.dispatcher_woken.clone(),
        None => return,
    };
    let mut last_expiry_check = Instant::now();
    loop {
        let Some(engine) = engine.upgrade() else {
            return;
        };
        if engine.is_stopped() {
            return;
        }
        if !engine.draining.load(Ordering::SeqCst) {
            while dispatch_one(&engine) {}
        }
        if last_expiry_check.elapsed() >= Duration::from_millis(250) {
            last_expiry_check = Instant::now();
            expire_waiting(&engine);
        }
        drop(engine);
        let _ = woken.recv_timeout(Duration::from_millis(250));
    }
}

/// Sends the next waiting job to the backend with the most free slots; false when there was
/// nothing to do.
fn dispatch_one(engine: &Engine) -> bool {
    let capacity = 1 + engine.ctx.run.queue_ahead;
    let best = engine
        .backends
        .iter()
        .map(|b| (b.free_slots(capacity), b))
        .filter(|(free, _)| *free > 0)
        .max_by_key(|(free, b)| (*free, std::cmp::Reverse(b.in_flight())));
    let Some((_, backend)) = best else {
        return false;
    };
    if engine.queue.is_empty() {
        return false;
    }
    let Some((client_id, _)) = backend.try_reserve(capacity) else {
        return true; // raced with a disconnect: look again
    };
    let Some(id) = engine.queue.pop() else {
        backend.release();
        return false;
    };
    let Some(job) = engine.registry.get(&id).filter(|job| !job.is_finished()) else {
        backend.release();
        return true;
    };
    if job.cancel_requested() {
        backend.release();
        engine.finish(&job, JobState::Cancelled);
        return true;
    }
    match send_prompt(engine, backend, &job, &client_id) {
        Ok(()) => backend.answered_well(),
        Err(Refusal::BadAnswer(error)) => {
            backend.release();
            engine.ctx.metrics.comfyui_error();
            let in_a_row = backend.answered_badly();
            let attempts = job.answered_badly();
            if attempts >= PROMPT_ATTEMPTS {
                log::warn!("job {}: {error}; giving up", job.id());
                engine.finish(
                    &job,
                    JobState::Failed(bad_answer(backend, &error, attempts)),
                );
            } else {
                log::warn!(
                    "job {}: {error}; trying again (attempt {attempts} of {PROMPT_ATTEMPTS}); \
                     {} answered badly {in_a_row} times in a row and rests {:?}",
                    job.id(),
                    backend.url(),
                    super::backend::BAD_ANSWER_REST
                );
                engine.queue.push(job.id().clone(), job.ticket().requeued());
            }
        }
        Err(Refusal::Rejected(error)) => {
            backend.release();
            engine.finish(&job, JobState::Failed(error));
        }
        Err(Refusal::Unreachable(reason)) => {
            backend.release();
            engine.ctx.metrics.comfyui_error();
            log::warn!(
                "ComfyUI at {} could not take job {}: {reason}",
                backend.url(),
                job.id()
            );
            engine.queue.push(job.id().clone(), job.ticket().requeued());
            // The monitor notices the backend is gone; meanwhile give the others a chance
            // instead of spinning on this one.
            thread::sleep(Duration::from_millis(50));
        }
    }
    true
}

/// Why a backend did not take a prompt.
enum Refusal {
    /// ComfyUI's validation said no: the job ends with `comfyui_rejected`.
    Rejected(ApiError),
    /// The backend could not be reached: the job goes back to the queue.
    Unreachable(String),
    /// The backend answered with a server error, or a 2xx that was not ComfyUI's answer: the
    /// job is tried again, a bounded number of times.
    BadAnswer(ComfyError),
}

/// How the dispatcher treats a ComfyUI call's failure (uploads and `/prompt`).
fn refusal(error: ComfyError) -> Refusal {
    match error {
        ComfyError::Rejected { .. } => Refusal::Rejected(rejected(&error)),
        ComfyError::Unreachable { .. } => Refusal::Unreachable(error.to_string()),
        ComfyError::Status { .. } | ComfyError::BadResponse { .. } => Refusal::BadAnswer(error),
        ComfyError::InvalidInput { .. } => Refusal::Rejected(ApiError::internal(error.to_string())),
    }
}

/// `502 comfyui_error`: the backend answered badly `attempts` times, the last with `error`.
fn bad_answer(backend: &Backend, error: &ComfyError, attempts: u32) -> ApiError {
    let (status, body, call) = match error {
        ComfyError::Status { status, body, url } => {
            let body = crate::comfyui::truncate(body.trim().to_string(), 200);
            let call = url.strip_prefix(backend.url()).unwrap_or(url).to_string();
            (Some(*status), body, call)
        }
        other => (None, other.to_string(), "/prompt".to_string()),
    };
    let last = match status {
        Some(status) if body.is_empty() => format!("{call} answered HTTP {status}, empty"),
        Some(status) => format!("{call} answered HTTP {status}: {body}"),
        None => body.clone(),
    };
    ApiError::new(
        ErrorCode::ComfyuiError,
        format!(
            "ComfyUI at {} could not queue the prompt after {attempts} bad answers; the last: \
             {last}",
            backend.url()
        ),
    )
    .with_details(json!({
        "backend": backend.url(),
        "status": status,
        "body": body,
        "attempts": attempts,
    }))
}

/// Makes sure the input file `hash` (from `blobs`) is in `backend`'s input folder, and returns
/// the name a graph gives it there (`gateway/<hex>.<ext>`, as `LoadImage` takes it).
///
/// Each file is uploaded once per backend: the name is derived from the content, so a repeated
/// image is found under the same name and ComfyUI's input folder grows only with distinct
/// files. The backend remembers what it received until its websocket reconnects (ComfyUI may
/// have restarted) or the gateway restarts; then a file is uploaded once more, harmlessly
/// (`overwrite` with the same bytes). The bytes are read from disk for the upload only.
pub fn ensure_input(
    backend: &Backend,
    blobs: &BlobStore,
    hash: &BlobHash,
    ext: &str,
) -> Result<String, ComfyError> {
    let filename = format!("{}.{ext}", hash.hex());
    let name = format!("{INPUT_SUBFOLDER}/{filename}");
    if backend.has_input(hash) {
        return Ok(name);
    }
    let bytes = std::fs::read(blobs.path(hash)).map_err(|e| ComfyError::InvalidInput {
        reason: format!(
            "the input file {hash} cannot be read from {}: {e}",
            blobs.dir().display()
        ),
    })?;
    let content_type = super::plan::content_type_of(ext);
    let uploaded =
        backend
            .client()
            .upload_input(&bytes, INPUT_SUBFOLDER, &filename, content_type)?;
    if uploaded == name {
        backend.input_uploaded(*hash);
    } else {
        log::warn!(
            "ComfyUI at {} stored the input {filename} as {uploaded}: it will be uploaded again \
             next time",
            backend.url()
        );
    }
    Ok(uploaded)
}

/// Uploads the job's input files (those the backend lacks), fills its graph and queues it
/// under `client_id`.
fn send_prompt(
    engine: &Engine,
    backend: &Backend,
    job: &Arc<Job>,
    client_id: &str,
) -> Result<(), Refusal> {
    let client = backend.client();
    let names = job
        .plan()
        .inputs
        .iter()
        .map(|input| ensure_input(backend, &engine.ctx.blobs, &input.hash, &input.ext))
        .collect::<Result<Vec<_>, _>>()
        .map_err(refusal)?;
    let graph = job
        .plan()
        .build_graph(&engine.ctx.templates, &names)
        .map_err(|e| Refusal::Rejected(ApiError::internal(e.0)))?;
    let queued = client
        .queue_prompt_with(&graph, client_id, job.extra_data())
        .map_err(refusal)?;
    let warnings = crate::comfyui::dropped_outputs(&queued.node_errors, &graph);
    let ahead = backend.in_flight();
    job.dispatched(
        backend.url(),
        queued.prompt_id.clone(),
        &graph,
        warnings,
        ahead,
    );
    log::info!(
        "job {} sent to {} as prompt {}",
        job.id(),
        backend.url(),
        queued.prompt_id
    );
    backend.register(engine, queued.prompt_id, job, client_id);
    engine.save(job);
    Ok(())
}

/// `422 comfyui_rejected` from ComfyUI's validation answer.
fn rejected(error: &crate::comfyui::ComfyError) -> ApiError {
    let details = match error {
        crate::comfyui::ComfyError::Rejected {
            error_type,
            details,
            node_errors,
            extra_info,
            ..
        } => json!({
            "type": error_type,
            "details": details,
            "node_errors": node_errors,
            "extra_info": extra_info,
        }),
        _ => json!({}),
    };
    // The Display names every failing node and input, which is what the client must fix.
    ApiError::new(ErrorCode::ComfyuiRejected, error.to_string()).with_details(details)
}

/// Ends waiting jobs that exceeded `QUEUE_TIMEOUT_SECS`.
fn expire_waiting(engine: &Engine) {
    let Some(limit) = engine.ctx.run.queue_timeout else {
        return;
    };
    for id in engine.queue.positions().into_keys() {
        let Some(job) = engine.registry.get(&id) else {
            continue;
        };
        if job.created().elapsed() >= limit && engine.queue.remove(&id) {
            engine.finish(
                &job,
                JobState::Failed(ApiError::new(
                    ErrorCode::Timeout,
                    format!(
                        "the job waited {} s in the gateway's queue without a free ComfyUI \
                         (QUEUE_TIMEOUT_SECS)",
                        limit.as_secs()
                    ),
                )),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comfyui::{ClientOptions, ComfyClient};

    fn backend(url: &str) -> Backend {
        let client = ComfyClient::new(url, ClientOptions::default()).expect("a client");
        Backend::new(0, client)
    }

    fn uploads(sim: &comfyui_sim::ComfySim) -> usize {
        sim.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path == "/upload/image")
            .count()
    }

    #[test]
    fn an_input_is_uploaded_once_and_a_failed_or_impossible_upload_is_not_remembered() {
        let sim = comfyui_sim::ComfySim::start(comfyui_sim::SimOptions::default()).expect("sim");
        let dir = std::env::temp_dir().join(format!("dispatch-{}", crate::ids::new_uuid()));
        let blobs = BlobStore::open(dir.join("blobs")).expect("opens");
        let bytes: &[u8] = b"the bytes of an input image";
        let hash = blobs
            .put(&mut &bytes[..], 1 << 20, None)
            .expect("stored")
            .hash;
        let up = backend(&sim.url());
        let name = ensure_input(&up, &blobs, &hash, "png").expect("uploaded");
        assert_eq!(name, format!("{INPUT_SUBFOLDER}/{}.png", hash.hex()));
        assert_eq!(ensure_input(&up, &blobs, &hash, "png").ok(), Some(name));
        assert_eq!(uploads(&sim), 1, "uploaded once");

        // ComfyUI gone mid-dispatch: the job goes back to the queue (it does not fail), and
        // the backend does not count the file as received.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let down = backend(&format!("http://{closed}"));
        let error = ensure_input(&down, &blobs, &hash, "png").expect_err("nobody listens");
        assert!(matches!(error, ComfyError::Unreachable { .. }), "{error}");
        assert!(matches!(refusal(error), Refusal::Unreachable(_)));
        assert!(!down.has_input(&hash));

        // An input the blob store lost: an error before any upload, and the job fails.
        blobs.remove(&hash).expect("removed");
        let fresh = backend(&sim.url());
        let error = ensure_input(&fresh, &blobs, &hash, "png").expect_err("no file");
        assert!(matches!(error, ComfyError::InvalidInput { .. }), "{error}");
        assert!(matches!(refusal(error), Refusal::Rejected(_)));
        assert_eq!(uploads(&sim), 1, "nothing more was sent");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
