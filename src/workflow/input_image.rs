//! Image parameters: base64 text from a request turned into checked image bytes.
//!
//! Clients send images as plain base64 or as a `data:` URL. The declared media type of a data
//! URL is ignored: the format is sniffed from the bytes' signature, because ComfyUI will trust
//! the file name's extension we choose when uploading.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT;
use serde_json::Value;

use super::params::describe;

/// An image a request sent for an image parameter, decoded and recognised, ready to be uploaded
/// to ComfyUI's `/upload/image`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputImage {
    /// The parameter it was sent as; the key of the uploaded-name map given to `build_graph`.
    pub param: String,
    /// The decoded file, never empty, starting with the signature of `content_type`.
    pub bytes: Vec<u8>,
    /// `image/png`, `image/jpeg` or `image/webp`, sniffed from the bytes.
    pub content_type: &'static str,
    /// `png`, `jpg` or `webp`, for the upload's file name.
    pub extension: &'static str,
}

/// Bytes and their sniffed format, before the parameter name is attached.
pub(super) struct DecodedImage {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub extension: &'static str,
}

/// Decodes a request value into image bytes of a known format.
/// The error reads as the end of a sentence whose subject is the parameter.
pub(super) fn decode(value: &Value) -> Result<DecodedImage, String> {
    let Some(text) = value.as_str() else {
        return Err(format!(
            "must be a base64-encoded PNG, JPEG or WebP image (got {})",
            describe(value)
        ));
    };
    let payload = strip_data_url(text.trim_start())?;
    // Line-wrapped base64 (as `base64` the command writes it) is common; whitespace is never
    // part of the alphabet, so dropping it cannot change the meaning.
    let compact: Vec<u8> = payload
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if compact.is_empty() {
        return Err("must not be empty".to_owned());
    }
    let bytes = STANDARD_PAD_INDIFFERENT
        .decode(&compact)
        .map_err(|err| format!("is not valid base64 ({err})"))?;
    let Some((content_type, extension)) = sniff(&bytes) else {
        return Err(
            "must be a PNG, JPEG or WebP image (its first bytes match none of those formats)"
                .to_owned(),
        );
    };
    Ok(DecodedImage {
        bytes,
        content_type,
        extension,
    })
}

/// The base64 part of `data:[type][;param]*;base64,DATA`, or the text itself when it is not a
/// data URL.
fn strip_data_url(text: &str) -> Result<&str, String> {
    let is_data_url = text
        .get(..5)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("data:"));
    if !is_data_url {
        return Ok(text);
    }
    let Some((header, payload)) = text[5..].split_once(',') else {
        return Err("is a data: URL without a comma before its data".to_owned());
    };
    let is_base64 = header
        .rsplit(';')
        .next()
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("base64"));
    if !is_base64 {
        return Err(
            "is a data: URL that is not base64 (expected data:image/png;base64,...)".into(),
        );
    }
    Ok(payload)
}

/// The content type and file extension whose signature starts `bytes`.
fn sniff(bytes: &[u8]) -> Option<(&'static str, &'static str)> {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if bytes.starts_with(PNG) {
        Some(("image/png", "png"))
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(("image/jpeg", "jpg"))
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(("image/webp", "webp"))
    } else {
        None
    }
}
