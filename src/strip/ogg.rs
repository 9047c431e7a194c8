//! Ogg Opus and Ogg Vorbis: ComfyUI's `SaveAudioOpus` (through ffmpeg) writes the prompt and
//! each `extra_pnginfo` entry as comments of the `OpusTags` packet (`prompt={...}`), which
//! starts on the stream's second page and may span several.
//!
//! The comment packet is rewritten at the same length: its signature and vendor string, a
//! comment count of zero, then zeros (RFC 7845 lets an `OpusTags` packet end in padding whose
//! first byte has its low bit clear; a Vorbis comment header gets its framing bit, after which
//! decoders read nothing). Page boundaries, lacing and sequence numbers stay as they were; only
//! the CRCs of the pages that hold the packet are computed again. Audio pages, and a Vorbis setup
//! header sharing the comment header's page, are not touched. Ogg streams of other codecs (FLAC,
//! Speex, Theora) are left as they are.

use std::fs::File;

use super::{StripError, read_at, write_at};

fn malformed(offset: u64, reason: &'static str) -> StripError {
    StripError::Malformed {
        format: "Ogg",
        offset,
        reason,
    }
}

/// The largest comment packet read into memory (the prompt and workflow are far smaller).
const MAX_PACKET: usize = 64 * 1024 * 1024;

/// One page: where it starts, its header (with the lacing table) and where its body is.
struct Page {
    at: u64,
    header: Vec<u8>,
    body_at: u64,
    lacing: Vec<u8>,
}

fn read_page(file: &mut File, at: u64, len: u64) -> Result<Page, StripError> {
    if at + 27 > len {
        return Err(malformed(at, "a page header is cut short"));
    }
    let mut fixed = [0u8; 27];
    read_at(file, at, &mut fixed)?;
    if &fixed[..4] != b"OggS" || fixed[4] != 0 {
        return Err(malformed(at, "a page lacks the OggS capture pattern"));
    }
    let segments = usize::from(fixed[26]);
    if at + 27 + segments as u64 > len {
        return Err(malformed(at, "a page's lacing table is cut short"));
    }
    let mut lacing = vec![0u8; segments];
    read_at(file, at + 27, &mut lacing)?;
    let body_len: u64 = lacing.iter().map(|&s| u64::from(s)).sum();
    let body_at = at + 27 + segments as u64;
    if body_at + body_len > len {
        return Err(malformed(at, "a page's body runs past the end of the file"));
    }
    let mut header = fixed.to_vec();
    header.extend_from_slice(&lacing);
    Ok(Page {
        at,
        header,
        body_at,
        lacing,
    })
}

impl Page {
    fn body_len(&self) -> u64 {
        self.lacing.iter().map(|&s| u64::from(s)).sum()
    }

    fn end(&self) -> u64 {
        self.body_at + self.body_len()
    }
}

/// Blanks the comments of the stream's comment header; returns the bytes blanked. A stream of
/// another codec (FLAC or Speex in Ogg, ...) is left alone.
pub(super) fn strip(file: &mut File) -> Result<u64, StripError> {
    let len = file.metadata()?.len();
    let first = read_page(file, 0, len)?;
    let mut signature = [0u8; 8];
    let readable = first.body_len().min(8) as usize;
    read_at(file, first.body_at, &mut signature[..readable])?;
    if !signature.starts_with(b"OpusHead") && !signature.starts_with(b"\x01vorbis") {
        return Ok(0);
    }
    // The identification header is alone on the first page; the comment header starts the
    // next one and ends at its first lacing value below 255 (Vorbis's setup header may follow
    // it on the same page: those bytes are not touched).
    let mut pages = Vec::new();
    let mut at = first.end();
    let mut packet = Vec::new();
    loop {
        let page = read_page(file, at, len)?;
        let mut body = vec![0u8; page.body_len() as usize];
        read_at(file, page.body_at, &mut body)?;
        let end_segment = page.lacing.iter().position(|&s| s < 255);
        let take: usize = page.lacing[..end_segment.map_or(page.lacing.len(), |i| i + 1)]
            .iter()
            .map(|&s| usize::from(s))
            .sum();
        packet.extend_from_slice(&body[..take]);
        if packet.len() > MAX_PACKET {
            return Err(malformed(at, "the comment header is larger than 64 MiB"));
        }
        at = page.end();
        pages.push((page, body, take));
        if end_segment.is_some() {
            break;
        }
    }
    let packet_at = pages[0].0.body_at;
    let Some(blank) = blank_comments(&packet).map_err(|reason| malformed(packet_at, reason))?
    else {
        return Ok(0);
    };
    let blanked = (packet.len() - blank.kept) as u64;
    let mut from = 0;
    for (page, mut body, take) in pages {
        body[..take].copy_from_slice(&blank.packet[from..from + take]);
        from += take;
        let mut whole = page.header.clone();
        whole[22..26].copy_from_slice(&[0; 4]);
        whole.extend_from_slice(&body);
        let crc = ogg_crc(&whole);
        whole[22..26].copy_from_slice(&crc.to_le_bytes());
        write_at(file, page.at, &whole)?;
    }
    Ok(blanked)
}

