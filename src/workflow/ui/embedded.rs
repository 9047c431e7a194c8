//! The workflow ComfyUI embeds in the files it writes: a PNG's `tEXt` (or uncompressed `iTXt`)
//! chunk with keyword `workflow`, or, in a WebP, an EXIF string starting with `workflow:`
//! (what `SaveAnimatedWEBP` and `SaveImage` with WebP write).

use std::fmt;

use serde_json::Value;

use crate::image::{self, PNG_SIGNATURE, is_webp};

/// Why a file gave no workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbeddedError {
    /// A PNG or WebP without a `workflow` entry.
    NoWorkflow(&'static str),
    /// A file with a PNG or WebP signature whose structure is broken (cut short, bad CRC, ...).
    Broken {
        /// `PNG` or `WebP`.
        format: &'static str,
        /// What is wrong, as [`image::ImageError`] says it.
        reason: String,
    },
    /// The entry is there but is not JSON.
    NotJson(String),
    /// Neither JSON, PNG nor WebP.
    UnknownFormat,
}

impl fmt::Display for EmbeddedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EmbeddedError::NoWorkflow(format) => write!(
                f,
                "this {format} holds no ComfyUI workflow (ComfyUI writes one in the files of its \
                 save nodes unless metadata is disabled; a file re-encoded elsewhere loses it)"
            ),
            EmbeddedError::Broken { format, reason } => {
                write!(f, "this {format} is damaged: {reason}")
            }
            EmbeddedError::NotJson(e) => write!(f, "the embedded workflow is not JSON: {e}"),
            EmbeddedError::UnknownFormat => f.write_str(
                "not a workflow: expected JSON (as ComfyUI saves it), or a PNG or WebP that \
                 ComfyUI wrote",
            ),
        }
    }
}

impl std::error::Error for EmbeddedError {}

/// The workflow in a file's bytes: the JSON itself, or the one a PNG or WebP from ComfyUI
/// carries. The chunks of a PNG or WebP are walked (and checked) by [`crate::image`].
pub fn workflow_from_file(bytes: &[u8]) -> Result<Value, EmbeddedError> {
    let broken = |format| {
        move |e: image::ImageError| EmbeddedError::Broken {
            format,
            reason: e.to_string(),
        }
    };
    if bytes.starts_with(&PNG_SIGNATURE) {
        let chunks = image::png_chunks(bytes).map_err(broken("PNG"))?;
        let text = chunks
            .iter()
            .find_map(|(kind, data)| png_text(kind, data, "workflow"))
            .ok_or(EmbeddedError::NoWorkflow("PNG"))?;
        return serde_json::from_slice(&text).map_err(|e| EmbeddedError::NotJson(e.to_string()));
    }
    if is_webp(bytes) {
        let chunks = image::webp_chunks(bytes).map_err(broken("WebP"))?;
        let json = chunks
            .iter()
            .filter(|(fourcc, _)| *fourcc == b"EXIF")
            .find_map(|(_, data)| exif_workflow(data))
            .ok_or(EmbeddedError::NoWorkflow("WebP"))?;
        return serde_json::from_slice(json).map_err(|e| EmbeddedError::NotJson(e.to_string()));
    }
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    serde_json::from_slice(text).map_err(|_| EmbeddedError::UnknownFormat)
}

/// The text of a `tEXt` or uncompressed `iTXt` chunk with this keyword.
fn png_text(kind: &[u8; 4], data: &[u8], keyword: &str) -> Option<Vec<u8>> {
    let (key, rest) = split_nul(data)?;
    if key != keyword.as_bytes() {
        return None;
    }
    match kind {
        // Latin-1 by the PNG specification; ComfyUI writes ASCII JSON.
        b"tEXt" => Some(
            rest.iter()
                .map(|&b| b as char)
                .collect::<String>()
                .into_bytes(),
        ),
        // Compression flag 0, method, then language and translated keyword.
        b"iTXt" if rest.first() == Some(&0) => {
            let (_, rest) = split_nul(rest.get(2..)?)?;
            let (_, text) = split_nul(rest)?;
            Some(text.to_vec())
        }
        _ => None,
    }
}

fn split_nul(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = data.iter().position(|&b| b == 0)?;
    Some((&data[..at], &data[at + 1..]))
}

/// The JSON after `workflow:` in a WebP's `EXIF` chunk, up to the next NUL.
fn exif_workflow(data: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"workflow:";
    let at = data.windows(KEY.len()).position(|w| w == KEY)?;
    let json = &data[at + KEY.len()..];
    json.split(|&b| b == 0).next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc32fast::hash(&[kind, data].concat()).to_be_bytes());
        out
    }

    #[test]
    fn a_png_gives_its_workflow_text() {
        let mut png = PNG_SIGNATURE.to_vec();
        png.extend(chunk(b"IHDR", &[0; 13]));
        png.extend(chunk(b"tEXt", b"prompt\0{\"1\": {}}"));
        png.extend(chunk(b"tEXt", b"workflow\0{\"nodes\": []}"));
        png.extend(chunk(b"IEND", b""));
        assert_eq!(
            workflow_from_file(&png),
            Ok(serde_json::json!({"nodes": []}))
        );
        let mut bare = PNG_SIGNATURE.to_vec();
        bare.extend(chunk(b"IHDR", &[0; 13]));
        bare.extend(chunk(b"IEND", b""));
        assert_eq!(
            workflow_from_file(&bare),
            Err(EmbeddedError::NoWorkflow("PNG"))
        );
    }

    #[test]
    fn a_webp_gives_the_exif_workflow_string() {
        let exif = b"MM\0*\0\0\0\x08junk\0workflow:{\"nodes\": [1]}\0prompt:{}\0";
        let mut body = b"WEBP".to_vec();
        body.extend_from_slice(b"EXIF");
        body.extend_from_slice(&(exif.len() as u32).to_le_bytes());
        body.extend_from_slice(exif);
        if exif.len() % 2 == 1 {
            body.push(0);
        }
        let mut webp = b"RIFF".to_vec();
        webp.extend_from_slice(&(body.len() as u32).to_le_bytes());
        webp.extend(body);
        assert_eq!(
            workflow_from_file(&webp),
            Ok(serde_json::json!({"nodes": [1]}))
        );
    }

    #[test]
    fn a_damaged_png_or_webp_is_called_damaged_not_empty() {
        let mut png = PNG_SIGNATURE.to_vec();
        png.extend(chunk(b"IHDR", &[0; 13]));
        png.extend(chunk(b"tEXt", b"workflow\0{\"nodes\": []}"));
        png.extend(chunk(b"IEND", b""));
        let cut = &png[..png.len() - 20];
        assert!(
            matches!(
                workflow_from_file(cut),
                Err(EmbeddedError::Broken { format: "PNG", .. })
            ),
            "{:?}",
            workflow_from_file(cut)
        );
        let webp = b"RIFF\xff\0\0\0WEBPEXIF";
        assert!(matches!(
            workflow_from_file(webp),
            Err(EmbeddedError::Broken { format: "WebP", .. })
        ));
    }

    #[test]
    fn other_bytes_are_refused() {
        assert_eq!(
            workflow_from_file(b"GIF89a"),
            Err(EmbeddedError::UnknownFormat)
        );
    }
}
