//! The workflow ComfyUI embeds in the files it writes: a PNG's `tEXt` (or uncompressed `iTXt`)
//! chunk with keyword `workflow`, or, in a WebP, an EXIF string starting with `workflow:`
//! (what `SaveAnimatedWEBP` and `SaveImage` with WebP write).

use std::fmt;

use serde_json::Value;

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Why a file gave no workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbeddedError {
    /// A PNG or WebP without a `workflow` entry.
    NoWorkflow(&'static str),
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
/// carries.
pub fn workflow_from_file(bytes: &[u8]) -> Result<Value, EmbeddedError> {
    if bytes.starts_with(PNG_SIGNATURE) {
        let text = png_text(bytes, "workflow").ok_or(EmbeddedError::NoWorkflow("PNG"))?;
        return serde_json::from_slice(&text).map_err(|e| EmbeddedError::NotJson(e.to_string()));
    }
    if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return webp_workflow(bytes);
    }
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    serde_json::from_slice(text).map_err(|_| EmbeddedError::UnknownFormat)
}

/// The text of the first `tEXt` or uncompressed `iTXt` chunk with this keyword.
fn png_text(bytes: &[u8], keyword: &str) -> Option<Vec<u8>> {
    let mut pos = PNG_SIGNATURE.len();
    while pos + 8 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().ok()?) as usize;
        let kind = &bytes[pos + 4..pos + 8];
        let data = bytes.get(pos + 8..pos + 8 + len)?;
        match kind {
            b"tEXt" => {
                if let Some((key, text)) = split_nul(data)
                    && key == keyword.as_bytes()
                {
                    // Latin-1 by the PNG specification; ComfyUI writes ASCII JSON.
                    return Some(
                        text.iter()
                            .map(|&b| b as char)
                            .collect::<String>()
                            .into_bytes(),
                    );
                }
            }
            b"iTXt" => {
                if let Some((key, rest)) = split_nul(data)
                    && key == keyword.as_bytes()
                    && rest.first() == Some(&0)
                {
                    // compression flag 0, method, then language and translated keyword.
                    let rest = rest.get(2..)?;
                    let (_, rest) = split_nul(rest)?;
                    let (_, text) = split_nul(rest)?;
                    return Some(text.to_vec());
                }
            }
            b"IEND" => return None,
            _ => {}
        }
        pos += 12 + len;
    }
    None
}

fn split_nul(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = data.iter().position(|&b| b == 0)?;
    Some((&data[..at], &data[at + 1..]))
}

/// The JSON after `workflow:` in a WebP's `EXIF` chunk.
fn webp_workflow(bytes: &[u8]) -> Result<Value, EmbeddedError> {
    let mut pos = 12;
    while pos + 8 <= bytes.len() {
        let kind = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        let Some(data) = bytes.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if kind == b"EXIF"
            && let Some(at) = find(data, b"workflow:")
        {
            let json = &data[at + b"workflow:".len()..];
            let json = json.split(|&b| b == 0).next().unwrap_or(json);
            return serde_json::from_slice(json).map_err(|e| EmbeddedError::NotJson(e.to_string()));
        }
        pos += 8 + len + (len & 1);
    }
    Err(EmbeddedError::NoWorkflow("WebP"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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
    fn other_bytes_are_refused() {
        assert_eq!(
            workflow_from_file(b"GIF89a"),
            Err(EmbeddedError::UnknownFormat)
        );
    }
}
