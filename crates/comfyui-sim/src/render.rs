//! Pixels for the simulated pipeline: what an image "is" (a recipe such as a seed-coloured
//! pattern, a solid colour, an uploaded raster, their inversion or blend), and the encodings of
//! ComfyUI's image savers with their metadata: PNG with `tEXt` chunks (SaveImage), APNG with
//! private `comf` chunks after the frames (SaveAnimatedPNG), WebP with an `EXIF` chunk whose
//! `Model`, `Make`, ... entries read `prompt:{...}`, `workflow:{...}` (SaveAnimatedWEBP).
//!
//! Images stay recipes until an output node renders them, so a 512x512 batch costs nothing
//! until it is saved, and the same seed and prompt always render the same bytes.

use std::io::Cursor;
use std::sync::Arc;

use serde_json::Value;

/// Decoded RGB8 pixels of an uploaded image.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Raster {
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes, row by row.
    pub rgb: Vec<u8>,
}

/// What one image of a batch looks like.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Picture {
    /// An empty latent: decodes to flat grey.
    Blank,
    /// A sampler result: a gradient and checker coloured by `hash` (seed, prompt, batch index).
    Pattern { hash: u64 },
    /// One colour everywhere.
    Solid { rgb: [u8; 3] },
    /// An uploaded image, stretched to the frame.
    Pixels(Arc<Raster>),
    /// The colour negative of another picture.
    Inverted(Box<Picture>),
    /// `base` mixed towards `top` by `amount` (0 = base, 1 = top): img2img with denoise.
    Blend {
        base: Box<Picture>,
        top: Box<Picture>,
        amount: f64,
    },
}

/// A batch of pictures sharing one size: ComfyUI's IMAGE and LATENT values.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Frames {
    pub width: u32,
    pub height: u32,
    pub pictures: Vec<Picture>,
}

impl Picture {
    /// The colour at pixel `(x, y)` of a `w` x `h` frame.
    pub(crate) fn rgb_at(&self, x: u32, y: u32, w: u32, h: u32) -> [u8; 3] {
        match self {
            Picture::Blank => [128, 128, 128],
            Picture::Solid { rgb } => *rgb,
            Picture::Pattern { hash } => pattern_at(*hash, x, y, w, h),
            Picture::Pixels(raster) => raster_at(raster, x, y, w, h),
            Picture::Inverted(inner) => inner.rgb_at(x, y, w, h).map(|c| 255 - c),
            Picture::Blend { base, top, amount } => {
                let a = base.rgb_at(x, y, w, h);
                let b = top.rgb_at(x, y, w, h);
                let t = amount.clamp(0.0, 1.0);
                [0, 1, 2].map(|i| (f64::from(a[i]) * (1.0 - t) + f64::from(b[i]) * t).round() as u8)
            }
        }
    }

    /// RGB8 pixels of this picture at `w` x `h`.
    pub(crate) fn render(&self, w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(w as usize * h as usize * 3);
        for y in 0..h {
            for x in 0..w {
                out.extend_from_slice(&self.rgb_at(x, y, w, h));
            }
        }
        out
    }
}

fn pattern_at(hash: u64, x: u32, y: u32, w: u32, h: u32) -> [u8; 3] {
    let bits = mix(hash);
    let from = [bits as u8, (bits >> 8) as u8, (bits >> 16) as u8];
    let to = [(bits >> 24) as u8, (bits >> 32) as u8, (bits >> 40) as u8];
    let tx = u64::from(x) * 255 / u64::from(w.saturating_sub(1).max(1));
    let ty = u64::from(y) * 255 / u64::from(h.saturating_sub(1).max(1));
    let t = (tx + ty) / 2;
    let cell = 8u32 << ((bits >> 48) & 3);
    let shade = if ((x / cell) ^ (y / cell)) & 1 == 1 {
        7
    } else {
        8
    };
    [0, 1, 2].map(|i| {
        let c = (u64::from(from[i]) * (255 - t) + u64::from(to[i]) * t) / 255;
        (c * shade / 8) as u8
    })
}

fn raster_at(raster: &Raster, x: u32, y: u32, w: u32, h: u32) -> [u8; 3] {
    if raster.width == 0 || raster.height == 0 {
        return [0, 0, 0];
    }
    let sx = (u64::from(x) * u64::from(raster.width) / u64::from(w.max(1))) as usize;
    let sy = (u64::from(y) * u64::from(raster.height) / u64::from(h.max(1))) as usize;
    let i = (sy * raster.width as usize + sx) * 3;
    match raster.rgb.get(i..i + 3) {
        Some(px) => [px[0], px[1], px[2]],
        None => [0, 0, 0],
    }
}

