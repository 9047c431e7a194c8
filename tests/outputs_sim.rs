//! Every kind of output as today's ComfyUI reports it, end to end through the gateway against
//! the simulator: videos, VideoHelperSuite GIFs and sounds stored with their kind, content type
//! and size (locally and in Supabase); partial graphs that say what they dropped; history written
//! after `execution_success`; unknown node classes refused; live previews on the stream.

mod common;

use base64::Engine as _;
use comfyui_sim::{PreviewFormat, SimEvent, SimOptions};
use common::harness::{Harness, Options, TestDir, agent};
use common::sse_client::SseEvent;
use common::{get_json_from, wait_for};
use serde_json::{Value, json};
use std::time::Duration;

/// Three 16x8 frames of one colour (node 1) for the savers below.
fn frames() -> Value {
    json!({"class_type": "EmptyImage",
           "inputs": {"width": 16, "height": 8, "batch_size": 3, "color": 0x336699}})
}

/// Frames made into a video (node 2) saved by `SaveVideo` (node 3): an MP4 under `images`.
fn video_graph() -> Value {
    json!({
        "1": frames(),
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8}},
        "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0],
              "filename_prefix": "video/ComfyUI", "format": "auto", "codec": "auto"}}
    })
}

/// A VideoHelperSuite `VHS_VideoCombine` node reading node 1's frames.
fn video_combine(format: &str, save_output: bool) -> Value {
    json!({"class_type": "VHS_VideoCombine", "inputs": {"images": ["1", 0], "frame_rate": 8,
           "loop_count": 0, "filename_prefix": "AnimateDiff", "format": format,
           "pingpong": false, "save_output": save_output}})
}

/// A sampled sound (nodes 10 to 14) saved as FLAC (15), MP3 (16) and Opus (17) by ComfyUI's
/// own nodes.
fn audio_graph() -> Value {
    json!({
        "10": {"class_type": "CheckpointLoaderSimple",
               "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "11": {"class_type": "CLIPTextEncode", "inputs": {"text": "rain on a tin roof", "clip": ["10", 1]}},
        "12": {"class_type": "EmptyLatentAudio", "inputs": {"seconds": 1.5, "batch_size": 1}},
        "13": {"class_type": "KSampler", "inputs": {"model": ["10", 0], "positive": ["11", 0],
               "negative": ["11", 0], "latent_image": ["12", 0], "seed": 4, "steps": 2, "cfg": 7,
               "sampler_name": "euler", "scheduler": "normal", "denoise": 1}},
        "14": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["13", 0], "vae": ["10", 2]}},
        "15": {"class_type": "SaveAudio", "inputs": {"audio": ["14", 0], "filename_prefix": "audio/ComfyUI"}},
        "16": {"class_type": "SaveAudioMP3", "inputs": {"audio": ["14", 0],
               "filename_prefix": "audio/ComfyUI", "quality": "V0"}},
        "17": {"class_type": "SaveAudioOpus", "inputs": {"audio": ["14", 0],
               "filename_prefix": "audio/ComfyUI", "quality": "128k"}}
    })
}

/// [`audio_graph`] with a WAV saver too (node 18), as several custom node packs have.
fn audio_graph_with_wav() -> Value {
    let mut graph = audio_graph();
    graph["18"] = json!({"class_type": "SaveAudioWAV",
                         "inputs": {"audio": ["14", 0], "filename_prefix": "audio/ComfyUI"}});
    graph
}

/// A txt2img graph whose sampler (node 3) takes `steps` steps, saved by node 9.
fn txt2img_graph(seed: u64, steps: u32) -> Value {
    json!({
        "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["6", 0],
              "negative": ["7", 0], "latent_image": ["5", 0], "seed": seed, "steps": steps,
              "cfg": 7, "sampler_name": "euler", "scheduler": "normal", "denoise": 1}},
        "4": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}}
    })
}

/// `POST /generate` in JSON mode; the `complete` data of a job that must succeed.
fn generate(h: &Harness, body: &Value) -> Value {
    let (status, result) = h.post_json("/generate", body);
    assert_eq!(status, 200, "{result}");
    result
}

