//! The frontend's text replacements in output file names: the `filename_prefix` of its save
//! nodes is sent with `%NODE.WIDGET%` replaced by that widget's value (NODE is a node's "Node
//! name for S&R" property, else its title; characters not allowed in file names become `_`)
//! and `%date:FORMAT%` by the date (`yyyy`, `yy`, `MM`, `dd`, `hh`, `mm`, `ss`, single letters
//! unpadded). The gateway uses UTC where the browser would use its local time.

/// The save nodes whose `filename_prefix` the frontend rewrites.
pub const SAVE_NODE_TYPES: [&str; 17] = [
    "SaveImage",
    "SaveImageAdvanced",
    "SaveSVGNode",
    "SaveVideo",
    "SaveAnimatedWEBP",
    "SaveWEBM",
    "SaveAudio",
    "SaveAudioMP3",
    "SaveAudioOpus",
    "SaveAudioAdvanced",
    "SaveGLB",
    "SaveAnimatedPNG",
    "CLIPSave",
    "VAESave",
    "ModelSave",
    "LoraSave",
    "SaveLatent",
];

/// A moment as the date patterns need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateParts {
    /// The year.
    pub year: u64,
    /// 1 to 12.
    pub month: u64,
    /// 1 to 31.
    pub day: u64,
    /// 0 to 23.
    pub hour: u64,
    /// 0 to 59.
    pub minute: u64,
    /// 0 to 59.
    pub second: u64,
}

impl DateParts {
    /// Now, in UTC.
    pub fn now_utc() -> DateParts {
        // `YYYY-MM-DDTHH:MM:SS.mmmZ`
        let text = crate::timestamp::now_rfc3339();
        let field = |from: usize, to: usize| text.get(from..to).and_then(|s| s.parse().ok());
        DateParts {
            year: field(0, 4).unwrap_or(1970),
            month: field(5, 7).unwrap_or(1),
            day: field(8, 10).unwrap_or(1),
            hour: field(11, 13).unwrap_or(0),
            minute: field(14, 16).unwrap_or(0),
            second: field(17, 19).unwrap_or(0),
        }
    }
}

/// Replaces every `%...%` in `value`; `widget(node, name)` gives a widget's value by node name
/// (its S&R name or title) or `None` when there is no such node or widget (the pattern stays).
pub fn apply(value: &str, now: DateParts, widget: &dyn Fn(&str, &str) -> Option<String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find('%') {
        let after = &rest[start + 1..];
        let Some(len) = after.find('%').filter(|&len| len > 0) else {
            // `%%` is not a pattern: keep one `%` and look again from the second.
            out.push_str(&rest[..=start]);
            rest = after;
            continue;
        };
        out.push_str(&rest[..start]);
        let text = &after[..len];
        out.push_str(&replacement(text, now, widget).unwrap_or_else(|| format!("%{text}%")));
        rest = &after[len + 1..];
    }
    out.push_str(rest);
    out
}

fn replacement(
    text: &str,
    now: DateParts,
    widget: &dyn Fn(&str, &str) -> Option<String>,
) -> Option<String> {
    let parts: Vec<&str> = text.split('.').collect();
    if let [node, name] = parts.as_slice() {
        let value = widget(node, name)?;
        return Some(
            value
                .chars()
                .map(|c| {
                    if matches!(c, '/' | '?' | '<' | '>' | '\\' | ':' | '*' | '|' | '"')
                        || c.is_ascii_control()
                    {
                        '_'
                    } else {
                        c
                    }
                })
                .collect(),
        );
    }
    parts[0]
        .strip_prefix("date:")
        .map(|format| format_date(format, now))
}

/// The frontend's date format: `d`, `M`, `h`, `m`, `s` (one or two letters, two padded), `yy`
/// and `yyyy`; anything else is kept.
pub fn format_date(format: &str, now: DateParts) -> String {
    let chars: Vec<char> = format.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let value = match c {
            'd' => Some(now.day),
            'M' => Some(now.month),
            'h' => Some(now.hour),
            'm' => Some(now.minute),
            's' => Some(now.second),
            _ => None,
        };
        if let Some(value) = value {
            let width = if chars.get(i + 1) == Some(&c) { 2 } else { 1 };
            out.push_str(&format!("{value:0width$}"));
            i += width;
        } else if c == 'y' && chars.get(i + 1) == Some(&'y') {
            let run = chars[i..].iter().take(4).take_while(|&&y| y == 'y').count();
            match run {
                2 => out.push_str(&format!("{:02}", now.year % 100)),
                4 => out.push_str(&now.year.to_string()),
                _ => out.push_str("yyy"),
            }
            i += run;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: DateParts = DateParts {
        year: 2026,
        month: 3,
        day: 7,
        hour: 9,
        minute: 5,
        second: 30,
    };

    fn lookup(node: &str, name: &str) -> Option<String> {
        (node == "KSampler" && name == "seed")
            .then(|| "42".into())
            .or_else(|| (node == "Prompt" && name == "text").then(|| "a/b: c?".into()))
    }

    #[test]
    fn node_widgets_and_dates_are_replaced() {
        assert_eq!(apply("img/%KSampler.seed%_x", NOW, &lookup), "img/42_x");
        assert_eq!(apply("%Prompt.text%", NOW, &lookup), "a_b_ c_");
        assert_eq!(
            apply("%date:yyyy-MM-dd%/%date:h.m%", NOW, &lookup),
            "2026-03-07/%date:h.m%"
        );
        assert_eq!(apply("%date:yy_hh-mm-ss d%", NOW, &lookup), "26_09-05-30 7");
    }

    #[test]
    fn unknown_patterns_stay() {
        assert_eq!(
            apply("%Missing.seed% %width% 50%", NOW, &lookup),
            "%Missing.seed% %width% 50%"
        );
        assert_eq!(apply("100%% sure", NOW, &lookup), "100%% sure");
        assert_eq!(format_date("yyy", NOW), "yyy");
    }
}
