//! Comfy API v2 on the gateway's port, against the simulator: jobs end to end, the event
//! stream, errors in the contract's envelope, idempotency, cancel, priority, the queue limit,
//! `extra_data`, many streams at once, and `kill -9`. Every body and event is checked against
//! the contract's schemas (`common/v2_schema.rs`).

mod common;
#[path = "common/v2_schema.rs"]
mod v2_schema;

use comfyui_sim::{Failure, SimEvent};
use common::gateway_process::Gateway;
use common::harness::{Harness, Options, TestDir, agent};
use common::sse_client::{SseEvent, SseStream};
use common::wait_for;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use v2_schema::{assert_valid, assert_valid_event};

/// A tiny graph the simulator runs in a few milliseconds (no model files).
fn invert(color: u32) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "v2", "images": ["2", 0]}},
    })
}

/// Sends a request; answers the status, the headers asked for, and the JSON body.
fn call(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> (u16, Value, Vec<(String, String)>) {
    let url = format!("{base}{path}");
    let agent = agent();
    let response = match (method, body) {
        ("GET", _) => {
            let mut r = agent.get(&url);
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
        (_, body) => {
            let mut r = agent.post(&url).header("Content-Type", "application/json");
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.send(body.map(Value::to_string).unwrap_or_default().as_bytes())
        }
    };
    let mut response = response.expect("the gateway answers");
    let status = response.status().as_u16();
    let kept: Vec<(String, String)> = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let text = response.body_mut().read_to_string().expect("a body");
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("JSON ({e}): {text}"))
    };
    (status, json, kept)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn submit(h: &Harness, body: &Value) -> Value {
    let (status, job, _) = call(&h.url(""), "POST", "/api/v2/jobs", Some(body), &[]);
    assert_eq!(status, 201, "{job}");
    assert_valid("Job", &job);
    job
}

fn get_job(h: &Harness, id: &str) -> Value {
    let (status, job, _) = call(&h.url(""), "GET", &format!("/api/v2/jobs/{id}"), None, &[]);
    assert_eq!(status, 200, "{job}");
    assert_valid("Job", &job);
    job
}

/// Every event of a v2 stream up to its terminal status, each checked against its schema.
fn follow(addr: SocketAddr, id: &str) -> Vec<SseEvent> {
    follow_after(addr, id, || {})
}

/// Like [`follow`], calling `connected` once the stream's first event arrived.
fn follow_after(addr: SocketAddr, id: &str, connected: impl FnOnce()) -> Vec<SseEvent> {
    let mut stream = SseStream::open(addr, "GET", &format!("/api/v2/jobs/{id}/events"), None, &[]);
    assert_eq!(stream.status, 200);
    let mut events = Vec::new();
    let mut connected = Some(connected);
    while let Some(event) = stream.next_event() {
        assert!(event.id.is_none(), "v2 events carry no id: {event:?}");
        assert_valid_event(&event.event, &event.data);
        let end = event.event == "status"
            && matches!(
                event.data["status"].as_str(),
                Some("succeeded" | "failed" | "canceled" | "expired")
            );
        events.push(event);
        if let Some(connected) = connected.take() {
            connected();
        }
        if end {
            assert!(stream.ended(), "the stream ends after the terminal status");
            break;
        }
    }
    events
}

fn statuses(events: &[SseEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "status")
        .map(|e| e.data["status"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Polls `GET /api/v2/jobs/{id}` (bounded) until `done` holds.
fn poll_until(h: &Harness, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + common::EVENT_DEADLINE;
    loop {
        let job = get_job(h, id);
        if done(&job) {
            return job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited for {what}: {job:#}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_job_runs_end_to_end_and_every_answer_fits_the_contract() {
    let mut options = Options::step_ms(20);
    options.sim.send_previews = true;
    let h = Harness::with(options);
    let (status, health, _) = call(&h.url(""), "GET", "/api/v2/health", None, &[]);
    assert_eq!((status, health["status"].clone()), (200, json!("healthy")));

    // ComfyUI holds the job until the stream is open, so the stream sees it queued.
    h.sim.pause();
    let body = json!({"workflow": common::sampler_graph(40), "metadata": {"client": "acme", "run": "7"}, "priority": 3});
    let job = submit(&h, &body);
    let id = job["id"].as_str().expect("an id").to_string();
    assert_eq!(job["status"], "queued");
    assert_eq!(job["urls"]["events"], format!("/api/v2/jobs/{id}/events"));
    assert_eq!(job["metadata"], json!({"client": "acme", "run": "7"}));

    let events = follow_after(h.gateway.addr(), &id, || h.sim.resume());
    let seen = statuses(&events);
    assert_eq!(seen.first().map(String::as_str), Some("queued"), "{seen:?}");
    assert!(seen.contains(&"running".to_string()), "{seen:?}");
    assert_eq!(
        seen.last().map(String::as_str),
        Some("succeeded"),
        "{seen:?}"
    );
    let progress: Vec<&SseEvent> = events.iter().filter(|e| e.event == "progress").collect();
    assert!(!progress.is_empty(), "progress events");
    let last = &progress.last().expect("one").data;
    assert_eq!(
        (last["value"].clone(), last["nodes_done"].clone()),
        (json!(1.0), last["nodes_total"].clone())
    );
    assert!(
        progress
            .iter()
            .any(|e| e.data["steps"] == json!(40) && e.data["current_node_class"] == "KSampler"),
        "the sampler's steps are reported: {progress:?}"
    );
    assert!(
        events.iter().any(|e| e.event == "preview"),
        "previews are streamed"
    );
    let outputs: Vec<&SseEvent> = events.iter().filter(|e| e.event == "output").collect();
    assert_eq!(outputs.len(), 1, "one output event");

    let done = get_job(&h, &id);
    assert_eq!(done["status"], "succeeded");
    assert!(done["completed_at"].is_string() && done["started_at"].is_string());
    let output = &done["outputs"][0];
    assert_eq!(
        (output["type"].clone(), output["content_type"].clone()),
        (json!("image"), json!("image/png"))
    );
    let (status, bytes) = h.get_bytes(output["url"].as_str().expect("a url"));
    assert_eq!(status, 200);
    assert_eq!(
        bytes.len() as u64,
        output["size_bytes"].as_u64().expect("a size")
    );

    let (status, workflow, _) = call(
        &h.url(""),
        "GET",
        &format!("/api/v2/jobs/{id}/workflow"),
        None,
        &[],
    );
    assert_eq!(status, 200);
    assert_valid("JobWorkflow", &workflow);
    assert_eq!(workflow["workflow"], body["workflow"]);

    // A stream opened after the end gets the final status (and the outputs) at once.
    let late = follow(h.gateway.addr(), &id);
    assert_eq!(statuses(&late), ["succeeded"]);

    // Listing: labels filter, status filter, pages.
    let other = submit(
        &h,
        &json!({"workflow": invert(1), "metadata": {"client": "other"}}),
    );
    let (status, page, _) = call(
        &h.url(""),
        "GET",
        "/api/v2/jobs?metadata%5Bclient%5D=acme",
        None,
        &[],
    );
    assert_eq!(status, 200);
    assert_valid("JobList", &page);
    let ids: Vec<&str> = page["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["id"].as_str())
        .collect();
    assert_eq!(ids, [id.as_str()]);
    let (_, page, _) = call(&h.url(""), "GET", "/api/v2/jobs?limit=1", None, &[]);
    assert_valid("JobList", &page);
    assert_eq!(page["jobs"][0]["id"], other["id"], "newest first");
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let (_, second, _) = call(
        &h.url(""),
        "GET",
        &format!("/api/v2/jobs?limit=1&cursor={cursor}"),
        None,
        &[],
    );
    assert_eq!(second["jobs"][0]["id"], json!(id));
    assert!(
        second.get("next_cursor").is_none(),
        "the last page has no cursor: {second}"
    );
    let (_, page, _) = call(
        &h.url(""),
        "GET",
        "/api/v2/jobs?status=succeeded&metadata%5Brun%5D=7",
        None,
        &[],
    );
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(1));
}

#[test]
fn errors_use_the_contract_envelope_and_codes() {
    let h = Harness::with(Options {
        vars: vec![("API_KEYS", "k1".to_string())],
        ..Options::default()
    });
    let base = h.url("");
    let auth = [("Authorization", "Bearer k1")];
    let expect = |status: u16, code: &str, answer: (u16, Value, Vec<(String, String)>)| {
        assert_eq!(answer.0, status, "{}", answer.1);
        assert_valid("ErrorEnvelope", &answer.1);
        assert_eq!(answer.1["error"]["code"], code, "{}", answer.1);
        answer.1
    };
    // Health answers without a key; everything else needs it.
    assert_eq!(call(&base, "GET", "/api/v2/health", None, &[]).0, 200);
    expect(
        401,
        "unauthorized",
        call(&base, "GET", "/api/v2/jobs", None, &[]),
    );
    expect(
        401,
        "unauthorized",
        call(
            &base,
            "GET",
            "/api/v2/jobs",
            None,
            &[("Authorization", "Bearer nope")],
        ),
    );
    expect(
        404,
        "not_found",
        call(
            &base,
            "GET",
            "/api/v2/jobs/6b1c3f7e-0000-4000-8000-000000000000",
            None,
            &auth,
        ),
    );
    expect(
        404,
        "not_found",
        call(&base, "GET", "/api/v2/jobs/not-a-job/events", None, &auth),
    );
    expect(
        404,
        "not_found",
        call(&base, "GET", "/api/v2/nothing", None, &auth),
    );
    expect(
        405,
        "method_not_allowed",
        call(&base, "POST", "/api/v2/jobs/x", None, &auth),
    );
    let post = |body: Value| call(&base, "POST", "/api/v2/jobs", Some(&body), &auth);
    expect(400, "invalid_request", post(json!([1, 2])));
    expect(
        422,
        "workflow_format_ui",
        post(json!({"workflow": {"nodes": [], "links": [], "version": 0.4}})),
    );
    expect(422, "invalid_workflow", post(json!({"nope": 1})));
    let unknown = expect(
        422,
        "invalid_workflow",
        post(json!({"workflow": {
            "1": {"class_type": "NoSuchNode", "inputs": {}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
        }})),
    );
    assert_eq!(
        unknown["error"]["details"]["node_errors"]["1"][0]["reason"],
        "unknown_class"
    );
    let dangling = expect(
        422,
        "invalid_workflow",
        post(json!({"workflow": {
            "2": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "x"}},
        }})),
    );
    assert_eq!(
        dangling["error"]["details"]["node_errors"]["2"][0]["field"],
        "images"
    );
    let mut unplugged = invert(0);
    unplugged["2"]["inputs"] = json!({});
    let unplugged = expect(
        422,
        "invalid_workflow",
        post(json!({ "workflow": unplugged })),
    );
    let problem = &unplugged["error"]["details"]["node_errors"]["2"][0];
    assert_eq!(
        (problem["field"].clone(), problem["reason"].clone()),
        (json!("image"), json!("missing_input"))
    );
    let mut graph = invert(0);
    graph["1"]["inputs"]["color"] = json!({"__type": "core/ASSET", "info": {"id": "asset_nope"}});
    let missing = expect(422, "missing_asset", post(json!({"workflow": graph})));
    assert_eq!(
        missing["error"]["details"]["missing_ids"],
        json!(["asset_nope"])
    );
    expect(
        422,
        "metadata_invalid",
        post(json!({"workflow": invert(0), "metadata": {"k": 1}})),
    );
    expect(
        400,
        "invalid_request",
        post(json!({"workflow": invert(0), "priority": 1.5})),
    );
    expect(
        400,
        "invalid_request",
        post(json!({"workflow": invert(0), "webhook_url": "https://x"})),
    );
    expect(
        400,
        "invalid_cursor",
        call(&base, "GET", "/api/v2/jobs?cursor=forged", None, &auth),
    );
    expect(
        400,
        "invalid_request",
        call(&base, "GET", "/api/v2/jobs?limit=1000", None, &auth),
    );
    // None of the refusals made a job.
    assert_eq!(h.app.jobs.len(), 0);
}

#[test]
fn a_failed_node_is_a_failed_job_with_its_error() {
    let h = Harness::start();
    h.sim.fail_next(Failure::ExecutionError {
        node_id: Some("2".into()),
        exception_type: "RuntimeError".into(),
        message: "boom".into(),
    });
    h.sim.pause();
    let job = submit(&h, &json!({"workflow": invert(0)}));
    let id = job["id"].as_str().expect("id");
    let events = follow_after(h.gateway.addr(), id, || h.sim.resume());
    assert_eq!(statuses(&events).last().map(String::as_str), Some("failed"));
    assert!(
        events
            .iter()
            .any(|e| e.event == "log" && e.data["level"] == "error")
    );
    let failed = get_job(&h, id);
    assert_eq!(failed["error"]["code"], "node_execution_error");
    assert_eq!(failed["error"]["node_id"], "2");
    assert_eq!(failed["error"]["class_type"], "ImageInvert");
}

#[test]
fn idempotent_resubmission_replays_without_a_second_prompt() {
    let mut options = Options::default();
    options.sim.record_requests = true;
    let h = Harness::with(options);
    let base = h.url("");
    let body = json!({"workflow": invert(5)});
    let key = [("Idempotency-Key", "order-42")];
    let (status, first, headers) = call(&base, "POST", "/api/v2/jobs", Some(&body), &key);
    assert_eq!(status, 201, "{first}");
    assert_eq!(header(&headers, "Idempotency-Replayed"), None);
    let (status, again, headers) = call(&base, "POST", "/api/v2/jobs", Some(&body), &key);
    assert_eq!(status, 201, "{again}");
    assert_valid("Job", &again);
    assert_eq!(header(&headers, "Idempotency-Replayed"), Some("true"));
    assert_eq!(again["id"], first["id"]);
    let (status, reuse, _) = call(
        &base,
        "POST",
        "/api/v2/jobs",
        Some(&json!({"workflow": invert(6)})),
        &key,
    );
    assert_eq!(
        (status, reuse["error"]["code"].clone()),
        (422, json!("idempotency_key_reuse"))
    );
    let id = first["id"].as_str().expect("id");
    poll_until(&h, id, "the job to end", |j| j["status"] == "succeeded");
    let prompts = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.path == "/prompt")
        .count();
    assert_eq!(prompts, 1, "one prompt for two submissions");
    assert_eq!(h.app.jobs.len(), 1);
    // A refused submission leaves its key free.
    let key = [("Idempotency-Key", "refused-once")];
    let (status, _, _) = call(
        &base,
        "POST",
        "/api/v2/jobs",
        Some(&json!({"workflow": {}})),
        &key,
    );
    assert_eq!(status, 422);
    let (status, _, _) = call(&base, "POST", "/api/v2/jobs", Some(&body), &key);
    assert_eq!(status, 201);
}

#[test]
fn cancel_a_waiting_a_running_and_a_finished_job() {
    let mut options = Options::step_ms(30);
    options.vars = vec![("QUEUE_AHEAD", "0".to_string())];
    let h = Harness::with(options);
    let events = h.sim.events();
    let finished = submit(&h, &json!({"workflow": invert(0)}));
    let finished_id = finished["id"].as_str().expect("id").to_string();
    poll_until(&h, &finished_id, "the first job to end", |j| {
        j["status"] == "succeeded"
    });

    let running = submit(&h, &json!({"workflow": common::sampler_graph(200)}));
    let running_id = running["id"].as_str().expect("id").to_string();
    wait_for(&events, "the long job running", |e| {
        matches!(e, SimEvent::Step { .. })
    });
    let waiting = submit(&h, &json!({"workflow": invert(1)}));
    let waiting_id = waiting["id"].as_str().expect("id").to_string();

    let base = h.url("");
    let (status, canceled, _) = call(
        &base,
        "POST",
        &format!("/api/v2/jobs/{waiting_id}/cancel"),
        None,
        &[],
    );
    assert_eq!(status, 200);
    assert_valid("Job", &canceled);
    assert_eq!(canceled["status"], "canceled", "a waiting job ends at once");

    let (status, canceling, _) = call(
        &base,
        "POST",
        &format!("/api/v2/jobs/{running_id}/cancel"),
        None,
        &[],
    );
    assert_eq!(status, 200);
    assert_valid("Job", &canceling);
    assert!(
        matches!(canceling["status"].as_str(), Some("canceling" | "canceled")),
        "{canceling}"
    );
    let stream = follow(h.gateway.addr(), &running_id);
    assert_eq!(
        statuses(&stream).last().map(String::as_str),
        Some("canceled")
    );

    let (status, again, _) = call(
        &base,
        "POST",
        &format!("/api/v2/jobs/{finished_id}/cancel"),
        None,
        &[],
    );
    assert_eq!(
        (status, again["status"].clone()),
        (200, json!("succeeded")),
        "a no-op"
    );
    assert_eq!(
        again["outputs"][0]["id"],
        get_job(&h, &finished_id)["outputs"][0]["id"]
    );
}

#[test]
fn priority_orders_the_queue_and_a_full_queue_is_queue_full() {
    let mut options = Options::step_ms(5);
    options.vars = vec![
        ("QUEUE_AHEAD", "0".to_string()),
        ("MAX_QUEUED_JOBS", "2".to_string()),
    ];
    options.sim.record_requests = true;
    let h = Harness::with(options);
    h.sim.pause();
    let blocker = submit(&h, &json!({"workflow": invert(0)}));
    poll_until(
        &h,
        blocker["id"].as_str().expect("id"),
        "the first job on ComfyUI",
        |_| h.sim.requests().iter().any(|r| r.path == "/prompt"),
    );
    let low = submit(&h, &json!({"workflow": invert(1), "priority": -5}));
    let high = submit(&h, &json!({"workflow": invert(2), "priority": 10}));
    let (status, full, headers) = call(
        &h.url(""),
        "POST",
        "/api/v2/jobs",
        Some(&json!({"workflow": invert(3)})),
        &[],
    );
    assert_eq!(
        (status, full["error"]["code"].clone()),
        (429, json!("queue_full")),
        "{full}"
    );
    assert_valid("ErrorEnvelope", &full);
    assert!(header(&headers, "Retry-After").is_some_and(|s| s.parse::<u64>().is_ok()));
    let position =
        |job: &Value| get_job(&h, job["id"].as_str().expect("id"))["queue_position"].as_u64();
    let (ahead, behind) = (position(&high), position(&low));
    assert!(
        ahead.is_some() && ahead < behind,
        "the higher priority waits ahead: {ahead:?} {behind:?}"
    );
    h.sim.resume();
    let low = poll_until(&h, low["id"].as_str().expect("id"), "the low job", |j| {
        j["status"] == "succeeded"
    });
    let high = poll_until(&h, high["id"].as_str().expect("id"), "the high job", |j| {
        j["status"] == "succeeded"
    });
    assert!(
        high["started_at"].as_str() <= low["started_at"].as_str(),
        "higher priority runs first: {high:#} {low:#}"
    );
    let colors: Vec<u64> = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.path == "/prompt")
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter_map(|b| b["prompt"]["1"]["inputs"]["color"].as_u64())
        .collect();
    assert_eq!(colors, [0, 2, 1], "sent in priority order");
}

#[test]
fn extra_data_reaches_comfyui_and_is_never_stored() {
    let mut options = Options::default();
    options.sim.record_requests = true;
    let h = Harness::with(options);
    let secret = "comfyui-partner-key-7f3a";
    let job = submit(
        &h,
        &json!({"workflow": invert(0), "extra_data": {"api_key_comfy_org": secret}}),
    );
    let id = job["id"].as_str().expect("id");
    poll_until(&h, id, "the job to end", |j| j["status"] == "succeeded");
    let prompt = h
        .sim
        .requests()
        .into_iter()
        .find(|r| r.path == "/prompt")
        .expect("a prompt");
    let sent: Value = serde_json::from_slice(&prompt.body).expect("JSON");
    assert_eq!(sent["extra_data"]["api_key_comfy_org"], secret);
    assert!(!get_job(&h, id).to_string().contains(secret));
    let mut stack = vec![h.dir.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{} holds the partner key",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn many_streams_on_one_job_all_reach_its_end() {
    const STREAMS: usize = 64;
    let mut options = Options::step_ms(20);
    options.vars = vec![("MAX_CONNECTIONS", "512".to_string())];
    let h = Harness::with(options);
    h.sim.pause();
    let job = submit(&h, &json!({"workflow": common::sampler_graph(10)}));
    let id = job["id"].as_str().expect("id").to_string();
    let addr = h.gateway.addr();
    let (opened_tx, opened) = crossbeam_channel::unbounded();
    let (ended_tx, ended) = crossbeam_channel::unbounded();
    for _ in 0..STREAMS {
        let (id, opened_tx, ended_tx) = (id.clone(), opened_tx.clone(), ended_tx.clone());
        std::thread::spawn(move || {
            let mut stream =
                SseStream::open(addr, "GET", &format!("/api/v2/jobs/{id}/events"), None, &[]);
            let first = stream.next_event().map(|e| e.data["status"].clone());
            let _ = opened_tx.send(first);
            let mut last = None;
            while let Some(event) = stream.next_event() {
                if event.event == "status" {
                    last = event.data["status"].as_str().map(str::to_string);
                }
            }
            let _ = ended_tx.send(last);
        });
    }
    for _ in 0..STREAMS {
        let first = opened
            .recv_timeout(common::EVENT_DEADLINE)
            .expect("every stream opens");
        assert_eq!(first, Some(json!("queued")));
    }
    h.sim.resume();
    for _ in 0..STREAMS {
        let last = ended
            .recv_timeout(common::EVENT_DEADLINE)
            .expect("every stream ends");
        assert_eq!(last.as_deref(), Some("succeeded"));
    }
}

#[test]
fn kill_9_keeps_v2_jobs_their_labels_and_idempotency_keys() {
    let sim = comfyui_sim::ComfySim::start(comfyui_sim::SimOptions {
        step_delay: Duration::from_millis(5),
        ..comfyui_sim::SimOptions::default()
    })
    .expect("simulator");
    sim.pause();
    let dir = TestDir::new();
    let vars = [("COMFYUI_URL", sim.url()), ("QUEUE_AHEAD", "0".to_string())];
    let mut first = Gateway::start(dir.path(), &vars, None);
    first.wait_until_serving();
    let body = json!({"workflow": invert(9), "metadata": {"batch": "night"}});
    let key = [("Idempotency-Key", "night-1")];
    let blocker = call(
        &first.base(),
        "POST",
        "/api/v2/jobs",
        Some(&json!({"workflow": invert(8)})),
        &[],
    );
    assert_eq!(blocker.0, 201);
    let (status, job, _) = call(&first.base(), "POST", "/api/v2/jobs", Some(&body), &key);
    assert_eq!(status, 201, "{job}");
    first.child.kill().expect("kill -9");
    first
        .wait_for_exit(Duration::from_secs(10))
        .expect("the gateway died");

    let mut second = Gateway::start(dir.path(), &vars, None);
    second.wait_until_serving();
    let (status, replay, headers) = call(&second.base(), "POST", "/api/v2/jobs", Some(&body), &key);
    assert_eq!(status, 201);
    assert_eq!(header(&headers, "Idempotency-Replayed"), Some("true"));
    assert_eq!(replay["id"], job["id"]);
    sim.resume();
    let id = job["id"].as_str().expect("id");
    let deadline = std::time::Instant::now() + common::EVENT_DEADLINE;
    let done = loop {
        let (_, now, _) = call(
            &second.base(),
            "GET",
            &format!("/api/v2/jobs/{id}"),
            None,
            &[],
        );
        if now["status"] == "succeeded" {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "{now:#}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_valid("Job", &done);
    assert_eq!(done["metadata"], json!({"batch": "night"}));
    let (_, page, _) = call(
        &second.base(),
        "GET",
        "/api/v2/jobs?metadata%5Bbatch%5D=night",
        None,
        &[],
    );
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(1));
}

#[test]
fn a_job_running_past_job_timeout_secs_fails_with_timeout() {
    let mut options = Options::step_ms(50);
    options.vars = vec![("JOB_TIMEOUT_SECS", "1".to_string())];
    let h = Harness::with(options);
    let job = submit(&h, &json!({"workflow": common::sampler_graph(400)}));
    let id = job["id"].as_str().expect("id");
    let events = follow(h.gateway.addr(), id);
    assert_eq!(statuses(&events).last().map(String::as_str), Some("failed"));
    let failed = get_job(&h, id);
    assert_eq!(failed["error"]["code"], "timeout", "{failed:#}");
}

#[test]
fn a_job_waiting_past_queue_timeout_secs_is_expired() {
    let h = Harness::with(Options {
        vars: vec![("QUEUE_TIMEOUT_SECS", "1".to_string())],
        ..Options::default()
    });
    h.sim.pause();
    let waiting = submit(&h, &json!({"workflow": invert(1)}));
    let id = waiting["id"].as_str().expect("id");
    let events = follow(h.gateway.addr(), id);
    assert_eq!(
        statuses(&events).last().map(String::as_str),
        Some("expired")
    );
    let expired = get_job(&h, id);
    assert_eq!(expired["error"]["code"], "expired", "{expired:#}");
}

#[test]
fn progress_comes_about_twice_a_second_even_with_slow_ticks() {
    let mut options = Options::step_ms(100);
    options.vars = vec![("PROGRESS_INTERVAL_MS", "60000".to_string())];
    let h = Harness::with(options);
    let job = submit(&h, &json!({"workflow": common::sampler_graph(30)}));
    let id = job["id"].as_str().expect("id");
    let events = follow(h.gateway.addr(), id);
    assert!(
        events
            .iter()
            .any(|e| e.event == "progress" && e.data["step"].as_u64().is_some_and(|s| s > 0)),
        "the sampler's steps arrive between the (one-minute) ticks: {events:?}"
    );
    assert_eq!(
        statuses(&events).last().map(String::as_str),
        Some("succeeded")
    );
    // GET reads the tracker too: the finished job shows its whole graph done.
    let done = get_job(&h, id);
    assert_eq!(done["progress"]["value"], json!(1.0));
}
