//! MP3: ComfyUI's `SaveAudioMP3` (through ffmpeg) writes an ID3v2.4 tag before the first frame:
//! `TXXX` frames named `prompt` and `workflow` (one per `extra_pnginfo` entry) and `TSSE` (the
//! encoder).
//!
//! Every ID3v2 tag at the start of the file becomes a tag of the same size holding nothing but
//! padding (zeros), which every reader skips by its size, so the first MPEG frame is where it
//! was and nothing after it moves. An ID3v1 tag (the last 128 bytes, `TAG...`) loses its text
//! fields the same way. APEv2 tags are not touched (ComfyUI does not write them).

use std::fs::File;

use super::{StripError, all_zero, read_at, write_at, zero_at};

fn malformed(offset: u64, reason: &'static str) -> StripError {
    StripError::Malformed {
        format: "MP3",
        offset,
        reason,
    }
}

/// Blanks the ID3v2 tags at the start of `file` and its ID3v1 tag; returns the bytes blanked.
pub(super) fn strip(file: &mut File) -> Result<u64, StripError> {
    let len = file.metadata()?.len();
    let mut at = 0u64;
    let mut blanked = 0;
    while at + 10 <= len {
        let mut header = [0u8; 10];
        read_at(file, at, &mut header)?;
        if &header[..3] != b"ID3" {
            break;
        }
        let (major, revision, flags) = (header[3], header[4], header[5]);
        if !(2..=4).contains(&major) {
            return Err(malformed(at, "an ID3v2 tag has an unknown version"));
        }
        if header[6..10].iter().any(|&b| b >= 0x80) {
            return Err(malformed(
                at,
                "an ID3v2 tag's size is not a syncsafe integer",
            ));
        }
        let size = header[6..10]
            .iter()
            .fold(0u64, |acc, &b| (acc << 7) | u64::from(b));
        let footer = if major == 4 && flags & 0x10 != 0 {
            10
        } else {
            0
        };
        let end = at + 10 + size + footer;
        if end > len {
            return Err(malformed(at, "an ID3v2 tag runs past the end of the file"));
        }
        // The footer (if any) becomes padding too: a tag without the footer flag may have it.
        let body = size + footer;
        if flags != 0 || !all_zero(file, at + 10, body)? {
            let mut blank = header;
            blank[5] = 0;
            blank[6..10].copy_from_slice(&syncsafe(body));
            blank[3..5].copy_from_slice(&[major, revision]);
            write_at(file, at, &blank)?;
            zero_at(file, at + 10, body)?;
            blanked += body;
        }
        at = end;
    }
    blanked += strip_id3v1(file, at, len)?;
    Ok(blanked)
}

/// `value` (below 2^28) as four 7-bit bytes.
fn syncsafe(value: u64) -> [u8; 4] {
    [21, 14, 7, 0].map(|shift| ((value >> shift) & 0x7f) as u8)
}

