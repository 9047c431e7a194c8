//! Tests of templates as a client and a template author see them: shipped files load, requests
//! fill the graph, bad requests and broken files are refused with a useful message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use serde_json::{Map, Value, json};

use super::*;

const PNG_BYTES: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR rest of a png";
const JPEG_BYTES: &[u8] = b"\xFF\xD8\xFF\xE0\0\x10JFIF\0 rest of a jpeg";
const WEBP_BYTES: &[u8] = b"RIFF\x20\0\0\0WEBPVP8 rest of a webp";
const GIF_BYTES: &[u8] = b"GIF89a rest of a gif";

fn shipped() -> Templates {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
    match Templates::load_dir(&dir) {
        Ok(templates) => templates,
        Err(err) => panic!("{err}"),
    }
}

fn template(templates: &Templates, name: &str) -> Template {
    templates.get(name).expect("shipped template").clone()
}

fn object(value: Value) -> Map<String, Value> {
    value
        .as_object()
        .expect("test params are an object")
        .clone()
}

fn resolve_ok(template: &Template, params: Value) -> Resolved {
    match template.resolve(&object(params)) {
        Ok(resolved) => resolved,
        Err(errors) => panic!("{errors}"),
    }
}

fn resolve_err(template: &Template, params: Value) -> BTreeMap<String, String> {
    match template.resolve(&object(params)) {
        Ok(resolved) => panic!("accepted: {:?}", resolved.values),
        Err(errors) => errors.0,
    }
}

fn build(template: &Template, resolved: &Resolved) -> Value {
    template
        .build_graph(resolved, &BTreeMap::new())
        .expect("graph builds")
}

/// A template with one parameter declared by `param` (targets "1.value"), for checks of a single
/// rule.
fn one_param(param: Value) -> Result<Template, TemplateProblem> {
    let text = json!({
        "parameters": {"value": param},
        "graph": {"1": {"class_type": "Anything", "inputs": {"value": 0, "link": ["1", 0]}}}
    });
    Template::parse("one", &text.to_string())
}

fn problem(param: Value) -> String {
    match one_param(param) {
        Ok(_) => panic!("template accepted"),
        Err(problem) => problem.to_string(),
    }
}

fn image_template() -> Template {
    template(&shipped(), "img2img")
}

fn image_error(value: Value) -> String {
    let errors = resolve_err(&image_template(), json!({"prompt": "p", "image": value}));
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors["image"].clone()
}

#[test]
fn every_shipped_template_loads_with_described_parameters() {
    let templates = shipped();
    let names: Vec<&str> = templates.names().collect();
    assert_eq!(names, ["img2img", "invert", "txt2img"]);
    assert_eq!(templates.len(), 3);
    for template in templates.iter() {
        assert!(!template.description.is_empty(), "{}", template.name);
        for (name, spec) in &template.parameters {
            assert!(spec.description.is_some(), "{}.{name}", template.name);
        }
    }
}

#[test]
fn txt2img_writes_every_target_and_keeps_a_max_u64_seed_exact() {
    let txt2img = template(&shipped(), "txt2img");
    let resolved = resolve_ok(
        &txt2img,
        json!({"prompt": "a red fox", "seed": 18446744073709551615u64, "steps": 30,
               "cfg": 6.5, "sampler": "dpmpp_2m", "width": 768, "batch_size": 2}),
    );
    assert_eq!(resolved.seed, Some(u64::MAX));
    let graph = build(&txt2img, &resolved);
    let ksampler = &graph["3"]["inputs"];
    assert_eq!(ksampler["seed"].as_u64(), Some(u64::MAX));
    assert!(graph.to_string().contains("\"seed\":18446744073709551615"));
    assert_eq!(ksampler["steps"], 30);
    assert_eq!(ksampler["cfg"], 6.5);
    assert_eq!(ksampler["sampler_name"], "dpmpp_2m");
    assert_eq!(ksampler["scheduler"], "normal");
    assert_eq!(ksampler["model"], json!(["4", 0]), "links stay untouched");
    assert_eq!(graph["6"]["inputs"]["text"], "a red fox");
    assert_eq!(graph["7"]["inputs"]["text"], "");
    assert_eq!(
        graph["5"]["inputs"],
        json!({"width": 768, "height": 512, "batch_size": 2})
    );
    assert_eq!(
        graph["4"]["inputs"]["ckpt_name"],
        "v1-5-pruned-emaonly.safetensors"
    );
    assert_eq!(resolved.values["height"], 512, "defaults are reported");
    assert_eq!(resolved.values.len(), txt2img.parameters.len());
}

