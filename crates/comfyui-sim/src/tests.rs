//! End-to-end tests of the simulator over real sockets: a ureq client for HTTP, a tungstenite
//! client for the websocket, and [`SimEvent`]s to synchronise on. No test sleeps.

use std::io::{Cursor, ErrorKind};
use std::net::TcpStream;
use std::time::Duration;

use crossbeam_channel::Receiver;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use super::{ComfySim, Failure, PreviewFormat, SimEvent, SimOptions};

/// Long enough for any step of these tests on a loaded machine; only reached on failure.
const PATIENCE: Duration = Duration::from_secs(20);

fn start() -> ComfySim {
    start_with(SimOptions {
        step_delay: Duration::from_millis(2),
        ..SimOptions::default()
    })
}

fn start_with(opts: SimOptions) -> ComfySim {
    ComfySim::start(opts).expect("a free port on 127.0.0.1")
}

struct Http {
    agent: ureq::Agent,
    base: String,
}

impl Http {
    fn new(sim: &ComfySim) -> Http {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(PATIENCE))
            .build()
            .into();
        Http {
            agent,
            base: sim.url(),
        }
    }

    fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        let mut resp = self
            .agent
            .get(format!("{}{path}", self.base))
            .call()
            .expect("GET answered");
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.body_mut().read_to_vec().expect("body read");
        (resp.status().as_u16(), content_type, body)
    }

    fn get_json(&self, path: &str) -> Value {
        let (status, _, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}");
        serde_json::from_slice(&body).expect("JSON body")
    }

    fn post(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut resp = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", content_type)
            .send(body)
            .expect("POST answered");
        let body = resp.body_mut().read_to_vec().expect("body read");
        (resp.status().as_u16(), body)
    }

    fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, bytes) = self.post(path, "application/json", body.to_string().as_bytes());
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    fn queue(&self, graph: &Value, client_id: &str) -> String {
        let (status, body) =
            self.post_json("/prompt", &json!({"prompt": graph, "client_id": client_id}));
        assert_eq!(status, 200, "queued: {body}");
        body["prompt_id"].as_str().expect("prompt_id").to_string()
    }

    fn upload(&self, filename: &str, bytes: &[u8], fields: &[(&str, &str)]) -> (u16, Value) {
        let mut body = Vec::new();
        body.extend_from_slice(
            format!("--BOUNDARY\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\nContent-Type: image/png\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(bytes);
        for (name, value) in fields {
            body.extend_from_slice(
                format!("\r\n--BOUNDARY\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}").as_bytes(),
            );
        }
        body.extend_from_slice(b"\r\n--BOUNDARY--\r\n");
        let (status, bytes) = self.post(
            "/upload/image",
            "multipart/form-data; boundary=BOUNDARY",
            &body,
        );
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

type Socket = WebSocket<TcpStream>;

fn connect(sim: &ComfySim, client_id: &str) -> Socket {
    let stream = TcpStream::connect(sim.addr()).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let url = format!("ws://{}/ws?clientId={client_id}", sim.addr());
    let (mut ws, _) = tungstenite::client(url, stream).expect("websocket handshake");
    let greeting = next_text(&mut ws);
    assert_eq!(greeting["type"], "status");
    assert_eq!(greeting["data"]["sid"], client_id);
    ws
}

/// The next frame: text as JSON, binary as bytes.
enum Frame {
    Text(Value),
    Binary(Vec<u8>),
}

fn next_frame(ws: &mut Socket) -> Frame {
    loop {
        match ws.read().expect("a frame before the timeout") {
            Message::Text(t) => {
                return Frame::Text(serde_json::from_str(&t).expect("JSON message"));
            }
            Message::Binary(b) => return Frame::Binary(b.to_vec()),
            _ => {}
        }
    }
}

fn next_text(ws: &mut Socket) -> Value {
    loop {
        if let Frame::Text(v) = next_frame(ws) {
            return v;
        }
    }
}

/// Every text message already received, without waiting for more.
fn drain(ws: &mut Socket) -> Vec<Value> {
    ws.get_mut().set_nonblocking(true).expect("non-blocking");
    let mut seen = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => seen.push(serde_json::from_str(&t).expect("JSON message")),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("the socket broke: {e}"),
        }
    }
    ws.get_mut().set_nonblocking(false).expect("blocking again");
    seen
}

/// A one-pixel image saved: the cheapest prompt, different for each `color`.
fn tiny_graph(color: u32) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 1, "height": 1, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "tiny"}}
    })
}

/// Every text message up to and including `executing {node: null}` for `prompt_id`.
fn read_prompt(ws: &mut Socket, prompt_id: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let msg = next_text(ws);
        let end = msg["type"] == "executing"
            && msg["data"]["node"].is_null()
            && msg["data"]["prompt_id"] == prompt_id;
        seen.push(msg);
        if end {
            return seen;
        }
    }
}

/// Message types and node ids, leaving out `status` and `progress_state` broadcasts.
fn outline(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| !matches!(m["type"].as_str(), Some("status" | "progress_state")))
        .map(|m| match m["type"].as_str().unwrap_or_default() {
            "executing" => format!("executing {}", m["data"]["node"].as_str().unwrap_or("null")),
            "progress" => format!("progress {}/{}", m["data"]["value"], m["data"]["max"]),
            other => other.to_string(),
        })
        .collect()
}

fn wait_for(events: &Receiver<SimEvent>, what: impl Fn(&SimEvent) -> bool) -> SimEvent {
    loop {
        let event = events.recv_timeout(PATIENCE).expect("the awaited event");
        if what(&event) {
            return event;
        }
    }
}

fn finished(events: &Receiver<SimEvent>, prompt_id: &str) -> String {
    match wait_for(
        events,
        |e| matches!(e, SimEvent::Finished { prompt_id: p, .. } if p == prompt_id),
    ) {
        SimEvent::Finished { outcome, .. } => outcome,
        _ => unreachable!("wait_for returns only Finished here"),
    }
}

fn txt2img(seed: u64, text: &str, size: u32, steps: u32) -> Value {
    json!({
        "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "positive": ["6", 0],
              "negative": ["7", 0], "latent_image": ["5", 0], "seed": seed, "steps": steps,
              "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}}
    })
}

