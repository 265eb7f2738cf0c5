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

/// The config text, parsed.
pub(super) enum Parsed<'t> {
    /// One tree of the whole file.
    Whole(Value),
    /// The tree of everything but the items of `schedules:` (an empty list there), and the
    /// items, to be parsed piece by piece ([`Pieces::runs`]).
    Split(Value, Pieces<'t>),
}

/// Parses the config text (a leading UTF-8 byte order mark is skipped, as editors write one).
///
/// A file whose `schedules:` is a block list is parsed in pieces (see [`split`]): serde_yaml
/// holds every event of a document in memory before it builds anything (about 600 MiB for
/// 100,000 schedules, and a third of the time of loading them), while a piece is parsed and
/// validated and dropped before the next, and runs of pieces can be read on several threads.
/// The pieces make the same tree; wherever that could be in doubt the whole file is parsed
/// instead.
pub(super) fn parse(text: &str) -> Result<Parsed<'_>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    check_depth(text)?;
    if let Some((head, pieces)) = split(text, PIECE_BYTES)
        && let Ok(head) = parse_tree(&head)
        && let Some(head) = without_sentinel(head)
    {
        return Ok(Parsed::Split(head, pieces));
    }
    parse_tree(text).map(Parsed::Whole)
}

/// The head's tree with an empty `schedules:` list in place of the [`SENTINEL`]; `None` when
/// the list is not the sentinel alone (a later key of the same name won, say).
fn without_sentinel(mut head: Value) -> Option<Value> {
    let list = head.get_mut("schedules")?;
    if *list != Value::Sequence(vec![Value::String(SENTINEL.to_string())]) {
        return None;
    }
    *list = Value::Sequence(Vec::new());
    Some(head)
}

/// Parses the whole config text as one tree.
pub(super) fn parse_whole(text: &str) -> Result<Value, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    check_depth(text)?;
    parse_tree(text)
}

fn parse_tree(text: &str) -> Result<Value, String> {
    serde_yaml::from_str::<Tree>(text)
        .map(|tree| tree.0)
        .map_err(|e| e.to_string())
}

/// Stands in for the items of `schedules:` in the head of a split file; a file holding it is
/// not split.
const SENTINEL: &str = "wecom-notify parses the schedules in pieces";

/// About how many bytes of schedules one piece holds.
pub(super) const PIECE_BYTES: usize = 64 * 1024;

/// The items of `schedules:`, in pieces of whole items.
pub(super) struct Pieces<'t> {
    text: &'t str,
    /// Where each item starts, and where the last one ends.
    starts: Vec<usize>,
    end: usize,
    /// Each piece: the indices of its items.
    pieces: Vec<std::ops::Range<usize>>,
}

/// Splits a file whose top-level `schedules:` (a plain key at column 0, alone on its line)
/// holds a block list: the head (the file with the list's items replaced by [`SENTINEL`]),
/// and the items in pieces of about `piece_bytes`. The lines are read with the lexical rules
/// of [`Scan`], so an item starts only on a line at the list's column that begins with `- `
/// outside any quoted scalar, block scalar or `[ ]`/`{ }`; parsed alone, a run of such items
/// makes the items it makes in the file. `None` (parse the whole file) for anything else: no such key, or two; a list in
/// another form; an anchor, alias or tag anywhere (their meaning crosses pieces); a tab where
/// indentation could be; a document marker or directive.
fn split(text: &str, piece_bytes: usize) -> Option<(String, Pieces<'_>)> {
    if text.contains(SENTINEL) {
        return None;
    }
    let mut scan = Scan::default();
    let mut offset = 0;
    // Where the line after `schedules:` starts; the items' column; where the list ends.
    let mut block_start: Option<usize> = None;
    let mut column: Option<usize> = None;
    let mut block_end: Option<usize> = None;
    let mut starts = Vec::new();
    for raw in text.split_inclusive('\n') {
        let start = offset;
        offset += raw.len();
        let line = raw.strip_suffix('\n').unwrap_or(raw);
        let line = line.strip_suffix('\r').unwrap_or(line);
        let spaces = line.len() - line.trim_start_matches(' ').len();
        let content = &line[spaces..];
        if content.starts_with('\t')
            || (spaces == 0
                && (line.starts_with("---") || line.starts_with("...") || line.starts_with('%')))
        {
            return None;
        }
        let blank = content.trim().is_empty() || content.starts_with('#');
        let structural = scan.quote.is_none()
            && scan.flow == 0
            && scan
                .block_scalar
                .is_none_or(|parent| !blank && spaces <= parent);
        if structural && !blank {
            let key = spaces == 0 && is_schedules_key(content);
            match (block_start, column, block_end) {
                (None, _, _) if key => block_start = Some(offset),
                (Some(_), None, _) => {
                    if !is_item(content) {
                        return None;
                    }
                    column = Some(spaces);
                    starts.push(start);
                }
                (Some(_), Some(n), None) => {
                    if spaces == n && is_item(content) {
                        starts.push(start);
                    } else if spaces <= n {
                        block_end = Some(start);
                        if key {
                            return None;
                        }
                    }
                }
                _ if key => return None,
                _ => {}
            }
        }
        scan.line(line).ok()?;
    }
    if scan.properties || starts.is_empty() {
        return None;
    }
    let (block_start, column) = (block_start?, column?);
    let block_end = block_end.unwrap_or(text.len());
    let mut pieces = Vec::new();
    let mut first = 0;
    for (index, &at) in starts.iter().enumerate().skip(1) {
        if at - starts[first] >= piece_bytes {
            pieces.push(first..index);
            first = index;
        }
    }
    pieces.push(first..starts.len());
    let head = format!(
        "{}{}- {SENTINEL}\n{}",
        &text[..block_start],
        " ".repeat(column),
        &text[block_end..]
    );
    Some((
        head,
        Pieces {
            text,
            starts,
            end: block_end,
            pieces,
        },
    ))
}