/// A well-spread 64-bit mix (splitmix64's finaliser), so neighbouring seeds differ visibly.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a over `parts`, separated so `["ab", "c"]` and `["a", "bc"]` differ. Stable across
/// runs and Rust versions, unlike `DefaultHasher`, so images are reproducible.
pub(crate) fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part.iter().chain(&[0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A fast-compressing RGB8 PNG encoder writing to `out`, with one `tEXt` chunk per
/// `(keyword, text)` already added.
fn rgb_encoder<'a>(
    out: &'a mut Vec<u8>,
    w: u32,
    h: u32,
    texts: &[(String, String)],
) -> Result<png::Encoder<'a, &'a mut Vec<u8>>, png::EncodingError> {
    let mut encoder = png::Encoder::new(out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    for (keyword, text) in texts {
        encoder.add_text_chunk(keyword.clone(), text.clone())?;
    }
    Ok(encoder)
}

/// Encodes RGB8 pixels as PNG with one `tEXt` chunk per `(keyword, text)`.
pub(crate) fn encode_png(
    w: u32,
    h: u32,
    rgb: &[u8],
    texts: &[(String, String)],
) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let encoder = rgb_encoder(&mut out, w, h, texts)?;
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(out)
}

/// Encodes RGB8 frames as an animated PNG (APNG) looping forever at `fps`, as ComfyUI's
/// SaveAnimatedPNG writes it: no text chunks, but one private `comf` chunk per
/// `(keyword, text)` (`keyword\0text`) after the last frame.
pub(crate) fn encode_apng(
    w: u32,
    h: u32,
    frames: &[Vec<u8>],
    fps: f64,
    comf: &[(String, String)],
) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = rgb_encoder(&mut out, w, h, &[])?;
    encoder.set_animated(frames.len().max(1) as u32, 0)?;
    let delay_ms = (1000.0 / fps.max(0.01))
        .round()
        .clamp(1.0, f64::from(u16::MAX)) as u16;
    encoder.set_frame_delay(delay_ms, 1000)?;
    let mut writer = encoder.write_header()?;
    for rgb in frames {
        writer.write_image_data(rgb)?;
    }
    for (keyword, text) in comf {
        let mut data = keyword.as_bytes().to_vec();
        data.push(0);
        data.extend_from_slice(text.as_bytes());
        writer.write_chunk(png::chunk::ChunkType(*b"comf"), &data)?;
    }
    writer.finish()?;
    Ok(out)
}

/// The `EXIF` chunk SaveAnimatedWEBP writes: a little-endian TIFF header and one IFD of ASCII
/// entries, `Model` (0x0110) = `prompt:{...}` for the first `(key, text)` and `Make` (0x010f),
/// `ImageDescription` (0x010e), ... = `key:{...}` for the next ones.
pub(crate) fn comfy_exif(tags: &[(String, String)]) -> Vec<u8> {
    let mut entries: Vec<(u16, Vec<u8>)> = tags
        .iter()
        .enumerate()
        .map(|(i, (key, text))| {
            let mut value = format!("{key}:{text}").into_bytes();
            value.push(0);
            (0x0110u16.saturating_sub(i as u16), value)
        })
        .collect();
    entries.sort_by_key(|(tag, _)| *tag);
    let mut out = b"II\x2a\x00\x08\x00\x00\x00".to_vec();
    let mut data_at = 8 + 2 + entries.len() * 12 + 4;
    let mut data = Vec::new();
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, value) in &entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes()); // ASCII
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        out.extend_from_slice(&(data_at as u32).to_le_bytes());
        data.extend_from_slice(value);
        if value.len() % 2 == 1 {
            data.push(0);
        }
        data_at = 8 + 2 + entries.len() * 12 + 4 + data.len();
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend(data);
    out
}

/// One RIFF chunk, padded to an even size.
fn riff_chunk(fourcc: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = fourcc.to_vec();
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    if data.len() % 2 == 1 {
        out.push(0);
    }
    out
}

/// A 24-bit little-endian field.
fn le24(value: u32) -> [u8; 3] {
    let b = value.to_le_bytes();
    [b[0], b[1], b[2]]
}

/// RGB8 pixels as a lossless WebP whose only chunk is `VP8L`; returns that chunk, padded.
fn vp8l_chunk(w: u32, h: u32, rgb: &[u8]) -> Result<Vec<u8>, String> {
    let mut simple = Vec::new();
    image_webp::WebPEncoder::new(&mut simple)
        .encode(rgb, w, h, image_webp::ColorType::Rgb8)
        .map_err(|e| e.to_string())?;
    simple
        .get(12..)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "the WebP encoder wrote no image".to_string())
}

