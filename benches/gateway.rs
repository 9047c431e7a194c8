//! `make bench` (`cargo bench --bench gateway`): throughput, latency, memory and CPU figures for
//! the gateway, measured against the ComfyUI simulator on 127.0.0.1: in-process for sections 1
//! to 8, with the gateway as its own process for the queue sections 9 to 15 (`gateway/queue.rs`)
//! and the Comfy API v2 section 16 (`gateway/v2.rs`), in-process again for the asset library's
//! section 17 (`gateway/assets.rs`).
//!
//! It prints a table and asserts nothing about time: the figures depend on the machine. It fails
//! only when the gateway does not do its job (a request answered with an error, a missing event),
//! because then the figures would mean nothing. `docs/BENCHMARKS.md` explains each figure.
//!
//! A plain `fn main()` (no harness, no extra crates): `Instant` for wall time, `black_box` so the
//! optimiser cannot drop the work being timed. A counting global allocator reports the bytes the
//! process holds on the heap, which, unlike RSS, drops when memory is freed, so the bytes a
//! finished job keeps can be told apart from allocator slack and from the simulator's own history.
//! Progress notes go to stderr; the table goes to stdout once everything has run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use comfyui_gateway::app::App;
use comfyui_gateway::comfyui::Monitor;
use comfyui_gateway::config::Config;
use comfyui_gateway::convert::{self, OutputFormat};
use comfyui_gateway::image::{self, PngMetadata};
use comfyui_gateway::server::Server;
use comfyui_gateway::workflow::Templates;
use comfyui_sim::{ComfySim, RecordedRequest, SimEvent, SimOptions};

#[path = "gateway/assets.rs"]
mod assets;
#[path = "gateway/queue.rs"]
mod queue;
#[path = "gateway/v2.rs"]
mod v2;

type BenchResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Every socket the bench opens gives up after this long, so a wedged gateway ends the run.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateways' `JOB_TIMEOUT_SECS`: far above a normal job here (tens of milliseconds), short
/// enough that a job whose websocket messages were lost costs the run seconds, not minutes.
const JOB_TIMEOUT_SECS: u64 = 2;

// ---------------------------------------------------------------------------------------------
// Heap accounting

/// Bytes currently allocated through the global allocator, by every thread.
static HEAP_LIVE: AtomicIsize = AtomicIsize::new(0);

/// The highest `HEAP_LIVE` since it was last reset (see `bench_large_output`).
static HEAP_PEAK: AtomicIsize = AtomicIsize::new(0);

/// Adds `delta` to the live count and raises the peak if needed.
fn count_heap(delta: isize) {
    let live = HEAP_LIVE.fetch_add(delta, Ordering::Relaxed) + delta;
    HEAP_PEAK.fetch_max(live, Ordering::Relaxed);
}