#[test]
fn numbers_go_into_the_graph_as_floats() {
    let txt2img = template(&shipped(), "txt2img");
    let resolved = resolve_ok(&txt2img, json!({"prompt": "p", "cfg": 8}));
    let graph = build(&txt2img, &resolved);
    assert!(graph["3"]["inputs"]["cfg"].is_f64());
    assert_eq!(graph["3"]["inputs"]["cfg"].as_f64(), Some(8.0));
    assert_eq!(resolved.values["cfg"], graph["3"]["inputs"]["cfg"]);
}

#[test]
fn a_left_out_random_seed_is_drawn_written_and_reported() {
    let txt2img = template(&shipped(), "txt2img");
    let first = resolve_ok(&txt2img, json!({"prompt": "p"}));
    let second = resolve_ok(&txt2img, json!({"prompt": "p"}));
    let seed = first.seed.expect("a seed was drawn");
    assert_eq!(first.values["seed"].as_u64(), Some(seed));
    assert_eq!(
        build(&txt2img, &first)["3"]["inputs"]["seed"].as_u64(),
        Some(seed)
    );
    // Two 64-bit draws collide with probability 2^-64.
    assert_ne!(first.seed, second.seed);
}

#[test]
fn random_defaults_stay_within_min_and_max() {
    let template = one_param(json!({"type": "integer", "default": "random", "min": -2,
                                    "max": 2, "targets": ["1.value"]}))
    .expect("valid template");
    for _ in 0..200 {
        let value = resolve_ok(&template, json!({})).values["value"].as_i64();
        assert!(value.is_some_and(|v| (-2..=2).contains(&v)), "{value:?}");
    }
}

#[test]
fn every_bad_field_is_reported_at_once() {
    let txt2img = template(&shipped(), "txt2img");
    let errors = resolve_err(
        &txt2img,
        json!({"steps": 500, "width": 513, "height": 32, "sampler": "nope", "cfg": "7",
               "seed": 20.0, "batch_size": "2", "negative_prompt": null, "colour": 1}),
    );
    assert_eq!(errors["prompt"], "required parameter is missing");
    assert_eq!(errors["steps"], "must be at most 150 (got 500)");
    assert_eq!(errors["width"], "must be a multiple of 8 (got 513)");
    assert_eq!(errors["height"], "must be at least 64 (got 32)");
    assert!(
        errors["sampler"].starts_with("must be one of: euler, euler_ancestral, heun"),
        "{}",
        errors["sampler"]
    );
    assert!(errors["sampler"].ends_with("(got the string \"nope\")"));
    assert_eq!(errors["cfg"], "must be a number (got the string \"7\")");
    assert_eq!(errors["seed"], "must be an integer (got 20.0)");
    assert_eq!(
        errors["batch_size"],
        "must be an integer (got the string \"2\")"
    );
    assert_eq!(errors["negative_prompt"], "must be a string (got null)");
    assert!(errors["colour"].starts_with("unknown parameter; expected one of: batch_size, cfg,"));
    assert_eq!(errors.len(), 10, "{errors:?}");
}

