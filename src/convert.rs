//! Output conversion: turn the PNG or still WebP that ComfyUI made into the JPEG or WebP a client
//! asked for (`"output_format"` and `"quality"` in a generation request), before it is stored.
//!
//! `"png"` (the default) means "as ComfyUI made it": nothing is ever converted then, so a WebP
//! stays the WebP ComfyUI wrote (its key ending in `.webp`). A conversion happens only when a
//! client asks for JPEG or WebP and the file is in another format.
//!
//! Pure Rust, no C libraries: the `png` crate decodes, `jpeg-encoder` writes baseline JPEG and
//! `image-webp` writes lossless WebP (VP8L) and decodes still WebP. What goes in and what comes
//! out:
//!
//! - PNG in (8 or 16 bits per channel; gray, gray+alpha, RGB, RGBA or palette): decoded to 8-bit
//!   samples (16-bit samples keep their high byte), then encoded in the target format.
//! - Still WebP in: decoded with `image-webp` (already in the tree for encoding) and re-encoded.
//! - JPEG in, animated PNG (APNG, e.g. from `SaveAnimatedPNG`), animated WebP, and anything
//!   that is not an image: stored as it is ([`convert`] answers `Ok(None)`): a still format
//!   would keep one frame of an animation. Decoding JPEG would need one more crate for a case ComfyUI's own
//!   `SaveImage` never produces (it writes PNG), so it is not worth it.
//! - JPEG has no transparency: pixels are composited onto white, so a transparent background
//!   comes out white rather than as whatever colour the transparent pixels happen to hold.
//! - Metadata is not carried over: converted files hold pixels only (no text chunks, no EXIF,
//!   no ICC profile), whatever `PNG_METADATA` says.

use std::fmt;
use std::io::Cursor;

use crate::image::ProcessedImage;

/// The image format a client wants its outputs stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// As ComfyUI made it (PNG for the stock `SaveImage` node, WebP for `SaveAnimatedWEBP`, ...):
    /// never converted. The default.
    #[default]
    Png,
    /// Baseline JPEG at [`OutputFormat::DEFAULT_JPEG_QUALITY`] or the request's `quality`.
    Jpeg,
    /// Lossless WebP: every pixel kept, typically a quarter smaller than ComfyUI's PNG.
    Webp,
}

impl serde::Serialize for OutputFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for OutputFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <String as serde::Deserialize>::deserialize(d)?;
        OutputFormat::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown output format {name:?}")))
    }
}

impl OutputFormat {
    /// Every format, in the order the API documents them.
    pub const ALL: [OutputFormat; 3] = [OutputFormat::Png, OutputFormat::Jpeg, OutputFormat::Webp];

    /// The JPEG quality used when a request asks for JPEG without a `quality`.
    pub const DEFAULT_JPEG_QUALITY: u8 = 90;

    /// The name in requests: `png`, `jpeg`, `webp`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Webp => "webp",
        }
    }

    /// The format a request names, if any.
    pub fn parse(name: &str) -> Option<OutputFormat> {
        match name {
            "png" => Some(OutputFormat::Png),
            "jpeg" => Some(OutputFormat::Jpeg),
            "webp" => Some(OutputFormat::Webp),
            _ => None,
        }
    }

    /// The MIME type of files in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            OutputFormat::Png => "image/png",
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Webp => "image/webp",
        }
    }
}

impl fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An image re-encoded in the requested format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    /// The new file's bytes.
    pub bytes: Vec<u8>,
    /// Its MIME type (`image/jpeg`, `image/webp`, `image/png`).
    pub content_type: &'static str,
    /// Width in pixels (the same as the input's).
    pub width: u32,
    /// Height in pixels (the same as the input's).
    pub height: u32,
}

