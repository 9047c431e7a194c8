//! The `comfyui-gateway` binary: read the configuration, build the app, serve until a signal.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use comfyui_gateway::app::App;
use comfyui_gateway::config::Config;
use comfyui_gateway::server::Server;

/// How often the spool of failed uploads is retried.
const SPOOL_RETRY_EVERY: Duration = Duration::from_secs(60);
/// How long a shutdown waits for running jobs to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long a shutdown waits for the jobs' last webhooks to reach the disk.
const WEBHOOK_FLUSH_GRACE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("comfyui-gateway: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let config = Config::from_env().map_err(|e| e.to_string())?;
    env_logger::Builder::new()
        .parse_filters(&config.log_filter)
        // ureq_proto's trace level dumps raw request bytes, Supabase's key headers included:
        // capped whatever RUST_LOG says, since secrets must never reach the logs.
        .filter_module("ureq_proto", log::LevelFilter::Debug)
        .init();
    let bound = Server::bind(&config.listen_addr)
        .map_err(|e| format!("LISTEN_ADDR={}: cannot listen: {e}", config.listen_addr))?;
    let app = Arc::new(App::new(config).map_err(|e| e.to_string())?);
    App::spawn_housekeeping(&app, SPOOL_RETRY_EVERY)
        .map_err(|e| format!("cannot start the housekeeping thread: {e}"))?;
    let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })
    .map_err(|e| format!("cannot install the SIGINT/SIGTERM handler: {e}"))?;
    let server = bound
        .serve(Arc::clone(&app))
        .map_err(|e| format!("cannot start serving: {e}"))?;
    log::info!(
        "comfyui-gateway listening on {} (ComfyUI: {}; storage: {}; workflows: {})",
        server.url(),
        app.config.comfyui_urls.join(", "),
        app.storage.kind(),
        app.templates.names().collect::<Vec<_>>().join(", ")
    );
    let _ = stop_rx.recv();
    log::info!(
        "shutting down: no new requests or dispatches; waiting up to {SHUTDOWN_GRACE:?} for \
         jobs on a ComfyUI"
    );
    server.shutdown();
    wait_for_jobs(&app, SHUTDOWN_GRACE);
    if !app.webhooks.flush(WEBHOOK_FLUSH_GRACE) {
        log::warn!("some webhooks were not written to DATA_DIR/webhooks in time and are lost");
    }
    Ok(())
}

/// Lets jobs that are on a ComfyUI finish (their outputs stored, or spooled) for up to `grace`;
/// jobs still waiting stay saved in `DATA_DIR` and resume at the next start.
fn wait_for_jobs(app: &App, grace: Duration) {
    let deadline = Instant::now() + grace;
    let waiting = app.engine().map_or(0, |engine| engine.drain(deadline));
    if waiting > 0 {
        log::info!("{waiting} waiting jobs are saved and resume at the next start");
    }
    for job in app.jobs.unfinished() {
        if job.prompt().is_some() {
            log::warn!(
                "job {} was still {} at shutdown; it is reconciled with ComfyUI at the next start",
                job.id(),
                job.state().as_str()
            );
        }
    }
}
