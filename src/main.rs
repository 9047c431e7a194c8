//! The `comfyui-gateway` binary: read the command line ([`cli`]); then either convert a workflow,
//! or read the configuration, build the app and serve until a signal.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use comfyui_gateway::app::App;
use comfyui_gateway::cli;
use comfyui_gateway::config::Config;
use comfyui_gateway::server::{Server, socket};
use comfyui_gateway::storage::local;
use comfyui_gateway::timestamp;
use std::io::Write;

/// How often the spool of failed uploads is retried.
const SPOOL_RETRY_EVERY: Duration = Duration::from_secs(60);
/// How long a shutdown waits for running jobs to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long a shutdown waits for the jobs' last webhooks to reach the disk.
const WEBHOOK_FLUSH_GRACE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    // `--help`, `--version`, `convert` and bad arguments are answered here; no argument serves.
    if let Some(code) = cli::run(std::env::args_os().skip(1)) {
        return code;
    }
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
    init_logger(&config.log_filter);
    match socket::raise_open_files_limit() {
        Ok(limit) if limit.after > limit.before => log::info!(
            "open-files limit raised from {} to {} (the hard limit)",
            limit.before,
            limit.after
        ),
        Ok(limit) => log::info!("open-files limit: {} (already the hard limit)", limit.after),
        Err(e) => log::warn!("could not raise the open-files limit: {e}"),
    }
    let bound = Server::bind(&config.listen_addr)
        .map_err(|e| format!("LISTEN_ADDR={}: cannot listen: {e}", config.listen_addr))?;
    if !bound.addr().ip().is_loopback() && config.trusted_proxies.is_empty() {
        log::warn!(
            "LISTEN_ADDR={} is reachable from other machines and no TRUSTED_PROXY is set: \
             put the gateway behind a reverse proxy (see the README's Deployment section)",
            config.listen_addr
        );
    }
    let app = Arc::new(App::new(config).map_err(|e| e.to_string())?);
    reconcile(&app);
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
    crossbeam_channel::select! {
        recv(stop_rx) -> _ => {}
        recv(server.failures()) -> reason => {
            let reason = reason.unwrap_or_else(|_| "the accept loop ended".into());
            // A listener that accepts nothing is an outage: exit so that a supervisor restarts
            // the gateway, rather than stay alive and refuse every connection.
            log::error!("{reason}; exiting so that a supervisor can restart the gateway");
            return Err(reason);
        }
    }
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

/// Logs to stderr with RFC 3339 UTC timestamps, filtered by `RUST_LOG` as given, except that
/// `ureq_proto`'s trace level is capped at debug: it dumps raw requests, Supabase's key
/// headers included, and secrets must never reach the logs.
fn init_logger(filter: &str) {
    let probe = env_logger::Builder::new().parse_filters(filter).build();
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(filter);
    // `ureq_proto` itself, and any of its modules that RUST_LOG names.
    let named = filter
        .split('/')
        .next()
        .unwrap_or_default()
        .split(',')
        .filter_map(|directive| directive.split_once('=').map(|(name, _)| name.trim()))
        .filter(|name| name.starts_with("ureq_proto"));
    for target in std::iter::once("ureq_proto").chain(named) {
        let trace = log::Metadata::builder()
            .target(target)
            .level(log::Level::Trace)
            .build();
        if log::Log::enabled(&probe, &trace) {
            builder.filter_module(target, log::LevelFilter::Debug);
        }
    }
    builder
        .format(|out, record| {
            writeln!(
                out,
                "[{} {:<5} {}] {}",
                timestamp::now_rfc3339(),
                record.level(),
                record.target(),
                record.args()
            )
        })
        .init();
}

/// Repairs what a crash left in `DATA_DIR` before anything new is stored: temporary files of
/// interrupted saves, and (local storage) images without their `generations.jsonl` row.
fn reconcile(app: &App) {
    let repaired = match &app.local {
        Some(local) => local.reconcile().map(|done| done.log()),
        None => local::remove_crash_leftovers(&app.config.data_dir).map(|removed| {
            for path in removed {
                log::warn!("removed {} left by an interrupted save", path.display());
            }
        }),
    };
    if let Err(e) = repaired {
        log::warn!("could not reconcile DATA_DIR after a crash: {e}");
    }
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
        if job.is_on_backend() {
            log::warn!(
                "job {} was still {} at shutdown; it is reconciled with ComfyUI at the next start",
                job.id(),
                job.state().as_str()
            );
        }
    }
}
