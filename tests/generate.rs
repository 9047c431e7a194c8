//! The pipeline end to end against the ComfyUI simulator, with local storage: what a client sees
//! on the stream and in JSON, and what lands on disk.

mod common;

use comfyui_sim::SimEvent;
use common::harness::{Harness, Options, small_txt2img};
use common::png_text_chunks;
use serde_json::{Value, json};
use std::time::Duration;

fn events_named<'a>(events: &'a [common::sse_client::SseEvent], name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e.event == name)
        .map(|e| &e.data)
        .collect()
}

#[test]
fn streamed_generation_stores_locally_and_links_images() {
    let h = Harness::start();
    let mut stream = h.generate_stream(&small_txt2img("a red fox"));
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    let events = stream.until_terminal();
    assert!(stream.ended(), "the stream ends after the terminal event");
    assert_eq!(stream.retry, Some(2000), "streams open with retry: 2000");

    let ids: Vec<u64> = events
        .iter()
        .map(|e| e.id.expect("every event has an id"))
        .collect();
    assert_eq!(
        ids,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "ids count 1, 2, 3..."
    );
    let queued = &events[0];
    assert_eq!(queued.event, "queued");
    assert_eq!(queued.data["workflow"], "txt2img");
    assert_eq!(
        queued.data["queue_position"], 0,
        "first in the gateway's queue"
    );
    let dispatched = &events[1];
    assert_eq!(dispatched.event, "dispatched");
    assert!(dispatched.data["prompt_id"].is_string());
    assert_eq!(dispatched.data["backend"], h.sim.url().as_str());
    let job_id = queued.data["job_id"].as_str().expect("job_id").to_string();
    assert!(events.iter().all(|e| e.data["job_id"] == job_id.as_str()));

    let complete = events.last().expect("a terminal event");
    assert_eq!(complete.event, "complete", "{:?}", complete.data);
    let images = complete.data["images"].as_array().expect("images");
    assert_eq!(images.len(), 1);
    let image = &images[0];
    let key = format!("{job_id}/0.png");
    assert_eq!(image["key"], key.as_str());
    assert_eq!(image["url"], h.url(&format!("/images/{key}")).as_str());
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(64), Some(64))
    );
    assert_eq!(image["content_type"], "image/png");
    assert_eq!(image["kind"], "image");
    assert_eq!(image["node"], "9");
    assert_eq!(complete.data["warnings"], serde_json::json!([]));
    assert_eq!(complete.data["params"]["seed"], 42);
    assert_eq!(complete.data["params"]["prompt"], "a red fox");
    for timing in ["queued", "running", "storing", "total"] {
        assert!(
            complete.data["timings_ms"][timing].is_u64(),
            "timings_ms.{timing}"
        );
    }

    // The file is on disk, the link downloads it, and the metadata line names it.
    let on_disk = std::fs::read(h.dir.path().join("images").join(&key)).expect("image stored");
    assert_eq!(image["bytes"].as_u64(), Some(on_disk.len() as u64));
    let (status, downloaded) = h.get_bytes(image["url"].as_str().expect("url"));
    assert_eq!(status, 200);
    assert_eq!(downloaded, on_disk);
    let lines = std::fs::read_to_string(h.dir.path().join("generations.jsonl")).expect("jsonl");
    let rows: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["job_id"], job_id.as_str());
    assert_eq!(rows[0]["storage_key"], key.as_str());
    assert_eq!(rows[0]["seed"], 42);
    assert_eq!(rows[0]["url"], image["url"]);
    assert_eq!(rows[0]["kind"], "image");
    assert_eq!(rows[0]["content_type"], "image/png");
    assert_eq!(
        (rows[0]["width"].as_u64(), rows[0]["height"].as_u64()),
        (Some(64), Some(64))
    );

    // The job stays readable.
    let (status, job) = h.get_json(&format!("/jobs/{job_id}"));
    assert_eq!(status, 200);
    assert_eq!(job["state"], "completed");
    assert_eq!(job["result"]["images"][0]["key"], key.as_str());
}