/// The job's stored outputs, one `(key, kind, content_type, width, height, node)` per file.
fn summary(result: &Value) -> Vec<(String, String, String, Value, Value, String)> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    result["images"]
        .as_array()
        .expect("an images list")
        .iter()
        .map(|i| {
            (
                text(&i["key"]),
                text(&i["kind"]),
                text(&i["content_type"]),
                i["width"].clone(),
                i["height"].clone(),
                text(&i["node"]),
            )
        })
        .collect()
}

/// The bytes ComfyUI (the simulator) made for the first file under `key` of `node`'s output.
fn comfyui_file(h: &Harness, prompt_id: &str, node: &str, key: &str) -> Vec<u8> {
    let (status, history) = get_json_from(&format!("{}/history/{prompt_id}", h.sim.url()));
    assert_eq!(status, 200);
    let entry = &history[prompt_id]["outputs"][node][key][0];
    let url = format!(
        "{}/view?filename={}&subfolder={}&type={}",
        h.sim.url(),
        entry["filename"].as_str().expect("a filename"),
        entry["subfolder"].as_str().unwrap_or(""),
        entry["type"].as_str().unwrap_or("output"),
    );
    let (status, bytes) = h.get_bytes(&url);
    assert_eq!(status, 200, "{url}");
    bytes
}

/// What the gateway serves at `url`: status, content type and bytes.
fn served(url: &str) -> (u16, String, Vec<u8>) {
    let mut response = agent().get(url).call().expect("the gateway answers");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .expect("a body");
    (response.status().as_u16(), content_type, bytes)
}

/// Checks that each stored output is served back by the gateway with its content type and
/// exactly the bytes ComfyUI made, its metadata stripped (`key` is the history key the node
/// reported it under).
fn assert_served_as_made(h: &Harness, result: &Value, history_keys: &[&str]) {
    let prompt_id = result["prompt_id"].as_str().expect("a prompt id");
    let images = result["images"].as_array().expect("images");
    assert_eq!(images.len(), history_keys.len(), "{result}");
    for (image, history_key) in images.iter().zip(history_keys) {
        let node = image["node"].as_str().expect("a node");
        let url = image["url"].as_str().expect("a url");
        let original = comfyui_file(h, prompt_id, node, history_key);
        let (status, content_type, bytes) = served(url);
        assert_eq!(status, 200, "{url}");
        assert_eq!(content_type, image["content_type"].as_str().unwrap_or(""));
        assert!(
            bytes == common::as_stored(&original),
            "{url}: not the bytes ComfyUI made"
        );
        assert_eq!(
            image["bytes"].as_u64(),
            Some(original.len() as u64),
            "{url}"
        );
    }
}

fn job_id(result: &Value) -> String {
    result["job_id"].as_str().expect("a job id").to_string()
}

#[test]
fn a_video_job_stores_an_mp4_as_a_video_with_its_size() {
    let h = Harness::start();
    let result = generate(&h, &json!({"graph": video_graph()}));
    let job = job_id(&result);
    assert_eq!(
        summary(&result),
        [(
            format!("{job}/0.mp4"),
            "video".into(),
            "video/mp4".into(),
            json!(16),
            json!(8),
            "3".into()
        )],
        "{result}"
    );
    assert_eq!(
        result["images"][0]["url"],
        h.url(&format!("/images/{job}/0.mp4")).as_str()
    );
    assert_served_as_made(&h, &result, &["images"]);
    let on_disk = std::fs::read(h.dir.path().join("images").join(format!("{job}/0.mp4")))
        .expect("the video is on disk");
    assert_eq!(&on_disk[4..12], b"ftypisom");
}

#[test]
fn videohelpersuite_gifs_and_mp4s_are_stored_and_a_local_gif_job_completes() {
    let h = Harness::start();
    let graph = json!({
        "1": frames(),
        "5": video_combine("image/gif", true),
        "6": video_combine("video/h264-mp4", true),
        // VideoHelperSuite's preview (save_output off) lands in `temp`: not stored when the
        // graph saved something.
        "7": video_combine("video/webm", false),
    });
    let mut stream = h.generate_stream(&json!({"graph": graph}));
    assert_eq!(stream.status, 200);
    let events = stream.until_terminal();
    let last = events.last().expect("a terminal event");
    assert_eq!(last.event, "complete", "{:?}", last.data);
    let result = &last.data;
    let job = job_id(result);
    assert_eq!(
        summary(result),
        [
            (
                format!("{job}/0.gif"),
                "image".into(),
                "image/gif".into(),
                json!(16),
                json!(8),
                "5".into()
            ),
            (
                format!("{job}/1.mp4"),
                "video".into(),
                "video/mp4".into(),
                json!(16),
                json!(8),
                "6".into()
            ),
        ],
        "{result}"
    );
    assert_served_as_made(&h, result, &["gifs", "gifs"]);

    let (status, record) = h.get_json(&format!("/jobs/{job}"));
    assert_eq!(status, 200);
    assert_eq!(record["state"], "completed", "{record}");
    assert!(
        h.app
            .spool
            .pending()
            .expect("the spool is listable")
            .is_empty(),
        "nothing left for housekeeping to retry"
    );
}

