//! MP4, MOV and M4A: ComfyUI's `SaveVideo` (PyAV with ffmpeg's `use_metadata_tags`) writes the
//! prompt and each `extra_pnginfo` entry as `mdta` metadata: `moov/udta/meta` holding `hdlr`,
//! `keys` (`prompt`, `workflow`, `encoder`) and `ilst` (their values). Other writers put
//! iTunes-style `ilst` items or QuickTime `©xyz` atoms in the same places.
//!
//! Every `udta` and `meta` box directly under `moov` or under one of its `trak`s becomes a `free`
//! box of the same size with a zeroed payload. Nothing moves, so the chunk offsets of the sample
//! tables (`stco`/`co64`) still point at the same sample bytes whether `moov` comes before or
//! after `mdat`, and players skip `free` boxes. Top-level `meta` (HEIF, AVIF) is not touched.

use std::fs::File;

use super::{StripError, read_at, write_at, zero_at};
use crate::media;

fn malformed(offset: u64, reason: &'static str) -> StripError {
    StripError::Malformed {
        format: "MP4",
        offset,
        reason,
    }
}

/// One box: where it starts, how long its header is, its whole size and its type.
struct BoxHeader {
    at: u64,
    header_len: u64,
    size: u64,
    kind: [u8; 4],
}

impl BoxHeader {
    fn end(&self) -> u64 {
        self.at + self.size
    }

    fn payload_at(&self) -> u64 {
        self.at + self.header_len
    }
}

/// Reads the header of the box at `at`, which must end by `limit` (its parent's end), and reads
/// it with [`media::box_header`], the one ISO-BMFF header parser.
fn read_box(file: &mut File, at: u64, limit: u64) -> Result<BoxHeader, StripError> {
    let remaining = limit.saturating_sub(at);
    if remaining < 8 {
        return Err(malformed(at, "a box header is cut short"));
    }
    let mut header = [0u8; 16];
    let header = &mut header[..remaining.min(16) as usize];
    read_at(file, at, header)?;
    let (kind, header_len, size) = media::box_header(header, remaining).ok_or_else(|| {
        malformed(
            at,
            "a box's size is cut short, smaller than its header, or past its parent or the file",
        )
    })?;
    Ok(BoxHeader {
        at,
        header_len,
        size,
        kind,
    })
}

/// The boxes directly inside `parent` (from `start` to `end`).
fn children(file: &mut File, start: u64, end: u64) -> Result<Vec<BoxHeader>, StripError> {
    let mut boxes = Vec::new();
    let mut at = start;
    while at < end {
        let child = read_box(file, at, end)?;
        at = child.end();
        boxes.push(child);
    }
    Ok(boxes)
}

