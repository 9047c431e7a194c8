//! The queue survives `kill -9`: the real binary, killed with jobs waiting and one running, is
//! started again on the same `DATA_DIR` and finishes every job, storing each image once, while
//! clients re-attach to the same event streams.

mod common;

use comfyui_sim::{ComfySim, SimEvent, SimOptions};
use common::gateway_process::Gateway;
use common::harness::{TestDir, agent};
use common::sse_client::SseStream;
use common::wait_for;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

fn post_job(base: &str, body: &Value) -> String {
    let mut response = agent()
        .post(&format!("{base}/jobs"))
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .expect("answers");
    assert_eq!(response.status().as_u16(), 202);
    let created: Value =
        serde_json::from_str(&response.body_mut().read_to_string().expect("body")).expect("JSON");
    created["job_id"].as_str().expect("job id").to_string()
}

fn addr(gateway: &Gateway) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], gateway.port))
}

#[test]
fn kill_9_with_jobs_waiting_and_one_running_then_every_job_completes_once() {
    let sim = ComfySim::start(SimOptions {
        step_delay: Duration::from_millis(40),
        ..SimOptions::default()
    })
    .expect("simulator");
    let sim_events = sim.events();
    let dir = TestDir::new();
    let vars = [
        ("COMFYUI_URL", sim.url()),
        ("PROGRESS_INTERVAL_MS", "100".to_string()),
    ];
    let mut first = Gateway::start(dir.path(), &vars, None);
    first.wait_until_serving();
    let jobs: Vec<String> = (0..21)
        .map(|n| {
            post_job(
                &first.base(),
                &json!({"workflow": "txt2img", "prompt": format!("job {n}"), "seed": n,
                        "steps": 8, "width": 64, "height": 64}),
            )
        })
        .collect();
    wait_for(&sim_events, "the first job running", |e| {
        matches!(e, SimEvent::Step { .. })
    });
    // A client follows the last job (still waiting) until a few of its events arrived.
    let watched = jobs[20].clone();
    let mut stream = SseStream::open(
        addr(&first),
        "GET",
        &format!("/jobs/{watched}/events"),
        None,
        &[],
    );
    let seen: Vec<u64> = (0..3)
        .filter_map(|_| stream.next_event())
        .filter_map(|e| e.id)
        .collect();
    assert_eq!(seen.len(), 3, "the waiting job streams its ticks");
    let last_seen = *seen.last().expect("an id");
    drop(stream);

    first.child.kill().expect("kill -9");
    first
        .wait_for_exit(Duration::from_secs(10))
        .expect("the gateway died");

    let mut second = Gateway::start(dir.path(), &vars, None);
    second.wait_until_serving();
    // Re-attaching across the restart resumes after the last event seen, without repeats.
    let rest = SseStream::open(
        addr(&second),
        "GET",
        &format!("/jobs/{watched}/events"),
        None,
        &[("Last-Event-ID", &last_seen.to_string())],
    )
    .until_terminal();
    let ids: Vec<u64> = rest.iter().filter_map(|e| e.id).collect();
    assert!(
        ids.iter().all(|id| *id > last_seen),
        "{last_seen} then {ids:?}"
    );
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids only grow: {ids:?}"
    );
    assert_eq!(rest.last().map(|e| e.event.as_str()), Some("complete"));

    for id in &jobs {
        let events = SseStream::open(
            addr(&second),
            "GET",
            &format!("/jobs/{id}/events"),
            None,
            &[],
        )
        .until_terminal();
        let last = events.last().expect("a terminal event");
        assert_eq!(last.event, "complete", "job {id}: {:?}", last.data);
        let image = dir.path().join("data/images").join(id).join("0.png");
        assert!(image.exists(), "job {id}'s image is stored");
    }
    // Each image is recorded exactly once.
    let rows = std::fs::read_to_string(dir.path().join("data/generations.jsonl")).expect("rows");
    let recorded: Vec<String> = rows
        .lines()
        .map(|line| {
            let row: Value = serde_json::from_str(line).expect("a JSON row");
            format!(
                "{}/{}",
                row["job_id"].as_str().unwrap_or(""),
                row["image_index"]
            )
        })
        .collect();
    let distinct: BTreeSet<&String> = recorded.iter().collect();
    assert_eq!(recorded.len(), 21, "{recorded:#?}");
    assert_eq!(distinct.len(), 21);
    // Finished jobs stay readable across a further restart.
    drop(second);
    let mut third = Gateway::start(dir.path(), &vars, None);
    third.wait_until_serving();
    let (status, job) = {
        let mut response = agent()
            .get(&format!("{}/jobs/{}", third.base(), jobs[0]))
            .call()
            .expect("answers");
        let status = response.status().as_u16();
        let body: Value =
            serde_json::from_str(&response.body_mut().read_to_string().expect("body"))
                .expect("JSON");
        (status, body)
    };
    assert_eq!(
        (status, job["state"].as_str()),
        (200, Some("completed")),
        "{job}"
    );
}
