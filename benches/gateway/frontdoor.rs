//! Sections 18 and 19 (issue 16 items 9 and 7): what the durable write of a job record costs a
//! submission, and the gateway's memory while 10,000 waiting jobs ask for `progress` webhooks a
//! slow receiver takes.
//!
//! A child of the queue sections' module, so it uses their gateway process and helpers.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use super::{GatewayProcess, mib, queue_job, queue_jobs, quiet_sim, txt2img_request};
use crate::{BenchResult, Summary, agent, ms, note, secs};

/// Saves timed per way of writing a job record.
const SAVES: usize = 300;
/// Submissions timed end to end.
const SUBMISSIONS: usize = 300;

/// Section 18: the cost of `fsync`ing every job record.
pub struct DurableCost {
    record_bytes: usize,
    /// A temporary file renamed over the record, not synced: how records were written before.
    renamed: Summary,
    /// `crate::durable::write_bytes`: synced, renamed, the folder synced.
    durable: Summary,
    /// `POST /jobs` answered `202`, one client, the job waiting behind a slow render.
    submit: Summary,
}

/// Times both ways of writing a job-record-sized file in a scratch folder on the machine's temp
/// disk, then `POST /jobs` against a gateway process whose `DATA_DIR` is on the same disk.
pub fn bench_durable() -> BenchResult<DurableCost> {
    note("18. durable job records");
    let dir = std::env::temp_dir().join(format!(
        "comfyui-gateway-bench-durable-{}",
        comfyui_gateway::ids::new_uuid()
    ));
    std::fs::create_dir_all(&dir)?;
    // A waiting txt2img job's record is about this size.
    let record = vec![b'x'; 2048];
    let path = dir.join("job.json");
    let mut renamed = Vec::with_capacity(SAVES);
    for n in 0..SAVES {
        let started = Instant::now();
        let temp = dir.join(format!(".tmp-{n}.json"));
        std::fs::write(&temp, &record)?;
        std::fs::rename(&temp, &path)?;
        renamed.push(started.elapsed());
    }
    let mut durable = Vec::with_capacity(SAVES);
    for _ in 0..SAVES {
        let started = Instant::now();
        comfyui_gateway::durable::write_bytes(&path, &record)?;
        durable.push(started.elapsed());
    }
    let _ = std::fs::remove_dir_all(&dir);

    let sim = quiet_sim(Duration::from_secs(30))?;
    let gateway = GatewayProcess::start(&[sim.url()], &[("MAX_QUEUED_JOBS", "20000")])?;
    let client = agent();
    let mut submit = Vec::with_capacity(SUBMISSIONS);
    for _ in 0..SUBMISSIONS {
        let body = txt2img_request(4, 64);
        let started = Instant::now();
        queue_job(&client, &gateway.url(), &body)?;
        submit.push(started.elapsed());
    }
    Ok(DurableCost {
        record_bytes: record.len(),
        renamed: Summary::of(renamed),
        durable: Summary::of(durable),
        submit: Summary::of(submit),
    })
}

/// Prints section 18.
pub fn print_durable(out: &mut String, cost: &DurableCost) -> BenchResult<()> {
    writeln!(
        out,
        "\n18. Durable job records: a {} B record written {SAVES} times in the temp folder; \
         then {SUBMISSIONS} POST /jobs (one client, jobs waiting behind a slow render)",
        cost.record_bytes
    )?;
    writeln!(
        out,
        "{:<44} {:>9} {:>9} {:>9} {:>9}",
        "", "p50 ms", "p95 ms", "p99 ms", "max ms"
    )?;
    for (what, summary) in [
        ("save: temporary + rename (before)", &cost.renamed),
        ("save: crate::durable (fsync file + folder)", &cost.durable),
        ("POST /jobs -> 202, with the durable save", &cost.submit),
    ] {
        writeln!(
            out,
            "{what:<44} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            ms(summary.p50),
            ms(summary.p95),
            ms(summary.p99),
            ms(summary.max)
        )?;
    }
    Ok(())
}

