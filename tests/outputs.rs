//! Outputs of every kind on local disk, as a client downloads them through the gateway: the
//! right content type per kind, and nothing served as a page.

mod common;

use comfyui_gateway::ids::new_uuid;
use comfyui_gateway::storage::Storage;
use common::harness::{Harness, Options, TestDir, agent};
use serde_json::{Value, json};

/// A template that both saves (node 3) and previews (node 4) its image, with `outputs` as given.
fn saving_and_previewing(outputs: Option<Value>) -> Value {
    let mut template = json!({
        "description": "Saves and previews an inverted image.",
        "graph": {
            "1": {"class_type": "EmptyImage",
                  "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["2", 0]}},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
        }
    });
    if let Some(outputs) = outputs {
        template["outputs"] = outputs;
    }
    template
}

#[test]
fn a_templates_outputs_field_decides_whether_previews_are_stored_too() {
    let workflows = TestDir::new();
    for (name, outputs) in [
        ("saved", None),
        ("both", Some(json!(["output", "temp"]))),
        ("previews", Some(json!(["temp"]))),
    ] {
        let text = saving_and_previewing(outputs).to_string();
        std::fs::write(workflows.path().join(format!("{name}.json")), text)
            .expect("the temp dir is writable");
    }
    let h = Harness::with(Options {
        vars: vec![
            ("WORKFLOWS_DIR", workflows.path().display().to_string()),
            ("DEFAULT_WORKFLOW", "saved".to_string()),
        ],
        ..Options::default()
    });
    for (workflow, want) in [
        ("saved", vec!["3"]),
        ("both", vec!["3", "4"]),
        ("previews", vec!["4"]),
    ] {
        let (status, result) = h.post_json("/generate", &json!({"workflow": workflow}));
        assert_eq!(status, 200, "{result}");
        let images = result["images"].as_array().expect("images");
        let nodes: Vec<&str> = images.iter().filter_map(|i| i["node"].as_str()).collect();
        assert_eq!(nodes, want, "{workflow}: {result}");
        for (index, image) in images.iter().enumerate() {
            assert_eq!(image["kind"], "image");
            assert_eq!(
                (image["width"].as_u64(), image["height"].as_u64()),
                (Some(16), Some(8))
            );
            let key = image["key"].as_str().expect("a key");
            assert!(key.ends_with(&format!("/{index}.png")), "{key}");
        }
    }
}

#[test]
fn every_stored_kind_is_served_with_its_content_type() {
    let h = Harness::start();
    let local = h.app.local.as_ref().expect("the harness stores locally");
    let job = new_uuid();
    let staged = h.dir.path().join("staged.part");
    let outputs: [(&str, &[u8], &str); 5] = [
        ("gif", b"GIF89a\x01\0\x01\0;", "image/gif"),
        ("mp4", b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2", "video/mp4"),
        ("wav", b"RIFF\x24\0\0\0WAVEfmt ", "audio/wav"),
        ("glb", b"glTF\x02\0\0\0", "model/gltf-binary"),
        (
            "bin",
            b"<html><script>alert(1)</script>",
            "application/octet-stream",
        ),
    ];
    for (index, (extension, bytes, content_type)) in outputs.into_iter().enumerate() {
        std::fs::write(&staged, bytes).expect("the data dir is writable");
        let key = format!("{job}/{index}.{extension}");
        let url = local
            .put_file(&key, &staged, content_type)
            .expect("local storage takes every kind");
        std::fs::remove_file(&staged).expect("the staged file stays for its owner");
        assert_eq!(url, h.url(&format!("/images/{key}")));

        let mut response = agent().get(&url).call().expect("the gateway answers");
        assert_eq!(response.status(), 200, "{key}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(
            header("content-type").as_deref(),
            Some(content_type),
            "{key}"
        );
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
        let body = response.body_mut().read_to_vec().expect("a body");
        assert_eq!(body, bytes, "{key}");
    }

    // Keys the gateway never writes are not served, whatever is on disk.
    let folder = h.dir.path().join("images").join(&job);
    std::fs::write(folder.join("9.html"), b"<script>").expect("writable");
    let response = agent()
        .get(&h.url(&format!("/images/{job}/9.html")))
        .call()
        .expect("the gateway answers");
    assert_eq!(response.status(), 404);
}