/// Blanks the text of an ID3v1 tag in the last 128 bytes (after `audio_at`, where the audio
/// starts); returns the bytes blanked.
fn strip_id3v1(file: &mut File, audio_at: u64, len: u64) -> Result<u64, StripError> {
    if len < audio_at + 128 {
        return Ok(0);
    }
    let at = len - 128;
    let mut tag = [0u8; 128];
    read_at(file, at, &mut tag)?;
    if &tag[..3] != b"TAG" || (tag[3..127].iter().all(|&b| b == 0) && tag[127] == 0xff) {
        return Ok(0);
    }
    let mut blank = [0u8; 125];
    blank[124] = 0xff; // genre: none
    write_at(file, at + 3, &blank)?;
    Ok(125)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Scratch, contains};
    use super::*;

    fn text_frame(id: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut out = id.to_vec();
        out.extend(syncsafe(body.len() as u64));
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(body);
        out
    }

    /// `TXXX`: UTF-8, a description, a value.
    fn txxx(description: &str, value: &str) -> Vec<u8> {
        let mut body = vec![3];
        body.extend_from_slice(description.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        text_frame(b"TXXX", &body)
    }

    /// MPEG-1 Layer III frames (128 kbit/s, 44.1 kHz: 417 bytes each).
    fn frames() -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..3u8 {
            out.extend_from_slice(&[0xff, 0xfb, 0x90, 0x64]);
            out.extend(std::iter::repeat_n(i, 413));
        }
        out
    }

    /// An MP3 as ffmpeg writes it for ComfyUI's SaveAudioMP3, with an ID3v1 tag as well.
    pub(crate) fn comfyui_mp3() -> Vec<u8> {
        let mut frames_of_tag = text_frame(b"TSSE", b"\x03Lavf61.7.100");
        frames_of_tag.extend(txxx(
            "prompt",
            r#"{"1": {"class_type": "SineAudio", "inputs": {}}}"#,
        ));
        frames_of_tag.extend(txxx("workflow", r#"{"nodes": []}"#));
        frames_of_tag.extend([0; 10]); // padding
        let mut out = b"ID3\x04\x00\x00".to_vec();
        out.extend(syncsafe(frames_of_tag.len() as u64));
        out.extend(frames_of_tag);
        out.extend(frames());
        let mut v1 = b"TAG".to_vec();
        v1.extend_from_slice(b"workflow secret");
        v1.resize(127, 0);
        v1.push(12);
        out.extend(v1);
        out
    }

    #[test]
    fn the_tags_become_padding_and_the_frames_do_not_move() {
        let original = comfyui_mp3();
        let file = Scratch::new("a.mp3", &original);
        let blanked = super::super::strip_in_place(&file.path, crate::media::MP3).expect("valid");
        assert!(blanked > 0);
        let stripped = file.bytes();
        assert_eq!(stripped.len(), original.len());
        for needle in [&b"prompt"[..], b"workflow", b"class_type", b"Lavf"] {
            assert!(!contains(&stripped, needle));
        }
        // A valid, empty ID3v2.4 tag of the same size, then frame sync right after it.
        assert_eq!(&stripped[..6], b"ID3\x04\x00\x00");
        assert_eq!(&stripped[6..10], &original[6..10]);
        let size = stripped[6..10]
            .iter()
            .fold(0usize, |acc, &b| (acc << 7) | usize::from(b));
        assert!(stripped[10..10 + size].iter().all(|&b| b == 0));
        let audio = &stripped[10 + size..stripped.len() - 128];
        assert_eq!(&audio[..2], &[0xff, 0xfb]);
        assert_eq!(audio, frames());
        let v1 = &stripped[stripped.len() - 128..];
        assert_eq!(&v1[..3], b"TAG");
        assert_eq!(v1[127], 0xff);

        assert_eq!(
            super::super::strip_in_place(&file.path, crate::media::MP3).expect("valid"),
            0,
            "nothing left to blank"
        );
    }

    #[test]
    fn a_footer_and_flags_are_folded_into_the_padding() {
        let mut original = b"ID3\x04\x00\x10".to_vec();
        let body = txxx("prompt", "{}");
        original.extend(syncsafe(body.len() as u64));
        original.extend(&body);
        original.extend(b"3DI\x04\x00\x10");
        original.extend(syncsafe(body.len() as u64));
        original.extend(frames());
        let file = Scratch::new("b.mp3", &original);
        super::super::strip_in_place(&file.path, crate::media::MP3).expect("valid");
        let stripped = file.bytes();
        assert_eq!(&stripped[..6], b"ID3\x04\x00\x00");
        let size = stripped[6..10]
            .iter()
            .fold(0usize, |acc, &b| (acc << 7) | usize::from(b));
        assert_eq!(size, body.len() + 10);
        assert_eq!(&stripped[10 + size..], frames());
    }

    #[test]
    fn broken_tags_are_errors_and_plain_mp3s_untouched() {
        let whole = comfyui_mp3();
        let tag_end = 10
            + whole[6..10]
                .iter()
                .fold(0usize, |acc, &b| (acc << 7) | usize::from(b));
        for len in 10..tag_end {
            let file = Scratch::new("c.mp3", &whole[..len]);
            assert!(
                super::super::strip_in_place(&file.path, crate::media::MP3).is_err(),
                "cut at {len}"
            );
        }
        let mut bad = whole.clone();
        bad[6] = 0x80;
        let file = Scratch::new("d.mp3", &bad);
        let error =
            super::super::strip_in_place(&file.path, crate::media::MP3).expect_err("bad size");
        assert!(error.to_string().starts_with("malformed MP3"), "{error}");

        let plain = frames();
        let file = Scratch::new("e.mp3", &plain);
        assert_eq!(
            super::super::strip_in_place(&file.path, crate::media::MP3).expect("valid"),
            0
        );
        assert_eq!(file.bytes(), plain);
    }
}