#[test]
fn a_template_that_keeps_temp_outputs_stores_videohelpersuites_previews_too() {
    let workflows = TestDir::new();
    let template = json!({
        "description": "A GIF saved and a WebM previewed, both kept.",
        "outputs": ["output", "temp"],
        "graph": {
            "1": frames(),
            "5": video_combine("image/gif", true),
            "7": video_combine("video/webm", false),
        }
    });
    std::fs::write(
        workflows.path().join("animation.json"),
        template.to_string(),
    )
    .expect("the temp dir is writable");
    let h = Harness::with(Options {
        vars: vec![
            ("WORKFLOWS_DIR", workflows.path().display().to_string()),
            ("DEFAULT_WORKFLOW", "animation".to_string()),
        ],
        ..Options::default()
    });
    let result = generate(&h, &json!({"workflow": "animation"}));
    let job = job_id(&result);
    assert_eq!(
        summary(&result),
        [
            (
                format!("{job}/0.gif"),
                "image".into(),
                "image/gif".into(),
                json!(16),
                json!(8),
                "5".into()
            ),
            (
                format!("{job}/1.webm"),
                "video".into(),
                "video/webm".into(),
                Value::Null,
                Value::Null,
                "7".into()
            ),
        ],
        "{result}"
    );
    assert_served_as_made(&h, &result, &["gifs", "gifs"]);

    // The same graph sent raw keeps only what it saved (the default).
    let raw = generate(&h, &json!({"graph": template["graph"]}));
    let kinds: Vec<String> = summary(&raw).into_iter().map(|s| s.2).collect();
    assert_eq!(kinds, ["image/gif"], "{raw}");
}

#[test]
fn animated_pngs_and_webms_saved_under_images_keep_what_they_are() {
    let h = Harness::start();
    let graph = json!({
        "1": frames(),
        "4": {"class_type": "SaveWEBM", "inputs": {"images": ["1", 0], "filename_prefix": "ComfyUI",
              "codec": "vp9", "fps": 24, "crf": 32}},
        "19": {"class_type": "SaveAnimatedPNG", "inputs": {"images": ["1", 0],
               "filename_prefix": "anim", "fps": 6, "compress_level": 4}},
    });
    let result = generate(&h, &json!({"graph": graph}));
    let job = job_id(&result);
    assert_eq!(
        summary(&result),
        [
            (
                format!("{job}/0.webm"),
                "video".into(),
                "video/webm".into(),
                Value::Null,
                Value::Null,
                "4".into()
            ),
            (
                format!("{job}/1.png"),
                "image".into(),
                "image/png".into(),
                json!(16),
                json!(8),
                "19".into()
            ),
        ],
        "{result}"
    );
    let (_, _, apng) = served(result["images"][1]["url"].as_str().expect("a url"));
    let reader = png::Decoder::new(std::io::Cursor::new(&apng))
        .read_info()
        .expect("a PNG");
    let frames = reader.info().animation_control().map(|a| a.num_frames);
    assert_eq!(
        frames,
        Some(3),
        "still animated after its metadata was stripped"
    );
    assert!(
        common::png_text_chunks(&apng).is_empty(),
        "no workflow left in it"
    );

    // Asking for JPEG converts still pictures only: the WebM stays a WebM, and the animation
    // keeps its frames rather than becoming a JPEG of the first one.
    let asked = generate(&h, &json!({"graph": graph, "output_format": "jpeg"}));
    let types: Vec<String> = summary(&asked).into_iter().map(|s| s.2).collect();
    assert_eq!(types, ["video/webm", "image/png"], "{asked}");
    let (_, _, kept) = served(asked["images"][1]["url"].as_str().expect("a url"));
    assert!(kept == apng, "the same animated PNG");
}

