//! Section 16: Comfy API v2, the gateway side by side with Comfy-Org's reference proxy
//! (`comfy-api-proxy`, PyPI), both against the same simulator, with the same workflows and the
//! same client (this code): submit → `succeeded` latency (polling `GET /api/v2/jobs/{id}`, the
//! contract's source of truth), peak RSS, and how many of 100 and 1,000 concurrent event streams
//! on one job reach its terminal `status`.
//!
//! The proxy is run as `comfy-api-proxy run --comfyui URL --port P` when it is on `PATH`
//! (`pip install comfy-api-proxy`); without it the gateway's figures are printed alone.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::queue::{GatewayProcess, proc_status, quiet_sim, raise_open_files_limit};
use super::{BenchResult, Summary, ms, note};

/// Jobs per latency run.
const LATENCY_JOBS: usize = 30;
/// The stream counts measured.
const STREAM_COUNTS: [usize; 2] = [100, 1000];
/// Sampler steps of the job the streams follow (at `STEP_MS` each).
const STREAM_STEPS: u32 = 20;
const STEP_MS: u64 = 25;

/// One v2 surface under test: its base URL and its process id.
struct Surface {
    name: &'static str,
    base: String,
    pid: u32,
}

/// The reference proxy's process.
struct Proxy {
    child: Child,
    base: String,
}

impl Proxy {
    fn start(comfyui: &str) -> BenchResult<Option<Proxy>> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = match Command::new("comfy-api-proxy")
            .args(["run", "--comfyui", comfyui, "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(_) => return Ok(None),
        };
        let proxy = Proxy {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(response) = agent().get(format!("{}/api/v2/health", proxy.base)).call() {
                if response.status().as_u16() == 200 {
                    return Ok(Some(proxy));
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
        Err("comfy-api-proxy did not answer /api/v2/health within 30 s".into())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .new_agent()
}

fn invert(color: u32) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "v2bench", "images": ["2", 0]}},
    })
}

fn sampler(steps: u32, seed: u64) -> Value {
    json!({
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 7.0,
              "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
              "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "bench", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "v2bench", "images": ["8", 0]}},
    })
}

fn submit(base: &str, workflow: &Value) -> BenchResult<String> {
    let mut response = agent()
        .post(format!("{base}/api/v2/jobs"))
        .header("Content-Type", "application/json")
        .send(json!({ "workflow": workflow }).to_string().as_bytes())?;
    let status = response.status().as_u16();
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string()?)?;
    if status != 201 {
        return Err(format!("POST /api/v2/jobs answered {status}: {body}").into());
    }
    Ok(body["id"].as_str().unwrap_or_default().to_string())
}

fn status_of(base: &str, id: &str) -> BenchResult<String> {
    let mut response = agent().get(format!("{base}/api/v2/jobs/{id}")).call()?;
    let body: Value = serde_json::from_str(&response.body_mut().read_to_string()?)?;
    Ok(body["status"].as_str().unwrap_or_default().to_string())
}

/// Submit → `succeeded`, polled every 2 ms, `LATENCY_JOBS` times one after the other.
fn latency(base: &str) -> BenchResult<(Summary, usize)> {
    let mut samples = Vec::new();
    let mut failed = 0;
    for n in 0..LATENCY_JOBS {
        let started = Instant::now();
        let id = submit(base, &invert(n as u32 + 1))?;
        let deadline = started + Duration::from_secs(30);
        loop {
            match status_of(base, &id)?.as_str() {
                "succeeded" => {
                    samples.push(started.elapsed());
                    break;
                }
                "failed" | "canceled" | "expired" => {
                    failed += 1;
                    break;
                }
                _ if Instant::now() > deadline => {
                    failed += 1;
                    break;
                }
                _ => thread::sleep(Duration::from_millis(2)),
            }
        }
    }
    Ok((Summary::of(samples), failed))
}

/// What one event stream saw.
enum StreamEnd {
    /// It read the job's terminal status.
    Terminal,
    /// Refused (the reference answers 429 beyond 8 streams).
    Refused,
    /// It ended or broke before a terminal status.
    Cut,
}

/// Opens one event stream, reports when its first byte arrived, and reads to the terminal status.
fn follow(base: &str, id: &str, opened: &Barrier) -> StreamEnd {
    let response = agent()
        .get(format!("{base}/api/v2/jobs/{id}/events"))
        .header("Accept", "text/event-stream")
        .call();
    let response = match response {
        Ok(response) => response,
        Err(_) => {
            opened.wait();
            return StreamEnd::Cut;
        }
    };
    let status = response.status().as_u16();
    opened.wait();
    if status != 200 {
        let mut body = String::new();
        let _ = response.into_body().into_reader().read_to_string(&mut body);
        return StreamEnd::Refused;
    }
    let reader = BufReader::new(response.into_body().into_reader());
    let mut status_event = false;
    for line in reader.lines() {
        let Ok(line) = line else {
            return StreamEnd::Cut;
        };
        if line.starts_with("event:") {
            status_event = line.trim_end().ends_with("status");
        } else if status_event && line.starts_with("data:") {
            let data: Value = serde_json::from_str(line[5..].trim()).unwrap_or(Value::Null);
            if matches!(
                data["status"].as_str(),
                Some("succeeded" | "failed" | "canceled" | "expired")
            ) {
                return StreamEnd::Terminal;
            }
        }
    }
    StreamEnd::Cut
}

