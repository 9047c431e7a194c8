//! The command line: `--help`, `--version`, refusals of unknown arguments, and
//! `convert WORKFLOW` printing the API graph of a workflow as ComfyUI saves it (JSON, or the PNG
//! ComfyUI wrote), with node definitions from a file or from a running ComfyUI.

mod common;

use comfyui_sim::{ComfySim, SimOptions};
use common::harness::TestDir;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn gateway(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_comfyui-gateway"))
        .args(args)
        .env_remove("COMFYUI_URL")
        .output()
        .expect("the binary runs")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ui")).join(name)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `convert WORKFLOW --object-info` with the fixtures' saved node definitions.
fn convert_with_fixture_defs(workflow: &Path) -> Output {
    let info = fixture("object_info.json");
    gateway(&[
        "convert",
        workflow.to_str().expect("utf-8"),
        "--object-info",
        info.to_str().expect("utf-8"),
    ])
}

/// The JSON a successful run printed on stdout.
fn printed(out: &Output) -> Value {
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// Writes the `workflow` of a rule fixture to a file of its own, as ComfyUI would save it.
fn saved_from_case(dir: &TestDir, case: &str) -> (PathBuf, Value) {
    let case: Value =
        serde_json::from_slice(&std::fs::read(fixture(case)).expect("fixture")).expect("JSON");
    let path = dir.path().join("workflow.json");
    std::fs::write(&path, case["workflow"].to_string()).expect("writable");
    (path, case["api"].clone())
}

#[test]
fn help_and_version_answer_and_exit() {
    let help = gateway(&["--help"]);
    assert!(help.status.success());
    let usage = text(&help.stdout);
    assert!(usage.starts_with("usage: comfyui-gateway"), "{usage}");
    assert!(usage.contains("convert WORKFLOW"));
    let version = gateway(&["--version"]);
    assert!(version.status.success());
    assert_eq!(
        text(&version.stdout).trim(),
        format!("comfyui-gateway {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn an_unknown_argument_is_refused_with_a_usage_line() {
    for args in [
        &["--port", "80"][..],
        &["serve"],
        &["convert"],
        &["convert", "a", "b"],
    ] {
        let out = gateway(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let said = text(&out.stderr);
        assert!(said.contains("usage: comfyui-gateway"), "{args:?}: {said}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn convert_prints_the_api_graph_with_definitions_from_a_file() {
    let dir = TestDir::new();
    let (workflow, expected) = saved_from_case(&dir, "subgraphs.json");
    assert_eq!(printed(&convert_with_fixture_defs(&workflow)), expected);
}

#[test]
fn convert_reads_the_standard_input_given_as_a_dash() {
    let dir = TestDir::new();
    let (workflow, expected) = saved_from_case(&dir, "bypassed.json");
    let info = fixture("object_info.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_comfyui-gateway"))
        .args([
            "convert",
            "-",
            "--object-info",
            info.to_str().expect("utf-8"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let saved = std::fs::read(&workflow).expect("readable");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &saved).expect("written");
    let out = child.wait_with_output().expect("it ends");
    assert_eq!(printed(&out), expected);
}

#[test]
fn convert_reads_the_workflow_a_png_from_comfyui_carries() {
    let dir = TestDir::new();
    let (workflow, expected) = saved_from_case(&dir, "basic.json");
    let saved = std::fs::read_to_string(&workflow).expect("readable");
    let png_path = dir.path().join("ComfyUI_00001_.png");
    let file = std::fs::File::create(&png_path).expect("writable");
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), 1, 1);
    encoder.set_color(png::ColorType::Rgb);
    encoder
        .add_text_chunk("prompt".into(), "{}".into())
        .expect("text");
    encoder
        .add_text_chunk("workflow".into(), saved)
        .expect("text");
    let mut writer = encoder.write_header().expect("header");
    writer.write_image_data(&[0, 0, 0]).expect("pixels");
    writer.finish().expect("written");
    assert_eq!(printed(&convert_with_fixture_defs(&png_path)), expected);

    // The same PNG cut short is called damaged, not empty of a workflow.
    let bytes = std::fs::read(&png_path).expect("readable");
    std::fs::write(&png_path, &bytes[..bytes.len() - 20]).expect("writable");
    let out = convert_with_fixture_defs(&png_path);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let said = text(&out.stderr);
    assert!(said.contains("this PNG is damaged"), "{said}");
}

#[test]
fn convert_reads_definitions_from_a_running_comfyui() {
    let sim = ComfySim::start(SimOptions::default()).expect("the simulator starts");
    let workflow = fixture("workflows/saved-invert.json");
    let out = gateway(&[
        "convert",
        workflow.to_str().expect("utf-8"),
        "--comfyui",
        &sim.url(),
    ]);
    assert_eq!(
        printed(&out),
        json!({
            "1": {"class_type": "EmptyImage", "_meta": {"title": "EmptyImage"},
                  "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
            "3": {"class_type": "ImageInvert", "_meta": {"title": "Invert Image"},
                  "inputs": {"image": ["1", 0]}},
            "4": {"class_type": "SaveImage", "_meta": {"title": "Save Image"},
                  "inputs": {"filename_prefix": "gateway-ui", "images": ["3", 0]}},
        })
    );
}

#[test]
fn convert_fails_with_every_reason_on_stderr() {
    let dir = TestDir::new();
    let workflow = dir.path().join("broken.json");
    let broken = json!({"nodes": [
        {"id": 3, "type": "MysteryNode", "mode": 0, "title": "Mystery", "inputs": []},
        {"id": 4, "type": "Decode", "mode": 0, "inputs": [{"name": "samples", "type": "LATENT", "link": 12}]}
    ], "links": []});
    std::fs::write(&workflow, broken.to_string()).expect("writable");
    let out = convert_with_fixture_defs(&workflow);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let said = text(&out.stderr);
    assert!(said.contains("node 3 (MysteryNode, \"Mystery\")"), "{said}");
    assert!(said.contains("not installed"), "{said}");
    assert!(
        said.contains("node 4 (Decode)") && said.contains("link 12"),
        "{said}"
    );

    // No ComfyUI to read definitions from.
    let refusing = common::RefusingPort::new();
    let url = refusing.url();
    let out = gateway(&[
        "convert",
        workflow.to_str().expect("utf-8"),
        "--comfyui",
        &url,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read the node definitions"));
}