#[test]
fn sounds_are_stored_as_audio_without_a_size() {
    let h = Harness::start();
    let result = generate(&h, &json!({"graph": audio_graph_with_wav()}));
    let job = job_id(&result);
    let sound = |index: u32, extension: &str, content_type: &str, node: &str| {
        (
            format!("{job}/{index}.{extension}"),
            "audio".to_string(),
            content_type.to_string(),
            Value::Null,
            Value::Null,
            node.to_string(),
        )
    };
    assert_eq!(
        summary(&result),
        [
            sound(0, "flac", "audio/flac", "15"),
            sound(1, "mp3", "audio/mpeg", "16"),
            sound(2, "opus", "audio/ogg", "17"),
            sound(3, "wav", "audio/wav", "18"),
        ],
        "{result}"
    );
    assert_served_as_made(&h, &result, &["audio", "audio", "audio", "audio"]);
}

#[test]
fn a_video_is_uploaded_to_supabase_as_video_mp4_and_its_row_says_so() {
    let h = Harness::with(Options {
        supabase: true,
        ..Options::default()
    });
    let result = generate(&h, &json!({"graph": video_graph()}));
    let job = job_id(&result);
    let key = format!("{job}/0.mp4");
    let fake = h.supabase.as_ref().expect("the fake Supabase");
    let prompt_id = result["prompt_id"].as_str().expect("a prompt id");
    let original = comfyui_file(&h, prompt_id, "3", "images");

    let upload = fake
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path() == format!("/storage/v1/object/images/{key}"))
        .expect("the video was uploaded under its .mp4 key");
    assert_eq!(upload.header("content-type"), Some("video/mp4"));
    let objects = fake.objects();
    let stored = objects
        .get(&format!("images/{key}"))
        .or_else(|| objects.get(&key))
        .unwrap_or_else(|| panic!("{key} is stored: {:?}", objects.keys()));
    assert_eq!(stored.content_type, "video/mp4");
    assert!(
        stored.bytes == common::as_stored(&original),
        "the bytes ComfyUI made, stripped"
    );

    let rows = fake.rows();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["storage_key"], key.as_str());
    assert_eq!(row["kind"], "video");
    assert_eq!(row["content_type"], "video/mp4");
    assert_eq!(
        (row["width"].as_u64(), row["height"].as_u64()),
        (Some(16), Some(8))
    );
    assert_eq!(row["bytes"].as_u64(), Some(original.len() as u64));
    assert_eq!(result["images"][0]["kind"], "video");
}

#[test]
fn a_video_and_a_sound_kept_through_a_supabase_outage_reach_it_with_their_types() {
    let h = Harness::with(Options {
        supabase: true,
        ..Options::default()
    });
    let fake = h.supabase.as_ref().expect("the fake Supabase");
    fake.set_down(true);
    let mut graph = audio_graph();
    for (id, node) in video_graph().as_object().expect("an object") {
        graph[id] = node.clone();
    }
    let (status, answer) = h.post_json("/generate", &json!({"graph": graph}));
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["error"]["code"], "storage_failed", "{answer}");
    let job = answer["error"]["details"]["job_id"]
        .as_str()
        .expect("a job id")
        .to_string();

    fake.set_down(false);
    assert_eq!(h.app.flush_spool(), 1, "the spooled job is stored");
    let objects = fake.objects();
    let types: Vec<(String, String)> = objects
        .iter()
        .map(|(key, object)| (key.clone(), object.content_type.clone()))
        .collect();
    assert_eq!(
        types,
        [
            (format!("images/{job}/0.mp4"), "video/mp4".to_string()),
            (format!("images/{job}/1.flac"), "audio/flac".to_string()),
            (format!("images/{job}/2.mp3"), "audio/mpeg".to_string()),
            (format!("images/{job}/3.opus"), "audio/ogg".to_string()),
        ]
    );
    let rows: Vec<(Value, Value)> = fake
        .rows()
        .iter()
        .map(|r| (r["kind"].clone(), r["width"].clone()))
        .collect();
    assert_eq!(
        rows,
        [
            (json!("video"), json!(16)),
            (json!("audio"), Value::Null),
            (json!("audio"), Value::Null),
            (json!("audio"), Value::Null),
        ]
    );
    let (_, record) = h.get_json(&format!("/jobs/{job}"));
    assert_eq!(record["state"], "completed", "{record}");
    let images = &record["result"]["images"];
    assert_eq!(images[0]["kind"], "video", "{record}");
    assert_eq!(images[0]["content_type"], "video/mp4");
    assert_eq!(images[3]["content_type"], "audio/ogg");
}

