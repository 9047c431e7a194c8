//! Workflows as ComfyUI saves them (the UI format): templates and raw graphs converted with the
//! backends' node definitions before anything is queued, and refused with reasons when they
//! cannot be.

mod common;

use common::harness::{Harness, Options};
use serde_json::{Value, json};
use std::path::Path;

fn fixtures() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ui"))
}

/// A gateway whose templates are the UI-format fixtures, on the simulator (or on `comfyui`).
fn harness(comfyui: Option<String>) -> Harness {
    let mut vars = vec![
        (
            "WORKFLOWS_DIR",
            fixtures().join("workflows").display().to_string(),
        ),
        ("DEFAULT_WORKFLOW", "invert-ui".to_string()),
    ];
    if let Some(url) = comfyui {
        vars.push(("COMFYUI_URL", url));
    }
    Harness::with(Options {
        vars,
        ..Options::default()
    })
}

fn saved_workflow() -> Value {
    let text = std::fs::read_to_string(fixtures().join("workflows/saved-invert.json"))
        .expect("fixture is readable");
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// The prompts the simulator was sent, as graphs.
fn prompts(h: &Harness) -> Vec<Value> {
    h.sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/prompt")
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).expect("prompt is JSON")["prompt"].clone()
        })
        .collect()
}

/// Only inputs and class types: `_meta` is for people.
fn without_meta(graph: &Value) -> Value {
    let mut graph = graph.clone();
    for node in graph.as_object_mut().expect("a graph").values_mut() {
        node.as_object_mut().expect("a node").remove("_meta");
    }
    graph
}

fn expected_invert(width: u64, height: u64, color: u64) -> Value {
    json!({
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": width, "height": height, "batch_size": 1, "color": color}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"filename_prefix": "gateway-ui", "images": ["3", 0]}},
    })
}

#[test]
fn a_ui_template_is_converted_and_its_parameters_land_on_its_ui_node_ids() {
    let h = harness(None);
    let (status, result) = h.post_json(
        "/generate",
        &json!({"workflow": "invert-ui", "width": 32, "height": 24, "color": 255}),
    );
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["images"][0]["width"], 32);
    assert_eq!(result["images"][0]["height"], 24);
    let sent = prompts(&h);
    assert_eq!(sent.len(), 1);
    assert_eq!(without_meta(&sent[0]), expected_invert(32, 24, 255));
    assert_eq!(sent[0]["3"]["_meta"]["title"], "Invert Image");

    // The schema says what the template is and that it can run.
    let (status, schema) = h.get_json("/workflows/invert-ui");
    assert_eq!(status, 200);
    assert_eq!(schema["format"], "ui");
    assert_eq!(schema["available"], true, "{schema}");
    assert_eq!(schema["parameters"]["width"]["default"], 64);
}

#[test]
fn a_workflow_file_exactly_as_comfyui_saved_it_is_a_template_without_parameters() {
    let h = harness(None);
    let (status, result) = h.post_json("/generate", &json!({"workflow": "saved-invert"}));
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["images"][0]["width"], 64);
    let (status, refused) = h.post_json(
        "/generate",
        &json!({"workflow": "saved-invert", "width": 8}),
    );
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_params");
}

#[test]
fn a_raw_ui_graph_is_converted_before_it_is_queued() {
    let h = harness(None);
    let (status, created) = h.post_json("/jobs", &json!({"graph": saved_workflow()}));
    assert_eq!(status, 202, "{created}");
    let job = created["job_id"].as_str().expect("job id").to_string();
    let mut stream = h.get_stream(&format!("/jobs/{job}/events"), &[]);
    let mut last = None;
    while let Some(event) = stream.next_event() {
        last = Some(event.event.clone());
        if matches!(event.event.as_str(), "complete" | "error" | "cancelled") {
            break;
        }
    }
    assert_eq!(last.as_deref(), Some("complete"));
    assert_eq!(without_meta(&prompts(&h)[0]), expected_invert(64, 64, 0));
}