/// A PNG's size and `tEXt` chunks.
fn inspect_png(bytes: &[u8]) -> (u32, u32, Vec<(String, String)>, Vec<u8>) {
    let decoder = png::Decoder::new(Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("pixels");
    let texts = reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    (info.width, info.height, texts, buf)
}

#[test]
fn txt2img_runs_in_comfyui_message_order_and_saves_a_viewable_png() {
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();
    let mut ws = connect(&sim, "alice");
    let graph = txt2img(u64::MAX, "a lighthouse at dusk", 64, 2);
    let (status, answer) =
        http.post_json("/prompt", &json!({"prompt": graph, "client_id": "alice"}));
    assert_eq!(status, 200);
    assert_eq!(answer["number"], 0);
    assert_eq!(answer["node_errors"], json!({}));
    let prompt_id = answer["prompt_id"].as_str().expect("prompt_id").to_string();
    assert!(super::ids::is_lowercase_uuid(&prompt_id), "{prompt_id}");

    let messages = read_prompt(&mut ws, &prompt_id);
    assert_eq!(
        outline(&messages),
        [
            "execution_start",
            "execution_cached",
            "executing 4",
            "executing 6",
            "executing 7",
            "executing 5",
            "executing 3",
            "progress 1/2",
            "progress 2/2",
            "executing 8",
            "executing 9",
            "executed",
            "execution_success",
            "executing null"
        ]
    );
    assert!(
        messages
            .iter()
            .all(|m| m["type"] == "status" || m["data"]["prompt_id"] == prompt_id)
    );
    let executed = messages
        .iter()
        .find(|m| m["type"] == "executed")
        .expect("executed");
    let image = &executed["data"]["output"]["images"][0];
    assert_eq!(
        *image,
        json!({"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"})
    );
    assert!(messages.iter().any(|m| m["type"] == "progress_state"));

    assert_eq!(finished(&events, &prompt_id), "success");
    let history = http.get_json(&format!("/history/{prompt_id}"));
    let entry = &history[&prompt_id];
    assert_eq!(entry["prompt"][1], prompt_id);
    assert_eq!(entry["prompt"][2], graph);
    assert_eq!(entry["prompt"][3]["client_id"], "alice");
    assert_eq!(entry["prompt"][4], json!(["9"]));
    assert_eq!(entry["outputs"]["9"]["images"][0], *image);
    assert_eq!(entry["status"]["status_str"], "success");
    assert_eq!(entry["status"]["completed"], true);
    let kinds: Vec<&str> = entry["status"]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m[0].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["execution_start", "execution_cached", "execution_success"]
    );
    assert_eq!(entry["meta"]["9"]["node_id"], "9");

    let (status, content_type, png_bytes) =
        http.get("/view?filename=ComfyUI_00001_.png&subfolder=&type=output");
    assert_eq!((status, content_type.as_str()), (200, "image/png"));
    let (w, h, texts, _) = inspect_png(&png_bytes);
    assert_eq!((w, h), (64, 64));
    let prompt_chunk = texts
        .iter()
        .find(|(k, _)| k == "prompt")
        .expect("prompt chunk");
    assert_eq!(
        serde_json::from_str::<Value>(&prompt_chunk.1).expect("JSON"),
        graph
    );
    assert!(
        !texts.iter().any(|(k, _)| k == "workflow"),
        "without extra_pnginfo ComfyUI writes no workflow"
    );

    assert_eq!(
        http.get_json("/queue"),
        json!({"queue_running": [], "queue_pending": []})
    );
    assert_eq!(
        http.get_json("/prompt"),
        json!({"exec_info": {"queue_remaining": 0}})
    );
    let recorded = sim.requests();
    assert!(recorded.iter().any(|r| r.method == "POST"
        && r.path == "/prompt"
        && serde_json::from_slice::<Value>(&r.body).is_ok_and(|b| b["client_id"] == "alice")));
}

#[test]
fn an_identical_prompt_is_served_from_cache_and_a_new_seed_reruns_the_sampler() {
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();
    let mut ws = connect(&sim, "c");
    let graph = txt2img(7, "cached", 32, 1);
    let first = http.queue(&graph, "c");
    read_prompt(&mut ws, &first);

    let again = http.queue(&graph, "c");
    let messages = read_prompt(&mut ws, &again);
    assert_eq!(finished(&events, &again), "success");
    assert_eq!(
        outline(&messages),
        [
            "execution_start",
            "execution_cached",
            "executed",
            "execution_success",
            "executing null"
        ]
    );
    let cached = messages
        .iter()
        .find(|m| m["type"] == "execution_cached")
        .expect("cached");
    assert_eq!(
        cached["data"]["nodes"],
        json!(["3", "4", "5", "6", "7", "8", "9"])
    );
    let history = http.get_json(&format!("/history/{again}"));
    assert_eq!(
        history[&again]["outputs"]["9"]["images"][0]["filename"],
        "ComfyUI_00001_.png"
    );

    let other_seed = http.queue(&txt2img(8, "cached", 32, 1), "c");
    let messages = read_prompt(&mut ws, &other_seed);
    let cached = messages
        .iter()
        .find(|m| m["type"] == "execution_cached")
        .expect("cached");
    assert_eq!(cached["data"]["nodes"], json!(["4", "5", "6", "7"]));
    assert_eq!(finished(&events, &other_seed), "success");
    let history = http.get_json(&format!("/history/{other_seed}"));
    assert_eq!(
        history[&other_seed]["outputs"]["9"]["images"][0]["filename"],
        "ComfyUI_00002_.png"
    );
    let (_, _, a) = http.get("/view?filename=ComfyUI_00001_.png");
    let (_, _, b) = http.get("/view?filename=ComfyUI_00002_.png");
    assert_ne!(
        inspect_png(&a).3,
        inspect_png(&b).3,
        "a new seed draws a new picture"
    );
}

