//! Files as ComfyUI made them, and its metadata stripped wherever it writes it: every kind of
//! output, end to end through the gateway against the simulator (which writes the prompt where
//! ComfyUI's savers do: PNG `tEXt`, APNG `comf`, WebP `EXIF`, FLAC and Opus comments, MP3
//! `TXXX`, MP4 `mdta` metadata, WebM `Tags`). With `OUTPUT_METADATA=keep` every file is stored byte for
//! byte; with `strip` (the default) no trace of the prompt is left and every file still parses,
//! checked here with parsers of the test's own.

mod common;

use comfyui_sim::SimEvent;
use common::harness::{Harness, Options};
use common::{comfyui_file, contains, get_json_from, wait_for};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Cursor;

/// Every saver the simulator has: still and distinct frames, PNG, APNG, a still and an
/// animated WebP, MP4, WebM, a VideoHelperSuite GIF, FLAC, MP3, Opus and WAV.
fn every_kind() -> Value {
    json!({
        // Three identical frames (one colour)...
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 16, "height": 8, "batch_size": 3, "color": 0x336699}},
        // ... and two distinct ones from a sampler.
        "2": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["2", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 2}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "positive": ["3", 0],
              "negative": ["3", 0], "latent_image": ["4", 0], "seed": 5, "steps": 1, "cfg": 7,
              "sampler_name": "euler", "scheduler": "normal", "denoise": 1}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["2", 2]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "ComfyUI"}},
        "11": {"class_type": "SaveAnimatedPNG", "inputs": {"images": ["6", 0],
               "filename_prefix": "anim", "fps": 6, "compress_level": 4}},
        "12": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["1", 0],
               "filename_prefix": "still", "fps": 4, "lossless": true, "quality": 80,
               "method": "default"}},
        "13": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["6", 0],
               "filename_prefix": "moving", "fps": 4, "lossless": true, "quality": 80,
               "method": "default"}},
        "14": {"class_type": "CreateVideo", "inputs": {"images": ["6", 0], "fps": 8}},
        "15": {"class_type": "SaveVideo", "inputs": {"video": ["14", 0],
               "filename_prefix": "video/ComfyUI", "format": "auto", "codec": "auto"}},
        "16": {"class_type": "SaveWEBM", "inputs": {"images": ["1", 0], "filename_prefix": "ComfyUI",
               "codec": "vp9", "fps": 24, "crf": 32}},
        "17": {"class_type": "VHS_VideoCombine", "inputs": {"images": ["1", 0], "frame_rate": 8,
               "loop_count": 0, "filename_prefix": "AnimateDiff", "format": "image/gif",
               "pingpong": false, "save_output": true}},
        "20": {"class_type": "EmptyLatentAudio", "inputs": {"seconds": 1.0, "batch_size": 1}},
        "21": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "positive": ["3", 0],
               "negative": ["3", 0], "latent_image": ["20", 0], "seed": 4, "steps": 1, "cfg": 7,
               "sampler_name": "euler", "scheduler": "normal", "denoise": 1}},
        "22": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["21", 0], "vae": ["2", 2]}},
        "23": {"class_type": "SaveAudio", "inputs": {"audio": ["22", 0], "filename_prefix": "audio/ComfyUI"}},
        "24": {"class_type": "SaveAudioMP3", "inputs": {"audio": ["22", 0],
               "filename_prefix": "audio/ComfyUI", "quality": "V0"}},
        "25": {"class_type": "SaveAudioOpus", "inputs": {"audio": ["22", 0],
               "filename_prefix": "audio/ComfyUI", "quality": "128k"}},
        "26": {"class_type": "SaveAudioWAV", "inputs": {"audio": ["22", 0], "filename_prefix": "audio/ComfyUI"}}
    })
}

/// One stored output beside the file ComfyUI made.
struct Output {
    node: String,
    extension: String,
    content_type: String,
    stored: Vec<u8>,
    original: Vec<u8>,
}

