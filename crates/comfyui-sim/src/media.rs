//! Small but valid-looking media files for the simulated save nodes: real container headers
//! (an MP4 `ftyp`/`moov`/`mdat`, a WebM EBML header, GIF89a with real LZW-coded pixels,
//! RIFF/WAVE, `fLaC` with its STREAMINFO, MP3 frames, Ogg Opus pages) so that content sniffing
//! and header parsing work on them, with deterministic filler where a codec's payload would be.
//!
//! The containers ComfyUI tags carry its metadata the way ffmpeg writes it for ComfyUI's savers
//! ([`Recipe::build`] with the prompt and each `extra_pnginfo` entry): FLAC Vorbis comments
//! (`prompt=...`, then `encoder=`) and a `PADDING` block, an ID3v2.4 tag of `TXXX` frames in
//! MP3, `OpusTags` comments in Opus, Matroska `Tags` (`PROMPT`, ...) in WebM, and `mdta`
//! metadata (`moov/udta/meta` with `hdlr`, `keys`, `ilst`) in MP4, whose `stco` points at the
//! sample bytes in `mdat`.
//!
//! Each builder takes an optional total size: the header then declares sizes that cover it and
//! the file is stored as a head plus filler produced while it is served ([`FileData::Padded`]),
//! so a benchmark can ask for a 300 MB video without the simulator holding it.

use super::render::Frames;
use super::state::FileData;

/// The file `head` (whose declared sizes already account for `total`), padded to `total`.
fn finish(head: Vec<u8>, total: Option<u64>) -> FileData {
    match total {
        Some(len) if len > head.len() as u64 => FileData::Padded { head, len },
        _ => FileData::Bytes(head),
    }
}

/// `n` deterministic bytes seeded by `seed`.
fn filler(seed: u64, n: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// What ffmpeg calls itself in the files it writes (`encoder` tags, vendor strings).
const LAVF: &str = "Lavf61.7.100";

/// A media file whose container carries ComfyUI's metadata, built once the executor knows it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Recipe {
    /// SaveVideo and VideoHelperSuite's MP4s.
    Mp4 {
        width: u32,
        height: u32,
        frame_count: usize,
        fps: f64,
        hevc: bool,
        total: Option<u64>,
    },
    /// SaveWEBM and VideoHelperSuite's WebMs.
    Webm {
        width: u32,
        height: u32,
        frame_count: usize,
        total: Option<u64>,
    },
    /// SaveAudio.
    Flac {
        seconds: f64,
        hash: u64,
        total: Option<u64>,
    },
    /// SaveAudioMP3.
    Mp3 { seconds: f64, total: Option<u64> },
    /// SaveAudioOpus.
    Opus {
        seconds: f64,
        hash: u64,
        total: Option<u64>,
    },
}

impl Recipe {
    /// The file, with `tags` (`(key, JSON text)`: the prompt, then each `extra_pnginfo` entry)
    /// in its container's metadata as ffmpeg writes it for ComfyUI.
    pub(crate) fn build(&self, tags: &[(String, String)]) -> FileData {
        match *self {
            Recipe::Mp4 {
                width,
                height,
                frame_count,
                fps,
                hevc,
                total,
            } => mp4(width, height, frame_count, fps, hevc, total, tags),
            Recipe::Webm {
                width,
                height,
                frame_count,
                total,
            } => webm(width, height, frame_count, total, tags),
            Recipe::Flac {
                seconds,
                hash,
                total,
            } => flac(seconds, hash, total, tags),
            Recipe::Mp3 { seconds, total } => mp3(seconds, total, tags),
            Recipe::Opus {
                seconds,
                hash,
                total,
            } => opus(seconds, hash, total, tags),
        }
    }
}

/// `tags` and ffmpeg's own `encoder` tag.
fn with_encoder(tags: &[(String, String)]) -> Vec<(String, String)> {
    let mut all = tags.to_vec();
    all.push(("encoder".to_string(), LAVF.to_string()));
    all
}

/// An ISO BMFF box: 32-bit size, type, payload.
fn mp4_box(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32 + 8).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(payload);
    out
}