#[test]
fn refused_prompts_carry_comfyui_error_bodies() {
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();

    let mut unknown = txt2img(1, "x", 32, 1);
    unknown["3"]["class_type"] = json!("KSamplerTurbo");
    let (status, body) = http.post_json("/prompt", &json!({"prompt": unknown}));
    assert_eq!(status, 400);
    // As ComfyUI 0.3.64 words it (newer versions: `missing_node_type`).
    assert_eq!(body["error"]["type"], "invalid_prompt");
    assert_eq!(
        body["error"]["message"],
        "Cannot execute because node KSamplerTurbo does not exist."
    );
    assert_eq!(body["error"]["details"], "Node ID '#3'");
    assert_eq!(body["error"]["extra_info"], json!({}));
    assert_eq!(body["node_errors"], json!({}));

    let (status, body) = http.post_json("/prompt", &json!({"client_id": "x"}));
    assert_eq!(
        (status, body["error"]["type"].clone()),
        (400, json!("no_prompt"))
    );

    let (status, body) = http.post_json("/prompt", &json!({"prompt": {
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}}));
    assert_eq!(
        (status, body["error"]["type"].clone()),
        (400, json!("prompt_no_outputs"))
    );

    let mut bad = txt2img(1, "x", 32, 1);
    bad["4"]["inputs"]["ckpt_name"] = json!("missing.safetensors");
    bad["5"]["inputs"]["width"] = json!(8);
    let (status, body) = http.post_json("/prompt", &json!({"prompt": bad}));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "prompt_outputs_failed_validation");
    assert_eq!(
        body["node_errors"]["4"]["errors"][0]["type"],
        "value_not_in_list"
    );
    assert_eq!(
        body["node_errors"]["4"]["class_type"],
        "CheckpointLoaderSimple"
    );
    assert_eq!(
        body["node_errors"]["5"]["errors"][0]["type"],
        "value_smaller_than_min"
    );
    assert_eq!(
        body["node_errors"]["5"]["errors"][0]["extra_info"]["input_name"],
        "width"
    );
    assert_eq!(body["node_errors"]["5"]["dependent_outputs"], json!(["9"]));

    sim.fail_next(Failure::ValidationError);
    let good = txt2img(1, "x", 32, 1);
    let (status, body) = http.post_json("/prompt", &json!({"prompt": good}));
    assert_eq!(status, 400);
    assert_eq!(body["error"]["type"], "prompt_outputs_failed_validation");
    assert!(
        body["node_errors"]
            .as_object()
            .is_some_and(|m| !m.is_empty())
    );
    let (status, body) = http.post_json("/prompt", &json!({"prompt": good, "prompt_id": "mine-1"}));
    assert_eq!(status, 400, "a prompt_id of the client's must be a UUID");
    assert_eq!(body["error"]["type"], "invalid_prompt");
    let mine = "0b5e2a1c-7d4f-4e8a-9c3b-2f1e0d9c8b7a";
    let (status, body) = http.post_json("/prompt", &json!({"prompt": good, "prompt_id": mine}));
    assert_eq!(status, 200, "only the next prompt is refused");
    assert_eq!(body["prompt_id"], mine);
    assert_eq!(finished(&events, mine), "success");
}

#[test]
fn interrupt_stops_only_the_running_prompt() {
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();
    let mut ws = connect(&sim, "i");
    let prompt_id = http.queue(&txt2img(1, "long", 16, 5000), "i");
    wait_for(&events, |e| matches!(e, SimEvent::Step { value: 2, .. }));

    let (status, _) = http.post_json("/interrupt", &json!({"prompt_id": "someone-else"}));
    assert_eq!(status, 200);
    assert_eq!(
        wait_for(&events, |e| matches!(e, SimEvent::Interrupted { .. })),
        SimEvent::Interrupted { prompt_id: None }
    );
    let (status, _) = http.post("/interrupt", "application/json", b"");
    assert_eq!(status, 200);
    assert_eq!(
        wait_for(&events, |e| matches!(e, SimEvent::Interrupted { .. })),
        SimEvent::Interrupted {
            prompt_id: Some(prompt_id.clone())
        }
    );
    assert_eq!(finished(&events, &prompt_id), "interrupted");

    let messages = read_prompt(&mut ws, &prompt_id);
    let stop = messages
        .iter()
        .find(|m| m["type"] == "execution_interrupted")
        .expect("interrupted");
    assert_eq!(stop["data"]["node_id"], "3");
    assert_eq!(stop["data"]["node_type"], "KSampler");
    let history = http.get_json(&format!("/history/{prompt_id}"));
    assert_eq!(history[&prompt_id]["status"]["status_str"], "error");
    assert_eq!(
        history[&prompt_id]["status"]["messages"][2][0],
        "execution_interrupted"
    );
}

#[test]
fn deleting_from_a_paused_queue_removes_only_pending_prompts() {
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();
    sim.pause();
    let a = http.queue(&txt2img(1, "a", 16, 1), "q");
    let b = http.queue(&txt2img(2, "b", 16, 1), "q");
    let queue = http.get_json("/queue");
    assert_eq!(queue["queue_pending"][0][1], a);
    assert_eq!(queue["queue_pending"][1][1], b);
    assert_eq!(queue["queue_pending"][1][0], 1);

    let (status, _) = http.post_json("/queue", &json!({"delete": [a, "unknown"]}));
    assert_eq!(status, 200);
    assert_eq!(
        wait_for(&events, |e| matches!(e, SimEvent::QueueDeleted { .. })),
        SimEvent::QueueDeleted {
            prompt_ids: vec![a.clone()]
        }
    );
    assert_eq!(http.get_json("/prompt")["exec_info"]["queue_remaining"], 1);

    sim.resume();
    assert_eq!(finished(&events, &b), "success");
    assert_eq!(http.get_json(&format!("/history/{a}")), json!({}));
    let all = http.get_json("/history?max_items=5");
    assert_eq!(all.as_object().map(|m| m.len()), Some(1));
}

