//! The gateway keeps the queue: many jobs waiting as data, priorities, several backends, a
//! backend that dies mid-batch, and a websocket that reconnects with a fresh client id.

mod common;

use comfyui_sim::{ComfySim, SimEvent, SimOptions};
use common::harness::{Harness, Options};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// `POST /jobs`; returns the job id.
fn create(h: &Harness, body: &Value) -> String {
    let (status, answer) = h.post_json("/jobs", body);
    assert_eq!(status, 202, "{answer}");
    answer["job_id"].as_str().expect("job_id").to_string()
}

/// Follows a job's events to its end (replayed at once if it already ended); returns the
/// terminal event's name and data.
fn outcome(h: &Harness, job_id: &str) -> (String, Value) {
    let events = h
        .get_stream(&format!("/jobs/{job_id}/events"), &[])
        .until_terminal();
    let last = events.last().expect("a terminal event");
    (last.event.clone(), last.data.clone())
}

/// A distinct `invert` job (a repeated one would be served from ComfyUI's cache).
fn invert(n: u64) -> Value {
    json!({"workflow": "invert", "width": 8, "height": 8, "color": n})
}

#[test]
fn a_thousand_queued_jobs_all_complete_through_one_websocket() {
    let h = Harness::with(Options::step_ms(0));
    let ids: Vec<String> = (0..1000).map(|n| create(&h, &invert(n))).collect();
    for id in &ids {
        let (event, data) = outcome(&h, id);
        assert_eq!(event, "complete", "job {id}: {data}");
    }
    let sockets = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/ws"))
        .count();
    assert_eq!(sockets, 1, "one websocket for the whole batch");
    // ComfyUI broadcasts `status` to every socket on each queue change: with one socket that is
    // a few messages per job, not one per job per waiting job.
    let stats = h.sim.ws_stats();
    assert_eq!(stats.accepted, 1);
    assert!(
        stats.status_sent <= 4 * 1000 + 10,
        "status messages grow linearly with the jobs: {stats:?}"
    );
    assert_eq!(h.finished_count("completed", 1000), 1000);
}

#[test]
fn higher_priority_runs_first_and_arrival_order_holds_within_a_priority() {
    let h = Harness::with(Options {
        vars: vec![("QUEUE_AHEAD", "0".into())],
        ..Options::step_ms(0)
    });
    h.sim.pause();
    let blocker = create(&h, &invert(1000));
    // The blocker holds ComfyUI's only slot, so the rest wait in the gateway's queue.
    let mut events = h.get_stream(&format!("/jobs/{blocker}/events"), &[]);
    while let Some(event) = events.next_event() {
        if event.event == "dispatched" {
            break;
        }
    }
    let plan = [
        ("low", 0, 1),
        ("high", 5, 2),
        ("low", 0, 3),
        ("urgent", 9, 4),
        ("neg", -1, 5),
    ];
    let mut jobs = BTreeMap::new();
    for (label, priority, n) in plan {
        let mut body = invert(n);
        body["priority"] = json!(priority);
        let id = create(&h, &body);
        jobs.insert(id, (label, n));
    }
    let positions: BTreeMap<u64, u64> = jobs
        .iter()
        .map(|(id, (_, n))| {
            let (_, job) = h.get_json(&format!("/jobs/{id}"));
            (*n, job["queue_position"].as_u64().expect("waiting"))
        })
        .collect();
    assert_eq!(
        positions,
        BTreeMap::from([(4, 0), (2, 1), (1, 2), (3, 3), (5, 4)]),
        "queue_position is the place in the gateway's queue"
    );
    h.sim.resume();
    for id in jobs.keys() {
        assert_eq!(outcome(&h, id).0, "complete");
    }
    // ComfyUI received the prompts in priority order, FIFO within a priority.
    let colors: Vec<u64> = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/prompt")
        .filter_map(|r| {
            let body: Value = serde_json::from_slice(&r.body).ok()?;
            body["prompt"]
                .as_object()?
                .values()
                .find_map(|node| node["inputs"]["color"].as_u64())
        })
        .filter(|color| *color != 1000)
        .collect();
    assert_eq!(colors, [4, 2, 1, 3, 5]);
}