#[test]
fn integer_bounds_are_compared_exactly_not_as_floats() {
    // As f64 both numbers round to 2^64 and would compare equal.
    let template = one_param(json!({"type": "integer", "default": 0, "min": 0,
                                    "max": 18446744073709551614u64, "targets": ["1.value"]}))
    .expect("valid template");
    let errors = resolve_err(&template, json!({"value": 18446744073709551615u64}));
    assert_eq!(
        errors["value"],
        "must be at most 18446744073709551614 (got 18446744073709551615)"
    );
    let negative = resolve_err(&template, json!({"value": -1}));
    assert_eq!(negative["value"], "must be at least 0 (got -1)");
}

#[test]
fn booleans_and_number_ranges_are_checked() {
    let flag = one_param(json!({"type": "boolean", "default": false, "targets": ["1.value"]}))
        .expect("valid template");
    assert_eq!(
        resolve_ok(&flag, json!({"value": true})).values["value"],
        true
    );
    assert_eq!(
        resolve_err(&flag, json!({"value": 1}))["value"],
        "must be a boolean (got 1)"
    );
    let img2img = image_template();
    let png = STANDARD.encode(PNG_BYTES);
    let errors = resolve_err(
        &img2img,
        json!({"prompt": "p", "image": png, "denoise": 1.5}),
    );
    assert_eq!(errors["denoise"], "must be at most 1 (got 1.5)");
}

#[test]
fn param_errors_become_details_and_a_sentence() {
    let mut errors = ParamErrors::default();
    errors.insert("steps", "must be at most 150 (got 500)");
    errors.insert("prompt", "required parameter is missing");
    assert_eq!(
        errors.to_details(),
        json!({"fields": {"steps": "must be at most 150 (got 500)",
                          "prompt": "required parameter is missing"}})
    );
    assert_eq!(
        errors.to_string(),
        "invalid parameters: prompt: required parameter is missing; \
         steps: must be at most 150 (got 500)"
    );
}

#[test]
fn a_data_url_image_is_decoded_sniffed_and_replaced_by_its_upload_name() {
    let img2img = image_template();
    // The declared type says PNG, the bytes are a JPEG: the bytes win.
    let url = format!("data:image/png;base64,{}", STANDARD.encode(JPEG_BYTES));
    let resolved = resolve_ok(&img2img, json!({"prompt": "p", "image": url}));
    assert_eq!(resolved.images.len(), 1);
    let image = &resolved.images[0];
    assert_eq!(image.param, "image");
    assert_eq!(image.bytes, JPEG_BYTES);
    assert_eq!((image.content_type, image.extension), ("image/jpeg", "jpg"));
    assert_eq!(
        resolved.values["image"],
        json!({"bytes": JPEG_BYTES.len(), "content_type": "image/jpeg"})
    );
    assert_eq!(resolved.values["denoise"], 0.75);

    let uploaded = BTreeMap::from([("image".to_owned(), "gw_upload_1.jpg".to_owned())]);
    let graph = img2img.build_graph(&resolved, &uploaded).expect("builds");
    assert_eq!(graph["10"]["inputs"]["image"], "gw_upload_1.jpg");
    assert_eq!(graph["3"]["inputs"]["denoise"], 0.75);

    let missing = img2img.build_graph(&resolved, &BTreeMap::new());
    assert_eq!(
        missing,
        Err(BuildError::MissingUpload {
            param: "image".into()
        })
    );
}

#[test]
fn plain_base64_without_padding_and_with_line_breaks_is_accepted() {
    let img2img = image_template();
    let mut wrapped = STANDARD_NO_PAD.encode(WEBP_BYTES);
    wrapped.insert(8, '\n');
    wrapped.insert_str(16, "\r\n  ");
    let resolved = resolve_ok(&img2img, json!({"prompt": "p", "image": wrapped}));
    assert_eq!(resolved.images[0].bytes, WEBP_BYTES);
    assert_eq!(resolved.images[0].content_type, "image/webp");

    let png = resolve_ok(
        &img2img,
        json!({"prompt": "p", "image": STANDARD.encode(PNG_BYTES)}),
    );
    assert_eq!(
        (png.images[0].content_type, png.images[0].extension),
        ("image/png", "png")
    );
}

