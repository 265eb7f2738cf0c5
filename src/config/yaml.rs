//! The file's text into a YAML tree, with the bounds a hostile or careless file needs: a byte
//! order mark is skipped, nesting deeper than [`MAX_DEPTH`] is refused before the parser sees it,
//! and an integer too large for 64 bits becomes a value that its field reports (not a failure of
//! the whole file that names `schedules[1]` instead of the schedule).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess};
use serde_yaml::value::{Tag, TaggedValue};
use serde_yaml::{Mapping, Value};

/// The largest config file read, in bytes. 100,000 schedules (the scale benchmark's largest
/// config) take about 25 MiB; a file larger than this is not a schedules file.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024 * 1024;

/// The deepest nesting accepted: indentation levels plus `[`/`{` inside each other. A real
/// config nests about 6 deep. The YAML parser costs quadratic time in nesting depth (100,000
/// `[` took 30 s of CPU), so the bound is checked by a linear scan before it runs.
pub const MAX_DEPTH: usize = 64;

/// Parses the config text (a leading UTF-8 byte order mark is skipped, as editors write one).
pub(super) fn parse(text: &str) -> Result<Value, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    check_depth(text)?;
    serde_yaml::from_str::<Tree>(text)
        .map(|tree| tree.0)
        .map_err(|e| e.to_string())
}

/// Scans for nesting deeper than [`MAX_DEPTH`]; the error names the line. It follows YAML's
/// lexical rules as far as nesting needs: quoted scalars, comments, block scalars (`|`, `>`),
/// and a `[`/`{` only opens a collection where a value starts or inside another one.
fn check_depth(text: &str) -> Result<(), String> {
    let mut scan = Scan::default();
    for (index, line) in text.lines().enumerate() {
        scan.line(line).map_err(|depth| {
            format!(
                "line {}: nesting is deeper than {MAX_DEPTH} levels (it reaches {depth}: \
                 indentation and [ ] / {{ }} inside each other); no schedules file needs that, \
                 so the file is refused before parsing",
                index + 1
            )
        })?;
    }
    Ok(())
}

/// The lexical state carried from one line to the next.
#[derive(Default)]
struct Scan {
    /// Columns of the enclosing block collections.
    indents: Vec<usize>,
    /// Open `[` and `{`.
    flow: usize,
    /// Inside a quoted scalar that spans lines.
    quote: Option<char>,
    /// Inside a block scalar whose parent line has this indentation.
    block_scalar: Option<usize>,
}

impl Scan {
    /// Reads one line; `Err` carries the depth reached when it exceeds [`MAX_DEPTH`].
    fn line(&mut self, line: &str) -> Result<(), usize> {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let content = line.trim();
        if let Some(parent) = self.block_scalar {
            if content.is_empty() || indent > parent {
                return Ok(());
            }
            self.block_scalar = None;
        }
        let bytes = line.as_bytes();
        let mut at = 0;
        if self.quote.is_none() && self.flow == 0 {
            if content.is_empty() || content.starts_with('#') {
                return Ok(());
            }
            while self.indents.last().is_some_and(|&top| top >= indent) {
                self.indents.pop();
            }
            self.indents.push(indent);
            at = indent;
            // `- - - x`: every sequence indicator on the line opens one more level.
            while bytes.get(at) == Some(&b'-') && bytes.get(at + 1).is_none_or(|b| *b == b' ') {
                at += 1;
                while bytes.get(at) == Some(&b' ') {
                    at += 1;
                }
                self.indents.push(at);
            }
            self.bounded()?;
        }
        self.tokens(&bytes[at..], indent)
    }

    fn depth(&self) -> usize {
        self.indents.len() + self.flow
    }

    fn bounded(&self) -> Result<(), usize> {
        if self.depth() > MAX_DEPTH {
            Err(self.depth())
        } else {
            Ok(())
        }
    }