#[test]
fn uploads_are_named_like_comfyui_and_feed_load_image() {
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();
    let red = super::render::encode_png(24, 16, &[200, 10, 10].repeat(24 * 16), &[]).expect("png");
    let blue = super::render::encode_png(24, 16, &[10, 10, 200].repeat(24 * 16), &[]).expect("png");

    let (status, body) = http.upload("cat.png", &red, &[]);
    assert_eq!(
        (status, body),
        (
            200,
            json!({"name": "cat.png", "subfolder": "", "type": "input"})
        )
    );
    assert_eq!(
        http.upload("cat.png", &red, &[]).1["name"],
        "cat.png",
        "same bytes, same name"
    );
    assert_eq!(http.upload("cat.png", &blue, &[]).1["name"], "cat (1).png");
    assert_eq!(
        http.upload("cat.png", &blue, &[("overwrite", "true")]).1["name"],
        "cat.png"
    );
    let (_, body) = http.upload("dog.png", &red, &[("subfolder", "pets"), ("type", "input")]);
    assert_eq!(
        body,
        json!({"name": "dog.png", "subfolder": "pets", "type": "input"})
    );
    assert_eq!(http.upload("../x.png", &red, &[]).0, 400);

    let (status, _, bytes) = http.get("/view?filename=cat.png&type=input");
    assert_eq!((status, bytes), (200, blue.clone()));
    let info = http.get_json("/object_info/LoadImage");
    assert_eq!(
        info["LoadImage"]["input"]["required"]["image"][0],
        json!(["cat (1).png", "cat.png", "pets/dog.png"])
    );

    let graph = json!({
        "10": {"class_type": "LoadImage", "inputs": {"image": "pets/dog.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["10", 0]}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    });
    let prompt_id = http.queue(&graph, "u");
    assert_eq!(finished(&events, &prompt_id), "success");
    let history = http.get_json(&format!("/history/{prompt_id}"));
    let image = &history[&prompt_id]["outputs"]["3"]["images"][0];
    assert_eq!(image["type"], "temp");
    let name = image["filename"].as_str().expect("filename");
    let (status, _, bytes) = http.get(&format!("/view?filename={name}&type=temp"));
    assert_eq!(status, 200);
    let (w, h, _, pixels) = inspect_png(&bytes);
    assert_eq!((w, h), (24, 16));
    assert_eq!(&pixels[..3], &[55, 245, 245], "the inverted red upload");
}

#[test]
fn the_invert_template_saves_the_inverted_colour() {
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();
    let graph = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 4, "batch_size": 2, "color": 0x102030}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv/test"}}
    });
    let prompt_id = http.queue(&graph, "nobody-listening");
    assert_eq!(finished(&events, &prompt_id), "success");
    let history = http.get_json(&format!("/history/{prompt_id}"));
    let images = &history[&prompt_id]["outputs"]["3"]["images"];
    assert_eq!(
        *images,
        json!([
            {"filename": "test_00001_.png", "subfolder": "inv", "type": "output"},
            {"filename": "test_00002_.png", "subfolder": "inv", "type": "output"}
        ])
    );
    let (_, _, bytes) = http.get("/view?filename=test_00002_.png&subfolder=inv&type=output");
    let (w, h, _, pixels) = inspect_png(&bytes);
    assert_eq!((w, h), (8, 4));
    assert_eq!(&pixels[..3], &[0xef, 0xdf, 0xcf]);
}

#[test]
fn execution_errors_name_the_node_and_reach_history() {
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();
    let mut ws = connect(&sim, "e");
    sim.fail_next(Failure::ExecutionError {
        node_id: None,
        exception_type: "torch.OutOfMemoryError".into(),
        message: "CUDA out of memory".into(),
    });
    let prompt_id = http.queue(&txt2img(3, "oom", 16, 2), "e");
    let messages = read_prompt(&mut ws, &prompt_id);
    let error = messages
        .iter()
        .find(|m| m["type"] == "execution_error")
        .expect("error message");
    assert_eq!(error["data"]["node_id"], "3");
    assert_eq!(error["data"]["node_type"], "KSampler");
    assert_eq!(error["data"]["exception_type"], "torch.OutOfMemoryError");
    // With the newline ComfyUI leaves on it.
    assert_eq!(error["data"]["exception_message"], "CUDA out of memory\n");
    assert_eq!(error["data"]["executed"], json!(["4", "6", "7", "5"]));
    assert!(error["data"]["traceback"].is_array());
    assert_eq!(finished(&events, &prompt_id), "error");
    let history = http.get_json(&format!("/history/{prompt_id}"));
    assert_eq!(history[&prompt_id]["status"]["status_str"], "error");
    assert_eq!(history[&prompt_id]["status"]["completed"], false);

    let next = http.queue(&txt2img(3, "oom", 16, 2), "e");
    assert_eq!(
        finished(&events, &next),
        "success",
        "the failure applied once"
    );
}

#[test]
fn a_reconnecting_client_takes_its_id_over_and_learns_the_current_node() {
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();
    let mut old = connect(&sim, "r");
    let mut watcher = connect(&sim, "watcher");
    let prompt_id = http.queue(&txt2img(1, "slow", 16, 5000), "r");
    wait_for(&events, |e| matches!(e, SimEvent::Step { value: 1, .. }));

    let mut new = connect(&sim, "r");
    let executing = next_text(&mut new);
    assert_eq!(
        executing,
        json!({"type": "executing", "data": {"node": "3"}}),
        "ComfyUI names only the node on reconnect, no prompt_id"
    );
    let progress = loop {
        let msg = next_text(&mut new);
        if msg["type"] == "progress" {
            break msg;
        }
    };
    assert_eq!(progress["data"]["prompt_id"], prompt_id);

    let (status, _) = http.post_json("/interrupt", &json!({}));
    assert_eq!(status, 200);
    assert_eq!(finished(&events, &prompt_id), "interrupted");
    // The old socket stays open, unregistered: nothing after the takeover reaches it.
    let late = drain(&mut old);
    assert!(
        late.iter().all(|m| m["type"] != "execution_interrupted"),
        "{late:?}"
    );
    let stats = sim.ws_stats();
    assert_eq!((stats.accepted, stats.open, stats.registered), (3, 3, 2));
    // Only status broadcasts reached the other client while that prompt ran.
    let own = http.queue(&tiny_graph(0), "watcher");
    let seen = read_prompt(&mut watcher, &own);
    assert!(
        seen.iter()
            .all(|m| m["type"] == "status" || m["data"]["prompt_id"] == own),
        "{seen:?}"
    );
}

#[test]
fn closing_an_old_socket_unregisters_the_newer_one_with_the_same_id() {
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();
    let mut old = connect(&sim, "same");
    let mut new = connect(&sim, "same");
    old.close(None).expect("a close frame");
    while old.read().is_ok() {} // the simulator answers the close, then the socket ends
    assert_eq!(
        wait_for(&events, |e| matches!(e, SimEvent::WsClosed { .. })),
        SimEvent::WsClosed {
            client_id: "same".into(),
            removed_newer: true
        }
    );
    let stats = sim.ws_stats();
    assert_eq!((stats.open, stats.registered), (1, 0));

    let prompt_id = http.queue(&tiny_graph(1), "same");
    assert_eq!(finished(&events, &prompt_id), "success");
    assert_eq!(
        drain(&mut new),
        Vec::<Value>::new(),
        "the newer socket lost its registration: no execution messages, no status"
    );

    // A socket under a fresh id is registered as usual and sees its prompt.
    let mut fresh = connect(&sim, "fresh");
    let prompt_id = http.queue(&tiny_graph(2), "fresh");
    let seen = read_prompt(&mut fresh, &prompt_id);
    assert!(seen.iter().any(|m| m["type"] == "execution_success"));
    // A client that closes its only socket removes just its own registration.
    fresh.close(None).expect("a close frame");
    assert_eq!(
        wait_for(&events, |e| matches!(e, SimEvent::WsClosed { .. })),
        SimEvent::WsClosed {
            client_id: "fresh".into(),
            removed_newer: false
        }
    );
}

#[test]
fn status_goes_to_every_socket_on_each_queue_change_and_is_counted() {
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();
    let mut sockets: Vec<Socket> = (0..3).map(|i| connect(&sim, &format!("s{i}"))).collect();
    let greeted = sim.ws_stats();
    assert_eq!((greeted.accepted, greeted.open), (3, 3));
    assert_eq!(greeted.status_sent, 3, "one greeting each");

    sim.pause();
    let a = http.queue(&tiny_graph(1), "s0");
    let b = http.queue(&tiny_graph(2), "s0");
    sim.resume();
    assert_eq!(finished(&events, &a), "success");
    assert_eq!(finished(&events, &b), "success");
    // Queued twice, then each prompt started and finished: six queue changes, to 3 sockets.
    assert_eq!(sim.ws_stats().status_sent, 3 + 6 * 3);
    for socket in &mut sockets[1..] {
        let remaining: Vec<u64> = (0..6)
            .map(|_| {
                let msg = next_text(socket);
                assert_eq!(msg["type"], "status", "{msg}");
                assert!(msg["data"].get("sid").is_none(), "broadcasts name no sid");
                msg["data"]["status"]["exec_info"]["queue_remaining"]
                    .as_u64()
                    .expect("a count")
            })
            .collect();
        assert_eq!(remaining, [1, 2, 2, 1, 1, 0]);
        assert_eq!(drain(socket), Vec::<Value>::new(), "nothing but status");
    }
}

#[test]
fn a_thousand_prompts_queued_at_once_all_run() {
    const PROMPTS: usize = 1000;
    let sim = start_with(SimOptions {
        step_delay: Duration::ZERO,
        ..SimOptions::default()
    });
    let http = Http::new(&sim);
    let events = sim.events();
    let mut ws = connect(&sim, "batch");
    // The client reads its socket all along, as a real one would.
    let reader = std::thread::spawn(move || {
        let mut ends = 0;
        while ends < PROMPTS {
            let msg = next_text(&mut ws);
            if msg["type"] == "executing" && msg["data"]["node"].is_null() {
                ends += 1;
            }
        }
        (ends, ws) // still open: status after the last prompt goes to it too
    });
    sim.pause();
    let ids: Vec<String> = (0..PROMPTS)
        .map(|i| http.queue(&tiny_graph(i as u32), "batch"))
        .collect();
    assert_eq!(
        http.get_json("/prompt")["exec_info"]["queue_remaining"],
        PROMPTS
    );
    sim.resume();
    for id in &ids {
        assert_eq!(finished(&events, id), "success");
    }
    let (ends, _ws) = reader.join().expect("the reader ends");
    assert_eq!(ends, PROMPTS);
    let history = http.get_json(&format!("/history?max_items={PROMPTS}"));
    assert_eq!(history.as_object().map(|m| m.len()), Some(PROMPTS));
    // One socket: a greeting, then three queue changes per prompt.
    assert_eq!(sim.ws_stats().status_sent, 1 + 3 * PROMPTS as u64);
}

#[test]
fn previews_arrive_as_binary_png_frames_when_enabled() {
    let sim = start_with(SimOptions {
        step_delay: Duration::from_millis(1),
        send_previews: true,
        ..SimOptions::default()
    });
    let http = Http::new(&sim);
    let mut ws = connect(&sim, "p");
    http.queue(&txt2img(5, "preview", 64, 2), "p");
    let preview = loop {
        if let Frame::Binary(bytes) = next_frame(&mut ws) {
            break bytes;
        }
    };
    assert_eq!(&preview[..8], &[0, 0, 0, 1, 0, 0, 0, 2]);
    let (w, h, _, _) = inspect_png(&preview[8..]);
    assert_eq!((w, h), (8, 8));
}

#[test]
fn a_client_announcing_preview_metadata_gets_type_4_frames_others_type_1() {
    let sim = start_with(SimOptions {
        step_delay: Duration::from_millis(1),
        send_previews: true,
        preview_format: PreviewFormat::Jpeg,
        ..SimOptions::default()
    });
    let http = Http::new(&sim);
    let events = sim.events();
    let mut rich = connect(&sim, "rich");
    let flags = json!({"type": "feature_flags", "data": {"supports_preview_metadata": true}});
    rich.send(Message::text(flags.to_string()))
        .expect("flags sent");
    let answer = next_text(&mut rich);
    assert_eq!(answer["type"], "feature_flags");
    assert_eq!(answer["data"]["supports_preview_metadata"], true);
    assert_eq!(
        wait_for(&events, |e| matches!(e, SimEvent::FeatureFlags { .. })),
        SimEvent::FeatureFlags {
            client_id: "rich".into(),
            flags: json!({"supports_preview_metadata": true})
        }
    );

    let prompt_id = http.queue(&txt2img(5, "preview", 64, 2), "rich");
    let frame = loop {
        if let Frame::Binary(bytes) = next_frame(&mut rich) {
            break bytes;
        }
    };
    assert_eq!(&frame[..4], &[0, 0, 0, 4]);
    let length = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
    let metadata: Value = serde_json::from_slice(&frame[8..8 + length]).expect("JSON metadata");
    assert_eq!(
        metadata,
        json!({"node_id": "3", "prompt_id": prompt_id, "display_node_id": "3",
               "parent_node_id": null, "real_node_id": "3", "image_type": "image/jpeg"})
    );
    assert_eq!(&frame[8 + length..8 + length + 3], &[0xFF, 0xD8, 0xFF]);
    assert!(matches!(
        wait_for(&events, |e| matches!(e, SimEvent::PreviewSent { .. })),
        SimEvent::PreviewSent {
            with_metadata: true,
            step: 1,
            ..
        }
    ));
    assert_eq!(finished(&events, &prompt_id), "success");

    let mut plain = connect(&sim, "plain");
    let second = http.queue(&txt2img(6, "preview", 64, 2), "plain");
    let frame = loop {
        if let Frame::Binary(bytes) = next_frame(&mut plain) {
            break bytes;
        }
    };
    assert_eq!(&frame[..8], &[0, 0, 0, 1, 0, 0, 0, 1], "type 1, JPEG");
    assert_eq!(&frame[8..11], &[0xFF, 0xD8, 0xFF]);
    assert_eq!(finished(&events, &second), "success");

    sim.set_previews(None);
    let quiet = http.queue(&txt2img(7, "no preview", 64, 2), "plain");
    let seen = read_prompt(&mut plain, &quiet);
    assert!(seen.iter().any(|m| m["type"] == "progress"));
    assert_eq!(sim.ws_stats().previews_sent, 4, "two steps each, then none");
}

#[test]
fn closing_sockets_mid_run_still_lets_the_prompt_succeed() {
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();
    let mut ws = connect(&sim, "s");
    sim.fail_next(Failure::CloseSocketAt { step: 1 });
    let prompt_id = http.queue(&txt2img(1, "x", 16, 3), "s");
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => panic!("a close frame was sent"),
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert_eq!(finished(&events, &prompt_id), "success");
    let history = http.get_json(&format!("/history/{prompt_id}"));
    assert_eq!(history[&prompt_id]["status"]["status_str"], "success");
}

#[test]
fn a_crash_refuses_connections_and_a_restart_comes_back_empty() {
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();
    let mut ws = connect(&sim, "k");
    let done = http.queue(&txt2img(1, "kept?", 16, 1), "k");
    read_prompt(&mut ws, &done);
    sim.fail_next(Failure::CrashAt { step: 2 });
    http.queue(&txt2img(2, "doomed", 16, 100), "k");
    wait_for(&events, |e| *e == SimEvent::Crashed);

    loop {
        match ws.read() {
            Ok(Message::Close(_)) => panic!("a dying process sends no close frame"),
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    let refused = TcpStream::connect(sim.addr()).expect_err("nothing listens while crashed");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);

    sim.restart().expect("the same port again");
    wait_for(&events, |e| *e == SimEvent::Restarted);
    assert_eq!(http.get_json("/history"), json!({}));
    assert_eq!(
        http.get_json("/queue"),
        json!({"queue_running": [], "queue_pending": []})
    );
    assert_eq!(http.get("/view?filename=ComfyUI_00001_.png").0, 404);
    let mut ws = connect(&sim, "k");
    let (status, body) = http.post_json(
        "/prompt",
        &json!({"prompt": txt2img(1, "kept?", 16, 1), "client_id": "k"}),
    );
    assert_eq!((status, body["number"].clone()), (200, json!(0)));
    let prompt_id = body["prompt_id"].as_str().expect("id").to_string();
    let messages = read_prompt(&mut ws, &prompt_id);
    assert!(
        outline(&messages).contains(&"executing 3".to_string()),
        "the cache was forgotten too"
    );
}

#[test]
fn misc_endpoints_answer_like_comfyui() {
    let sim = start();
    let http = Http::new(&sim);
    let stats = http.get_json("/system_stats");
    assert!(stats["system"]["comfyui_version"].is_string());
    assert_eq!(stats["devices"][0]["type"], "cpu");
    let info = http.get_json("/object_info");
    assert_eq!(info["SaveImage"]["output_node"], true);
    assert_eq!(
        info["KSampler"]["input"]["required"]["scheduler"][0][0],
        "normal"
    );
    assert_eq!(http.get_json("/object_info/Nope"), json!({}));
    assert_eq!(
        http.get_json("/api/prompt"),
        json!({"exec_info": {"queue_remaining": 0}})
    );
    assert_eq!(http.get("/nope").0, 404);
    assert_eq!(http.get("/view?filename=../secret.png").0, 400);
    assert_eq!(http.get("/view?filename=/etc/passwd").0, 400);
    assert_eq!(http.get("/view?filename=missing.png").0, 404);
    assert_eq!(http.get("/upload/image").0, 405);
    assert_eq!(http.get_json("/history/unknown"), json!({}));
}

#[test]
fn dropping_the_simulator_frees_its_port_even_with_a_socket_open() {
    let sim = start();
    let addr = sim.addr();
    let mut ws = connect(&sim, "d");
    sim.shutdown();
    assert!(ws.read().is_err(), "the socket ended");
    let refused = TcpStream::connect(addr).expect_err("nothing listens after shutdown");
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
}

/// The bytes and content type `/view` serves for one output entry.
fn view_entry(http: &Http, entry: &Value) -> (String, Vec<u8>) {
    let path = format!(
        "/view?filename={}&subfolder={}&type={}",
        entry["filename"].as_str().expect("filename"),
        entry["subfolder"].as_str().expect("subfolder"),
        entry["type"].as_str().expect("type"),
    );
    let (status, content_type, bytes) = http.get(&path);
    assert_eq!(status, 200, "{path}");
    (content_type, bytes)
}

#[test]
fn video_audio_and_gif_outputs_are_reported_and_served_like_comfyui() {
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();
    let graph = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 3, "color": 0x336699}},
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 8}},
        "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "video/ComfyUI",
              "format": "auto", "codec": "auto"}},
        "4": {"class_type": "SaveWEBM", "inputs": {"images": ["1", 0], "filename_prefix": "ComfyUI",
              "codec": "vp9", "fps": 24, "crf": 32}},
        "5": {"class_type": "VHS_VideoCombine", "inputs": {"images": ["1", 0], "frame_rate": 8,
              "loop_count": 0, "filename_prefix": "AnimateDiff", "format": "image/gif",
              "pingpong": false, "save_output": true}},
        "6": {"class_type": "VHS_VideoCombine", "inputs": {"images": ["1", 0], "frame_rate": 12,
              "loop_count": 0, "filename_prefix": "clip", "format": "video/h264-mp4",
              "pingpong": false, "save_output": false}},
        "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "11": {"class_type": "CLIPTextEncode", "inputs": {"text": "rain on a tin roof", "clip": ["10", 1]}},
        "12": {"class_type": "EmptyLatentAudio", "inputs": {"seconds": 1.5, "batch_size": 1}},
        "13": {"class_type": "KSampler", "inputs": {"model": ["10", 0], "positive": ["11", 0],
              "negative": ["11", 0], "latent_image": ["12", 0], "seed": 4, "steps": 2, "cfg": 7,
              "sampler_name": "euler", "scheduler": "normal", "denoise": 1}},
        "14": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["13", 0], "vae": ["10", 2]}},
        "15": {"class_type": "SaveAudio", "inputs": {"audio": ["14", 0], "filename_prefix": "audio/ComfyUI"}},
        "16": {"class_type": "SaveAudioMP3", "inputs": {"audio": ["14", 0], "filename_prefix": "audio/ComfyUI", "quality": "V0"}},
        "17": {"class_type": "SaveAudioOpus", "inputs": {"audio": ["14", 0], "filename_prefix": "audio/ComfyUI", "quality": "128k"}},
        "18": {"class_type": "SaveAudioWAV", "inputs": {"audio": ["14", 0], "filename_prefix": "audio/ComfyUI"}},
        "19": {"class_type": "SaveAnimatedPNG", "inputs": {"images": ["1", 0], "filename_prefix": "anim",
              "fps": 6, "compress_level": 4}}
    });
    let prompt_id = http.queue(&graph, "nobody");
    assert_eq!(finished(&events, &prompt_id), "success");
    let history = http.get_json(&format!("/history/{prompt_id}"));
    let outputs = &history[&prompt_id]["outputs"];

    assert_eq!(
        outputs["3"],
        json!({"images": [{"filename": "ComfyUI_00001_.mp4", "subfolder": "video", "type": "output"}],
               "animated": [true]})
    );
    let (content_type, mp4) = view_entry(&http, &outputs["3"]["images"][0]);
    assert_eq!(content_type, "video/mp4");
    assert_eq!(&mp4[4..12], b"ftypisom");
    assert_eq!(outputs["4"]["animated"], json!([true]));
    let (content_type, webm) = view_entry(&http, &outputs["4"]["images"][0]);
    assert_eq!(
        (content_type.as_str(), &webm[..4]),
        ("video/webm", &[0x1A, 0x45, 0xDF, 0xA3][..])
    );

    assert_eq!(
        outputs["19"],
        json!({"images": [{"filename": "anim_00001_.png", "subfolder": "", "type": "output"}],
               "animated": [true]})
    );
    let (content_type, apng) = view_entry(&http, &outputs["19"]["images"][0]);
    assert_eq!(content_type, "image/png");
    let reader = png::Decoder::new(Cursor::new(&apng))
        .read_info()
        .expect("a PNG");
    let animation = reader.info().animation_control().expect("an APNG");
    assert_eq!(animation.num_frames, 3);

    let gif = &outputs["5"]["gifs"][0];
    assert_eq!(
        *gif,
        json!({"filename": "AnimateDiff_00001.gif", "subfolder": "", "type": "output",
               "format": "image/gif", "frame_rate": 8.0, "workflow": "AnimateDiff_00001.png",
               "fullpath": "/comfyui/output/AnimateDiff_00001.gif"})
    );
    let (content_type, gif_bytes) = view_entry(&http, gif);
    assert_eq!(
        (content_type.as_str(), &gif_bytes[..6]),
        ("image/gif", &b"GIF89a"[..])
    );
    let (_, workflow) = view_entry(
        &http,
        &json!({"filename": "AnimateDiff_00001.png", "subfolder": "", "type": "output"}),
    );
    let (_, _, texts, _) = inspect_png(&workflow);
    assert!(
        texts.iter().any(|(k, _)| k == "prompt"),
        "VideoHelperSuite's PNG carries the prompt"
    );
    let temp = &outputs["6"]["gifs"][0];
    assert_eq!(
        (temp["filename"].as_str(), temp["type"].as_str()),
        (Some("clip_00001.mp4"), Some("temp"))
    );
    assert_eq!(view_entry(&http, temp).0, "video/mp4");

    let audio: Vec<(String, Vec<u8>)> = ["15", "16", "17", "18"]
        .iter()
        .map(|id| {
            let entry = &outputs[*id]["audio"][0];
            assert_eq!(
                (entry["subfolder"].as_str(), entry["type"].as_str()),
                (Some("audio"), Some("output"))
            );
            view_entry(&http, entry)
        })
        .collect();
    assert_eq!(audio[0].0, "audio/flac");
    assert_eq!(&audio[0].1[..4], b"fLaC");
    assert_eq!(audio[1].0, "audio/mpeg");
    assert_eq!(&audio[1].1[..3], b"ID3");
    assert_eq!(audio[2].0, "audio/opus");
    assert_eq!(&audio[2].1[..4], b"OggS");
    assert_eq!(audio[3].0, "audio/x-wav");
    assert_eq!(
        (&audio[3].1[..4], &audio[3].1[8..12]),
        (&b"RIFF"[..], &b"WAVE"[..])
    );
    let names: Vec<&str> = ["15", "16", "17", "18"]
        .iter()
        .filter_map(|id| outputs[*id]["audio"][0]["filename"].as_str())
        .collect();
    assert_eq!(
        names,
        // In the order they ran: the last output first, as ComfyUI 0.3.64 did in the captures.
        [
            "ComfyUI_00004_.flac",
            "ComfyUI_00003_.mp3",
            "ComfyUI_00002_.opus",
            "ComfyUI_00001_.wav"
        ],
        "one counter per folder and prefix, whatever the extension"
    );
}