#[test]
fn bad_images_are_refused_with_the_reason() {
    assert!(image_error(json!("not base64!")).starts_with("is not valid base64"));
    assert_eq!(
        image_error(json!(STANDARD.encode(GIF_BYTES))),
        "must be a PNG, JPEG or WebP image (its first bytes match none of those formats)"
    );
    assert_eq!(
        image_error(json!("data:image/png;base64,")),
        "must not be empty"
    );
    assert!(image_error(json!("data:image/png,%89PNG")).contains("not base64"));
    assert_eq!(
        image_error(json!(42)),
        "must be a base64-encoded PNG, JPEG or WebP image (got 42)"
    );
    let missing = resolve_err(&image_template(), json!({"prompt": "p"}));
    assert_eq!(missing["image"], "required parameter is missing");
}

#[test]
fn an_optional_image_left_out_keeps_the_graph_value() {
    let text = json!({
        "parameters": {"mask": {"type": "image", "targets": ["1.image"]}},
        "graph": {"1": {"class_type": "LoadImage", "inputs": {"image": "default.png"}}}
    });
    let template = Template::parse("mask", &text.to_string()).expect("valid template");
    let resolved = resolve_ok(&template, json!({}));
    assert!(resolved.images.is_empty() && resolved.values.is_empty());
    assert_eq!(
        build(&template, &resolved)["1"]["inputs"]["image"],
        "default.png"
    );
}

#[test]
fn the_schema_shows_constraints_but_not_targets() {
    let txt2img = template(&shipped(), "txt2img");
    let schema = txt2img.schema();
    assert_eq!(schema["name"], "txt2img");
    assert_eq!(schema["description"], txt2img.description.as_str());
    let params = &schema["parameters"];
    assert_eq!(params["seed"]["default"], "random");
    assert_eq!(params["seed"]["min"], 0);
    assert_eq!(params["prompt"]["required"], true);
    assert!(params["prompt"].get("default").is_none());
    assert_eq!(params["width"]["multiple_of"], 8);
    assert_eq!(params["scheduler"]["enum"][1], "karras");
    assert!(params["steps"]["description"].is_string());
    assert!(!schema.to_string().contains("targets"));
}

#[test]
fn broken_templates_are_refused_with_the_reason() {
    let bad_node = problem(json!({"type": "integer", "default": 1, "targets": ["99.value"]}));
    assert_eq!(
        bad_node,
        "parameter \"value\": targets 99.value, but the graph has no node \"99\""
    );
    let bad_input = problem(json!({"type": "integer", "default": 1, "targets": ["1.vale"]}));
    assert_eq!(
        bad_input,
        "parameter \"value\": targets 1.vale, but node \"1\" (Anything) has no input \"vale\"; \
         it has: link, value"
    );
    let out_of_range = problem(json!({"type": "integer", "default": 500, "max": 150,
                                      "targets": ["1.value"]}));
    assert_eq!(
        out_of_range,
        "parameter \"value\": default 500 must be at most 150 (got 500)"
    );
    let cases = [
        (
            json!({"type": "integer", "required": true, "default": 1, "targets": ["1.value"]}),
            "cannot have a default",
        ),
        (
            json!({"type": "image", "default": "x", "targets": ["1.value"]}),
            "cannot have a default",
        ),
        (
            json!({"type": "integer", "targets": ["1.value"]}),
            "needs a default",
        ),
        (
            json!({"type": "integer", "default": 1, "targets": ["1.link"]}),
            "is a link",
        ),
        (
            json!({"type": "integer", "default": 1, "targets": []}),
            "at least one",
        ),
        (
            json!({"type": "integer", "default": 1, "targets": ["value"]}),
            "node.input",
        ),
        (
            json!({"type": "integer", "default": 1, "min": 0.5, "targets": ["1.value"]}),
            "must be an integer",
        ),
        (
            json!({"type": "integer", "default": 1, "min": 5, "max": 2, "targets": ["1.value"]}),
            "greater than max",
        ),
        (
            json!({"type": "string", "default": "a", "min": 1, "targets": ["1.value"]}),
            "min applies only",
        ),
        (
            json!({"type": "string", "default": "c", "enum": ["a", "b"], "targets": ["1.value"]}),
            "must be one of: a, b",
        ),
        (
            json!({"type": "number", "default": "random", "targets": ["1.value"]}),
            "must be a number",
        ),
        (
            json!({"type": "integer", "default": 1, "tragets": ["1.value"]}),
            "unknown field",
        ),
        (
            json!({"type": "float", "default": 1, "targets": ["1.value"]}),
            "unknown variant",
        ),
    ];
    for (param, expected) in cases {
        let message = problem(param.clone());
        assert!(message.contains(expected), "{param}: {message}");
    }
}

