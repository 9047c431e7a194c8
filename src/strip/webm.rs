//! WebM and Matroska: ComfyUI's `SaveWEBM` (PyAV, ffmpeg's Matroska muxer) writes the prompt and
//! each `extra_pnginfo` entry as `SimpleTag`s (`PROMPT`, `WORKFLOW`) of a global `Tag` in the
//! segment's `Tags` element, which the `SeekHead` indexes.
//!
//! Every `Tags` element of the segment becomes an EBML `Void` element of the same size (zeroed),
//! and so does each `Seek` entry that pointed at one, so the index no longer names what is gone.
//! Nothing moves: clusters, cues and every other position stay valid. The top level of the
//! segment is walked element by element; where an element of unknown size (a live-muxed
//! cluster) stops the walk, the `Tags` the `SeekHead` points at are still found.

use std::fs::File;

use super::{StripError, read_at, write_at, zero_at};
use crate::media;

const EBML: u32 = 0x1A45_DFA3;
const SEGMENT: u32 = 0x1853_8067;
const SEEK_HEAD: u32 = 0x114D_9B74;
const SEEK: u32 = 0x4DBB;
const SEEK_ID: u32 = 0x53AB;
const SEEK_POSITION: u32 = 0x53AC;
const TAGS: u32 = 0x1254_C367;

/// The largest `SeekHead` read into memory (ffmpeg's are well under 1 KB).
const MAX_SEEK_HEAD: u64 = 1024 * 1024;

fn malformed(offset: u64, reason: &'static str) -> StripError {
    StripError::Malformed {
        format: "WebM",
        offset,
        reason,
    }
}

/// An element's header: its ID, where its data starts and how long it is (`None`: unknown).
struct Element {
    at: u64,
    id: u32,
    data_at: u64,
    size: Option<u64>,
}

impl Element {
    fn end(&self) -> Option<u64> {
        self.size.map(|size| self.data_at + size)
    }
}

/// An element ID at the start of `bytes` (1 to 4 bytes, its length marker kept, as IDs are
/// written) and its length.
fn element_id(bytes: &[u8]) -> Option<(u32, usize)> {
    let len = bytes.first()?.leading_zeros() as usize + 1;
    let raw = bytes.get(..len).filter(|_| len <= 4)?;
    Some((raw.iter().fold(0, |id, &b| id << 8 | u32::from(b)), len))
}

fn read_element(file: &mut File, at: u64, limit: u64) -> Result<Element, StripError> {
    let mut header = [0u8; 12];
    let n = (limit.saturating_sub(at)).min(12) as usize;
    if n < 2 {
        return Err(malformed(at, "an element header is cut short"));
    }
    read_at(file, at, &mut header[..n])?;
    let (id, id_len) =
        element_id(&header[..n]).ok_or(malformed(at, "an element ID is invalid or cut short"))?;
    let (size, size_len) = media::ebml_vint(&header[id_len..n])
        .ok_or(malformed(at, "an element size is invalid or cut short"))?;
    let data_at = at + (id_len + size_len) as u64;
    // `ebml_vint` gives the reserved all-ones size ("unknown") as `u64::MAX`.
    let size = (size != u64::MAX).then_some(size);
    if let Some(size) = size {
        if data_at.checked_add(size).is_none_or(|end| end > limit) {
            return Err(malformed(at, "an element runs past its parent or the file"));
        }
    }
    Ok(Element {
        at,
        id,
        data_at,
        size,
    })
}

/// Blanks every `Tags` element of the segment; returns the bytes blanked.
pub(super) fn strip(file: &mut File) -> Result<u64, StripError> {
    let len = file.metadata()?.len();
    let header = read_element(file, 0, len)?;
    if header.id != EBML {
        return Err(malformed(0, "the file lacks the EBML header"));
    }
    let segment_at = header
        .end()
        .ok_or(malformed(0, "the EBML header has no size"))?;
    let segment = read_element(file, segment_at, len)?;
    if segment.id != SEGMENT {
        return Err(malformed(
            segment_at,
            "the EBML header is not followed by a Segment",
        ));
    }
    let segment_end = segment.end().unwrap_or(len);
    let mut blanked = 0;
    let mut indexed = Vec::new();
    let mut at = segment.data_at;
    while at < segment_end {
        let element = read_element(file, at, segment_end)?;
        let Some(end) = element.end() else {
            break;
        };
        match element.id {
            TAGS => blanked += void(file, element.at, end)?,
            SEEK_HEAD => indexed.extend(tags_in_seek_head(file, &element, segment.data_at)?),
            _ => {}
        }
        at = end;
    }
    for (seek_at, seek_end, tags_at) in indexed {
        if tags_at < segment_end {
            let element = read_element(file, tags_at, segment_end)?;
            if let (TAGS, Some(end)) = (element.id, element.end()) {
                blanked += void(file, element.at, end)?;
            }
        }
        blanked += void(file, seek_at, seek_end)?;
    }
    Ok(blanked)
}

