//! Reading YAML mappings field by field, so that one bad field never hides another: each key is
//! deserialized on its own, unknown keys are reported with the closest known one, and a problem
//! is always attributed to its schedule or app and field.

use std::collections::HashSet;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::{Problem, Subject};

/// Every problem and warning found so far.
#[derive(Default)]
pub(super) struct Report {
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
    /// One copy of each warning text: many schedules get the same one, and a warning is kept as
    /// long as its config is in force (measured with heaptrack, 100,000 schedules and 15,000
    /// warnings of a few texts: 3.6 MB as a copy each).
    texts: HashSet<Arc<str>>,
}

impl Report {
    pub fn error(&mut self, subject: &Subject, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            subject: subject.clone(),
            field: field.into(),
            message: message.into().into(),
        });
    }

    pub fn warn(&mut self, subject: &Subject, field: &str, message: impl Into<String>) {
        let message = self.text(message.into());
        let field = self.text(field);
        self.warnings.push(Problem {
            subject: subject.clone(),
            field,
            message,
        });
    }

    /// The one copy of `text`.
    fn text(&mut self, text: impl AsRef<str> + Into<Arc<str>>) -> Arc<str> {
        match self.texts.get(text.as_ref()) {
            Some(shared) => shared.clone(),
            None => {
                let shared: Arc<str> = text.into();
                self.texts.insert(shared.clone());
                shared
            }
        }
    }
}

/// One key of a mapping.
pub(super) enum Field<T> {
    Missing,
    /// Present but unusable; already reported.
    Invalid,
    Value(T),
}

impl<T> Field<T> {
    pub fn ok(self) -> Option<T> {
        match self {
            Field::Value(value) => Some(value),
            _ => None,
        }
    }
}

/// A mapping being read: where it is (for messages) and its keys.
pub(super) struct Entry<'a> {
    pub subject: &'a Subject,
    path: String,
    map: Mapping,
    /// Known keys that an unknown key looked like (`txet` → `text`).
    typos: Vec<&'static str>,
}

impl<'a> Entry<'a> {
    /// Opens `value` as a mapping at `path` (`""` for an entry itself, `"to"` for a nested one),
    /// reporting every key not in `known`.
    pub fn open(
        value: Value,
        known: &[&'static str],
        subject: &'a Subject,
        path: &str,
        report: &mut Report,
    ) -> Option<Entry<'a>> {
        let map = match value {
            Value::Mapping(map) => map,
            Value::Null => Mapping::new(),
            other => {
                let field = if path.is_empty() { "(entry)" } else { path };
                report.error(
                    subject,
                    field,
                    format!("must be a mapping of keys, not {}", kind(&other)),
                );
                return None;
            }
        };
        let mut typos = Vec::new();
        for key in map.keys() {
            let name = key
                .as_str()
                .map_or_else(|| format!("{key:?}"), str::to_string);
            if !known.contains(&name.as_str()) {
                let suggestion = closest(&name, known);
                typos.extend(suggestion);
                let hint = suggestion
                    .map(|k| format!(" (did you mean {k}?)"))
                    .unwrap_or_default();
                report.error(
                    subject,
                    &join(path, &name),
                    format!("unknown key{hint}; known keys here: {}. A typo must not silently drop a setting", known.join(", ")),
                );
            }
        }
        Some(Entry {
            subject,
            path: path.to_string(),
            map,
            typos,
        })
    }

    /// Reports a missing required key, unless a misspelling of it was already reported.
    pub fn missing(&self, key: &str, report: &mut Report, message: &str) {
        if !self.typos.contains(&key) {
            report.error(self.subject, &self.name(key), message);
        }
    }

    /// True when an unknown key of this entry looked like `key` (and was reported as such).
    pub fn misspelt(&self, key: &str) -> bool {
        self.typos.contains(&key)
    }

    /// The field name as messages show it (`to.users`).
    pub fn name(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub fn raw(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Moves `key`'s value out of the entry.
    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    /// Deserializes `key` as `T`. For the secret keys (`secret`, `secret_env`, ...,
    /// `database_password_*`) the value never appears in the message: an operator may have
    /// pasted the secret into any of them.
    pub fn get<T: DeserializeOwned>(&self, key: &str, report: &mut Report) -> Field<T> {
        let Some(value) = self.raw(key) else {
            return Field::Missing;
        };
        match serde_yaml::from_value::<T>(value.clone()) {
            Ok(parsed) => Field::Value(parsed),
            Err(e) => {
                let message = if key.starts_with("secret")
                    || key == "key"
                    || key.starts_with("key_")
                    || key.starts_with("database_password")
                {
                    format!(
                        "must be a string; quote it (\"...\"), it is a {}",
                        kind(value)
                    )
                } else {
                    format!("{e}")
                };
                report.error(self.subject, &self.name(key), message);
                Field::Invalid
            }
        }
    }

    /// A nested mapping.
    pub fn nested(
        &self,
        key: &str,
        known: &[&'static str],
        report: &mut Report,
    ) -> Field<Entry<'a>> {
        match self.raw(key) {
            None => Field::Missing,
            Some(value) => {
                match Entry::open(value.clone(), known, self.subject, &self.name(key), report) {
                    Some(entry) => Field::Value(entry),
                    None => Field::Invalid,
                }
            }
        }
    }

    /// A list of ids, written as YAML strings or numbers (`parties: [2]`), as strings.
    pub fn ids(&self, key: &str, report: &mut Report) -> Option<Vec<String>> {
        let Some(value) = self.raw(key) else {
            return Some(Vec::new());
        };
        let Value::Sequence(items) = value else {
            report.error(
                self.subject,
                &self.name(key),
                format!("must be a list such as [a, b], not {}", kind(value)),
            );
            return None;
        };
        let mut ids = Vec::with_capacity(items.len());
        let mut ok = true;
        for item in items {
            match item {
                Value::String(text) => ids.push(text.clone()),
                Value::Number(number) => ids.push(number.to_string()),
                other => {
                    report.error(
                        self.subject,
                        &self.name(key),
                        format!("lists {}, but ids are strings or numbers", kind(other)),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(ids)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// The known key within edit distance 2 of `name`, if any.
pub(super) fn closest(name: &str, known: &[&'static str]) -> Option<&'static str> {
    known
        .iter()
        .map(|k| (distance(name, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, k)| k)
}

fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_closest_key() {
        assert_eq!(closest("txet", &["text", "textcard", "to"]), Some("text"));
        assert_eq!(closest("colour", &["text", "to"]), None);
    }
}
