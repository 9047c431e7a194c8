//! The smoke suite against a real ComfyUI: `make test-real-comfyui` with `REAL_COMFYUI_URL`
//! pointing at a ComfyUI that has the model-free test nodes (`SlowSteps`, `SineAudio`)
//! installed. Each check runs the gateway in-process against that server with the templates of
//! `tests/real-comfyui/workflows/`: every output kind, previews and percent, cancel, a failing
//! node, a partial graph, metadata stripped, an uploaded input, a template's own `quality`.
//!
//! Without `REAL_COMFYUI_URL` every check says it was skipped and why, and passes: `make test`
//! always runs them that way (it unsets the variable), so the normal suite never talks to
//! anything but its own fakes.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use comfyui_gateway::app::App;
use comfyui_gateway::config::Config;
use comfyui_gateway::server::Server;
use comfyui_gateway::workflow::Templates;
use common::harness::TestDir;
use common::sse_client::{SseEvent, SseStream};
use serde_json::{Value, json};

/// The variable naming the real ComfyUI, e.g. `http://127.0.0.1:18188`.
const URL_VAR: &str = "REAL_COMFYUI_URL";

/// How long one real job may take (the first video encode loads codecs).
const JOB_DEADLINE: Duration = Duration::from_secs(120);

/// The real ComfyUI's URL, or `None` after saying that this check is skipped.
fn real_comfyui(check: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().trim_end_matches('/').to_string()),
        _ => {
            println!(
                "SKIPPED {check}: {URL_VAR} is not set. To run the smoke suite against a real \
                 ComfyUI with the model-free test nodes installed: \
                 {URL_VAR}=http://127.0.0.1:8188 make test-real-comfyui"
            );
            None
        }
    }
}

fn smoke_workflows() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/real-comfyui/workflows")
}

/// A gateway in this process, in front of the real ComfyUI, storing in a scratch directory.
struct Gateway {
    server: Server,
    comfyui: String,
    _dir: TestDir,
}

impl Gateway {
    fn start(comfyui: &str) -> Gateway {
        let _ = env_logger::builder().is_test(true).try_init();
        let dir = TestDir::new();
        let bound = Server::bind("127.0.0.1:0").expect("the gateway binds");
        let vars = [
            ("LISTEN_ADDR", "127.0.0.1:0".to_string()),
            ("COMFYUI_URL", comfyui.to_string()),
            ("WORKFLOWS_DIR", smoke_workflows().display().to_string()),
            ("DEFAULT_WORKFLOW", "invert".to_string()),
            ("DATA_DIR", dir.path().display().to_string()),
            ("PROGRESS_INTERVAL_MS", "100".to_string()),
            ("JOB_TIMEOUT_SECS", "120".to_string()),
            ("PUBLIC_BASE_URL", format!("http://{}", bound.addr())),
        ];
        let config = Config::from_lookup(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.clone())
        })
        .expect("a valid configuration");
        let app = Arc::new(App::new(config).expect("the app builds"));
        let server = bound.serve(app).expect("the gateway serves");
        let gateway = Gateway {
            server,
            comfyui: comfyui.to_string(),
            _dir: dir,
        };
        gateway.wait_ready();
        gateway
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    /// Waits until `/ready` says the gateway reaches ComfyUI (its websocket is up).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = get_json(&self.url("/ready"));
            if status == 200 {
                return;
            }
            for reason in body["reasons"].as_array().into_iter().flatten() {
                let reason = reason.as_str().unwrap_or_default();
                assert_eq!(
                    reason,
                    reason.trim_end(),
                    "no trailing whitespace in /ready"
                );
            }
            assert!(Instant::now() < deadline, "never ready: {body}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `POST /generate` answered as JSON once the job ended.
    fn generate(&self, body: &Value) -> (u16, Value) {
        let response = agent()
            .post(&self.url("/generate"))
            .header("Accept", "application/json")
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes());
        read_json(response)
    }

    /// `POST /generate` as a stream.
    fn stream(&self, body: &Value) -> SseStream {
        SseStream::open(self.server.addr(), "POST", "/generate", Some(body), &[])
    }

    /// The stored file behind a result entry's `url`.
    fn stored(&self, image: &Value) -> Vec<u8> {
        let url = image["url"].as_str().expect("a url");
        let mut response = agent().get(url).call().expect("the gateway serves it");
        assert_eq!(response.status().as_u16(), 200, "{url}");
        response
            .body_mut()
            .with_config()
            .limit(256 * 1024 * 1024)
            .read_to_vec()
            .expect("a body")
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(JOB_DEADLINE))
        .build()
        .new_agent()
}