#[test]
fn a_large_video_is_streamed_at_the_size_asked_for() {
    const MEGABYTES: u64 = 24;
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();
    let graph = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 32, "batch_size": 2, "color": 0}},
        "2": {"class_type": "CreateVideo", "inputs": {"images": ["1", 0], "fps": 24}},
        "3": {"class_type": "SaveVideo", "inputs": {"video": ["2", 0], "filename_prefix": "big",
              "format": "mp4", "codec": "h264", "megabytes": MEGABYTES}}
    });
    let prompt_id = http.queue(&graph, "nobody");
    assert_eq!(finished(&events, &prompt_id), "success");
    let mut response = http
        .agent
        .get(format!(
            "{}/view?filename=big_00001_.mp4&type=output",
            http.base
        ))
        .call()
        .expect("GET answered");
    let length = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert_eq!(length, Some((MEGABYTES * 1024 * 1024).to_string()));
    let mut reader = response.body_mut().as_reader();
    let mut head = [0u8; 12];
    std::io::Read::read_exact(&mut reader, &mut head).expect("the header");
    assert_eq!(&head[4..], b"ftypisom");
    let rest = std::io::copy(&mut reader, &mut std::io::sink()).expect("the whole body");
    assert_eq!(rest + 12, MEGABYTES * 1024 * 1024);
}