/// Encodes RGB8 frames as ComfyUI's SaveAnimatedWEBP does (through libwebp's animation encoder,
/// which merges identical consecutive frames): an animation of `ANMF` frames at `fps`, or a
/// still WebP (`VP8X`, `VP8L`) when only one distinct frame is left, with `tags` in an `EXIF`
/// chunk at the end (see [`comfy_exif`]).
pub(crate) fn encode_webp(
    w: u32,
    h: u32,
    frames: &[Vec<u8>],
    fps: f64,
    tags: &[(String, String)],
) -> Result<Vec<u8>, String> {
    let frame_ms = (1000.0 / fps.max(0.01)).floor().clamp(1.0, 16_777_215.0) as u32;
    let mut distinct: Vec<(&Vec<u8>, u32)> = Vec::new();
    for rgb in frames {
        match distinct.last_mut() {
            Some((last, ms)) if *last == rgb => *ms += frame_ms,
            _ => distinct.push((rgb, frame_ms)),
        }
    }
    let exif = if tags.is_empty() {
        Vec::new()
    } else {
        comfy_exif(tags)
    };
    if distinct.len() <= 1 {
        let blank = vec![0; w as usize * h as usize * 3];
        let rgb = distinct.first().map_or(&blank, |(rgb, _)| *rgb);
        let mut out = Vec::new();
        let mut encoder = image_webp::WebPEncoder::new(&mut out);
        encoder.set_exif_metadata(exif);
        encoder
            .encode(rgb, w, h, image_webp::ColorType::Rgb8)
            .map_err(|e| e.to_string())?;
        return Ok(out);
    }
    let flags: u8 = if exif.is_empty() { 0x02 } else { 0x0a }; // animation (and EXIF)
    let mut vp8x = vec![flags, 0, 0, 0];
    vp8x.extend_from_slice(&le24(w - 1));
    vp8x.extend_from_slice(&le24(h - 1));
    let mut body = riff_chunk(b"VP8X", &vp8x);
    body.extend(riff_chunk(b"ANIM", &[0xff, 0xff, 0xff, 0xff, 0, 0]));
    for (rgb, ms) in distinct {
        let mut anmf = vec![0; 6]; // x and y offsets
        anmf.extend_from_slice(&le24(w - 1));
        anmf.extend_from_slice(&le24(h - 1));
        anmf.extend_from_slice(&le24(ms.min(16_777_215)));
        anmf.push(0);
        anmf.extend(vp8l_chunk(w, h, rgb)?);
        body.extend(riff_chunk(b"ANMF", &anmf));
    }
    if !exif.is_empty() {
        body.extend(riff_chunk(b"EXIF", &exif));
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32 + 4).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    out.extend(body);
    Ok(out)
}

/// Decodes a PNG into RGB8, or `None` when `bytes` is not a PNG this decoder reads.
pub(crate) fn decode_png(bytes: &[u8]) -> Option<Raster> {
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().ok()?;
    let mut buf = vec![0; reader.output_buffer_size()?];
    let info = reader.next_frame(&mut buf).ok()?;
    let data = buf.get(..info.buffer_size())?;
    let rgb: Vec<u8> = match info.color_type {
        png::ColorType::Rgb => data.to_vec(),
        png::ColorType::Rgba => data
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        png::ColorType::Grayscale => data.iter().flat_map(|&g| [g, g, g]).collect(),
        png::ColorType::GrayscaleAlpha => data.chunks_exact(2).flat_map(|p| [p[0]; 3]).collect(),
        png::ColorType::Indexed => return None,
    };
    Some(Raster {
        width: info.width,
        height: info.height,
        rgb,
    })
}