fn read_json(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut response = response.expect("the server answers");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

fn get_json(url: &str) -> (u16, Value) {
    read_json(agent().get(url).call())
}

/// A colour no earlier run used, so that ComfyUI's cache does not answer instead of running.
fn fresh_color() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos % 16_777_216) as u64
}

/// Asserts a text passed on from ComfyUI has no trailing whitespace.
fn assert_trimmed(what: &str, text: &Value) {
    let text = text.as_str().unwrap_or_default();
    assert_eq!(text, text.trim_end(), "{what} ends in whitespace: {text:?}");
}

/// ComfyUI's embedded prompt: every saver writes the API graph, whose nodes all have a
/// `class_type`.
fn carries_the_prompt(bytes: &[u8]) -> bool {
    bytes.windows(10).any(|w| w == b"class_type")
}

#[test]
fn the_smoke_templates_load() {
    // Runs in `make test` too: the templates stay valid without a ComfyUI.
    let templates = Templates::load_dir(&smoke_workflows()).expect("the templates load");
    let names: Vec<&str> = templates.names().collect();
    for name in [
        "anim", "audio", "img2img", "invert", "partial", "slow", "video", "webm",
    ] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
}

#[test]
fn every_output_kind_is_stored() {
    let Some(url) = real_comfyui("every_output_kind_is_stored") else {
        return;
    };
    let gateway = Gateway::start(&url);
    let color = fresh_color();
    let cases = [
        (
            "invert",
            json!({"workflow": "invert", "color": color}),
            vec![("image", "image/png")],
        ),
        (
            "video",
            json!({"workflow": "video", "color": color}),
            vec![("video", "video/mp4")],
        ),
        (
            "webm",
            json!({"workflow": "webm", "color": color}),
            vec![("video", "video/webm")],
        ),
        (
            "anim",
            json!({"workflow": "anim", "color": color}),
            vec![("image", "image/png"), ("image", "image/webp")],
        ),
        (
            "audio",
            json!({"workflow": "audio", "frequency": 300.0 + (color % 1000) as f64}),
            vec![("audio", "audio/flac"), ("audio", "audio/mpeg")],
        ),
    ];
    for (name, body, want) in cases {
        let (status, result) = gateway.generate(&body);
        assert_eq!(status, 200, "{name}: {result}");
        let mut got: Vec<(String, String)> = result["images"]
            .as_array()
            .expect("images")
            .iter()
            .map(|i| {
                let bytes = gateway.stored(i);
                assert_eq!(i["bytes"], bytes.len(), "{name}: {i}");
                (
                    i["kind"].as_str().unwrap_or_default().to_string(),
                    i["content_type"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        got.sort();
        let mut want: Vec<(String, String)> = want
            .iter()
            .map(|(k, c)| (k.to_string(), c.to_string()))
            .collect();
        want.sort();
        assert_eq!(got, want, "{name}: {result}");
        println!("{name}: {got:?}");
    }
}

#[test]
fn metadata_is_stripped_from_every_output() {
    let Some(url) = real_comfyui("metadata_is_stripped_from_every_output") else {
        return;
    };
    let gateway = Gateway::start(&url);
    let color = fresh_color();
    let mut leaks = Vec::new();
    for body in [
        json!({"workflow": "invert", "color": color}),
        json!({"workflow": "video", "color": color}),
        json!({"workflow": "webm", "color": color}),
        json!({"workflow": "anim", "color": color}),
        json!({"workflow": "audio", "frequency": 200.0 + (color % 1000) as f64}),
    ] {
        let (status, result) = gateway.generate(&body);
        assert_eq!(status, 200, "{body}: {result}");
        for image in result["images"].as_array().into_iter().flatten() {
            let bytes = gateway.stored(image);
            let what = format!("{} ({})", image["key"], image["content_type"]);
            println!(
                "{what}: {} bytes, prompt embedded: {}",
                bytes.len(),
                carries_the_prompt(&bytes)
            );
            if carries_the_prompt(&bytes) {
                leaks.push(what);
            }
        }
    }
    assert!(leaks.is_empty(), "the prompt is still in: {leaks:?}");
}

#[test]
fn a_still_webp_is_stored_as_webp() {
    let Some(url) = real_comfyui("a_still_webp_is_stored_as_webp") else {
        return;
    };
    let gateway = Gateway::start(&url);
    let body = json!({"workflow": "still", "color": fresh_color()});
    let (status, result) = gateway.generate(&body);
    assert_eq!(status, 200, "{result}");
    let webp = &result["images"][0];
    assert_eq!(webp["content_type"], "image/webp", "{webp}");
    assert!(
        webp["key"].as_str().is_some_and(|k| k.ends_with(".webp")),
        "{webp}"
    );
    assert_eq!(&gateway.stored(webp)[8..12], b"WEBP");
}

#[test]
fn previews_arrive_and_percent_follows_the_steps() {
    let Some(url) = real_comfyui("previews_arrive_and_percent_follows_the_steps") else {
        return;
    };
    let gateway = Gateway::start(&url);
    let body = json!({"workflow": "slow", "steps": 6, "step_ms": 400, "color": fresh_color(),
                      "options": {"previews": true}});
    let mut stream = gateway.stream(&body);
    assert_eq!(stream.status, 200);
    let events = stream.until_terminal();
    let last = events.last().expect("a terminal event");
    assert_eq!(last.event, "complete", "{:?}", last.data);
    let progress: Vec<&SseEvent> = events.iter().filter(|e| e.event == "progress").collect();
    let points: Vec<(f64, Value, Value)> = progress
        .iter()
        .map(|e| {
            (
                e.data["percent"].as_f64().unwrap_or(-1.0),
                e.data["node"].clone(),
                e.data["step"].clone(),
            )
        })
        .collect();
    println!("progress (percent, node, step): {points:?}");
    for pair in points.windows(2) {
        assert!(pair[1].0 >= pair[0].0, "percent went back: {points:?}");
    }
    // EmptyImage 1 + SlowSteps 6 + SaveImage 1: step k of 6 is (1 + k) / 8.
    let mut checked = 0;
    for (percent, node, step) in &points {
        if let (Some("2"), Some(k)) = (node.as_str(), step.as_u64()) {
            let want = ((1 + k) as f64 * 1000.0 / 8.0).round() / 10.0;
            assert_eq!(*percent, want, "step {k}: {points:?}");
            checked += 1;
        }
    }
    assert!(checked >= 2, "saw SlowSteps' steps: {points:?}");
    let previews: Vec<&SseEvent> = events.iter().filter(|e| e.event == "preview").collect();
    assert!(!previews.is_empty(), "previews arrived");
    for preview in &previews {
        assert_eq!(preview.data["content_type"], "image/jpeg");
        assert_eq!(preview.data["node"], "2");
    }
    println!(
        "{} previews, {} progress events",
        previews.len(),
        progress.len()
    );
}

#[test]
fn cancel_interrupts_comfyui() {
    let Some(url) = real_comfyui("cancel_interrupts_comfyui") else {
        return;
    };
    let gateway = Gateway::start(&url);
    let body = json!({"workflow": "slow", "steps": 100, "step_ms": 200, "color": fresh_color()});
    let response = agent()
        .post(&gateway.url("/jobs"))
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes());
    let (status, created) = read_json(response);
    assert_eq!(status, 202, "{created}");
    let job = created["job_id"].as_str().expect("a job id").to_string();
    let mut events = SseStream::open(
        gateway.server.addr(),
        "GET",
        &format!("/jobs/{job}/events"),
        None,
        &[],
    );
    // Cancel once ComfyUI is running SlowSteps.
    loop {
        let event = events.next_event().expect("events until it runs");
        assert!(
            !event.is_terminal(),
            "ended before it ran: {:?}",
            event.data
        );
        if event.event == "progress" && event.data["step"].as_u64().is_some_and(|s| s >= 1) {
            break;
        }
    }
    let started = Instant::now();
    let response = agent().delete(&gateway.url(&format!("/jobs/{job}"))).call();
    let (status, cancelled) = read_json(response);
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled", "{cancelled}");
    println!("cancelled in {} ms", started.elapsed().as_millis());
    // ComfyUI stopped it: interrupted in its history, nothing running.
    let prompt_id = cancelled["prompt_id"].as_str().expect("a prompt id");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, history) = get_json(&format!("{}/history/{prompt_id}", gateway.comfyui));
        let messages = &history[prompt_id]["status"]["messages"];
        let interrupted = messages
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m[0] == "execution_interrupted");
        if interrupted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ComfyUI never interrupted it: {history}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, queue) = get_json(&format!("{}/queue", gateway.comfyui));
    let running = queue["queue_running"].as_array().map(Vec::len);
    assert_eq!(running, Some(0), "{queue}");
}

