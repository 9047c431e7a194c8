//! The queue sections (issue 8 item 6, issue 9 item 4): deep queues of streams and of queued
//! jobs, throughput over one to four ComfyUIs, the added latency per job, and previews.
//!
//! Unlike the sections above, the gateway runs here as its own process (the release binary
//! cargo builds next to this bench, `CARGO_BIN_EXE_comfyui-gateway`), so its RSS and threads
//! are its own, read from `/proc/{pid}/status`. The simulators stay in the bench's process, where
//! [`ComfySim::ws_stats`] counts the websockets and messages ComfyUI had to handle; they keep no
//! request log (`record_requests: false`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use comfyui_sim::{ComfySim, PreviewFormat, SimEvent, SimOptions, WsStats};

use super::{BenchResult, SseStream, Summary, agent, invert_request, ms, note, secs};

/// Sections 18 and 19 (issue 16): durable job records and progress webhooks.
#[path = "frontdoor.rs"]
pub mod frontdoor;

// ---------------------------------------------------------------------------------------------
// A gateway in its own process

/// The gateway's release binary, run with a scratch `DATA_DIR` and its log in a file.
pub(super) struct GatewayProcess {
    child: Child,
    addr: SocketAddr,
    /// Holds `data/` (the gateway's `DATA_DIR`) and `gateway.log`; removed on drop.
    scratch: PathBuf,
}

/// What `/proc/{pid}/status` says about a process.
#[derive(Clone, Copy, Default)]
pub(super) struct ProcStatus {
    rss_kib: u64,
    pub(super) hwm_kib: u64,
    threads: u64,
}

impl GatewayProcess {
    /// Starts the gateway against `comfyui` (one URL per backend) with `vars` on top of the
    /// bench's settings, and waits (at most 20 s) until `/health` answers.
    pub(super) fn start(comfyui: &[String], vars: &[(&str, &str)]) -> BenchResult<GatewayProcess> {
        GatewayProcess::start_in(&std::env::temp_dir(), comfyui, vars)
    }

    /// Like [`start`](Self::start), with its scratch folder (and so `DATA_DIR`) under `root`.
    fn start_in(
        root: &Path,
        comfyui: &[String],
        vars: &[(&str, &str)],
    ) -> BenchResult<GatewayProcess> {
        let scratch = root.join(format!(
            "comfyui-gateway-bench-process-{}",
            comfyui_gateway::ids::new_uuid()
        ));
        std::fs::create_dir_all(scratch.join("data"))?;
        // A port the kernel just handed out and took back: free unless something races for it.
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let workflows = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
        let log = File::create(scratch.join("gateway.log"))?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_comfyui-gateway"));
        command
            .env_clear()
            // Its own directory: no `.env` of the developer's is read.
            .current_dir(&scratch)
            .env("LISTEN_ADDR", addr.to_string())
            .env("COMFYUI_URL", comfyui.join(","))
            .env("WORKFLOWS_DIR", &workflows)
            .env("DATA_DIR", scratch.join("data"))
            .env("RUST_LOG", "warn")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = command.spawn()?;
        let mut gateway = GatewayProcess {
            child,
            addr,
            scratch,
        };
        gateway.wait_until_healthy()?;
        Ok(gateway)
    }

    fn wait_until_healthy(&mut self) -> BenchResult<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let agent = agent();
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Err(
                    format!("the gateway exited with {status}: {}", self.log_tail()).into(),
                );
            }
            if let Ok(response) = agent.get(format!("{}/health", self.url())).call() {
                if response.status().as_u16() == 200 {
                    return Ok(());
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "the gateway did not answer /health in 20 s: {}",
            self.log_tail()
        )
        .into())
    }

    /// The last lines of the gateway's log, for an error message.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.scratch.join("gateway.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    pub(super) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// RSS, peak RSS and threads of the gateway's process now.
    fn status(&self) -> BenchResult<ProcStatus> {
        proc_status(self.pid())
    }

    /// The gateway's `comfyui_gateway_jobs_total` counters, by final state.
    fn jobs_ended(&self) -> BenchResult<BTreeMap<String, u64>> {
        let text = agent()
            .get(format!("{}/metrics", self.url()))
            .call()?
            .body_mut()
            .read_to_string()?;
        let mut ended = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("comfyui_gateway_jobs_total{state=\"") else {
                continue;
            };
            if let Some((state, count)) = rest.split_once("\"} ") {
                ended.insert(state.to_string(), count.trim().parse().unwrap_or(0));
            }
        }
        Ok(ended)
    }

    /// Polls `/metrics` until `total` jobs have ended (or `limit` passed); the counts by state.
    fn wait_for_jobs(&self, total: u64, limit: Duration) -> BenchResult<BTreeMap<String, u64>> {
        let deadline = Instant::now() + limit;
        loop {
            let ended = self.jobs_ended()?;
            if ended.values().sum::<u64>() >= total || Instant::now() >= deadline {
                return Ok(ended);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Bytes of the job files in `DATA_DIR/jobs`.
    fn saved_job_bytes(&self) -> u64 {
        std::fs::read_dir(self.scratch.join("data").join("jobs"))
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok()?.metadata().ok())
                    .map(|meta| meta.len())
                    .sum()
            })
            .unwrap_or(0)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

pub(super) fn proc_status(pid: u32) -> BenchResult<ProcStatus> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcStatus {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        threads: field("Threads:"),
    })
}