/// Why an image could not be converted. The input is ComfyUI's file, so each variant says what
/// was wrong with it, or which limit of the encoder it exceeded.
#[derive(Debug)]
pub enum ConvertError {
    /// The PNG could not be decoded.
    DecodePng(png::DecodingError),
    /// The WebP could not be decoded.
    DecodeWebp(image_webp::DecodingError),
    /// JPEG cannot hold an image wider or taller than 65535 pixels.
    TooLargeForJpeg {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// The decoded pixels would not fit in memory (their size overflows).
    DecodedTooLarge,
    /// The encoder refused the pixels.
    Encode(String),
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConvertError::DecodePng(e) => write!(f, "decoding the PNG to convert it: {e}"),
            ConvertError::DecodeWebp(e) => write!(f, "decoding the WebP to convert it: {e}"),
            ConvertError::TooLargeForJpeg { width, height } => write!(
                f,
                "a {width}x{height} image cannot be stored as JPEG (at most 65535 pixels a side)"
            ),
            ConvertError::DecodedTooLarge => {
                f.write_str("the decoded image would not fit in memory")
            }
            ConvertError::Encode(e) => write!(f, "encoding the converted image: {e}"),
        }
    }
}

impl std::error::Error for ConvertError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConvertError::DecodePng(e) => Some(e),
            ConvertError::DecodeWebp(e) => Some(e),
            _ => None,
        }
    }
}

/// The most memory a decoded image may take (a 16384² RGBA image at 16 bits is 2 GiB; ComfyUI's
/// outputs are far below this bound, which only stops a hostile file from exhausting memory).
const MAX_DECODED_BYTES: usize = 1024 * 1024 * 1024;

/// Converts `bytes` (a file of MIME type `content_type`) to `format`.
///
/// `Ok(None)` means "store the bytes as they are": `format` is [`OutputFormat::Png`] (as ComfyUI
/// made it), the file is already in that format, is not an image, or is an image this module
/// does not decode (JPEG, animated PNG or WebP). `quality` (1 to 100) applies to JPEG only; the
/// caller has refused it for other formats.
pub fn convert(
    bytes: &[u8],
    content_type: &str,
    format: OutputFormat,
    quality: Option<u8>,
) -> Result<Option<Converted>, ConvertError> {
    if format == OutputFormat::Png || content_type == format.content_type() {
        return Ok(None);
    }
    let pixels = match content_type {
        "image/png" => decode_png(bytes)?,
        "image/webp" => decode_webp(bytes)?,
        _ => return Ok(None),
    };
    let Some(pixels) = pixels else {
        return Ok(None);
    };
    let bytes = match format {
        OutputFormat::Jpeg => encode_jpeg(
            &pixels,
            quality.unwrap_or(OutputFormat::DEFAULT_JPEG_QUALITY),
        )?,
        OutputFormat::Webp => encode_webp(&pixels)?,
        OutputFormat::Png => return Ok(None),
    };
    Ok(Some(Converted {
        bytes,
        content_type: format.content_type(),
        width: pixels.width,
        height: pixels.height,
    }))
}

/// [`convert`] for an image on its way to storage: the converted image, or the same one when
/// there is nothing to convert (then it is logged when a conversion was asked for).
pub fn for_storage(
    image: ProcessedImage,
    format: OutputFormat,
    quality: Option<u8>,
) -> Result<ProcessedImage, ConvertError> {
    match convert(&image.bytes, image.content_type, format, quality)? {
        Some(converted) => Ok(ProcessedImage {
            bytes: converted.bytes,
            width: converted.width,
            height: converted.height,
            content_type: converted.content_type,
        }),
        None => {
            if format != OutputFormat::Png
                && image.content_type != format.content_type()
                && image.content_type.starts_with("image/")
            {
                log::info!(
                    "an output in {} is stored as it is: only still PNG and WebP are converted to {format}",
                    image.content_type
                );
            }
            Ok(image)
        }
    }
}

/// Decoded 8-bit samples, row after row without padding.
struct Pixels {
    width: u32,
    height: u32,
    layout: Layout,
    samples: Vec<u8>,
}

/// The channels of one pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Gray,
    GrayAlpha,
    Rgb,
    Rgba,
}

