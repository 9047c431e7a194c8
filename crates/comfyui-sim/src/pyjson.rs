//! JSON text as ComfyUI writes it: Python's `json.dumps` defaults, `", "` and `": "` between
//! items and every non-ASCII character escaped (`ensure_ascii`), on the websocket and in HTTP
//! answers, so that a client reading the simulator meets the bytes a real server sends.
//! (Keys come in `serde_json`'s order, not Python's insertion order: no JSON reader may care.)

use serde_json::Value;

/// `value` as Python's `json.dumps(value)` would write it.
pub(crate) fn dumps(value: &Value) -> String {
    let mut out = String::new();
    write(value, &mut out);
    out
}

fn write(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_string(key, out);
                out.push_str(": ");
                write(item, out);
            }
            out.push('}');
        }
        Value::String(text) => write_string(text, out),
        // null, booleans and numbers read the same in both (floats keep their `.0`).
        other => out.push_str(&other.to_string()),
    }
}

/// A JSON string with every non-ASCII character as `\uXXXX` (surrogate pairs beyond the BMP).
fn write_string(text: &str, out: &mut String) {
    for c in Value::from(text).to_string().chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn writes_like_python() {
        let value = json!({"a": [1, 2.0, null], "b": {"c": "é \"q\"\n"}, "d": 0.0, "e": "🦊"});
        assert_eq!(
            dumps(&value),
            r#"{"a": [1, 2.0, null], "b": {"c": "\u00e9 \"q\"\n"}, "d": 0.0, "e": "\ud83e\udd8a"}"#
        );
        let back: Value = serde_json::from_str(&dumps(&value)).expect("JSON");
        assert_eq!(back, value);
    }
}