/// The identity transformation matrix of `mvhd` and `tkhd`.
fn mp4_matrix() -> Vec<u8> {
    [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect()
}

/// An ISO BMFF full box: version and flags (all zero), then the payload.
fn mp4_full_box(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut body = vec![0; 4];
    body.extend_from_slice(payload);
    mp4_box(kind, &body)
}

/// `moov/udta` as ffmpeg's `use_metadata_tags` writes it: `meta` with an `mdta` handler, the
/// key names in `keys` and their values (UTF-8 `data` boxes) in `ilst`, numbered from 1.
fn mp4_udta(tags: &[(String, String)]) -> Vec<u8> {
    let mut hdlr = vec![0; 4];
    hdlr.extend_from_slice(b"mdta");
    hdlr.extend_from_slice(&[0; 13]);
    let mut keys = (tags.len() as u32).to_be_bytes().to_vec();
    let mut ilst = Vec::new();
    for (index, (key, value)) in tags.iter().enumerate() {
        keys.extend(mp4_box(b"mdta", key.as_bytes()));
        let mut data = 1u32.to_be_bytes().to_vec(); // UTF-8
        data.extend_from_slice(&[0; 4]);
        data.extend_from_slice(value.as_bytes());
        ilst.extend(mp4_box(
            &(index as u32 + 1).to_be_bytes(),
            &mp4_box(b"data", &data),
        ));
    }
    let mut meta = mp4_full_box(b"hdlr", &hdlr[4..]);
    meta.extend(mp4_full_box(b"keys", &keys));
    meta.extend(mp4_box(b"ilst", &ilst));
    mp4_box(b"udta", &mp4_full_box(b"meta", &meta))
}

/// An MP4 (`ftyp`, `moov` with `mvhd`, a video `trak` whose `tkhd` gives the size and whose
/// `stco` points at the start of the samples, and `tags` in `udta`, then `mdat`), H.264 (`avc1`)
/// or H.265 (`hvc1`) by brand.
pub(crate) fn mp4(
    width: u32,
    height: u32,
    frame_count: usize,
    fps: f64,
    hevc: bool,
    total: Option<u64>,
    tags: &[(String, String)],
) -> FileData {
    let duration_ms = (frame_count as f64 / fps.max(0.01) * 1000.0).round() as u32;
    let mut ftyp = Vec::new();
    ftyp.extend_from_slice(b"isom");
    ftyp.extend_from_slice(&512u32.to_be_bytes());
    for brand in [
        b"isom",
        b"iso2",
        if hevc { b"hvc1" } else { b"avc1" },
        b"mp41",
    ] {
        ftyp.extend_from_slice(brand);
    }
    let mut mvhd = vec![0u8; 4 + 8];
    mvhd.extend_from_slice(&1000u32.to_be_bytes());
    mvhd.extend_from_slice(&duration_ms.to_be_bytes());
    mvhd.extend_from_slice(&0x0001_0000u32.to_be_bytes());
    mvhd.extend_from_slice(&0x0100u16.to_be_bytes());
    mvhd.extend_from_slice(&[0; 10]);
    mvhd.extend_from_slice(&mp4_matrix());
    mvhd.extend_from_slice(&[0; 24]);
    mvhd.extend_from_slice(&2u32.to_be_bytes());
    let mut tkhd = vec![0, 0, 0, 3];
    tkhd.extend_from_slice(&[0; 8]);
    tkhd.extend_from_slice(&1u32.to_be_bytes());
    tkhd.extend_from_slice(&[0; 4]);
    tkhd.extend_from_slice(&duration_ms.to_be_bytes());
    tkhd.extend_from_slice(&[0; 8 + 2 + 2 + 2 + 2]);
    tkhd.extend_from_slice(&mp4_matrix());
    tkhd.extend_from_slice(&(width << 16).to_be_bytes());
    tkhd.extend_from_slice(&(height << 16).to_be_bytes());
    let udta = mp4_udta(&with_encoder(tags));
    // One chunk holding every sample, at `first_sample` (known once `moov`'s size is).
    let head_with = |first_sample: u32| {
        let mut stco = 1u32.to_be_bytes().to_vec();
        stco.extend_from_slice(&first_sample.to_be_bytes());
        let stbl = mp4_box(b"stbl", &mp4_full_box(b"stco", &stco));
        let mdia = mp4_box(b"mdia", &mp4_box(b"minf", &stbl));
        let mut trak = mp4_box(b"tkhd", &tkhd);
        trak.extend(mdia);
        let mut moov_payload = mp4_box(b"mvhd", &mvhd);
        moov_payload.extend_from_slice(&mp4_box(b"trak", &trak));
        moov_payload.extend_from_slice(&udta);
        let mut head = mp4_box(b"ftyp", &ftyp);
        head.extend_from_slice(&mp4_box(b"moov", &moov_payload));
        head
    };
    let first_sample = head_with(0).len() as u32 + 8;
    let mut head = head_with(first_sample);
    let payload = filler(
        u64::from(width) << 32 | u64::from(height),
        frame_count * 512,
    );
    let mdat_size = match total {
        Some(len) => len.saturating_sub(head.len() as u64),
        None => payload.len() as u64 + 8,
    };
    head.extend_from_slice(&(mdat_size.min(u64::from(u32::MAX)) as u32).to_be_bytes());
    head.extend_from_slice(b"mdat");
    if total.is_none() {
        head.extend_from_slice(&payload);
    }
    finish(head, total)
}

/// An EBML element with an 8-byte size.
fn ebml(id: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = id.to_vec();
    out.push(0x01);
    out.extend_from_slice(&(payload.len() as u64).to_be_bytes()[1..]);
    out.extend_from_slice(payload);
    out
}

/// Matroska `Tags` as ffmpeg writes a file's metadata: one `Tag` (empty `Targets`: the whole
/// file) with a `SimpleTag` per entry, its name upper-cased.
fn matroska_tags(tags: &[(String, String)]) -> Vec<u8> {
    let mut tag = ebml(&[0x63, 0xC0], &[]);
    for (key, value) in tags {
        let mut simple = ebml(&[0x45, 0xA3], key.to_uppercase().as_bytes());
        simple.extend(ebml(&[0x44, 0x87], value.as_bytes()));
        tag.extend(ebml(&[0x67, 0xC8], &simple));
    }
    ebml(&[0x12, 0x54, 0xC3, 0x67], &ebml(&[0x73, 0x73], &tag))
}

/// A WebM file: the EBML header (DocType `webm`), a Segment of unknown size holding a video
/// track with its pixel size and `tags` in a `Tags` element, then a Void element over the rest.
pub(crate) fn webm(
    width: u32,
    height: u32,
    frame_count: usize,
    total: Option<u64>,
    tags: &[(String, String)],
) -> FileData {
    let uint = |id: &[u8], v: u32| ebml(id, &v.to_be_bytes());
    let mut header = Vec::new();
    header.extend(uint(&[0x42, 0x86], 1));
    header.extend(uint(&[0x42, 0xF7], 1));
    header.extend(uint(&[0x42, 0xF2], 4));
    header.extend(uint(&[0x42, 0xF3], 8));
    header.extend(ebml(&[0x42, 0x82], b"webm"));
    header.extend(uint(&[0x42, 0x87], 4));
    header.extend(uint(&[0x42, 0x85], 2));
    let mut head = ebml(&[0x1A, 0x45, 0xDF, 0xA3], &header);
    let mut video = uint(&[0xB0], width);
    video.extend(uint(&[0xBA], height));
    let mut entry = uint(&[0xD7], 1);
    entry.extend(ebml(&[0x86], b"V_VP9"));
    entry.extend(ebml(&[0xE0], &video));
    let tracks = ebml(&[0x16, 0x54, 0xAE, 0x6B], &ebml(&[0xAE], &entry));
    // Segment, size unknown (all ones), as a live muxer writes it.
    head.extend_from_slice(&[
        0x18, 0x53, 0x80, 0x67, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    head.push(0xFF);
    head.extend(tracks);
    head.extend(matroska_tags(&with_encoder(tags)));
    let void_header = 1 + 8;
    let void_size = match total {
        Some(len) => len.saturating_sub(head.len() as u64 + void_header),
        None => frame_count as u64 * 512,
    };
    head.push(0xEC);
    head.push(0x01);
    head.extend_from_slice(&void_size.to_be_bytes()[1..]);
    if total.is_none() {
        head.extend(filler(u64::from(width) ^ 0x5EB, void_size as usize));
    }
    finish(head, total)
}

/// An animated GIF89a of the frames, looping, four grey levels, with real (if uncompressed)
/// LZW data: a clear code before every pixel keeps the code size at three bits.
pub(crate) fn gif(frames: &Frames, fps: f64, total: Option<u64>) -> FileData {
    let (w, h) = (frames.width.min(0xFFFF), frames.height.min(0xFFFF));
    let mut out = b"GIF89a".to_vec();
    out.extend_from_slice(&(w as u16).to_le_bytes());
    out.extend_from_slice(&(h as u16).to_le_bytes());
    out.extend_from_slice(&[0xF1, 0, 0]); // global table of 4 colours
    out.extend_from_slice(&[0, 0, 0, 85, 85, 85, 170, 170, 170, 255, 255, 255]);
    out.extend_from_slice(b"\x21\xFF\x0BNETSCAPE2.0\x03\x01\x00\x00\x00");
    let delay = (100.0 / fps.max(0.01)).round().clamp(1.0, 65535.0) as u16;
    for picture in &frames.pictures {
        out.extend_from_slice(&[0x21, 0xF9, 0x04, 0x00]);
        out.extend_from_slice(&delay.to_le_bytes());
        out.extend_from_slice(&[0x00, 0x00]);
        out.push(0x2C);
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&(w as u16).to_le_bytes());
        out.extend_from_slice(&(h as u16).to_le_bytes());
        out.push(0);
        out.push(2); // LZW minimum code size
        let rgb = picture.render(w, h);
        let mut bits = BitWriter::lsb_first();
        for px in rgb.chunks_exact(3) {
            let luma = (u32::from(px[0]) * 3 + u32::from(px[1]) * 6 + u32::from(px[2])) / 10;
            bits.push(4, 3); // clear
            bits.push(luma / 64, 3);
        }
        bits.push(5, 3); // end of information
        for block in bits.into_bytes().chunks(255) {
            out.push(block.len() as u8);
            out.extend_from_slice(block);
        }
        out.push(0);
    }
    out.push(0x3B);
    finish(out, total)
}

/// PCM samples: a tone whose pitch comes from `hash`.
fn tone(seconds: f64, rate: u32, hash: u64) -> Vec<u8> {
    let count = (seconds * f64::from(rate)).round().max(1.0) as usize;
    let pitch = 220.0 + (hash % 440) as f64;
    (0..count)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            ((t * pitch * std::f64::consts::TAU).sin() * 8000.0) as i16
        })
        .flat_map(i16::to_le_bytes)
        .collect()
}