    /// Follows quotes, comments and flow brackets through the rest of a line.
    fn tokens(&mut self, bytes: &[u8], indent: usize) -> Result<(), usize> {
        // True where a new token may start (a quote or a bracket opens something there).
        let mut token_start = self.quote.is_none();
        let mut property = false;
        let mut i = 0;
        while i < bytes.len() {
            let (c, next) = (bytes[i], bytes.get(i + 1).copied());
            let blank_next = next.is_none_or(|b| b == b' ' || b == b'\t');
            i += 1;
            match self.quote {
                Some('"') => {
                    match c {
                        b'\\' => i += 1,
                        b'"' => self.quote = None,
                        _ => {}
                    }
                    continue;
                }
                Some(_) => {
                    if c == b'\'' {
                        if next == Some(b'\'') {
                            i += 1;
                        } else {
                            self.quote = None;
                        }
                    }
                    continue;
                }
                None => {}
            }
            if property {
                property = !matches!(c, b' ' | b'\t');
                continue;
            }
            match c {
                b'#' if i == 1 || matches!(bytes[i - 2], b' ' | b'\t') => return Ok(()),
                b' ' | b'\t' => {}
                b'"' | b'\'' if token_start => self.quote = Some(c as char),
                b'&' | b'!' if token_start => property = true,
                b'[' | b'{' if token_start || self.flow > 0 => {
                    self.flow += 1;
                    self.bounded()?;
                    token_start = true;
                }
                b']' | b'}' if self.flow > 0 => {
                    self.flow -= 1;
                    token_start = false;
                }
                b',' if self.flow > 0 => token_start = true,
                b':' if blank_next || self.flow > 0 => token_start = true,
                b'-' | b'?' if token_start && blank_next => {}
                b'|' | b'>' if token_start && self.flow == 0 => {
                    self.block_scalar = Some(indent);
                    return Ok(());
                }
                _ => token_start = false,
            }
        }
        Ok(())
    }
}

/// The apps whose `agent_id` is written as a hexadecimal, octal, binary or `+` number, with
/// its spelling. YAML reads `0x10` as 16, so the tree cannot tell; a second, narrow parse that
/// keeps the scalar's text runs only when the text has such a spelling at all.
pub(super) fn non_decimal_agent_ids(text: &str) -> BTreeMap<String, String> {
    let suspicious = text.match_indices("agent_id").any(|(at, key)| {
        let rest = text[at + key.len()..].trim_start_matches([' ', '\t']);
        let Some(value) = rest.strip_prefix(':') else {
            return false;
        };
        let value = value.trim_start_matches([' ', '\t']);
        value.starts_with('+') || ["0x", "0o", "0b"].iter().any(|p| value.starts_with(p))
    });
    if !suspicious {
        return BTreeMap::new();
    }
    #[derive(serde::Deserialize)]
    struct Shadow {
        #[serde(default)]
        apps: BTreeMap<String, ShadowApp>,
    }
    #[derive(serde::Deserialize)]
    struct ShadowApp {
        #[serde(default)]
        agent_id: Option<Spelling>,
    }
    // A file whose apps do not have this shape has other problems, reported by the main pass.
    let Ok(shadow) = serde_yaml::from_str::<Shadow>(text.strip_prefix('\u{feff}').unwrap_or(text))
    else {
        return BTreeMap::new();
    };
    shadow
        .apps
        .into_iter()
        .filter_map(|(name, app)| {
            let written = app.agent_id?.0;
            let digits = written.strip_prefix('+').unwrap_or(&written);
            let decimal = !digits.starts_with("0x")
                && !digits.starts_with("0o")
                && !digits.starts_with("0b")
                && !written.starts_with('+');
            (!decimal).then_some((name, written))
        })
        .collect()
}

/// A scalar's text as written (serde_yaml hands a plain scalar's text to `deserialize_str`).
struct Spelling(String);

impl<'de> Deserialize<'de> for Spelling {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Spelling, D::Error> {
        String::deserialize(deserializer).map(Spelling)
    }
}

/// A YAML tree like [`Value`], except that an integer beyond 64 bits is kept as a float
/// (serde_yaml's own `Value` fails the whole file on one).
struct Tree(Value);

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Tree, D::Error> {
        deserializer.deserialize_any(TreeVisitor)
    }
}