/// Samples a process's thread count every 20 ms until dropped, keeping the highest.
struct ThreadWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    sampler: Option<thread::JoinHandle<()>>,
}

impl ThreadWatch {
    fn start(pid: u32) -> ThreadWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (stopped, highest) = (Arc::clone(&stop), Arc::clone(&peak));
        let sampler = thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(status) = proc_status(pid) {
                    highest.fetch_max(status.threads, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(20));
            }
        });
        ThreadWatch {
            stop,
            peak,
            sampler: Some(sampler),
        }
    }

    /// The highest thread count seen so far.
    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for ThreadWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(sampler) = self.sampler.take() {
            let _ = sampler.join();
        }
    }
}

/// Raises this process's open-files soft limit to its hard limit: a thousand clients, each
/// with a socket, plus the simulator's, need more than the common default of 1,024.
pub(super) fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes one `rlimit` into the struct it is given, which lives here.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `setrlimit` only reads the struct; raising the soft limit up to the hard one is
    // always allowed.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
}

/// A simulator with this step delay that keeps no request log.
pub(super) fn quiet_sim(step_delay: Duration) -> BenchResult<ComfySim> {
    Ok(ComfySim::start(SimOptions {
        step_delay,
        record_requests: false,
        ..SimOptions::default()
    })?)
}

/// A distinct small `txt2img` request (a new seed each time, so nothing is cached).
fn txt2img_request(steps: u32, side: u32) -> Value {
    static SEED: AtomicU64 = AtomicU64::new(1);
    let seed = SEED.fetch_add(1, Ordering::Relaxed);
    json!({"workflow": "txt2img", "prompt": "a lighthouse at dusk", "seed": seed,
           "steps": steps, "width": side, "height": side})
}

/// `POST /jobs` with `body`; the job's id, or an error naming the answer.
fn queue_job(agent: &ureq::Agent, gateway: &str, body: &Value) -> BenchResult<String> {
    let mut response = agent
        .post(format!("{gateway}/jobs"))
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string()?;
    if status != 202 {
        return Err(format!("POST /jobs answered {status}: {text}").into());
    }
    let answer: Value = serde_json::from_str(&text)?;
    Ok(answer["job_id"].as_str().unwrap_or_default().to_string())
}

/// Queues `jobs` jobs made by `body` from `clients` threads (keep-alive agents); the errors
/// counted, the first one kept.
fn queue_jobs(
    gateway: &str,
    clients: usize,
    jobs: usize,
    body: &(dyn Fn() -> Value + Sync),
) -> (usize, Option<String>) {
    let remaining = AtomicUsize::new(jobs);
    let failed = AtomicUsize::new(0);
    let first_failure = std::sync::Mutex::new(None);
    thread::scope(|scope| {
        for _ in 0..clients {
            scope.spawn(|| {
                let agent = agent();
                while remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    if let Err(e) = queue_job(&agent, gateway, &body()) {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut first = first_failure
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        first.get_or_insert_with(|| e.to_string());
                    }
                }
            });
        }
    });
    let first = first_failure
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    (failed.into_inner(), first)
}

fn completed(ended: &BTreeMap<String, u64>) -> u64 {
    ended.get("completed").copied().unwrap_or(0)
}

