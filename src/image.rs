//! Images as ComfyUI hands them over: sniffing, measuring, checking and stripping metadata.
//!
//! ComfyUI's `SaveImage` node writes PNG files with `tEXt` chunks named `prompt` (the API graph)
//! and `workflow` (the UI graph), plus one chunk per `extra_pnginfo` key; `SaveAnimatedPNG`
//! writes the same entries into private `comf` chunks (`prompt\0{...}`) after the image data.
//! They reveal the whole workflow, prompts and model names included, to anyone who gets the
//! file, so by default the gateway removes them ([`PngMetadata::Strip`]).
//!
//! Stripping works on the chunk level: the PNG is walked chunk by chunk, every chunk is checked
//! (length in bounds, CRC correct, `IHDR` first, `IEND` last), metadata chunks are dropped (see
//! [`is_metadata_chunk`]) and every other chunk is copied byte for byte, the APNG animation
//! chunks (`acTL`, `fcTL`, `fdAT`) included, so an animation keeps its frames and sequence. Pixels are never decoded or re-encoded, so stripping is
//! cheap and cannot change how an image looks. The `png` crate is used only to read the header
//! (width and height) and, in tests, to prove that the pixels survive untouched.
//!
//! WebP files (ComfyUI's `SaveAnimatedWEBP` puts the prompt and workflow in an `EXIF` chunk) get
//! the same treatment at the RIFF level: `EXIF` and `XMP ` chunks are dropped, the `VP8X` flags
//! and the RIFF size are fixed, everything else is copied byte for byte.
//!
//! JPEG and GIF files are stored as they are; their width and height are read from their
//! headers where that is simple, and reported as 0x0 where it is not. Other kinds of output
//! (video, audio, models) never pass through here: see [`crate::media`].

use std::error::Error;
use std::fmt;
use std::io::Cursor;

/// The eight bytes every PNG file starts with.
pub(crate) const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// The PNG specification caps chunk lengths at 2^31 - 1 bytes.
const MAX_CHUNK_LENGTH: u32 = 0x7fff_ffff;

/// What to do with the metadata ComfyUI embeds in its outputs: PNG text and private chunks, WebP
/// `EXIF`/`XMP ` chunks, and the tags of FLAC, MP3 and MP4 files (see [`crate::strip`]).
///
/// Set by the `OUTPUT_METADATA` configuration variable (older name: `PNG_METADATA`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PngMetadata {
    /// Drop every PNG text, `eXIf` and private chunk (`comf` included), every WebP
    /// `EXIF`/`XMP ` chunk, and the tags of FLAC, MP3 and MP4 files, which removes ComfyUI's
    /// `prompt`, `workflow` and `extra_pnginfo` entries. The default.
    #[default]
    Strip,
    /// Store the bytes exactly as ComfyUI made them.
    Keep,
}

/// An image ready to store: its (possibly stripped) bytes, its size and its MIME type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessedImage {
    /// The bytes to store.
    pub bytes: Vec<u8>,
    /// Width in pixels, or 0 when the format's header could not be read simply.
    pub width: u32,
    /// Height in pixels, or 0 when the format's header could not be read simply.
    pub height: u32,
    /// The MIME type to store and serve the image with, e.g. `image/png`.
    pub content_type: &'static str,
}

/// Why an image could not be processed. Every variant describes a malformed file; none of them
/// is caused by the gateway itself.
#[derive(Debug)]
pub enum ImageError {
    /// The bytes do not start with the PNG signature.
    NotPng,
    /// A chunk, or its header, extends beyond the end of the file.
    Truncated {
        /// Byte offset of the chunk that is cut short.
        offset: usize,
    },
    /// A chunk declares a length above the PNG limit of 2^31 - 1 bytes.
    ChunkTooLong {
        /// Byte offset of the chunk.
        offset: usize,
        /// The declared length.
        length: u32,
    },
    /// A chunk type is not four ASCII letters, which means the chunk boundaries are lost.
    BadChunkType {
        /// Byte offset of the chunk.
        offset: usize,
        /// The four bytes found where the chunk type should be.
        found: [u8; 4],
    },
    /// A chunk's CRC does not match its contents: the file was corrupted.
    BadCrc {
        /// Byte offset of the chunk.
        offset: usize,
        /// The chunk's type, e.g. `IDAT`.
        chunk_type: String,
        /// The CRC stored in the file.
        stored: u32,
        /// The CRC of the bytes actually present.
        computed: u32,
    },
    /// The first chunk is not `IHDR`, as the PNG specification requires.
    IhdrNotFirst {
        /// The type of the chunk found first.
        found: String,
    },
    /// The file ends at a chunk boundary without an `IEND` chunk.
    MissingIend,
    /// Bytes follow the `IEND` chunk, which must be the last thing in a PNG.
    DataAfterIend {
        /// Byte offset just past `IEND`.
        offset: usize,
        /// How many extra bytes there are.
        extra: usize,
    },
    /// The chunks are well formed but the `png` crate rejected the header they describe.
    Decode(png::DecodingError),
    /// A WebP file's RIFF structure is broken, so its metadata chunks cannot be found.
    BadWebp {
        /// Byte offset of the problem.
        offset: usize,
        /// What is wrong there.
        reason: &'static str,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::NotPng => f.write_str("not a PNG: the file lacks the PNG signature"),
            ImageError::Truncated { offset } => write!(
                f,
                "truncated PNG: the chunk at byte {offset} runs past the end of the file"
            ),
            ImageError::ChunkTooLong { offset, length } => write!(
                f,
                "malformed PNG: the chunk at byte {offset} claims {length} bytes, \
                 more than the PNG limit of {MAX_CHUNK_LENGTH}"
            ),
            ImageError::BadChunkType { offset, found } => write!(
                f,
                "malformed PNG: the chunk at byte {offset} has type bytes {found:02x?}, \
                 not four ASCII letters"
            ),
            ImageError::BadCrc {
                offset,
                chunk_type,
                stored,
                computed,
            } => write!(
                f,
                "corrupted PNG: the {chunk_type} chunk at byte {offset} has CRC {stored:08x} \
                 but its contents give {computed:08x}"
            ),
            ImageError::IhdrNotFirst { found } => write!(
                f,
                "malformed PNG: the first chunk is {found}, but it must be IHDR"
            ),
            ImageError::MissingIend => {
                f.write_str("truncated PNG: the file ends without an IEND chunk")
            }
            ImageError::DataAfterIend { offset, extra } => write!(
                f,
                "malformed PNG: {extra} unexpected bytes follow the IEND chunk at byte {offset}"
            ),
            ImageError::Decode(err) => write!(f, "PNG header could not be decoded: {err}"),
            ImageError::BadWebp { offset, reason } => {
                write!(f, "malformed WebP: at byte {offset}, {reason}")
            }
        }
    }
}