/// A RIFF/WAVE file: 16-bit mono PCM at 22,050 Hz.
pub(crate) fn wav(seconds: f64, hash: u64, total: Option<u64>) -> FileData {
    let rate = 22_050u32;
    let samples = if total.is_some() {
        Vec::new()
    } else {
        tone(seconds, rate, hash)
    };
    let data_len = total.map_or(samples.len() as u64, |len| len.saturating_sub(44));
    let data_len = data_len.min(u64::from(u32::MAX) - 36) as u32;
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(data_len + 36).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend(samples);
    finish(out, total)
}

/// A FLAC stream as ffmpeg writes it for SaveAudio: `fLaC`, STREAMINFO (44.1 kHz, stereo, 16
/// bits, the sample count), a VORBIS_COMMENT block (`tags`, then `encoder`), 8 KiB of PADDING,
/// then frames (each starting with the frame sync code, filler where the audio would be).
pub(crate) fn flac(
    seconds: f64,
    hash: u64,
    total: Option<u64>,
    tags: &[(String, String)],
) -> FileData {
    let samples = (seconds * 44_100.0).round() as u64 & ((1 << 36) - 1);
    let mut out = b"fLaC".to_vec();
    out.extend_from_slice(&[0x00, 0, 0, 34]); // STREAMINFO, 34 bytes
    out.extend_from_slice(&4096u16.to_be_bytes());
    out.extend_from_slice(&4096u16.to_be_bytes());
    out.extend_from_slice(&[0; 6]); // frame sizes unknown
    let packed: u64 = (44_100u64 << 44) | (1 << 41) | (15 << 36) | samples;
    out.extend_from_slice(&packed.to_be_bytes());
    out.extend_from_slice(&[0; 16]); // MD5 not computed
    let comments = vorbis_comments(&with_encoder(tags));
    out.push(4); // VORBIS_COMMENT
    out.extend_from_slice(&(comments.len() as u32).to_be_bytes()[1..]);
    out.extend(comments);
    let padding = 8192u32;
    out.push(0x80 | 1); // the last block, PADDING
    out.extend_from_slice(&padding.to_be_bytes()[1..]);
    out.extend(std::iter::repeat_n(0, padding as usize));
    out.extend_from_slice(&[0xFF, 0xF8, 0x69, 0x08]); // a frame header
    if total.is_none() {
        out.extend(filler(hash, (seconds * 8192.0) as usize));
    }
    finish(out, total)
}

