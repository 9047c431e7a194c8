//! The gateway keeps the queue: many jobs waiting as data, priorities, several backends, a
//! backend that dies mid-batch, and a websocket that reconnects with a fresh client id.

mod common;

use comfyui_sim::{ComfySim, Failure, SimEvent, SimOptions};
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
        BTreeMap::from([(4, 1), (2, 2), (1, 3), (3, 4), (5, 5)]),
        "queue_position is the place in the gateway's queue, behind the blocker on ComfyUI"
    );
    h.sim.resume();
    for id in jobs.keys() {
        assert_eq!(outcome(&h, id).0, "complete");
    }
    // ComfyUI received the prompts in priority order, FIFO within a priority.
    let colors: Vec<u64> = common::prompt_requests(&h.sim)
        .iter()
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
    // LOST_RETRIES=0: a prompt lost mid-render is not sent again.
    let first = Harness::with(options(vec![("LOST_RETRIES", "0".into())]));
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
    let second = Harness::with(options(vec![
        ("COMFYUI_URL", sim.url()),
        ("LOST_RETRIES", "0".into()),
    ]));
    let (event, data) = outcome(&second, &running);
    assert_eq!(
        (event.as_str(), data["code"].as_str()),
        ("error", Some("comfyui_lost")),
        "{data}"
    );
    let (event, data) = outcome(&second, &waiting);
    assert_eq!(event, "complete", "sent again: {data}");
}

#[test]
fn queue_position_counts_the_jobs_ahead_in_comfyuis_queue_and_in_the_gateways() {
    let h = Harness::with(Options {
        vars: vec![("QUEUE_AHEAD", "1".into())],
        ..Options::step_ms(100)
    });
    // A runs, B waits in ComfyUI's queue behind it, C waits in the gateway's queue.
    let mut a_body = small_txt2img_steps("runs", 60);
    a_body["seed"] = json!(1);
    let a = create(&h, &a_body);
    let mut a_events = h.get_stream(&format!("/jobs/{a}/events"), &[]);
    while let Some(event) = a_events.next_event() {
        if event.event == "progress" && event.data["state"] == "running" {
            assert_eq!(event.data["queue_position"], 0, "{:?}", event.data);
            break;
        }
    }
    let b = create(&h, &small_txt2img_steps("waits in ComfyUI", 1));
    let mut b_events = h.get_stream(&format!("/jobs/{b}/events"), &[]);
    let mut dispatched = false;
    while let Some(event) = b_events.next_event() {
        dispatched |= event.event == "dispatched";
        if dispatched && event.event == "progress" {
            assert_eq!(
                event.data["queue_position"], 1,
                "behind the one ComfyUI runs: {:?}",
                event.data
            );
            break;
        }
    }
    let c = create(&h, &small_txt2img_steps("waits in the gateway", 1));
    let position = |id: &str| h.get_json(&format!("/jobs/{id}")).1["queue_position"].clone();
    assert_eq!(position(&a), json!(0), "the running job has none ahead");
    assert_eq!(position(&b), json!(1), "A runs ahead of B");
    assert_eq!(position(&c), json!(2), "A and B are ahead of C");
    let mut c_events = h.get_stream(&format!("/jobs/{c}/events"), &[]);
    let first = c_events.next_event().expect("C's queued event");
    assert_eq!(first.event, "queued");
    assert_eq!(first.data["queue_position"], 2, "{:?}", first.data);
    let tick = c_events.next_event().expect("C's tick");
    assert_eq!(tick.data["queue_position"], 2, "{:?}", tick.data);
    for id in [&a, &b, &c] {
        let (status, _) = h.delete_json(&format!("/jobs/{id}"));
        assert_eq!(status, 200);
    }
}