/// JSON text with every non-ASCII character escaped, so it fits a Latin-1 `tEXt` chunk and
/// still parses back to the same value.
pub(crate) fn ascii_json(value: &Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn png_round_trips_pixels_and_text_chunks() {
        let pic = Picture::Pattern { hash: 7 };
        let rgb = pic.render(16, 8);
        let texts = vec![("prompt".to_string(), ascii_json(&json!({"t": "café"})))];
        let bytes = encode_png(16, 8, &rgb, &texts).expect("encodes");
        let raster = decode_png(&bytes).expect("decodes");
        assert_eq!((raster.width, raster.height), (16, 8));
        assert_eq!(raster.rgb, rgb);

        let decoder = png::Decoder::new(Cursor::new(&bytes));
        let reader = decoder.read_info().expect("header");
        let chunk = &reader.info().uncompressed_latin1_text[0];
        let back: Value = serde_json::from_str(&chunk.text).expect("chunk is JSON");
        assert_eq!(back, json!({"t": "café"}));
    }

    fn tags() -> Vec<(String, String)> {
        vec![
            (
                "prompt".to_string(),
                r#"{"1":{"class_type":"X"}}"#.to_string(),
            ),
            ("workflow".to_string(), r#"{"nodes":[]}"#.to_string()),
        ]
    }

    /// The RIFF chunk names of a WebP.
    fn webp_chunks(bytes: &[u8]) -> Vec<String> {
        let mut names = Vec::new();
        let mut at = 12;
        while at + 8 <= bytes.len() {
            let size =
                u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]])
                    as usize;
            names.push(String::from_utf8_lossy(&bytes[at..at + 4]).into_owned());
            at += 8 + size + (size & 1);
        }
        names
    }

    #[test]
    fn apng_carries_the_tags_in_comf_chunks_after_its_frames() {
        let frames: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 4 * 2 * 3]).collect();
        let apng = encode_apng(4, 2, &frames, 6.0, &tags()).expect("encodes");
        let text = String::from_utf8_lossy(&apng);
        let last_frame = text.rfind("fdAT").expect("frames");
        let comf = text.find("comf").expect("a comf chunk");
        assert!(comf > last_frame && text.rfind("IEND").expect("IEND") > comf);
        assert!(text.contains("prompt\0{\"1\""), "{text}");
        assert!(!text.contains("tEXt"));
        let reader = png::Decoder::new(Cursor::new(&apng))
            .read_info()
            .expect("a PNG");
        assert_eq!(
            reader.info().animation_control().map(|a| a.num_frames),
            Some(3)
        );
    }

    #[test]
    fn webp_is_still_for_one_distinct_frame_and_animated_otherwise_with_exif() {
        let same = vec![vec![9u8; 4 * 2 * 3]; 4];
        let still = encode_webp(4, 2, &same, 4.0, &tags()).expect("encodes");
        assert_eq!(webp_chunks(&still), ["VP8X", "VP8L", "EXIF"]);
        let decoder = image_webp::WebPDecoder::new(Cursor::new(&still)).expect("a WebP");
        assert!(!decoder.is_animated());
        assert_eq!(decoder.dimensions(), (4, 2));
        let text = String::from_utf8_lossy(&still);
        assert!(text.contains("prompt:{\"1\"") && text.contains("workflow:{"));

        let moving: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i * 80; 4 * 2 * 3]).collect();
        let animated = encode_webp(4, 2, &moving, 4.0, &tags()).expect("encodes");
        assert_eq!(
            webp_chunks(&animated),
            ["VP8X", "ANIM", "ANMF", "ANMF", "ANMF", "EXIF"]
        );
        let mut decoder = image_webp::WebPDecoder::new(Cursor::new(&animated)).expect("a WebP");
        assert!(decoder.is_animated());
        assert_eq!(decoder.num_frames(), 3);
        let mut buf = vec![0; decoder.output_buffer_size().expect("small")];
        for _ in 0..3 {
            decoder.read_frame(&mut buf).expect("each frame decodes");
        }
    }

    #[test]
    fn exif_puts_the_prompt_in_model_and_the_next_entries_below_it() {
        let exif = comfy_exif(&tags());
        assert_eq!(&exif[..8], b"II\x2a\x00\x08\x00\x00\x00");
        assert_eq!(u16::from_le_bytes([exif[8], exif[9]]), 2);
        let tag = |i: usize| u16::from_le_bytes([exif[10 + 12 * i], exif[11 + 12 * i]]);
        assert_eq!(
            (tag(0), tag(1)),
            (0x010f, 0x0110),
            "sorted: Make, then Model"
        );
        let value_at = |i: usize| {
            let at = 10 + 12 * i + 8;
            u32::from_le_bytes([exif[at], exif[at + 1], exif[at + 2], exif[at + 3]]) as usize
        };
        assert!(exif[value_at(1)..].starts_with(b"prompt:{"));
        assert!(exif[value_at(0)..].starts_with(b"workflow:{"));
    }

    #[test]
    fn different_seeds_look_different_and_same_seeds_look_the_same() {
        let a = Picture::Pattern { hash: 1 }.render(8, 8);
        let b = Picture::Pattern { hash: 2 }.render(8, 8);
        assert_ne!(a, b);
        assert_eq!(a, Picture::Pattern { hash: 1 }.render(8, 8));
    }

    #[test]
    fn inversion_and_solid_colours_are_exact() {
        let solid = Picture::Solid { rgb: [255, 0, 16] };
        assert_eq!(
            Picture::Inverted(Box::new(solid)).rgb_at(0, 0, 1, 1),
            [0, 255, 239]
        );
    }

    #[test]
    fn stable_hash_separates_parts() {
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
    }
}