/// A still PNG's pixels; `None` for an animation (stored as it is).
fn decode_png(bytes: &[u8]) -> Result<Option<Pixels>, ConvertError> {
    let limits = png::Limits {
        bytes: MAX_DECODED_BYTES,
    };
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), limits);
    // Palette and low bit depths expand to 8 bits; 16-bit samples keep their high byte.
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(ConvertError::DecodePng)?;
    if reader.info().animation_control().is_some() {
        return Ok(None);
    }
    let size = reader
        .output_buffer_size()
        .ok_or(ConvertError::DecodedTooLarge)?;
    let mut samples = vec![0; size];
    let frame = reader
        .next_frame(&mut samples)
        .map_err(ConvertError::DecodePng)?;
    samples.truncate(frame.buffer_size());
    let layout = match frame.color_type {
        png::ColorType::Grayscale => Layout::Gray,
        png::ColorType::GrayscaleAlpha => Layout::GrayAlpha,
        png::ColorType::Rgb => Layout::Rgb,
        // `normalize_to_color8` expands palettes; a palette left here is a decoder surprise.
        png::ColorType::Rgba | png::ColorType::Indexed => Layout::Rgba,
    };
    let row = frame.width as usize * layout.channels();
    if frame.line_size != row {
        samples = samples
            .chunks(frame.line_size)
            .flat_map(|line| &line[..row.min(line.len())])
            .copied()
            .collect();
    }
    Ok(Some(Pixels {
        width: frame.width,
        height: frame.height,
        layout,
        samples,
    }))
}

/// A still WebP's pixels; `None` for an animation (stored as it is).
fn decode_webp(bytes: &[u8]) -> Result<Option<Pixels>, ConvertError> {
    let mut decoder =
        image_webp::WebPDecoder::new(Cursor::new(bytes)).map_err(ConvertError::DecodeWebp)?;
    if decoder.is_animated() {
        return Ok(None);
    }
    decoder.set_memory_limit(MAX_DECODED_BYTES);
    let (width, height) = decoder.dimensions();
    let size = decoder
        .output_buffer_size()
        .ok_or(ConvertError::DecodedTooLarge)?;
    let mut samples = vec![0; size];
    decoder
        .read_image(&mut samples)
        .map_err(ConvertError::DecodeWebp)?;
    let layout = if decoder.has_alpha() {
        Layout::Rgba
    } else {
        Layout::Rgb
    };
    Ok(Some(Pixels {
        width,
        height,
        layout,
        samples,
    }))
}

impl Layout {
    fn channels(self) -> usize {
        match self {
            Layout::Gray => 1,
            Layout::GrayAlpha => 2,
            Layout::Rgb => 3,
            Layout::Rgba => 4,
        }
    }
}

/// Composites one sample over white: `c·a + 255·(1 − a)`, rounded.
fn over_white(sample: u8, alpha: u8) -> u8 {
    let (c, a) = (u32::from(sample), u32::from(alpha));
    ((c * a + 255 * (255 - a) + 127) / 255) as u8
}

fn encode_jpeg(pixels: &Pixels, quality: u8) -> Result<Vec<u8>, ConvertError> {
    let too_large = || ConvertError::TooLargeForJpeg {
        width: pixels.width,
        height: pixels.height,
    };
    let width = u16::try_from(pixels.width).map_err(|_| too_large())?;
    let height = u16::try_from(pixels.height).map_err(|_| too_large())?;
    // JPEG has no alpha channel: flatten onto white instead of letting the encoder drop alpha.
    let (samples, color) = match pixels.layout {
        Layout::Gray => (pixels.samples.clone(), jpeg_encoder::ColorType::Luma),
        Layout::Rgb => (pixels.samples.clone(), jpeg_encoder::ColorType::Rgb),
        Layout::GrayAlpha => (
            pixels
                .samples
                .chunks_exact(2)
                .map(|p| over_white(p[0], p[1]))
                .collect(),
            jpeg_encoder::ColorType::Luma,
        ),
        Layout::Rgba => (
            pixels
                .samples
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]].map(|c| over_white(c, p[3])))
                .collect(),
            jpeg_encoder::ColorType::Rgb,
        ),
    };
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100))
        .encode(&samples, width, height, color)
        .map_err(|e| ConvertError::Encode(e.to_string()))?;
    Ok(out)
}

