//! The conversion rules, each on a small workflow of our own with the expected API output
//! (`tests/fixtures/ui/*.json`, node definitions in `tests/fixtures/ui/object_info.json`).

use serde_json::{Value, json};

use super::*;

const OBJECT_INFO: &str = include_str!("../../../tests/fixtures/ui/object_info.json");

fn defs() -> NodeDefs {
    NodeDefs::from_object_info(&serde_json::from_str(OBJECT_INFO).expect("fixture is JSON"))
}

/// Converts the fixture's workflow (first option of every dynamic prompt) and compares the
/// result with its expected API graph, titles included.
fn check(fixture: &str) {
    let case: Value = serde_json::from_str(fixture).expect("fixture is JSON");
    assert!(is_ui_format(&case["workflow"]));
    let got = convert_with(&case["workflow"], &defs(), &mut |_| 0)
        .unwrap_or_else(|e| panic!("{}: {e}", case["about"]));
    assert_eq!(Value::Object(got), case["api"], "{}", case["about"]);
}

#[test]
fn widgets_map_by_input_order_and_the_seed_control_is_skipped() {
    check(include_str!("../../../tests/fixtures/ui/basic.json"));
}

#[test]
fn control_filter_and_upload_slots_are_not_inputs() {
    check(include_str!(
        "../../../tests/fixtures/ui/companion_widgets.json"
    ));
}

#[test]
fn a_linked_widget_input_sends_the_link() {
    check(include_str!(
        "../../../tests/fixtures/ui/widget_input_link.json"
    ));
}

#[test]
fn primitives_set_the_widgets_they_feed_and_reroutes_pass_links_through() {
    check(include_str!(
        "../../../tests/fixtures/ui/primitive_and_reroute.json"
    ));
}

#[test]
fn native_reroutes_are_only_drawing() {
    check(include_str!(
        "../../../tests/fixtures/ui/native_reroutes.json"
    ));
}

#[test]
fn muted_nodes_and_what_they_fed_are_dropped() {
    check(include_str!("../../../tests/fixtures/ui/muted.json"));
}

#[test]
fn bypassed_nodes_pass_a_matching_input_through() {
    check(include_str!("../../../tests/fixtures/ui/bypassed.json"));
}

#[test]
fn subgraphs_expand_with_the_frontends_ids() {
    check(include_str!("../../../tests/fixtures/ui/subgraphs.json"));
}

#[test]
fn dynamic_prompts_lose_comments_and_resolve_groups() {
    check(include_str!(
        "../../../tests/fixtures/ui/dynamic_prompt.json"
    ));
}

#[test]
fn every_node_that_cannot_be_converted_is_named_with_its_reason() {
    let workflow = json!({"nodes": [
        {"id": 1, "type": "FancyUpscaler", "mode": 0, "title": "Upscale ×4", "inputs": [], "widgets_values": [],
         "properties": {"cnr_id": "comfyui-fancy-upscale", "ver": "1.2.0"}},
        {"id": 2, "type": "Latent", "mode": 0, "inputs": [], "widgets_values": ["wide", 512, 1]},
        {"id": 3, "type": "Decode", "mode": 0, "inputs": [{"name": "samples", "type": "LATENT", "link": 9}]},
        {"id": 4, "type": "FancyUpscaler", "mode": 2, "inputs": []},
        {"id": 5, "type": "Note", "mode": 0, "widgets_values": ["fine"]}
    ], "links": []});
    let err = convert(&workflow, &defs()).expect_err("three broken nodes");
    let nodes = err.nodes();
    assert_eq!(
        nodes
            .iter()
            .map(|n| (n.id.as_str(), n.node_type.as_str()))
            .collect::<Vec<_>>(),
        [("1", "FancyUpscaler"), ("2", "Latent"), ("3", "Decode")],
        "{err}"
    );
    assert_eq!(nodes[0].title, "Upscale ×4");
    assert!(
        nodes[0].reason.contains("not installed"),
        "{}",
        nodes[0].reason
    );
    assert!(
        nodes[0].reason.contains("\"comfyui-fancy-upscale\" 1.2.0"),
        "the pack the workflow names: {}",
        nodes[0].reason
    );
    assert_eq!(nodes[1].title, "Empty Latent");
    assert!(
        nodes[1].reason.contains("width (INT) holds \"wide\""),
        "{}",
        nodes[1].reason
    );
    assert!(nodes[2].reason.contains("link 9"), "{}", nodes[2].reason);
    let text = err.to_string();
    assert!(text.starts_with("3 nodes cannot be converted"), "{text}");
}

#[test]
fn a_subgraph_that_contains_itself_is_refused_not_expanded_forever() {
    let id = "0f0f0f0f-0000-4000-8000-000000000001";
    let workflow = json!({
        "nodes": [{"id": 1, "type": id, "mode": 0, "inputs": []}],
        "links": [],
        "definitions": {"subgraphs": [{
            "id": id, "name": "loop", "inputs": [], "outputs": [], "links": [],
            "nodes": [
                {"id": 2, "type": id, "mode": 0, "inputs": []},
                {"id": 3, "type": id, "mode": 0, "inputs": []}
            ]
        }]}
    });
    let err = convert(&workflow, &defs()).expect_err("a cycle");
    let nodes = err.nodes();
    assert_eq!(nodes.len(), 2, "{err}");
    assert_eq!(nodes[0].id, "1:2");
    assert!(nodes[0].reason.contains("contains itself"));
}

#[test]
fn shapes_that_are_not_workflows_are_refused() {
    let no_id = json!({"nodes": [{"type": "Latent"}], "links": []});
    assert!(matches!(
        convert(&no_id, &defs()),
        Err(ConvertError::Shape(_))
    ));
    let only_notes = json!({"nodes": [{"id": 1, "type": "Note", "widgets_values": ["x"]}]});
    let err = convert(&only_notes, &defs()).expect_err("nothing to run");
    assert!(err.to_string().contains("no node that ComfyUI would run"));
}

#[test]
fn the_api_format_is_not_mistaken_for_the_ui_format() {
    assert!(!is_ui_format(
        &json!({"3": {"class_type": "KSampler", "inputs": {}}})
    ));
    assert!(!is_ui_format(&json!({"nodes": "x"})));
    assert!(is_ui_format(&json!({"nodes": [], "links": []})));
}

#[test]
fn the_classes_used_leave_out_frontend_nodes_and_instances() {
    let case: Value =
        serde_json::from_str(include_str!("../../../tests/fixtures/ui/subgraphs.json")).unwrap();
    let classes: Vec<String> = classes_used(&case["workflow"]).into_iter().collect();
    assert_eq!(classes, ["Decode", "Latent", "Loader", "Sampler"]);
}

#[test]
fn save_nodes_get_their_file_name_patterns_replaced() {
    check(include_str!(
        "../../../tests/fixtures/ui/filename_replacements.json"
    ));
}
