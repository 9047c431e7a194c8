//! Jobs that outlive their client: POST /jobs, re-attaching, several watchers, cancel, timeout,
//! the active-job limit and API keys.

mod common;

use comfyui_sim::SimEvent;
use common::harness::{Harness, Options, agent, small_txt2img};
use serde_json::{Value, json};

fn create_job(h: &Harness, body: &Value) -> String {
    let (status, answer) = h.post_json("/jobs", body);
    assert_eq!(status, 202, "{answer}");
    let job_id = answer["job_id"].as_str().expect("job_id").to_string();
    assert_eq!(
        answer["status_url"],
        h.url(&format!("/jobs/{job_id}")).as_str()
    );
    assert_eq!(
        answer["events_url"],
        h.url(&format!("/jobs/{job_id}/events")).as_str()
    );
    job_id
}

/// Follows a job's events until ComfyUI accepted its prompt; returns the `dispatched` data.
fn wait_dispatched(h: &Harness, job_id: &str) -> Value {
    let mut stream = h.get_stream(&format!("/jobs/{job_id}/events"), &[]);
    while let Some(event) = stream.next_event() {
        if event.event == "dispatched" {
            return event.data;
        }
    }
    panic!("job {job_id} ended or stalled before reaching ComfyUI");
}

fn ids(events: &[common::sse_client::SseEvent]) -> Vec<u64> {
    events.iter().filter_map(|e| e.id).collect()
}

#[test]
fn a_job_runs_with_no_client_attached_and_stays_readable() {
    let h = Harness::start();
    let job_id = create_job(&h, &small_txt2img("unattended"));
    // Follow it to the end through its events, then read it.
    let events = h
        .get_stream(&format!("/jobs/{job_id}/events"), &[])
        .until_terminal();
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("complete"));
    let (status, job) = h.get_json(&format!("/jobs/{job_id}"));
    assert_eq!(status, 200);
    assert_eq!(job["state"], "completed");
    assert_eq!(job["workflow"], "txt2img");
    assert!(job["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(job["result"]["images"].as_array().map(Vec::len), Some(1));
    assert_eq!(job["error"], Value::Null);
}

#[test]
fn a_client_that_drops_mid_stream_re_attaches_and_misses_nothing() {
    let h = Harness::with(Options::step_ms(40));
    let mut body = small_txt2img("dropped");
    body["steps"] = json!(10);
    let mut first = h.generate_stream(&body);
    let seen: Vec<_> = (0..3).map_while(|_| first.next_event()).collect();
    assert_eq!(ids(&seen), [1, 2, 3]);
    let job_id = seen[0].data["job_id"].as_str().expect("job id").to_string();
    drop(first); // the client goes away mid-stream

    let rest = h
        .get_stream(&format!("/jobs/{job_id}/events"), &[("Last-Event-ID", "3")])
        .until_terminal();
    let rest_ids = ids(&rest);
    assert!(
        rest_ids.first().is_some_and(|id| *id >= 4),
        "resumes after the last seen event: {rest_ids:?}"
    );
    assert!(
        rest_ids.windows(2).all(|w| w[0] < w[1]),
        "no repeats: {rest_ids:?}"
    );
    // Only the newest progress tick is kept for a replay: between two kept events a gap can
    // only be ticks that a newer tick replaced.
    let kinds: Vec<&str> = rest.iter().map(|e| e.event.as_str()).collect();
    assert!(kinds.contains(&"complete"), "{kinds:?}");
    assert_eq!(
        rest.last().map(|e| e.event.as_str()),
        Some("complete"),
        "not cancelled by the drop"
    );
}

#[test]
fn two_watchers_see_the_same_events_and_a_late_one_gets_the_replay() {
    let h = Harness::with(Options::step_ms(20));
    let mut body = small_txt2img("watched");
    body["steps"] = json!(8);
    let job_id = create_job(&h, &body);
    let path = format!("/jobs/{job_id}/events");
    let mut a = h.get_stream(&path, &[]);
    let mut b = h.get_stream(&path, &[]);
    let (a, b) = (a.until_terminal(), b.until_terminal());
    let summary = |events: &[common::sse_client::SseEvent]| -> Vec<(u64, String)> {
        events
            .iter()
            .map(|e| (e.id.unwrap_or(0), e.event.clone()))
            .collect()
    };
    assert_eq!(summary(&a), summary(&b));
    assert_eq!(a.first().map(|e| e.event.as_str()), Some("queued"));
    let late = h.get_stream(&path, &[]).until_terminal();
    // A watcher after the end gets every event but the progress ticks, and the newest tick.
    let newest_tick = a.iter().rposition(|e| e.event == "progress");
    let kept: Vec<_> = a
        .iter()
        .enumerate()
        .filter(|(n, e)| e.event != "progress" || Some(*n) == newest_tick)
        .map(|(_, e)| e.clone())
        .collect();
    assert_eq!(
        summary(&late),
        summary(&kept),
        "a watcher after the end gets the replay"
    );
    let by_query = h
        .get_stream(&format!("{path}?last_event_id={}", a.len() - 1), &[])
        .until_terminal();
    assert_eq!(ids(&by_query), [a.len() as u64]);
}

#[test]
fn cancel_while_queued_deletes_the_prompt_from_comfyuis_queue() {
    let h = Harness::start();
    let sim_events = h.sim.events();
    h.sim.pause();
    let job_id = create_job(&h, &small_txt2img("never runs"));
    let dispatched = wait_dispatched(&h, &job_id);
    let (status, job) = h.delete_json(&format!("/jobs/{job_id}"));
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "cancelled");
    let deleted = match common::wait_for(&sim_events, "ComfyUI's queue to see a delete", |e| {
        matches!(e, SimEvent::QueueDeleted { .. })
    }) {
        SimEvent::QueueDeleted { prompt_ids } => prompt_ids,
        _ => unreachable!("wait_for returns a QueueDeleted"),
    };
    let events = h
        .get_stream(&format!("/jobs/{job_id}/events"), &[])
        .until_terminal();
    let queued_prompt = dispatched["prompt_id"].as_str().expect("prompt id");
    assert_eq!(deleted, vec![queued_prompt.to_string()]);
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("cancelled"));
    assert!(
        h.sim.requests().iter().all(|r| r.path != "/interrupt"),
        "nothing was interrupted"
    );
    h.sim.resume();
}