#[test]
fn json_mode_waits_and_answers_the_result() {
    let h = Harness::start();
    let (status, body) = h.post_json("/generate", &small_txt2img("a lighthouse"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["images"].as_array().map(Vec::len), Some(1));
    assert_eq!(body["params"]["steps"], 3);
    let job_id = body["job_id"].as_str().expect("job_id");
    let (_, job) = h.get_json(&format!("/jobs/{job_id}"));
    assert_eq!(job["state"], "completed");
}

#[test]
fn random_seed_is_drawn_and_reported_exactly() {
    let h = Harness::start();
    let mut body = small_txt2img("seeded");
    body.as_object_mut().expect("object").remove("seed");
    let (status, result) = h.post_json("/generate", &body);
    assert_eq!(status, 200, "{result}");
    let seed = result["params"]["seed"]
        .as_u64()
        .expect("the drawn seed is a u64");
    // The seed ComfyUI received is the one reported, to the last digit.
    let prompts: Vec<Value> = h
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/prompt")
        .map(|r| serde_json::from_slice(&r.body).expect("JSON prompt"))
        .collect();
    assert_eq!(
        prompts[0]["prompt"]["3"]["inputs"]["seed"].as_u64(),
        Some(seed)
    );
}

#[test]
fn huge_seed_survives_without_rounding() {
    let h = Harness::start();
    let mut body = small_txt2img("max seed");
    body["seed"] = json!(u64::MAX);
    let (status, result) = h.post_json("/generate", &body);
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["params"]["seed"].as_u64(), Some(u64::MAX));
    let sent = h
        .sim
        .requests()
        .into_iter()
        .find(|r| r.path == "/prompt" && r.method == "POST")
        .expect("a prompt was queued");
    let text = String::from_utf8(sent.body).expect("UTF-8");
    assert!(text.contains("18446744073709551615"), "{text}");
}

#[test]
fn progress_ticks_once_per_interval() {
    // 20 steps of 175 ms: a 3.5 s job at the default one-second cadence.
    let h = Harness::with(Options {
        vars: vec![("PROGRESS_INTERVAL_MS", "1000".into())],
        ..Options::step_ms(175)
    });
    let mut body = small_txt2img("slow fox");
    body["steps"] = json!(20);
    let events = h.generate_stream(&body).until_terminal();
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("complete"));
    let progress = events_named(&events, "progress");
    assert!(
        (3..6).contains(&progress.len()),
        "{} progress events for a 3.5 s job",
        progress.len()
    );
    for p in &progress {
        for field in [
            "state",
            "queue_position",
            "node",
            "node_type",
            "step",
            "steps",
            "percent",
            "elapsed_ms",
        ] {
            assert!(p.get(field).is_some(), "progress lacks {field}: {p}");
        }
    }
    let percents: Vec<f64> = progress
        .iter()
        .filter_map(|p| p["percent"].as_f64())
        .collect();
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "percent never goes back: {percents:?}"
    );
    assert!(
        progress
            .iter()
            .any(|p| p["node_type"] == "KSampler" && p["steps"] == 20)
    );
}

#[test]
fn a_step_reaches_the_client_within_one_interval() {
    let h = Harness::with(Options::step_ms(300));
    let sim_events = h.sim.events();
    let mut body = small_txt2img("timed fox");
    body["steps"] = json!(5);
    let events = h.generate_stream(&body).until_terminal();
    let steps: Vec<(u32, std::time::Instant)> = sim_events
        .try_iter()
        .filter_map(|e| match e {
            SimEvent::Step { value, at, .. } => Some((value, at)),
            _ => None,
        })
        .collect();
    assert!(steps.len() >= 4, "the simulator reported its steps");
    for (value, sent) in steps.iter().filter(|(v, _)| *v < 5) {
        let seen = events
            .iter()
            .find(|e| e.event == "progress" && e.data["step"].as_u64() >= Some(u64::from(*value)))
            .unwrap_or_else(|| panic!("step {value} never reached the client"));
        // `make bench` measures this latency (tens of ms); the bound here is only generous
        // enough that a busy 2-core machine cannot fail it, while a stream that buffers events
        // until the job ends (seconds) still does.
        let delay = seen.at.saturating_duration_since(*sent);
        assert!(
            delay < Duration::from_millis(1200),
            "step {value} took {delay:?}"
        );
    }
}

#[test]
fn cached_prompt_runs_nothing_and_still_returns_images() {
    let h = Harness::start();
    let body = small_txt2img("the same fox");
    let (status, first) = h.post_json("/generate", &body);
    assert_eq!(status, 200, "{first}");
    let sim_events = h.sim.events();
    let (status, second) = h.post_json("/generate", &body);
    assert_eq!(status, 200, "{second}");
    let steps = sim_events
        .try_iter()
        .filter(|e| matches!(e, SimEvent::Step { .. }))
        .count();
    assert_eq!(steps, 0, "every node was cached: ComfyUI executed nothing");
    assert_eq!(second["images"].as_array().map(Vec::len), Some(1));
    assert_ne!(first["job_id"], second["job_id"]);
    assert_eq!(first["images"][0]["bytes"], second["images"][0]["bytes"]);
}