#[test]
fn a_large_video_is_stored_whole() {
    const MEGABYTES: u64 = 20;
    let h = Harness::start();
    let mut graph = video_graph();
    graph["3"]["inputs"]["megabytes"] = json!(MEGABYTES);
    let result = generate(&h, &json!({"graph": graph}));
    let image = &result["images"][0];
    assert_eq!(
        image["bytes"].as_u64(),
        Some(MEGABYTES * 1024 * 1024),
        "{result}"
    );
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(16), Some(8))
    );
    assert_served_as_made(&h, &result, &["images"]);
}

#[test]
fn a_graph_with_a_broken_output_branch_runs_the_rest_and_says_what_it_dropped() {
    let h = Harness::start();
    let mut graph = video_graph();
    // A second saver with its `audio` input missing: ComfyUI drops it and runs the video.
    graph["20"] = json!({"class_type": "SaveAudio", "inputs": {"filename_prefix": "audio/x"}});
    let events = h.generate_stream(&json!({"graph": graph})).until_terminal();
    let dispatched = events
        .iter()
        .find(|e| e.event == "dispatched")
        .expect("a dispatched event");
    let warnings = &dispatched.data["warnings"];
    assert_eq!(warnings.as_array().map(Vec::len), Some(1), "{warnings}");
    let warning = &warnings[0];
    assert_eq!(warning["code"], "output_dropped");
    assert_eq!(warning["node"], "20");
    assert_eq!(warning["class_type"], "SaveAudio");
    assert_eq!(
        warning["message"],
        "output node 20 (SaveAudio) will not run: node 20 (SaveAudio): Required input is \
         missing: audio"
    );
    assert_eq!(warning["causes"][0]["type"], "required_input_missing");
    assert_eq!(warning["causes"][0]["input"], "audio");

    let last = events.last().expect("a terminal event");
    assert_eq!(last.event, "complete", "{:?}", last.data);
    assert_eq!(last.data["warnings"], *warnings, "the result repeats them");
    let images = last.data["images"].as_array().expect("images");
    assert_eq!(images.len(), 1, "only the video branch ran");
    assert_eq!(images[0]["node"], "3");

    let job = last.data["job_id"].as_str().expect("a job id");
    let (_, record) = h.get_json(&format!("/jobs/{job}"));
    assert_eq!(record["result"]["warnings"], *warnings, "{record}");
}

#[test]
fn a_job_completes_when_history_is_written_after_execution_success() {
    let h = Harness::start();
    h.sim.hold_history(true);
    let (status, answer) = h.post_json("/jobs", &json!({"graph": video_graph()}));
    assert_eq!(status, 202, "{answer}");
    let job = answer["job_id"].as_str().expect("a job id").to_string();
    let mut stream = h.get_stream(&format!("/jobs/{job}/events"), &[]);
    let mut prompt_id = None;
    // ComfyUI said `execution_success`; its history has no entry yet.
    loop {
        let event = stream
            .next_event()
            .expect("the job waits for history without ending");
        assert!(!event.is_terminal(), "ended early: {:?}", event.data);
        if event.event == "dispatched" {
            prompt_id = event.data["prompt_id"].as_str().map(str::to_owned);
        }
        if event.event == "progress" && event.data["state"] == "uploading" {
            break;
        }
    }
    let prompt_id = prompt_id.expect("dispatched came first");
    let (_, history) = get_json_from(&format!("{}/history/{prompt_id}", h.sim.url()));
    assert_eq!(history, json!({}), "history is still held back");
    h.sim.hold_history(false);
    let events = stream.until_terminal();
    let last = events.last().expect("a terminal event");
    assert_eq!(last.event, "complete", "{:?}", last.data);
    assert_eq!(
        summary(&last.data)
            .into_iter()
            .map(|s| (s.1, s.2))
            .collect::<Vec<_>>(),
        [("video".to_string(), "video/mp4".to_string())]
    );
}