impl Error for ImageError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            ImageError::Decode(err) => Some(err),
            _ => None,
        }
    }
}

/// Prepares an image from ComfyUI for storage.
///
/// The format is recognised by the file's first bytes, not its name. A PNG is checked chunk by
/// chunk, measured, and stripped of its text chunks when `policy` is [`PngMetadata::Strip`]; a
/// WebP loses its `EXIF` and `XMP ` chunks under the same policy (see [`strip_webp_metadata`]).
/// A file whose name ends in `.png` but is not a PNG is an error. JPEG, WebP and GIF files are
/// measured from their headers where simple (0x0 otherwise) and returned unchanged; anything
/// else is returned unchanged, typed by `filename` via [`content_type_for`].
///
/// Never panics, whatever the bytes.
pub fn process(
    bytes: Vec<u8>,
    filename: &str,
    policy: PngMetadata,
) -> Result<ProcessedImage, ImageError> {
    if bytes.starts_with(&PNG_SIGNATURE) {
        return process_png(bytes, policy);
    }
    if is_webp(&bytes) {
        let (width, height) = webp_dimensions(&bytes).unwrap_or((0, 0));
        let bytes = match policy {
            PngMetadata::Strip => strip_webp_metadata(&bytes)?.unwrap_or(bytes),
            PngMetadata::Keep => bytes,
        };
        return Ok(ProcessedImage {
            bytes,
            width,
            height,
            content_type: "image/webp",
        });
    }
    let (content_type, size) = if is_jpeg(&bytes) {
        ("image/jpeg", jpeg_dimensions(&bytes))
    } else if is_gif(&bytes) {
        ("image/gif", gif_dimensions(&bytes))
    } else if content_type_for(filename) == "image/png" {
        return Err(ImageError::NotPng);
    } else {
        (content_type_for(filename), None)
    };
    let (width, height) = size.unwrap_or((0, 0));
    Ok(ProcessedImage {
        bytes,
        width,
        height,
        content_type,
    })
}

fn process_png(bytes: Vec<u8>, policy: PngMetadata) -> Result<ProcessedImage, ImageError> {
    let chunks = walk_chunks(&bytes)?;
    let (width, height) = png_dimensions(&bytes)?;
    let has_text = chunks
        .iter()
        .any(|chunk| is_metadata_chunk(&chunk.chunk_type));
    let bytes = match policy {
        PngMetadata::Strip if has_text => copy_without_text(&bytes, &chunks),
        PngMetadata::Strip | PngMetadata::Keep => bytes,
    };
    Ok(ProcessedImage {
        bytes,
        width,
        height,
        content_type: "image/png",
    })
}

/// Reads a PNG's width and height from its header with the `png` crate, without decoding pixels.
pub fn png_dimensions(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    if !bytes.starts_with(&PNG_SIGNATURE) {
        return Err(ImageError::NotPng);
    }
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    // Only the header matters here; skip inflating compressed text on the way to it.
    decoder.set_ignore_text_chunk(true);
    let reader = decoder.read_info().map_err(ImageError::Decode)?;
    let info = reader.info();
    Ok((info.width, info.height))
}

/// Returns a copy of a PNG without its metadata chunks ([`is_metadata_chunk`]: text, `eXIf`, and
/// private ones such as `comf`), wherever they appear.
///
/// This removes ComfyUI's `prompt` and `workflow` entries and any `extra_pnginfo` keys, from
/// `SaveImage`'s text chunks and from `SaveAnimatedPNG`'s `comf` chunks. Every other chunk (image
/// data, palette, gamma, physical size, colour profile, the APNG animation chunks, ...) is
/// copied byte for byte, so the pixels and frames are exactly those ComfyUI produced. The whole file is checked first
/// (see [`ImageError`]); a malformed PNG is an error, never a panic.
pub fn strip_text_chunks(bytes: &[u8]) -> Result<Vec<u8>, ImageError> {
    let chunks = walk_chunks(bytes)?;
    Ok(copy_without_text(bytes, &chunks))
}

/// The MIME type for a file name's extension (case-insensitive), for every kind the gateway
/// knows (see [`crate::media::KNOWN`]): `image/png`, `image/jpeg`, `video/mp4`, `audio/wav`,
/// ..., and `application/octet-stream` for anything else.
pub fn content_type_for(filename: &str) -> &'static str {
    crate::media::by_extension(filename)
        .map_or(crate::media::UNKNOWN.content_type, |m| m.content_type)
}

/// The RIFF chunks of a WebP file that carry metadata: ComfyUI's `SaveAnimatedWEBP` writes the
/// prompt and workflow into `EXIF`; `XMP ` can hold the same.
fn is_webp_metadata(fourcc: &[u8]) -> bool {
    fourcc == b"EXIF" || fourcc == b"XMP "
}