/// A comment packet with its comments blanked, and how many of its bytes were kept.
struct Blanked {
    packet: Vec<u8>,
    kept: usize,
}

fn le32(bytes: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(*bytes.get(at..)?.first_chunk::<4>()?) as usize)
}

/// `packet` (an `OpusTags` or Vorbis comment header) without comments, at the same length;
/// `None` when there is nothing to remove.
fn blank_comments(packet: &[u8]) -> Result<Option<Blanked>, &'static str> {
    let (signature, framing) = if packet.starts_with(b"OpusTags") {
        (8, false)
    } else if packet.starts_with(b"\x03vorbis") {
        (7, true)
    } else {
        return Err("the second packet is neither OpusTags nor a Vorbis comment header");
    };
    let vendor_len = le32(packet, signature).ok_or("the vendor string's length is cut short")?;
    let vendor_end = (signature + 4)
        .checked_add(vendor_len)
        .filter(|&end| end + 4 <= packet.len())
        .ok_or("the vendor string runs past the packet")?;
    let count = le32(packet, vendor_end).ok_or("the comment count is cut short")?;
    let mut p = vendor_end + 4;
    for _ in 0..count {
        let n = le32(packet, p).ok_or("a comment's length is cut short")?;
        p = (p + 4)
            .checked_add(n)
            .filter(|&end| end <= packet.len())
            .ok_or("a comment runs past the packet")?;
    }
    let kept = vendor_end + 4 + usize::from(framing);
    let rest_is_blank = packet[p..]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == 0 || (framing && i == 0 && b == 1));
    if count == 0 && rest_is_blank {
        return Ok(None);
    }
    if kept > packet.len() {
        return Err("the Vorbis comment header has no room for its framing bit");
    }
    let mut out = packet[..vendor_end].to_vec();
    out.extend_from_slice(&0u32.to_le_bytes());
    if framing {
        out.push(1);
    }
    out.resize(packet.len(), 0);
    Ok(Some(Blanked { packet: out, kept }))
}

/// Ogg's CRC-32 (polynomial 0x04C11DB7, not reflected, initial value 0).
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

#[cfg(test)]
mod tests {
    use super::super::testing::{Scratch, contains};
    use super::*;