/// Runs `body` to completion and pairs every stored file with ComfyUI's, by node and position.
fn run(h: &Harness, body: &Value) -> (Value, Vec<Output>) {
    let (status, result) = h.post_json("/generate", body);
    assert_eq!(status, 200, "{result}");
    let prompt_id = result["prompt_id"].as_str().expect("a prompt id");
    let (_, history) = get_json_from(&format!("{}/history/{prompt_id}", h.sim.url()));
    let outputs = &history[prompt_id]["outputs"];
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut pairs = Vec::new();
    for image in result["images"].as_array().expect("images") {
        let node = image["node"].as_str().expect("a node").to_string();
        let index = seen.entry(node.clone()).or_default();
        let entries: Vec<&Value> = outputs[&node]
            .as_object()
            .expect("the node's output")
            .values()
            .filter_map(Value::as_array)
            .flatten()
            .filter(|e| e.get("filename").is_some())
            .collect();
        let entry = entries[*index];
        *index += 1;
        let (_, original) = comfyui_file(h, entry);
        let key = image["key"].as_str().expect("a key");
        let stored = std::fs::read(h.dir.path().join("images").join(key)).expect("stored");
        pairs.push(Output {
            node,
            extension: key.rsplit('.').next().unwrap_or_default().to_string(),
            content_type: image["content_type"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            stored,
            original,
        });
    }
    (result, pairs)
}

/// `(node, extension)` of every stored file.
fn kinds(outputs: &[Output]) -> Vec<(&str, &str)> {
    outputs
        .iter()
        .map(|o| (o.node.as_str(), o.extension.as_str()))
        .collect()
}

/// What [`every_kind`] stores: `(node, key extension)`.
const EVERY_KIND: [(&str, &str); 12] = [
    ("10", "png"),
    ("10", "png"),
    ("11", "png"),
    ("12", "webp"),
    ("13", "webp"),
    ("15", "mp4"),
    ("16", "webm"),
    ("17", "gif"),
    ("23", "flac"),
    ("24", "mp3"),
    ("25", "opus"),
    ("26", "wav"),
];

/// The node ids and extensions, in any order (the gateway keeps ComfyUI's node order).
fn sorted(mut kinds: Vec<(&str, &str)>) -> Vec<(String, String)> {
    kinds.sort();
    kinds
        .into_iter()
        .map(|(n, e)| (n.to_string(), e.to_string()))
        .collect()
}

#[test]
fn with_keep_every_kind_is_stored_byte_for_byte_as_comfyui_made_it() {
    let h = Harness::with(Options {
        vars: vec![("OUTPUT_METADATA", "keep".into())],
        ..Options::default()
    });
    let (result, outputs) = run(&h, &json!({"graph": every_kind()}));
    assert_eq!(
        sorted(kinds(&outputs)),
        sorted(EVERY_KIND.to_vec()),
        "{result}"
    );
    for output in &outputs {
        assert!(
            output.stored == output.original,
            "node {}: the {} is not the file ComfyUI made",
            output.node,
            output.extension
        );
        assert!(
            !contains(&output.original, b"workflow"),
            "node {}: the gateway sends no extra_pnginfo, so ComfyUI writes no workflow",
            output.node
        );
        assert!(
            contains(&output.original, b"class_type")
                || ["gif", "wav"].contains(&output.extension.as_str()),
            "node {}: the simulator wrote the prompt into the {}",
            output.node,
            output.extension
        );
    }
}

#[test]
fn with_strip_no_prompt_is_left_anywhere_and_every_file_still_parses() {
    let h = Harness::start();
    let (result, outputs) = run(&h, &json!({"graph": every_kind()}));
    assert_eq!(
        sorted(kinds(&outputs)),
        sorted(EVERY_KIND.to_vec()),
        "{result}"
    );
    for output in &outputs {
        for needle in [&b"class_type"[..], b"prompt", b"KSampler", b"lighthouse"] {
            assert!(
                !contains(&output.stored, needle),
                "node {}: {} left in the {}",
                output.node,
                String::from_utf8_lossy(needle),
                output.extension
            );
        }
        let (stored, original) = (&output.stored, &output.original);
        match output.extension.as_str() {
            "png" => check_png(stored, original),
            "webp" => check_webp(stored, original),
            "mp4" => check_mp4(stored, original),
            "flac" => check_flac(stored, original),
            "mp3" => check_mp3(stored, original),
            "opus" => check_ogg(stored, original),
            "webm" => check_webm(stored, original),
            // Nothing to strip: stored as made.
            "gif" | "wav" => assert!(stored == original, "{}", output.extension),
            other => panic!("unexpected {other}"),
        }
    }
    let content_types: Vec<&str> = outputs.iter().map(|o| o.content_type.as_str()).collect();
    assert!(content_types.contains(&"image/webp"), "{content_types:?}");
}

#[test]
fn a_still_webp_from_save_animated_webp_stays_a_webp_unless_another_format_is_asked() {
    let h = Harness::start();
    let graph = json!({
        "1": every_kind()["1"],
        "12": every_kind()["12"],
    });
    for body in [
        json!({"graph": graph}),
        json!({"graph": graph, "output_format": "png"}),
    ] {
        let (result, outputs) = run(&h, &body);
        assert_eq!(kinds(&outputs), [("12", "webp")], "{result}");
        let image = &result["images"][0];
        assert_eq!(image["content_type"], "image/webp");
        assert_eq!(
            (image["width"].as_u64(), image["height"].as_u64()),
            (Some(16), Some(8))
        );
        let output = &outputs[0];
        let decoder = image_webp::WebPDecoder::new(Cursor::new(&output.original)).expect("WebP");
        assert!(!decoder.is_animated(), "ComfyUI wrote a still WebP");
        check_webp(&output.stored, &output.original);
    }
    // ComfyUI still says `animated` (three images went in): the file decides.
    let (result, _) = run(&h, &json!({"graph": graph}));
    let prompt_id = result["prompt_id"].as_str().expect("a prompt id");
    let (_, history) = get_json_from(&format!("{}/history/{prompt_id}", h.sim.url()));
    assert_eq!(
        history[prompt_id]["outputs"]["12"]["animated"],
        json!([true])
    );
    // Asking for another format converts it.
    let (result, outputs) = run(&h, &json!({"graph": graph, "output_format": "jpeg"}));
    assert_eq!(kinds(&outputs), [("12", "jpg")], "{result}");
    assert!(outputs[0].stored.starts_with(&[0xff, 0xd8, 0xff]));
}

#[test]
fn the_simulator_writes_the_workflow_only_when_extra_pnginfo_carries_it() {
    let h = Harness::start();
    let kinds = every_kind();
    let mut graph = json!({});
    for id in [
        "1", "2", "3", "4", "5", "6", "10", "11", "12", "14", "15", "16", "20", "21", "22", "23",
        "24", "25",
    ] {
        graph[id] = kinds[id].clone();
    }
    let events = h.sim.events();
    let body = json!({
        "prompt": graph, "client_id": "ui",
        "extra_data": {"extra_pnginfo": {"workflow": {"nodes": [{"type": "SecretNodeType"}]}}}
    });
    let mut response = common::harness::agent()
        .post(format!("{}/prompt", h.sim.url()))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .expect("the simulator answers");
    assert_eq!(response.status().as_u16(), 200);
    let answer: Value =
        serde_json::from_str(&response.body_mut().read_to_string().expect("a body")).expect("JSON");
    let prompt_id = answer["prompt_id"]
        .as_str()
        .expect("a prompt id")
        .to_string();
    wait_for(
        &events,
        "the prompt to finish",
        |e| matches!(e, SimEvent::Finished { prompt_id: p, .. } if *p == prompt_id),
    );
    let (_, history) = get_json_from(&format!("{}/history/{prompt_id}", h.sim.url()));
    let outputs = history[&prompt_id]["outputs"].as_object().expect("outputs");
    let mut seen = Vec::new();
    for (node, output) in outputs {
        let entries = output
            .as_object()
            .expect("an output")
            .values()
            .filter_map(Value::as_array)
            .flatten()
            .filter(|e| e.get("filename").is_some());
        for entry in entries {
            let (url, bytes) = comfyui_file(&h, entry);
            assert!(
                contains(&bytes, b"SecretNodeType") && contains(&bytes, b"class_type"),
                "node {node}: the workflow and the prompt in {url}"
            );
            seen.push(node.clone());
        }
    }
    seen.sort();
    assert_eq!(seen, ["10", "10", "11", "12", "15", "16", "23", "24", "25"]);
}

/// Every chunk in bounds with a right CRC, `IHDR` first and `IEND` last; the image (and each
/// APNG frame) decodes to the same pixels as ComfyUI's, and the animation chunks are the same.
fn check_png(stored: &[u8], original: &[u8]) {
    fn chunks(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let mut at = 8;
        let mut out = Vec::new();
        while at < bytes.len() {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
            let crc = u32::from_be_bytes(bytes[at + 8 + len..at + 12 + len].try_into().expect("4"));
            assert_eq!(
                crc32fast::hash(&bytes[at + 4..at + 8 + len]),
                crc,
                "CRC at {at}"
            );
            let kind = String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned();
            out.push((kind, bytes[at + 8..at + 8 + len].to_vec()));
            at += 12 + len;
        }
        out
    }
    let after = chunks(stored);
    assert_eq!(after.first().map(|c| c.0.as_str()), Some("IHDR"));
    assert_eq!(after.last().map(|c| c.0.as_str()), Some("IEND"));
    let essential = |list: Vec<(String, Vec<u8>)>| -> Vec<(String, Vec<u8>)> {
        list.into_iter()
            .filter(|(k, _)| ["IHDR", "IDAT", "acTL", "fcTL", "fdAT", "IEND"].contains(&k.as_str()))
            .collect()
    };
    assert_eq!(essential(after.clone()), essential(chunks(original)));
    assert!(
        after
            .iter()
            .all(|(k, _)| !["tEXt", "zTXt", "iTXt", "comf"].contains(&k.as_str()))
    );
    let frames = |bytes: &[u8]| -> Vec<Vec<u8>> {
        let mut reader = png::Decoder::new(Cursor::new(bytes))
            .read_info()
            .expect("a PNG");
        let count = reader
            .info()
            .animation_control()
            .map_or(1, |a| a.num_frames);
        let mut buf = vec![0; reader.output_buffer_size().expect("small")];
        (0..count)
            .map(|_| {
                let info = reader.next_frame(&mut buf).expect("a frame");
                buf[..info.buffer_size()].to_vec()
            })
            .collect()
    };
    assert_eq!(frames(stored), frames(original));
}

/// Decodes like ComfyUI's (every frame of an animation), without `EXIF`.
fn check_webp(stored: &[u8], original: &[u8]) {
    let decode = |bytes: &[u8]| -> Vec<Vec<u8>> {
        let mut decoder = image_webp::WebPDecoder::new(Cursor::new(bytes)).expect("a WebP");
        let mut buf = vec![0; decoder.output_buffer_size().expect("small")];
        if !decoder.is_animated() {
            decoder.read_image(&mut buf).expect("the image");
            return vec![buf];
        }
        (0..decoder.num_frames())
            .map(|_| {
                decoder.read_frame(&mut buf).expect("a frame");
                buf.clone()
            })
            .collect()
    };
    assert_eq!(decode(stored), decode(original));
    assert!(!contains(stored, b"EXIF"));
    assert_eq!(
        u32::from_le_bytes(stored[4..8].try_into().expect("4")) as usize,
        stored.len() - 8,
        "the RIFF size was fixed"
    );
}

/// The box tree parses to the end, `udta` became `free`, and `stco` points at the same bytes.
fn check_mp4(stored: &[u8], original: &[u8]) {
    fn walk(
        bytes: &[u8],
        start: usize,
        end: usize,
        types: &mut Vec<String>,
        stco: &mut Vec<usize>,
    ) {
        let mut at = start;
        while at < end {
            let size = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
            assert!(
                size >= 8 && at + size <= end,
                "the box at {at} is in bounds"
            );
            let kind = &bytes[at + 4..at + 8];
            types.push(String::from_utf8_lossy(kind).into_owned());
            match kind {
                b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" => {
                    walk(bytes, at + 8, at + size, types, stco)
                }
                b"stco" => {
                    let count = u32::from_be_bytes(bytes[at + 12..at + 16].try_into().expect("4"));
                    for i in 0..count as usize {
                        let p = at + 16 + 4 * i;
                        stco.push(
                            u32::from_be_bytes(bytes[p..p + 4].try_into().expect("4")) as usize
                        );
                    }
                }
                _ => {}
            }
            at += size;
        }
    }
    let (mut types, mut offsets) = (Vec::new(), Vec::new());
    walk(stored, 0, stored.len(), &mut types, &mut offsets);
    let (mut before, mut offsets_before) = (Vec::new(), Vec::new());
    walk(
        original,
        0,
        original.len(),
        &mut before,
        &mut offsets_before,
    );
    assert!(before.contains(&"udta".to_string()), "{before:?}");
    let expected: Vec<String> = before
        .iter()
        .map(|t| {
            if t == "udta" {
                "free".into()
            } else {
                t.clone()
            }
        })
        .collect();
    assert_eq!(types, expected);
    assert!(!offsets.is_empty());
    assert_eq!(offsets, offsets_before);
    for offset in offsets {
        assert_eq!(stored[offset..offset + 64], original[offset..offset + 64]);
    }
    assert_eq!(stored.len(), original.len());
}

