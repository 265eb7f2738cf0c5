//! Text from WeCom, the config or the history, made safe to print on a terminal or in a log
//! line: every character that could move the cursor, end the line, recolour the screen or
//! reorder what is displayed is written as an escape (`\n`, `\u{1b}`, `\u{202e}`).
//!
//! An errmsg with a newline would otherwise forge a whole log line (`INFO sent schedule=x`),
//! an ESC sequence would drive the operator's terminal, and U+202E would show text reversed.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// `text` with every dangerous character escaped; borrowed when there is none (the usual case).
pub fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_dangerous) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_shown(&mut out, c);
    }
    Cow::Owned(out)
}

/// Writes `text` to `out` as [`shown`] would return it.
pub fn write_shown(out: &mut impl fmt::Write, text: &str) -> fmt::Result {
    let mut rest = text;
    while let Some(at) = rest.find(is_dangerous) {
        out.write_str(&rest[..at])?;
        let c = rest[at..].chars().next().unwrap_or_default();
        let mut escaped = String::new();
        push_shown(&mut escaped, c);
        out.write_str(&escaped)?;
        rest = &rest[at + c.len_utf8()..];
    }
    out.write_str(rest)
}

/// A JSON text with the characters JSON leaves raw but a terminal acts on (DEL, C1, bidi
/// controls...) written as `\uXXXX`, which every JSON reader reads back as the same character.
/// C0 controls are escaped by JSON itself inside strings, and a line's own end must stay.
pub fn json_safe(json: &str) -> Cow<'_, str> {
    let risky = |c: char| is_dangerous(c) && c >= ' ';
    if !json.chars().any(risky) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if risky(c) {
            // Every such character is in the Basic Multilingual Plane: one \u escape.
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `bytes` with every `%XX` escape turned back into its byte (one pass: `%252F` gives `%2F`).
/// For masking: a secret echoed in a URL is found whichever way it was encoded.
pub fn percent_decoded(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn push_shown(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if is_dangerous(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// C0 controls (newline, ESC, NUL...), DEL and C1 controls (U+0080–U+009F, CSI among them);
/// the bidirectional controls that reorder what a terminal shows (U+061C, U+200E, U+200F,
/// U+202A–U+202E, U+2066–U+2069); the line and paragraph separators that some viewers break
/// lines at (U+2028, U+2029); and the invisible characters that make two ids look alike
/// (U+200B–U+200D, U+2060–U+2065, U+FEFF). The config refuses all of them in ids.
pub fn is_dangerous(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{feff}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_are_escaped_and_the_rest_is_kept() {
        assert!(matches!(shown("站会 ok"), Cow::Borrowed("站会 ok")));
        assert_eq!(
            shown("a\n INFO sent\r\t\0\u{1b}[31m\u{7f}\u{9b}\u{202e}txt\u{2066}"),
            "a\\n INFO sent\\r\\t\\u{0}\\u{1b}[31m\\u{7f}\\u{9b}\\u{202e}txt\\u{2066}"
        );
        let mut out = String::new();
        write_shown(&mut out, "x\u{2028}y\u{feff}").unwrap();
        assert_eq!(out, "x\\u{2028}y\\u{feff}");
        assert!(shown("\u{202e}").chars().all(|c| !is_dangerous(c)));
        let json = json_safe("{\"e\":\"\u{202e}\u{7f}\\n\"}\n");
        assert_eq!(json, "{\"e\":\"\\u202e\\u007f\\n\"}\n");
        let back: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(back["e"], "\u{202e}\u{7f}\n");
    }
}