#[test]
fn a_slow_history_write_still_yields_the_outputs() {
    let h = Harness::with(Options {
        sim: SimOptions {
            step_delay: Duration::from_millis(5),
            history_delay: Duration::from_millis(300),
            ..SimOptions::default()
        },
        ..Options::default()
    });
    let result = generate(&h, &json!({"graph": audio_graph()}));
    assert_eq!(
        result["images"].as_array().map(Vec::len),
        Some(3),
        "{result}"
    );
}

/// A graph whose sampler is a class ComfyUI does not have.
fn unknown_node_graph() -> Value {
    let mut graph = txt2img_graph(1, 2);
    graph["3"]["class_type"] = json!("KSamplerTurbo");
    graph
}

#[test]
fn an_unknown_node_class_is_comfyui_rejected_naming_the_node() {
    let h = Harness::start();
    let (status, body) = h.post_json("/generate", &json!({"graph": unknown_node_graph()}));
    assert_eq!(status, 422, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], "comfyui_rejected", "{body}");
    // ComfyUI 0.3.64's type (newer versions say `missing_node_type` and name the class in
    // `extra_info`); either way ComfyUI's own type and message reach the client.
    assert_eq!(error["details"]["type"], "invalid_prompt", "{body}");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("KSamplerTurbo") && message.contains("Node ID '#3'"),
        "{message}"
    );

    let mut stream = h.generate_stream(&json!({"graph": unknown_node_graph()}));
    assert_eq!(stream.status, 200);
    let events = stream.until_terminal();
    assert!(stream.ended(), "the stream ends after its terminal event");
    let last = events.last().expect("a terminal event");
    assert_eq!(last.event, "error", "{:?}", last.data);
    assert_eq!(last.data["code"], "comfyui_rejected");
    assert_eq!(last.data["details"]["type"], "invalid_prompt");
    let message = last.data["message"].as_str().unwrap_or_default();
    assert!(message.contains("KSamplerTurbo"), "{message}");
}

/// A harness whose simulator sends a preview after every sampler step in `format`, with short
/// progress ticks so that a job of a few dozen steps spans many of them.
fn previewing(format: PreviewFormat) -> Harness {
    Harness::with(Options {
        sim: SimOptions {
            step_delay: Duration::from_millis(8),
            send_previews: true,
            preview_format: format,
            ..SimOptions::default()
        },
        vars: vec![("PROGRESS_INTERVAL_MS", "20".to_string())],
        ..Options::default()
    })
}

/// Runs a txt2img job (asking for previews or not) to completion on a fresh stream, checks
/// that the stream ends right after its terminal event, and returns its events.
fn run_previewed(h: &Harness, seed: u64, previews: bool) -> Vec<SseEvent> {
    let body = json!({"graph": txt2img_graph(seed, 24), "previews": previews});
    let mut stream = h.generate_stream(&body);
    assert_eq!(stream.status, 200);
    let events = stream.until_terminal();
    assert!(stream.ended(), "nothing follows the terminal event");
    let last = events.last().expect("a terminal event");
    assert_eq!(last.event, "complete", "{:?}", last.data);
    events
}

/// ComfyUI's prompt id, from the stream's `dispatched` event.
fn prompt_of(events: &[SseEvent]) -> String {
    events
        .iter()
        .find(|e| e.event == "dispatched")
        .and_then(|e| e.data["prompt_id"].as_str())
        .expect("a dispatched event with the prompt id")
        .to_string()
}