/// A Vorbis comment list: the vendor string, then `key=value` per entry (little-endian lengths).
fn vorbis_comments(tags: &[(String, String)]) -> Vec<u8> {
    let mut out = (LAVF.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(LAVF.as_bytes());
    out.extend_from_slice(&(tags.len() as u32).to_le_bytes());
    for (key, value) in tags {
        let comment = format!("{key}={value}");
        out.extend_from_slice(&(comment.len() as u32).to_le_bytes());
        out.extend_from_slice(comment.as_bytes());
    }
    out
}

/// `value` (below 2^28) as ID3v2.4's four 7-bit bytes.
fn syncsafe(value: usize) -> [u8; 4] {
    [21, 14, 7, 0].map(|shift| ((value >> shift) & 0x7f) as u8)
}

/// One ID3v2.4 frame.
fn id3_frame(id: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = id.to_vec();
    out.extend_from_slice(&syncsafe(body.len()));
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(body);
    out
}

/// An MP3 as ffmpeg writes it for SaveAudioMP3: an ID3v2.4 tag (`TSSE` with the encoder, then a
/// UTF-8 `TXXX` frame per tag), then 128 kbit/s 44.1 kHz MPEG-1 Layer III frames of silence.
pub(crate) fn mp3(seconds: f64, total: Option<u64>, tags: &[(String, String)]) -> FileData {
    let mut frames = id3_frame(b"TSSE", format!("\x03{LAVF}").as_bytes());
    for (key, value) in tags {
        let mut body = vec![3];
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        frames.extend(id3_frame(b"TXXX", &body));
    }
    let mut out = b"ID3\x04\x00\x00".to_vec();
    out.extend_from_slice(&syncsafe(frames.len()));
    out.extend(frames);
    let count = (seconds * 44_100.0 / 1152.0).ceil().max(1.0) as usize;
    for _ in 0..count {
        out.extend_from_slice(&[0xFF, 0xFB, 0x90, 0x64]);
        out.extend_from_slice(&[0; 413]);
    }
    finish(out, total)
}

/// Ogg's CRC-32 (polynomial 0x04C11DB7, no reflection).
fn ogg_crc(data: &[u8]) -> u32 {
    let mut crc = 0u32;
    for &byte in data {
        crc ^= u32::from(byte) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The Ogg pages of one packet starting at page `sequence`: lacing values of 255 and a final
/// shorter one, at most 255 of them a page, later pages marked as continuing the packet.
fn ogg_pages(header_type: u8, granule: u64, sequence: &mut u32, packet: &[u8]) -> Vec<u8> {
    let mut lacing: Vec<u8> = vec![255; packet.len() / 255];
    lacing.push((packet.len() % 255) as u8);
    let mut out = Vec::new();
    let mut data = packet;
    for (index, segments) in lacing.chunks(255).enumerate() {
        let len: usize = segments.iter().map(|&s| usize::from(s)).sum();
        let (body, rest) = data.split_at(len);
        data = rest;
        let mut page = b"OggS\x00".to_vec();
        page.push(if index == 0 { header_type } else { 1 });
        page.extend_from_slice(&granule.to_le_bytes());
        page.extend_from_slice(&0x5349_4D31u32.to_le_bytes()); // stream serial
        page.extend_from_slice(&sequence.to_le_bytes());
        page.extend_from_slice(&[0; 4]); // CRC, filled in below
        page.push(segments.len() as u8);
        page.extend_from_slice(segments);
        page.extend_from_slice(body);
        let crc = ogg_crc(&page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        out.extend(page);
        *sequence += 1;
    }
    out
}

/// An Ogg Opus file: the `OpusHead` and `OpusTags` (the vendor, `tags`, `encoder`) pages, then
/// filler.
pub(crate) fn opus(
    seconds: f64,
    hash: u64,
    total: Option<u64>,
    tags: &[(String, String)],
) -> FileData {
    let mut head = b"OpusHead\x01\x02".to_vec();
    head.extend_from_slice(&312u16.to_le_bytes());
    head.extend_from_slice(&48_000u32.to_le_bytes());
    head.extend_from_slice(&[0, 0, 0]);
    let mut comments = b"OpusTags".to_vec();
    comments.extend(vorbis_comments(&with_encoder(tags)));
    let mut sequence = 0;
    let mut out = ogg_pages(2, 0, &mut sequence, &head);
    out.extend(ogg_pages(0, 0, &mut sequence, &comments));
    if total.is_none() {
        out.extend(filler(hash, (seconds * 4096.0) as usize));
    }
    finish(out, total)
}

/// A flat grey baseline JPEG (one component): the cheapest valid JPEG, as a sampler preview.
/// Every 8x8 block has the same DC value and no AC terms, so two tiny Huffman tables do.
pub(crate) fn grey_jpeg(width: u16, height: u16, level: u8) -> Vec<u8> {
    let dc = 8 * (i32::from(level) - 128);
    let category = 32 - dc.unsigned_abs().leading_zeros();
    let mut out = vec![0xFF, 0xD8];
    out.extend_from_slice(b"\xFF\xE0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00");
    out.extend_from_slice(&[0xFF, 0xDB, 0x00, 0x43, 0x00]);
    out.extend_from_slice(&[1; 64]); // every quantiser 1
    out.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 0x08]);
    out.extend_from_slice(&height.to_be_bytes());
    out.extend_from_slice(&width.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x01, 0x11, 0x00]);
    // DC table: category 0 is `0`, the first block's category is `10`.
    let mut dc_counts = [0u8; 16];
    let dc_symbols: Vec<u8> = if category == 0 {
        dc_counts[0] = 1;
        vec![0]
    } else {
        dc_counts[0] = 1;
        dc_counts[1] = 1;
        vec![0, category as u8]
    };
    let dht = |class_id: u8, counts: &[u8; 16], symbols: &[u8]| {
        let mut table = vec![0xFF, 0xC4];
        table.extend_from_slice(&(2 + 1 + 16 + symbols.len() as u16).to_be_bytes());
        table.push(class_id);
        table.extend_from_slice(counts);
        table.extend_from_slice(symbols);
        table
    };
    out.extend(dht(0x00, &dc_counts, &dc_symbols));
    let mut ac_counts = [0u8; 16];
    ac_counts[0] = 1;
    out.extend(dht(0x10, &ac_counts, &[0x00])); // only end-of-block, coded `0`
    out.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00]);
    let blocks = usize::from(width.div_ceil(8)) * usize::from(height.div_ceil(8));
    let mut bits = BitWriter::msb_first();
    for block in 0..blocks {
        if block == 0 && category > 0 {
            bits.push(0b10, 2);
            let extra = if dc > 0 { dc } else { dc - 1 } as u32 & ((1 << category) - 1);
            bits.push(extra, category);
        } else {
            bits.push(0, 1);
        }
        bits.push(0, 1); // end of block
    }
    for byte in bits.into_bytes_padded_with_ones() {
        out.push(byte);
        if byte == 0xFF {
            out.push(0x00);
        }
    }
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}