#[test]
fn template_without_models_and_raw_graph_both_run() {
    let h = Harness::start();
    let (status, result) = h.post_json(
        "/generate",
        &json!({"workflow": "invert", "width": 16, "height": 8, "color": 255}),
    );
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["images"][0]["width"], 16);
    assert_eq!(result["images"][0]["height"], 8);

    let graph = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "raw"}},
    });
    let (status, result) = h.post_json("/generate", &json!({ "graph": graph }));
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["workflow"], "graph");
    assert_eq!(
        result["images"].as_array().map(Vec::len),
        Some(2),
        "one image per batch item"
    );
}

#[test]
fn img2img_uploads_the_input_image_first() {
    let h = Harness::start();
    let png = common::tiny_png(8, 8);
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &png);
    let body = json!({
        "workflow": "img2img", "prompt": "paint it", "seed": 1, "steps": 2,
        "image": format!("data:image/png;base64,{encoded}"),
    });
    let (status, result) = h.post_json("/generate", &body);
    assert_eq!(status, 200, "{result}");
    let requests = h.sim.requests();
    let upload = requests
        .iter()
        .position(|r| r.path == "/upload/image")
        .expect("the image was uploaded");
    let queued = requests
        .iter()
        .position(|r| r.path == "/prompt" && r.method == "POST")
        .expect("the prompt was queued");
    assert!(
        upload < queued,
        "upload happens before the prompt is queued"
    );
    let prompt: Value = serde_json::from_slice(&requests[queued].body).expect("JSON");
    let name = prompt["prompt"]["10"]["inputs"]["image"]
        .as_str()
        .expect("LoadImage name");
    assert!(
        name.ends_with(".png"),
        "LoadImage gets the uploaded name, got {name}"
    );
    assert_eq!(result["params"]["image"]["bytes"], png.len());
}

#[test]
fn an_input_image_is_kept_once_and_uploaded_once_per_backend_under_its_content_name() {
    let h = Harness::start();
    let sim_events = h.sim.events();
    let red = common::tiny_png(8, 8);
    let other = common::tiny_png(9, 9);
    let job = |png: &[u8], seed: u64| {
        let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png);
        json!({"workflow": "img2img", "prompt": "again", "seed": seed, "steps": 1, "image": encoded})
    };
    let uploads = || {
        h.sim
            .requests()
            .iter()
            .filter(|r| r.path == "/upload/image")
            .count()
    };
    let hex = comfyui_gateway::blobs::BlobHash::of(&red).hex();
    for seed in 1..=3 {
        let (status, result) = h.post_json("/generate", &job(&red, seed));
        assert_eq!(status, 200, "{result}");
        // The saved record refers to the image; it does not carry it.
        let id = result["job_id"].as_str().expect("job id");
        let record = std::fs::read_to_string(h.dir.path().join("jobs").join(format!("{id}.json")))
            .expect("the job's record");
        assert!(record.contains(&format!("blake3:{hex}")), "{record}");
        assert!(
            record.len() < 4096,
            "a small record: {} bytes",
            record.len()
        );
    }
    assert_eq!(uploads(), 1, "the same image is uploaded once");
    let (status, result) = h.post_json("/generate", &job(&other, 4));
    assert_eq!(status, 200, "{result}");
    assert_eq!(uploads(), 2, "a different image is uploaded");
    let requests = h.sim.requests();
    let prompts: Vec<Value> = requests
        .iter()
        .filter(|r| r.path == "/prompt" && r.method == "POST")
        .map(|r| serde_json::from_slice(&r.body).expect("JSON"))
        .collect();
    assert_eq!(
        prompts[0]["prompt"]["10"]["inputs"]["image"],
        format!("gateway/{hex}.png"),
        "LoadImage names the file by its content, in the gateway subfolder"
    );
    let blob = h.dir.path().join("blobs").join(&hex[..2]).join(&hex);
    assert_eq!(std::fs::read(blob).expect("the blob"), red);

    // A restarted ComfyUI (its input folder gone) gets the file again.
    h.sim.restart().expect("the simulator restarts");
    common::wait_for(&sim_events, "the restart", |e| {
        matches!(e, comfyui_sim::SimEvent::Restarted)
    });
    common::wait_for(&sim_events, "the gateway to reconnect", |e| {
        matches!(e, comfyui_sim::SimEvent::WsConnected { .. })
    });
    let (status, result) = h.post_json("/generate", &job(&red, 5));
    assert_eq!(status, 200, "{result}");
    assert_eq!(uploads(), 3, "uploaded again after ComfyUI restarted");
}