struct TreeVisitor;

impl<'de> serde::de::Visitor<'de> for TreeVisitor {
    type Value = Tree;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Tree, E> {
        Ok(Tree(Value::Bool(b)))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Tree, E> {
        Ok(Tree(Value::Number(i.into())))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Tree, E> {
        Ok(Tree(Value::Number(u.into())))
    }

    fn visit_i128<E>(self, i: i128) -> Result<Tree, E> {
        Ok(Tree(Value::Number((i as f64).into())))
    }

    fn visit_u128<E>(self, u: u128) -> Result<Tree, E> {
        Ok(Tree(Value::Number((u as f64).into())))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Tree, E> {
        Ok(Tree(Value::Number(f.into())))
    }

    fn visit_str<E>(self, s: &str) -> Result<Tree, E> {
        Ok(Tree(Value::String(s.to_string())))
    }

    fn visit_string<E>(self, s: String) -> Result<Tree, E> {
        Ok(Tree(Value::String(s)))
    }

    fn visit_unit<E>(self) -> Result<Tree, E> {
        Ok(Tree(Value::Null))
    }

    fn visit_none<E>(self) -> Result<Tree, E> {
        Ok(Tree(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Tree, D::Error> {
        Tree::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Tree, A::Error> {
        let mut items = Vec::new();
        while let Some(Tree(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Tree(Value::Sequence(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tree, A::Error> {
        let mut mapping = Mapping::new();
        while let Some((Tree(key), Tree(value))) = map.next_entry()? {
            mapping.insert(key, value);
        }
        Ok(Tree(Value::Mapping(mapping)))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Tree, A::Error> {
        let (tag, contents) = data.variant::<String>()?;
        let Tree(value) = contents.newtype_variant()?;
        Ok(Tree(Value::Tagged(Box::new(TaggedValue {
            tag: Tag::new(tag),
            value,
        }))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_error(text: &str) -> Option<String> {
        check_depth(text).err()
    }

    #[test]
    fn real_configs_pass_the_depth_scan() {
        let example = include_str!("../../schedules.example.yaml");
        assert_eq!(depth_error(example), None);
        let tricky =
            "a: it's [not a list\nb: \"[[[[\"\nc: |\n  [[[[[[\n  {{{{{{\nd: '['' ['\ne: x # [[[[\n";
        let deep_text = format!("{tricky}f: {}\n", "[".repeat(MAX_DEPTH * 2));
        assert_eq!(depth_error(tricky), None);
        assert!(serde_yaml::from_str::<Value>(tricky).is_ok());
        // Inside a block scalar nothing nests.
        let block = format!("c: |\n  {}\n", "[".repeat(MAX_DEPTH * 2));
        assert_eq!(depth_error(&block), None);
        assert!(depth_error(&deep_text).is_some_and(|e| e.starts_with("line 8:")));
    }

    #[test]
    fn deep_flow_and_block_nesting_are_refused_with_the_line() {
        let flow = format!("schedules:\n  - x: {}\n", "[".repeat(100_000));
        let error = depth_error(&flow).expect("refused");
        assert!(
            error.starts_with("line 2: nesting is deeper than 64"),
            "{error}"
        );
        let maps = format!("a: {}\n", "{b: ".repeat(10_000));
        assert!(depth_error(&maps).is_some());
        let block: String = (0..100).map(|i| format!("{}b:\n", " ".repeat(i))).collect();
        let error = depth_error(&block).expect("refused");
        assert!(error.starts_with("line 65:"), "{error}");
        let dashes = format!("a:\n  {}x\n", "- ".repeat(100));
        assert!(depth_error(&dashes).is_some());
    }

    #[test]
    fn a_byte_order_mark_is_skipped_and_huge_integers_do_not_fail_the_file() {
        let value = parse("\u{feff}a: 1\nb: 99999999999999999999\n").expect("parses");
        assert_eq!(value["a"], Value::Number(1.into()));
        assert!(value["b"].as_f64().is_some_and(|f| f > 9e19));
    }
}
