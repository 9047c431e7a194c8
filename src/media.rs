//! Output files of every kind ComfyUI makes: what a file is, from its first bytes or else its
//! name; which extension its storage key takes; and its width and height where the format says
//! so cheaply.
//!
//! Recognised by their bytes: PNG, JPEG, WebP, GIF, AVIF, MP4 (and M4A), QuickTime MOV, WebM,
//! Matroska, AVI, WAV, MP3, AAC (ADTS), FLAC, Ogg (Vorbis, Opus, Theora) and binary glTF (GLB).
//! Anything else is typed by its file name's extension when it is one of [`KNOWN`], and is
//! `application/octet-stream` (kind `other`, extension `bin`) otherwise.
//!
//! Nothing here decodes pixels or samples: sizes come from headers (PNG `IHDR`, JPEG `SOFn`,
//! WebP, GIF) or, for MP4/MOV, from the first video track's `tkhd` box.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// How many leading bytes [`identify`] and [`image_dimensions`] look at. Generous, because a
/// JPEG's frame header comes after its EXIF and ICC segments.
pub const HEAD_LEN: usize = 256 * 1024;

/// What sort of thing a file is, as the `complete` event and the metadata row say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A still or animated picture (PNG, JPEG, WebP, GIF, AVIF).
    Image,
    /// A moving picture (MP4, MOV, WebM, MKV, AVI).
    Video,
    /// Sound (WAV, MP3, FLAC, Ogg/Opus, AAC, M4A).
    Audio,
    /// A 3D model (GLB, glTF, OBJ, STL, PLY, FBX).
    Model,
    /// Anything else.
    Other,
}

impl Kind {
    /// The lowercase name clients see: `image`, `video`, `audio`, `model` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Image => "image",
            Kind::Video => "video",
            Kind::Audio => "audio",
            Kind::Model => "model",
            Kind::Other => "other",
        }
    }
}

/// A file's type: its MIME type, its kind and the extension its storage key gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MediaType {
    /// The MIME type to store and serve it with, e.g. `video/mp4`.
    pub content_type: &'static str,
    /// Its kind.
    pub kind: Kind,
    /// The extension of its storage key, without the dot, e.g. `mp4`.
    pub extension: &'static str,
}

const fn media(content_type: &'static str, kind: Kind, extension: &'static str) -> MediaType {
    MediaType {
        content_type,
        kind,
        extension,
    }
}

/// PNG, also animated PNG.
pub const PNG: MediaType = media("image/png", Kind::Image, "png");
/// JPEG.
pub const JPEG: MediaType = media("image/jpeg", Kind::Image, "jpg");
/// WebP, also animated WebP.
pub const WEBP: MediaType = media("image/webp", Kind::Image, "webp");
/// GIF.
pub const GIF: MediaType = media("image/gif", Kind::Image, "gif");
/// AVIF.
pub const AVIF: MediaType = media("image/avif", Kind::Image, "avif");
/// MP4 video (ISO base media with any brand but QuickTime and the audio ones).
pub const MP4: MediaType = media("video/mp4", Kind::Video, "mp4");
/// QuickTime video.
pub const MOV: MediaType = media("video/quicktime", Kind::Video, "mov");
/// WebM (a Matroska profile).
pub const WEBM: MediaType = media("video/webm", Kind::Video, "webm");
/// Matroska.
pub const MKV: MediaType = media("video/x-matroska", Kind::Video, "mkv");
/// AVI.
pub const AVI: MediaType = media("video/x-msvideo", Kind::Video, "avi");
/// Ogg with a Theora stream.
pub const OGV: MediaType = media("video/ogg", Kind::Video, "ogv");
/// WAV.
pub const WAV: MediaType = media("audio/wav", Kind::Audio, "wav");
/// MP3.
pub const MP3: MediaType = media("audio/mpeg", Kind::Audio, "mp3");
/// AAC in ADTS frames.
pub const AAC: MediaType = media("audio/aac", Kind::Audio, "aac");
/// FLAC.
pub const FLAC: MediaType = media("audio/flac", Kind::Audio, "flac");
/// Ogg Vorbis (or any Ogg that is not Opus or Theora).
pub const OGG: MediaType = media("audio/ogg", Kind::Audio, "ogg");
/// Ogg Opus (ComfyUI's `SaveAudioOpus`).
pub const OPUS: MediaType = media("audio/ogg", Kind::Audio, "opus");
/// MPEG-4 audio.
pub const M4A: MediaType = media("audio/mp4", Kind::Audio, "m4a");
/// Binary glTF.
pub const GLB: MediaType = media("model/gltf-binary", Kind::Model, "glb");
/// Anything not recognised.
pub const UNKNOWN: MediaType = media("application/octet-stream", Kind::Other, "bin");