/// How many jobs wait, each asking for `progress` webhooks.
const WEBHOOK_JOBS: usize = 10_000;
/// How long the gateway's memory is watched once they all wait.
const WEBHOOK_WATCH: Duration = Duration::from_secs(120);
/// How often it is sampled.
const WEBHOOK_SAMPLE: Duration = Duration::from_secs(15);
/// How long the slow receiver takes to answer each webhook (it answers one at a time).
const RECEIVER_DELAY: Duration = Duration::from_millis(50);

/// Section 19: memory while many jobs ask for `progress` webhooks a slow receiver takes.
pub struct WebhookMemory {
    idle_mib: f64,
    submitted_in: Duration,
    /// (seconds since all were queued, RSS MiB)
    samples: Vec<(f64, f64)>,
    peak_mib: f64,
    received: u64,
}

/// A receiver that answers one webhook at a time, each after [`RECEIVER_DELAY`].
struct SlowReceiver {
    url: String,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

impl SlowReceiver {
    fn start() -> BenchResult<SlowReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopping) = (Arc::clone(&received), Arc::clone(&stop));
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = stream {
                    if answer_slowly(stream) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Ok(SlowReceiver {
            url: format!("http://{addr}/hooks"),
            received,
            stop,
            addr,
        })
    }
}

impl Drop for SlowReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads one request, waits, answers `200` and hangs up; whether a request was read.
fn answer_slowly(stream: TcpStream) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    let mut first = true;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return false;
        }
        if first && line.trim().is_empty() {
            return false;
        }
        first = false;
        let line = line.trim();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return false;
    }
    thread::sleep(RECEIVER_DELAY);
    let mut stream = reader.into_inner();
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    true
}

/// Queues [`WEBHOOK_JOBS`] jobs behind one slow render, each asking for `progress` webhooks to a
/// receiver that takes 20 a second, and samples the gateway's RSS while they wait.
pub fn bench_webhooks() -> BenchResult<WebhookMemory> {
    note("19. progress webhooks of 10,000 waiting jobs");
    let receiver = SlowReceiver::start()?;
    let sim = quiet_sim(Duration::from_secs(600))?;
    let gateway = GatewayProcess::start(
        &[sim.url()],
        &[
            ("MAX_QUEUED_JOBS", "20000"),
            ("WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ],
    )?;
    let idle = gateway.status()?;
    let url = receiver.url.clone();
    let started = Instant::now();
    let (failed, first) = queue_jobs(&gateway.url(), 8, WEBHOOK_JOBS, &|| {
        let mut body = txt2img_request(4, 64);
        body["webhook"] = json!({"url": url, "events": ["progress"]});
        body
    });
    if failed > 0 {
        return Err(format!("{failed} submissions failed: {}", first.unwrap_or_default()).into());
    }
    let submitted_in = started.elapsed();
    let queued = Instant::now();
    let mut samples = Vec::new();
    let mut peak = 0.0f64;
    while queued.elapsed() < WEBHOOK_WATCH {
        thread::sleep(WEBHOOK_SAMPLE);
        let status = gateway.status()?;
        let rss = mib(status.rss_kib);
        peak = peak.max(mib(status.hwm_kib));
        samples.push((secs(queued.elapsed()), rss));
    }
    Ok(WebhookMemory {
        idle_mib: mib(idle.rss_kib),
        submitted_in,
        samples,
        peak_mib: peak,
        received: receiver.received.load(Ordering::Relaxed),
    })
}

/// Prints section 19.
pub fn print_webhooks(out: &mut String, memory: &WebhookMemory) -> BenchResult<()> {
    writeln!(
        out,
        "\n19. {WEBHOOK_JOBS} jobs waiting behind one slow render, each asking for progress \
         webhooks (a tick a second each) to one receiver answering one at a time in {} ms",
        RECEIVER_DELAY.as_millis()
    )?;
    writeln!(
        out,
        "gateway RSS idle {:.1} MiB; all {WEBHOOK_JOBS} queued in {:.1} s; peak {:.1} MiB; \
         the receiver got {} webhooks",
        memory.idle_mib,
        secs(memory.submitted_in),
        memory.peak_mib,
        memory.received
    )?;
    let line: Vec<String> = memory
        .samples
        .iter()
        .map(|(at, rss)| format!("{at:.0} s: {rss:.1}"))
        .collect();
    writeln!(out, "RSS MiB after queueing: {}", line.join(", "))?;
    Ok(())
}