#[test]
fn a_graph_with_one_broken_output_runs_the_others_and_names_it() {
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();
    let mut graph = txt2img(3, "partial", 16, 1);
    graph["20"] = json!({"class_type": "SaveVideo", "inputs": {"filename_prefix": "video/x",
        "format": "auto", "codec": "auto"}});
    let (status, answer) = http.post_json("/prompt", &json!({"prompt": graph, "client_id": "p"}));
    assert_eq!(status, 200, "{answer}");
    let prompt_id = answer["prompt_id"]
        .as_str()
        .expect("a prompt id")
        .to_string();
    assert_eq!(answer["number"], 0);
    assert_eq!(
        answer["node_errors"],
        json!({"20": {"errors": [{"type": "required_input_missing", "message": "Required input is missing",
                                  "details": "video", "extra_info": {"input_name": "video"}}],
                      "dependent_outputs": ["20"], "class_type": "SaveVideo"}})
    );
    assert_eq!(finished(&events, &prompt_id), "success");
    let history = http.get_json(&format!("/history/{prompt_id}"));
    let entry = &history[&prompt_id];
    assert_eq!(
        entry["prompt"][4],
        json!(["9"]),
        "only the valid output runs"
    );
    let ran: Vec<&String> = entry["outputs"]
        .as_object()
        .expect("outputs")
        .keys()
        .collect();
    assert_eq!(ran, ["9"]);
}