#[test]
fn graphs_and_shared_targets_are_checked_at_load() {
    let parse = |value: Value| match Template::parse("t", &value.to_string()) {
        Ok(_) => panic!("accepted {value}"),
        Err(problem) => problem.to_string(),
    };
    let dangling = parse(json!({"graph": {"1": {"class_type": "A", "inputs": {"x": ["2", 0]}}}}));
    assert!(dangling.contains("links to node \"2\""), "{dangling}");
    let shapeless = parse(json!({"graph": {"1": {"inputs": {}}}}));
    assert!(
        shapeless.contains("needs a string class_type"),
        "{shapeless}"
    );
    let shared = parse(json!({
        "parameters": {
            "a": {"type": "integer", "default": 1, "targets": ["1.x"]},
            "b": {"type": "integer", "default": 1, "targets": ["1.x"]}},
        "graph": {"1": {"class_type": "A", "inputs": {"x": 0}}}
    }));
    assert!(
        shared.contains("which parameter \"a\" also sets"),
        "{shared}"
    );
    assert!(Template::parse("bad name", "{}").is_err());
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("workflow-test-{}", crate::ids::new_uuid()));
        std::fs::create_dir(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).expect("write temp file");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn load_dir_names_templates_by_file_stem_and_skips_other_files() {
    let dir = TempDir::new();
    let invert = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/invert.json"),
    )
    .expect("shipped file");
    dir.write("zeta.json", &invert);
    dir.write("alpha.json", &invert);
    dir.write("notes.txt", "not a template");
    dir.write(".editor-backup.json", "{ broken");
    let templates = Templates::load_dir(&dir.0).expect("loads");
    assert_eq!(templates.names().collect::<Vec<_>>(), ["alpha", "zeta"]);
    assert_eq!(templates.get("zeta").map(|t| t.name.as_str()), Some("zeta"));
    assert!(templates.get("notes").is_none());
}

#[test]
fn load_dir_names_the_broken_file_and_the_reason() {
    let dir = TempDir::new();
    dir.write(
        "good.json",
        r#"{"graph": {"1": {"class_type": "A", "inputs": {}}}}"#,
    );
    dir.write(
        "broken.json",
        r#"{"parameters": {"steps": {"type": "integer", "default": 1, "targets": ["9.steps"]}},
            "graph": {"1": {"class_type": "A", "inputs": {}}}}"#,
    );
    let err = Templates::load_dir(&dir.0).expect_err("broken.json must be refused");
    let message = err.to_string();
    assert!(message.contains("broken.json"), "{message}");
    assert!(message.contains("has no node \"9\""), "{message}");
    assert!(matches!(err, TemplateError::Invalid { .. }));

    dir.write("broken.json", "{ not json");
    let message = Templates::load_dir(&dir.0)
        .expect_err("refused")
        .to_string();
    assert!(message.contains("broken.json") && message.contains("not a valid template file"));
}