fn not_completed(ended: &BTreeMap<String, u64>) -> String {
    let others: Vec<String> = ended
        .iter()
        .filter(|(state, count)| state.as_str() != "completed" && **count > 0)
        .map(|(state, count)| format!("{state} {count}"))
        .collect();
    if others.is_empty() {
        "none".into()
    } else {
        others.join(", ")
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

// ---------------------------------------------------------------------------------------------
// 9: streams submitted at once

/// Sampler steps of each streamed job, and the simulator's time per step.
const STREAM_STEPS: u32 = 4;
const STREAM_STEP_MS: u64 = 5;

/// One batch of streams opened at once.
pub(super) struct StreamBatch {
    streams: usize,
    completed: usize,
    first_failure: Option<String>,
    wall: Duration,
    idle: ProcStatus,
    peak_threads: u64,
    after: ProcStatus,
    /// Between consecutive `progress` events of one stream, over every stream.
    gaps: Summary,
    progress_events: usize,
    /// From the barrier to the `queued` event, over every stream.
    to_queued: Summary,
    ws: WsStats,
}

/// What one stream saw.
struct StreamOutcome {
    progress: Vec<Instant>,
    queued_after: Duration,
    completed: bool,
    failure: Option<String>,
}

fn one_stream(addr: SocketAddr, body: &Value, start: &Barrier) -> StreamOutcome {
    start.wait();
    let opened = Instant::now();
    let mut outcome = StreamOutcome {
        progress: Vec::new(),
        queued_after: Duration::ZERO,
        completed: false,
        failure: None,
    };
    let mut stream = match SseStream::open(addr, body) {
        Ok(stream) => stream,
        Err(e) => {
            outcome.failure = Some(format!("opening the stream: {e}"));
            return outcome;
        }
    };
    loop {
        match stream.next_event() {
            Ok(Some(event)) => match event.event.as_str() {
                "queued" => outcome.queued_after = event.at - opened,
                "progress" => outcome.progress.push(event.at),
                "complete" => {
                    outcome.completed = true;
                    return outcome;
                }
                "error" | "cancelled" => {
                    outcome.failure = Some(format!("{}: {}", event.event, event.data));
                    return outcome;
                }
                _ => {}
            },
            Ok(None) => {
                outcome.failure = Some("the stream ended without a terminal event".into());
                return outcome;
            }
            Err(e) => {
                outcome.failure = Some(e.to_string());
                return outcome;
            }
        }
    }
}

/// Opens `streams` `POST /generate` streams at once against a fresh gateway process and
/// simulator, and reads each to its end.
fn stream_batch(streams: usize) -> BenchResult<StreamBatch> {
    let sim = quiet_sim(Duration::from_millis(STREAM_STEP_MS))?;
    let gateway = GatewayProcess::start(&[sim.url()], &[("JOB_TIMEOUT_SECS", "120")])?;
    let idle = gateway.status()?;
    let watch = ThreadWatch::start(gateway.pid());
    let start = Barrier::new(streams + 1);
    let addr = gateway.addr;
    let bodies: Vec<Value> = (0..streams)
        .map(|_| txt2img_request(STREAM_STEPS, 64))
        .collect();
    let (outcomes, wall) = thread::scope(|scope| -> BenchResult<_> {
        let mut clients = Vec::with_capacity(streams);
        for body in &bodies {
            let start = &start;
            clients.push(
                thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(scope, move || one_stream(addr, body, start))?,
            );
        }
        start.wait();
        let began = Instant::now();
        let outcomes: Vec<StreamOutcome> = clients
            .into_iter()
            .map(|client| {
                client.join().unwrap_or_else(|_| StreamOutcome {
                    progress: Vec::new(),
                    queued_after: Duration::ZERO,
                    completed: false,
                    failure: Some("a client panicked".into()),
                })
            })
            .collect();
        Ok((outcomes, began.elapsed()))
    })?;
    let peak_threads = watch.peak();
    drop(watch);
    // The connections' threads end with their connections; give them a moment.
    thread::sleep(Duration::from_millis(500));
    let after = gateway.status()?;
    let mut gaps = Vec::new();
    for outcome in &outcomes {
        gaps.extend(outcome.progress.windows(2).map(|pair| pair[1] - pair[0]));
    }
    Ok(StreamBatch {
        streams,
        completed: outcomes.iter().filter(|o| o.completed).count(),
        first_failure: outcomes.iter().find_map(|o| o.failure.clone()),
        wall,
        idle,
        peak_threads: peak_threads.max(after.threads),
        after,
        progress_events: outcomes.iter().map(|o| o.progress.len()).sum(),
        gaps: Summary::of(gaps),
        to_queued: Summary::of(outcomes.iter().map(|o| o.queued_after).collect()),
        ws: sim.ws_stats(),
    })
}

pub(super) fn bench_streams() -> BenchResult<Vec<StreamBatch>> {
    raise_open_files_limit();
    [100, 1_000]
        .into_iter()
        .map(|streams| {
            note(&format!("9. {streams} streams at once"));
            stream_batch(streams)
        })
        .collect()
}

pub(super) fn print_streams(out: &mut String, batches: &[StreamBatch]) -> BenchResult<()> {
    writeln!(
        out,
        "\n9. Streams submitted at once: POST /generate (SSE) all together, txt2img 64x64, \
         {STREAM_STEPS} steps x {STREAM_STEP_MS} ms,\n   one simulator (in the bench's process), \
         the gateway in its own process (default settings: MAX_CONNECTIONS from the open-files limit)\n\
         streams  completed  wall s  jobs/s  gateway RSS idle/peak/after MiB  threads idle/peak/after  \
         progress gaps  gap mean/p50/p99/max ms     to queued p50/p99/max ms"
    )?;
    for b in batches {
        let g = &b.gaps;
        let q = &b.to_queued;
        writeln!(
            out,
            "{:>7}  {:>9}  {:>6.1}  {:>6.1}  {:>31}  {:>23}  {:>13}  {:>26}  {:>27}",
            b.streams,
            b.completed,
            secs(b.wall),
            b.completed as f64 / secs(b.wall).max(1e-9),
            format!(
                "{:.1} / {:.1} / {:.1}",
                mib(b.idle.rss_kib),
                mib(b.after.hwm_kib),
                mib(b.after.rss_kib)
            ),
            format!(
                "{} / {} / {}",
                b.idle.threads, b.peak_threads, b.after.threads
            ),
            b.progress_events,
            if g.count == 0 {
                "- (all ended within a tick)".to_string()
            } else {
                format!(
                    "{:.0} / {:.0} / {:.0} / {:.0}",
                    ms(g.mean),
                    ms(g.p50),
                    ms(g.p99),
                    ms(g.max)
                )
            },
            format!("{:.0} / {:.0} / {:.0}", ms(q.p50), ms(q.p99), ms(q.max)),
        )?;
    }
    writeln!(
        out,
        "What ComfyUI (the simulator) handled:\n\
         streams  websockets accepted  peak open  status sent  status/job  messages sent  messages/job"
    )?;
    for b in batches {
        let per_job = |n: u64| n as f64 / b.streams.max(1) as f64;
        writeln!(
            out,
            "{:>7}  {:>19}  {:>9}  {:>11}  {:>10.2}  {:>13}  {:>12.1}",
            b.streams,
            b.ws.accepted,
            b.ws.peak_open,
            b.ws.status_sent,
            per_job(b.ws.status_sent),
            b.ws.messages_sent,
            per_job(b.ws.messages_sent),
        )?;
    }
    for b in batches {
        if let Some(failure) = &b.first_failure {
            writeln!(
                out,
                "  {} streams: {} did not complete; the first: {failure}",
                b.streams,
                b.streams - b.completed
            )?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 10: a burst of queued jobs

const BURST_JOBS: usize = 10_000;
const BURST_CLIENTS: usize = 4;

pub(super) struct Burst {
    queued: usize,
    refused: usize,
    first_refusal: Option<String>,
    submit: Duration,
    idle: ProcStatus,
    waiting: ProcStatus,
    saved_bytes: u64,
    drain: Duration,
    drained: ProcStatus,
    ended: BTreeMap<String, u64>,
}

pub(super) fn bench_burst() -> BenchResult<Burst> {
    note("10. 10,000 jobs queued in one burst");
    let sim = quiet_sim(Duration::ZERO)?;
    let gateway = GatewayProcess::start(&[sim.url()], &[("JOB_TIMEOUT_SECS", "120")])?;
    let url = gateway.url();
    // Warm-up: first connections and files.
    let warm = agent();
    for _ in 0..20 {
        queue_job(&warm, &url, &invert_request())?;
    }
    gateway.wait_for_jobs(20, Duration::from_secs(30))?;
    sim.pause();
    let idle = gateway.status()?;
    let started = Instant::now();
    let (refused, first_refusal) = queue_jobs(&url, BURST_CLIENTS, BURST_JOBS, &invert_request);
    let submit = started.elapsed();
    let waiting = gateway.status()?;
    let saved_bytes = gateway.saved_job_bytes();
    let queued = BURST_JOBS - refused;
    let draining = Instant::now();
    sim.resume();
    let ended = gateway.wait_for_jobs(20 + queued as u64, Duration::from_secs(600))?;
    let drain = draining.elapsed();
    let drained = gateway.status()?;
    let mut ended = ended;
    if let Some(done) = ended.get_mut("completed") {
        *done = done.saturating_sub(20);
    }
    Ok(Burst {
        queued,
        refused,
        first_refusal,
        submit,
        idle,
        waiting,
        saved_bytes,
        drain,
        drained,
        ended,
    })
}

/// Jobs of the in-process heap measurement.
const HEAP_JOBS: usize = 2_000;

/// The live heap (counting allocator) of an in-process gateway around a burst of queued jobs.
pub(super) struct BurstHeap {
    jobs: usize,
    completed: u64,
    /// Heap per job while all wait.
    waiting: f64,
    /// Heap per finished job kept by the gateway (the simulator's history released).
    finished_gateway: f64,
    /// Heap per finished job kept by the simulator (its history and files).
    finished_sim: f64,
}

/// The same burst, smaller, against a gateway in the bench's own process, whose live heap the
/// counting allocator tells apart from allocator slack.
pub(super) fn bench_burst_heap() -> BenchResult<BurstHeap> {
    note("10. heap per waiting and per finished job (in-process)");
    let sim = SimOptions {
        step_delay: Duration::ZERO,
        record_requests: false,
        ..SimOptions::default()
    };
    let stack = super::Stack::start_with(
        &std::env::temp_dir(),
        sim,
        &[("MAX_QUEUED_JOBS", "10000"), ("JOB_TIMEOUT_SECS", "120")],
    )?;
    let url = stack.gateway.url();
    let completed = || stack.app.metrics.jobs_finished("completed");
    let wait_for = |total: u64| {
        let deadline = Instant::now() + Duration::from_secs(300);
        while completed() < total && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
    };
    let warm = agent();
    for _ in 0..20 {
        queue_job(&warm, &url, &invert_request())?;
    }
    wait_for(20);
    drop(warm);
    stack.sim.pause();
    let heap = || super::HEAP_LIVE.load(Ordering::Relaxed) as f64;
    let before = heap();
    let (refused, first) = queue_jobs(&url, BURST_CLIENTS, HEAP_JOBS, &invert_request);
    if refused > 0 {
        return Err(format!("{refused} jobs refused; the first: {first:?}").into());
    }
    let waiting = heap();
    stack.sim.resume();
    wait_for(20 + HEAP_JOBS as u64);
    let drained = heap();
    stack.sim.restart()?;
    let restarted = heap();
    let per_job = |bytes: f64| bytes / HEAP_JOBS as f64;
    Ok(BurstHeap {
        jobs: HEAP_JOBS,
        completed: completed().saturating_sub(20),
        waiting: per_job(waiting - before),
        finished_gateway: per_job(restarted - before),
        finished_sim: per_job(drained - restarted),
    })
}

pub(super) fn print_burst_heap(out: &mut String, h: &BurstHeap) -> BenchResult<()> {
    writeln!(
        out,
        "heap, in-process gateway, {} jobs the same way (completed {}): {:.0} B per waiting job; \
         per finished job {:.0} B kept by the gateway (for JOB_RETENTION_SECS) + {:.0} B by the \
         simulator's history",
        h.jobs, h.completed, h.waiting, h.finished_gateway, h.finished_sim
    )?;
    Ok(())
}

pub(super) fn print_burst(out: &mut String, b: &Burst) -> BenchResult<()> {
    let per_job = |bytes: f64| bytes / b.queued.max(1) as f64;
    writeln!(
        out,
        "\n10. {BURST_JOBS} jobs queued in one burst: POST /jobs from {BURST_CLIENTS} keep-alive \
         clients, invert 64x64, the simulator paused,\n    then resumed (step delay 0) and \
         drained; the gateway in its own process, default settings"
    )?;
    writeln!(
        out,
        "accepted {} (refused {}) in {:.2} s: {:.0} jobs/s submitted",
        b.queued,
        b.refused,
        secs(b.submit),
        b.queued as f64 / secs(b.submit).max(1e-9)
    )?;
    writeln!(
        out,
        "gateway RSS: idle {:.1} MiB, all waiting {:.1} MiB ({:.0} B per waiting job; their job \
         files {:.0} B each on disk), after the drain {:.1} MiB, peak (VmHWM) {:.1} MiB",
        mib(b.idle.rss_kib),
        mib(b.waiting.rss_kib),
        per_job(b.waiting.rss_kib.saturating_sub(b.idle.rss_kib) as f64 * 1024.0),
        per_job(b.saved_bytes as f64),
        mib(b.drained.rss_kib),
        mib(b.drained.hwm_kib),
    )?;
    writeln!(
        out,
        "drained in {:.1} s ({:.0} jobs/s); completed {} of {}, others: {}; threads while all \
         waited {}",
        secs(b.drain),
        completed(&b.ended) as f64 / secs(b.drain).max(1e-9),
        completed(&b.ended),
        b.queued,
        not_completed(&b.ended),
        b.waiting.threads
    )?;
    if let Some(refusal) = &b.first_refusal {
        writeln!(out, "  the first refusal: {refusal}")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 11: one, two and four simulators

const BACKEND_STEPS: u32 = 3;
const BACKEND_STEP_MS: u64 = 20;
const JOBS_PER_BACKEND: usize = 60;

pub(super) struct BackendRun {
    backends: usize,
    jobs: usize,
    wall: Duration,
    ended: BTreeMap<String, u64>,
    /// Prompts each simulator finished.
    spread: Vec<usize>,
}

pub(super) fn bench_backends() -> BenchResult<Vec<BackendRun>> {
    [1, 2, 4]
        .into_iter()
        .map(|backends| {
            note(&format!("11. {backends} simulator(s)"));
            backend_run(backends)
        })
        .collect()
}

fn backend_run(backends: usize) -> BenchResult<BackendRun> {
    let sims: Vec<ComfySim> = (0..backends)
        .map(|_| quiet_sim(Duration::from_millis(BACKEND_STEP_MS)))
        .collect::<BenchResult<_>>()?;
    let urls: Vec<String> = sims.iter().map(ComfySim::url).collect();
    let gateway = GatewayProcess::start(&urls, &[("JOB_TIMEOUT_SECS", "120")])?;
    let finished: Vec<_> = sims.iter().map(ComfySim::events).collect();
    let jobs = JOBS_PER_BACKEND * backends;
    let started = Instant::now();
    let (refused, first) = queue_jobs(&gateway.url(), 2, jobs, &|| {
        txt2img_request(BACKEND_STEPS, 64)
    });
    if refused > 0 {
        return Err(format!("{refused} jobs refused; the first: {first:?}").into());
    }
    let ended = gateway.wait_for_jobs(jobs as u64, Duration::from_secs(300))?;
    let wall = started.elapsed();
    let spread = finished
        .iter()
        .map(|events| {
            events
                .try_iter()
                .filter(|event| matches!(event, SimEvent::Finished { .. }))
                .count()
        })
        .collect();
    Ok(BackendRun {
        backends,
        jobs,
        wall,
        ended,
        spread,
    })
}

pub(super) fn print_backends(out: &mut String, runs: &[BackendRun]) -> BenchResult<()> {
    writeln!(
        out,
        "\n11. Jobs per second over several ComfyUIs: {JOBS_PER_BACKEND} POST /jobs per simulator \
         from 2 clients, txt2img 64x64,\n    {BACKEND_STEPS} steps x {BACKEND_STEP_MS} ms \
         (the simulators are the bottleneck), default QUEUE_AHEAD=1\n\
         simulators  jobs  completed  wall s  jobs/s  per simulator  prompts each simulator ran"
    )?;
    let base = runs
        .first()
        .map_or(1.0, |r| completed(&r.ended) as f64 / secs(r.wall).max(1e-9));
    for r in runs {
        let rate = completed(&r.ended) as f64 / secs(r.wall).max(1e-9);
        let spread: Vec<String> = r.spread.iter().map(usize::to_string).collect();
        writeln!(
            out,
            "{:>10}  {:>4}  {:>9}  {:>6.2}  {:>6.1}  {:>13.1}  {} (x{:.2} the one-simulator rate)",
            r.backends,
            r.jobs,
            completed(&r.ended),
            secs(r.wall),
            rate,
            rate / r.backends as f64,
            spread.join(" / "),
            rate / base.max(1e-9),
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 12: the added latency per job

const LATENCY_JOBS: usize = 200;

pub(super) struct AddedLatency {
    side: u32,
    /// `GET /history/{id}` per job: more than 1 when the first read came before ComfyUI wrote
    /// the entry, and the gateway waited 20 ms to read it again.
    history_reads_per_job: f64,
    jobs: usize,
    total: Summary,
    added: Summary,
    phases: [f64; 3],
    image_bytes: u64,
}

pub(super) fn bench_added_latency() -> BenchResult<Vec<AddedLatency>> {
    note("12. added latency per job");
    // The request log counts the `/history` reads per job (a few hundred small requests).
    let sim = ComfySim::start(SimOptions {
        step_delay: Duration::ZERO,
        ..SimOptions::default()
    })?;
    let gateway = GatewayProcess::start(&[sim.url()], &[("JOB_TIMEOUT_SECS", "120")])?;
    let url = gateway.url();
    let agent = agent();
    [64, 1024]
        .into_iter()
        .map(|side| {
            let body = |color: u64| {
                json!({"workflow": "invert", "width": side, "height": side,
                       "color": color % 0x100_0000})
            };
            let mut color = u64::from(side) << 12;
            for _ in 0..20 {
                color += 1;
                super::generate_json(&agent, &url, &body(color))?;
            }
            let mut totals = Vec::with_capacity(LATENCY_JOBS);
            let mut added = Vec::with_capacity(LATENCY_JOBS);
            let mut phases = [0.0; 3];
            let mut image_bytes = 0;
            let requests_before = sim.requests().len();
            for _ in 0..LATENCY_JOBS {
                color += 1;
                let sent = Instant::now();
                let result = super::generate_json(&agent, &url, &body(color))?;
                let total = sent.elapsed();
                let [queued, running, storing] = super::phases_of(&result);
                totals.push(total);
                added.push(total.saturating_sub(Duration::from_millis(running)));
                for (sum, value) in phases.iter_mut().zip([queued, running, storing]) {
                    *sum += value as f64 / LATENCY_JOBS as f64;
                }
                image_bytes = result["images"][0]["bytes"].as_u64().unwrap_or(0);
            }
            let history_reads = sim
                .requests()
                .iter()
                .skip(requests_before)
                .filter(|r| r.path.starts_with("/history/"))
                .count();
            Ok(AddedLatency {
                side,
                history_reads_per_job: history_reads as f64 / LATENCY_JOBS as f64,
                jobs: LATENCY_JOBS,
                total: Summary::of(totals),
                added: Summary::of(added),
                phases,
                image_bytes,
            })
        })
        .collect()
}

pub(super) fn print_added_latency(out: &mut String, rows: &[AddedLatency]) -> BenchResult<()> {
    writeln!(
        out,
        "\n12. Added latency per job: POST /generate (JSON), invert, 1 client, local storage, \
         simulator step delay 0,\n    the gateway in its own process; added = client's time \
         minus ComfyUI's `running` (timings_ms, whole ms)\n\
         image      PNG KB  jobs  total p50 ms  added mean/p50/p95/p99 ms   queued/running/storing ms  \
         /history reads per job"
    )?;
    for r in rows {
        let a = &r.added;
        writeln!(
            out,
            "{:<9}  {:>6.0}  {:>4}  {:>12.2}  {:>25}   {:>25}  {:.2}",
            format!("{0}x{0}", r.side),
            r.image_bytes as f64 / 1e3,
            r.jobs,
            ms(r.total.p50),
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2}",
                ms(a.mean),
                ms(a.p50),
                ms(a.p95),
                ms(a.p99)
            ),
            format!(
                "{:.1} / {:.1} / {:.1}",
                r.phases[0], r.phases[1], r.phases[2]
            ),
            r.history_reads_per_job,
        )?;
    }
    writeln!(
        out,
        "before (one websocket per job, commit 2fb8bad, docs/BENCHMARKS.md section 1): invert \
         64x64 p50 7.18 ms total with running 0.3 ms; target <= 5 ms median"
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 13: previews

const PREVIEW_INTERVAL_MS: u64 = 250;
const PREVIEW_STEPS: u32 = 60;
const PREVIEW_STEP_MS: u64 = 100;
const PREVIEW_SIDE: u32 = 1024;

pub(super) struct PreviewRun {
    label: &'static str,
    stream_bytes: usize,
    duration: Duration,
    previews: usize,
    preview_bytes: usize,
    gaps: Summary,
}

pub(super) fn bench_previews() -> BenchResult<Vec<PreviewRun>> {
    note("13. previews");
    let sim = quiet_sim(Duration::from_millis(PREVIEW_STEP_MS))?;
    let interval = PREVIEW_INTERVAL_MS.to_string();
    let gateway = GatewayProcess::start(
        &[sim.url()],
        &[
            ("PROGRESS_INTERVAL_MS", &interval),
            ("JOB_TIMEOUT_SECS", "120"),
        ],
    )?;
    let runs = [
        ("no previews", None),
        ("JPEG previews", Some(PreviewFormat::Jpeg)),
        ("PNG previews", Some(PreviewFormat::Png)),
    ];
    runs.into_iter()
        .map(|(label, format)| {
            sim.set_previews(format);
            let mut body = txt2img_request(PREVIEW_STEPS, PREVIEW_SIDE);
            body["previews"] = json!(format.is_some());
            let opened = Instant::now();
            let mut stream = SseStream::open(gateway.addr, &body)?;
            let events = stream.until_terminal()?;
            let duration = opened.elapsed();
            if events.last().map(|e| e.event.as_str()) != Some("complete") {
                return Err(format!("the {label} job did not complete").into());
            }
            let progress: Vec<Instant> = events
                .iter()
                .filter(|e| e.event == "progress")
                .map(|e| e.at)
                .collect();
            let previews: Vec<&super::Received> =
                events.iter().filter(|e| e.event == "preview").collect();
            Ok(PreviewRun {
                label,
                stream_bytes: stream.bytes,
                duration,
                previews: previews.len(),
                preview_bytes: previews.iter().map(|e| e.data.to_string().len()).sum(),
                gaps: Summary::of(progress.windows(2).map(|p| p[1] - p[0]).collect()),
            })
        })
        .collect()
}

pub(super) fn print_previews(out: &mut String, runs: &[PreviewRun]) -> BenchResult<()> {
    writeln!(
        out,
        "\n13. Previews: one streamed txt2img {PREVIEW_SIDE}x{PREVIEW_SIDE} job each, \
         {PREVIEW_STEPS} steps x {PREVIEW_STEP_MS} ms, PROGRESS_INTERVAL_MS={PREVIEW_INTERVAL_MS},\n    \
         \"previews\": true when the simulator sends them ({}x{} frames, as ComfyUI's latent \
         previews); the gateway in its own process\n\
         stream            s   stream KB  KB/s   extra KB/s  previews  KB/preview  \
         progress gaps  gap mean/p99/max ms",
        PREVIEW_SIDE / 8,
        PREVIEW_SIDE / 8
    )?;
    let base = runs
        .first()
        .map_or(0.0, |r| r.stream_bytes as f64 / secs(r.duration).max(1e-9));
    for r in runs {
        let rate = r.stream_bytes as f64 / secs(r.duration).max(1e-9);
        writeln!(
            out,
            "{:<14}  {:>5.2}  {:>10.1}  {:>5.1}  {:>11.1}  {:>8}  {:>10.2}  {:>13}  {:>19}",
            r.label,
            secs(r.duration),
            r.stream_bytes as f64 / 1e3,
            rate / 1e3,
            (rate - base) / 1e3,
            r.previews,
            r.preview_bytes as f64 / 1e3 / r.previews.max(1) as f64,
            r.gaps.count,
            format!(
                "{:.0} / {:.0} / {:.0}",
                ms(r.gaps.mean),
                ms(r.gaps.p99),
                ms(r.gaps.max)
            ),
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 14: the soak (issue 16 item 1)

/// Jobs waiting through the soak, and what each runs: img2img on one small input image, 8
/// sampler steps of 250 ms (2 s a job), so a few hundred complete while the rest wait.
const SOAK_JOBS: usize = 10_000;
const SOAK_STEPS: u32 = 8;
const SOAK_STEP_MS: u64 = 250;
/// RSS is sampled this often.
const SOAK_SAMPLE: Duration = Duration::from_secs(30);

/// How long the soak lasts: `SOAK_SECS` (default 600), e.g. `SOAK_SECS=60` for a quick look.
fn soak_length() -> Duration {
    let secs = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(600);
    Duration::from_secs(secs.max(1))
}

/// One sample of the soak.
pub(super) struct SoakSample {
    at: Duration,
    status: ProcStatus,
    completed: u64,
}

pub(super) struct Soak {
    length: Duration,
    queued: usize,
    refused: usize,
    first_refusal: Option<String>,
    submit: Duration,
    idle: ProcStatus,
    image_bytes: usize,
    samples: Vec<SoakSample>,
    saved_bytes: u64,
    ended: BTreeMap<String, u64>,
}

/// A 64x64 RGB PNG of noise (about 12 KB), the input image of every soak job.
fn soak_image() -> BenchResult<Vec<u8>> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let pixels: Vec<u8> = (0..64 * 64 * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    super::encode_rgb(&pixels, 64, 64, None)
}

pub(super) fn bench_soak() -> BenchResult<Soak> {
    let length = soak_length();
    note(&format!(
        "14. soak: {SOAK_JOBS} jobs waiting behind a slow backend for {} s (SOAK_SECS)",
        length.as_secs()
    ));
    let sim = quiet_sim(Duration::from_millis(SOAK_STEP_MS))?;
    let gateway = GatewayProcess::start(
        &[sim.url()],
        &[("JOB_TIMEOUT_SECS", "3600"), ("MAX_QUEUED_JOBS", "20000")],
    )?;
    let url = gateway.url();
    let warm = agent();
    for _ in 0..20 {
        queue_job(&warm, &url, &invert_request())?;
    }
    gateway.wait_for_jobs(20, Duration::from_secs(60))?;
    let idle = gateway.status()?;
    let image = soak_image()?;
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &image);
    let seed = AtomicU64::new(1);
    let body = || {
        json!({"workflow": "img2img", "prompt": "a lighthouse at dusk", "image": encoded,
               "seed": seed.fetch_add(1, Ordering::Relaxed), "steps": SOAK_STEPS})
    };
    let started = Instant::now();
    let (refused, first_refusal) = queue_jobs(&url, BURST_CLIENTS, SOAK_JOBS, &body);
    let submit = started.elapsed();
    let saved_bytes = gateway.saved_job_bytes();
    let soak = Instant::now();
    let mut samples = Vec::new();
    loop {
        let ended = gateway.jobs_ended()?;
        samples.push(SoakSample {
            at: soak.elapsed(),
            status: gateway.status()?,
            completed: completed(&ended).saturating_sub(20),
        });
        let next = SOAK_SAMPLE * samples.len() as u32;
        if next > length {
            break;
        }
        thread::sleep(next.saturating_sub(soak.elapsed()));
    }
    let mut ended = gateway.jobs_ended()?;
    if let Some(done) = ended.get_mut("completed") {
        *done = done.saturating_sub(20);
    }
    Ok(Soak {
        length,
        queued: SOAK_JOBS - refused,
        refused,
        first_refusal,
        submit,
        idle,
        image_bytes: image.len(),
        samples,
        saved_bytes,
        ended,
    })
}

pub(super) fn print_soak(out: &mut String, soak: &Soak) -> BenchResult<()> {
    writeln!(
        out,
        "\n14. Soak: {} img2img jobs (one {} B input image each) queued, then {} s behind one slow \
         ComfyUI ({SOAK_STEPS} steps x {SOAK_STEP_MS} ms)\n    while jobs complete; the gateway in \
         its own process, PROGRESS_INTERVAL_MS 1000 (every waiting job ticks each second)",
        soak.queued,
        soak.image_bytes,
        soak.length.as_secs()
    )?;
    writeln!(
        out,
        "submitted in {:.1} s (refused {}); idle RSS {:.1} MiB; job files {:.0} B each on disk",
        secs(soak.submit),
        soak.refused,
        mib(soak.idle.rss_kib),
        soak.saved_bytes as f64 / soak.queued.max(1) as f64
    )?;
    writeln!(out, "  t (s)   RSS (MiB)   completed   waiting   threads")?;
    for sample in &soak.samples {
        writeln!(
            out,
            "  {:>5.0}   {:>9.1}   {:>9}   {:>7}   {:>7}",
            secs(sample.at),
            mib(sample.status.rss_kib),
            sample.completed,
            (soak.queued as u64).saturating_sub(sample.completed),
            sample.status.threads
        )?;
    }
    let rss: Vec<u64> = soak.samples.iter().map(|s| s.status.rss_kib).collect();
    let (low, high) = (
        rss.iter().copied().min().unwrap_or(0),
        rss.iter().copied().max().unwrap_or(0),
    );
    let first = rss.first().copied().unwrap_or(0);
    let last = rss.last().copied().unwrap_or(0);
    let spread = (high - low) as f64 / low.max(1) as f64 * 100.0;
    let peak = soak.samples.last().map_or(0, |s| s.status.hwm_kib);
    writeln!(
        out,
        "RSS first {:.1} MiB, last {:.1} MiB, lowest {:.1}, highest {:.1}: spread {:.1} % ({}); \
         peak (VmHWM) {:.1} MiB ({})",
        mib(first),
        mib(last),
        mib(low),
        mib(high),
        spread,
        if spread <= 10.0 {
            "flat within 10 %"
        } else {
            "NOT flat within 10 %"
        },
        mib(peak),
        if mib(peak) <= 100.0 {
            "at most 100 MiB"
        } else {
            "OVER 100 MiB"
        },
    )?;
    writeln!(out, "jobs ended by state: {:?}", soak.ended)?;
    if let Some(refusal) = &soak.first_refusal {
        writeln!(out, "  the first refusal: {refusal}")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 15: what fsync costs a submission

/// Submissions timed in each place.
const SUBMIT_JOBS: usize = 300;

pub(super) struct SubmitLatency {
    place: &'static str,
    request: &'static str,
    summary: Summary,
}

/// An img2img request whose input image is new each time (a 64x64 PNG whose first pixel
/// counts up), so that every submission writes one blob durably.
fn img2img_fresh_image(n: u64) -> BenchResult<Value> {
    let mut pixels = vec![0u8; 64 * 64 * 3];
    pixels[..8].copy_from_slice(&n.to_le_bytes());
    let png = super::encode_rgb(&pixels, 64, 64, None)?;
    let image = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png);
    Ok(json!({"workflow": "img2img", "prompt": "p", "image": image, "seed": n, "steps": 1}))
}

/// `POST /jobs` latency, one client, with `DATA_DIR` on the disk and on tmpfs (`/dev/shm`,
/// where `fsync` costs nothing), for jobs without input (their record is written) and with a
/// new input image each (the image is also written, through `durable`, with its `fsync`s):
/// the differences are what the writes and their `fsync`s cost a submission.
pub(super) fn bench_submit_latency() -> BenchResult<Vec<SubmitLatency>> {
    note("15. submit latency: DATA_DIR on disk and on tmpfs");
    let mut rows = Vec::new();
    for (place, root) in [
        ("disk (temp dir)", std::env::temp_dir()),
        ("tmpfs (/dev/shm)", PathBuf::from("/dev/shm")),
    ] {
        if !root.is_dir() {
            continue;
        }
        let sim = quiet_sim(Duration::ZERO)?;
        sim.pause();
        let gateway = GatewayProcess::start_in(&root, &[sim.url()], &[])?;
        let url = gateway.url();
        let client = agent();
        for _ in 0..20 {
            queue_job(&client, &url, &invert_request())?;
        }
        let mut seed = 0u64;
        for request in ["invert (no input)", "img2img (new input image)"] {
            let mut times = Vec::with_capacity(SUBMIT_JOBS);
            for _ in 0..SUBMIT_JOBS {
                seed += 1;
                let body = if request.starts_with("invert") {
                    invert_request()
                } else {
                    img2img_fresh_image(seed)?
                };
                let started = Instant::now();
                queue_job(&client, &url, &body)?;
                times.push(started.elapsed());
            }
            rows.push(SubmitLatency {
                place,
                request,
                summary: Summary::of(times),
            });
        }
    }
    Ok(rows)
}

pub(super) fn print_submit_latency(out: &mut String, rows: &[SubmitLatency]) -> BenchResult<()> {
    writeln!(
        out,
        "\n15. Submit latency: {SUBMIT_JOBS} POST /jobs in a row of each kind (one keep-alive \
         client, the simulator paused so every job waits), DATA_DIR on disk vs on tmpfs"
    )?;
    for row in rows {
        writeln!(
            out,
            "{:<18} {:<27} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            row.place,
            row.request,
            ms(row.summary.p50),
            ms(row.summary.p99),
            ms(row.summary.max)
        )?;
    }
    Ok(())
}
