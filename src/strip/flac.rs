//! FLAC: ComfyUI's `SaveAudio` writes the prompt and each `extra_pnginfo` entry (the workflow)
//! as Vorbis comments (`prompt={...}`, `workflow={...}`), beside ffmpeg's `encoder=...`.
//!
//! Every `VORBIS_COMMENT` block keeps its vendor string (required by the format; it names the
//! encoding library) and loses all its comments; the bytes freed become a `PADDING` block right
//! after it, so the metadata blocks end where they did and every audio frame stays in place.
//! `STREAMINFO`, seek tables, pictures and application blocks are not touched.

use std::fs::File;

use super::{StripError, read_at, write_at, zero_at};

const VORBIS_COMMENT: u8 = 4;
const PADDING: u8 = 1;

fn malformed(offset: u64, reason: &'static str) -> StripError {
    StripError::Malformed {
        format: "FLAC",
        offset,
        reason,
    }
}

/// Strips every Vorbis comment block of the FLAC stream in `file`; returns the bytes blanked.
pub(super) fn strip(file: &mut File) -> Result<u64, StripError> {
    let len = file.metadata()?.len();
    let mut magic = [0u8; 4];
    if len < 4 {
        return Err(malformed(0, "the file is shorter than its signature"));
    }
    read_at(file, 0, &mut magic)?;
    if magic != *b"fLaC" {
        return Err(malformed(0, "the file lacks the fLaC signature"));
    }
    let mut at = 4u64;
    let mut blanked = 0;
    loop {
        if at + 4 > len {
            return Err(malformed(at, "a metadata block header is cut short"));
        }
        let mut header = [0u8; 4];
        read_at(file, at, &mut header)?;
        let last = header[0] & 0x80 != 0;
        let kind = header[0] & 0x7f;
        let size = u64::from(u32::from_be_bytes([0, header[1], header[2], header[3]]));
        if kind == 127 {
            return Err(malformed(at, "a metadata block has the invalid type 127"));
        }
        let end = at + 4 + size;
        if end > len {
            return Err(malformed(
                at,
                "a metadata block runs past the end of the file",
            ));
        }
        if kind == VORBIS_COMMENT {
            blanked += strip_comments(file, at, size, last)?;
        }
        at = end;
        if last {
            return Ok(blanked);
        }
    }
}

fn le32(bytes: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(*bytes.get(at..)?.first_chunk::<4>()?) as usize)
}