/// Every type the gateway knows, also by extension; the first entry per extension wins.
pub const KNOWN: &[MediaType] = &[
    PNG,
    JPEG,
    WEBP,
    GIF,
    AVIF,
    MP4,
    MOV,
    WEBM,
    MKV,
    AVI,
    OGV,
    WAV,
    MP3,
    AAC,
    FLAC,
    OGG,
    OPUS,
    M4A,
    GLB,
    media("model/gltf+json", Kind::Model, "gltf"),
    media("model/obj", Kind::Model, "obj"),
    media("model/stl", Kind::Model, "stl"),
    media("application/octet-stream", Kind::Model, "ply"),
    media("application/octet-stream", Kind::Model, "fbx"),
    media("text/plain; charset=utf-8", Kind::Other, "txt"),
    media("application/json", Kind::Other, "json"),
    UNKNOWN,
];

/// Other spellings of known extensions (`jpeg` is stored as `jpg`, ...).
const ALIASES: &[(&str, MediaType)] = &[
    ("jpeg", JPEG),
    ("m4v", MP4),
    ("qt", MOV),
    ("wave", WAV),
    ("oga", OGG),
    ("apng", PNG),
];

/// The file's type: from its bytes (`head`, the first bytes, [`HEAD_LEN`] are plenty) when they
/// are recognised, else from `filename`'s extension, else [`UNKNOWN`].
pub fn identify(head: &[u8], filename: &str) -> MediaType {
    sniff(head)
        .or_else(|| by_extension(filename))
        .unwrap_or(UNKNOWN)
}

/// The type a file's first bytes show, if they are one of the formats this module recognises.
pub fn sniff(head: &[u8]) -> Option<MediaType> {
    let at = |range: std::ops::Range<usize>| head.get(range).unwrap_or_default();
    if head.starts_with(&[0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n']) {
        return Some(PNG);
    }
    if head.starts_with(&[0xff, 0xd8, 0xff]) {
        return Some(JPEG);
    }
    if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        return Some(GIF);
    }
    if head.starts_with(b"RIFF") {
        return match at(8..12) {
            b"WEBP" => Some(WEBP),
            b"WAVE" => Some(WAV),
            b"AVI " => Some(AVI),
            _ => None,
        };
    }
    if at(4..8) == b"ftyp" {
        return Some(match at(8..12) {
            b"qt  " => MOV,
            b"M4A " | b"M4B " => M4A,
            b"avif" | b"avis" => AVIF,
            _ => MP4,
        });
    }
    // Old QuickTime files start with a plain atom instead of `ftyp`.
    if matches!(at(4..8), b"moov" | b"mdat" | b"wide") {
        return Some(MOV);
    }
    if head.starts_with(&[0x1a, 0x45, 0xdf, 0xa3]) {
        return Some(matroska_flavour(head));
    }
    if head.starts_with(b"fLaC") {
        return Some(FLAC);
    }
    if head.starts_with(b"OggS") {
        return Some(ogg_flavour(head));
    }
    if head.starts_with(b"glTF") {
        return Some(GLB);
    }
    if head.starts_with(b"ID3") {
        return Some(MP3);
    }
    mpeg_audio_frame(head)
}

/// The type an extension names, case-insensitively; `None` for names without a known one.
pub fn by_extension(filename: &str) -> Option<MediaType> {
    let (_, extension) = filename.rsplit_once('.')?;
    let extension = extension.to_ascii_lowercase();
    KNOWN
        .iter()
        .find(|m| m.extension == extension && *m != &UNKNOWN)
        .or_else(|| {
            ALIASES
                .iter()
                .find(|(alias, _)| *alias == extension)
                .map(|(_, m)| m)
        })
        .copied()
}