#[test]
fn a_failing_node_is_reported_without_comfyuis_trailing_newline() {
    let Some(url) = real_comfyui("a_failing_node_is_reported_without_comfyuis_trailing_newline")
    else {
        return;
    };
    let gateway = Gateway::start(&url);
    let body = json!({"workflow": "slow", "steps": 4, "step_ms": 50, "fail_at": 2, "color": fresh_color()});
    let (status, answer) = gateway.generate(&body);
    assert_eq!(status, 502, "{answer}");
    let error = &answer["error"];
    assert_eq!(error["code"], "execution_failed", "{answer}");
    assert_eq!(
        error["message"],
        "node 2 (SlowSteps) failed in ComfyUI: SlowSteps failed at step 2 as asked"
    );
    assert_trimmed("exception_message", &error["details"]["exception_message"]);
    for line in error["details"]["traceback"]
        .as_array()
        .into_iter()
        .flatten()
    {
        assert_trimmed("a traceback line", line);
    }
    println!("{}", error["message"]);
}

#[test]
fn a_partial_graph_warns_and_keeps_the_branch_that_ran() {
    let Some(url) = real_comfyui("a_partial_graph_warns_and_keeps_the_branch_that_ran") else {
        return;
    };
    let gateway = Gateway::start(&url);
    let (status, result) =
        gateway.generate(&json!({"workflow": "partial", "color": fresh_color()}));
    assert_eq!(status, 200, "{result}");
    let images = result["images"].as_array().expect("images");
    assert_eq!(images.len(), 1, "{result}");
    assert_eq!(images[0]["node"], "2");
    let warnings = result["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{result}");
    assert_eq!(warnings[0]["code"], "output_dropped");
    assert_eq!(warnings[0]["node"], "4");
    assert_trimmed("the warning", &warnings[0]["message"]);
    for cause in warnings[0]["causes"].as_array().into_iter().flatten() {
        assert_trimmed("a cause's details", &cause["details"]);
    }
    println!("{}", warnings[0]["message"]);
}