#[test]
fn load_dir_reports_a_missing_directory() {
    let missing = std::env::temp_dir().join(format!("no-such-dir-{}", crate::ids::new_uuid()));
    let err = Templates::load_dir(&missing).expect_err("missing dir");
    assert!(matches!(err, TemplateError::ReadDir { .. }));
    assert!(err.to_string().contains(&missing.display().to_string()));
}

#[test]
fn raw_graphs_are_checked_for_shape_only() {
    let good = json!({"1": {"class_type": "Whatever", "inputs": {"x": ["2", 0]}}});
    assert_eq!(check_raw_graph(&good), Ok(()));
    let not_object = check_raw_graph(&json!([1, 2])).expect_err("array");
    assert!(not_object.0.contains_key("graph"));
    let empty = check_raw_graph(&json!({})).expect_err("empty");
    assert_eq!(empty.0["graph"], "must contain at least one node");
    let broken = check_raw_graph(&json!({
        "1": {"class_type": 5, "inputs": {}},
        "2": {"class_type": "A"},
        "3": "node",
        "4": {"class_type": "A", "inputs": {}}
    }))
    .expect_err("broken nodes");
    assert_eq!(broken.0["graph.1"], "needs a string class_type");
    assert_eq!(broken.0["graph.2"], "needs an object inputs");
    assert!(broken.0.contains_key("graph.3"));
    assert_eq!(broken.0.len(), 3);
}

#[test]
fn a_templates_outputs_field_chooses_saved_files_previews_or_both() {
    let parse = |outputs: Option<Value>| {
        let mut text = json!({"graph": {"9": {"class_type": "SaveVideo", "inputs": {}}}});
        if let Some(outputs) = outputs {
            text["outputs"] = outputs;
        }
        Template::parse("video", &text.to_string())
    };
    let types = |outputs| parse(Some(outputs)).map(|t| t.outputs);
    assert_eq!(
        parse(None).expect("no field").outputs,
        OutputTypes::SavedOrPreviews
    );
    assert_eq!(types(json!(["output"])).expect("valid"), OutputTypes::Saved);
    assert_eq!(
        types(json!(["temp"])).expect("valid"),
        OutputTypes::Previews
    );
    assert_eq!(
        types(json!(["temp", "output"])).expect("valid"),
        OutputTypes::Both
    );
    for (bad, why) in [
        (json!([]), "outputs: the list is empty"),
        (
            json!(["input"]),
            "outputs: \"input\" is not a ComfyUI file type",
        ),
        (json!("output"), "not a valid template file"),
    ] {
        let problem = types(bad).expect_err("refused").to_string();
        assert!(problem.starts_with(why), "{problem}");
    }

    // Without the field, previews count only when nothing was saved.
    let default = OutputTypes::default();
    assert!(default.wants("output", true) && !default.wants("temp", true));
    assert!(default.wants("temp", false));
    assert!(!OutputTypes::Saved.wants("temp", false));
    assert!(OutputTypes::Both.wants("temp", true) && OutputTypes::Both.wants("output", true));
    assert!(
        OutputTypes::Previews.wants("temp", true) && !OutputTypes::Previews.wants("output", true)
    );
}

/// Node definitions from the conversion fixtures, as if read from a ComfyUI.
struct FixtureDefs;

impl NodeDefsSource for FixtureDefs {
    fn node_defs(
        &self,
        _classes: &std::collections::BTreeSet<String>,
    ) -> Result<ui::NodeDefs, DefsUnavailable> {
        let info: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/ui/object_info.json"))
                .expect("fixture is JSON");
        Ok(ui::NodeDefs::from_object_info(&info))
    }
}