/// Blanks every metadata box under `moov` and its tracks; returns the bytes blanked.
pub(super) fn strip(file: &mut File) -> Result<u64, StripError> {
    let len = file.metadata()?.len();
    let mut blanked = 0;
    for top in children(file, 0, len)? {
        if &top.kind != b"moov" {
            continue;
        }
        for child in children(file, top.payload_at(), top.end())? {
            match &child.kind {
                b"udta" | b"meta" => blanked += blank(file, &child)?,
                b"trak" => {
                    for part in children(file, child.payload_at(), child.end())? {
                        if matches!(&part.kind, b"udta" | b"meta") {
                            blanked += blank(file, &part)?;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(blanked)
}

/// Turns `header`'s box into a `free` box of the same size with a zeroed payload.
fn blank(file: &mut File, header: &BoxHeader) -> Result<u64, StripError> {
    write_at(file, header.at + 4, b"free")?;
    let payload = header.size - header.header_len;
    zero_at(file, header.payload_at(), payload)?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Scratch, contains};

    fn bmff(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut out = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(payload);
        out
    }

    fn full(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut body = vec![0; 4];
        body.extend_from_slice(payload);
        bmff(kind, &body)
    }

    /// `moov/udta/meta` as ffmpeg's `use_metadata_tags` writes it.
    fn mdta_udta() -> Vec<u8> {
        let mut hdlr = vec![0; 4];
        hdlr.extend_from_slice(b"mdta");
        hdlr.extend_from_slice(&[0; 13]);
        let names = ["prompt", "workflow", "encoder"];
        let mut keys = (names.len() as u32).to_be_bytes().to_vec();
        for name in names {
            keys.extend(bmff(b"mdta", name.as_bytes()));
        }
        let values = [
            r#"{"3": {"class_type": "SaveVideo", "inputs": {}}}"#,
            r#"{"nodes": [{"type": "SaveVideo"}]}"#,
            "Lavf61.7.100",
        ];
        let mut ilst = Vec::new();
        for (index, value) in values.iter().enumerate() {
            let mut data = 1u32.to_be_bytes().to_vec();
            data.extend_from_slice(&[0; 4]);
            data.extend_from_slice(value.as_bytes());
            ilst.extend(bmff(
                &(index as u32 + 1).to_be_bytes(),
                &bmff(b"data", &data),
            ));
        }
        let mut meta = full(b"hdlr", &hdlr[4..]);
        meta.extend(full(b"keys", &keys));
        meta.extend(bmff(b"ilst", &ilst));
        bmff(b"udta", &full(b"meta", &meta))
    }

    /// `moov` with a track whose `stco` points at `offsets`, and ComfyUI's metadata.
    fn moov(offsets: &[u32]) -> Vec<u8> {
        let mut stco = (offsets.len() as u32).to_be_bytes().to_vec();
        for offset in offsets {
            stco.extend(offset.to_be_bytes());
        }
        let stbl = bmff(b"stbl", &full(b"stco", &stco));
        let mdia = bmff(b"mdia", &bmff(b"minf", &stbl));
        let mut trak = full(b"tkhd", &[0; 80]);
        trak.extend(mdia);
        trak.extend(bmff(b"udta", &bmff(b"\xa9cmt", b"track workflow")));
        let mut moov = full(b"mvhd", &[0; 96]);
        moov.extend(bmff(b"trak", &trak));
        moov.extend(mdta_udta());
        bmff(b"moov", &moov)
    }

    const SAMPLES: [&[u8]; 2] = [b"first sample bytes", b"second sample"];

    /// An MP4 with `moov` after `mdat` (ffmpeg's default) or before it (`faststart`).
    fn comfyui_mp4(moov_first: bool) -> Vec<u8> {
        let ftyp = bmff(b"ftyp", b"isom\0\0\x02\0isomiso2avc1mp41");
        let mdat_payload = SAMPLES.concat();
        let mdat = bmff(b"mdat", &mdat_payload);
        let moov_len = moov(&[0, 0]).len();
        let mdat_at = ftyp.len() + if moov_first { moov_len } else { 0 };
        let first = (mdat_at + 8) as u32;
        let offsets = [first, first + SAMPLES[0].len() as u32];
        let mut out = ftyp;
        if moov_first {
            out.extend(moov(&offsets));
            out.extend(mdat);
        } else {
            out.extend(mdat);
            out.extend(moov(&offsets));
        }
        out
    }

    /// The box types of the tree, depth first, and the `stco` offsets.
    fn tree(bytes: &[u8]) -> (Vec<String>, Vec<u32>) {
        fn walk(
            bytes: &[u8],
            start: usize,
            end: usize,
            out: &mut Vec<String>,
            stco: &mut Vec<u32>,
        ) {
            let mut at = start;
            while at < end {
                let size = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4")) as usize;
                let kind = &bytes[at + 4..at + 8];
                out.push(String::from_utf8_lossy(kind).into_owned());
                assert!(size >= 8 && at + size <= end, "box at {at} in bounds");
                match kind {
                    b"moov" | b"trak" | b"mdia" | b"minf" | b"stbl" => {
                        walk(bytes, at + 8, at + size, out, stco)
                    }
                    b"stco" => {
                        let count =
                            u32::from_be_bytes(bytes[at + 12..at + 16].try_into().expect("4"));
                        for i in 0..count as usize {
                            let p = at + 16 + 4 * i;
                            stco.push(u32::from_be_bytes(bytes[p..p + 4].try_into().expect("4")));
                        }
                    }
                    _ => {}
                }
                at += size;
            }
        }
        let (mut types, mut stco) = (Vec::new(), Vec::new());
        walk(bytes, 0, bytes.len(), &mut types, &mut stco);
        (types, stco)
    }

    #[test]
    fn metadata_boxes_become_free_and_offsets_still_point_at_the_samples() {
        for moov_first in [false, true] {
            let original = comfyui_mp4(moov_first);
            let file = Scratch::new("a.mp4", &original);
            let blanked =
                super::super::strip_in_place(&file.path, crate::media::MP4).expect("valid");
            assert!(blanked > 0);
            let stripped = file.bytes();
            assert_eq!(stripped.len(), original.len());
            for needle in [&b"prompt"[..], b"workflow", b"class_type", b"SaveVideo"] {
                assert!(!contains(&stripped, needle), "moov first: {moov_first}");
            }
            let (types, offsets) = tree(&stripped);
            let (before, offsets_before) = tree(&original);
            assert_eq!(offsets, offsets_before);
            for (offset, sample) in offsets.iter().zip(SAMPLES) {
                let at = *offset as usize;
                assert_eq!(&stripped[at..at + sample.len()], sample);
            }
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
            assert!(types.contains(&"stco".to_string()));
            assert_eq!(
                super::super::strip_in_place(&file.path, crate::media::MP4).expect("valid"),
                0,
                "nothing left"
            );
        }
    }

    #[test]
    fn a_64_bit_box_and_a_box_to_the_end_of_the_file_are_understood() {
        let mut original = bmff(b"ftyp", b"isom");
        let udta = bmff(b"udta", b"prompt secret");
        let mut moov = 1u32.to_be_bytes().to_vec();
        moov.extend_from_slice(b"moov");
        moov.extend(((16 + udta.len()) as u64).to_be_bytes());
        moov.extend(&udta);
        original.extend(moov);
        original.extend(0u32.to_be_bytes());
        original.extend_from_slice(b"mdat");
        original.extend_from_slice(b"samples to the end");
        let file = Scratch::new("b.mp4", &original);
        super::super::strip_in_place(&file.path, crate::media::MOV).expect("valid");
        let stripped = file.bytes();
        assert!(!contains(&stripped, b"secret"));
        assert!(contains(&stripped, b"samples to the end"));
        assert_eq!(stripped.len(), original.len());
    }

    #[test]
    fn broken_trees_are_errors() {
        let whole = comfyui_mp4(true);
        let mdat_at = whole.len() - SAMPLES.concat().len() - 8;
        for len in [5, 12, 40, mdat_at - 3] {
            let file = Scratch::new("c.mp4", &whole[..len]);
            let error =
                super::super::strip_in_place(&file.path, crate::media::MP4).expect_err("cut short");
            assert!(error.to_string().starts_with("malformed MP4"), "{error}");
        }
        let mut tiny = whole.clone();
        tiny[..4].copy_from_slice(&3u32.to_be_bytes());
        let file = Scratch::new("d.mp4", &tiny);
        assert!(super::super::strip_in_place(&file.path, crate::media::MP4).is_err());
    }
}