#[test]
fn jobs_spread_over_two_backends_and_the_rest_finish_when_one_dies() {
    let second = ComfySim::start(SimOptions {
        step_delay: Duration::from_millis(15),
        ..SimOptions::default()
    })
    .expect("a second simulator");
    let second_events = second.events();
    let h = Harness::with(Options {
        more_backends: vec![second.url()],
        ..Options::step_ms(15)
    });
    let ids: Vec<String> = (0..30)
        .map(|n| {
            let mut body = invert(n);
            body["width"] = json!(16);
            create(&h, &body)
        })
        .collect();
    // Once the second backend has finished a job, it dies for good.
    second_events
        .iter()
        .find(|e| matches!(e, SimEvent::Finished { .. }))
        .expect("the second backend ran a job");
    second.crash();
    let mut by_backend: BTreeMap<String, usize> = BTreeMap::new();
    let mut lost = Vec::new();
    for id in &ids {
        match outcome(&h, id) {
            (event, data) if event == "complete" => {
                let backend = data["backend"].as_str().expect("backend named").to_string();
                *by_backend.entry(backend).or_default() += 1;
            }
            (_, data) => lost.push(data),
        }
    }
    assert!(
        by_backend.len() == 2,
        "both backends ran jobs: {by_backend:?}"
    );
    // Only prompts the dying backend had run (whose outputs went down with it) can be lost;
    // the ones it held in its queue went back to the gateway's queue and ran on the other.
    for data in &lost {
        assert_eq!(data["code"], "comfyui_lost", "{data}");
        let id = data["job_id"].as_str().expect("job id");
        let (_, job) = h.get_json(&format!("/jobs/{id}"));
        assert_eq!(job["backend"], second.url().as_str(), "{job}");
    }
    assert!(lost.len() < 15, "most jobs survive: {lost:?}");
    assert_eq!(by_backend.values().sum::<usize>() + lost.len(), 30);
}

#[test]
fn a_reconnected_websocket_gets_a_fresh_client_id_and_no_job_is_left_behind() {
    let h = Harness::with(Options::step_ms(5));
    let sim_events = h.sim.events();
    let ids: Vec<String> = (0..20).map(|n| create(&h, &invert(n))).collect();
    sim_events
        .iter()
        .find(|e| matches!(e, SimEvent::Finished { .. }))
        .expect("the batch started");
    h.sim.cut_websockets();
    h.sim.restore_websockets();
    for id in &ids {
        let (event, data) = outcome(&h, id);
        assert_eq!(event, "complete", "job {id}: {data}");
    }
    let client_ids: Vec<String> = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/ws"))
        .filter_map(|r| r.path.split("clientId=").nth(1).map(str::to_string))
        .collect();
    assert!(
        client_ids.len() >= 2,
        "the gateway reconnected: {client_ids:?}"
    );
    let distinct: BTreeSet<&String> = client_ids.iter().collect();
    assert_eq!(
        distinct.len(),
        client_ids.len(),
        "a fresh client id each time"
    );
}

#[test]
fn after_both_restart_a_started_prompt_is_lost_and_a_waiting_one_is_sent_again() {
    let data = common::harness::TestDir::new();
    let options = |more: Vec<(&'static str, String)>| {
        let mut options = Options::step_ms(150);
        options.vars = vec![("DATA_DIR", data.path().display().to_string())];
        options.vars.extend(more);
        options
    };
    let first = Harness::with(options(vec![]));
    let sim_events = first.sim.events();
    let mut long = small_txt2img_steps("runs when both restart", 30);
    long["seed"] = json!(1);
    let running = create(&first, &long);
    let waiting = create(&first, &small_txt2img_steps("waits in ComfyUI's queue", 3));
    common::wait_for(&sim_events, "the first prompt running", |e| {
        matches!(e, SimEvent::Step { .. })
    });
    let mut events = first.get_stream(&format!("/jobs/{waiting}/events"), &[]);
    while let Some(event) = events.next_event() {
        if event.event == "dispatched" {
            break;
        }
    }
    drop(events);
    // The gateway stops (its jobs saved), and ComfyUI restarts, forgetting both prompts.
    let Harness {
        gateway, app, sim, ..
    } = first;
    drop(gateway);
    drop(app);
    sim.crash();
    sim.restart().expect("the simulator restarts");
    let second = Harness::with(options(vec![("COMFYUI_URL", sim.url())]));
    let (event, data) = outcome(&second, &running);
    assert_eq!(
        (event.as_str(), data["code"].as_str()),
        ("error", Some("comfyui_lost")),
        "{data}"
    );
    let (event, data) = outcome(&second, &waiting);
    assert_eq!(event, "complete", "sent again: {data}");
}

/// A small txt2img job with `steps` sampler steps.
fn small_txt2img_steps(prompt: &str, steps: u64) -> Value {
    let mut body = common::harness::small_txt2img(prompt);
    body["steps"] = json!(steps);
    body
}
