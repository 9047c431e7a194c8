//! HTTP `Range` requests (RFC 9110 §14) for asset content: one byte range is served as
//! `206 Partial Content`; a range past the end is `416` with `Content-Range: bytes */SIZE`.
//!
//! What the RFC lets a server ignore is ignored, and the whole content is sent (`200`): a
//! `Range` header that does not parse, a unit other than `bytes`, and a request for several
//! ranges at once (rarely used; answering it needs `multipart/byteranges`).

/// What to send for a request's `Range` header, given the content's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole content, `200`.
    Full,
    /// Bytes `start..=end` (inclusive, within the content), `206`.
    Partial {
        /// The first byte.
        start: u64,
        /// The last byte.
        end: u64,
    },
    /// No byte of the content is in the range, `416`.
    Unsatisfiable,
}

impl RangeAnswer {
    /// The answer to `header` (the `Range` value, if any) for content of `size` bytes.
    pub fn for_header(header: Option<&str>, size: u64) -> RangeAnswer {
        let Some(spec) = header.and_then(single_byte_range) else {
            return RangeAnswer::Full;
        };
        match spec {
            Spec::From(start) if start < size => RangeAnswer::Partial {
                start,
                end: size - 1,
            },
            Spec::Between(start, end) if start < size => RangeAnswer::Partial {
                start,
                end: end.min(size - 1),
            },
            Spec::Last(count) if count > 0 && size > 0 => RangeAnswer::Partial {
                start: size - count.min(size),
                end: size - 1,
            },
            _ => RangeAnswer::Unsatisfiable,
        }
    }

    /// The `Content-Range` value of a `206` or `416` answer (`None` for the whole content).
    pub fn content_range(self, size: u64) -> Option<String> {
        match self {
            RangeAnswer::Full => None,
            RangeAnswer::Partial { start, end } => Some(format!("bytes {start}-{end}/{size}")),
            RangeAnswer::Unsatisfiable => Some(format!("bytes */{size}")),
        }
    }
}

/// One range as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `START-`
    From(u64),
    /// `START-END`
    Between(u64, u64),
    /// `-COUNT`: the last COUNT bytes.
    Last(u64),
}

/// The one byte range `header` asks for; `None` for anything to ignore.
fn single_byte_range(header: &str) -> Option<Spec> {
    let (unit, set) = header.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return None;
    }
    let (first, last) = set.trim().split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    match (first.is_empty(), last.is_empty()) {
        (false, true) => Some(Spec::From(number(first)?)),
        (false, false) => {
            let (start, end) = (number(first)?, number(last)?);
            (start <= end).then_some(Spec::Between(start, end))
        }
        (true, false) => Some(Spec::Last(number(last)?)),
        (true, true) => None,
    }
}

fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // More digits than a u64 holds is still a valid, huge position.
    Some(text.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeAnswer::{Full, Partial, Unsatisfiable};

    fn answer(header: &str, size: u64) -> RangeAnswer {
        RangeAnswer::for_header(Some(header), size)
    }

    #[test]
    fn single_ranges_are_served_within_the_content() {
        assert_eq!(answer("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(answer("bytes=90-", 100), Partial { start: 90, end: 99 });
        assert_eq!(answer("bytes=90-1000", 100), Partial { start: 90, end: 99 });
        assert_eq!(answer("bytes=-10", 100), Partial { start: 90, end: 99 });
        assert_eq!(answer("bytes=-1000", 100), Partial { start: 0, end: 99 });
        assert_eq!(answer("Bytes = 5 - 5", 100), Partial { start: 5, end: 5 });
        assert_eq!(
            answer("bytes=0-99999999999999999999999", 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(
            Partial { start: 90, end: 99 }.content_range(100).as_deref(),
            Some("bytes 90-99/100")
        );
    }

    #[test]
    fn ranges_past_the_end_are_unsatisfiable() {
        assert_eq!(answer("bytes=100-", 100), Unsatisfiable);
        assert_eq!(answer("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(answer("bytes=-0", 100), Unsatisfiable);
        assert_eq!(answer("bytes=0-", 0), Unsatisfiable);
        assert_eq!(answer("bytes=-5", 0), Unsatisfiable);
        assert_eq!(
            Unsatisfiable.content_range(100).as_deref(),
            Some("bytes */100")
        );
    }

    #[test]
    fn what_may_be_ignored_gets_the_whole_content() {
        assert_eq!(RangeAnswer::for_header(None, 100), Full);
        for header in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=9-5",
            "bytes=a-b",
            "bytes=+1-2",
            "items=0-1",
            "bytes=0-1,5-6",
            "bytes=0-1, 200-300",
        ] {
            assert_eq!(answer(header, 100), Full, "{header:?}");
        }
        assert_eq!(Full.content_range(100), None);
    }
}
