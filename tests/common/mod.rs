//! Helpers shared by the integration tests: the harness, an SSE client, the fake Supabase, and
//! PNG inspection.
#![allow(dead_code)]

pub mod fake_supabase;
pub mod gateway_process;
pub mod harness;
pub mod raw_http;
pub mod sse_client;

use serde_json::Value;

/// The keywords of every text chunk (tEXt, zTXt, iTXt) in a PNG.
pub fn png_text_chunks(png: &[u8]) -> Vec<String> {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let reader = decoder.read_info().expect("a valid PNG");
    let info = reader.info();
    let mut keywords: Vec<String> = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| t.keyword.clone())
        .collect();
    keywords.extend(
        info.compressed_latin1_text
            .iter()
            .map(|t| t.keyword.clone()),
    );
    keywords.extend(info.utf8_text.iter().map(|t| t.keyword.clone()));
    keywords
}

/// What the gateway stores for `original`, a file ComfyUI made, under the default
/// `OUTPUT_METADATA=strip`: the same bytes with the metadata its container carries removed
/// (PNG and WebP by `image::process`, FLAC, MP3 and MP4 by `strip::strip_in_place` on a
/// scratch copy); other files unchanged. `tests/metadata.rs` checks those results on their own.
pub fn as_stored(original: &[u8]) -> Vec<u8> {
    use comfyui_gateway::{image, media, strip};
    let kind = media::identify(original, "");
    if kind == media::PNG || kind == media::WEBP {
        return image::process(original.to_vec(), "", image::PngMetadata::Strip)
            .expect("a valid picture")
            .bytes;
    }
    let dir = harness::TestDir::new();
    let path = dir.path().join("copy");
    std::fs::write(&path, original).expect("a scratch copy");
    strip::strip_in_place(&path, kind).expect("a valid file");
    std::fs::read(&path).expect("the scratch copy")
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The decoded pixels of a PNG.
pub fn decode_pixels(png: &[u8]) -> Vec<u8> {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().expect("a valid PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a sane size")];
    let frame = reader.next_frame(&mut pixels).expect("decodable pixels");
    pixels.truncate(frame.buffer_size());
    pixels
}

/// A small RGB PNG.
pub fn tiny_png(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("header");
        let pixels: Vec<u8> = (0..width * height * 3).map(|i| (i % 251) as u8).collect();
        writer.write_image_data(&pixels).expect("pixels");
    }
    out
}

/// The first output image of `prompt_id` exactly as the simulator (ComfyUI) made it.
pub fn comfyui_original(h: &harness::Harness, prompt_id: &str) -> Vec<u8> {
    let (_, history) = get_json_from(&format!("{}/history/{prompt_id}", h.sim.url()));
    let outputs = history[prompt_id]["outputs"].as_object().expect("outputs");
    let image = outputs
        .values()
        .find_map(|o| o["images"].as_array().and_then(|a| a.first()).cloned())
        .expect("an output image");
    comfyui_file(h, &image).1
}

/// The file a ComfyUI history entry (`{"filename", "subfolder", "type"}`) names, fetched from
/// the simulator's `/view`: its URL, and its bytes exactly as ComfyUI made them.
pub fn comfyui_file(h: &harness::Harness, entry: &Value) -> (String, Vec<u8>) {
    let url = format!(
        "{}/view?filename={}&subfolder={}&type={}",
        h.sim.url(),
        entry["filename"].as_str().expect("a filename"),
        entry["subfolder"].as_str().unwrap_or(""),
        entry["type"].as_str().unwrap_or("output"),
    );
    let (status, bytes) = h.get_bytes(&url);
    assert_eq!(status, 200, "{url}");
    (url, bytes)
}

/// `/prompt` requests a simulator received, in order.
pub fn prompt_requests(sim: &comfyui_sim::ComfySim) -> Vec<comfyui_sim::RecordedRequest> {
    sim.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/prompt")
        .collect()
}

/// GETs any URL as JSON.
pub fn get_json_from(url: &str) -> (u16, Value) {
    let mut response = harness::agent().get(url).call().expect("answers");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().expect("body");
    (status, serde_json::from_str(&text).expect("JSON"))
}

/// The txt2img template's API-format graph with its sampler at `steps` steps of 64×64, so that
/// a job runs for as long as a test needs.
pub fn sampler_graph(steps: u32) -> Value {
    let template: Value = serde_json::from_str(
        &std::fs::read_to_string(harness::workflows_dir().join("txt2img.json"))
            .expect("the txt2img template"),
    )
    .expect("JSON");
    let mut graph = template["graph"].clone();
    for node in graph.as_object_mut().expect("nodes").values_mut() {
        if node["inputs"].get("steps").is_some() {
            node["inputs"]["steps"] = serde_json::json!(steps);
        }
        for size in ["width", "height"] {
            if node["inputs"].get(size).is_some() {
                node["inputs"][size] = serde_json::json!(64);
            }
        }
    }
    graph
}

/// How long a test waits for any one event before failing: generous, so a busy machine does not
/// fail a test, and finite, so no test can hang.
pub const EVENT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Receives from `events` until one is `wanted`, for at most [`EVENT_DEADLINE`]; panics naming
/// `what` when the deadline passes or the sender is gone.
pub fn wait_for<T>(
    events: &crossbeam_channel::Receiver<T>,
    what: &str,
    wanted: impl Fn(&T) -> bool,
) -> T {
    let deadline = std::time::Instant::now() + EVENT_DEADLINE;
    loop {
        match events.recv_deadline(deadline) {
            Ok(event) if wanted(&event) => return event,
            Ok(_) => {}
            Err(e) => panic!("waited {EVENT_DEADLINE:?} for {what}: {e}"),
        }
    }
}

/// Waits at most `deadline` for `child` (spawned with stdout and stderr piped) to end, reading
/// both pipes meanwhile, and returns what it printed: `(stdout, stderr)`. Panics naming `what`
/// when it runs past the deadline (it is then killed) or exits unsuccessfully.
pub fn finish_script(
    mut child: std::process::Child,
    what: &str,
    deadline: std::time::Duration,
) -> (String, String) {
    use std::io::Read;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let (mut out, mut err) = (String::new(), String::new());
        let _ = stdout.read_to_string(&mut out);
        let _ = stderr.read_to_string(&mut err);
        let _ = done_tx.send((out, err));
    });
    let Ok((out, err)) = done_rx.recv_timeout(deadline) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what} did not finish within {deadline:?}");
    };
    let status = child.wait().expect("the script ends");
    assert!(status.success(), "{what} failed ({status}):\n{out}\n{err}");
    (out, err)
}

/// A loopback port that refuses every connection for as long as this value lives: a socket
/// bound to it but never listening. Unlike a port bound and released, no other test (or
/// process) can take it over meanwhile, so a "dead backend" stays dead.
pub struct RefusingPort {
    fd: libc::c_int,
    port: u16,
}

impl RefusingPort {
    /// Binds a fresh loopback port without listening on it.
    pub fn new() -> RefusingPort {
        // SAFETY: plain socket calls on a descriptor this value owns and closes on drop.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let bound = libc::bind(fd, (&raw const addr).cast(), len);
            assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
            let mut len = len;
            let named = libc::getsockname(fd, (&raw mut addr).cast(), &mut len);
            assert_eq!(named, 0, "getsockname: {}", std::io::Error::last_os_error());
            RefusingPort {
                fd,
                port: u16::from_be(addr.sin_port),
            }
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for RefusingPort {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.fd) };
    }
}