#[test]
fn an_uploaded_image_is_used() {
    let Some(url) = real_comfyui("an_uploaded_image_is_used") else {
        return;
    };
    let gateway = Gateway::start(&url);
    let mut png = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png, 8, 8);
        encoder.set_color(png::ColorType::Rgb);
        let mut writer = encoder.write_header().expect("header");
        let shade = (fresh_color() % 256) as u8;
        writer
            .write_image_data(&[shade; 8 * 8 * 3])
            .expect("pixels");
    }
    let image = base64::engine::general_purpose::STANDARD.encode(&png);
    let (status, result) = gateway.generate(&json!({"workflow": "img2img", "image": image}));
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["images"][0]["width"], 8, "{result}");
}

#[test]
fn a_template_parameter_named_quality_reaches_comfyui() {
    let Some(url) = real_comfyui("a_template_parameter_named_quality_reaches_comfyui") else {
        return;
    };
    let gateway = Gateway::start(&url);
    let (status, schema) = get_json(&gateway.url("/workflows/audio"));
    assert_eq!(status, 200);
    let choices = schema["parameters"]["quality"]["choices"].clone();
    assert_eq!(choices, json!(["V0", "128k", "320k"]), "{schema}");
    let body = json!({"workflow": "audio", "quality": "320k", "frequency": 500.0 + (fresh_color() % 500) as f64});
    let (status, result) = gateway.generate(&body);
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["params"]["quality"], "320k");
    let body = json!({"workflow": "anim", "quality": 50, "color": fresh_color(),
                      "options": {"output_format": "png"}});
    let (status, result) = gateway.generate(&body);
    assert_eq!(status, 200, "{result}");
}