/// STREAMINFO first and unchanged, the comments gone, the frames where they were.
fn check_flac(stored: &[u8], original: &[u8]) {
    fn blocks(bytes: &[u8]) -> (Vec<(u8, Vec<u8>)>, usize) {
        assert_eq!(&bytes[..4], b"fLaC");
        let mut at = 4;
        let mut out = Vec::new();
        loop {
            let size =
                u32::from_be_bytes([0, bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
            out.push((bytes[at] & 0x7f, bytes[at + 4..at + 4 + size].to_vec()));
            let last = bytes[at] & 0x80 != 0;
            at += 4 + size;
            if last {
                return (out, at);
            }
        }
    }
    let (after, frames_at) = blocks(stored);
    let (before, frames_before) = blocks(original);
    assert_eq!(after[0], before[0], "STREAMINFO");
    assert_eq!(frames_at, frames_before);
    assert_eq!(
        &stored[frames_at..frames_at + 2],
        &[0xff, 0xf8],
        "frame sync"
    );
    assert_eq!(stored[frames_at..], original[frames_at..]);
}

/// An ID3v2 tag of padding, then MPEG frame sync and the frames as they were.
fn check_mp3(stored: &[u8], original: &[u8]) {
    assert_eq!(&stored[..3], b"ID3");
    let size = stored[6..10]
        .iter()
        .fold(0usize, |acc, &b| (acc << 7) | usize::from(b));
    assert!(stored[10..10 + size].iter().all(|&b| b == 0));
    let audio = 10 + size;
    assert_eq!(stored[audio], 0xff);
    assert_eq!(stored[audio + 1] & 0xe0, 0xe0, "frame sync after the tag");
    assert_eq!(stored[audio..], original[audio..]);
}

/// Every page's CRC right, the same pages, the audio untouched.
fn check_ogg(stored: &[u8], original: &[u8]) {
    fn crc(data: &[u8]) -> u32 {
        let mut crc = 0u32;
        for &byte in data {
            crc ^= u32::from(byte) << 24;
            for _ in 0..8 {
                crc = if crc & 0x8000_0000 != 0 {
                    (crc << 1) ^ 0x04c1_1db7
                } else {
                    crc << 1
                };
            }
        }
        crc
    }
    let mut at = 0;
    let mut pages = 0;
    while at + 27 <= stored.len() && &stored[at..at + 4] == b"OggS" {
        let segments = usize::from(stored[at + 26]);
        let body: usize = stored[at + 27..at + 27 + segments]
            .iter()
            .map(|&s| usize::from(s))
            .sum();
        let end = at + 27 + segments + body;
        let mut page = stored[at..end].to_vec();
        let stored_crc = u32::from_le_bytes(page[22..26].try_into().expect("4"));
        page[22..26].copy_from_slice(&[0; 4]);
        assert_eq!(crc(&page), stored_crc, "page {pages}");
        pages += 1;
        at = end;
    }
    assert!(pages >= 2, "OpusHead and OpusTags");
    assert_eq!(stored[at..], original[at..], "the audio after the headers");
}

/// The EBML header and the segment's elements walk to the end; `Tags` became `Void`, `Tracks`
/// and everything after are as they were.
fn check_webm(stored: &[u8], original: &[u8]) {
    /// `(id, header length, data length)` of the element at `at`.
    fn element(bytes: &[u8], at: usize) -> (u32, usize, usize) {
        let id_len = bytes[at].leading_zeros() as usize + 1;
        let id = bytes[at..at + id_len]
            .iter()
            .fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
        let size_len = bytes[at + id_len].leading_zeros() as usize + 1;
        let mut size = u64::from(bytes[at + id_len]) & (0xff >> size_len);
        for &b in &bytes[at + id_len + 1..at + id_len + size_len] {
            size = (size << 8) | u64::from(b);
        }
        (id, id_len + size_len, size as usize)
    }
    let (id, header, size) = element(stored, 0);
    assert_eq!(id, 0x1A45_DFA3);
    let segment = header + size;
    let (id, header, _) = element(stored, segment);
    assert_eq!(id, 0x1853_8067);
    let mut at = segment + header;
    let mut ids = Vec::new();
    while at < stored.len() {
        let (id, header, size) = element(stored, at);
        ids.push(id);
        at += header + size;
    }
    assert_eq!(at, stored.len(), "the elements end with the file");
    assert!(ids.contains(&0x1654_AE6B), "Tracks kept: {ids:x?}");
    assert!(!ids.contains(&0x1254_C367), "no Tags left: {ids:x?}");
    assert_eq!(stored[..segment + header], original[..segment + header]);
    assert_eq!(stored.len(), original.len());
}
