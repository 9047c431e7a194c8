//! A streaming `multipart/form-data` reader (RFC 7578) for asset uploads: parts are met one at
//! a time, and a part's body is read like any [`Read`], through one bounded buffer, so a large
//! file goes from the socket to the blob store without ever being whole in memory.
//!
//! ```text
//! --BOUNDARY\r\n
//! Content-Disposition: form-data; name="file"; filename="photo.png"\r\n
//! Content-Type: image/png\r\n
//! \r\n
//! <bytes>\r\n
//! --BOUNDARY--\r\n
//! ```
//!
//! Malformed input is an [`io::ErrorKind::InvalidData`] error whose message says what was wrong;
//! errors of the source (a client gone) pass through unchanged.

use std::io::{self, Read};

/// Bytes held at most while scanning a body for the next boundary (plus the boundary itself).
const WINDOW: usize = 64 * 1024;

/// The longest a part's header block may be.
const HEADERS_LIMIT: usize = 8 * 1024;

/// The longest boundary RFC 2046 allows.
const BOUNDARY_LIMIT: usize = 70;

/// What a part's headers say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartHead {
    /// The form field's name (`Content-Disposition: form-data; name="..."`).
    pub name: String,
    /// The file name, for a file part.
    pub filename: Option<String>,
    /// The part's own `Content-Type`, if it has one.
    pub content_type: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first boundary (the preamble is skipped).
    Preamble,
    /// Inside a part's body.
    Body,
    /// A boundary was just consumed; the headers of the next part (or the end) follow.
    Boundary,
    /// The closing boundary was read.
    Done,
}

/// Reads the parts of one multipart body from `source` (see the module documentation).
pub struct Multipart<R: Read> {
    source: R,
    /// `\r\n--BOUNDARY`.
    delimiter: Vec<u8>,
    buf: Vec<u8>,
    start: usize,
    eof: bool,
    state: State,
}