/// The type a MIME type names (parameters such as `; charset=` ignored, case-insensitively);
/// the first of [`KNOWN`] where several share one (`audio/ogg` is Ogg, not Opus). `None` for
/// `application/octet-stream` and anything unknown.
pub fn by_content_type(content_type: &str) -> Option<MediaType> {
    let essence = |text: &str| {
        text.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    let wanted = essence(content_type);
    KNOWN
        .iter()
        .find(|m| essence(m.content_type) == wanted && m.content_type != UNKNOWN.content_type)
        .copied()
}

/// Whether `extension` is one a storage key may end with (one of [`KNOWN`]).
pub fn is_key_extension(extension: &str) -> bool {
    KNOWN.iter().any(|m| m.extension == extension)
}

/// The MIME type to serve a stored key with, from its extension; `application/octet-stream`
/// for anything unknown. Types that a browser would run as a page (HTML, SVG) never come out.
pub fn content_type_for_key(key: &str) -> &'static str {
    key.rsplit_once('.')
        .and_then(|(_, extension)| KNOWN.iter().find(|m| m.extension == extension))
        .map_or(UNKNOWN.content_type, |m| m.content_type)
}

/// WebM and Matroska share the EBML container; the header's `DocType` tells them apart.
fn matroska_flavour(head: &[u8]) -> MediaType {
    match ebml_doc_type(head) {
        Some(b"webm") => WEBM,
        _ => MKV,
    }
}

/// The `DocType` (element ID 0x4282, without zero padding) of the EBML header that starts
/// `head`. The header's elements are walked, since a muxer may write each size in one to eight
/// bytes: the DocType can sit well past the first few dozen bytes.
fn ebml_doc_type(head: &[u8]) -> Option<&[u8]> {
    // Past the header's own ID (0x1A45DFA3): its size, then its child elements.
    let rest = head.get(4..)?;
    let (size, size_len) = ebml_vint(rest)?;
    let body = rest.get(size_len..)?;
    let body = &body[..body.len().min(usize::try_from(size).unwrap_or(usize::MAX))];
    let mut at = 0;
    while at < body.len() {
        let id_len = body[at].leading_zeros() as usize + 1;
        let id = body.get(at..at + id_len).filter(|_| id_len <= 4)?;
        let (len, len_len) = ebml_vint(body.get(at + id_len..)?)?;
        let start = at + id_len + len_len;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        if id == [0x42, 0x82] {
            let value = body.get(start..end)?;
            let unpadded = value
                .iter()
                .rposition(|&b| b != 0)
                .map_or(0, |last| last + 1);
            return Some(&value[..unpadded]);
        }
        at = end;
    }
    None
}

/// An EBML variable-length integer at the start of `bytes`: its value (without the length
/// marker) and its length, 1 to 8 bytes. The reserved all-ones value ("unknown size") comes back
/// as `u64::MAX`.
pub(crate) fn ebml_vint(bytes: &[u8]) -> Option<(u64, usize)> {
    let first = *bytes.first()?;
    let len = first.leading_zeros() as usize + 1;
    let raw = bytes.get(..len).filter(|_| len <= 8)?;
    let marker_free = first & 0xffu8.checked_shr(len as u32).unwrap_or(0);
    let value = raw[1..].iter().fold(u64::from(marker_free), |value, &b| {
        value << 8 | u64::from(b)
    });
    let unknown = (1u64 << (7 * len)) - 1;
    Some((if value == unknown { u64::MAX } else { value }, len))
}

/// An Ogg stream's first page names its codec right after the page header.
fn ogg_flavour(head: &[u8]) -> MediaType {
    let first_packet = head.get(28..).unwrap_or_default();
    if first_packet.starts_with(b"OpusHead") {
        OPUS
    } else if first_packet.starts_with(b"\x80theora") {
        OGV
    } else {
        OGG
    }
}