#[test]
fn execution_success_is_sent_before_history_is_written() {
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();
    let mut ws = connect(&sim, "h");
    sim.hold_history(true);
    let prompt_id = http.queue(&tiny_graph(9), "h");
    while next_text(&mut ws)["type"] != "execution_success" {}
    assert_eq!(
        http.get_json(&format!("/history/{prompt_id}")),
        json!({}),
        "the final messages went out before the history entry was written"
    );
    assert_eq!(http.get_json("/queue")["queue_running"][0][1], prompt_id);
    sim.hold_history(false);
    assert_eq!(finished(&events, &prompt_id), "success");
    let history = http.get_json(&format!("/history/{prompt_id}"));
    assert_eq!(history[&prompt_id]["status"]["status_str"], "success");
    // ...and status told everyone the queue is empty only then, and `executing` null came
    // last (ComfyUI 0.3.64: success, history written, status, executing null).
    let status = next_text(&mut ws);
    assert_eq!(status["data"]["status"]["exec_info"]["queue_remaining"], 0);
    let last = next_text(&mut ws);
    assert_eq!(last["type"], "executing");
    assert_eq!(last["data"], json!({"node": null, "prompt_id": prompt_id}));
}

#[test]
fn previews_can_be_switched_over_http_for_demos() {
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();
    let mut ws = connect(&sim, "demo");
    let (status, answer) = http.post_json("/sim/previews", &json!({"format": "jpeg"}));
    assert_eq!((status, answer["previews"].as_str()), (200, Some("Jpeg")));
    let first = http.queue(&txt2img(1, "demo", 32, 1), "demo");
    let frame = loop {
        if let Frame::Binary(bytes) = next_frame(&mut ws) {
            break bytes;
        }
    };
    assert_eq!(&frame[..8], &[0, 0, 0, 1, 0, 0, 0, 1]);
    assert_eq!(finished(&events, &first), "success");
    let (status, _) = http.post_json("/sim/previews", &json!({"format": null}));
    assert_eq!(status, 200);
    assert_eq!(
        http.post_json("/sim/previews", &json!({"format": "bmp"})).0,
        400
    );
    let second = http.queue(&txt2img(2, "demo", 32, 1), "demo");
    assert_eq!(finished(&events, &second), "success");
    assert_eq!(sim.ws_stats().previews_sent, 1);
}