/// A template whose graph is the subgraph fixture's workflow, with these parameters.
fn ui_template(parameters: Value) -> Result<Templates, TemplateProblem> {
    let case: Value =
        serde_json::from_str(include_str!("../../tests/fixtures/ui/subgraphs.json")).unwrap();
    let file = json!({"parameters": parameters, "graph": case["workflow"]});
    let template = Template::parse("ui", &file.to_string())?;
    let mut templates: Templates = [template].into_iter().collect();
    templates.use_node_defs(std::sync::Arc::new(FixtureDefs));
    Ok(templates)
}

#[test]
fn ui_template_parameters_reach_nodes_inside_subgraphs_by_the_frontends_ids() {
    let templates = ui_template(json!({
        "steps": {"type": "integer", "default": 4, "targets": ["2:10.steps", "4:20:10.steps"]},
        "checkpoint": {"type": "string", "default": "b.safetensors", "targets": ["1.ckpt_name"]}
    }))
    .expect("a valid template");
    let template = templates.get("ui").expect("loaded");
    assert!(template.is_ui());
    assert_eq!(template.node_class("4:20:10"), Some("Sampler"));
    let resolved = resolve_ok(template, json!({"steps": 9}));
    let graph = template
        .build_graph(&resolved, &BTreeMap::new())
        .expect("built");
    assert_eq!(graph["2:10"]["inputs"]["steps"], 9);
    assert_eq!(graph["4:20:10"]["inputs"]["steps"], 9);
    assert_eq!(graph["1"]["inputs"]["ckpt_name"], "b.safetensors");
    assert!(graph.get("2").is_none(), "instances are not sent");
}

#[test]
fn ui_template_targets_are_checked_at_load_and_after_conversion() {
    let unknown_node = ui_template(json!({
        "steps": {"type": "integer", "default": 4, "targets": ["10.steps"]}
    }));
    let problem = unknown_node
        .expect_err("no node 10 at the top level")
        .to_string();
    assert!(
        problem.contains("INSTANCE:INNER") && problem.contains("2:10"),
        "{problem}"
    );

    // The node exists; its input is only known once the workflow is converted.
    let templates = ui_template(json!({
        "strength": {"type": "number", "default": 1.0, "targets": ["2:10.strength"]},
        "model": {"type": "string", "default": "x", "targets": ["2:10.model"]}
    }))
    .expect("nodes exist");
    let template = templates.get("ui").expect("loaded");
    let Err(WorkflowFailure::Invalid(err)) = template.api_graph() else {
        panic!("the targets do not fit the converted graph");
    };
    let reasons: Vec<&str> = err.nodes().iter().map(|n| n.reason.as_str()).collect();
    assert_eq!(err.nodes()[0].id, "2:10");
    assert!(
        reasons.iter().any(|r| r.contains("no input \"strength\"")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("link")), "{reasons:?}");
}

#[test]
fn a_ui_template_without_node_definitions_says_they_are_unavailable() {
    let case: Value =
        serde_json::from_str(include_str!("../../tests/fixtures/ui/basic.json")).unwrap();
    let template = Template::parse("saved", &case["workflow"].to_string()).expect("loads");
    assert!(template.parameters.is_empty());
    assert!(matches!(
        template.api_graph(),
        Err(WorkflowFailure::Unavailable(_))
    ));
}

#[test]
fn a_parameter_named_like_a_key_of_the_request_itself_is_refused() {
    for reserved in RESERVED_PARAMETER_NAMES {
        let text = json!({
            "parameters": {*reserved: {"type": "integer", "targets": ["1.width"]}},
            "graph": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}}
        })
        .to_string();
        let problem = Template::parse("t", &text)
            .expect_err("refused")
            .to_string();
        assert!(problem.contains("rename the parameter"), "{problem}");
    }
    // The gateway's top-level fields are not reserved: a template may own `quality`.
    let text = json!({
        "parameters": {"quality": {"type": "integer", "default": 8, "targets": ["1.width"]}},
        "graph": {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}}
    })
    .to_string();
    let parsed = Template::parse("t", &text);
    assert!(parsed.is_ok(), "{:?}", parsed.err().map(|e| e.to_string()));
}