/// The `boundary` parameter of a `multipart/form-data` content type, if it is one.
pub fn boundary(content_type: &str) -> Option<String> {
    let (essence, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !essence.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    let boundary = parameters(params)
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("boundary"))?
        .1;
    (!boundary.is_empty() && boundary.len() <= BOUNDARY_LIMIT).then_some(boundary)
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

impl<R: Read> Multipart<R> {
    /// A reader of the body `source` whose parts are separated by `boundary`.
    pub fn new(source: R, boundary: &str) -> Multipart<R> {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        Multipart {
            source,
            delimiter,
            // The first boundary has no line break before it: pretend it had one.
            buf: b"\r\n".to_vec(),
            start: 0,
            eof: false,
            state: State::Preamble,
        }
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Reads from the source until `want` bytes are buffered or it ends.
    fn fill(&mut self, want: usize) -> io::Result<()> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let mut chunk = [0u8; 8192];
        while self.buf.len() < want && !self.eof {
            let room = (want - self.buf.len()).min(chunk.len());
            match self.source.read(&mut chunk[..room]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Moves to the next part, skipping whatever is left of the current one (or the preamble),
    /// and returns its headers; `None` after the closing boundary.
    pub fn next_part(&mut self) -> io::Result<Option<PartHead>> {
        if matches!(self.state, State::Preamble | State::Body) {
            let mut sink = [0u8; 8192];
            while self.read_body(&mut sink)? > 0 {}
        }
        if self.state == State::Done {
            return Ok(None);
        }
        // After a boundary: `--` ends the body; otherwise optional blanks, then CRLF.
        self.fill(HEADERS_LIMIT + 4)?;
        if self.available().starts_with(b"--") {
            self.state = State::Done;
            return Ok(None);
        }
        let blanks = self
            .available()
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
        self.start += blanks;
        if !self.available().starts_with(b"\r\n") {
            return Err(invalid("a boundary line is not followed by a line break"));
        }
        self.start += 2;
        let head = self.read_headers()?;
        self.state = State::Body;
        Ok(Some(head))
    }

    fn read_headers(&mut self) -> io::Result<PartHead> {
        let available = self.available();
        let end = if available.starts_with(b"\r\n") {
            Some(0)
        } else {
            find(available, b"\r\n\r\n").map(|at| at + 2)
        };
        let end = end.filter(|end| *end <= HEADERS_LIMIT);
        let Some(end) = end else {
            return Err(invalid(if self.eof && available.len() <= HEADERS_LIMIT {
                "the body ends inside a part's headers"
            } else {
                "a part's headers are longer than 8 KiB"
            }));
        };
        let block = String::from_utf8_lossy(&available[..end]).into_owned();
        self.start += end + 2;
        parse_headers(&block)
    }

    /// Reads the current part's body into `out`; 0 at its end.
    fn read_body(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !matches!(self.state, State::Preamble | State::Body) || out.is_empty() {
            return Ok(0);
        }
        if self.available().len() < self.delimiter.len() + 1 {
            self.fill(WINDOW + self.delimiter.len())?;
        }
        let available = self.available();
        match find(available, &self.delimiter) {
            Some(0) => {
                self.start += self.delimiter.len();
                self.state = State::Boundary;
                Ok(0)
            }
            Some(at) => {
                let n = at.min(out.len());
                out[..n].copy_from_slice(&available[..n]);
                self.start += n;
                Ok(n)
            }
            None if self.eof => Err(invalid(if self.state == State::Preamble {
                "the body has no boundary line"
            } else {
                "the body ends inside a part (no closing boundary)"
            })),
            None => {
                // Everything but a tail that could be the start of the delimiter is body.
                let safe = available.len() + 1 - self.delimiter.len();
                let n = safe.min(out.len());
                out[..n].copy_from_slice(&available[..n]);
                self.start += n;
                Ok(n)
            }
        }
    }

    /// Reads the current part's body as UTF-8 text of at most `limit` bytes.
    pub fn read_text(&mut self, limit: usize) -> io::Result<String> {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = self.read_body(&mut chunk)?;
            if n == 0 {
                break;
            }
            if bytes.len() + n > limit {
                return Err(invalid(format!(
                    "a form field is longer than {limit} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(bytes).map_err(|_| invalid("a form field is not UTF-8 text"))
    }
}

impl<R: Read> Read for Multipart<R> {
    /// Reads the current part's body (0 at its end; the next part needs [`Multipart::next_part`]).
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.state == State::Preamble {
            return Ok(0);
        }
        self.read_body(out)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let last_start = haystack.len() - needle.len();
    let mut from = 0;
    while from <= last_start {
        let at = from
            + haystack[from..=last_start]
                .iter()
                .position(|&b| b == first)?;
        if &haystack[at..at + needle.len()] == needle {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

fn parse_headers(block: &str) -> io::Result<PartHead> {
    let mut disposition = None;
    let mut content_type = None;
    for line in block.split("\r\n").filter(|line| !line.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(invalid(format!(
                "a part's header line {line:?} has no colon"
            )));
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("Content-Disposition") {
            disposition = Some(value.trim().to_string());
        } else if name.eq_ignore_ascii_case("Content-Type") {
            content_type = Some(value.trim().to_string());
        }
    }
    let disposition =
        disposition.ok_or_else(|| invalid("a part has no Content-Disposition header"))?;
    let (kind, params) = disposition
        .split_once(';')
        .unwrap_or((disposition.as_str(), ""));
    if !kind.trim().eq_ignore_ascii_case("form-data") {
        return Err(invalid(format!(
            "a part's Content-Disposition is {:?}, not form-data",
            kind.trim()
        )));
    }
    let params = parameters(params);
    let param = |wanted: &str| {
        params
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
            .map(|(_, value)| value.clone())
    };
    let name = param("name").ok_or_else(|| invalid("a part has no name"))?;
    Ok(PartHead {
        name,
        filename: param("filename"),
        content_type,
    })
}

/// `; a=b; c="d e"` → `[("a", "b"), ("c", "d e")]`, quoted strings unescaped.
fn parameters(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ';' || c.is_whitespace()) {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ';' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if name.trim().is_empty() && chars.peek().is_none() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => value.extend(chars.next()),
                        other => value.push(other),
                    }
                }
            }
            while let Some(&c) = chars.peek() {
                if c == ';' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((name.trim().to_string(), value.trim().to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader handing out `step` bytes at a time, to put boundaries across reads.
    struct Drip<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Drip<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn body(file: &[u8]) -> Vec<u8> {
        let mut body = b"preamble to ignore\r\n--XyZ\r\n\
            Content-Disposition: form-data; name=\"file_path\"\r\n\r\nphoto.png\r\n\
            --XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a \\\"b\\\".png\"\r\n\
            Content-Type: image/png\r\n\r\n"
            .to_vec();
        body.extend_from_slice(file);
        body.extend_from_slice(
            b"\r\n--XyZ\r\ncontent-disposition: form-data; name=tags\r\n\r\ninput\r\n--XyZ--\r\n",
        );
        body
    }

    fn parse(data: &[u8], step: usize) -> io::Result<Vec<(PartHead, Vec<u8>)>> {
        let mut reader = Multipart::new(Drip { data, step }, "XyZ");
        let mut parts = Vec::new();
        while let Some(head) = reader.next_part()? {
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes)?;
            parts.push((head, bytes));
        }
        Ok(parts)
    }

    #[test]
    fn parts_come_out_whole_whatever_the_read_sizes() {
        // A file that contains near-boundaries must come through untouched.
        let mut file = b"\r\n--XY\r\n--Xy\r\r\n-".to_vec();
        file.extend((0..200_000u32).map(|i| (i % 253) as u8));
        file.extend_from_slice(b"\r\n--Xy\r\n--XyQ");
        let data = body(&file);
        for step in [2, 7, 4096, 1 << 20] {
            let parts = parse(&data, step).expect("parse");
            assert_eq!(parts.len(), 3, "step {step}");
            assert_eq!(parts[0].0.name, "file_path");
            assert_eq!(parts[0].1, b"photo.png");
            assert_eq!(parts[1].0.name, "file");
            assert_eq!(parts[1].0.filename.as_deref(), Some("a \"b\".png"));
            assert_eq!(parts[1].0.content_type.as_deref(), Some("image/png"));
            assert!(parts[1].1 == file, "step {step}: file bytes differ");
            assert_eq!(parts[2].0.name, "tags");
            assert_eq!(parts[2].1, b"input");
        }
    }

    #[test]
    fn an_empty_file_and_skipped_parts_work() {
        let data = body(b"");
        let mut reader = Multipart::new(&data[..], "XyZ");
        assert_eq!(
            reader.next_part().expect("1").expect("part").name,
            "file_path"
        );
        // Not reading a part is fine: next_part skips it.
        assert_eq!(reader.next_part().expect("2").expect("part").name, "file");
        assert_eq!(reader.read_text(10).expect("empty"), "");
        assert_eq!(reader.next_part().expect("3").expect("part").name, "tags");
        assert!(reader.next_part().expect("end").is_none());
        assert!(reader.next_part().expect("still the end").is_none());
    }

    #[test]
    fn malformed_bodies_are_invalid_data_with_a_reason() {
        let cases: [(&[u8], &str); 5] = [
            (b"no boundary at all", "no boundary"),
            (
                b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nhalf",
                "ends inside a part",
            ),
            (
                b"--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--",
                "no Content-Disposition",
            ),
            (
                b"--XyZ\r\nContent-Disposition: attachment; name=a\r\n\r\nx\r\n--XyZ--",
                "not form-data",
            ),
            (b"--XyZgarbage\r\n", "not followed by a line break"),
        ];
        for (data, reason) in cases {
            let error = parse(data, 3).expect_err(reason);
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{reason}");
            assert!(error.to_string().contains(reason), "{error} / {reason}");
        }
        let mut huge = b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\nX-Pad: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 10_000));
        let error = parse(&huge, 4096).expect_err("headers too long");
        assert!(error.to_string().contains("8 KiB"), "{error}");
    }

    #[test]
    fn text_fields_are_bounded() {
        let data = body(b"x");
        let mut reader = Multipart::new(&data[..], "XyZ");
        reader.next_part().expect("part");
        let error = reader.read_text(4).expect_err("too long");
        assert!(error.to_string().contains("longer than 4 bytes"), "{error}");
    }

    #[test]
    fn boundaries_come_from_the_content_type() {
        assert_eq!(
            boundary("multipart/form-data; boundary=----comfyab12").as_deref(),
            Some("----comfyab12")
        );
        assert_eq!(
            boundary("Multipart/Form-Data; charset=utf-8; boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary("multipart/form-data"), None);
        assert_eq!(boundary("application/json; boundary=x"), None);
        assert_eq!(
            boundary(&format!("multipart/form-data; boundary={}", "b".repeat(71))),
            None
        );
    }
}
