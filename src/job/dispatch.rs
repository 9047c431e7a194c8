//! The dispatcher: one thread that hands waiting jobs to backends with a free slot.
//!
//! Each backend holds at most `1 + QUEUE_AHEAD` of the gateway's prompts (the one it runs and
//! the ones it will run next), so its GPU never idles and no job waits behind a dead or slow
//! backend. The next job goes to the backend with the most free slots.

use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use super::backend::Backend;
use super::{Engine, Job, JobState};
use crate::api::{ApiError, ErrorCode};

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
        Ok(()) => {}
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
}

/// Uploads the job's input images, fills its graph and queues it under `client_id`.
fn send_prompt(
    engine: &Engine,
    backend: &Backend,
    job: &Arc<Job>,
    client_id: &str,
) -> Result<(), Refusal> {
    let client = backend.client();
    let mut uploaded = std::collections::BTreeMap::new();
    for image in job.plan().input_images() {
        let filename = format!("gateway-{}-{}.{}", job.id(), image.param, image.extension);
        let name = client
            .upload_image(&image.bytes, &filename, image.content_type)
            .map_err(|e| Refusal::Unreachable(e.to_string()))?;
        uploaded.insert(image.param.clone(), name);
    }
    let graph = job
        .plan()
        .build_graph(&engine.ctx.templates, &uploaded)
        .map_err(|e| Refusal::Rejected(ApiError::internal(e.0)))?;
    let queued = match client.queue_prompt_with(&graph, client_id, job.extra_data()) {
        Ok(queued) => queued,
        Err(error @ crate::comfyui::ComfyError::Rejected { .. }) => {
            return Err(Refusal::Rejected(rejected(&error)));
        }
        Err(error) => return Err(Refusal::Unreachable(error.to_string())),
    };
    let warnings = crate::comfyui::dropped_outputs(&queued.node_errors, &graph);
    job.dispatched(backend.url(), queued.prompt_id.clone(), &graph, warnings);
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
