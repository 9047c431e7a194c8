//! The gateway's own request fields next to template parameters of the same name: a template
//! may name a parameter `quality` (as ComfyUI's SaveAudioMP3 and SaveAnimatedWEBP call an
//! input), and then it works as `GET /workflows/{name}` describes it, while the gateway's JPEG
//! quality is given in `options`.

mod common;

use common::harness::{Harness, Options, TestDir};
use serde_json::{Value, json};

/// An MP3 template whose `quality` is SaveAudioMP3's own input.
fn mp3_template() -> Value {
    json!({
        "description": "A short sound saved as MP3",
        "parameters": {
            "quality": {"type": "string", "default": "V0", "targets": ["4.quality"],
                        "description": "SaveAudioMP3's quality"}
        },
        "graph": {
            "1": {"class_type": "CheckpointLoaderSimple",
                  "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
            "2": {"class_type": "EmptyLatentAudio", "inputs": {"seconds": 1.0, "batch_size": 1}},
            "3": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
            "4": {"class_type": "SaveAudioMP3", "inputs": {"audio": ["3", 0],
                  "filename_prefix": "audio/gw", "quality": "V0"}}
        }
    })
}

fn harness(workflows: &TestDir) -> Harness {
    std::fs::write(
        workflows.path().join("mp3.json"),
        mp3_template().to_string(),
    )
    .expect("the temp dir is writable");
    let invert = common::harness::workflows_dir().join("invert.json");
    std::fs::copy(invert, workflows.path().join("invert.json")).expect("invert copied");
    Harness::with(Options {
        vars: vec![
            ("WORKFLOWS_DIR", workflows.path().display().to_string()),
            ("DEFAULT_WORKFLOW", "invert".to_string()),
        ],
        ..Options::default()
    })
}

#[test]
fn a_template_parameter_named_quality_works_as_its_schema_says() {
    let workflows = TestDir::new();
    let h = harness(&workflows);
    let (status, schema) = h.get_json("/workflows/mp3");
    assert_eq!(status, 200);
    assert_eq!(
        schema["parameters"]["quality"]["choices"],
        json!(["V0", "128k", "320k"]),
        "{schema}"
    );
    // What the schema offers is accepted (before: 400 "must be an integer from 1 to 100").
    let (status, result) = h.post_json("/generate", &json!({"workflow": "mp3", "quality": "320k"}));
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["params"]["quality"], "320k");
    assert_eq!(result["images"][0]["kind"], "audio");
    let queued = h
        .sim
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/prompt" && r.method == "POST")
        .expect("a prompt was queued");
    let sent: Value = serde_json::from_slice(&queued.body).expect("JSON");
    assert_eq!(sent["prompt"]["4"]["inputs"]["quality"], "320k");
    // What it does not offer is refused as the template's parameter, naming the choices.
    let (status, error) = h.post_json("/generate", &json!({"workflow": "mp3", "quality": 80}));
    assert_eq!(status, 400);
    let problem = error["error"]["details"]["fields"]["quality"].as_str();
    assert!(
        problem.is_some_and(|p| !p.contains("1 to 100")),
        "the template's own check, not the JPEG quality's: {error}"
    );
    // The OpenAPI document agrees: the template's request documents its own `quality`.
    let (_, doc) = h.get_json("/openapi.json");
    let request = &doc["components"]["schemas"]["Workflow_mp3"]["properties"];
    assert_eq!(request["quality"]["type"], "string", "{request}");
    assert!(request["options"]["properties"]["quality"].is_object());
}

#[test]
fn the_gateways_own_fields_can_always_be_given_in_options() {
    let workflows = TestDir::new();
    let h = harness(&workflows);
    // Beside a template parameter named quality: the JPEG quality goes in `options`.
    let body = json!({"workflow": "mp3", "quality": "128k",
                      "options": {"priority": 5, "output_format": "jpeg", "quality": 70}});
    let (status, result) = h.post_json("/jobs", &body);
    assert_eq!(status, 202, "{result}");
    // For a template without such a parameter, both spellings work as before.
    for body in [
        json!({"width": 8, "height": 8, "output_format": "jpeg", "quality": 60}),
        json!({"width": 8, "height": 8, "options": {"output_format": "jpeg", "quality": 60}}),
    ] {
        let (status, result) = h.post_json("/generate", &body);
        assert_eq!(status, 200, "{body}: {result}");
        assert_eq!(result["images"][0]["content_type"], "image/jpeg", "{body}");
    }
    // Mistakes name the field as the client spelled it.
    let cases = [
        (
            json!({"options": {"quality": 101, "output_format": "jpeg"}}),
            "options.quality",
        ),
        (json!({"options": {"qualty": 80}}), "options.qualty"),
        (
            json!({"priority": 1, "options": {"priority": 2}}),
            "options.priority",
        ),
        (json!({"options": "jpeg"}), "options"),
        (
            json!({"workflow": "mp3", "options": {"quality": 80}}),
            "options.quality",
        ),
    ];
    for (body, field) in cases {
        let (status, error) = h.post_json("/jobs", &body);
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["code"], "invalid_params");
        assert!(
            error["error"]["details"]["fields"][field].is_string(),
            "{body} names {field}: {error}"
        );
    }
}
