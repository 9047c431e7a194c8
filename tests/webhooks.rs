//! Webhooks through the real gateway and the simulator, received by an in-process HTTP receiver:
//! signatures a Standard Webhooks verifier accepts, retries with a stable `webhook-id`,
//! deliveries that survive a restart, jobs that never wait for a webhook, event selection, the
//! spool's late `complete`, and the checks on targets.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use crossbeam_channel::{Receiver, Sender};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use comfyui_gateway::app::App;
use comfyui_gateway::webhook::{AttemptOutcome, AttemptReport};
use common::gateway_process::free_port;
use common::harness::{Harness, Options, TestDir, small_txt2img};

/// The Standard Webhooks specification's example secret.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// How long any one wait in these tests may take.
const WAIT: Duration = Duration::from_secs(20);

/// One webhook request as the receiver got it.
#[derive(Debug, Clone)]
struct Hook {
    path: String,
    id: String,
    timestamp: String,
    signature: String,
    content_type: String,
    body: String,
}

impl Hook {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("the body is JSON")
    }

    fn kind(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_string()
    }

    /// Checks the signature as a Standard Webhooks verifier does, with no help from the gateway's
    /// code: HMAC-SHA256 keyed with the base64-decoded secret over `id.timestamp.body`, and a
    /// timestamp within five minutes of now.
    fn assert_verified(&self) {
        let key = STANDARD
            .decode(SECRET.trim_start_matches("whsec_"))
            .expect("base64 secret");
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
        mac.update(format!("{}.{}.{}", self.id, self.timestamp, self.body).as_bytes());
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        let offered: Vec<&str> = self.signature.split(' ').collect();
        assert!(
            offered.contains(&expected.as_str()),
            "signature {:?} does not verify (expected {expected})",
            self.signature
        );
        let sent: u64 = self.timestamp.parse().expect("integer webhook-timestamp");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!(sent.abs_diff(now) <= 300, "timestamp {sent} vs now {now}");
        assert_eq!(self.content_type, "application/json");
        assert!(
            self.id.starts_with("msg_") && !self.id.contains('.'),
            "{}",
            self.id
        );
    }
}

/// A webhook receiver on 127.0.0.1: answers each request with the next scripted status (200
/// once the script is used up), records it, and hangs up (`Connection: close`). Written on a
/// plain listener, one thread per connection, so that simultaneous deliveries are all served.
struct HookReceiver {
    addr: SocketAddr,
    hooks: Receiver<Hook>,
    script: Arc<Mutex<VecDeque<u16>>>,
    stop: Arc<AtomicBool>,
}

impl HookReceiver {
    fn start() -> HookReceiver {
        HookReceiver::on(TcpListener::bind("127.0.0.1:0").expect("binds"))
    }

    fn on(listener: TcpListener) -> HookReceiver {
        let addr = listener.local_addr().expect("address");
        let (tx, hooks) = crossbeam_channel::unbounded();
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (script_c, stop_c) = (Arc::clone(&script), Arc::clone(&stop));
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop_c.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let (tx, script) = (tx.clone(), Arc::clone(&script_c));
                thread::spawn(move || serve_one(stream, &tx, &script));
            }
        });
        HookReceiver {
            addr,
            hooks,
            script,
            stop,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn answer_next_with(&self, statuses: &[u16]) {
        self.script.lock().expect("script").extend(statuses);
    }

    fn next(&self) -> Hook {
        self.hooks
            .recv_timeout(WAIT)
            .expect("a webhook arrives in time")
    }
}

impl Drop for HookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop so it sees `stop`
    }
}

fn serve_one(stream: TcpStream, hooks: &Sender<Hook>, script: &Mutex<VecDeque<u16>>) {
    let _ = stream.set_read_timeout(Some(WAIT));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return; // a wake-up connection
    }
    let path = line.split(' ').nth(1).unwrap_or_default().to_string();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let length: usize = header("content-length").parse().unwrap_or(0);
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let status = script.lock().expect("script").pop_front().unwrap_or(200);
    let hook = Hook {
        path,
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        content_type: header("content-type"),
        body: String::from_utf8(body).expect("UTF-8 body"),
    };
    let mut stream = reader.into_inner();
    let _ = write!(
        stream,
        "HTTP/1.1 {status} Scripted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = stream.flush();
    let _ = hooks.send(hook);
}

