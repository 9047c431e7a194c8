//! The frontend's dynamic prompts: on queueing, a text widget marked `dynamicPrompts` loses its
//! comments (`/* ... */`, and `// ...` to the end of the line) and each `{a|b|c}` group becomes
//! one of its options, drawn at random; the chosen option is itself resolved the same way, so
//! groups nest. A backslash keeps the next character from being read as syntax; at the end
//! `\{`, `\}` and `\|` lose their backslash, other escapes keep it (as the frontend does).

/// Resolves `text` as the frontend does when it queues a prompt. `pick(n)` chooses an option
/// index below `n` (at random in the gateway; fixed in tests).
pub fn resolve(text: &str, pick: &mut dyn FnMut(usize) -> usize) -> String {
    let chars: Vec<char> = strip_comments(text).chars().collect();
    let mut pos = 0;
    let mut out = String::new();
    while let Some(&c) = chars.get(pos) {
        pos += 1;
        match c {
            '\\' => escape(&chars, &mut pos, &mut out),
            '{' => out.push_str(&choice(&chars, &mut pos, pick)),
            _ => out.push(c),
        }
    }
    unescape(&out)
}

/// Keeps a backslash and the character after it. The frontend appends the next character
/// whatever it is, which after a final backslash is JavaScript's `undefined`.
fn escape(chars: &[char], pos: &mut usize, out: &mut String) {
    out.push('\\');
    match chars.get(*pos) {
        Some(&next) => out.push(next),
        None => out.push_str("undefined"),
    }
    *pos += 1;
}

/// Reads a group after its `{` up to the matching `}` (or the end) and resolves one option.
fn choice(chars: &[char], pos: &mut usize, pick: &mut dyn FnMut(usize) -> usize) -> String {
    let mut options = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    while let Some(&c) = chars.get(*pos) {
        *pos += 1;
        match c {
            '\\' => {
                escape(chars, pos, &mut current);
                continue;
            }
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            '|' if depth == 0 => {
                options.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    options.push(current);
    let chosen = pick(options.len()).min(options.len() - 1);
    resolve(&options[chosen], pick)
}

/// Removes `/* ... */` (across lines) and `// ...` up to the end of the line, leftmost first.
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("/*")
            && let Some(end) = after.find("*/")
        {
            rest = &after[end + 2..];
        } else if rest.starts_with("//") {
            // JavaScript's `.` stops at any line terminator.
            let end = rest
                .find(['\n', '\r', '\u{2028}', '\u{2029}'])
                .unwrap_or(rest.len());
            rest = &rest[end..];
        } else {
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                out.push(c);
            }
            rest = chars.as_str();
        }
    }
    out
}

/// `\{`, `\}` and `\|` become the character alone.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&next) = chars.peek()
            && matches!(next, '{' | '}' | '|')
        {
            out.push(next);
            chars.next();
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(text: &str) -> String {
        resolve(text, &mut |_| 0)
    }

    #[test]
    fn comments_go_and_single_choices_stay() {
        let text = "a photo of a {cat} // a line comment\n/* block\ncomment */sitting on a \\{mat\\}, http://example.com/x";
        assert_eq!(first(text), "a photo of a cat \nsitting on a {mat}, http:");
    }

    #[test]
    fn groups_nest_and_the_pick_chooses() {
        assert_eq!(first("{a|{b|c}} d"), "a d");
        assert_eq!(resolve("{a|{b|c}} d", &mut |n| n - 1), "c d");
        assert_eq!(first("x | y } z"), "x | y } z");
        assert_eq!(first("unclosed {a|b"), "unclosed a");
        assert_eq!(first("{|empty first}"), "");
    }

    #[test]
    fn only_brace_and_bar_escapes_lose_their_backslash() {
        assert_eq!(first(r"a \| b \{c\} C:\path"), r"a | b {c} C:\path");
        assert_eq!(first(r"{x\|y|z}"), "x|y");
        assert_eq!(
            first("/* unclosed comment stays"),
            "/* unclosed comment stays"
        );
    }
}