/// Rewrites the comment block at `at` (whose data is `size` bytes) as its vendor string and no
/// comments, followed by a `PADDING` block over the rest; returns the bytes freed.
fn strip_comments(file: &mut File, at: u64, size: u64, last: bool) -> Result<u64, StripError> {
    let data_at = at + 4;
    let mut body = vec![0u8; size as usize];
    read_at(file, data_at, &mut body)?;
    let bad = |reason| malformed(data_at, reason);
    let vendor_len = le32(&body, 0).ok_or(bad("the vendor string's length is cut short"))?;
    let vendor_end = vendor_len
        .checked_add(4)
        .filter(|&end| end + 4 <= body.len())
        .ok_or(bad("the vendor string runs past its block"))?;
    let count = le32(&body, vendor_end).ok_or(bad("the comment count is cut short"))?;
    let mut p = vendor_end + 4;
    for _ in 0..count {
        let n = le32(&body, p).ok_or(bad("a comment's length is cut short"))?;
        p = (p + 4)
            .checked_add(n)
            .filter(|&end| end <= body.len())
            .ok_or(bad("a comment runs past its block"))?;
    }
    if count == 0 && p == body.len() {
        return Ok(0);
    }
    let kept = vendor_end + 4;
    // At least one comment (4 bytes of length) or stray bytes go: room for a padding header.
    let freed = body.len() - kept;
    if freed < 4 {
        // Fewer than 4 stray bytes after an empty list: zero them in place.
        zero_at(file, data_at + kept as u64, freed as u64)?;
        return Ok(freed as u64);
    }
    let mut out = Vec::with_capacity(kept + 8);
    out.push(VORBIS_COMMENT);
    out.extend_from_slice(&(kept as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&body[..vendor_end]);
    out.extend_from_slice(&0u32.to_le_bytes());
    let padding = (freed - 4) as u32;
    out.push(if last { 0x80 | PADDING } else { PADDING });
    out.extend_from_slice(&padding.to_be_bytes()[1..]);
    write_at(file, at, &out)?;
    zero_at(file, at + out.len() as u64, u64::from(padding))?;
    Ok(freed as u64)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Scratch, contains};
    use super::*;

    fn block(kind: u8, last: bool, data: &[u8]) -> Vec<u8> {
        let mut out = vec![if last { 0x80 | kind } else { kind }];
        out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(data);
        out
    }

    fn comments(vendor: &str, entries: &[&str]) -> Vec<u8> {
        let mut out = (vendor.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(vendor.as_bytes());
        out.extend((entries.len() as u32).to_le_bytes());
        for entry in entries {
            out.extend((entry.len() as u32).to_le_bytes());
            out.extend_from_slice(entry.as_bytes());
        }
        out
    }

    /// Two fake frames, each starting with FLAC's frame sync code.
    const FRAMES: &[u8] = b"\xff\xf8\x69\x08\x00\x17frame one\xff\xf8\x69\x08\x01\x17frame two";

    /// A FLAC file as ffmpeg writes it for ComfyUI's SaveAudio: STREAMINFO, the comments,
    /// PADDING, then the frames.
    pub(crate) fn comfyui_flac() -> Vec<u8> {
        let mut out = b"fLaC".to_vec();
        out.extend(block(0, false, &[7; 34]));
        out.extend(block(
            VORBIS_COMMENT,
            false,
            &comments(
                "Lavf61.7.100",
                &[
                    r#"prompt={"1": {"class_type": "SineAudio", "inputs": {}}}"#,
                    r#"workflow={"nodes": [{"type": "SaveAudio"}]}"#,
                    "encoder=Lavf61.7.100",
                ],
            ),
        ));
        out.extend(block(PADDING, true, &[0; 16]));
        out.extend_from_slice(FRAMES);
        out
    }

    /// The metadata blocks as `(type, last, data)`, and the offset where the frames start.
    fn walk(bytes: &[u8]) -> (Vec<(u8, bool, Vec<u8>)>, usize) {
        assert_eq!(&bytes[..4], b"fLaC");
        let mut at = 4;
        let mut blocks = Vec::new();
        loop {
            let last = bytes[at] & 0x80 != 0;
            let size = u32::from_be_bytes([0, bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
            let data = bytes[at + 4..at + 4 + size as usize].to_vec();
            blocks.push((bytes[at] & 0x7f, last, data));
            at += 4 + size as usize;
            if last {
                return (blocks, at);
            }
        }
    }

    #[test]
    fn comments_go_and_stream_info_and_frames_stay_where_they_were() {
        let original = comfyui_flac();
        let file = Scratch::new("a.flac", &original);
        let blanked = super::super::strip_in_place(&file.path, crate::media::FLAC).expect("valid");
        let stripped = file.bytes();
        assert!(blanked > 0);
        assert_eq!(stripped.len(), original.len());
        for needle in [&b"prompt"[..], b"workflow", b"class_type", b"SineAudio"] {
            assert!(!contains(&stripped, needle));
        }
        let (blocks, frames_at) = walk(&stripped);
        let (before, frames_before) = walk(&original);
        assert_eq!(frames_at, frames_before);
        assert_eq!(&stripped[frames_at..], FRAMES);
        assert_eq!(blocks[0], before[0], "STREAMINFO untouched");
        assert_eq!(blocks[1].0, VORBIS_COMMENT);
        assert_eq!(blocks[1].2, comments("Lavf61.7.100", &[]));
        assert_eq!((blocks[2].0, blocks[2].1), (PADDING, false));
        assert!(blocks[2].2.iter().all(|&b| b == 0));
        assert_eq!(blocks[3], before[2], "the last block is still last");

        // Stripping again changes nothing.
        assert_eq!(
            super::super::strip_in_place(&file.path, crate::media::FLAC).expect("valid"),
            0
        );
        assert_eq!(file.bytes(), stripped);
    }

    #[test]
    fn a_comment_block_that_is_last_hands_the_flag_to_its_padding() {
        let mut original = b"fLaC".to_vec();
        original.extend(block(0, false, &[7; 34]));
        original.extend(block(VORBIS_COMMENT, true, &comments("v", &["prompt={}"])));
        original.extend_from_slice(FRAMES);
        let file = Scratch::new("b.flac", &original);
        super::super::strip_in_place(&file.path, crate::media::FLAC).expect("valid");
        let (blocks, frames_at) = walk(&file.bytes());
        let kinds: Vec<(u8, bool)> = blocks.iter().map(|b| (b.0, b.1)).collect();
        assert_eq!(
            kinds,
            [(0, false), (VORBIS_COMMENT, false), (PADDING, true)]
        );
        assert_eq!(&file.bytes()[frames_at..], FRAMES);
    }

    #[test]
    fn broken_files_are_errors_and_never_panics() {
        let whole = comfyui_flac();
        let frames_at = whole.len() - FRAMES.len();
        for len in 0..frames_at {
            let file = Scratch::new("c.flac", &whole[..len]);
            let result = super::super::strip_in_place(&file.path, crate::media::FLAC);
            assert!(result.is_err(), "cut at {len}");
        }
        let mut lying = whole.clone();
        // The vendor string claims more than its block holds.
        lying[4 + 4 + 34 + 4] = 0xff;
        let file = Scratch::new("d.flac", &lying);
        let error = super::super::strip_in_place(&file.path, crate::media::FLAC)
            .expect_err("a broken comment block");
        assert!(error.to_string().starts_with("malformed FLAC"), "{error}");
        assert_eq!(file.bytes(), lying, "a refused file is left as it was");
    }
}