#[test]
fn outputs_comfyui_can_no_longer_give_are_a_lost_render_and_run_again() {
    let h = Harness::with(Options::step_ms(0));
    // ComfyUI announces success but never gives the prompt's history (as if it crashed right
    // after): nothing can be stored, so the render is lost and sent again (LOST_RETRIES=1).
    h.sim.hold_history(true);
    let mut stream = h.generate_stream(&small_txt2img_steps("history gone", 2));
    loop {
        let event = stream
            .next_event()
            .expect("the job is sent again, not ended");
        assert!(!event.is_terminal(), "ended: {:?}", event.data);
        if event.event == "queued" && !event.data["lost"].is_null() {
            assert_eq!(
                event.data["lost"]["code"], "comfyui_lost",
                "{:?}",
                event.data
            );
            break;
        }
    }
    h.sim.hold_history(false);
    let events = stream.until_terminal();
    let last = events.last().expect("the terminal event");
    assert_eq!(last.event, "complete", "{:?}", last.data);
    let prompts = common::prompt_requests(&h.sim).len();
    assert_eq!(prompts, 2, "sent once more");
}

#[test]
fn a_render_lost_to_a_crash_runs_again_once_then_ends_comfyui_lost() {
    let h = Harness::with(Options::step_ms(20));
    let sim_events = h.sim.events();
    h.sim.fail_next(Failure::CrashAt { step: 2 });
    let mut stream = h.generate_stream(&small_txt2img_steps("crashes twice", 6));
    // First loss: ComfyUI dies mid-render and comes back empty.
    common::wait_for(&sim_events, "the first crash", |e| {
        matches!(e, SimEvent::Crashed)
    });
    h.sim.fail_next(Failure::CrashAt { step: 2 });
    h.sim.restart().expect("the simulator restarts");
    // The job is sent again; the resent prompt is lost too, and that ends it.
    common::wait_for(&sim_events, "the second crash", |e| {
        matches!(e, SimEvent::Crashed)
    });
    h.sim.restart().expect("the simulator restarts");
    let events = stream.until_terminal();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e.event.as_str())
        .filter(|name| *name != "progress")
        .collect();
    assert_eq!(
        names,
        ["queued", "dispatched", "queued", "dispatched", "error"],
        "waiting and dispatched again, then the end"
    );
    let requeued = events
        .iter()
        .filter(|e| e.event == "queued")
        .nth(1)
        .expect("a second queued event");
    assert_eq!(
        requeued.data["lost"]["code"], "comfyui_lost",
        "{:?}",
        requeued.data
    );
    let last = events.last().expect("the terminal event");
    assert_eq!(last.data["code"], "comfyui_lost", "{:?}", last.data);
    let prompts = common::prompt_requests(&h.sim).len();
    assert_eq!(prompts, 2, "sent once more, not more");
}

#[test]
fn a_render_lost_to_a_crash_completes_on_its_second_run_and_submissions_wait_meanwhile() {
    let h = Harness::with(Options::step_ms(20));
    let sim_events = h.sim.events();
    h.sim.fail_next(Failure::CrashAt { step: 2 });
    let mut body = small_txt2img_steps("crashes once", 6);
    body["seed"] = json!(7);
    let lost = create(&h, &body);
    common::wait_for(&sim_events, "the crash", |e| matches!(e, SimEvent::Crashed));
    // No backend answers now, but one did moments ago (BACKEND_GRACE_SECS): still queued.
    let (status, answer) = h.post_json("/jobs", &invert(5));
    assert_eq!(status, 202, "queued while ComfyUI restarts: {answer}");
    let later = answer["job_id"].as_str().expect("job id").to_string();
    h.sim.restart().expect("the simulator restarts");
    let (event, data) = outcome(&h, &lost);
    assert_eq!(event, "complete", "the lost render ran again: {data}");
    let (event, data) = outcome(&h, &later);
    assert_eq!(event, "complete", "{data}");
}

/// A small txt2img job with `steps` sampler steps.
fn small_txt2img_steps(prompt: &str, steps: u64) -> Value {
    let mut body = common::harness::small_txt2img(prompt);
    body["steps"] = json!(steps);
    body
}