/// Returns a copy of a WebP file without its `EXIF` and `XMP ` chunks, or `None` when it has
/// none. Every other chunk (image data, animation frames, alpha, colour profile) is copied byte
/// for byte; the `VP8X` header's EXIF and XMP flags are cleared and the RIFF size is fixed, so
/// the result is a valid WebP with exactly the same pixels.
pub fn strip_webp_metadata(bytes: &[u8]) -> Result<Option<Vec<u8>>, ImageError> {
    let bad = |offset, reason| ImageError::BadWebp { offset, reason };
    let (riff_end, chunks) = walk_webp_chunks(bytes)?;
    if !chunks.iter().any(|c| is_webp_metadata(c.fourcc)) {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(riff_end);
    out.extend_from_slice(&bytes[..12]);
    for c in chunks.iter().filter(|c| !is_webp_metadata(c.fourcc)) {
        let flags_at = out.len() + 8;
        out.extend_from_slice(&bytes[c.offset..c.end]);
        if c.fourcc == b"VP8X" && c.end > c.offset + 8 {
            // VP8X flags: bit 3 says EXIF is present, bit 2 XMP.
            out[flags_at] &= !0b0000_1100;
        }
    }
    let riff_size = u32::try_from(out.len() - 8).map_err(|_| bad(4, "the file is too large"))?;
    out[4..8].copy_from_slice(&riff_size.to_le_bytes());
    Ok(Some(out))
}

/// Where one chunk sits in a WebP file: `bytes[offset..end]` is its header, data and padding,
/// `bytes[offset + 8..data_end]` its data.
struct RiffChunk<'a> {
    offset: usize,
    data_end: usize,
    end: usize,
    fourcc: &'a [u8],
}

/// Checks the RIFF structure of a whole WebP and returns where the RIFF data ends and where each
/// chunk is.
fn walk_webp_chunks(bytes: &[u8]) -> Result<(usize, Vec<RiffChunk<'_>>), ImageError> {
    let bad = |offset, reason| ImageError::BadWebp { offset, reason };
    if !is_webp(bytes) {
        return Err(bad(0, "the file lacks the RIFF/WEBP signature"));
    }
    let riff_end = le32(bytes, 4)
        .and_then(|size| (size as usize).checked_add(8))
        .filter(|&end| end <= bytes.len())
        .ok_or(bad(4, "the RIFF size runs past the end of the file"))?;
    let mut chunks = Vec::new();
    let mut at = 12;
    while at < riff_end {
        let size = le32(bytes, at + 4).ok_or(bad(at, "a chunk header is cut short"))? as usize;
        let data_end = (at + 8)
            .checked_add(size)
            .filter(|&end| end <= riff_end)
            .ok_or(bad(at, "a chunk runs past the end of the file"))?;
        // Chunks are padded to an even size; a missing pad byte at the very end is tolerated.
        let end = (data_end + (size & 1)).min(riff_end);
        chunks.push(RiffChunk {
            offset: at,
            data_end,
            end,
            fourcc: &bytes[at..at + 4],
        });
        at = end;
    }
    Ok((riff_end, chunks))
}

/// The chunks of a file as (type, data), in file order.
pub(crate) type ChunkList<'a, K> = Vec<(K, &'a [u8])>;

/// The chunks of a WebP file as (fourcc, data), after checking its RIFF structure.
pub(crate) fn webp_chunks(bytes: &[u8]) -> Result<ChunkList<'_, &[u8]>, ImageError> {
    let (_, chunks) = walk_webp_chunks(bytes)?;
    Ok(chunks
        .iter()
        .map(|c| (c.fourcc, &bytes[c.offset + 8..c.data_end]))
        .collect())
}

/// The chunks of a PNG file as (type, data), after checking the whole file as
/// [`strip_text_chunks`] does (signature, bounds, CRCs, `IHDR` first, `IEND` last).
pub(crate) fn png_chunks(bytes: &[u8]) -> Result<ChunkList<'_, [u8; 4]>, ImageError> {
    Ok(walk_chunks(bytes)?
        .iter()
        .map(|c| (c.chunk_type, &bytes[c.offset + 8..c.end - 4]))
        .collect())
}

fn le32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(*bytes.get(at..)?.first_chunk::<4>()?))
}

/// Where one chunk sits in a PNG file: `bytes[offset..end]` is its length, type, data and CRC.
struct ChunkSpan {
    offset: usize,
    end: usize,
    chunk_type: [u8; 4],
}

/// Whether stripping drops a PNG chunk of this type: the text chunks (`tEXt`, `zTXt`, `iTXt`),
/// `eXIf`, and every private ancillary chunk (first two letters lower case, like ComfyUI's own
/// `comf`) except APNG's `acTL`, `fcTL` and `fdAT`, which predate APNG's standardisation and are
/// spelled like private chunks. Ancillary chunks are never needed to show an image, and private
/// ones carry whatever their writer chose, so none of these can take pixels or frames with it.
fn is_metadata_chunk(chunk_type: &[u8; 4]) -> bool {
    let private_ancillary =
        chunk_type[0].is_ascii_lowercase() && chunk_type[1].is_ascii_lowercase();
    match chunk_type {
        b"tEXt" | b"zTXt" | b"iTXt" | b"eXIf" => true,
        b"acTL" | b"fcTL" | b"fdAT" => false,
        _ => private_ancillary,
    }
}

fn copy_without_text(bytes: &[u8], chunks: &[ChunkSpan]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&PNG_SIGNATURE);
    for chunk in chunks.iter().filter(|c| !is_metadata_chunk(&c.chunk_type)) {
        out.extend_from_slice(&bytes[chunk.offset..chunk.end]);
    }
    out
}

/// Checks the structure of a whole PNG and returns where each chunk is.
fn walk_chunks(bytes: &[u8]) -> Result<Vec<ChunkSpan>, ImageError> {
    if !bytes.starts_with(&PNG_SIGNATURE) {
        return Err(ImageError::NotPng);
    }
    let mut chunks: Vec<ChunkSpan> = Vec::new();
    let mut offset = PNG_SIGNATURE.len();
    loop {
        if offset == bytes.len() {
            return Err(ImageError::MissingIend);
        }
        let chunk = read_chunk(bytes, offset)?;
        if chunks.is_empty() && chunk.chunk_type != *b"IHDR" {
            return Err(ImageError::IhdrNotFirst {
                found: chunk_type_name(&chunk.chunk_type),
            });
        }
        offset = chunk.end;
        let is_iend = chunk.chunk_type == *b"IEND";
        chunks.push(chunk);
        if is_iend {
            break;
        }
    }
    if offset < bytes.len() {
        return Err(ImageError::DataAfterIend {
            offset,
            extra: bytes.len() - offset,
        });
    }
    Ok(chunks)
}