/// The system allocator, plus one relaxed atomic add per call to keep `HEAP_LIVE`.
struct CountingAllocator;

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counter is bookkeeping only and never touches the memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees about `layout` are passed on unchanged.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            count_heap(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count_heap(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (hence from `System`) with this `layout`.
        unsafe { System.dealloc(ptr, layout) };
        HEAP_LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `new_size` is the caller's, passed on unchanged.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count_heap(new_size as isize - layout.size() as isize);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

// ---------------------------------------------------------------------------------------------
// Entry point

fn main() -> BenchResult<()> {
    // `cargo test --all-targets` runs this binary too (without `--bench`): a minute of load is
    // not a test, so only `cargo bench` measures.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("benches/gateway.rs: run `make bench` (cargo bench --bench gateway) to measure");
        return Ok(());
    }
    let started = Instant::now();
    let mut out = String::new();
    header(&mut out)?;
    // `cargo bench --bench gateway -- png`: only the PNG section (seconds instead of a minute).
    if std::env::args().any(|arg| arg == "png") {
        print_png(&mut out, &bench_png()?)?;
        print!("{out}");
        return Ok(());
    }
    // `cargo bench --bench gateway -- connections`: only what one connection holds.
    if std::env::args().any(|arg| arg == "connections") {
        print_connections(&mut out, &bench_connections()?)?;
        print!("{out}");
        return Ok(());
    }
    // `cargo bench --bench gateway -- assets`: only the asset library's section.
    if std::env::args().any(|arg| arg == "assets") {
        assets::print_assets(&mut out, &assets::bench_assets()?)?;
        print!("{out}");
        return Ok(());
    }
    // `cargo bench --bench gateway -- large-output` measures that section alone.
    if std::env::args().any(|arg| arg == "large-output") {
        print_large_output(&mut out, &bench_large_output()?)?;
        print!("{out}");
        return Ok(());
    }
    // `cargo bench --bench gateway -- v2`: Comfy API v2 against comfy-api-proxy alone.
    if std::env::args().any(|arg| arg == "v2") {
        v2::print_v2(&mut out, &v2::bench_v2()?)?;
        writeln!(out, "\ntotal bench time: {:.1} s", secs(started.elapsed()))?;
        print!("{out}");
        return Ok(());
    }
    // The queue sections (issues 8, 9 and 16), alone or together: `-- streams`, `-- burst`,
    // `-- backends`, `-- added-latency`, `-- previews`, `-- soak` (SOAK_SECS long, default
    // 600), `-- submit-latency`, `-- durable`, `-- webhooks`, or `-- queue` for all of them;
    // `-- burst-heap` is the in-process heap part of `burst` alone.
    let asked = |name: &str| std::env::args().any(|arg| arg == name || arg == "queue");
    let queue_only = [
        "queue",
        "streams",
        "burst",
        "burst-heap",
        "backends",
        "added-latency",
        "previews",
        "soak",
        "submit-latency",
        "durable",
        "webhooks",
    ]
    .iter()
    .any(|name| std::env::args().any(|arg| arg == *name));
    if queue_only {
        queue_sections(&mut out, &asked)?;
        writeln!(out, "\ntotal bench time: {:.1} s", secs(started.elapsed()))?;
        print!("{out}");
        return Ok(());
    }
    // Memory first, so "idle" really is a fresh process.
    let memory = bench_memory()?;
    let json_runs = bench_json()?;
    let sse_runs = bench_sse()?;
    let progress = bench_progress_latency()?;
    let png = bench_png()?;
    let templates = bench_templates()?;
    let connections = bench_connections()?;
    let large = bench_large_output()?;
    let conversion = bench_conversion()?;

    print_jobs(&mut out, "1. Gateway overhead per job", &json_runs)?;
    print_jobs(&mut out, "2. Streaming", &sse_runs)?;
    print_progress(&mut out, &progress)?;
    print_png(&mut out, &png)?;
    print_memory(&mut out, &memory)?;
    print_templates(&mut out, &templates)?;
    print_connections(&mut out, &connections)?;
    print_large_output(&mut out, &large)?;
    print_conversion(&mut out, &conversion)?;
    queue_sections(&mut out, &|_| true)?;
    v2::print_v2(&mut out, &v2::bench_v2()?)?;
    assets::print_assets(&mut out, &assets::bench_assets()?)?;
    writeln!(out, "\ntotal bench time: {:.1} s", secs(started.elapsed()))?;
    print!("{out}");
    Ok(())
}

/// Runs and prints the queue sections `wanted` names (see `benches/gateway/queue.rs`).
fn queue_sections(out: &mut String, wanted: &dyn Fn(&str) -> bool) -> BenchResult<()> {
    if wanted("streams") {
        queue::print_streams(out, &queue::bench_streams()?)?;
    }
    if wanted("burst-heap") && !wanted("burst") {
        queue::print_burst_heap(out, &queue::bench_burst_heap()?)?;
    }
    if wanted("burst") {
        queue::print_burst(out, &queue::bench_burst()?)?;
        queue::print_burst_heap(out, &queue::bench_burst_heap()?)?;
    }
    if wanted("backends") {
        queue::print_backends(out, &queue::bench_backends()?)?;
    }
    if wanted("durable") {
        queue::frontdoor::print_durable(out, &queue::frontdoor::bench_durable()?)?;
    }
    if wanted("webhooks") {
        queue::frontdoor::print_webhooks(out, &queue::frontdoor::bench_webhooks()?)?;
    }
    if wanted("added-latency") {
        queue::print_added_latency(out, &queue::bench_added_latency()?)?;
    }
    if wanted("previews") {
        queue::print_previews(out, &queue::bench_previews()?)?;
    }
    if wanted("submit-latency") {
        queue::print_submit_latency(out, &queue::bench_submit_latency()?)?;
    }
    if wanted("soak") {
        queue::print_soak(out, &queue::bench_soak()?)?;
    }
    Ok(())
}

/// Notes progress on stderr, so stdout holds only the table.
fn note(what: &str) {
    eprintln!("bench: {what}");
}

fn header(out: &mut String) -> BenchResult<()> {
    let cpus = thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    writeln!(
        out,
        "comfyui-gateway benchmarks (cargo bench --bench gateway)"
    )?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    writeln!(
        out,
        "machine: {cpus} CPUs, {model}; load average at start {}",
        load.join(" ")
    )?;
    writeln!(
        out,
        "commit:  {commit}, {} build, on 127.0.0.1: simulator and gateway in one process for \
         sections 1-8 and 17, the gateway in its own process for 9-16",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The system under test

/// The simulator, a gateway in front of it, and the gateway's scratch data directory.
struct Stack {
    gateway: Server,
    app: Arc<App>,
    sim: ComfySim,
    data_dir: PathBuf,
}

impl Stack {
    /// Starts the simulator (with this sampler step delay) and a gateway with local storage,
    /// configured by `vars` on top of the defaults.
    fn start(step_delay: Duration, vars: &[(&'static str, &str)]) -> BenchResult<Stack> {
        Stack::start_in(&std::env::temp_dir(), step_delay, vars)
    }

    /// Like [`Stack::start`], with the data directory under `root`.
    fn start_in(
        root: &Path,
        step_delay: Duration,
        vars: &[(&'static str, &str)],
    ) -> BenchResult<Stack> {
        let sim = SimOptions {
            step_delay,
            ..SimOptions::default()
        };
        Stack::start_with(root, sim, vars)
    }

    /// Like [`Stack::start_in`], with the simulator's options given whole.
    fn start_with(
        root: &Path,
        sim: SimOptions,
        vars: &[(&'static str, &str)],
    ) -> BenchResult<Stack> {
        let sim = ComfySim::start(sim)?;
        let data_dir = root.join(format!(
            "comfyui-gateway-bench-{}",
            comfyui_gateway::ids::new_uuid()
        ));
        std::fs::create_dir_all(&data_dir)?;
        let bound = Server::bind("127.0.0.1:0")?;
        let workflows = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
        let mut settings: BTreeMap<&str, String> = BTreeMap::from([
            ("COMFYUI_URL", sim.url()),
            ("WORKFLOWS_DIR", workflows.display().to_string()),
            ("DATA_DIR", data_dir.display().to_string()),
            ("PUBLIC_BASE_URL", format!("http://{}", bound.addr())),
            ("MAX_ACTIVE_JOBS", "256".to_string()),
            // A job that never hears from ComfyUI (see BENCHMARKS.md, "stalled") ends quickly.
            ("JOB_TIMEOUT_SECS", JOB_TIMEOUT_SECS.to_string()),
        ]);
        settings.extend(vars.iter().map(|(k, v)| (*k, v.to_string())));
        let config = Config::from_lookup(|name| settings.get(name).cloned())?;
        let app = Arc::new(App::new(config)?);
        let gateway = bound.serve(Arc::clone(&app))?;
        Ok(Stack {
            gateway,
            app,
            sim,
            data_dir,
        })
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A distinct `invert` request each time: the simulator caches a node whose inputs repeat (as
/// ComfyUI does), so the same colour twice would execute nothing the second time.
fn invert_request() -> Value {
    static COLOR: AtomicU64 = AtomicU64::new(1);
    let color = COLOR.fetch_add(1, Ordering::Relaxed) % 0x100_0000;
    json!({"workflow": "invert", "width": 64, "height": 64, "color": color})
}

/// A ureq agent that hands error statuses back as responses, with the bench's timeout.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(SOCKET_TIMEOUT))
        .build()
        .new_agent()
}

/// `POST /generate` with `Accept: application/json`: the job's result, or an error naming the
/// status and body when the gateway did not return 200.
fn generate_json(agent: &ureq::Agent, gateway: &str, body: &Value) -> BenchResult<Value> {
    let mut response = agent
        .post(format!("{gateway}/generate"))
        .header("Accept", "application/json")
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())?;
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string()?;
    if status != 200 {
        return Err(format!("POST /generate answered {status}: {text}").into());
    }
    Ok(serde_json::from_str(&text)?)
}

// ---------------------------------------------------------------------------------------------
// A raw-socket SSE reader, so arrival times are the client's, not a library's

/// One event as the client received it.
struct Received {
    event: String,
    data: Value,
    /// When the event's last byte had arrived.
    at: Instant,
}

impl Received {
    fn is_terminal(&self) -> bool {
        matches!(self.event.as_str(), "complete" | "error" | "cancelled")
    }
}

/// An open `POST /generate` stream: it decodes the chunked body itself.
struct SseStream {
    reader: BufReader<TcpStream>,
    pending: String,
    /// Bytes of the body's chunks so far (chunk framing not counted).
    bytes: usize,
}

impl SseStream {
    /// Sends `POST /generate` asking for `text/event-stream` and reads the response head.
    fn open(addr: SocketAddr, body: &Value) -> BenchResult<SseStream> {
        let mut socket = TcpStream::connect_timeout(&addr, SOCKET_TIMEOUT)?;
        socket.set_read_timeout(Some(SOCKET_TIMEOUT))?;
        socket.set_write_timeout(Some(SOCKET_TIMEOUT))?;
        let body = body.to_string();
        write!(
            socket,
            "POST /generate HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        let mut reader = BufReader::new(socket);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        if !head.starts_with("HTTP/1.1 200") || !head.to_ascii_lowercase().contains("chunked") {
            return Err(format!("expected a chunked 200 event stream, got:\n{head}").into());
        }
        Ok(SseStream {
            reader,
            pending: String::new(),
            bytes: 0,
        })
    }

    /// The next event, or `None` once the body ended.
    fn next_event(&mut self) -> BenchResult<Option<Received>> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                if let Some(event) = parse_block(&block)? {
                    return Ok(Some(event));
                }
                continue;
            }
            if !self.read_chunk()? {
                return Ok(None);
            }
        }
    }

    /// Appends one chunk of the body to `pending`; false at the last chunk.
    fn read_chunk(&mut self) -> BenchResult<bool> {
        let mut size_line = String::new();
        if self.reader.read_line(&mut size_line)? == 0 {
            return Ok(false);
        }
        let size = usize::from_str_radix(size_line.trim(), 16)
            .map_err(|_| format!("bad chunk size line {size_line:?}"))?;
        let mut chunk = vec![0; size + 2];
        self.reader.read_exact(&mut chunk)?;
        chunk.truncate(size);
        self.bytes += size;
        self.pending.push_str(std::str::from_utf8(&chunk)?);
        Ok(size > 0)
    }

    /// Every event up to and including the terminal one.
    fn until_terminal(&mut self) -> BenchResult<Vec<Received>> {
        let mut events = Vec::new();
        while let Some(event) = self.next_event()? {
            let terminal = event.is_terminal();
            events.push(event);
            if terminal {
                return Ok(events);
            }
        }
        Err("the stream ended without a terminal event".into())
    }
}

/// An event from one `\n\n`-terminated block; `None` for comments and `retry:` lines.
fn parse_block(block: &str) -> BenchResult<Option<Received>> {
    let mut event = String::from("message");
    let mut data = String::new();
    for line in block.lines() {
        if let Some(name) = line.strip_prefix("event: ") {
            event = name.to_string();
        } else if let Some(text) = line.strip_prefix("data: ") {
            data.push_str(text);
        }
    }
    if data.is_empty() {
        return Ok(None);
    }
    Ok(Some(Received {
        event,
        data: serde_json::from_str(&data)?,
        at: Instant::now(),
    }))
}

/// Streams one job to its end; fails unless it ends with `complete`.
fn generate_stream(addr: SocketAddr, body: &Value) -> BenchResult<Vec<Received>> {
    let events = SseStream::open(addr, body)?.until_terminal()?;
    match events.last() {
        Some(last) if last.event == "complete" => Ok(events),
        Some(last) => Err(format!("the job ended with {}: {}", last.event, last.data).into()),
        None => Err("the stream carried no event".into()),
    }
}

/// The simulator's requests counted by method and path (ids and queries dropped), per job.
fn calls_per_job(requests: &[RecordedRequest], jobs: usize) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for request in requests {
        let path = request.path.split('?').next().unwrap_or_default();
        let path = match path.strip_prefix("/history/") {
            Some(_) => "/history/{id}",
            None => path,
        };
        *counts
            .entry(format!("{} {path}", request.method))
            .or_insert(0) += 1;
    }
    let per_job: Vec<String> = counts
        .iter()
        .map(|(call, n)| format!("{call} {:.1}", *n as f64 / jobs.max(1) as f64))
        .collect();
    per_job.join(", ")
}

/// Runs `run` and records what the simulator was asked meanwhile.
fn with_calls(stack: &Stack, run: impl FnOnce() -> BenchResult<JobRun>) -> BenchResult<JobRun> {
    let before = stack.sim.requests().len();
    let mut result = run()?;
    let requests = stack.sim.requests();
    let jobs = result.latency.count + result.failed;
    result.comfyui_calls = calls_per_job(requests.get(before..).unwrap_or_default(), jobs);
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// Statistics

/// Order statistics of a set of durations.
struct Summary {
    count: usize,
    mean: Duration,
    p50: Duration,
    p95: Duration,
    p99: Duration,
    max: Duration,
}

impl Summary {
    fn of(mut samples: Vec<Duration>) -> Summary {
        samples.sort();
        // Nearest rank: the smallest sample at or above the p-th percent of the samples.
        let rank = |p: f64| -> Duration {
            let index = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            samples
                .get(index.saturating_sub(1))
                .copied()
                .unwrap_or_default()
        };
        let total: Duration = samples.iter().sum();
        Summary {
            count: samples.len(),
            mean: total / u32::try_from(samples.len().max(1)).unwrap_or(u32::MAX),
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// 1 and 2: jobs end to end

/// One batch of jobs: how many clients, how long it took, and what each job cost.
struct JobRun {
    label: &'static str,
    clients: usize,
    wall: Duration,
    latency: Summary,
    /// Mean SSE events per job (0 for JSON).
    events_per_job: f64,
    /// Mean of the result's `timings_ms` (queued, running, storing), in ms.
    phases: [f64; 3],
    /// Jobs that did not complete (they count in `wall`, not in `latency`).
    failed: usize,
    /// What the first failure said.
    first_failure: Option<String>,
    /// The requests the simulator received per job, e.g. `GET /queue 4.0`.
    comfyui_calls: String,
    /// The slowest completed job's `timings_ms` (queued, running, storing).
    slowest_phases: [u64; 3],
}

/// What one job reported back.
struct JobSample {
    latency: Duration,
    events: usize,
    phases: [u64; 3],
}

fn phases_of(result: &Value) -> [u64; 3] {
    let timings = &result["timings_ms"];
    ["queued", "running", "storing"].map(|phase| timings[phase].as_u64().unwrap_or(0))
}

fn one_json_job(agent: &ureq::Agent, gateway: &str) -> BenchResult<JobSample> {
    let sent = Instant::now();
    let result = generate_json(agent, gateway, &invert_request())?;
    Ok(JobSample {
        latency: sent.elapsed(),
        events: 0,
        phases: phases_of(&result),
    })
}

fn one_sse_job(addr: SocketAddr) -> BenchResult<JobSample> {
    let sent = Instant::now();
    let events = generate_stream(addr, &invert_request())?;
    let latency = events.last().map_or(sent.elapsed(), |e| e.at - sent);
    let phases = events.last().map_or([0; 3], |e| phases_of(&e.data));
    Ok(JobSample {
        latency,
        events: events.len(),
        phases,
    })
}

/// Runs `jobs` jobs on `clients` threads, each job made by `job`. The clients draw from one
/// shared count, so a client held up by a stalled job leaves its share to the others.
fn run_jobs<F>(label: &'static str, clients: usize, jobs: usize, job: F) -> BenchResult<JobRun>
where
    F: Fn() -> BenchResult<JobSample> + Sync,
{
    let remaining = AtomicUsize::new(jobs);
    let take = || {
        remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    };
    let started = Instant::now();
    let outcomes: Vec<BenchResult<JobSample>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..clients)
            .map(|_| scope.spawn(|| std::iter::from_fn(|| take().then(&job)).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join()
                    .unwrap_or_else(|_| vec![Err("a client panicked".into())])
            })
            .collect()
    });
    let wall = started.elapsed();
    let mut samples = Vec::with_capacity(outcomes.len());
    let mut failures = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(sample) => samples.push(sample),
            Err(e) => failures.push(e.to_string()),
        }
    }
    if samples.is_empty() {
        return Err(format!("every {label} job failed; the first: {failures:?}").into());
    }
    let n = samples.len().max(1) as f64;
    let mut phases = [0.0; 3];
    for sample in &samples {
        for (sum, value) in phases.iter_mut().zip(sample.phases) {
            *sum += value as f64 / n;
        }
    }
    Ok(JobRun {
        label,
        clients,
        wall,
        events_per_job: samples.iter().map(|s| s.events as f64).sum::<f64>() / n,
        latency: Summary::of(samples.iter().map(|s| s.latency).collect()),
        phases,
        failed: failures.len(),
        first_failure: failures.into_iter().next(),
        comfyui_calls: String::new(),
        slowest_phases: samples
            .iter()
            .max_by_key(|s| s.latency)
            .map_or([0; 3], |s| s.phases),
    })
}

/// `invert` 64x64 with `Accept: application/json`, sequential and with 8 clients; then
/// sequential again with the data directory in memory, to show what the disk costs.
fn bench_json() -> BenchResult<Vec<JobRun>> {
    note("1. JSON jobs");
    let mut runs = json_runs(&std::env::temp_dir(), "json", &[1, 8])?;
    let tmpfs = Path::new("/dev/shm");
    if tmpfs.is_dir() {
        runs.extend(json_runs(tmpfs, "json/tmpfs", &[1])?);
    }
    Ok(runs)
}

fn json_runs(root: &Path, label: &'static str, clients: &[usize]) -> BenchResult<Vec<JobRun>> {
    let stack = Stack::start_in(root, Duration::ZERO, &[])?;
    let url = stack.gateway.url();
    // Warm-up: first connections, first files, the simulator's first prompt.
    let warm = agent();
    for _ in 0..20 {
        generate_json(&warm, &url, &invert_request())?;
    }
    clients
        .iter()
        .map(|&clients| {
            let jobs = if clients == 1 { 300 } else { 400 };
            with_calls(&stack, || {
                run_jobs(label, clients, jobs, || {
                    // One agent per client thread: its connection to the gateway is kept alive.
                    thread_local! { static AGENT: ureq::Agent = agent(); }
                    AGENT.with(|agent| one_json_job(agent, &url))
                })
            })
        })
        .collect()
}

/// The same jobs as SSE streams read from a raw socket.
fn bench_sse() -> BenchResult<Vec<JobRun>> {
    note("2. SSE jobs");
    let stack = Stack::start(Duration::ZERO, &[])?;
    let addr = stack.gateway.addr();
    for _ in 0..20 {
        one_sse_job(addr)?;
    }
    let sequential = with_calls(&stack, || run_jobs("sse", 1, 300, || one_sse_job(addr)))?;
    let concurrent = with_calls(&stack, || run_jobs("sse", 8, 400, || one_sse_job(addr)))?;
    Ok(vec![sequential, concurrent])
}

fn print_jobs(out: &mut String, title: &str, runs: &[JobRun]) -> BenchResult<()> {
    writeln!(
        out,
        "\n{title}: POST /generate, invert 64x64, simulator step delay 0\n\
         mode        clients  done  stalled  jobs/s  mean ms  p50 ms  p95 ms  p99 ms  max ms  \
         events/job  queued/running/storing ms"
    )?;
    for run in runs {
        let l = &run.latency;
        let events = if run.events_per_job > 0.0 {
            format!("{:10.1}", run.events_per_job)
        } else {
            format!("{:>10}", "-")
        };
        writeln!(
            out,
            "{:<10}  {:>7}  {:>4}  {:>7}  {:>6.1}  {:>7.2}  {:>6.2}  {:>6.2}  {:>6.2}  {:>6.2}  \
             {events}  {:.1} / {:.1} / {:.1}",
            run.label,
            run.clients,
            l.count,
            run.failed,
            l.count as f64 / secs(run.wall),
            ms(l.mean),
            ms(l.p50),
            ms(l.p95),
            ms(l.p99),
            ms(l.max),
            run.phases[0],
            run.phases[1],
            run.phases[2],
        )?;
    }
    writeln!(
        out,
        "ComfyUI (simulator) requests per job, and the slowest job's phases:"
    )?;
    for run in runs {
        let [queued, running, storing] = run.slowest_phases;
        writeln!(
            out,
            "  {} with {} client(s): {}; slowest {:.0} ms = {queued} / {running} / {storing}",
            run.label,
            run.clients,
            run.comfyui_calls,
            ms(run.latency.max)
        )?;
    }
    for run in runs {
        if let Some(failure) = &run.first_failure {
            writeln!(
                out,
                "  {} with {} clients: {} job(s) did not complete; the first: {failure}",
                run.label, run.clients, run.failed
            )?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3: progress latency

const PROGRESS_INTERVAL_MS: u64 = 50;
const PROGRESS_STEP_MS: u64 = 30;
const PROGRESS_STEPS: u32 = 20;

/// From each sampler step the simulator sent to the first `progress` event showing it.
struct ProgressLatency {
    delays: Summary,
    /// Steps no progress event showed before the job ended (the last steps of a job can be
    /// overtaken by `complete`).
    unseen: usize,
    /// Jobs that did not complete (left out).
    stalled: usize,
}

fn bench_progress_latency() -> BenchResult<ProgressLatency> {
    note("3. progress latency");
    let interval = PROGRESS_INTERVAL_MS.to_string();
    let stack = Stack::start(
        Duration::from_millis(PROGRESS_STEP_MS),
        &[
            ("PROGRESS_INTERVAL_MS", &interval),
            ("JOB_TIMEOUT_SECS", "20"),
        ],
    )?;
    let sim_events = stack.sim.events();
    let mut delays = Vec::new();
    let mut unseen = 0;
    let mut stalled = 0;
    for seed in 0..8u64 {
        let body = json!({
            "workflow": "txt2img", "prompt": "a lighthouse at dusk", "seed": seed,
            "steps": PROGRESS_STEPS, "width": 64, "height": 64,
        });
        let Ok(events) = generate_stream(stack.gateway.addr(), &body) else {
            stalled += 1;
            sim_events.try_iter().for_each(drop);
            continue;
        };
        let steps = sim_events.try_iter().filter_map(|event| match event {
            SimEvent::Step { value, at, .. } => Some((value, at)),
            _ => None,
        });
        for (value, sent) in steps {
            let shown = events.iter().find(|e| {
                e.event == "progress" && e.data["step"].as_u64() >= Some(u64::from(value))
            });
            match shown {
                Some(event) => delays.push(event.at.saturating_duration_since(sent)),
                None => unseen += 1,
            }
        }
    }
    Ok(ProgressLatency {
        delays: Summary::of(delays),
        unseen,
        stalled,
    })
}

fn print_progress(out: &mut String, p: &ProgressLatency) -> BenchResult<()> {
    let d = &p.delays;
    writeln!(
        out,
        "\n3. Progress latency: simulator step written -> first progress event showing it reached\n   \
         the client (PROGRESS_INTERVAL_MS={PROGRESS_INTERVAL_MS}, step every {PROGRESS_STEP_MS} ms, \
         txt2img {PROGRESS_STEPS} steps)\n\
         steps  mean ms  p50 ms  p95 ms  max ms  not shown before the end  stalled jobs"
    )?;
    writeln!(
        out,
        "{:>5}  {:>7.1}  {:>6.1}  {:>6.1}  {:>6.1}  {:>24}  {:>12}",
        d.count,
        ms(d.mean),
        ms(d.p50),
        ms(d.p95),
        ms(d.max),
        p.unseen,
        p.stalled
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4: PNG handling

const PNG_SIDE: u32 = 2048;
const PROMPT_CHUNK_BYTES: usize = 50 * 1024;

/// Cost of one operation on the big PNG.
struct PngRow {
    name: &'static str,
    per_image: Duration,
    output_bytes: usize,
}

struct PngFigures {
    input_bytes: usize,
    rows: Vec<PngRow>,
}

/// A 2048x2048 RGB PNG like a generated picture: smooth gradients with pixel noise (so it
/// compresses about as badly as a real one), plus a 50 KB `prompt` text chunk like ComfyUI's.
fn big_png() -> BenchResult<Vec<u8>> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut noise = move || {
        // xorshift64: cheap, deterministic, good enough to defeat the deflater.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state & 0x1f) as u8
    };
    let side = PNG_SIDE as usize;
    let mut pixels = Vec::with_capacity(side * side * 3);
    for y in 0..side {
        for x in 0..side {
            pixels.push(((x / 8) as u8).wrapping_add(noise()));
            pixels.push(((y / 8) as u8).wrapping_add(noise()));
            pixels.push((((x + y) / 16) as u8).wrapping_add(noise()));
        }
    }
    let prompt: String = (0..PROMPT_CHUNK_BYTES)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    encode_rgb(&pixels, PNG_SIDE, PNG_SIDE, Some(prompt))
}

fn encode_rgb(
    pixels: &[u8],
    width: u32,
    height: u32,
    prompt: Option<String>,
) -> BenchResult<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    if let Some(text) = prompt {
        encoder.add_text_chunk("prompt".into(), text)?;
    }
    let mut writer = encoder.write_header()?;
    writer.write_image_data(pixels)?;
    writer.finish()?;
    Ok(bytes)
}

/// What the gateway avoids: decoding every pixel and encoding them again.
fn decode_and_reencode(bytes: &[u8]) -> BenchResult<Vec<u8>> {
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_ignore_text_chunk(true);
    let mut reader = decoder.read_info()?;
    let size = reader
        .output_buffer_size()
        .ok_or("the PNG's pixel buffer size overflows")?;
    let mut pixels = vec![0; size];
    let frame = reader.next_frame(&mut pixels)?;
    pixels.truncate(frame.buffer_size());
    encode_rgb(&pixels, frame.width, frame.height, None)
}

/// Mean time of `runs` calls of `op` after one warm-up call, and the size of its output.
fn time_png_op<F>(name: &'static str, runs: u32, mut op: F) -> BenchResult<PngRow>
where
    F: FnMut() -> BenchResult<Vec<u8>>,
{
    let output_bytes = op()?.len();
    let started = Instant::now();
    for _ in 0..runs {
        std::hint::black_box(op()?);
    }
    Ok(PngRow {
        name,
        per_image: started.elapsed() / runs,
        output_bytes,
    })
}

fn bench_png() -> BenchResult<PngFigures> {
    note("4. PNG handling");
    let input = big_png()?;
    let strip = time_png_op("image::strip_text_chunks", 30, || {
        Ok(image::strip_text_chunks(std::hint::black_box(&input))?)
    })?;
    let process = time_png_op("image::process (strip)", 30, || {
        let processed = image::process(input.clone(), "0.png", PngMetadata::Strip)?;
        Ok(processed.bytes)
    })?;
    let keep = time_png_op("image::process (keep)", 30, || {
        let processed = image::process(input.clone(), "0.png", PngMetadata::Keep)?;
        Ok(processed.bytes)
    })?;
    let copy = time_png_op("memcpy (Vec clone), for scale", 30, || {
        Ok(std::hint::black_box(&input).clone())
    })?;
    let reencode = time_png_op("png decode + re-encode", 3, || decode_and_reencode(&input))?;
    // What checking every chunk's CRC costs: the byte-at-a-time table image.rs used before,
    // against crc32fast, which it uses now (the strip time above is mostly this).
    let crc_table = time_png_op("CRC-32 of the file, table (before)", 30, || {
        Ok(crc_table_bytewise(std::hint::black_box(&input))
            .to_be_bytes()
            .to_vec())
    })?;
    let crc_fast = time_png_op("CRC-32 of the file, crc32fast (now)", 30, || {
        Ok(crc32fast::hash(std::hint::black_box(&input))
            .to_be_bytes()
            .to_vec())
    })?;
    Ok(PngFigures {
        input_bytes: input.len(),
        rows: vec![strip, process, keep, copy, reencode, crc_table, crc_fast],
    })
}

/// The byte-at-a-time CRC-32 that image.rs used before crc32fast, kept here as the baseline.
fn crc_table_bytewise(bytes: &[u8]) -> u32 {
    let table: Vec<u32> = (0..256u32)
        .map(|n| {
            (0..8).fold(n, |c, _| {
                if c & 1 == 1 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                }
            })
        })
        .collect();
    let mut crc = u32::MAX;
    for &byte in bytes {
        crc = table[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

fn print_png(out: &mut String, png: &PngFigures) -> BenchResult<()> {
    let mb = |bytes: usize| bytes as f64 / 1e6;
    writeln!(
        out,
        "\n4. PNG handling: {PNG_SIDE}x{PNG_SIDE} RGB, noisy, {} KB prompt tEXt chunk, {:.2} MB in\n\
         operation                          ms/image   MB/s (input)   output MB",
        PROMPT_CHUNK_BYTES / 1024,
        mb(png.input_bytes)
    )?;
    for row in &png.rows {
        writeln!(
            out,
            "{:<33}  {:>8.2}  {:>13.0}  {:>10.3}",
            row.name,
            ms(row.per_image),
            mb(png.input_bytes) / secs(row.per_image),
            mb(row.output_bytes)
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 7: what one client connection holds

const HELD_CONNECTIONS: usize = 200;

/// The gateway's cost per connection, for connections in three states.
struct ConnectionCost {
    state: &'static str,
    fds: f64,
    threads: f64,
    rss_kib: f64,
    heap_bytes: f64,
}

/// Descriptors, threads, RSS and heap of this process.
fn process_counts() -> BenchResult<(usize, usize, u64, isize)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or("/proc/self/status has no VmRSS")?;
    Ok((
        std::fs::read_dir("/proc/self/fd")?.count(),
        std::fs::read_dir("/proc/self/task")?.count(),
        rss,
        HEAP_LIVE.load(Ordering::Relaxed),
    ))
}

/// Opens `HELD_CONNECTIONS` connections set up by `open`, and measures the process before and
/// once they are all held (the client's own socket, one descriptor each, is subtracted).
fn cost_of(
    state: &'static str,
    open: &dyn Fn() -> BenchResult<TcpStream>,
) -> BenchResult<ConnectionCost> {
    let (fds0, threads0, rss0, heap0) = process_counts()?;
    let held: Vec<TcpStream> = (0..HELD_CONNECTIONS)
        .map(|_| open())
        .collect::<Result<_, _>>()?;
    // Let the server side take every connection up.
    thread::sleep(Duration::from_millis(500));
    let (fds1, threads1, rss1, heap1) = process_counts()?;
    drop(held);
    let n = HELD_CONNECTIONS as f64;
    Ok(ConnectionCost {
        state,
        fds: (fds1 as f64 - fds0 as f64 - n) / n,
        threads: (threads1 as f64 - threads0 as f64) / n,
        rss_kib: (rss1 as f64 - rss0 as f64) / n,
        heap_bytes: (heap1 - heap0) as f64 / n,
    })
}

fn bench_connections() -> BenchResult<Vec<ConnectionCost>> {
    note("7. per connection");
    let stack = Stack::start(Duration::from_millis(50), &[])?;
    let addr = stack.gateway.addr();
    let idle = cost_of("idle keep-alive, after a request", &|| {
        let mut socket = TcpStream::connect(addr)?;
        socket.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut answer = [0u8; 64];
        let _ = socket.read(&mut answer)?;
        Ok(socket)
    })?;
    wait_for_threads_to_settle(0);
    let partial = cost_of("request head not finished", &|| {
        let mut socket = TcpStream::connect(addr)?;
        socket.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")?;
        Ok(socket)
    })?;
    wait_for_threads_to_settle(0);
    // A stream held open on a job that waits in ComfyUI's queue.
    stack.sim.pause();
    let text = agent()
        .post(&format!("{}/jobs", stack.gateway.url()))
        .header("Content-Type", "application/json")
        .send(r#"{"workflow": "txt2img", "prompt": "held", "seed": 1, "steps": 2}"#)?
        .body_mut()
        .read_to_string()?;
    let created: Value = serde_json::from_str(&text)?;
    let job = created["job_id"].as_str().ok_or("no job id")?.to_string();
    let stream = cost_of("SSE stream open", &|| {
        let mut socket = TcpStream::connect(addr)?;
        let request = format!("GET /jobs/{job}/events HTTP/1.1\r\nHost: x\r\n\r\n");
        socket.write_all(request.as_bytes())?;
        let mut head = [0u8; 64];
        let _ = socket.read(&mut head)?;
        Ok(socket)
    })?;
    stack.sim.resume();
    Ok(vec![idle, partial, stream])
}

fn print_connections(out: &mut String, costs: &[ConnectionCost]) -> BenchResult<()> {
    writeln!(
        out,
        "\n7. What the gateway holds per client connection ({HELD_CONNECTIONS} held at once)\n\
         state                               fds  threads   RSS KiB   heap bytes"
    )?;
    for c in costs {
        writeln!(
            out,
            "{:<34} {:>5.2}  {:>7.2}  {:>8.1}  {:>11.0}",
            c.state, c.fds, c.threads, c.rss_kib, c.heap_bytes
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5: memory and threads

/// The process at one moment.
struct Snapshot {
    moment: &'static str,
    rss_kib: u64,
    hwm_kib: u64,
    threads: usize,
    heap_bytes: isize,
    jobs_held: usize,
    /// Heap held by the simulator's log of every request it received (kept across restarts).
    sim_log_bytes: isize,
}

fn snapshot(moment: &'static str, stack: &Stack) -> BenchResult<Snapshot> {
    let heap_bytes = HEAP_LIVE.load(Ordering::Relaxed);
    // A copy of the log costs about what the log itself holds.
    let copy = stack.sim.requests();
    let sim_log_bytes = HEAP_LIVE.load(Ordering::Relaxed) - heap_bytes;
    drop(copy);
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> BenchResult<u64> {
        let line = status
            .lines()
            .find(|line| line.starts_with(name))
            .ok_or_else(|| format!("/proc/self/status has no {name}"))?;
        let kib = line
            .split_whitespace()
            .nth(1)
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| format!("unreadable /proc/self/status line {line:?}"))?;
        Ok(kib)
    };
    Ok(Snapshot {
        moment,
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        threads: std::fs::read_dir("/proc/self/task")?.count(),
        heap_bytes,
        jobs_held: stack.app.jobs.len(),
        sim_log_bytes,
    })
}

/// The process's threads counted by name (`/proc/self/task/*/comm`), job threads as `job-*`;
/// unnamed threads (tiny_http's connection pools, the bench itself) carry the program's name.
fn threads_by_name() -> BenchResult<BTreeMap<String, usize>> {
    let program = std::fs::read_to_string("/proc/self/comm")?
        .trim()
        .to_string();
    let mut counts = BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        // A thread may end between listing and reading: skip it.
        let Ok(comm) = std::fs::read_to_string(task?.path().join("comm")) else {
            continue;
        };
        let name = match comm.trim() {
            name if name.starts_with("job-") => "job-*".to_string(),
            name if name.starts_with("tick-") => "tick-*".to_string(),
            name if name == program => "(unnamed)".to_string(),
            name => name.to_string(),
        };
        *counts.entry(name).or_insert(0) += 1;
    }
    Ok(counts)
}

const HELD_JOBS: usize = 32;
const MANY_JOBS: usize = 1000;

struct MemoryFigures {
    snapshots: Vec<Snapshot>,
    held: HeldJobs,
    /// Heap taken by one open ComfyUI websocket, both ends.
    websocket_bytes: isize,
    /// Of the 1000 jobs, how many did not complete (they are still held, as failed jobs).
    stalled: usize,
}

fn bench_memory() -> BenchResult<MemoryFigures> {
    note("5. memory and threads");
    let stack = Stack::start(Duration::ZERO, &[])?;
    let mut snapshots = vec![snapshot("idle after start-up", &stack)?];
    let held = hold_concurrent_jobs(&stack, &mut snapshots)?;
    snapshots.push(snapshot("after those 32 jobs ended", &stack)?);
    let url = stack.gateway.url();
    let many = run_jobs("json", 8, MANY_JOBS, || {
        thread_local! { static AGENT: ureq::Agent = agent(); }
        AGENT.with(|agent| one_json_job(agent, &url))
    })?;
    wait_for_threads_to_settle(snapshots[0].threads);
    snapshots.push(snapshot("after 1000 more jobs", &stack)?);
    // The simulator keeps every prompt's history entry and output file, as ComfyUI does; a
    // restart forgets them, so what is left is the gateway's.
    stack.sim.restart()?;
    snapshots.push(snapshot("... simulator restarted", &stack)?);
    Ok(MemoryFigures {
        snapshots,
        held,
        stalled: many.failed,
        websocket_bytes: websocket_cost(&stack)?,
    })
}

/// The heap one `Monitor` connection takes, both ends (the simulator's is in-process too),
/// measured once the simulator has registered the socket.
fn websocket_cost(stack: &Stack) -> BenchResult<isize> {
    let events = stack.sim.events();
    let before = HEAP_LIVE.load(Ordering::Relaxed);
    let monitor = Monitor::connect(&stack.sim.url(), "bench-websocket", SOCKET_TIMEOUT)?;
    loop {
        match events.recv_timeout(SOCKET_TIMEOUT)? {
            SimEvent::WsConnected { .. } => break,
            _ => continue,
        }
    }
    let cost = HEAP_LIVE.load(Ordering::Relaxed) - before;
    drop(monitor);
    Ok(cost)
}

/// Holds 32 jobs open at once: the simulator's queue is paused, each client has its `queued`
/// event, and the snapshot is taken before anything runs. Then lets them all finish.
fn hold_concurrent_jobs(stack: &Stack, snapshots: &mut Vec<Snapshot>) -> BenchResult<HeldJobs> {
    let requests_before = stack.sim.requests().len();
    stack.sim.pause();
    let mut streams = Vec::with_capacity(HELD_JOBS);
    for _ in 0..HELD_JOBS {
        let mut stream = SseStream::open(stack.gateway.addr(), &invert_request())?;
        match stream.next_event()? {
            Some(event) if event.event == "queued" => streams.push(stream),
            other => {
                return Err(format!("expected queued, got {:?}", other.map(|e| e.event)).into());
            }
        }
    }
    snapshots.push(snapshot("during 32 concurrent jobs", stack)?);
    let names = threads_by_name()?;
    stack.sim.resume();
    for stream in &mut streams {
        let events = stream.until_terminal()?;
        if events.last().map(|e| e.event.as_str()) != Some("complete") {
            return Err("a held job did not complete".into());
        }
    }
    drop(streams);
    wait_for_threads_to_settle(snapshots[0].threads);
    let requests = stack.sim.requests();
    Ok(HeldJobs {
        threads: names,
        comfyui_calls: calls_per_job(
            requests.get(requests_before..).unwrap_or_default(),
            HELD_JOBS,
        ),
    })
}

/// What holding 32 jobs at once showed.
struct HeldJobs {
    /// Threads by name while the jobs were held.
    threads: BTreeMap<String, usize>,
    /// The simulator's requests per job, from the first submit to the last completion.
    comfyui_calls: String,
}

/// Waits (at most 8 s) until the process is back to `idle` threads: request and job threads
/// end with their job, but tiny_http keeps an idle connection thread for 5 s, and what those
/// threads hold should not count as retained.
fn wait_for_threads_to_settle(idle: usize) {
    let deadline = Instant::now() + Duration::from_secs(8);
    while Instant::now() < deadline {
        let threads = std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count);
        if threads <= idle {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn print_memory(out: &mut String, memory: &MemoryFigures) -> BenchResult<()> {
    let mib = |kib: u64| kib as f64 / 1024.0;
    writeln!(
        out,
        "\n5. Memory and threads (whole process: gateway + simulator + bench clients' sockets)\n\
         moment                       VmRSS MiB  VmHWM MiB  threads  heap MiB  jobs held"
    )?;
    for s in &memory.snapshots {
        writeln!(
            out,
            "{:<27}  {:>9.1}  {:>9.1}  {:>7}  {:>8.2}  {:>9}",
            s.moment,
            mib(s.rss_kib),
            mib(s.hwm_kib),
            s.threads,
            s.heap_bytes as f64 / (1024.0 * 1024.0),
            s.jobs_held
        )?;
    }
    let names: Vec<String> = memory
        .held
        .threads
        .iter()
        .map(|(name, count)| format!("{name} {count}"))
        .collect();
    writeln!(
        out,
        "threads during the 32 jobs, by name: {}",
        names.join(", ")
    )?;
    writeln!(
        out,
        "ComfyUI requests per job for those 32: {}",
        memory.held.comfyui_calls
    )?;
    let [_, _, before, after, restarted] = memory.snapshots.as_slice() else {
        return Err("memory snapshots missing".into());
    };
    let per_job = |from: i64, to: i64| (to - from) as f64 / MANY_JOBS as f64;
    let heap = |s: &Snapshot| s.heap_bytes as i64;
    let log = |s: &Snapshot| s.sim_log_bytes as i64;
    writeln!(
        out,
        "retained per finished job: RSS {:.0} B, heap {:.0} B = gateway's job record {:.0} B \
         + simulator's history and files {:.0} B + simulator's request log {:.0} B",
        per_job(before.rss_kib as i64 * 1024, after.rss_kib as i64 * 1024),
        per_job(heap(before), heap(after)),
        per_job(heap(before) + log(restarted), heap(restarted) + log(before)),
        per_job(heap(restarted), heap(after)),
        per_job(log(before), log(restarted)),
    )?;
    let held = &memory.snapshots[1];
    writeln!(
        out,
        "heap per job in flight: {:.0} KB; per websocket (gateway's Monitor + simulator's end): \
         {:.0} KB",
        (heap(held) - heap(&memory.snapshots[0])) as f64 / HELD_JOBS as f64 / 1e3,
        memory.websocket_bytes as f64 / 1e3
    )?;
    if memory.stalled > 0 {
        writeln!(
            out,
            "({} of the 1000 jobs stalled and timed out; they are held like the others)",
            memory.stalled
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6: templates

struct TemplateFigures {
    calls: u32,
    per_call: Duration,
}

fn bench_templates() -> BenchResult<TemplateFigures> {
    note("6. templates");
    let templates = Templates::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows"))?;
    let template = templates.get("txt2img").ok_or("no txt2img template")?;
    let params: Map<String, Value> = serde_json::from_value(json!({
        "prompt": "a red fox in the snow, golden hour, 35mm", "negative_prompt": "blurry",
        "seed": 18_446_744_073_709_551_615u64, "steps": 25, "width": 768, "height": 512,
        "sampler": "dpmpp_2m", "scheduler": "karras",
    }))?;
    let uploaded = BTreeMap::new();
    let call = || -> BenchResult<Value> {
        let resolved = template
            .resolve(std::hint::black_box(&params))
            .map_err(|errors| format!("txt2img refused the parameters: {}", errors.to_details()))?;
        Ok(template.build_graph(&resolved, &uploaded)?)
    };
    for _ in 0..1_000 {
        std::hint::black_box(call()?);
    }
    let calls = 50_000;
    let started = Instant::now();
    for _ in 0..calls {
        std::hint::black_box(call()?);
    }
    Ok(TemplateFigures {
        calls,
        per_call: started.elapsed() / calls,
    })
}

fn print_templates(out: &mut String, t: &TemplateFigures) -> BenchResult<()> {
    writeln!(
        out,
        "\n6. Templates: txt2img Template::resolve + build_graph, {} calls: {:.2} µs per call",
        t.calls,
        t.per_call.as_secs_f64() * 1e6
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Large outputs: a 300 MB video from ComfyUI's /view to local storage

/// How big the video is.
const LARGE_OUTPUT_BYTES: u64 = 300 * 1024 * 1024;

struct LargeOutput {
    elapsed: Duration,
    /// The part of `elapsed` spent stripping the metadata in place.
    strip_elapsed: Duration,
    strip_blanked: u64,
    rss_before_kib: u64,
    peak_rss_kib: u64,
    heap_peak_above_start: isize,
    stored_bytes: u64,
    kind: &'static str,
}

/// Generated video bytes, without ever holding them: an MP4 as ffmpeg writes it for ComfyUI's
/// SaveVideo, `ftyp`, then `mdat` (a pattern), then `moov` with a 100 KB workflow in its
/// `udta` metadata, so that the job's stripping has to reach the end of the file.
struct GeneratedVideo {
    sent: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl GeneratedVideo {
    fn new() -> GeneratedVideo {
        fn bmff(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
            let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
            out.extend_from_slice(kind);
            out.extend_from_slice(payload);
            out
        }
        let workflow = format!(
            "{{\"nodes\": [{}]}}",
            vec![r#"{"type": "KSampler", "class_type": "KSampler"}"#; 2000].join(", ")
        );
        let mut keys = 1u32.to_be_bytes().to_vec();
        keys.extend(bmff(b"mdta", b"workflow"));
        let mut data = 1u32.to_be_bytes().to_vec();
        data.extend_from_slice(&[0; 4]);
        data.extend_from_slice(workflow.as_bytes());
        let mut meta = vec![0; 4];
        meta.extend(bmff(b"keys", &keys));
        meta.extend(bmff(
            b"ilst",
            &bmff(&1u32.to_be_bytes(), &bmff(b"data", &data)),
        ));
        let mut moov = bmff(b"mvhd", &[0; 100]);
        moov.extend(bmff(b"udta", &bmff(b"meta", &meta)));
        let tail = bmff(b"moov", &moov);
        let mut head = b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2".to_vec();
        let mdat = LARGE_OUTPUT_BYTES - head.len() as u64 - tail.len() as u64;
        head.extend_from_slice(&(mdat as u32).to_be_bytes());
        head.extend_from_slice(b"mdat");
        GeneratedVideo {
            sent: 0,
            head,
            tail,
        }
    }
}

impl Read for GeneratedVideo {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = LARGE_OUTPUT_BYTES - self.sent;
        let n = (buf.len() as u64).min(left) as usize;
        let tail_at = (LARGE_OUTPUT_BYTES - self.tail.len() as u64) as usize;
        for (i, byte) in buf[..n].iter_mut().enumerate() {
            let at = self.sent as usize + i;
            *byte = match self.head.get(at) {
                Some(&b) => b,
                None if at >= tail_at => self.tail[at - tail_at],
                None => (at % 251) as u8,
            };
        }
        self.sent += n as u64;
        Ok(n)
    }
}

/// Serves one 300 MB video as ComfyUI's `/view` would, then stops.
fn serve_one_video() -> BenchResult<(String, thread::JoinHandle<()>)> {
    let server = tiny_http::Server::http("127.0.0.1:0")?;
    let port = server
        .server_addr()
        .to_ip()
        .ok_or("the server has no IP address")?
        .port();
    let serving = thread::spawn(move || {
        if let Ok(Some(request)) = server.recv_timeout(SOCKET_TIMEOUT) {
            let header = tiny_http::Header::from_bytes("Content-Type", "video/mp4");
            let response = tiny_http::Response::new(
                tiny_http::StatusCode(200),
                header.into_iter().collect(),
                GeneratedVideo::new(),
                Some(LARGE_OUTPUT_BYTES as usize),
                None,
            );
            let _ = request.respond(response);
        }
    });
    Ok((format!("http://127.0.0.1:{port}"), serving))
}

/// Fetches a 300 MB video from a stand-in `/view` and stores it on local disk through the same
/// steps a job takes (stream into the staging folder, identify, strip its metadata in place,
/// link into storage), and reports the peak RSS and heap meanwhile.
fn bench_large_output() -> BenchResult<LargeOutput> {
    use comfyui_gateway::comfyui::{ClientOptions, ComfyClient, ImageRef};
    use comfyui_gateway::media;
    use comfyui_gateway::storage::Storage;
    use comfyui_gateway::storage::local::LocalStorage;
    use comfyui_gateway::storage::spool::Spool;

    note("large output: a 300 MB video from /view to local storage");
    let (base, serving) = serve_one_video()?;
    let dir = std::env::temp_dir().join(format!(
        "gateway-bench-large-{}",
        comfyui_gateway::ids::new_uuid()
    ));
    let spool = Spool::new(dir.join("spool"))?;
    let local = LocalStorage::new(dir.clone(), "http://127.0.0.1:8000".into());
    let client = ComfyClient::new(&base, ClientOptions::default())?;
    let job = comfyui_gateway::ids::new_uuid();

    // Resets VmHWM to the current RSS (Linux 4.0+), so the peak is this section's alone.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before_kib = snapshot_status()?.0;
    let heap_start = HEAP_LIVE.load(Ordering::Relaxed);
    HEAP_PEAK.store(heap_start, Ordering::Relaxed);
    let started = Instant::now();
    let staging = spool.staging(&job)?;
    let mut download = client.open_file(&ImageRef {
        filename: "ComfyUI_00001_.mp4".into(),
        subfolder: "video".into(),
        kind: "output".into(),
    })?;
    let received = staging.receive("0.part", &mut download, media::HEAD_LEN)?;
    let kind = media::identify(&received.head, "ComfyUI_00001_.mp4");
    let strip_started = Instant::now();
    let strip_blanked = comfyui_gateway::strip::strip_in_place(&received.path, kind)?;
    let strip_elapsed = strip_started.elapsed();
    let key = format!("{job}/0.{}", kind.extension);
    local.put_file(&key, &received.path, kind.content_type)?;
    drop(staging);
    let elapsed = started.elapsed();
    let heap_peak_above_start = HEAP_PEAK.load(Ordering::Relaxed) - heap_start;
    let peak_rss_kib = snapshot_status()?.1;
    let stored_bytes = std::fs::metadata(dir.join("images").join(&key))?.len();
    let _ = serving.join();
    std::fs::remove_dir_all(&dir)?;
    if stored_bytes != LARGE_OUTPUT_BYTES {
        return Err(format!("stored {stored_bytes} bytes, not {LARGE_OUTPUT_BYTES}").into());
    }
    Ok(LargeOutput {
        elapsed,
        strip_elapsed,
        strip_blanked,
        rss_before_kib,
        peak_rss_kib,
        heap_peak_above_start,
        stored_bytes,
        kind: kind.content_type,
    })
}

/// `(VmRSS, VmHWM)` in KiB.
fn snapshot_status() -> BenchResult<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> BenchResult<u64> {
        let line = status
            .lines()
            .find(|line| line.starts_with(name))
            .ok_or_else(|| format!("/proc/self/status has no {name}"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .and_then(|kib| kib.parse().ok())
            .ok_or_else(|| format!("unreadable /proc/self/status line {line:?}"))?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn print_large_output(out: &mut String, large: &LargeOutput) -> BenchResult<()> {
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    writeln!(
        out,
        "\n7. Large outputs: one {:.0} MiB video ({}) from ComfyUI's /view to local storage\n\
         time {:.2} s ({:.0} MiB/s); VmRSS before {:.1} MiB, peak {:.1} MiB (+{:.1} MiB); \
         heap peak {:.2} MiB above the start; of which stripping its metadata in place \
         (moov at the end, {} bytes of udta blanked): {:.2} ms",
        mib(large.stored_bytes as f64),
        large.kind,
        secs(large.elapsed),
        mib(large.stored_bytes as f64) / secs(large.elapsed).max(1e-9),
        large.rss_before_kib as f64 / 1024.0,
        large.peak_rss_kib as f64 / 1024.0,
        large.peak_rss_kib.saturating_sub(large.rss_before_kib) as f64 / 1024.0,
        mib(large.heap_peak_above_start as f64),
        large.strip_blanked,
        large.strip_elapsed.as_secs_f64() * 1000.0,
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 8: output conversion

/// One conversion of one image.
struct ConversionRow {
    side: u32,
    kind: &'static str,
    format: &'static str,
    input_bytes: usize,
    per_image: Duration,
    output_bytes: usize,
}

/// A `side`×`side` RGB PNG of gradients with pixel noise of amplitude `mask + 1`: 31 compresses
/// about as badly as a detailed generated picture, 3 about as well as a flat illustration.
fn noisy_png(side: u32, mask: u64) -> BenchResult<Vec<u8>> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state & mask) as u8
    };
    let n = side as usize;
    let mut pixels = Vec::with_capacity(n * n * 3);
    for y in 0..n {
        for x in 0..n {
            pixels.push(((x * 256 / n) as u8).wrapping_add(noise()));
            pixels.push(((y * 256 / n) as u8).wrapping_add(noise()));
            pixels.push((((x + y) * 128 / n) as u8).wrapping_add(noise()));
        }
    }
    encode_rgb(&pixels, side, side, None)
}

fn bench_conversion() -> BenchResult<Vec<ConversionRow>> {
    note("7. output conversion");
    let mut rows = Vec::new();
    for (side, kind, mask) in [
        (1024, "noisy", 0x1f),
        (1024, "smooth", 0x03),
        (2048, "noisy", 0x1f),
        (2048, "smooth", 0x03),
    ] {
        let input = noisy_png(side, mask)?;
        let targets = [
            ("jpeg q90", OutputFormat::Jpeg, Some(90)),
            ("webp lossless", OutputFormat::Webp, None),
        ];
        for (format, target, quality) in targets {
            let run = || -> BenchResult<Vec<u8>> {
                let converted =
                    convert::convert(std::hint::black_box(&input), "image/png", target, quality)?
                        .ok_or("a PNG is always converted")?;
                Ok(converted.bytes)
            };
            let output_bytes = run()?.len();
            let runs = if side == 1024 { 5 } else { 3 };
            let started = Instant::now();
            for _ in 0..runs {
                std::hint::black_box(run()?);
            }
            rows.push(ConversionRow {
                side,
                kind,
                format,
                input_bytes: input.len(),
                per_image: started.elapsed() / runs,
                output_bytes,
            });
        }
    }
    Ok(rows)
}

fn print_conversion(out: &mut String, rows: &[ConversionRow]) -> BenchResult<()> {
    let mb = |bytes: usize| bytes as f64 / 1e6;
    writeln!(
        out,
        "\n7. Output conversion (convert::convert: PNG decode + encode), RGB images\n\
         image              to              ms/image   PNG in MB   out MB"
    )?;
    for row in rows {
        writeln!(
            out,
            "{:<17}  {:<14}  {:>8.1}  {:>10.2}  {:>7.2}",
            format!("{0}x{0} {1}", row.side, row.kind),
            row.format,
            ms(row.per_image),
            mb(row.input_bytes),
            mb(row.output_bytes)
        )?;
    }
    Ok(())
}