fn encode_webp(pixels: &Pixels) -> Result<Vec<u8>, ConvertError> {
    let color = match pixels.layout {
        Layout::Gray => image_webp::ColorType::L8,
        Layout::GrayAlpha => image_webp::ColorType::La8,
        Layout::Rgb => image_webp::ColorType::Rgb8,
        Layout::Rgba => image_webp::ColorType::Rgba8,
    };
    // The encoder panics on a buffer of the wrong size; the decoders guarantee it, check anyway.
    let expected = pixels.width as usize * pixels.height as usize * pixels.layout.channels();
    if pixels.samples.len() != expected {
        return Err(ConvertError::Encode(format!(
            "{} bytes of samples for a {}x{} image",
            pixels.samples.len(),
            pixels.width,
            pixels.height
        )));
    }
    let mut out = Vec::new();
    image_webp::WebPEncoder::new(&mut out)
        .encode(&pixels.samples, pixels.width, pixels.height, color)
        .map_err(|e| ConvertError::Encode(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PNG of the given colour type and depth whose pixels follow a gradient.
    fn png_image(width: u32, height: u32, color: png::ColorType, depth: png::BitDepth) -> Vec<u8> {
        let channels = match color {
            png::ColorType::Grayscale => 1,
            png::ColorType::GrayscaleAlpha => 2,
            png::ColorType::Rgb => 3,
            _ => 4,
        };
        let bytes_per_sample = if depth == png::BitDepth::Sixteen {
            2
        } else {
            1
        };
        let len = (width * height) as usize * channels * bytes_per_sample;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        let mut writer = encoder.write_header().expect("header");
        writer.write_image_data(&data).expect("pixels");
        writer.finish().expect("finish");
        out
    }

    fn jpeg_size(bytes: &[u8]) -> (u32, u32) {
        let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
        decoder.decode().expect("the JPEG decodes");
        let info = decoder.info().expect("the JPEG has a header");
        (u32::from(info.width), u32::from(info.height))
    }

    fn webp_pixels(bytes: &[u8]) -> ((u32, u32), Vec<u8>) {
        let mut decoder = image_webp::WebPDecoder::new(Cursor::new(bytes)).expect("a WebP");
        let mut buf = vec![0; decoder.output_buffer_size().expect("size")];
        decoder.read_image(&mut buf).expect("the WebP decodes");
        (decoder.dimensions(), buf)
    }

    #[test]
    fn every_png_kind_becomes_a_jpeg_and_a_webp_of_the_same_size() {
        use png::{BitDepth::*, ColorType::*};
        for (color, depth) in [
            (Rgb, Eight),
            (Rgba, Eight),
            (Grayscale, Eight),
            (GrayscaleAlpha, Eight),
            (Rgb, Sixteen),
            (Rgba, Sixteen),
            (Grayscale, Sixteen),
        ] {
            let png = png_image(37, 21, color, depth);
            let jpeg = convert(&png, "image/png", OutputFormat::Jpeg, Some(80))
                .expect("converts")
                .expect("a PNG is converted");
            assert_eq!(jpeg.content_type, "image/jpeg");
            assert_eq!((jpeg.width, jpeg.height), (37, 21), "{color:?} {depth:?}");
            assert_eq!(jpeg_size(&jpeg.bytes), (37, 21), "{color:?} {depth:?}");
            let webp = convert(&png, "image/png", OutputFormat::Webp, None)
                .expect("converts")
                .expect("a PNG is converted");
            assert_eq!(webp.content_type, "image/webp");
            assert_eq!(webp_pixels(&webp.bytes).0, (37, 21), "{color:?} {depth:?}");
        }
    }

    #[test]
    fn webp_is_lossless() {
        let png = png_image(16, 9, png::ColorType::Rgba, png::BitDepth::Eight);
        let webp = convert(&png, "image/png", OutputFormat::Webp, None)
            .expect("converts")
            .expect("converted");
        let original = decode_png(&png).expect("decodes").expect("a still PNG");
        assert_eq!(webp_pixels(&webp.bytes).1, original.samples);
    }

    #[test]
    fn jpeg_flattens_transparency_onto_white() {
        // Fully transparent black pixels: dropping alpha would give black, compositing white.
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, 8, 8);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("header");
        writer.write_image_data(&[0; 8 * 8 * 4]).expect("pixels");
        writer.finish().expect("finish");
        let jpeg = convert(&out, "image/png", OutputFormat::Jpeg, Some(95))
            .expect("converts")
            .expect("converted");
        let pixels = jpeg_decoder::Decoder::new(Cursor::new(&jpeg.bytes))
            .decode()
            .expect("decodes");
        assert!(pixels.iter().all(|&v| v >= 250), "white, got {pixels:?}");
    }

    #[test]
    fn quality_changes_the_jpeg_size() {
        let png = png_image(64, 64, png::ColorType::Rgb, png::BitDepth::Eight);
        let size = |q| {
            convert(&png, "image/png", OutputFormat::Jpeg, Some(q))
                .expect("converts")
                .expect("converted")
                .bytes
                .len()
        };
        assert!(size(20) < size(95));
    }

    #[test]
    fn what_is_already_right_or_not_decodable_is_kept() {
        let png = png_image(4, 4, png::ColorType::Rgb, png::BitDepth::Eight);
        let keep = |bytes: &[u8], content_type, format| {
            convert(bytes, content_type, format, None).expect("no error")
        };
        assert_eq!(keep(&png, "image/png", OutputFormat::Png), None);
        assert_eq!(keep(b"GIF89a", "image/gif", OutputFormat::Webp), None);
        assert_eq!(
            keep(b"\xff\xd8\xff", "image/jpeg", OutputFormat::Webp),
            None
        );
        assert_eq!(keep(b"RIFF", "video/mp4", OutputFormat::Jpeg), None);
        // An animated PNG keeps its frames: no format here would.
        let mut apng = Vec::new();
        let mut encoder = png::Encoder::new(&mut apng, 4, 4);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_animated(2, 0).expect("two frames");
        let mut writer = encoder.write_header().expect("header");
        for frame in [[0u8; 48], [255u8; 48]] {
            writer.write_image_data(&frame).expect("a frame");
        }
        writer.finish().expect("finish");
        for format in [OutputFormat::Jpeg, OutputFormat::Webp] {
            assert_eq!(keep(&apng, "image/png", format), None, "{format}");
        }
        // `png` is "as ComfyUI made it": a still WebP (SaveAnimatedWEBP with one frame) stays
        // the WebP it is, byte for byte.
        let webp = convert(&png, "image/png", OutputFormat::Webp, None)
            .expect("converts")
            .expect("converted");
        assert_eq!(keep(&webp.bytes, "image/webp", OutputFormat::Png), None);
        let as_made = ProcessedImage {
            bytes: webp.bytes.clone(),
            width: 4,
            height: 4,
            content_type: "image/webp",
        };
        let stored = for_storage(as_made.clone(), OutputFormat::Png, None).expect("kept");
        assert_eq!(stored, as_made);
    }

    #[test]
    fn for_storage_updates_the_image_or_keeps_it() {
        let png = png_image(12, 10, png::ColorType::Rgba, png::BitDepth::Eight);
        let processed = ProcessedImage {
            bytes: png.clone(),
            width: 12,
            height: 10,
            content_type: "image/png",
        };
        let webp = for_storage(processed.clone(), OutputFormat::Webp, None).expect("converts");
        assert_eq!(
            (webp.content_type, webp.width, webp.height),
            ("image/webp", 12, 10)
        );
        assert_eq!(webp_pixels(&webp.bytes).0, (12, 10));
        let same = for_storage(processed.clone(), OutputFormat::Png, None).expect("no-op");
        assert_eq!(same, processed);
        let jpeg_in = ProcessedImage {
            bytes: b"\xff\xd8\xff\xe0".to_vec(),
            width: 0,
            height: 0,
            content_type: "image/jpeg",
        };
        let kept = for_storage(jpeg_in.clone(), OutputFormat::Webp, None).expect("kept");
        assert_eq!(kept, jpeg_in);
    }

    #[test]
    fn a_broken_png_is_an_error_not_a_panic() {
        let mut png = png_image(8, 8, png::ColorType::Rgb, png::BitDepth::Eight);
        png.truncate(png.len() / 2);
        let err = convert(&png, "image/png", OutputFormat::Jpeg, None).expect_err("truncated");
        assert!(err.to_string().contains("decoding the PNG"), "{err}");
        assert!(convert(b"not a png", "image/png", OutputFormat::Webp, None).is_err());
    }

    #[test]
    fn formats_parse_by_their_request_names() {
        for format in OutputFormat::ALL {
            assert_eq!(OutputFormat::parse(format.as_str()), Some(format));
        }
        assert_eq!(OutputFormat::parse("jpg"), None);
        assert_eq!(OutputFormat::parse("gif"), None);
    }
}