/// Reads and checks the chunk starting at `offset`: length, type, bounds and CRC.
fn read_chunk(bytes: &[u8], offset: usize) -> Result<ChunkSpan, ImageError> {
    let header = bytes
        .get(offset..offset + 8)
        .ok_or(ImageError::Truncated { offset })?;
    let (length_bytes, type_bytes) = header.split_at(4);
    let length = u32::from_be_bytes(to_array(length_bytes));
    let chunk_type: [u8; 4] = to_array(type_bytes);
    if length > MAX_CHUNK_LENGTH {
        return Err(ImageError::ChunkTooLong { offset, length });
    }
    if !chunk_type.iter().all(u8::is_ascii_alphabetic) {
        return Err(ImageError::BadChunkType {
            offset,
            found: chunk_type,
        });
    }
    // Length (4) + type (4) + data + CRC (4); checked so a huge length cannot overflow.
    let end = (offset + 12)
        .checked_add(length as usize)
        .filter(|&end| end <= bytes.len())
        .ok_or(ImageError::Truncated { offset })?;
    let data_end = end - 4;
    let crc_bytes = &bytes[data_end..end];
    let stored = u32::from_be_bytes(to_array(crc_bytes));
    let computed = crc32(&bytes[offset + 4..data_end]);
    if stored != computed {
        return Err(ImageError::BadCrc {
            offset,
            chunk_type: chunk_type_name(&chunk_type),
            stored,
            computed,
        });
    }
    Ok(ChunkSpan {
        offset,
        end,
        chunk_type,
    })
}

fn chunk_type_name(chunk_type: &[u8; 4]) -> String {
    String::from_utf8_lossy(chunk_type).into_owned()
}

fn to_array(four: &[u8]) -> [u8; 4] {
    four.try_into()
        .expect("callers slice exactly four bytes out of a header")
}

/// CRC-32 as PNG defines it (ISO 3309, reflected polynomial 0xEDB88320), computed by
/// `crc32fast` (several bytes per step, with the CPU's carry-less multiply where it has one):
/// checking every chunk of a big PNG is then a fraction of a copy, not most of the time spent.
fn crc32(bytes: &[u8]) -> u32 {
    crc32fast::hash(bytes)
}

fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xff, 0xd8, 0xff])
}

/// Whether the bytes start with the RIFF/WEBP signature.
pub(crate) fn is_webp(bytes: &[u8]) -> bool {
    bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP"
}

fn is_gif(bytes: &[u8]) -> bool {
    bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a")
}

fn be16(bytes: &[u8], at: usize) -> Option<u32> {
    let pair = bytes.get(at..at.checked_add(2)?)?;
    Some(u32::from(u16::from_be_bytes([pair[0], pair[1]])))
}

fn le16(bytes: &[u8], at: usize) -> Option<u32> {
    let pair = bytes.get(at..at.checked_add(2)?)?;
    Some(u32::from(u16::from_le_bytes([pair[0], pair[1]])))
}

fn le24(bytes: &[u8], at: usize) -> Option<u32> {
    let three = bytes.get(at..at.checked_add(3)?)?;
    Some(u32::from_le_bytes([three[0], three[1], three[2], 0]))
}

/// Width and height from the first start-of-frame (SOFn) segment of a JPEG.
///
/// Walks the marker segments after SOI. Stops at start-of-scan or end-of-image: the frame header
/// always comes before the first scan.
pub(crate) fn jpeg_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    let mut at = 2;
    loop {
        if *bytes.get(at)? != 0xff {
            return None;
        }
        // Any number of 0xff fill bytes may precede a marker.
        while *bytes.get(at + 1)? == 0xff {
            at += 1;
        }
        let marker = *bytes.get(at + 1)?;
        at += 2;
        match marker {
            // Markers without a length field: TEM and the restart markers.
            0x01 | 0xd0..=0xd7 => continue,
            0xd9 | 0xda => return None,
            _ => {}
        }
        let segment_length = be16(bytes, at)? as usize;
        // SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
        if (0xc0..=0xcf).contains(&marker) && !matches!(marker, 0xc4 | 0xc8 | 0xcc) {
            let height = be16(bytes, at + 3)?;
            let width = be16(bytes, at + 5)?;
            return Some((width, height));
        }
        if segment_length < 2 {
            return None;
        }
        at += segment_length;
    }
}

/// Width and height from a WebP file's first chunk: lossy (`VP8 `), lossless (`VP8L`) or
/// extended (`VP8X`).
pub(crate) fn webp_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    let fourcc = bytes.get(12..16)?;
    let data = 20; // after RIFF header (12 bytes), chunk fourcc and chunk size
    match fourcc {
        b"VP8 " => {
            // A 3-byte frame tag, then the key-frame start code, then 14-bit sizes.
            if bytes.get(data + 3..data + 6)? != [0x9d, 0x01, 0x2a] {
                return None;
            }
            Some((
                le16(bytes, data + 6)? & 0x3fff,
                le16(bytes, data + 8)? & 0x3fff,
            ))
        }
        b"VP8L" => {
            if *bytes.get(data)? != 0x2f {
                return None;
            }
            let packed = bytes.get(data + 1..data + 5)?;
            let bits = u32::from_le_bytes(to_array(packed));
            Some(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1))
        }
        b"VP8X" => Some((le24(bytes, data + 4)? + 1, le24(bytes, data + 7)? + 1)),
        _ => None,
    }
}