/// `schedules:` alone on its line (a comment may follow).
fn is_schedules_key(content: &str) -> bool {
    content
        .strip_prefix("schedules:")
        .map(str::trim_start)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('#'))
}

/// A line that starts a list item: `- ...` or a lone `-`.
fn is_item(content: &str) -> bool {
    content == "-" || content.starts_with("- ")
}

impl Pieces<'_> {
    /// How many items there are.
    pub fn count(&self) -> usize {
        self.starts.len()
    }

    /// The text of item `index` (from its `- ` line to the next item's), as written.
    pub fn item(&self, index: usize) -> &str {
        self.text_of(index..index + 1)
    }

    /// The text of the consecutive items `items`.
    fn text_of(&self, items: std::ops::Range<usize>) -> &str {
        let end = self.starts.get(items.end).copied().unwrap_or(self.end);
        &self.text[self.starts[items.start]..end]
    }

    /// The pieces in at most `n` runs of consecutive pieces, of about equal bytes.
    pub fn runs(&self, n: usize) -> Vec<Run<'_>> {
        let n = n.clamp(1, self.pieces.len().max(1));
        let total = self.starts.first().map_or(0, |start| self.end - start);
        let mut runs = Vec::with_capacity(n);
        let (mut from, mut bytes) = (0, 0);
        for (at, piece) in self.pieces.iter().enumerate() {
            bytes += self.text_of(piece.clone()).len();
            let last = at + 1 == self.pieces.len();
            // Cut once this run holds its share of the bytes so far.
            if last || bytes * n >= total * (runs.len() + 1) {
                runs.push(Run {
                    all: self,
                    pieces: &self.pieces[from..=at],
                });
                from = at + 1;
            }
        }
        runs
    }
}

/// Consecutive pieces of a split `schedules:`.
pub(super) struct Run<'p> {
    all: &'p Pieces<'p>,
    pieces: &'p [std::ops::Range<usize>],
}

impl Run<'_> {
    /// The indices of its items among all items.
    pub fn indices(&self) -> std::ops::Range<usize> {
        let first = self.pieces.first().map_or(0, |p| p.start);
        first..self.pieces.last().map_or(first, |p| p.end)
    }

    /// Parses the pieces in order and hands each item, with its text, to `each`. `false` as
    /// soon as a piece does not parse as the items it was cut around: then the whole file must
    /// be parsed.
    pub fn items(&self, mut each: impl FnMut(&str, Value)) -> bool {
        for piece in self.pieces {
            match parse_tree(self.all.text_of(piece.clone())) {
                Ok(Value::Sequence(items)) if items.len() == piece.len() => {
                    for (index, item) in piece.clone().zip(items) {
                        each(self.all.item(index), item);
                    }
                }
                _ => return false,
            }
        }
        true
    }
}

