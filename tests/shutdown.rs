//! SIGTERM stops the real binary gracefully: no new work, running jobs finish and are stored.

mod common;

use comfyui_sim::{ComfySim, SimEvent, SimOptions};
use common::harness::{TestDir, agent, small_txt2img, workflows_dir};
use serde_json::{Value, json};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Polls `/health` until the child answers (bounded).
fn wait_until_serving(base: &str, child: &mut Child) {
    let give_up = Instant::now() + Duration::from_secs(20);
    while Instant::now() < give_up {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the gateway exited early: {status}");
        }
        if agent().get(&format!("{base}/health")).call().is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the gateway did not start serving");
}

#[test]
fn sigterm_lets_the_running_job_finish_and_store_its_image() {
    let sim = ComfySim::start(SimOptions {
        step_delay: Duration::from_millis(60),
        ..SimOptions::default()
    })
    .expect("simulator");
    let dir = TestDir::new();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_comfyui-gateway"))
        .current_dir(dir.path()) // no stray .env
        .env_clear()
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("COMFYUI_URL", sim.url())
        .env("WORKFLOWS_DIR", workflows_dir())
        .env("DATA_DIR", dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("the gateway binary starts");
    wait_until_serving(&base, &mut child);

    let sim_events = sim.events();
    let mut body = small_txt2img("finish me");
    body["steps"] = json!(15);
    let mut response = agent()
        .post(&format!("{base}/jobs"))
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .expect("answers");
    assert_eq!(response.status().as_u16(), 202);
    let created: Value =
        serde_json::from_str(&response.body_mut().read_to_string().expect("body")).expect("JSON");
    let job_id = created["job_id"].as_str().expect("job id").to_string();
    common::wait_for(&sim_events, "the job is running", |e| {
        matches!(e, SimEvent::Step { .. })
    });

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let give_up = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waitable") {
            break status;
        }
        assert!(
            Instant::now() < give_up,
            "the gateway did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "clean exit, got {status}");
    let image = dir.path().join("data/images").join(&job_id).join("0.png");
    assert!(
        image.exists(),
        "the running job finished and was stored before exit"
    );
    let lines = std::fs::read_to_string(dir.path().join("data/generations.jsonl")).expect("jsonl");
    assert!(lines.contains(&job_id));
    assert!(
        agent().get(&format!("{base}/health")).call().is_err(),
        "nothing listens any more"
    );
}