/// Width and height from a GIF's logical screen descriptor.
pub(crate) fn gif_dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    Some((le16(bytes, 6)?, le16(bytes, 8)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIDTH: u32 = 7;
    const HEIGHT: u32 = 5;

    fn pixels() -> Vec<u8> {
        (0..WIDTH * HEIGHT * 3)
            .map(|i| (i * 37 % 251) as u8)
            .collect()
    }

    /// A PNG like ComfyUI's: RGB pixels, `prompt` and `workflow` tEXt chunks, plus zTXt and
    /// iTXt entries, a gamma and a physical-size chunk.
    fn comfyui_png() -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, WIDTH, HEIGHT);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_source_gamma(png::ScaledFloat::new(1.0 / 2.2));
        encoder.set_pixel_dims(Some(png::PixelDimensions {
            xppu: 2835,
            yppu: 2835,
            unit: png::Unit::Meter,
        }));
        let text = [
            ("prompt", r#"{"3":{"class_type":"KSampler"}}"#),
            ("workflow", r#"{"nodes":[]}"#),
        ];
        for (keyword, value) in text {
            encoder
                .add_text_chunk(keyword.into(), value.into())
                .expect("valid keyword");
        }
        encoder
            .add_ztxt_chunk("extra".into(), "compressed secret".into())
            .expect("valid keyword");
        encoder
            .add_itxt_chunk("notes".into(), "ünïcode secret".into())
            .expect("valid keyword");
        let mut writer = encoder.write_header().expect("encoding into a Vec");
        writer
            .write_image_data(&pixels())
            .expect("encoding into a Vec");
        writer.finish().expect("encoding into a Vec");
        out
    }

    fn decode(bytes: &[u8]) -> (png::Info<'static>, Vec<u8>) {
        let mut reader = png::Decoder::new(Cursor::new(bytes))
            .read_info()
            .expect("a valid PNG");
        let mut buf = vec![0; reader.output_buffer_size().expect("small image")];
        let frame = reader.next_frame(&mut buf).expect("a valid frame");
        buf.truncate(frame.buffer_size());
        // Finishing the image reads text chunks that follow the pixel data too.
        reader.finish().expect("a valid PNG trailer");
        (reader.info().clone(), buf)
    }

    fn chunk_types(bytes: &[u8]) -> Vec<String> {
        let chunks = walk_chunks(bytes).expect("a valid PNG");
        chunks
            .iter()
            .map(|c| chunk_type_name(&c.chunk_type))
            .collect()
    }

    /// Builds one chunk with a correct CRC.
    fn chunk(chunk_type: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(chunk_type);
        out.extend_from_slice(data);
        let crc = crc32(&out[4..]);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Offset of the first chunk of the given type in a valid PNG.
    fn offset_of(bytes: &[u8], chunk_type: &[u8; 4]) -> usize {
        walk_chunks(bytes)
            .expect("a valid PNG")
            .iter()
            .find(|c| &c.chunk_type == chunk_type)
            .expect("chunk present")
            .offset
    }

    #[test]
    fn crc_matches_known_value() {
        // Every PNG ends with an IEND chunk whose CRC is ae426082.
        assert_eq!(crc32(b"IEND"), 0xae42_6082);
    }

    #[test]
    fn fixture_has_the_text_chunks_it_should() {
        let (info, _) = decode(&comfyui_png());
        assert_eq!(info.uncompressed_latin1_text.len(), 2);
        assert_eq!(info.uncompressed_latin1_text[0].keyword, "prompt");
        assert_eq!(info.compressed_latin1_text.len(), 1);
        assert_eq!(info.utf8_text.len(), 1);
    }

    #[test]
    fn strip_removes_every_text_chunk() {
        let stripped = strip_text_chunks(&comfyui_png()).expect("valid PNG");
        let (info, _) = decode(&stripped);
        assert!(info.uncompressed_latin1_text.is_empty());
        assert!(info.compressed_latin1_text.is_empty());
        assert!(info.utf8_text.is_empty());
        let types = chunk_types(&stripped);
        assert!(
            !types
                .iter()
                .any(|t| t == "tEXt" || t == "zTXt" || t == "iTXt")
        );
        let as_text = String::from_utf8_lossy(&stripped);
        assert!(!as_text.contains("KSampler") && !as_text.contains("workflow"));
    }

    #[test]
    fn strip_keeps_pixels_identical() {
        let original = comfyui_png();
        let stripped = strip_text_chunks(&original).expect("valid PNG");
        let (_, original_pixels) = decode(&original);
        let (_, stripped_pixels) = decode(&stripped);
        assert_eq!(stripped_pixels, original_pixels);
        assert_eq!(stripped_pixels, pixels());
    }

    #[test]
    fn strip_keeps_other_ancillary_chunks_in_order() {
        let original = comfyui_png();
        let stripped = strip_text_chunks(&original).expect("valid PNG");
        let expected: Vec<String> = chunk_types(&original)
            .into_iter()
            .filter(|t| !matches!(t.as_str(), "tEXt" | "zTXt" | "iTXt"))
            .collect();
        assert_eq!(chunk_types(&stripped), expected);
        assert!(expected.iter().any(|t| t == "gAMA"));
        assert!(expected.iter().any(|t| t == "pHYs"));
        let (info, _) = decode(&stripped);
        assert!(info.gama_chunk.is_some());
        assert_eq!(info.pixel_dims.map(|d| d.xppu), Some(2835));
    }

    #[test]
    fn strip_removes_text_chunks_after_the_image_data() {
        let original = strip_text_chunks(&comfyui_png()).expect("valid PNG");
        let iend = offset_of(&original, b"IEND");
        let mut with_trailer = original[..iend].to_vec();
        with_trailer.extend(chunk(b"tEXt", b"prompt\0{\"late\":true}"));
        with_trailer.extend_from_slice(&original[iend..]);
        assert_eq!(
            chunk_types(&with_trailer).len(),
            chunk_types(&original).len() + 1
        );
        assert_eq!(strip_text_chunks(&with_trailer).expect("valid"), original);
    }

    #[test]
    fn process_strip_measures_and_strips() {
        let original = comfyui_png();
        let image =
            process(original.clone(), "ComfyUI_00001_.png", PngMetadata::Strip).expect("valid PNG");
        assert_eq!((image.width, image.height), (WIDTH, HEIGHT));
        assert_eq!(image.content_type, "image/png");
        assert_eq!(image.bytes, strip_text_chunks(&original).expect("valid"));
        assert!(image.bytes.len() < original.len());
    }

    /// An animated PNG as ComfyUI's SaveAnimatedPNG writes it: three frames, then the prompt and
    /// workflow in private `comf` chunks after the image data.
    fn comfyui_apng() -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, WIDTH, HEIGHT);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_animated(3, 0).expect("three frames");
        let mut writer = encoder.write_header().expect("encoding into a Vec");
        for shift in 0..3u8 {
            let frame: Vec<u8> = pixels().iter().map(|p| p.wrapping_add(shift)).collect();
            writer.write_image_data(&frame).expect("a frame");
        }
        writer.finish().expect("encoding into a Vec");
        let iend = offset_of(&out, b"IEND");
        let mut tail = chunk(
            b"comf",
            b"prompt\0{\"1\": {\"class_type\": \"EmptyImage\"}}",
        );
        tail.extend(chunk(b"comf", b"workflow\0{\"nodes\": []}"));
        out.splice(iend..iend, tail);
        out
    }

    /// The APNG chunks (`acTL`, `fcTL`, `fdAT`) of a PNG, data and CRC included.
    fn animation_chunks(bytes: &[u8]) -> Vec<Vec<u8>> {
        walk_chunks(bytes)
            .expect("a valid PNG")
            .iter()
            .filter(|c| matches!(&c.chunk_type, b"acTL" | b"fcTL" | b"fdAT" | b"IDAT"))
            .map(|c| bytes[c.offset..c.end].to_vec())
            .collect()
    }

    #[test]
    fn an_animated_png_loses_its_comf_chunks_and_keeps_every_frame() {
        let original = comfyui_apng();
        assert!(String::from_utf8_lossy(&original).contains("class_type"));
        let stripped = process(original.clone(), "anim_00001_.png", PngMetadata::Strip)
            .expect("a valid APNG")
            .bytes;
        let text = String::from_utf8_lossy(&stripped);
        assert!(
            !text.contains("prompt") && !text.contains("workflow"),
            "{text}"
        );
        assert!(!chunk_types(&stripped).contains(&"comf".to_string()));
        // Every chunk still has its CRC, and the animation is byte for byte the same.
        assert_eq!(animation_chunks(&stripped), animation_chunks(&original));
        let mut reader = png::Decoder::new(Cursor::new(&stripped))
            .read_info()
            .expect("a valid PNG");
        assert_eq!(
            reader.info().animation_control().map(|a| a.num_frames),
            Some(3)
        );
        let mut buf = vec![0; reader.output_buffer_size().expect("small image")];
        for _ in 0..3 {
            reader.next_frame(&mut buf).expect("each frame decodes");
        }
        let kept = process(original.clone(), "x.png", PngMetadata::Keep).expect("valid");
        assert_eq!(kept.bytes, original);
    }

    #[test]
    fn private_and_exif_chunks_go_and_standard_ones_stay() {
        for kind in [
            b"comf", b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"caBX", b"prVt",
        ] {
            assert!(is_metadata_chunk(kind), "{}", String::from_utf8_lossy(kind));
        }
        for kind in [
            b"IHDR", b"PLTE", b"IDAT", b"IEND", b"acTL", b"fcTL", b"fdAT", b"gAMA", b"pHYs",
            b"iCCP", b"sRGB", b"tRNS", b"cHRM", b"bKGD",
        ] {
            assert!(
                !is_metadata_chunk(kind),
                "{}",
                String::from_utf8_lossy(kind)
            );
        }
    }

    #[test]
    fn process_keep_returns_identical_bytes() {
        let original = comfyui_png();
        let image =
            process(original.clone(), "ComfyUI_00001_.png", PngMetadata::Keep).expect("valid");
        assert_eq!(image.bytes, original);
        assert_eq!((image.width, image.height), (WIDTH, HEIGHT));
    }

    #[test]
    fn png_is_recognised_by_signature_not_name() {
        let image = process(comfyui_png(), "output.bin", PngMetadata::Keep).expect("valid");
        assert_eq!(image.content_type, "image/png");
    }

    #[test]
    fn a_dot_png_that_is_not_a_png_is_refused() {
        let err = process(b"<html>502</html>".to_vec(), "a.png", PngMetadata::Strip)
            .expect_err("not a PNG");
        assert!(matches!(err, ImageError::NotPng), "{err}");
    }

    #[test]
    fn png_dimensions_reads_the_header() {
        assert_eq!(
            png_dimensions(&comfyui_png()).expect("valid"),
            (WIDTH, HEIGHT)
        );
        assert!(matches!(png_dimensions(b"GIF89a"), Err(ImageError::NotPng)));
    }

    #[test]
    fn truncation_is_reported_with_the_chunk_offset() {
        let original = comfyui_png();
        let idat = offset_of(&original, b"IDAT");
        let err = strip_text_chunks(&original[..idat + 10]).expect_err("truncated");
        assert_eq!(
            err.to_string(),
            format!("truncated PNG: the chunk at byte {idat} runs past the end of the file")
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let original = comfyui_png();
        for len in 0..original.len() {
            let result = process(original[..len].to_vec(), "x.png", PngMetadata::Strip);
            assert!(result.is_err(), "a PNG cut to {len} bytes was accepted");
        }
        let iend = offset_of(&original, b"IEND");
        let err = strip_text_chunks(&original[..iend]).expect_err("no IEND");
        assert!(matches!(err, ImageError::MissingIend), "{err}");
    }

    #[test]
    fn every_single_bit_flip_is_an_error() {
        let original = comfyui_png();
        for at in 0..original.len() {
            for bit in 0..8 {
                let mut corrupted = original.clone();
                corrupted[at] ^= 1 << bit;
                let result = process(corrupted, "x.png", PngMetadata::Keep);
                assert!(
                    result.is_err(),
                    "flipping bit {bit} of byte {at} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn bad_crc_names_the_chunk() {
        let mut corrupted = comfyui_png();
        let idat = offset_of(&corrupted, b"IDAT");
        corrupted[idat + 9] ^= 0x55;
        let err = strip_text_chunks(&corrupted).expect_err("bad CRC");
        assert!(
            matches!(&err, ImageError::BadCrc { offset, chunk_type, .. }
                if *offset == idat && chunk_type == "IDAT"),
            "{err}"
        );
        assert!(err.to_string().contains("IDAT chunk at byte"), "{err}");
    }

    #[test]
    fn structural_rules_are_enforced() {
        let original = comfyui_png();
        let ihdr_end = offset_of(&original, b"gAMA");
        let mut ihdr_second = PNG_SIGNATURE.to_vec();
        ihdr_second.extend(chunk(b"gAMA", &45455u32.to_be_bytes()));
        ihdr_second.extend_from_slice(&original[8..]);
        assert!(matches!(
            strip_text_chunks(&ihdr_second),
            Err(ImageError::IhdrNotFirst { found }) if found == "gAMA"
        ));

        let mut trailing = original.clone();
        trailing.extend_from_slice(b"junk");
        assert!(matches!(
            strip_text_chunks(&trailing),
            Err(ImageError::DataAfterIend { extra: 4, .. })
        ));

        let mut bad_type = original.clone();
        bad_type[ihdr_end + 4..ihdr_end + 8].copy_from_slice(b"g4MA");
        assert!(matches!(
            strip_text_chunks(&bad_type),
            Err(ImageError::BadChunkType { .. })
        ));

        let mut huge = original.clone();
        huge[ihdr_end..ihdr_end + 4].copy_from_slice(&0x8000_0000u32.to_be_bytes());
        assert!(matches!(
            strip_text_chunks(&huge),
            Err(ImageError::ChunkTooLong { .. })
        ));

        let mut near_max = original;
        near_max[ihdr_end..ihdr_end + 4].copy_from_slice(&MAX_CHUNK_LENGTH.to_be_bytes());
        assert!(matches!(
            strip_text_chunks(&near_max),
            Err(ImageError::Truncated { .. })
        ));
    }

    #[test]
    fn a_well_formed_but_invalid_header_is_a_decode_error() {
        let original = comfyui_png();
        let mut zero_width = PNG_SIGNATURE.to_vec();
        let mut ihdr_data = original[16..29].to_vec();
        ihdr_data[0..4].copy_from_slice(&0u32.to_be_bytes());
        zero_width.extend(chunk(b"IHDR", &ihdr_data));
        zero_width.extend_from_slice(&original[33..]);
        let err = process(zero_width, "x.png", PngMetadata::Strip).expect_err("zero width");
        assert!(matches!(err, ImageError::Decode(_)), "{err}");
        assert!(err.source().is_some());
    }

    /// A small deterministic xorshift generator, so the fuzz tests need no random crate and
    /// fail reproducibly.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let prefixes: [&[u8]; 5] = [
            &[],
            &PNG_SIGNATURE,
            &[0xff, 0xd8, 0xff],
            b"RIFF\0\0\0\0WEBPVP8",
            b"GIF89a",
        ];
        for round in 0..5_000 {
            let len = (rng.next() % 96) as usize;
            let mut bytes = prefixes[round % prefixes.len()].to_vec();
            bytes.extend((0..len).map(|_| rng.next() as u8));
            for name in ["x.png", "x.jpg", "x"] {
                let _ = process(bytes.clone(), name, PngMetadata::Strip);
            }
            let _ = png_dimensions(&bytes);
            let _ = strip_text_chunks(&bytes);
        }
    }

    #[test]
    fn random_chunks_with_valid_crcs_never_panic() {
        // Valid CRCs get past the structural checks, so this reaches the png crate's header
        // parsing with nonsense IHDR contents.
        let mut rng = XorShift(42);
        for _ in 0..2_000 {
            let mut bytes = PNG_SIGNATURE.to_vec();
            let ihdr: Vec<u8> = (0..(rng.next() % 20)).map(|_| rng.next() as u8).collect();
            bytes.extend(chunk(b"IHDR", &ihdr));
            let idat: Vec<u8> = (0..(rng.next() % 40)).map(|_| rng.next() as u8).collect();
            bytes.extend(chunk(b"IDAT", &idat));
            bytes.extend(chunk(b"IEND", &[]));
            let _ = process(bytes, "x.png", PngMetadata::Strip);
        }
    }

    #[test]
    fn jpeg_size_comes_from_the_frame_header() {
        let mut jpeg = vec![0xff, 0xd8];
        jpeg.extend([0xff, 0xe0, 0x00, 0x10]); // APP0, length 16
        jpeg.extend(b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0");
        jpeg.extend([0xff, 0xff]); // a fill byte before the next marker
        jpeg.extend([0xc2, 0x00, 0x11, 0x08, 0x01, 0xe0, 0x02, 0x80, 0x03]);
        jpeg.extend([0; 9]);
        let image = process(jpeg.clone(), "x.png.jpg", PngMetadata::Strip).expect("stored");
        assert_eq!((image.width, image.height), (640, 480));
        assert_eq!(image.content_type, "image/jpeg");
        assert_eq!(image.bytes, jpeg);

        let cut = process(jpeg[..12].to_vec(), "x.jpg", PngMetadata::Strip).expect("stored");
        assert_eq!((cut.width, cut.height), (0, 0));
    }

    #[test]
    fn webp_sizes_come_from_each_variant() {
        fn webp(fourcc: &[u8; 4], data: &[u8]) -> Vec<u8> {
            let mut out = b"RIFF\0\0\0\0WEBP".to_vec();
            out.extend_from_slice(fourcc);
            out.extend((data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
            out
        }
        let lossy = webp(
            b"VP8 ",
            &[0, 0, 0, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01],
        );
        // Lossless packs (width - 1) and (height - 1) into 14 bits each.
        let packed: u32 = 639 | (479 << 14);
        let mut lossless_data = vec![0x2f];
        lossless_data.extend(packed.to_le_bytes());
        let lossless = webp(b"VP8L", &lossless_data);
        let extended = webp(b"VP8X", &[0, 0, 0, 0, 0x7f, 0x02, 0, 0xdf, 0x01, 0]);
        for bytes in [lossy, lossless, extended] {
            let image = process(bytes, "x.webp", PngMetadata::Strip).expect("stored");
            assert_eq!((image.width, image.height), (640, 480));
            assert_eq!(image.content_type, "image/webp");
        }
    }

    /// One RIFF chunk, padded to an even size.
    fn riff_chunk(fourcc: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = fourcc.to_vec();
        out.extend((data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(0);
        }
        out
    }

    fn riff_webp(chunks: &[Vec<u8>]) -> Vec<u8> {
        let body = chunks.concat();
        let mut out = b"RIFF".to_vec();
        out.extend(((body.len() + 4) as u32).to_le_bytes());
        out.extend_from_slice(b"WEBP");
        out.extend(body);
        out
    }

    /// The RIFF chunks of a WebP, as `(fourcc, data)`.
    fn webp_chunks(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut chunks = Vec::new();
        let mut at = 12;
        while at + 8 <= bytes.len() {
            let size = le32(bytes, at + 4).expect("a header") as usize;
            let fourcc = String::from_utf8_lossy(&bytes[at..at + 4]).into_owned();
            chunks.push((fourcc, bytes[at + 8..at + 8 + size].to_vec()));
            at += 8 + size + (size & 1);
        }
        chunks
    }

    /// An animated WebP as ComfyUI's SaveAnimatedWEBP writes it: VP8X with the EXIF flag (and
    /// here XMP and alpha too), animation chunks, and the workflow in EXIF.
    fn comfyui_webp() -> Vec<u8> {
        // Flags: alpha (0x10), EXIF (0x08), XMP (0x04), animation (0x02); canvas 640x480.
        let vp8x = [0x1e, 0, 0, 0, 0x7f, 0x02, 0, 0xdf, 0x01, 0];
        riff_webp(&[
            riff_chunk(b"VP8X", &vp8x),
            riff_chunk(b"ANIM", &[0, 0, 0, 0, 0, 0]),
            riff_chunk(b"ANMF", b"frame one pixels, odd length"),
            riff_chunk(b"EXIF", b"MM\0*workflow:{\"nodes\":[]} prompt:{\"3\":{}}"),
            riff_chunk(b"ANMF", b"frame two pixels"),
            riff_chunk(b"XMP ", b"<x:xmpmeta>secret</x:xmpmeta>"),
        ])
    }

    #[test]
    fn webp_metadata_is_stripped_at_the_riff_level() {
        let original = comfyui_webp();
        let image = process(original.clone(), "ComfyUI_00001_.webp", PngMetadata::Strip)
            .expect("a valid WebP");
        assert_eq!((image.width, image.height), (640, 480));
        let chunks = webp_chunks(&image.bytes);
        let names: Vec<&str> = chunks.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["VP8X", "ANIM", "ANMF", "ANMF"]);
        // The frames are byte for byte those ComfyUI made; only the metadata flags changed.
        let before = webp_chunks(&original);
        assert_eq!(chunks[2], before[2]);
        assert_eq!(chunks[3], before[4]);
        assert_eq!(
            chunks[0].1[0], 0x12,
            "alpha and animation stay, EXIF and XMP go"
        );
        assert_eq!(chunks[0].1[1..], before[0].1[1..]);
        assert_eq!(le32(&image.bytes, 4), Some(image.bytes.len() as u32 - 8));
        let text = String::from_utf8_lossy(&image.bytes);
        assert!(
            !text.contains("workflow") && !text.contains("secret"),
            "{text}"
        );

        let kept = process(original.clone(), "x.webp", PngMetadata::Keep).expect("valid");
        assert_eq!(kept.bytes, original);
    }

    #[test]
    fn webps_without_metadata_are_untouched_and_broken_ones_refused() {
        let plain = riff_webp(&[riff_chunk(b"VP8L", &[0x2f, 0x7f, 0xc0, 0x77, 0x00, 1, 2])]);
        assert_eq!(strip_webp_metadata(&plain).expect("valid"), None);
        let image = process(plain.clone(), "x.webp", PngMetadata::Strip).expect("valid");
        assert_eq!(image.bytes, plain);

        let whole = comfyui_webp();
        for len in 12..whole.len() {
            let mut cut = whole[..len].to_vec();
            // A RIFF size that promises more than the file has.
            assert!(strip_webp_metadata(&cut).is_err(), "cut at {len}");
            // The same bytes with an honest RIFF size: never a panic, never a file with EXIF.
            let honest = (len as u32 - 8).to_le_bytes();
            cut[4..8].copy_from_slice(&honest);
            if let Ok(Some(stripped)) = strip_webp_metadata(&cut) {
                assert!(!String::from_utf8_lossy(&stripped).contains("workflow"));
            }
        }
        let err =
            process(whole[..40].to_vec(), "x.webp", PngMetadata::Strip).expect_err("cut short");
        assert!(err.to_string().starts_with("malformed WebP"), "{err}");
    }

    #[test]
    fn gif_and_unknown_formats_are_stored_unchanged() {
        let gif = b"GIF89a\x80\x02\xe0\x01".to_vec();
        let image = process(gif.clone(), "x.gif", PngMetadata::Strip).expect("stored");
        assert_eq!((image.width, image.height, image.bytes), (640, 480, gif));

        let other = process(b"hello".to_vec(), "notes.xyz", PngMetadata::Strip).expect("stored");
        assert_eq!((other.width, other.height), (0, 0));
        assert_eq!(other.content_type, "application/octet-stream");
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type_for("a.png"), "image/png");
        assert_eq!(content_type_for("A.PNG"), "image/png");
        assert_eq!(content_type_for("a.jpg"), "image/jpeg");
        assert_eq!(content_type_for("a.JPEG"), "image/jpeg");
        assert_eq!(content_type_for("a.webp"), "image/webp");
        assert_eq!(content_type_for("a.gif"), "image/gif");
        assert_eq!(content_type_for("a.png.exe"), "application/octet-stream");
        assert_eq!(content_type_for("clip.MP4"), "video/mp4");
        assert_eq!(content_type_for("a.flac"), "audio/flac");
        assert_eq!(content_type_for("png"), "application/octet-stream");
    }
}