/// The `Seek` entries of a `SeekHead` that point at `Tags`: `(entry start, entry end, where the
/// `Tags` element is in the file)`.
fn tags_in_seek_head(
    file: &mut File,
    seek_head: &Element,
    segment_data: u64,
) -> Result<Vec<(u64, u64, u64)>, StripError> {
    let size = seek_head.size.unwrap_or(0);
    if size > MAX_SEEK_HEAD {
        return Err(malformed(seek_head.at, "the SeekHead is larger than 1 MiB"));
    }
    let end = seek_head.data_at + size;
    let mut found = Vec::new();
    let mut at = seek_head.data_at;
    while at < end {
        let seek = read_element(file, at, end)?;
        let seek_end = seek
            .end()
            .ok_or(malformed(at, "a Seek entry has no size"))?;
        if seek.id == SEEK {
            let (mut id, mut position) = (None, None);
            let mut p = seek.data_at;
            while p < seek_end {
                let field = read_element(file, p, seek_end)?;
                let field_end = field
                    .end()
                    .ok_or(malformed(p, "a Seek field has no size"))?;
                let len = (field_end - field.data_at) as usize;
                if len > 8 {
                    return Err(malformed(p, "a Seek field is longer than 8 bytes"));
                }
                let mut bytes = [0u8; 8];
                read_at(file, field.data_at, &mut bytes[..len])?;
                let value = bytes[..len]
                    .iter()
                    .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
                match field.id {
                    SEEK_ID => id = Some(value),
                    SEEK_POSITION => position = Some(value),
                    _ => {}
                }
                p = field_end;
            }
            if let (Some(id), Some(position)) = (id, position) {
                if id == u64::from(TAGS) {
                    found.push((at, seek_end, segment_data.saturating_add(position)));
                }
            }
        }
        at = seek_end;
    }
    Ok(found)
}