#[test]
fn a_blocked_branch_reports_an_execution_error_and_the_prompt_still_succeeds() {
    let sim = start();
    let http = Http::new(&sim);
    let events = sim.events();
    let mut ws = connect(&sim, "b");
    sim.fail_next(Failure::ExecutionBlocked {
        node_id: Some("10".into()),
        message: "NSFW content".into(),
    });
    let mut graph = txt2img(11, "blocked", 16, 1);
    graph["10"] = json!({"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}});
    let prompt_id = http.queue(&graph, "b");
    let messages = read_prompt(&mut ws, &prompt_id);
    let error = messages
        .iter()
        .find(|m| m["type"] == "execution_error")
        .expect("the blocked branch's error");
    assert_eq!(error["data"]["node_id"], "10");
    assert_eq!(error["data"]["exception_type"], "ExecutionBlocked");
    assert_eq!(
        error["data"]["exception_message"],
        "Execution Blocked: NSFW content"
    );
    // The blocked output (10) runs first: ComfyUI runs the outputs in the order of a Python
    // set, the last first in the captures of 0.3.64. The other output still runs after it.
    let outline = outline(&messages);
    let error_at = outline.iter().position(|m| m == "execution_error");
    assert!(
        error_at.is_some_and(|at| outline[at..].contains(&"executed".to_string()))
            && outline.ends_with(&[
                "execution_success".to_string(),
                "executing null".to_string()
            ]),
        "{outline:?}"
    );
    assert_eq!(finished(&events, &prompt_id), "success");
    let history = http.get_json(&format!("/history/{prompt_id}"));
    let entry = &history[&prompt_id];
    assert_eq!(entry["status"]["status_str"], "success");
    let kinds: Vec<&str> = entry["status"]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m[0].as_str())
        .collect();
    assert!(!kinds.contains(&"execution_error"), "{kinds:?}");
    let ran: Vec<&String> = entry["outputs"]
        .as_object()
        .expect("outputs")
        .keys()
        .collect();
    assert_eq!(ran, ["9"], "the blocked output made nothing");
}
