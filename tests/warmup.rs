//! WARMUP_WORKFLOW: run on each backend when the gateway reaches it and again after a restart;
//! `/ready` is 503 while it runs and names a warm-up that failed, without stopping the gateway.

mod common;

use comfyui_gateway::app::App;
use comfyui_gateway::config::Config;
use comfyui_sim::SimEvent;
use common::harness::{Harness, Options, workflows_dir};
use common::wait_for;
use serde_json::{Value, json};

/// The `POST /prompt` bodies the simulator received from warm-ups.
fn warmups(h: &Harness) -> usize {
    h.sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/prompt")
        .filter(|r| {
            serde_json::from_slice::<Value>(&r.body)
                .ok()
                .and_then(|body| body["client_id"].as_str().map(str::to_string))
                .is_some_and(|id| id.starts_with("gateway-warmup-"))
        })
        .count()
}

fn ready(h: &Harness) -> (u16, Value) {
    h.get_json("/ready")
}

/// Polls `/ready` (bounded) until `wanted` holds for its answer.
fn ready_until(h: &Harness, what: &str, wanted: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, body) = ready(h);
        if wanted(status, &body) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: last {status} {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn the_warm_up_runs_first_and_ready_waits_for_it() {
    let mut options = Options::step_ms(0);
    options
        .vars
        .push(("WARMUP_WORKFLOW", "invert:width=32,height=32".into()));
    // ComfyUI writes history late, so the warm-up is seen running for a while.
    options.sim.history_delay = std::time::Duration::from_millis(1500);
    let h = Harness::with(options);
    let sim_events = h.sim.events();
    let busy = ready_until(&h, "503 while warming up", |status, _| status == 503);
    let reasons = busy["reasons"].to_string();
    assert!(reasons.contains("warming up"), "{busy}");
    wait_for(&sim_events, "the warm-up finished", |e| {
        matches!(e, SimEvent::Finished { .. })
    });
    assert_eq!(
        warmups(&h),
        1,
        "the warm-up was sent when the gateway reached ComfyUI"
    );
    ready_until(&h, "ready once warmed up", |status, _| status == 200);

    // After a ComfyUI restart, it runs again.
    h.sim.crash();
    h.sim.restart().expect("the simulator restarts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while warmups(&h) < 2 {
        assert!(std::time::Instant::now() < deadline, "no second warm-up");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    ready_until(&h, "ready after the second warm-up", |status, _| {
        status == 200
    });
}

#[test]
fn a_failed_warm_up_is_named_by_ready_and_jobs_still_run() {
    let mut options = Options::step_ms(0);
    options.vars.push((
        "WARMUP_WORKFLOW",
        "txt2img:steps=1,prompt=warm,checkpoint=not-installed.safetensors".into(),
    ));
    let h = Harness::with(options);
    let body = ready_until(&h, "the failure named", |status, body| {
        status == 503 && body["reasons"].to_string().contains("failed")
    });
    let reasons = body["reasons"].to_string();
    assert!(
        reasons.contains("not-installed.safetensors"),
        "ComfyUI's message: {body}"
    );
    let (status, result) = h.post_json(
        "/generate",
        &json!({"workflow": "invert", "width": 8, "height": 8}),
    );
    assert_eq!(status, 200, "the gateway still serves: {result}");
}

#[test]
fn a_warm_up_naming_no_template_stops_start_up() {
    let vars = [
        ("WORKFLOWS_DIR", workflows_dir().display().to_string()),
        ("WARMUP_WORKFLOW", "nope:steps=1".to_string()),
    ];
    let config = Config::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })
    .expect("the variable itself is well formed");
    let error = App::new(config).err().expect("refused");
    assert!(
        error.to_string().starts_with("WARMUP_WORKFLOW=nope"),
        "{error}"
    );
}