#[test]
fn cancel_while_running_interrupts_only_this_prompt() {
    let h = Harness::with(Options::step_ms(50));
    let sim_events = h.sim.events();
    let mut body = small_txt2img("interrupted");
    body["steps"] = json!(100);
    let job_id = create_job(&h, &body);
    common::wait_for(&sim_events, "the prompt started running", |e| {
        matches!(e, SimEvent::Step { .. })
    });
    let (status, job) = h.delete_json(&format!("/jobs/{job_id}"));
    assert_eq!(
        (status, job["state"].as_str()),
        (200, Some("cancelled")),
        "{job}"
    );
    let interrupt = h
        .sim
        .requests()
        .into_iter()
        .find(|r| r.path == "/interrupt")
        .expect("ComfyUI was interrupted");
    let sent: Value = serde_json::from_slice(&interrupt.body).expect("JSON body");
    let events = h
        .get_stream(&format!("/jobs/{job_id}/events"), &[])
        .until_terminal();
    let dispatched = events
        .iter()
        .find(|e| e.event == "dispatched")
        .expect("a dispatched event");
    assert_eq!(sent["prompt_id"], dispatched.data["prompt_id"]);
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("cancelled"));
    // A second cancel, and a cancel of an unknown job.
    assert_eq!(
        h.delete_json(&format!("/jobs/{job_id}")).1["state"],
        "cancelled"
    );
    let unknown = comfyui_gateway::ids::new_uuid();
    assert_eq!(h.delete_json(&format!("/jobs/{unknown}")).0, 404);
}

#[test]
fn a_job_over_its_time_limit_is_interrupted_with_timeout() {
    let mut options = Options::step_ms(50);
    options.vars.push(("JOB_TIMEOUT_SECS", "1".into()));
    let h = Harness::with(options);
    let mut body = small_txt2img("too long");
    body["steps"] = json!(100);
    let events = h.generate_stream(&body).until_terminal();
    let last = events.last().expect("terminal");
    assert_eq!(
        (last.event.as_str(), last.data["code"].as_str()),
        ("error", Some("timeout"))
    );
    assert!(
        h.sim.requests().iter().any(|r| r.path == "/interrupt"),
        "the prompt was stopped"
    );
    let (status, answer) = h.post_json("/generate", &body);
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (504, Some("timeout"))
    );
}

