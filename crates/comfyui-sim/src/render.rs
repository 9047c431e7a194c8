//! Pixels for the simulated pipeline: what an image "is" (a recipe such as a seed-coloured
//! pattern, a solid colour, an uploaded raster, their inversion or blend), and PNG encoding with
//! ComfyUI's `tEXt` metadata.
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

/// Encodes RGB8 frames as an animated PNG (APNG) looping forever at `fps`, with one `tEXt`
/// chunk per `(keyword, text)`, as ComfyUI's SaveAnimatedPNG writes it.
pub(crate) fn encode_apng(
    w: u32,
    h: u32,
    frames: &[Vec<u8>],
    fps: f64,
    texts: &[(String, String)],
) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::new();
    let mut encoder = rgb_encoder(&mut out, w, h, texts)?;
    encoder.set_animated(frames.len().max(1) as u32, 0)?;
    let delay_ms = (1000.0 / fps.max(0.01))
        .round()
        .clamp(1.0, f64::from(u16::MAX)) as u16;
    encoder.set_frame_delay(delay_ms, 1000)?;
    let mut writer = encoder.write_header()?;
    for rgb in frames {
        writer.write_image_data(rgb)?;
    }
    writer.finish()?;
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