/// Parses the text of one item of a split `schedules:` ([`Pieces::item`]) on its own, as a
/// piece of one item; `None` when it does not parse as one item.
pub(super) fn parse_item(text: &str) -> Option<Value> {
    match parse_tree(text) {
        Ok(Value::Sequence(mut items)) if items.len() == 1 => items.pop(),
        _ => None,
    }
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
    /// An anchor, alias or tag (`&a`, `*a`, `!t`) was seen: its meaning can reach across the
    /// file, so the file is not parsed in pieces ([`split`]).
    properties: bool,
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
                b'&' | b'!' if token_start => {
                    property = true;
                    self.properties = true;
                }
                b'*' if token_start => {
                    self.properties = true;
                    token_start = false;
                }
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

    /// The tree that parsing in pieces of one item each makes, if the file is split at all.
    /// Parsed in one piece of every item, each item's text also parses alone as that item.
    fn split_tree(text: &str) -> Option<Value> {
        let (head, pieces) = split(text, 1)?;
        let mut tree = without_sentinel(parse_tree(&head).ok()?)?;
        let mut items = Vec::new();
        let [run] = &pieces.runs(1)[..] else {
            panic!("one run asked for");
        };
        if !run.items(|_, item| items.push(item)) {
            return None;
        }
        assert_eq!(items.len(), pieces.count());
        let (_, one) = split(text, usize::MAX)?;
        let mut alone = Vec::new();
        assert!(one.runs(1)[0].items(|text, item| {
            assert_eq!(parse_item(text).as_ref(), Some(&item), "{text}");
            alone.push(item);
        }));
        assert_eq!(alone, items);
        *tree.get_mut("schedules")? = Value::Sequence(items);
        Some(tree)
    }

    #[test]
    fn a_file_parsed_in_pieces_makes_the_tree_of_the_whole_file() {
        let example = include_str!("../../schedules.example.yaml");
        let tricky = "\
# leading comment
timezone: Asia/Shanghai
apps:
  ops: { corp_id: ww1, agent_id: 1, secret: s }
schedules:   # the list
  # a comment before the first item
  - name: a
    cron: \"30 9 * * 1-5\"
    text:
      content: |
        a block scalar with a line that looks like an item:
        - name: not-an-item
  - name: b
    cron: '0 * * * *'
    text: { content: \"a quoted scalar
  - name: still-inside-the-quote
  \" }
# a comment at column 0 between items
  -   name: c
      to: [u1,
        u2, { a: b,
  c: d }]
      text: { content: it's plain }
  -
    name: d
calendars:
  cn: { skip: [2026-10-01] }
";
        let zero = "schedules:\r\n- name: a\r\n  cron: x\r\n- name: b\r\napps: {}\r\n";
        for text in [example, tricky, zero] {
            let whole = parse_whole(text).expect("parses");
            assert_eq!(split_tree(text), Some(whole), "{text}");
        }
        let (_, pieces) = split(tricky, 1).expect("split");
        assert_eq!((pieces.count(), pieces.pieces.len()), (4, 4));
        let (_, pieces) = split(zero, 1).expect("split");
        assert_eq!(pieces.count(), 2);
    }

    #[test]
    fn a_file_whose_pieces_could_differ_is_parsed_whole() {
        let item = "  - { name: a, cron: '* * * * *' }\n";
        let refused = [
            format!("base: &b {{ x: 1 }}\nschedules:\n{item}  - *b\n"),
            format!("schedules:\n{item}  - !!str x\n"),
            format!("schedules:\n{item}schedules:\n{item}"),
            "schedules: [a]\nx: 1\n".to_string(),
            "schedules:\n  name: a\n".to_string(),
            format!("schedules:\n{item}---\nschedules:\n{item}"),
            format!("schedules:\n{item}\t- x\n"),
            format!("schedules:\n{item}  - {SENTINEL}\n"),
            "schedules:\n".to_string(),
        ];
        for text in &refused {
            assert!(split_tree(text).is_none(), "{text}");
        }
        // A later duplicate key wins in the whole tree; the head then holds no sentinel.
        let later = format!("schedules:\n{item}\"schedules\": ~\n");
        assert!(split(&later, 1).is_some());
        assert!(split_tree(&later).is_none());
    }

    #[test]
    fn a_byte_order_mark_is_skipped_and_huge_integers_do_not_fail_the_file() {
        let value = parse_whole("\u{feff}a: 1\nb: 99999999999999999999\n").expect("parses");
        assert_eq!(value["a"], Value::Number(1.into()));
        assert!(value["b"].as_f64().is_some_and(|f| f > 9e19));
    }
}