/// Checks the stream's previews: each a data URL of `content_type` whose bytes start with
/// `magic`, from the sampler, right after a progress event (so at most one per tick).
fn assert_previews(events: &[SseEvent], content_type: &str, magic: &[u8]) {
    let mut previews = 0;
    for (at, event) in events.iter().enumerate() {
        if event.event != "preview" {
            continue;
        }
        previews += 1;
        assert_eq!(
            events[at - 1].event,
            "progress",
            "a preview rides on a progress tick"
        );
        assert_eq!(event.data["content_type"], content_type);
        assert_eq!(event.data["node"], "3", "the frame named its node");
        let url = event.data["image"].as_str().expect("an image");
        let prefix = format!("data:{content_type};base64,");
        let encoded = url
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("a {content_type} data URL: {url:.40}"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("valid base64");
        assert!(
            bytes.starts_with(magic),
            "{content_type}: {:?}",
            bytes.get(..8)
        );
    }
    let progress = events.iter().filter(|e| e.event == "progress").count();
    assert!(previews >= 1, "the stream showed the sampler's previews");
    assert!(
        previews <= progress,
        "{previews} previews for {progress} ticks"
    );
}

#[test]
fn previews_reach_a_stream_that_asked_for_them_at_most_once_per_tick() {
    let h = previewing(PreviewFormat::Jpeg);
    let events = run_previewed(&h, 1, true);
    assert_previews(&events, "image/jpeg", &[0xFF, 0xD8, 0xFF]);

    h.sim.set_previews(Some(PreviewFormat::Png));
    let events = run_previewed(&h, 2, true);
    assert_previews(&events, "image/png", b"\x89PNG\r\n\x1a\n");

    // A job that did not ask gets none, though ComfyUI sent them.
    let before = h.sim.ws_stats().previews_sent;
    let events = run_previewed(&h, 3, false);
    assert!(
        h.sim.ws_stats().previews_sent > before,
        "ComfyUI sent previews"
    );
    assert!(
        events.iter().all(|e| e.event != "preview"),
        "no previews without `previews`"
    );
}

#[test]
fn each_job_gets_the_previews_of_its_own_prompt_only() {
    let h = previewing(PreviewFormat::Png);
    // Two jobs at once, their samplers told apart by node id (3 and 30).
    let mut other = txt2img_graph(7, 24);
    let sampler = other
        .as_object_mut()
        .and_then(|nodes| nodes.remove("3"))
        .expect("node 3");
    other["30"] = sampler;
    other["8"]["inputs"]["samples"] = json!(["30", 0]);
    let mut first = h.generate_stream(&json!({"graph": txt2img_graph(6, 24), "previews": true}));
    let mut second = h.generate_stream(&json!({"graph": other, "previews": true}));
    for (stream, node) in [(&mut first, "3"), (&mut second, "30")] {
        assert_eq!(stream.status, 200);
        let events = stream.until_terminal();
        let last = events.last().expect("a terminal event");
        assert_eq!(last.event, "complete", "{:?}", last.data);
        let nodes: Vec<&Value> = events
            .iter()
            .filter(|e| e.event == "preview")
            .map(|e| &e.data["node"])
            .collect();
        assert!(!nodes.is_empty(), "job with node {node} saw previews");
        assert!(nodes.iter().all(|n| *n == node), "{node}: {nodes:?}");
    }
}

#[test]
fn the_gateway_asks_for_previews_that_name_their_prompt() {
    let h = previewing(PreviewFormat::Jpeg);
    let sim_events = h.sim.events();
    let events = run_previewed(&h, 4, true);
    let prompt_id = prompt_of(&events);
    let mut previews = Vec::new();
    loop {
        match wait_for(&sim_events, "the prompt's previews and end", |e| {
            matches!(e, SimEvent::PreviewSent { .. } | SimEvent::Finished { .. })
        }) {
            SimEvent::Finished { prompt_id: p, .. } if p == prompt_id => break,
            SimEvent::PreviewSent {
                prompt_id: p,
                with_metadata,
                ..
            } if p == prompt_id => previews.push(with_metadata),
            _ => {}
        }
    }
    assert_eq!(previews.len(), 24, "one preview per step");
    assert!(
        previews.iter().all(|with_metadata| *with_metadata),
        "type 4 frames: the gateway announced supports_preview_metadata"
    );

    // It announces it again on every websocket it opens.
    h.sim.cut_websockets();
    h.sim.restore_websockets();
    let SimEvent::FeatureFlags { client_id, flags } =
        wait_for(&sim_events, "the gateway's feature_flags", |e| {
            matches!(e, SimEvent::FeatureFlags { .. })
        })
    else {
        unreachable!("wait_for returns what it waited for");
    };
    assert!(client_id.starts_with("gateway-"), "{client_id}");
    assert_eq!(flags, json!({"supports_preview_metadata": true}));
    let events = run_previewed(&h, 5, true);
    assert_previews(&events, "image/jpeg", &[0xFF, 0xD8, 0xFF]);
}
