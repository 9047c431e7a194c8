//! Comfy-Org's own Python SDK (`comfy-sdk`, installed by `.ci/run` from PyPI) drives the
//! gateway's Comfy API v2 (`tests/v2_sdk.py`): `client.run`, an input asset from a file, the
//! asset library (dedup by hash, rehydration, ranges, `HashMismatch`, `BlobNotFound`, deletion),
//! events, labels, cancel, idempotent resubmission, the typed errors (`InvalidWorkflow`,
//! `WorkflowFormatUi`, `NotFound`, `JobFailed`, `QueueFull`) and the async client. Skipped, with
//! a SKIPPED line, only where the SDK cannot be imported.

mod common;

use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::harness::{Harness, Options};

/// The longest the script may run.
const DEADLINE: Duration = Duration::from_secs(180);

/// The checks the script reports, in order.
const CHECKS: [&str; 11] = [
    "run",
    "asset_from_file",
    "assets",
    "events",
    "list_jobs",
    "cancel",
    "idempotency",
    "typed_errors",
    "queue_full",
    "async",
    "done",
];

fn sdk_available() -> bool {
    Command::new("python3")
        .args(["-c", "import comfy_sdk"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A gateway whose one ComfyUI is paused, holding one job with one more waiting: its queue
/// (`MAX_QUEUED_JOBS=1`) is full.
fn full_gateway() -> Harness {
    let h = Harness::with(Options {
        vars: vec![
            ("API_KEYS", "sdk-key".to_string()),
            ("MAX_QUEUED_JOBS", "1".to_string()),
            ("QUEUE_AHEAD", "0".to_string()),
        ],
        ..Options::default()
    });
    h.sim.pause();
    let body = json!({"workflow": {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["1", 0]}},
    }});
    let mut created = 0;
    let deadline = std::time::Instant::now() + common::EVENT_DEADLINE;
    while std::time::Instant::now() < deadline {
        let mut response = common::harness::agent()
            .post(&h.url("/api/v2/jobs"))
            .header("Authorization", "Bearer sdk-key")
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes())
            .expect("answers");
        let status = response.status().as_u16();
        let _ = response.body_mut().read_to_string();
        match status {
            201 => created += 1,
            429 => return h,
            other => panic!("filling the queue: {other}"),
        }
        assert!(created < 10, "the queue never filled");
        thread::sleep(Duration::from_millis(20));
    }
    panic!("the queue did not fill in time");
}

#[test]
fn the_official_python_sdk_runs_against_the_gateway() {
    if !sdk_available() {
        println!("SKIPPED: comfy-sdk is not importable by python3 (pip install comfy-sdk)");
        return;
    }
    let mut options = Options::step_ms(5);
    options.vars = vec![("API_KEYS", "sdk-key".to_string())];
    let h = Harness::with(options);
    let full = full_gateway();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/v2_sdk.py");
    let png: String = common::tiny_png(8, 8)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let child = Command::new("python3")
        .arg(&script)
        .env("COMFY_BASE_URL", h.url(""))
        .env("COMFY_API_KEY", "sdk-key")
        .env("FULL_BASE_URL", full.url(""))
        .env("TINY_PNG_HEX", png)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let (out, err) = common::finish_script(child, "the SDK script", DEADLINE);
    let passed: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("OK ")).collect();
    assert_eq!(passed, CHECKS, "{out}\n{err}");
    // Every job the SDK made is a gateway job; the partner-node check found none stored.
    let jobs: Vec<Value> = h
        .app
        .jobs
        .all()
        .iter()
        .map(|job| job.to_json(None))
        .collect();
    assert!(jobs.len() >= 8, "{} jobs", jobs.len());
}