    /// The pages of one packet, 255 lacing values at most a page.
    fn pages(sequence: &mut u32, header_type: u8, packet: &[u8]) -> Vec<u8> {
        let mut lacing: Vec<u8> = vec![255; packet.len() / 255];
        lacing.push((packet.len() % 255) as u8);
        let mut out = Vec::new();
        let mut data = packet;
        for (i, segments) in lacing.chunks(255).enumerate() {
            let n: usize = segments.iter().map(|&s| usize::from(s)).sum();
            let (body, rest) = data.split_at(n);
            data = rest;
            let mut page = b"OggS\0".to_vec();
            page.push(if i == 0 { header_type } else { 1 });
            page.extend_from_slice(&[0; 8]);
            page.extend_from_slice(&7u32.to_le_bytes());
            page.extend_from_slice(&sequence.to_le_bytes());
            page.extend_from_slice(&[0; 4]);
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

    fn comments(signature: &[u8], entries: &[String]) -> Vec<u8> {
        let mut out = signature.to_vec();
        out.extend(12u32.to_le_bytes());
        out.extend_from_slice(b"Lavf61.7.100");
        out.extend((entries.len() as u32).to_le_bytes());
        for entry in entries {
            out.extend((entry.len() as u32).to_le_bytes());
            out.extend_from_slice(entry.as_bytes());
        }
        out
    }

    const AUDIO: &[u8] = b"opus audio packet bytes";

    /// An Ogg Opus file with a comment header long enough to span two pages.
    fn comfyui_opus() -> Vec<u8> {
        let mut sequence = 0;
        let mut out = pages(
            &mut sequence,
            2,
            b"OpusHead\x01\x02\x38\x01\x80\xbb\0\0\0\0\0",
        );
        let prompt = format!(
            r#"prompt={{"1": {{"class_type": "SaveAudioOpus", "x": "{}"}}}}"#,
            "y".repeat(70_000)
        );
        out.extend(pages(
            &mut sequence,
            0,
            &comments(b"OpusTags", &[prompt, "encoder=Lavf61.7.100".into()]),
        ));
        out.extend(pages(&mut sequence, 0, AUDIO));
        out
    }

    /// Every page's CRC is right; returns the pages' `(sequence, body)`.
    fn check_pages(bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < bytes.len() {
            let segments = usize::from(bytes[at + 26]);
            let body: usize = bytes[at + 27..at + 27 + segments]
                .iter()
                .map(|&s| usize::from(s))
                .sum();
            let end = at + 27 + segments + body;
            let mut page = bytes[at..end].to_vec();
            let stored = u32::from_le_bytes(page[22..26].try_into().expect("4"));
            page[22..26].copy_from_slice(&[0; 4]);
            assert_eq!(ogg_crc(&page), stored, "the page at {at} has a valid CRC");
            let sequence = u32::from_le_bytes(page[18..22].try_into().expect("4"));
            out.push((sequence, page[27 + segments..].to_vec()));
            at = end;
        }
        out
    }

    #[test]
    fn comments_are_blanked_across_pages_with_valid_crcs_and_the_audio_untouched() {
        let original = comfyui_opus();
        let file = Scratch::new("a.opus", &original);
        let blanked = super::super::strip_in_place(&file.path, crate::media::OPUS).expect("valid");
        assert!(blanked > 70_000);
        let stripped = file.bytes();
        assert_eq!(stripped.len(), original.len());
        assert!(!contains(&stripped, b"class_type") && !contains(&stripped, b"prompt"));
        let after = check_pages(&stripped);
        let before = check_pages(&original);
        assert_eq!(after.len(), before.len());
        assert_eq!(after.last(), before.last(), "the audio page is untouched");
        let packet: Vec<u8> = after[1..after.len() - 1]
            .iter()
            .flat_map(|(_, body)| body.clone())
            .collect();
        assert!(packet.starts_with(&comments(b"OpusTags", &[])));
        assert!(
            packet[comments(b"OpusTags", &[]).len()..]
                .iter()
                .all(|&b| b == 0)
        );
        assert_eq!(
            super::super::strip_in_place(&file.path, crate::media::OPUS).expect("valid"),
            0
        );
    }

    #[test]
    fn a_vorbis_comment_header_keeps_its_framing_bit_and_the_setup_header_beside_it() {
        let mut sequence = 0;
        let mut original = pages(&mut sequence, 2, b"\x01vorbis identification");
        let mut header = comments(b"\x03vorbis", &["workflow={}".into()]);
        header.push(1);
        let setup = b"\x05vorbis setup header".to_vec();
        // Both packets on one page, as libvorbis writes them.
        let mut page = pages(&mut sequence, 0, &[header.clone(), setup.clone()].concat());
        let segments = usize::from(page[26]);
        assert_eq!(segments, 1);
        page[26] = 2;
        page.splice(27..28, [header.len() as u8, setup.len() as u8]);
        page[22..26].copy_from_slice(&[0; 4]);
        let crc = ogg_crc(&page);
        page[22..26].copy_from_slice(&crc.to_le_bytes());
        original.extend(page);
        let file = Scratch::new("b.ogg", &original);
        super::super::strip_in_place(&file.path, crate::media::OGG).expect("valid");
        let pages = check_pages(&file.bytes());
        let mut expected = comments(b"\x03vorbis", &[]);
        expected.push(1);
        assert!(pages[1].1.starts_with(&expected));
        assert!(
            pages[1].1.ends_with(&setup),
            "the setup header is untouched"
        );
        assert!(!contains(&file.bytes(), b"workflow"));
    }

    #[test]
    fn other_codecs_in_ogg_are_left_alone() {
        let mut sequence = 0;
        let mut flac = pages(&mut sequence, 2, b"\x7fFLAC\x01\x00\x00\x01fLaC");
        flac.extend(pages(
            &mut sequence,
            0,
            b"\x84\0\0\x10 vorbis comment block",
        ));
        let file = Scratch::new("c.oga", &flac);
        assert_eq!(
            super::super::strip_in_place(&file.path, crate::media::OGG).expect("not ours"),
            0
        );
        assert_eq!(file.bytes(), flac);
    }

    #[test]
    fn broken_streams_are_errors() {
        let whole = comfyui_opus();
        for len in [3, 30, 60, 200, 5000] {
            let file = Scratch::new("c.opus", &whole[..len]);
            let error = super::super::strip_in_place(&file.path, crate::media::OPUS)
                .expect_err("cut short");
            assert!(error.to_string().starts_with("malformed Ogg"), "{error}");
        }
        let mut sequence = 0;
        let mut odd = pages(&mut sequence, 2, b"OpusHead\x01\x02");
        odd.extend(pages(&mut sequence, 0, b"not a comment header"));
        let file = Scratch::new("d.opus", &odd);
        assert!(super::super::strip_in_place(&file.path, crate::media::OPUS).is_err());
    }
}
