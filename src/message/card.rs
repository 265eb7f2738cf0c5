//! `template_card`: WeCom's own card JSON, kept as the tree the operator wrote (same keys, same
//! order), whose string leaves are templates. The config checks its shape against WeCom's
//! documented fields; what can only be checked once rendered (a `task_id`'s characters, the
//! menu's keys) is checked here.
//!
//! Source of the rules: WeCom's 发送应用消息, 模板卡片消息 (文本通知型, 图文展示型),
//! <https://developer.work.weixin.qq.com/document/path/90236> (last updated 2025-09-24).

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use crate::template::{SlotContext, Template};

/// `template_card.task_id`: at most this many bytes.
pub const TASK_ID_MAX_BYTES: usize = 128;
/// `action_menu.action_list[].key`: at most this many bytes.
pub const ACTION_KEY_MAX_BYTES: usize = 1024;

/// The card types a schedule can send. The interactive ones (`button_interaction`,
/// `vote_interaction`, `multiple_interaction`) need a callback URL that answers WeCom, which
/// this daemon does not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CardType {
    TextNotice,
    NewsNotice,
}

impl CardType {
    pub const ALL: [CardType; 2] = [CardType::TextNotice, CardType::NewsNotice];

    /// The `card_type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            CardType::TextNotice => "text_notice",
            CardType::NewsNotice => "news_notice",
        }
    }

    pub fn parse(name: &str) -> Option<CardType> {
        CardType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// One value of a card as written: strings are templates (`S = Template`) until rendered
/// (`S = String`); a mapping keeps its keys in the order written, which is the order posted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CardValue<S = String> {
    Bool(bool),
    Number(serde_json::Number),
    String(S),
    List(Vec<CardValue<S>>),
    Map(Vec<(String, CardValue<S>)>),
}

impl<S> CardValue<S> {
    /// The value of `key` when this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&CardValue<S>> {
        match self {
            CardValue::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The items when this is a list.
    pub fn items(&self) -> &[CardValue<S>] {
        match self {
            CardValue::List(items) => items,
            _ => &[],
        }
    }

    pub fn as_string(&self) -> Option<&S> {
        match self {
            CardValue::String(s) => Some(s),
            _ => None,
        }
    }
}

impl CardValue<Template> {
    pub fn is_static(&self) -> bool {
        match self {
            CardValue::Bool(_) | CardValue::Number(_) => true,
            CardValue::String(template) => template.is_static(),
            CardValue::List(items) => items.iter().all(CardValue::is_static),
            CardValue::Map(entries) => entries.iter().all(|(_, v)| v.is_static()),
        }
    }

    pub fn render(&self, context: &SlotContext<'_>) -> CardValue {
        match self {
            CardValue::Bool(b) => CardValue::Bool(*b),
            CardValue::Number(n) => CardValue::Number(n.clone()),
            CardValue::String(template) => CardValue::String(template.render(context)),
            CardValue::List(items) => {
                CardValue::List(items.iter().map(|v| v.render(context)).collect())
            }
            CardValue::Map(entries) => CardValue::Map(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.render(context)))
                    .collect(),
            ),
        }
    }
}

impl CardValue {
    /// The line `check` shows: the main title, else the secondary text.
    pub fn headline(&self) -> &str {
        self.get("main_title")
            .and_then(|t| t.get("title"))
            .or_else(|| self.get("sub_title_text"))
            .and_then(CardValue::as_string)
            .map_or("", String::as_str)
    }

    /// The limits of the rendered card, as `(field, problem)`.
    pub fn limit_problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if let Some(task_id) = self.get("task_id").and_then(CardValue::as_string) {
            let field = "template_card.task_id".to_string();
            if task_id.len() > TASK_ID_MAX_BYTES {
                problems.push((
                    field.clone(),
                    format!(
                        "is {} bytes once rendered, WeCom allows {TASK_ID_MAX_BYTES}",
                        task_id.len()
                    ),
                ));
            }
            if let Some(c) = task_id
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '@')))
            {
                problems.push((field, format!("\"{task_id}\" contains {c:?}; WeCom accepts only letters, digits, '_', '-' and '@' (use {{{{ slot:%Y%m%d%H%M%S }}}}, not {{{{ time }}}})")));
            }
        }
        let actions = self
            .get("action_menu")
            .and_then(|m| m.get("action_list"))
            .map_or(&[][..], CardValue::items);
        let mut keys = Vec::new();
        for (i, action) in actions.iter().enumerate() {
            let Some(key) = action.get("key").and_then(CardValue::as_string) else {
                continue;
            };
            let field = format!("template_card.action_menu.action_list[{i}].key");
            if key.len() > ACTION_KEY_MAX_BYTES {
                problems.push((
                    field.clone(),
                    format!(
                        "is {} bytes, WeCom allows {ACTION_KEY_MAX_BYTES}",
                        key.len()
                    ),
                ));
            }
            if keys.contains(&key) {
                problems.push((
                    field,
                    format!("\"{key}\" is used by an earlier action; WeCom needs each key once"),
                ));
            }
            keys.push(key);
        }
        problems
    }
}

/// Serialized as written: the map's keys in their order, numbers as YAML gave them.
impl Serialize for CardValue {
    fn serialize<Z: Serializer>(&self, serializer: Z) -> Result<Z::Ok, Z::Error> {
        match self {
            CardValue::Bool(b) => serializer.serialize_bool(*b),
            CardValue::Number(n) => n.serialize(serializer),
            CardValue::String(s) => serializer.serialize_str(s),
            CardValue::List(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            CardValue::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> CardValue {
        CardValue::String(s.to_string())
    }

    #[test]
    fn a_card_serializes_in_the_order_written() {
        let card = CardValue::Map(vec![
            ("card_type".into(), text("text_notice")),
            (
                "main_title".into(),
                CardValue::Map(vec![("title".into(), text("值班"))]),
            ),
            (
                "card_action".into(),
                CardValue::Map(vec![
                    ("url".into(), text("https://e.com")),
                    ("type".into(), CardValue::Number(1.into())),
                ]),
            ),
        ]);
        assert_eq!(
            serde_json::to_string(&card).unwrap(),
            r#"{"card_type":"text_notice","main_title":{"title":"值班"},"card_action":{"url":"https://e.com","type":1}}"#
        );
        assert_eq!(card.headline(), "值班");
    }

    #[test]
    fn task_id_and_action_keys_are_checked_once_rendered() {
        let action =
            |key: &str| CardValue::Map(vec![("text".into(), text("x")), ("key".into(), text(key))]);
        let card = CardValue::Map(vec![
            ("task_id".into(), text("oncall 09:30")),
            (
                "action_menu".into(),
                CardValue::Map(vec![(
                    "action_list".into(),
                    CardValue::List(vec![action("A"), action("A")]),
                )]),
            ),
        ]);
        let fields: Vec<String> = card.limit_problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "template_card.task_id",
                "template_card.action_menu.action_list[1].key"
            ]
        );
    }
}