/// `streams` event streams on one job held at ComfyUI until every stream is open.
struct StreamRun {
    streams: usize,
    terminal: usize,
    refused: usize,
    cut: usize,
    elapsed: Duration,
}

fn streams(base: &str, sim: &comfyui_sim::ComfySim, streams: usize) -> BenchResult<StreamRun> {
    sim.pause();
    let id = submit(base, &sampler(STREAM_STEPS, streams as u64))?;
    let opened = Arc::new(Barrier::new(streams + 1));
    let started = Instant::now();
    let handles: Vec<_> = (0..streams)
        .map(|_| {
            let (base, id, opened) = (base.to_string(), id.clone(), Arc::clone(&opened));
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || follow(&base, &id, &opened))
        })
        .collect::<Result<_, _>>()?;
    opened.wait();
    sim.resume();
    let mut run = StreamRun {
        streams,
        terminal: 0,
        refused: 0,
        cut: 0,
        elapsed: Duration::ZERO,
    };
    for handle in handles {
        match handle.join() {
            Ok(StreamEnd::Terminal) => run.terminal += 1,
            Ok(StreamEnd::Refused) => run.refused += 1,
            _ => run.cut += 1,
        }
    }
    run.elapsed = started.elapsed();
    Ok(run)
}

/// One surface's figures.
pub(super) struct SurfaceFigures {
    name: &'static str,
    latency: Summary,
    failed: usize,
    streams: Vec<StreamRun>,
    peak_rss_kib: u64,
}

fn measure(surface: &Surface, sim: &comfyui_sim::ComfySim) -> BenchResult<SurfaceFigures> {
    note(&format!("v2: {} latency", surface.name));
    let (latency, failed) = latency(&surface.base)?;
    let mut runs = Vec::new();
    for count in STREAM_COUNTS {
        note(&format!("v2: {} with {count} streams", surface.name));
        runs.push(streams(&surface.base, sim, count)?);
    }
    Ok(SurfaceFigures {
        name: surface.name,
        latency,
        failed,
        streams: runs,
        peak_rss_kib: proc_status(surface.pid)?.hwm_kib,
    })
}

/// Runs section 16.
pub(super) fn bench_v2() -> BenchResult<Vec<SurfaceFigures>> {
    raise_open_files_limit();
    let sim = quiet_sim(Duration::from_millis(STEP_MS))?;
    let mut figures = Vec::new();
    {
        let gateway = GatewayProcess::start(
            &[sim.url()],
            &[("MAX_CONNECTIONS", "2100"), ("PROGRESS_INTERVAL_MS", "250")],
        )?;
        let surface = Surface {
            name: "comfyui-gateway",
            base: gateway.url(),
            pid: gateway.pid(),
        };
        figures.push(measure(&surface, &sim)?);
    }
    match Proxy::start(&sim.url())? {
        Some(proxy) => {
            let surface = Surface {
                name: "comfy-api-proxy",
                base: proxy.base.clone(),
                pid: proxy.child.id(),
            };
            figures.push(measure(&surface, &sim)?);
        }
        None => note("v2: comfy-api-proxy is not on PATH (pip install comfy-api-proxy)"),
    }
    Ok(figures)
}

/// Prints section 16.
pub(super) fn print_v2(out: &mut String, figures: &[SurfaceFigures]) -> BenchResult<()> {
    writeln!(
        out,
        "\n## 16. Comfy API v2: the gateway and comfy-api-proxy, same simulator, same client\n"
    )?;
    writeln!(
        out,
        "submit → succeeded: {LATENCY_JOBS} `invert` 64×64 jobs one after another, polled every \
         2 ms. Streams: N `GET /api/v2/jobs/{{id}}/events` on one {STREAM_STEPS}-step job \
         ({STEP_MS} ms a step), all opened before it starts.\n"
    )?;
    writeln!(
        out,
        "| surface | submit → succeeded p50 / p95 / max | failed | peak RSS | {} |",
        STREAM_COUNTS
            .iter()
            .map(|n| format!("{n} streams: reached the end (refused, cut; seconds)"))
            .collect::<Vec<_>>()
            .join(" | ")
    )?;
    writeln!(
        out,
        "|---|---|---|---|{}",
        "---|".repeat(STREAM_COUNTS.len())
    )?;
    for f in figures {
        let streams: Vec<String> = f
            .streams
            .iter()
            .map(|s| {
                format!(
                    "{} of {} ({}, {}; {:.1} s)",
                    s.terminal,
                    s.streams,
                    s.refused,
                    s.cut,
                    s.elapsed.as_secs_f64()
                )
            })
            .collect();
        writeln!(
            out,
            "| {} | {:.1} / {:.1} / {:.1} ms | {} | {:.1} MiB | {} |",
            f.name,
            ms(f.latency.p50),
            ms(f.latency.p95),
            ms(f.latency.max),
            f.failed,
            f.peak_rss_kib as f64 / 1024.0,
            streams.join(" | ")
        )?;
    }
    if figures.len() < 2 {
        writeln!(
            out,
            "\n(comfy-api-proxy was not found on PATH: `pip install comfy-api-proxy` to compare.)"
        )?;
    }
    Ok(())
}