/// MP3 (MPEG audio layer III, II or I) or AAC from an ADTS frame header at the very start.
fn mpeg_audio_frame(head: &[u8]) -> Option<MediaType> {
    let (&[sync, flags, rates], _) = head.split_first_chunk::<3>()?;
    if sync != 0xff || flags & 0xe0 != 0xe0 {
        return None;
    }
    let layer = (flags >> 1) & 0b11;
    let version = (flags >> 3) & 0b11;
    if layer == 0 {
        // ADTS: MPEG version bit, layer 00; sampling frequency index 13..15 is invalid.
        return (version & 0b10 == 0b10 && (rates >> 2) & 0x0f < 13).then_some(AAC);
    }
    // MPEG audio: version 01 is reserved; bitrate index 1111 and sample rate 11 are invalid.
    let valid = version != 0b01 && rates >> 4 != 0x0f && (rates >> 2) & 0b11 != 0b11;
    valid.then_some(MP3)
}

/// Width and height of a picture from its first bytes: PNG, JPEG, WebP and GIF headers.
pub fn image_dimensions(head: &[u8]) -> Option<(u32, u32)> {
    let size = match sniff(head)? {
        PNG => {
            if head.get(12..16)? != b"IHDR" {
                return None;
            }
            let be32 = |at: usize| Some(u32::from_be_bytes(*head.get(at..)?.first_chunk()?));
            Some((be32(16)?, be32(20)?))
        }
        JPEG => crate::image::jpeg_dimensions(head),
        WEBP => crate::image::webp_dimensions(head),
        GIF => crate::image::gif_dimensions(head),
        _ => None,
    }?;
    (size.0 > 0 && size.1 > 0).then_some(size)
}

/// Width and height of the file at `path` of type `media`, where cheap: image headers, and the
/// first video track's `tkhd` for MP4 and MOV. `None` for sound, models and anything unreadable.
pub fn file_dimensions(path: &Path, media: MediaType, head: &[u8]) -> Option<(u32, u32)> {
    match media.kind {
        Kind::Image => image_dimensions(head),
        Kind::Video if matches!(media, MP4 | MOV) => {
            let mut file = File::open(path).ok()?;
            mp4_dimensions(&mut file).ok().flatten()
        }
        _ => None,
    }
}

/// Largest `moov` box read into memory to find the track headers; real ones are a few MB even
/// for long videos.
const MAX_MOOV_BYTES: u64 = 64 * 1024 * 1024;

/// The presentation size of the first track with one (the video track), from its `tkhd` box.
///
/// Walks the top-level boxes with seeks (the `moov` box may come after gigabytes of `mdat`),
/// reads `moov` only, and walks `trak` boxes inside it. `Ok(None)` when no track has a size.
pub fn mp4_dimensions(file: &mut (impl Read + Seek)) -> io::Result<Option<(u32, u32)>> {
    let len = file.seek(SeekFrom::End(0))?;
    let mut at = 0u64;
    while at + 8 <= len {
        file.seek(SeekFrom::Start(at))?;
        let mut header = [0u8; 16];
        let got = read_up_to(file, &mut header)?;
        let Some((kind, header_len, size)) = box_header(&header[..got], len - at) else {
            return Ok(None);
        };
        if &kind == b"moov" {
            let body_len = size - header_len;
            if body_len > MAX_MOOV_BYTES {
                return Ok(None);
            }
            file.seek(SeekFrom::Start(at + header_len))?;
            let mut moov = vec![0u8; body_len as usize];
            file.read_exact(&mut moov)?;
            return Ok(tracks_size(&moov));
        }
        at += size;
    }
    Ok(None)
}

/// Reads until `buffer` is full or the input ends; returns how many bytes were read.
fn read_up_to(reader: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// An ISO-BMFF box header: its type, the header's length and the whole box's size (at most
/// `remaining`, 0 meaning "to the end"). `None` if the header is cut short or impossible.
pub(crate) fn box_header(bytes: &[u8], remaining: u64) -> Option<([u8; 4], u64, u64)> {
    let size32 = u32::from_be_bytes(*bytes.first_chunk::<4>()?);
    let kind: [u8; 4] = *bytes.get(4..)?.first_chunk::<4>()?;
    let (header_len, size) = match size32 {
        0 => (8, remaining),
        1 => (16, u64::from_be_bytes(*bytes.get(8..)?.first_chunk::<8>()?)),
        n => (8, u64::from(n)),
    };
    (size >= header_len && size <= remaining).then_some((kind, header_len, size))
}

/// The boxes directly inside `body`, as `(type, contents)`.
fn children(body: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let rest = body.get(at..)?;
        let (kind, header_len, size) = box_header(rest, rest.len() as u64)?;
        let contents = rest.get(header_len as usize..size as usize)?;
        at += size as usize;
        Some((kind, contents))
    })
}