/// The first image of a result as the gateway stored it, and as ComfyUI made it.
fn stored_and_original(h: &Harness, result: &Value) -> (Vec<u8>, Vec<u8>) {
    let key = result["images"][0]["key"].as_str().expect("key");
    let stored = std::fs::read(h.dir.path().join("images").join(key)).expect("stored");
    let prompt_id = result["prompt_id"].as_str().expect("prompt id");
    (stored, common::comfyui_original(h, prompt_id))
}

#[test]
fn png_text_chunks_are_stripped_by_default_with_pixels_unchanged() {
    let h = Harness::start();
    let (status, result) = h.post_json("/generate", &small_txt2img("secret prompt"));
    assert_eq!(status, 200, "{result}");
    let (stored, original) = stored_and_original(&h, &result);
    assert!(
        !png_text_chunks(&original).is_empty(),
        "ComfyUI embedded its workflow"
    );
    assert!(
        png_text_chunks(&stored).is_empty(),
        "stored PNG has no text chunks"
    );
    assert_eq!(
        common::decode_pixels(&stored),
        common::decode_pixels(&original)
    );
}

#[test]
fn png_text_chunks_are_kept_with_png_metadata_keep() {
    let h = Harness::with(Options {
        vars: vec![("PNG_METADATA", "keep".into())],
        ..Options::default()
    });
    let (status, result) = h.post_json("/generate", &small_txt2img("keep it"));
    assert_eq!(status, 200, "{result}");
    let (stored, original) = stored_and_original(&h, &result);
    assert_eq!(stored, original, "stored byte for byte as ComfyUI made it");
}

#[test]
fn workflows_and_health_describe_the_gateway() {
    let h = Harness::start();
    let (status, body) = h.get_json("/workflows");
    assert_eq!(status, 200);
    let names: Vec<&str> = body["workflows"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    for name in ["img2img", "invert", "txt2img"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    let (status, txt2img) = h.get_json("/workflows/txt2img");
    assert_eq!(status, 200);
    assert_eq!(txt2img["parameters"]["prompt"]["required"], true);
    assert_eq!(txt2img["parameters"]["steps"]["max"], 150);
    assert_eq!(h.get_json("/health"), (200, json!({"status": "ok"})));
    let (status, ready) = h.get_json("/ready");
    assert_eq!(status, 200, "{ready}");
}

#[test]
fn output_format_converts_images_before_storage_without_metadata() {
    let h = Harness::start();
    for (format, extension, content_type, magic) in [
        ("jpeg", "jpg", "image/jpeg", &b"\xff\xd8\xff"[..]),
        ("webp", "webp", "image/webp", &b"RIFF"[..]),
    ] {
        let mut body = small_txt2img(&format!("as {format}"));
        body["output_format"] = json!(format);
        if format == "jpeg" {
            body["quality"] = json!(80);
        }
        let (status, result) = h.post_json("/generate", &body);
        assert_eq!(status, 200, "{result}");
        let image = &result["images"][0];
        assert_eq!(image["content_type"], content_type, "{result}");
        assert!(
            image["key"]
                .as_str()
                .is_some_and(|k| k.ends_with(&format!("/0.{extension}"))),
            "{result}"
        );
        assert_eq!(
            (image["width"].as_u64(), image["height"].as_u64()),
            (Some(64), Some(64))
        );
        let (status, bytes) = h.get_bytes(image["url"].as_str().expect("url"));
        assert_eq!(status, 200);
        assert!(bytes.starts_with(magic), "{format}: stored in that format");
        assert_eq!(image["bytes"].as_u64(), Some(bytes.len() as u64));
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("\"class_type\""),
            "no workflow carried into the {format}"
        );
    }
    let (status, answer) = h.post_json(
        "/generate",
        &json!({"workflow": "invert", "output_format": "webp", "quality": 50}),
    );
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid_params")),
        "quality is for JPEG only: {answer}"
    );
}

#[test]
fn a_branch_a_node_blocks_does_not_fail_the_job() {
    // ComfyUI reports a blocked branch (a content filter's ExecutionBlocker) with an
    // `execution_error` and goes on to `execution_success`: the job completes with what ran.
    let h = Harness::start();
    h.sim.fail_next(comfyui_sim::Failure::ExecutionBlocked {
        node_id: None,
        message: "NSFW content".into(),
    });
    let graph = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "kept"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "blocked"}}
    });
    let (status, result) = h.post_json("/generate", &json!({"graph": graph}));
    assert_eq!(status, 200, "{result}");
    assert_eq!(
        result["images"].as_array().map(Vec::len),
        Some(1),
        "{result}"
    );
}