/// Packs codes into bytes, least or most significant bit first.
struct BitWriter {
    bytes: Vec<u8>,
    current: u32,
    used: u32,
    lsb_first: bool,
}

impl BitWriter {
    fn lsb_first() -> BitWriter {
        BitWriter {
            bytes: Vec::new(),
            current: 0,
            used: 0,
            lsb_first: true,
        }
    }

    fn msb_first() -> BitWriter {
        BitWriter {
            lsb_first: false,
            ..BitWriter::lsb_first()
        }
    }

    /// Appends the low `count` bits of `code`.
    fn push(&mut self, code: u32, count: u32) {
        for i in 0..count {
            let bit = if self.lsb_first {
                (code >> i) & 1
            } else {
                (code >> (count - 1 - i)) & 1
            };
            if self.lsb_first {
                self.current |= bit << self.used;
            } else {
                self.current = (self.current << 1) | bit;
            }
            self.used += 1;
            if self.used == 8 {
                self.bytes.push(self.current as u8);
                self.current = 0;
                self.used = 0;
            }
        }
    }

    fn into_bytes(mut self) -> Vec<u8> {
        if self.used > 0 {
            self.bytes.push(self.current as u8);
        }
        self.bytes
    }

    fn into_bytes_padded_with_ones(mut self) -> Vec<u8> {
        while self.used != 0 {
            self.push(1, 1);
        }
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::super::render::Picture;
    use super::*;

    fn bytes(file: &FileData) -> Vec<u8> {
        let mut out = Vec::new();
        file.write_to(&mut out).expect("in memory");
        out
    }

    #[test]
    fn containers_start_with_their_signatures() {
        assert_eq!(
            &bytes(&mp4(64, 32, 4, 8.0, false, None, &[]))[4..12],
            b"ftypisom"
        );
        assert_eq!(
            &bytes(&webm(64, 32, 4, None, &[]))[..4],
            &[0x1A, 0x45, 0xDF, 0xA3]
        );
        let wave = bytes(&wav(0.1, 1, None));
        assert_eq!((&wave[..4], &wave[8..12]), (&b"RIFF"[..], &b"WAVE"[..]));
        assert_eq!(
            u32::from_le_bytes([wave[4], wave[5], wave[6], wave[7]]) as usize,
            wave.len() - 8
        );
        assert_eq!(&bytes(&flac(0.1, 1, None, &[]))[..4], b"fLaC");
        assert_eq!(&bytes(&mp3(0.1, None, &[]))[..3], b"ID3");
        assert_eq!(&bytes(&opus(0.1, 1, None, &[]))[..4], b"OggS");
    }

    fn tags() -> Vec<(String, String)> {
        vec![
            (
                "prompt".to_string(),
                r#"{"1":{"class_type":"SaveAudio"}}"#.to_string(),
            ),
            ("workflow".to_string(), r#"{"nodes":[]}"#.to_string()),
        ]
    }

    #[test]
    fn flac_carries_the_tags_as_vorbis_comments_before_its_frames() {
        let out = bytes(&flac(0.1, 1, None, &tags()));
        let mut at = 4;
        let mut blocks = Vec::new();
        loop {
            let size = u32::from_be_bytes([0, out[at + 1], out[at + 2], out[at + 3]]) as usize;
            blocks.push((out[at] & 0x7f, out[at + 4..at + 4 + size].to_vec()));
            let last = out[at] & 0x80 != 0;
            at += 4 + size;
            if last {
                break;
            }
        }
        let kinds: Vec<u8> = blocks.iter().map(|b| b.0).collect();
        assert_eq!(kinds, [0, 4, 1], "STREAMINFO, VORBIS_COMMENT, PADDING");
        let comments = String::from_utf8_lossy(&blocks[1].1);
        assert!(comments.contains(r#"prompt={"1":{"class_type":"SaveAudio"}}"#));
        assert!(comments.contains("workflow={") && comments.contains("encoder=Lavf"));
        assert_eq!(
            &out[at..at + 2],
            &[0xFF, 0xF8],
            "a frame follows the metadata"
        );
    }

    #[test]
    fn mp3_carries_the_tags_as_txxx_frames_in_its_id3_tag() {
        let out = bytes(&mp3(0.1, None, &tags()));
        let size = out[6..10]
            .iter()
            .fold(0usize, |acc, &b| (acc << 7) | usize::from(b));
        let tag = &out[10..10 + size];
        assert!(wire_find(tag, b"TXXX").is_some());
        assert!(wire_find(tag, b"prompt\0{\"1\"").is_some());
        assert_eq!(&out[10 + size..12 + size], &[0xFF, 0xFB]);
    }

    #[test]
    fn mp4_carries_the_tags_in_mdta_metadata_and_points_stco_at_the_samples() {
        let out = bytes(&mp4(16, 8, 3, 8.0, false, None, &tags()));
        for needle in [
            &b"udta"[..],
            b"mdta",
            b"keys",
            b"ilst",
            b"prompt",
            b"class_type",
        ] {
            assert!(wire_find(&out, needle).is_some());
        }
        let stco = wire_find(&out, b"stco").expect("a chunk offset table");
        let offset = u32::from_be_bytes([
            out[stco + 12],
            out[stco + 13],
            out[stco + 14],
            out[stco + 15],
        ]) as usize;
        let mdat = wire_find(&out, b"mdat").expect("an mdat box");
        assert_eq!(
            offset,
            mdat + 4,
            "the first sample is the first byte of mdat's payload"
        );
    }

    #[test]
    fn opus_carries_the_tags_in_opus_tags_over_as_many_pages_as_needed() {
        let big = vec![("prompt".to_string(), "x".repeat(70_000))];
        let out = bytes(&opus(0.1, 1, None, &big));
        let mut at = 0;
        let mut pages = 0;
        while at + 27 <= out.len() && &out[at..at + 4] == b"OggS" {
            let segments = usize::from(out[at + 26]);
            let body: usize = out[at + 27..at + 27 + segments]
                .iter()
                .map(|&s| usize::from(s))
                .sum();
            let end = at + 27 + segments + body;
            let mut page = out[at..end].to_vec();
            let stored = u32::from_le_bytes([page[22], page[23], page[24], page[25]]);
            page[22..26].copy_from_slice(&[0; 4]);
            assert_eq!(ogg_crc(&page), stored, "page {pages} has a valid CRC");
            pages += 1;
            at = end;
        }
        assert_eq!(pages, 3, "OpusHead, then OpusTags over two pages");
        assert!(wire_find(&out, b"OpusTags").is_some());
    }

    #[test]
    fn padded_files_declare_and_stream_their_whole_size() {
        let total = 3 * 1024 * 1024 + 17;
        let video = mp4(64, 32, 4, 8.0, false, Some(total), &[]);
        assert_eq!(video.len(), total);
        assert!(video.head().len() < 1024, "only the header is held");
        let whole = bytes(&video);
        assert_eq!(whole.len() as u64, total);
        let mdat = wire_find(&whole, b"mdat").expect("an mdat box") - 4;
        let size = u32::from_be_bytes([
            whole[mdat],
            whole[mdat + 1],
            whole[mdat + 2],
            whole[mdat + 3],
        ]);
        assert_eq!(u64::from(size), total - mdat as u64, "mdat runs to the end");
    }

    fn wire_find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn gif_frames_decode_to_their_lzw_codes() {
        let frames = Frames {
            width: 3,
            height: 2,
            pictures: vec![
                Picture::Solid {
                    rgb: [255, 255, 255]
                };
                2
            ],
        };
        let out = bytes(&gif(&frames, 10.0, None));
        assert_eq!(&out[..6], b"GIF89a");
        assert_eq!(u16::from_le_bytes([out[6], out[7]]), 3);
        assert_eq!(*out.last().expect("a trailer"), 0x3B);
        // Six pixels of white (index 3), each after a clear code (4), then the end code (5).
        let data_at = wire_find(&out, &[0x2C]).expect("an image") + 10 + 1;
        let size = usize::from(out[data_at]);
        let data = &out[data_at + 1..data_at + 1 + size];
        let mut codes = Vec::new();
        let bits: Vec<u32> = data
            .iter()
            .flat_map(|b| (0..8).map(move |i| u32::from(b >> i) & 1))
            .collect();
        for chunk in bits.chunks_exact(3).take(13) {
            codes.push(chunk[0] | chunk[1] << 1 | chunk[2] << 2);
        }
        assert_eq!(codes, [4, 3, 4, 3, 4, 3, 4, 3, 4, 3, 4, 3, 5]);
    }

    #[test]
    fn grey_jpeg_has_the_markers_and_size() {
        let jpeg = grey_jpeg(20, 12, 200);
        assert_eq!(&jpeg[..3], &[0xFF, 0xD8, 0xFF]);
        assert_eq!(&jpeg[jpeg.len() - 2..], &[0xFF, 0xD9]);
        let sof = wire_find(&jpeg, &[0xFF, 0xC0]).expect("a frame header");
        assert_eq!(&jpeg[sof + 5..sof + 9], &[0, 12, 0, 20]);
        assert!(grey_jpeg(8, 8, 128).len() < 200);
    }
}
