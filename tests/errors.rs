//! Bad requests and ComfyUI failures: each the documented status, code and terminal event.

mod common;

use comfyui_sim::{Failure, PromptFault, SimEvent};
use common::harness::{Harness, Options, agent, small_txt2img};
use serde_json::{Value, json};
use std::time::Duration;

fn post_raw(h: &Harness, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let mut response = agent()
        .post(&h.url(path))
        .header("Content-Type", content_type)
        .header("Accept", "application/json")
        .send(&body[..])
        .expect("the gateway answers");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().expect("body");
    (
        status,
        serde_json::from_str(&text).expect("a JSON error body"),
    )
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

#[test]
fn bad_requests_get_their_status_and_code_and_reach_no_comfyui() {
    let h = Harness::with(Options {
        vars: vec![("MAX_BODY_BYTES", "4096".into())],
        ..Options::default()
    });
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "malformed JSON",
            b"{\"prompt\": ".to_vec(),
            400,
            "invalid_json",
        ),
        (
            "unknown key",
            br#"{"prompt": "x", "colour": 3}"#.to_vec(),
            400,
            "invalid_params",
        ),
        (
            "wrong type",
            br#"{"prompt": "x", "steps": "many"}"#.to_vec(),
            400,
            "invalid_params",
        ),
        (
            "out of range",
            br#"{"prompt": "x", "steps": 1000}"#.to_vec(),
            400,
            "invalid_params",
        ),
        (
            "not a multiple of 8",
            br#"{"prompt": "x", "width": 100}"#.to_vec(),
            400,
            "invalid_params",
        ),
        (
            "missing required",
            br#"{"steps": 4}"#.to_vec(),
            400,
            "invalid_params",
        ),
        (
            "unknown workflow",
            br#"{"workflow": "nope", "prompt": "x"}"#.to_vec(),
            404,
            "unknown_workflow",
        ),
        (
            "body too large",
            format!(r#"{{"prompt": "{}"}}"#, "x".repeat(10_000)).into_bytes(),
            413,
            "payload_too_large",
        ),
    ];
    for (what, body, status, expected) in cases {
        let (got, answer) = post_raw(&h, "/generate", "application/json", body);
        assert_eq!((got, code(&answer)), (status, expected), "{what}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let (_, answer) = post_raw(
        &h,
        "/generate",
        "application/json",
        br#"{"prompt": "x", "steps": 1000, "colour": 1}"#.to_vec(),
    );
    let fields = &answer["error"]["details"]["fields"];
    assert!(
        fields["steps"].is_string() && fields["colour"].is_string(),
        "every bad field named: {answer}"
    );

    let (status, answer) = post_raw(&h, "/generate", "text/plain", b"{}".to_vec());
    assert_eq!((status, code(&answer)), (415, "unsupported_media_type"));
    assert!(
        h.sim.requests().iter().all(|r| r.path != "/prompt"),
        "nothing was sent to ComfyUI"
    );
}

#[test]
fn wrong_method_and_unknown_path() {
    let h = Harness::start();
    let mut response = agent().get(&h.url("/generate")).call().expect("answers");
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(
        response
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    let body: Value =
        serde_json::from_str(&response.body_mut().read_to_string().expect("body")).expect("JSON");
    assert_eq!(code(&body), "method_not_allowed");
    let (status, body) = h.get_json("/no/such/path");
    assert_eq!((status, code(&body)), (404, "not_found"));
    let (status, body) = h.get_json("/jobs/not-a-job-id");
    assert_eq!((status, code(&body)), (404, "not_found"));
    // Percent-encoded dots pass the router (it sees three segments under /images) and reach
    // the path guard of local storage, which takes only `{uuid}/{n}.{ext}` keys.
    for traversal in [
        "/images/%2e%2e/%2e%2e%2fetc%2fpasswd",
        "/images/00000000-0000-4000-8000-000000000000/..%2f..%2f..%2fetc%2fpasswd",
    ] {
        let (status, body) = h.get_json(traversal);
        assert_eq!((status, code(&body)), (404, "not_found"), "{traversal}");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.starts_with("image ") && message.contains("passwd"),
            "the guard answered, not the router: {message}"
        );
    }
}

#[test]
fn comfyui_validation_failure_is_422_with_node_errors() {
    let h = Harness::start();
    // Templates are checked against the installed models before queueing (tests/choices.rs);
    // a raw graph is not, so ComfyUI's own validation answers for it.
    let file = common::harness::workflows_dir().join("txt2img.json");
    let template: Value =
        serde_json::from_str(&std::fs::read_to_string(file).expect("the template")).expect("JSON");
    let mut graph = template["graph"].clone();
    graph["4"]["inputs"]["ckpt_name"] = json!("not-installed.safetensors");
    let (status, answer) = h.post_json("/generate", &json!({ "graph": graph }));
    assert_eq!(
        (status, code(&answer)),
        (422, "comfyui_rejected"),
        "{answer}"
    );
    let node_errors = &answer["error"]["details"]["node_errors"];
    assert_eq!(
        node_errors["4"]["class_type"], "CheckpointLoaderSimple",
        "{answer}"
    );
    assert_eq!(node_errors["4"]["errors"][0]["type"], "value_not_in_list");

    // A stream was already told `queued` when ComfyUI saw the prompt: it ends with the same
    // error as its terminal event.
    h.sim.fail_next(Failure::ValidationError);
    let mut stream = h.generate_stream(&small_txt2img("y"));
    assert_eq!(stream.status, 200);
    let events = stream.until_terminal();
    let last = events.last().expect("a terminal event");
    assert_eq!(
        (last.event.as_str(), last.data["code"].as_str()),
        ("error", Some("comfyui_rejected")),
        "{:?}",
        last.data
    );
    assert!(last.data["details"]["node_errors"].is_object());
}

#[test]
fn execution_error_ends_the_stream_naming_the_node() {
    let h = Harness::start();
    h.sim.fail_next(Failure::ExecutionError {
        node_id: Some("3".into()),
        exception_type: "torch.cuda.OutOfMemoryError".into(),
        message: "CUDA out of memory. Tried to allocate 2.00 GiB".into(),
    });
    let events = h.generate_stream(&small_txt2img("oom")).until_terminal();
    let last = events.last().expect("a terminal event");
    assert_eq!(last.event, "error");
    assert_eq!(last.data["code"], "execution_failed");
    let message = last.data["message"].as_str().expect("message");
    assert!(message.contains("node 3 (KSampler)"), "{message}");
    assert!(message.contains("CUDA out of memory"), "{message}");
    assert_eq!(last.data["details"]["node_type"], "KSampler");
    assert_eq!(
        last.data["details"]["exception_type"],
        "torch.cuda.OutOfMemoryError"
    );

    h.sim.fail_next(Failure::ExecutionError {
        node_id: None,
        exception_type: "RuntimeError".into(),
        message: "boom".into(),
    });
    let (status, answer) = h.post_json("/generate", &small_txt2img("oom 2"));
    assert_eq!(
        (status, code(&answer)),
        (502, "execution_failed"),
        "{answer}"
    );
    let job_id = answer["error"]["details"]["job_id"]
        .as_str()
        .expect("job id in details");
    let (_, job) = h.get_json(&format!("/jobs/{job_id}"));
    assert_eq!(job["state"], "failed");
    assert_eq!(job["error"]["code"], "execution_failed");
}

#[test]
fn comfyui_down_is_503_before_any_stream() {
    let h = Harness::with(Options {
        vars: vec![("BACKEND_GRACE_SECS", "0".into())],
        ..Options::default()
    });
    h.sim.crash();
    let stream = h.generate_stream(&small_txt2img("nobody home"));
    assert_eq!(stream.status, 503);
    let body = stream.json_body();
    assert_eq!(code(&body), "comfyui_unavailable");
    assert!(
        body["error"]["details"]["backends"][0]["url"].is_string(),
        "{body}"
    );
    let (status, ready) = h.get_json("/ready");
    assert_eq!(status, 503, "{ready}");
}

#[test]
fn websocket_dropped_mid_job_reconnects_and_completes() {
    let h = Harness::with(Options::step_ms(30));
    h.sim.fail_next(Failure::CloseSocketAt { step: 2 });
    let mut body = small_txt2img("resilient");
    body["steps"] = json!(6);
    let events = h.generate_stream(&body).until_terminal();
    let last = events.last().expect("terminal");
    assert_eq!(last.event, "complete", "{:?}", last.data);
    assert_eq!(last.data["images"].as_array().map(Vec::len), Some(1));
}

#[test]
fn comfyui_dying_mid_job_ends_with_comfyui_lost_when_lost_retries_is_0() {
    // With the default LOST_RETRIES=1 the job would go back to the queue and wait for a
    // backend instead (tests/queue.rs).
    let h = Harness::with(Options {
        vars: vec![("LOST_RETRIES", "0".into())],
        tweak: |app| app.run.comfyui_grace = Duration::from_millis(800),
        ..Options::step_ms(30)
    });
    h.sim.fail_next(Failure::CrashAt { step: 2 });
    let mut body = small_txt2img("doomed");
    body["steps"] = json!(6);
    let events = h.generate_stream(&body).until_terminal();
    let last = events.last().expect("terminal");
    assert_eq!(last.event, "error");
    assert_eq!(last.data["code"], "comfyui_lost", "{:?}", last.data);
    assert!(
        events.iter().any(|e| e.event == "progress"),
        "progress went on while waiting"
    );
}

#[test]
fn comfyui_restarting_mid_job_loses_the_prompt_when_lost_retries_is_0() {
    let h = Harness::with(Options {
        vars: vec![("LOST_RETRIES", "0".into())],
        ..Options::step_ms(30)
    });
    let sim_events = h.sim.events();
    h.sim.fail_next(Failure::CrashAt { step: 2 });
    let mut body = small_txt2img("restarted");
    body["steps"] = json!(6);
    let mut stream = h.generate_stream(&body);
    assert_eq!(stream.status, 200);
    // Wait for the crash, then bring ComfyUI back empty, as a restarted process would be.
    common::wait_for(&sim_events, "the simulator crashed", |e| {
        matches!(e, SimEvent::Crashed)
    });
    h.sim.restart().expect("restarts on the same port");
    let events = stream.until_terminal();
    let last = events.last().expect("terminal");
    assert_eq!(last.data["code"], "comfyui_lost", "{:?}", last.data);
    let message = last.data["message"].as_str().unwrap_or("");
    assert!(message.contains("restarted"), "{message}");
}

#[test]
fn a_prompt_that_finishes_while_the_websocket_is_cut_is_collected_from_history() {
    let h = Harness::with(Options {
        tweak: |app| app.run.comfyui_grace = Duration::from_secs(10),
        ..Options::step_ms(20)
    });
    let sim_events = h.sim.events();
    let mut body = small_txt2img("blip");
    body["steps"] = json!(6);
    let mut stream = h.generate_stream(&body);
    assert_eq!(stream.status, 200);
    common::wait_for(&sim_events, "the sampler reached step 2", |e| {
        matches!(e, SimEvent::Step { value: 2, .. })
    });
    h.sim.cut_websockets(); // ComfyUI goes on; the gateway cannot follow it live
    let finished = common::wait_for(&sim_events, "the prompt finished in ComfyUI", |e| {
        matches!(e, SimEvent::Finished { .. })
    });
    assert!(matches!(finished, SimEvent::Finished { ref outcome, .. } if outcome == "success"));
    h.sim.restore_websockets();
    let events = stream.until_terminal();
    let last = events.last().expect("terminal");
    assert_eq!(last.event, "complete", "{:?}", last.data);
    assert_eq!(
        last.data["images"].as_array().map(Vec::len),
        Some(1),
        "images stored from history"
    );
}

#[test]
fn the_simulator_can_be_told_to_fail_over_http_for_demos() {
    let h = Harness::start();
    let armed = agent()
        .post(&format!("{}/sim/fail_next", h.sim.url()))
        .header("Content-Type", "application/json")
        .send(r#"{"failure": "execution_error", "node_id": "3", "message": "out of memory"}"#)
        .expect("the simulator answers");
    assert_eq!(armed.status().as_u16(), 200);
    let (status, answer) = h.post_json("/generate", &small_txt2img("demo failure"));
    assert_eq!(
        (status, code(&answer)),
        (502, "execution_failed"),
        "{answer}"
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("out of memory")
    );
}

#[test]
fn a_prompt_whose_messages_never_arrive_is_found_in_history() {
    let h = Harness::with(Options {
        tweak: |app| app.run.silence_check = Duration::from_millis(300),
        ..Options::default()
    });
    let sim_events = h.sim.events();
    h.sim.mute_websockets(true); // the socket stays open but says nothing
    let mut stream = h.generate_stream(&small_txt2img("unheard"));
    assert_eq!(stream.status, 200);
    common::wait_for(&sim_events, "the prompt finished in ComfyUI", |e| {
        matches!(e, SimEvent::Finished { .. })
    });
    let events = stream.until_terminal();
    let last = events.last().expect("terminal");
    assert_eq!(last.event, "complete", "{:?}", last.data);
    assert_eq!(last.data["images"].as_array().map(Vec::len), Some(1));
}

#[test]
fn raw_graphs_are_checked_here_and_by_comfyui() {
    let h = Harness::start();
    let (status, answer) = h.post_json("/generate", &json!({"graph": [1, 2, 3]}));
    assert_eq!((status, code(&answer)), (400, "invalid_params"), "{answer}");
    let (status, answer) = h.post_json("/generate", &json!({"graph": {"1": {"inputs": {}}}}));
    assert_eq!(
        (status, code(&answer)),
        (400, "invalid_params"),
        "no class_type: {answer}"
    );

    let unknown = json!({"graph": {
        "1": {"class_type": "NoSuchNode", "inputs": {}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }});
    let (status, answer) = h.post_json("/generate", &unknown);
    assert_eq!(
        (status, code(&answer)),
        (422, "comfyui_rejected"),
        "{answer}"
    );
    let message = answer["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("NoSuchNode"),
        "ComfyUI's reason reaches the client: {message}"
    );
}

#[test]
fn a_comfyui_answering_prompt_with_500_ends_the_job_with_a_clear_error_not_a_hang() {
    let h = Harness::start();
    h.sim.fail_prompts(Some(PromptFault {
        status: 500,
        body: "Internal Server Error: custom node exploded\n".into(),
        times: u32::MAX,
    }));
    // A stream and a JSON waiter, both on the only backend.
    let mut stream = h.generate_stream(&small_txt2img("streamed"));
    let (status, body) = h.post_json("/generate", &small_txt2img("waited for"));
    assert_eq!(status, 502, "{body}");
    assert_eq!(code(&body), "comfyui_error", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for part in [h.sim.url().as_str(), "500", "custom node exploded"] {
        assert!(message.contains(part), "{part:?} in {message:?}");
    }
    assert_eq!(body["error"]["details"]["status"], 500, "{body}");
    assert_eq!(body["error"]["details"]["backend"], h.sim.url().as_str());
    let events = stream.until_terminal();
    let last = events.last().expect("a terminal event");
    assert_eq!(last.event, "error");
    assert_eq!(last.data["code"], "comfyui_error", "{:?}", last.data);
    // Each job was tried a bounded number of times, about once a second: no hot loop.
    let tries = common::prompt_requests(&h.sim);
    assert_eq!(tries.len(), 6, "3 tries for each of the 2 jobs");
    // Nothing more is sent once they ended.
    let (status, _) = h.get_json("/health");
    assert_eq!(status, 200);
    assert_eq!(common::prompt_requests(&h.sim).len(), 6);
}

#[test]
fn a_backend_answering_without_a_prompt_id_rests_while_the_other_takes_the_jobs() {
    let broken = comfyui_sim::ComfySim::start(comfyui_sim::SimOptions {
        step_delay: Duration::from_millis(5),
        ..comfyui_sim::SimOptions::default()
    })
    .expect("a second simulator");
    broken.fail_prompts(Some(PromptFault {
        status: 200,
        body: "{\"number\": 3}".into(),
        times: u32::MAX,
    }));
    let h = Harness::with(Options {
        more_backends: vec![broken.url()],
        ..Options::default()
    });
    let started = std::time::Instant::now();
    let ids: Vec<String> = (0..8)
        .map(|n| {
            let (status, body) = h.post_json(
                "/jobs",
                &json!({"workflow": "invert", "width": 8, "height": 8, "color": n}),
            );
            assert_eq!(status, 202, "{body}");
            body["job_id"].as_str().expect("job id").to_string()
        })
        .collect();
    for id in &ids {
        let events = h
            .get_stream(&format!("/jobs/{id}/events"), &[])
            .until_terminal();
        let last = events.last().expect("a terminal event");
        assert_eq!(last.event, "complete", "{:?}", last.data);
        assert_eq!(last.data["backend"], h.sim.url().as_str());
    }
    // The broken one was asked about once a second at most, not every few milliseconds.
    let asked = common::prompt_requests(&broken).len() as u64;
    assert!(asked >= 1, "the broken backend was tried");
    assert!(
        asked <= 2 + started.elapsed().as_secs(),
        "{asked} tries in {:?}",
        started.elapsed()
    );
}