#[test]
fn a_ui_graph_that_cannot_be_converted_names_every_node_and_queues_nothing() {
    let h = harness(None);
    let mut graph = saved_workflow();
    let nodes = graph["nodes"].as_array_mut().expect("nodes");
    nodes.push(
        json!({"id": 7, "type": "UltimateSDUpscale", "mode": 0, "title": "Upscale",
                      "inputs": [], "outputs": [], "widgets_values": [2]}),
    );
    nodes[0]["widgets_values"] = json!(["wide", 64, 1, 0]);
    let (status, refused) = h.post_json("/generate", &json!({"graph": graph}));
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid_workflow");
    let named = &refused["error"]["details"]["nodes"];
    assert_eq!(named[0]["id"], "1");
    assert_eq!(named[0]["type"], "EmptyImage");
    assert_eq!(named[0]["title"], "EmptyImage");
    assert!(
        named[0]["reason"]
            .as_str()
            .expect("reason")
            .contains("width (INT) holds \"wide\"")
    );
    assert_eq!(named[1]["id"], "7");
    assert_eq!(named[1]["title"], "Upscale");
    assert!(
        named[1]["reason"]
            .as_str()
            .expect("reason")
            .contains("not installed")
    );
    assert!(prompts(&h).is_empty(), "nothing reached ComfyUI");
    assert!(h.app.jobs.all().is_empty(), "no job was created");
}

#[test]
fn until_node_definitions_can_be_read_a_ui_template_says_so_and_requests_get_503() {
    // Start-up does not wait for ComfyUI: the gateway serves with nothing on the other end.
    let refusing = common::RefusingPort::new();
    let h = harness(Some(refusing.url()));
    let (status, list) = h.get_json("/workflows");
    assert_eq!(status, 200);
    let template = list["workflows"]
        .as_array()
        .expect("workflows")
        .iter()
        .find(|t| t["name"] == "invert-ui")
        .expect("listed")
        .clone();
    assert_eq!(template["available"], false, "{template}");
    let reason = template["unavailable"].as_str().expect("a reason");
    assert!(reason.contains("node definitions"), "{reason}");

    let (status, refused) = h.post_json("/generate", &json!({"workflow": "invert-ui"}));
    assert_eq!(status, 503, "{refused}");
    assert_eq!(refused["error"]["code"], "comfyui_unavailable");
    let message = refused["error"]["message"].as_str().expect("message");
    assert!(message.contains("node definitions"), "{message}");
    assert!(refused["error"]["details"]["backends"].is_object());
}

/// How many `/object_info/{class}` requests the simulator has answered.
fn definition_reads(h: &Harness) -> usize {
    h.sim
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/object_info/"))
        .count()
}

#[test]
fn node_definitions_are_read_once_and_again_after_a_refresh() {
    let h = harness(None);
    let before = definition_reads(&h);
    let (status, _) = h.post_json(
        "/generate",
        &json!({"workflow": "invert-ui", "width": 8, "height": 8}),
    );
    assert_eq!(status, 200);
    let first = definition_reads(&h) - before;
    // EmptyImage, ImageInvert, SaveImage: one request each.
    assert_eq!(first, 3, "each class the workflow uses is read once");
    let (status, _) = h.post_json("/jobs", &json!({"graph": saved_workflow()}));
    assert_eq!(status, 202);
    let (status, _) = h.get_json("/workflows");
    assert_eq!(status, 200);
    assert_eq!(
        definition_reads(&h) - before,
        first,
        "then they come from the cache"
    );

    let (status, _) = h.post_json("/workflows/refresh", &json!({}));
    assert_eq!(status, 200);
    let (status, schema) = h.get_json("/workflows/invert-ui");
    assert_eq!(status, 200);
    assert_eq!(schema["available"], true);
    assert_eq!(
        definition_reads(&h) - before,
        2 * first,
        "a refresh reads them again when next needed"
    );
}

#[test]
fn one_readable_backend_is_enough_to_convert() {
    let refusing = common::RefusingPort::new();
    let h = Harness::with(Options {
        vars: vec![
            (
                "WORKFLOWS_DIR",
                fixtures().join("workflows").display().to_string(),
            ),
            ("DEFAULT_WORKFLOW", "invert-ui".to_string()),
        ],
        more_backends: vec![refusing.url()],
        ..Options::default()
    });
    let (status, schema) = h.get_json("/workflows/invert-ui");
    assert_eq!(status, 200);
    assert_eq!(schema["available"], true, "{schema}");
    let (status, result) = h.post_json("/generate", &json!({"workflow": "invert-ui", "width": 16}));
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["images"][0]["width"], 16);
}