/// Turns the bytes from `at` to `end` (a whole element) into a zeroed `Void` element; returns
/// the bytes of data blanked (0 when it already was a zeroed `Void`).
fn void(file: &mut File, at: u64, end: u64) -> Result<u64, StripError> {
    let total = end - at;
    let header: Vec<u8> = if total >= 2 && total - 2 <= 126 {
        vec![0xEC, 0x80 | (total - 2) as u8]
    } else if total >= 9 {
        let mut h = vec![0xEC, 0x01];
        h.extend_from_slice(&(total - 9).to_be_bytes()[1..]);
        h
    } else {
        return Err(malformed(at, "an element is too small to become a Void"));
    };
    write_at(file, at, &header)?;
    let data = total - header.len() as u64;
    zero_at(file, at + header.len() as u64, data)?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Scratch, contains};

    /// An element with an 8-byte size.
    fn element(id: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut out = id.to_vec();
        out.push(0x01);
        out.extend_from_slice(&(payload.len() as u64).to_be_bytes()[1..]);
        out.extend_from_slice(payload);
        out
    }

    /// An element with a 1-byte size.
    fn small(id: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut out = id.to_vec();
        out.push(0x80 | payload.len() as u8);
        out.extend_from_slice(payload);
        out
    }

    fn tags() -> Vec<u8> {
        let mut simple = small(&[0x45, 0xA3], b"PROMPT");
        simple.extend(element(
            &[0x44, 0x87],
            br#"{"1": {"class_type": "SaveWEBM", "inputs": {}}}"#,
        ));
        let mut tag = small(&[0x63, 0xC0], b"");
        tag.extend(element(&[0x67, 0xC8], &simple));
        element(&[0x12, 0x54, 0xC3, 0x67], &element(&[0x73, 0x73], &tag))
    }

    /// A WebM as ffmpeg writes it: SeekHead (Info, Tracks, Tags), Info, Tracks, Tags, a
    /// Cluster; with `unknown_cluster` the cluster has an unknown size and Tags come after it.
    fn comfyui_webm(unknown_cluster: bool) -> (Vec<u8>, Vec<u8>) {
        let info = element(
            &[0x15, 0x49, 0xA9, 0x66],
            &small(&[0x2A, 0xD7, 0xB1], &[0x0F, 0x42, 0x40]),
        );
        let tracks = element(
            &[0x16, 0x54, 0xAE, 0x6B],
            &small(&[0xAE], &small(&[0xD7], &[1])),
        );
        let cluster_payload = b"cluster block bytes".to_vec();
        let seek = |id: &[u8], position: u32| {
            let mut entry = small(&[0x53, 0xAB], id);
            entry.extend(small(&[0x53, 0xAC], &position.to_be_bytes()));
            small(&[0x4D, 0xBB], &entry)
        };
        // Positions are relative to the segment's data; the SeekHead's size is fixed below.
        let seek_head_len = element(
            &[0x11, 0x4D, 0x9B, 0x74],
            &[seek(&[0; 4], 0), seek(&[0; 4], 0), seek(&[0; 4], 0)].concat(),
        )
        .len() as u32;
        let info_at = seek_head_len;
        let tracks_at = info_at + info.len() as u32;
        let cluster = if unknown_cluster {
            let mut c = vec![
                0x1F, 0x43, 0xB6, 0x75, 0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
            ];
            c.extend(&cluster_payload);
            c
        } else {
            element(&[0x1F, 0x43, 0xB6, 0x75], &cluster_payload)
        };
        let tags_at = if unknown_cluster {
            tracks_at + tracks.len() as u32 + cluster.len() as u32
        } else {
            tracks_at + tracks.len() as u32
        };
        let seek_head = element(
            &[0x11, 0x4D, 0x9B, 0x74],
            &[
                seek(&[0x15, 0x49, 0xA9, 0x66], info_at),
                seek(&[0x16, 0x54, 0xAE, 0x6B], tracks_at),
                seek(&[0x12, 0x54, 0xC3, 0x67], tags_at),
            ]
            .concat(),
        );
        let mut segment = seek_head;
        segment.extend(&info);
        segment.extend(&tracks);
        if unknown_cluster {
            segment.extend(&cluster);
            segment.extend(tags());
        } else {
            segment.extend(tags());
            segment.extend(&cluster);
        }
        let mut out = element(&[0x1A, 0x45, 0xDF, 0xA3], &small(&[0x42, 0x82], b"webm"));
        out.extend(element(&[0x18, 0x53, 0x80, 0x67], &segment));
        (out, cluster_payload)
    }

    #[test]
    fn tags_and_their_index_entry_become_void_and_clusters_stay() {
        for unknown_cluster in [false, true] {
            let (original, cluster) = comfyui_webm(unknown_cluster);
            let file = Scratch::new("a.webm", &original);
            let blanked =
                super::super::strip_in_place(&file.path, crate::media::WEBM).expect("valid");
            assert!(blanked > 0);
            let stripped = file.bytes();
            assert_eq!(stripped.len(), original.len());
            assert!(!contains(&stripped, b"class_type") && !contains(&stripped, b"PROMPT"));
            assert!(
                !contains(&stripped, &[0x12, 0x54, 0xC3, 0x67]),
                "no Tags ID left"
            );
            assert!(contains(&stripped, &cluster), "the cluster is untouched");
            // Info and Tracks are still indexed.
            assert!(contains(
                &stripped,
                &[0x53, 0xAB, 0x84, 0x15, 0x49, 0xA9, 0x66]
            ));
            assert!(contains(
                &stripped,
                &[0x53, 0xAB, 0x84, 0x16, 0x54, 0xAE, 0x6B]
            ));
            assert_eq!(
                super::super::strip_in_place(&file.path, crate::media::WEBM).expect("valid"),
                0,
                "nothing left"
            );
        }
    }

    #[test]
    fn broken_files_are_errors() {
        let (whole, _) = comfyui_webm(false);
        for len in [3, 20, 40, whole.len() - 5] {
            let file = Scratch::new("b.webm", &whole[..len]);
            let error = super::super::strip_in_place(&file.path, crate::media::WEBM)
                .expect_err("cut short");
            assert!(error.to_string().starts_with("malformed WebM"), "{error}");
        }
    }
}