#[test]
fn beyond_max_queued_jobs_is_429_with_retry_after() {
    let h = Harness::with(Options {
        vars: vec![("MAX_QUEUED_JOBS", "1".into()), ("QUEUE_AHEAD", "0".into())],
        ..Options::default()
    });
    h.sim.pause();
    let on_comfyui = create_job(&h, &small_txt2img("first"));
    wait_dispatched(&h, &on_comfyui);
    let job_id = create_job(&h, &small_txt2img("waits in the gateway"));
    let (_, waiting) = h.get_json(&format!("/jobs/{job_id}"));
    assert_eq!(
        waiting["queue_position"], 1,
        "behind the one on ComfyUI: {waiting}"
    );
    assert_eq!(waiting["backend"], Value::Null);
    let mut response = agent()
        .post(&h.url("/jobs"))
        .header("Content-Type", "application/json")
        .send(small_txt2img("second").to_string().as_bytes())
        .expect("answers");
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value =
        serde_json::from_str(&response.body_mut().read_to_string().expect("body")).expect("JSON");
    assert_eq!(body["error"]["code"], "overloaded");
    let (_, cancelled) = h.delete_json(&format!("/jobs/{job_id}"));
    assert_eq!(cancelled["state"], "cancelled");
    assert!(
        h.sim
            .requests()
            .iter()
            .all(|r| r.path != "/queue" || r.method != "POST"),
        "a job cancelled while waiting in the gateway never reaches ComfyUI"
    );
    h.sim.resume();
    let (status, _) = h.post_json("/generate", &small_txt2img("after"));
    assert_eq!(status, 200, "a cancelled job frees its place");
    let old_name = Harness::with(Options {
        vars: vec![("MAX_ACTIVE_JOBS", "3".into())],
        ..Options::default()
    });
    assert_eq!(
        old_name.app.run.max_queued, 3,
        "MAX_ACTIVE_JOBS is an alias"
    );
}

#[test]
fn api_keys_guard_everything_but_health() {
    let h = Harness::with(Options {
        vars: vec![("API_KEYS", "key-one, key-two".into())],
        ..Options::default()
    });
    let get = |auth: Option<&str>| {
        let mut request = agent().get(&h.url("/workflows"));
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        request.call().expect("answers").status().as_u16()
    };
    assert_eq!(get(None), 401);
    assert_eq!(get(Some("Bearer wrong")), 401);
    assert_eq!(get(Some("key-one")), 401, "the Bearer scheme is required");
    assert_eq!(get(Some("Bearer key-one")), 200);
    assert_eq!(get(Some("Bearer key-two")), 200);
    assert_eq!(h.get_json("/health").0, 200, "/health needs no key");
    let (status, body) = h.post_json("/generate", &small_txt2img("no key"));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
}

#[test]
fn metrics_count_jobs_and_streams() {
    let h = Harness::start();
    h.post_json("/generate", &small_txt2img("counted"));
    let mut response = agent().get(&h.url("/metrics")).call().expect("answers");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.body_mut().read_to_string().expect("text");
    assert!(
        text.contains("comfyui_gateway_jobs_total{state=\"completed\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("comfyui_gateway_job_duration_seconds_count 1\n"),
        "{text}"
    );
    assert!(text.contains("comfyui_gateway_active_jobs 0\n"), "{text}");
    assert!(
        text.contains("comfyui_gateway_spooled_images 0\n"),
        "{text}"
    );
}

#[test]
fn a_job_that_cannot_be_saved_is_refused_and_not_run() {
    let h = Harness::start();
    let jobs = h.dir.path().join("jobs");
    std::fs::remove_dir_all(&jobs).expect("the jobs folder exists");
    std::fs::write(&jobs, b"not a folder").expect("writable");
    let (status, answer) = h.post_json("/jobs", &small_txt2img("unsaved"));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (500, Some("internal")),
        "{answer}"
    );
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("could not be saved"), "{message}");
    assert_eq!(h.app.jobs.len(), 0, "a refused job is forgotten");
    assert!(
        h.sim
            .requests()
            .iter()
            .all(|r| !(r.method == "POST" && r.path == "/prompt")),
        "and never reaches ComfyUI"
    );
    std::fs::remove_file(&jobs).expect("removable");
    std::fs::create_dir(&jobs).expect("creatable");
    let (status, _) = h.post_json("/generate", &small_txt2img("saved again"));
    assert_eq!(status, 200, "once DATA_DIR is writable again, jobs run");
}
