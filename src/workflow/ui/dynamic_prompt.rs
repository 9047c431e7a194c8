//! The frontend's dynamic prompts: on queueing, a text widget marked `dynamicPrompts` loses its
//! comments (`/* ... */` and `// ...` to the end of the line) and each `{a|b|c}` group becomes one
//! of its options, drawn at random (groups nest; `\{`, `\}`, `\|` and `\\` are literal).

/// Resolves `text` as the frontend does when it queues a prompt. `pick(n)` chooses an option
/// index below `n` (at random in the gateway; fixed in tests).
pub fn resolve(text: &str, pick: &mut dyn FnMut(usize) -> usize) -> String {
    let clean = strip_comments(text);
    let chars: Vec<char> = clean.chars().collect();
    let mut pos = 0;
    let mut out = String::new();
    while pos < chars.len() {
        let (text, _) = parse_until(&chars, &mut pos, false, pick);
        out.push_str(&text);
        if pos < chars.len() {
            // A stray `}` or `|` at the top level is plain text.
            out.push(chars[pos]);
            pos += 1;
        }
    }
    out
}

/// Removes `/* ... */` (across lines) and `// ...` (to the end of the line).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("/*")
            && let Some(end) = after.find("*/")
        {
            rest = &after[end + 2..];
        } else if rest.starts_with("//") {
            rest = rest.find('\n').map_or("", |end| &rest[end..]);
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

/// Reads text up to an unescaped `|` or `}` (when `in_group`) or the end, resolving groups.
/// Returns the text and whether it stopped at `|`.
fn parse_until(
    chars: &[char],
    pos: &mut usize,
    in_group: bool,
    pick: &mut dyn FnMut(usize) -> usize,
) -> (String, bool) {
    let mut out = String::new();
    while let Some(&c) = chars.get(*pos) {
        match c {
            '\\' if *pos + 1 < chars.len() => {
                out.push(chars[*pos + 1]);
                *pos += 2;
            }
            '{' => {
                *pos += 1;
                let mut options = Vec::new();
                loop {
                    let (option, more) = parse_until(chars, pos, true, pick);
                    options.push(option);
                    if more {
                        *pos += 1; // past '|'
                        continue;
                    }
                    if *pos < chars.len() {
                        *pos += 1; // past '}'
                    }
                    break;
                }
                let chosen = pick(options.len()).min(options.len() - 1);
                out.push_str(&options[chosen]);
            }
            '|' | '}' if in_group => return (out, c == '|'),
            '|' | '}' => return (out, false),
            _ => {
                out.push(c);
                *pos += 1;
            }
        }
    }
    (out, false)
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
    }
}