/// Retries in milliseconds instead of seconds.
fn fast_retries(app: &mut App) {
    let options = &mut app.webhooks.options;
    options.first_retry = Duration::from_millis(20);
    options.max_delay = Duration::from_millis(100);
    options.connect_timeout = Duration::from_secs(2);
    options.request_timeout = Duration::from_secs(5);
}

fn signed(vars: Vec<(&'static str, String)>, tweak: fn(&mut App)) -> Harness {
    let mut vars = vars;
    vars.push(("WEBHOOK_SECRET", SECRET.to_string()));
    Harness::with(Options {
        vars,
        tweak,
        ..Options::default()
    })
}

fn with_webhook(mut body: Value, webhook: Value) -> Value {
    body["webhook"] = webhook;
    body
}

fn next_report(reports: &Receiver<AttemptReport>) -> AttemptReport {
    reports.recv_timeout(WAIT).expect("an attempt is reported")
}

fn metric(h: &Harness, name: &str) -> u64 {
    let (_, bytes) = h.get_bytes(&h.url("/metrics"));
    let text = String::from_utf8(bytes).expect("UTF-8 metrics");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

fn pending_files(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("webhooks"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|name| name.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn webhooks_carry_the_sse_data_and_a_signature_any_verifier_accepts() {
    let receiver = HookReceiver::start();
    let h = signed(vec![], fast_retries);
    let request = with_webhook(
        small_txt2img("signed"),
        json!({"url": receiver.url("/hooks?token=abc")}),
    );
    let mut stream = h.generate_stream(&request);
    let events = stream.until_terminal();
    let queued = receiver.next();
    let complete = receiver.next();
    for hook in [&queued, &complete] {
        hook.assert_verified();
        assert_eq!(hook.path, "/hooks?token=abc");
    }
    assert_ne!(queued.id, complete.id, "one webhook-id per delivery");
    // The body is the SSE event's data plus `type`.
    for (hook, name) in [(&queued, "queued"), (&complete, "complete")] {
        let sse = events
            .iter()
            .find(|e| e.event == name)
            .expect("the SSE event");
        let mut body = hook.json();
        assert_eq!(body["type"], name);
        body.as_object_mut().expect("object").remove("type");
        assert_eq!(body, sse.data, "{name}");
        assert!(body["job_id"].is_string());
    }
    assert!(complete.json()["images"][0]["url"].is_string());
}

#[test]
fn a_failed_delivery_is_retried_with_the_same_webhook_id() {
    let receiver = HookReceiver::start();
    receiver.answer_next_with(&[500]);
    let h = signed(vec![], fast_retries);
    let reports = h.app.webhooks.observe();
    let request = with_webhook(
        small_txt2img("retried"),
        json!({"url": receiver.url("/in"), "events": ["complete"]}),
    );
    let (status, _) = h.post_json("/generate", &request);
    assert_eq!(status, 200);
    let first = receiver.next();
    let second = receiver.next();
    assert_eq!(first.id, second.id, "webhook-id is stable across retries");
    assert_eq!(first.body, second.body);
    first.assert_verified();
    second.assert_verified();
    let outcomes: Vec<_> = [next_report(&reports), next_report(&reports)]
        .iter()
        .map(|r| (r.status, r.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            (Some(500), AttemptOutcome::WillRetry),
            (Some(200), AttemptOutcome::Delivered)
        ]
    );
    assert_eq!(metric(&h, "comfyui_gateway_webhook_retries_total"), 1);
    assert_eq!(metric(&h, "comfyui_gateway_webhook_deliveries_total"), 1);
    assert_eq!(metric(&h, "comfyui_gateway_webhook_pending"), 0);
    assert!(
        pending_files(h.dir.path()).is_empty(),
        "delivered: not kept"
    );
}

#[test]
fn a_receiver_4xx_is_retried_but_410_gone_stops_the_delivery_at_once() {
    let receiver = HookReceiver::start();
    // A 400 may be a receiver's passing bug: retried. A 410 says "never again": given up,
    // though the retry window is far from over.
    receiver.answer_next_with(&[400, 410]);
    let h = signed(vec![], fast_retries);
    let reports = h.app.webhooks.observe();
    let request = with_webhook(
        small_txt2img("gone"),
        json!({"url": receiver.url("/in"), "events": ["complete"]}),
    );
    let (status, _) = h.post_json("/generate", &request);
    assert_eq!(status, 200);
    let first = receiver.next();
    let second = receiver.next();
    assert_eq!(first.id, second.id);
    let outcomes: Vec<_> = [next_report(&reports), next_report(&reports)]
        .iter()
        .map(|r| (r.status, r.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            (Some(400), AttemptOutcome::WillRetry),
            (Some(410), AttemptOutcome::GaveUp)
        ]
    );
    assert_eq!(metric(&h, "comfyui_gateway_webhook_retries_total"), 1);
    assert_eq!(metric(&h, "comfyui_gateway_webhook_give_ups_total"), 1);
    assert_eq!(metric(&h, "comfyui_gateway_webhook_deliveries_total"), 0);
    assert_eq!(metric(&h, "comfyui_gateway_webhook_pending"), 0);
    assert!(pending_files(h.dir.path()).is_empty(), "given up: not kept");
}

#[test]
fn any_2xx_delivers_and_is_reported_as_answered() {
    let receiver = HookReceiver::start();
    receiver.answer_next_with(&[204]);
    let h = signed(vec![], fast_retries);
    let reports = h.app.webhooks.observe();
    let request = with_webhook(
        small_txt2img("no content"),
        json!({"url": receiver.url("/in"), "events": ["complete"]}),
    );
    let (status, _) = h.post_json("/generate", &request);
    assert_eq!(status, 200);
    receiver.next().assert_verified();
    let report = next_report(&reports);
    assert_eq!(
        (report.status, report.outcome),
        (Some(204), AttemptOutcome::Delivered)
    );
    assert_eq!(metric(&h, "comfyui_gateway_webhook_deliveries_total"), 1);
    assert_eq!(metric(&h, "comfyui_gateway_webhook_retries_total"), 0);
}

/// The second gateway's observer, handed out of its `tweak` (a plain function).
static RESTARTED: Mutex<Option<Receiver<AttemptReport>>> = Mutex::new(None);

#[test]
fn pending_deliveries_survive_a_restart_and_keep_their_ids() {
    let data = TestDir::new();
    // Nothing listens there for a moment: the test then starts its receiver there.
    let receiver_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let url = format!("http://{receiver_addr}/after-restart");
    let vars = || {
        vec![
            ("DATA_DIR", data.path().display().to_string()),
            ("WEBHOOK_URL", url.clone()),
        ]
    };

    // First run: the receiver is down; each delivery fails once and waits an hour to retry.
    let first = signed(vars(), |app| {
        app.webhooks.options.first_retry = Duration::from_secs(3600);
    });
    let reports = first.app.webhooks.observe();
    let (status, result) = first.post_json("/generate", &small_txt2img("restart"));
    assert_eq!(status, 200, "{result}");
    let mut ids = HashSet::new();
    for _ in 0..2 {
        let report = next_report(&reports);
        assert_eq!(report.outcome, AttemptOutcome::WillRetry);
        assert_eq!(report.status, None, "nobody answered");
        ids.insert(report.webhook_id);
    }
    assert_eq!(
        pending_files(data.path()).len(),
        2,
        "queued and complete kept"
    );
    drop(first);

    // Second run on the same DATA_DIR, with the receiver up: both are delivered.
    let receiver = HookReceiver::on(TcpListener::bind(receiver_addr).expect("the port is free"));
    let second = signed(vars(), |app| {
        fast_retries(app);
        *RESTARTED.lock().expect("lock") = Some(app.webhooks.observe());
    });
    let hooks = [receiver.next(), receiver.next()];
    let received: HashSet<String> = hooks.iter().map(|h| h.id.clone()).collect();
    assert_eq!(received, ids, "the same webhook-ids as before the restart");
    let kinds: HashSet<String> = hooks.iter().map(Hook::kind).collect();
    assert_eq!(kinds, HashSet::from(["queued".into(), "complete".into()]));
    for hook in &hooks {
        hook.assert_verified();
        assert_eq!(hook.json()["job_id"], result["job_id"]);
    }
    let reports = RESTARTED.lock().expect("lock").take().expect("observer");
    for _ in 0..2 {
        assert_eq!(next_report(&reports).outcome, AttemptOutcome::Delivered);
    }
    assert!(
        pending_files(data.path()).is_empty(),
        "delivered: forgotten"
    );
    drop(second);
}

/// The observer of the gateway that resumes undeliverable webhooks, handed out of its `tweak`.
static RESUMED: Mutex<Option<Receiver<AttemptReport>>> = Mutex::new(None);

#[test]
fn resumed_deliveries_that_can_never_succeed_are_given_up_at_once() {
    let data = TestDir::new();
    let pending = data.path().join("webhooks");
    std::fs::create_dir_all(&pending).expect("writable");
    // Left by an earlier run under other settings: a host no longer allowed, a broken URL.
    for (id, url) in [
        ("msg_disallowed", "http://elsewhere.example/in"),
        ("msg_broken", "not a url"),
    ] {
        let delivery = json!({
            "id": id, "url": url, "event": "complete", "job_id": "j",
            "body": r#"{"job_id":"j","type":"complete"}"#,
            "created_unix": SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs(),
        });
        std::fs::write(pending.join(format!("{id}.json")), delivery.to_string()).expect("writable");
    }
    let h = signed(
        vec![
            ("DATA_DIR", data.path().display().to_string()),
            ("WEBHOOK_ALLOWED_HOSTS", "127.0.0.1".into()),
        ],
        |app| {
            fast_retries(app);
            *RESUMED.lock().expect("lock") = Some(app.webhooks.observe());
        },
    );
    let reports = RESUMED.lock().expect("lock").take().expect("observer");
    let mut given_up: Vec<String> = (0..2)
        .map(|_| {
            let report = next_report(&reports);
            assert_eq!(report.outcome, AttemptOutcome::GaveUp, "{report:?}");
            report.webhook_id
        })
        .collect();
    given_up.sort();
    assert_eq!(given_up, ["msg_broken", "msg_disallowed"]);
    assert_eq!(metric(&h, "comfyui_gateway_webhook_retries_total"), 0);
    assert_eq!(metric(&h, "comfyui_gateway_webhook_pending"), 0);
    assert!(pending_files(data.path()).is_empty(), "given up: not kept");
}

#[test]
fn a_webhook_that_never_answers_does_not_hold_up_the_job() {
    // Accepts connections (the backlog does) but never reads or answers them.
    let silent = TcpListener::bind("127.0.0.1:0").expect("binds");
    let silent_url = format!("http://{}/never", silent.local_addr().expect("addr"));
    let h = signed(vec![], |app| {
        fast_retries(app);
        app.webhooks.options.request_timeout = Duration::from_secs(60);
        app.webhooks.options.retry_window = Duration::ZERO; // one attempt, then give up
    });
    let reports = h.app.webhooks.observe();
    let request = with_webhook(
        small_txt2img("unheard"),
        json!({"url": silent_url, "events": ["queued", "complete"]}),
    );
    let (status, result) = h.post_json("/generate", &request);
    assert_eq!(status, 200, "{result}");
    assert!(result["images"][0]["url"].is_string());
    let (_, job) = h.get_json(&format!("/jobs/{}", result["job_id"].as_str().expect("id")));
    assert_eq!(job["state"], "completed");
    assert!(
        reports.try_recv().is_err(),
        "the job ended while its first webhook was still waiting for an answer"
    );
    // Both are on disk meanwhile (what a shutdown waits for): a restart would resume them.
    assert!(h.app.webhooks.flush(WAIT), "written to DATA_DIR/webhooks");
    assert_eq!(pending_files(h.dir.path()).len(), 2);

    // Closing the listener resets the waiting connection: that attempt fails, and so does the
    // next one (connection refused). With no retry window left, both are given up.
    drop(silent);
    for _ in 0..2 {
        let report = next_report(&reports);
        assert_eq!(
            (report.status, report.outcome),
            (None, AttemptOutcome::GaveUp)
        );
    }
    assert_eq!(metric(&h, "comfyui_gateway_webhook_give_ups_total"), 2);
    assert_eq!(metric(&h, "comfyui_gateway_webhook_pending"), 0);
    assert!(pending_files(h.dir.path()).is_empty(), "given up: not kept");
}

#[test]
fn progress_is_sent_only_when_asked_and_at_most_once_per_tick() {
    let receiver = HookReceiver::start();
    let mut options = Options::step_ms(40);
    options.vars = vec![("WEBHOOK_SECRET", SECRET.to_string())];
    options.tweak = fast_retries;
    let h = Harness::with(options);
    let mut body = small_txt2img("progress");
    body["steps"] = json!(10);

    // Default events: queued then complete, and nothing between them.
    let request = with_webhook(body.clone(), json!({"url": receiver.url("/default")}));
    let (status, _) = h.post_json("/generate", &request);
    assert_eq!(status, 200);
    assert_eq!(receiver.next().kind(), "queued");
    assert_eq!(
        receiver.next().kind(),
        "complete",
        "no progress unless asked"
    );

    // Asked for progress (and complete): one per tick, each an SSE progress event's data.
    body["prompt"] = json!("progress, not cached"); // a new graph, so ComfyUI runs it again
    let request = with_webhook(
        body,
        json!({"url": receiver.url("/progress"), "events": ["progress", "complete"]}),
    );
    let (status, result) = h.post_json("/generate", &request);
    assert_eq!(status, 200);
    let job_id = result["job_id"].as_str().expect("id").to_string();
    let mut progress = Vec::new();
    loop {
        let hook = receiver.next();
        hook.assert_verified();
        let mut data = hook.json();
        let kind = hook.kind();
        data.as_object_mut().expect("object").remove("type");
        match kind.as_str() {
            "progress" => progress.push(data),
            "complete" => break,
            other => panic!("{other} was not asked for"),
        }
    }
    let ticks: Vec<Value> = h
        .get_stream(&format!("/jobs/{job_id}/events"), &[])
        .until_terminal()
        .into_iter()
        .filter(|e| e.event == "progress")
        .map(|e| e.data)
        .collect();
    assert!(
        !progress.is_empty(),
        "ticks happened: {} of them",
        ticks.len()
    );
    // A replay keeps only the newest tick: it is the last webhook, and the webhooks before it
    // were one per tick, in order.
    assert_eq!(ticks.len(), 1, "{ticks:?}");
    assert_eq!(
        progress.last(),
        ticks.last(),
        "the newest tick was delivered"
    );
    let elapsed: Vec<u64> = progress
        .iter()
        .filter_map(|p| p["elapsed_ms"].as_u64())
        .collect();
    assert!(
        elapsed.windows(2).all(|w| w[0] < w[1]),
        "one webhook per tick, in order: {elapsed:?}"
    );
}

#[test]
fn a_job_completed_from_the_spool_sends_complete_then() {
    let receiver = HookReceiver::start();
    let h = Harness::with(Options {
        supabase: true,
        vars: vec![("WEBHOOK_SECRET", SECRET.to_string())],
        tweak: fast_retries,
        ..Options::default()
    });
    let fake = h.supabase.as_ref().expect("fake");
    fake.set_down(true);
    let request = with_webhook(
        small_txt2img("outage"),
        json!({"url": receiver.url("/in"), "events": ["complete", "error"]}),
    );
    let (status, answer) = h.post_json("/generate", &request);
    assert_eq!(status, 502, "{answer}");
    let failed = receiver.next();
    assert_eq!(failed.kind(), "error");
    assert_eq!(failed.json()["code"], "storage_failed");

    fake.set_down(false);
    assert_eq!(h.app.flush_spool(), 1);
    let complete = receiver.next();
    complete.assert_verified();
    let body = complete.json();
    assert_eq!(body["type"], "complete");
    assert_eq!(body["job_id"], answer["error"]["details"]["job_id"]);
    assert_eq!(body["recovered_from"]["code"], "storage_failed");
    assert!(body["images"][0]["url"].is_string());
}

#[test]
fn webhook_url_is_the_default_and_a_request_target_replaces_it() {
    let receiver = HookReceiver::start();
    let h = signed(
        vec![("WEBHOOK_URL", receiver.url("/default"))],
        fast_retries,
    );
    let (status, first) = h.post_json("/generate", &small_txt2img("default"));
    assert_eq!(status, 200);
    let hooks = [receiver.next(), receiver.next()];
    for hook in &hooks {
        assert_eq!(
            (hook.path.as_str(), &hook.json()["job_id"]),
            ("/default", &first["job_id"])
        );
    }
    let request = with_webhook(
        small_txt2img("own"),
        json!({"url": receiver.url("/own"), "events": ["complete"]}),
    );
    let (status, second) = h.post_json("/generate", &request);
    assert_eq!(status, 200);
    // One job's webhooks leave in order, so a `queued` sent to the default would come first.
    let hook = receiver.next();
    assert_eq!(
        (hook.path.as_str(), hook.kind().as_str()),
        ("/own", "complete")
    );
    assert_eq!(hook.json()["job_id"], second["job_id"]);
}

#[test]
fn webhook_targets_are_checked_before_anything_is_queued() {
    let receiver = HookReceiver::start();
    let allowed = format!("hooks.example.com,127.0.0.1:{}", receiver.addr.port());
    let h = signed(vec![("WEBHOOK_ALLOWED_HOSTS", allowed)], fast_retries);
    let refused = |webhook: Value, field: &str| {
        let (status, answer) = h.post_json("/jobs", &with_webhook(small_txt2img("x"), webhook));
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "invalid_params");
        assert!(
            answer["error"]["details"]["fields"][field].is_string(),
            "{field}: {answer}"
        );
    };
    refused(json!({"url": "ftp://hooks.example.com/in"}), "webhook.url");
    refused(json!({"url": "hooks.example.com/in"}), "webhook.url");
    refused(
        json!({"url": "https://elsewhere.example.com/in"}),
        "webhook.url",
    );
    refused(
        json!({"url": format!("http://127.0.0.1:{}/", free_port())}),
        "webhook.url",
    );
    refused(
        json!({"url": receiver.url("/"), "events": ["finished"]}),
        "webhook.events",
    );
    refused(
        json!({"url": receiver.url("/"), "secret": "mine"}),
        "webhook.secret",
    );
    refused(json!(["not", "an", "object"]), "webhook");
    assert!(
        h.sim.requests().iter().all(|r| r.path != "/prompt"),
        "nothing queued"
    );

    let request = with_webhook(
        small_txt2img("allowed"),
        json!({"url": receiver.url("/ok"), "events": ["queued"]}),
    );
    let (status, _) = h.post_json("/jobs", &request);
    assert_eq!(status, 202);
    assert_eq!(receiver.next().path, "/ok");
}

#[test]
fn without_a_secret_a_webhook_is_refused_rather_than_sent_unsigned() {
    let h = Harness::start();
    let request = with_webhook(
        small_txt2img("unsigned"),
        json!({"url": "http://127.0.0.1:9/in"}),
    );
    let (status, answer) = h.post_json("/generate", &request);
    assert_eq!(status, 400, "{answer}");
    let reason = answer["error"]["details"]["fields"]["webhook"]
        .as_str()
        .expect("names the webhook field");
    assert!(reason.contains("WEBHOOK_SECRET"), "{reason}");
}

/// Verifies with the specification's own Python library (`pip install standardwebhooks`), as a
/// receiver would, with no code of ours. Skipped, loudly, where it is not installed.
#[test]
fn the_official_python_library_accepts_the_webhooks() {
    let library = Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .stderr(Stdio::null())
        .status();
    if !library.is_ok_and(|status| status.success()) {
        eprintln!(
            "SKIPPED the_official_python_library_accepts_the_webhooks: needs python3 and \
             `pip install standardwebhooks`"
        );
        return;
    }
    let receiver = HookReceiver::start();
    let h = signed(vec![], fast_retries);
    let request = with_webhook(small_txt2img("official"), json!({"url": receiver.url("/")}));
    let (status, _) = h.post_json("/generate", &request);
    assert_eq!(status, 200);
    let hooks: Vec<Value> = [receiver.next(), receiver.next()]
        .iter()
        .map(|hook| {
            json!({
                "body": hook.body,
                "headers": {
                    "webhook-id": hook.id,
                    "webhook-timestamp": hook.timestamp,
                    "webhook-signature": hook.signature,
                },
            })
        })
        .collect();
    // Each genuine webhook must verify; the same with one byte of the body changed must not.
    const VERIFY: &str = r#"
import json, sys
from standardwebhooks import Webhook, WebhookVerificationError
secret, hooks = sys.argv[1], json.loads(sys.stdin.read())
for hook in hooks:
    Webhook(secret).verify(hook["body"], hook["headers"])
    try:
        Webhook(secret).verify(hook["body"].replace("}", " }", 1), hook["headers"])
        sys.exit("a tampered body was accepted")
    except WebhookVerificationError:
        pass
print("verified", len(hooks))
"#;
    let mut child = Command::new("python3")
        .args(["-c", VERIFY, SECRET])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(Value::Array(hooks).to_string().as_bytes())
        .expect("hooks written");
    let output = child.wait_with_output().expect("python3 ends");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.trim() == "verified 2",
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_receiver_that_never_answers_delays_only_its_own_webhooks() {
    let silent = TcpListener::bind("127.0.0.1:0").expect("binds");
    let silent_url = format!("http://{}/never", silent.local_addr().expect("addr"));
    let receiver = HookReceiver::start();
    let h = signed(vec![], |app| {
        fast_retries(app);
        app.webhooks.options.request_timeout = Duration::from_secs(60);
    });
    // Many jobs for the silent receiver first: with deliveries spread over the threads by job,
    // every thread would wait a minute on it.
    for n in 0..16 {
        let request = with_webhook(
            small_txt2img(&format!("unheard {n}")),
            json!({"url": silent_url, "events": ["queued"]}),
        );
        assert_eq!(h.post_json("/jobs", &request).0, 202);
    }
    let request = with_webhook(
        small_txt2img("heard"),
        json!({"url": receiver.url("/fast"), "events": ["queued"]}),
    );
    assert_eq!(h.post_json("/jobs", &request).0, 202);
    // WAIT (20 s) is far less than the minute an attempt on the silent receiver may take.
    let hook = receiver.next();
    assert_eq!(
        (hook.path.as_str(), hook.kind().as_str()),
        ("/fast", "queued")
    );
    drop(silent); // resets the waiting attempt, so the threads end promptly
}

#[test]
fn progress_webhooks_of_waiting_jobs_collapse_to_one_per_job() {
    let silent = TcpListener::bind("127.0.0.1:0").expect("binds");
    let silent_url = format!("http://{}/never", silent.local_addr().expect("addr"));
    let mut options = Options::step_ms(10);
    options.vars = vec![
        ("WEBHOOK_SECRET", SECRET.to_string()),
        ("PROGRESS_INTERVAL_MS", "50".to_string()),
    ];
    options.tweak = |app| {
        fast_retries(app);
        app.webhooks.options.request_timeout = Duration::from_secs(60);
    };
    let h = Harness::with(options);
    h.sim.pause();
    let jobs = 40;
    let mut ids = Vec::new();
    for n in 0..jobs {
        let request = with_webhook(
            small_txt2img(&format!("waiting {n}")),
            json!({"url": silent_url, "events": ["progress"]}),
        );
        let (status, created) = h.post_json("/jobs", &request);
        assert_eq!(status, 202, "{created}");
        ids.push(created["job_id"].as_str().expect("id").to_string());
    }
    // Every waiting job ticks every 50 ms; the receiver takes none of them.
    let last = ids.last().expect("jobs");
    let mut events = h.get_stream(&format!("/jobs/{last}/events"), &[]);
    let mut ticks = 0;
    while ticks < 20 {
        let event = events.next_event().expect("the job ticks");
        if event.event == "progress" {
            ticks += 1;
        }
    }
    // One per job, and the one being posted (the receiver never answers it).
    let queued = h.app.webhooks.queued();
    assert!(
        queued <= jobs + 1,
        "{queued} deliveries wait for {jobs} jobs after 20 ticks each: one per job at most"
    );
    assert!(
        pending_files(h.dir.path()).is_empty(),
        "progress is not written to disk"
    );
    h.sim.resume();
    drop(silent);
}