/// The first non-zero width and height among the `trak` boxes of a `moov` body.
fn tracks_size(moov: &[u8]) -> Option<(u32, u32)> {
    children(moov)
        .filter(|(kind, _)| kind == b"trak")
        .flat_map(|(_, trak)| children(trak).filter(|(kind, _)| kind == b"tkhd"))
        .find_map(|(_, tkhd)| tkhd_size(tkhd))
}

/// Width and height (16.16 fixed point, integer part) at the end of a `tkhd` box.
fn tkhd_size(tkhd: &[u8]) -> Option<(u32, u32)> {
    // version 0: 4 flags + 20 (times, id, duration) + 8 + 8 + 36 (matrix) = 76; version 1: 88.
    let at = match tkhd.first()? {
        0 => 76,
        1 => 88,
        _ => return None,
    };
    let fixed = |at: usize| Some(u32::from_be_bytes(*tkhd.get(at..)?.first_chunk::<4>()?) >> 16);
    let size = (fixed(at)?, fixed(at + 4)?);
    (size.0 > 0 && size.1 > 0).then_some(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// An ISO-BMFF box.
    fn bmff(kind: &[u8; 4], contents: &[u8]) -> Vec<u8> {
        let mut out = ((contents.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(contents);
        out
    }

    /// A `tkhd` box of `version` with a 16.16 width and height.
    fn tkhd(version: u8, width: u32, height: u32) -> Vec<u8> {
        let mut contents = vec![version, 0, 0, 3];
        contents.resize(if version == 0 { 76 } else { 88 }, 0);
        contents.extend((width << 16).to_be_bytes());
        contents.extend((height << 16).to_be_bytes());
        bmff(b"tkhd", &contents)
    }

    /// An MP4 like ffmpeg writes without `-movflags faststart`: `ftyp`, a big `mdat`, then
    /// `moov` with an audio track (no size) before the video track.
    fn mp4(brand: &[u8; 4], tkhd_version: u8) -> Vec<u8> {
        let mut out = bmff(
            b"ftyp",
            &[brand.as_slice(), &[0, 0, 2, 0], b"isomiso2"].concat(),
        );
        out.extend(bmff(b"free", &[]));
        out.extend(bmff(b"mdat", &vec![0x55; 100_000]));
        let audio = bmff(b"trak", &tkhd(0, 0, 0));
        let video = bmff(
            b"trak",
            &[tkhd(tkhd_version, 832, 480), bmff(b"mdia", &[1, 2, 3])].concat(),
        );
        out.extend(bmff(
            b"moov",
            &[bmff(b"mvhd", &[0; 100]), audio, video].concat(),
        ));
        out
    }

    fn riff(form: &[u8; 4]) -> Vec<u8> {
        [b"RIFF".as_slice(), &[0x24, 0, 0, 0], form, b"fmt "].concat()
    }

    #[test]
    fn every_format_is_recognised_by_its_bytes_whatever_its_name() {
        let ebml = |doc_type: &[u8]| {
            [
                &[
                    0x1a, 0x45, 0xdf, 0xa3, 0x9f, 0x42, 0x86, 0x81, 0x01, 0x42, 0x82, 0x84,
                ],
                doc_type,
                &[0x42, 0x87, 0x81, 0x04],
            ]
            .concat()
        };
        let ogg = |codec: &[u8]| [b"OggS".as_slice(), &[0; 24], codec].concat();
        let cases: Vec<(Vec<u8>, MediaType)> = vec![
            (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec(), PNG),
            (vec![0xff, 0xd8, 0xff, 0xe0], JPEG),
            (b"RIFF\0\0\0\0WEBPVP8 ".to_vec(), WEBP),
            (b"GIF89a\x01\0\x01\0".to_vec(), GIF),
            (b"GIF87a\x01\0\x01\0".to_vec(), GIF),
            (mp4(b"isom", 0), MP4),
            (mp4(b"mp42", 0), MP4),
            (mp4(b"qt  ", 0), MOV),
            (mp4(b"M4A ", 0), M4A),
            (mp4(b"avif", 0), AVIF),
            (bmff(b"mdat", &[0; 8]), MOV),
            (ebml(b"webm"), WEBM),
            (ebml(b"matroska"), MKV),
            (riff(b"WAVE"), WAV),
            (riff(b"AVI "), AVI),
            (b"ID3\x04\0\0\0\0\0\0".to_vec(), MP3),
            (vec![0xff, 0xfb, 0x90, 0x64], MP3),
            (vec![0xff, 0xf3, 0x48, 0xc4], MP3),
            (vec![0xff, 0xf1, 0x50, 0x80], AAC),
            (b"fLaC\0\0\0\x22".to_vec(), FLAC),
            (ogg(b"OpusHead"), OPUS),
            (ogg(b"\x01vorbis\0"), OGG),
            (ogg(b"\x80theora"), OGV),
            (b"glTF\x02\0\0\0".to_vec(), GLB),
        ];
        for (bytes, want) in cases {
            assert_eq!(sniff(&bytes), Some(want), "{:02x?}", &bytes[..8]);
            assert_eq!(identify(&bytes, "ComfyUI_00001_.png"), want);
        }
    }

    #[test]
    fn webm_is_told_from_matroska_by_the_doc_type_wherever_the_header_puts_it() {
        // Every size in eight bytes, as some muxers write them: the DocType starts 80 bytes in.
        let element = |id: &[u8], value: &[u8]| {
            let mut out = id.to_vec();
            out.push(0x01);
            out.extend_from_slice(&(value.len() as u64).to_be_bytes()[1..]);
            out.extend_from_slice(value);
            out
        };
        let file = |doc_type: &[u8]| {
            let mut header = Vec::new();
            for id in [[0x42, 0x86], [0x42, 0xf7], [0x42, 0xf2], [0x42, 0xf3]] {
                header.extend(element(&id, &1u32.to_be_bytes()));
            }
            header.extend(element(&[0x42, 0x82], doc_type));
            header.extend(element(&[0x42, 0x87], &[4]));
            let mut out = element(&[0x1a, 0x45, 0xdf, 0xa3], &header);
            // A Segment of unknown size whose contents mention the other name.
            out.extend_from_slice(&[0x18, 0x53, 0x80, 0x67, 0x01, 0xff, 0xff, 0xff, 0xff]);
            out.extend_from_slice(&[0xff, 0xff, 0xff]);
            out.extend_from_slice(b"title: webm or matroska");
            out
        };
        assert_eq!(sniff(&file(b"webm")), Some(WEBM));
        assert_eq!(sniff(&file(b"webm\0\0")), Some(WEBM), "zero padding");
        assert_eq!(sniff(&file(b"matroska")), Some(MKV));
        // A header cut short or of unreadable shape is still some Matroska.
        assert_eq!(sniff(&file(b"webm")[..40]), Some(MKV));
        assert_eq!(sniff(&[0x1a, 0x45, 0xdf, 0xa3, 0x00]), Some(MKV));
        assert_eq!(sniff(&[0x1a, 0x45, 0xdf, 0xa3, 0x81, 0x00]), Some(MKV));
    }

    #[test]
    fn unrecognised_bytes_fall_back_to_the_extension_then_to_octet_stream() {
        assert_eq!(
            identify(b"solid cube", "mesh.STL").content_type,
            "model/stl"
        );
        assert_eq!(identify(b"{}", "scene.gltf").kind, Kind::Model);
        assert_eq!(identify(b"\0\0\0\0", "clip.jpeg"), JPEG);
        assert_eq!(identify(b"text", "notes.txt").extension, "txt");
        // HTML is never served as such: it could run scripts on the gateway's origin.
        assert_eq!(identify(b"<html>", "page.html"), UNKNOWN);
        assert_eq!(identify(b"", "noextension"), UNKNOWN);
        assert_eq!(UNKNOWN.kind.as_str(), "other");
        // Almost-signatures are not enough.
        assert_eq!(sniff(&[0xff, 0xd8]), None);
        assert_eq!(sniff(&[0xff, 0xe8, 0x00]), None, "reserved MPEG version");
        assert_eq!(sniff(b"RIFF\0\0\0\0XXXX"), None);
        assert_eq!(sniff(&[]), None);
    }

    #[test]
    fn keys_take_known_extensions_and_are_served_with_their_type() {
        for m in KNOWN {
            assert!(is_key_extension(m.extension), "{}", m.extension);
            let key = format!("job/0.{}", m.extension);
            assert_eq!(
                content_type_for_key(&key),
                by_extension(&key).unwrap_or(UNKNOWN).content_type
            );
        }
        assert_eq!(content_type_for_key("j/0.mp4"), "video/mp4");
        assert_eq!(content_type_for_key("j/0.gif"), "image/gif");
        assert_eq!(content_type_for_key("j/0.wav"), "audio/wav");
        assert_eq!(content_type_for_key("j/0.svg"), "application/octet-stream");
        for bad in ["html", "svg", "exe", "", "PNG", "png/"] {
            assert!(!is_key_extension(bad), "{bad}");
        }
    }

    #[test]
    fn picture_sizes_come_from_headers() {
        let png = [
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".as_slice(),
            &832u32.to_be_bytes(),
            &480u32.to_be_bytes(),
        ]
        .concat();
        assert_eq!(image_dimensions(&png), Some((832, 480)));
        assert_eq!(image_dimensions(&png[..20]), None, "cut short");
        assert_eq!(
            image_dimensions(b"GIF89a\x80\x02\xe0\x01"),
            Some((640, 480))
        );
        assert_eq!(image_dimensions(b"GIF89a\0\0\0\0"), None, "0x0 is unknown");
        assert_eq!(image_dimensions(b"fLaC"), None);
    }

    #[test]
    fn video_size_comes_from_the_video_tracks_header_after_the_media_data() {
        for version in [0, 1] {
            let bytes = mp4(b"isom", version);
            let size = mp4_dimensions(&mut Cursor::new(&bytes)).expect("in memory");
            assert_eq!(size, Some((832, 480)), "tkhd version {version}");
        }
        // No moov (cut short), or boxes that lie about their size: unknown, never a panic.
        let mut cut = mp4(b"isom", 0);
        cut.truncate(50_000);
        assert_eq!(mp4_dimensions(&mut Cursor::new(&cut)).expect("mem"), None);
        let mut lying = bmff(b"ftyp", b"isom");
        lying.extend([0xff, 0xff, 0xff, 0xf0, b'm', b'o', b'o', b'v', 0, 0]);
        assert_eq!(mp4_dimensions(&mut Cursor::new(&lying)).expect("mem"), None);
        let mut tiny = bmff(b"ftyp", b"isom");
        tiny.extend([0, 0, 0, 1, b'm', b'd', b'a', b't', 0, 0, 0, 0, 0, 0, 0, 2]);
        assert_eq!(mp4_dimensions(&mut Cursor::new(&tiny)).expect("mem"), None);
        let whole = mp4(b"isom", 1);
        for cut in (0..whole.len())
            .step_by(997)
            .chain(whole.len() - 300..whole.len())
        {
            let size = mp4_dimensions(&mut Cursor::new(&whole[..cut])).expect("mem");
            assert_eq!(size, None, "cut at {cut}");
        }
    }

    #[test]
    fn a_content_type_names_its_type_once() {
        assert_eq!(by_content_type("image/jpeg"), Some(JPEG));
        assert_eq!(by_content_type("Image/WebP; q=1"), Some(WEBP));
        assert_eq!(by_content_type("audio/ogg"), Some(OGG));
        assert_eq!(by_content_type("application/octet-stream"), None);
        assert_eq!(by_content_type("text/html"), None);
    }
}
