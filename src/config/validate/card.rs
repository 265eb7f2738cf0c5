//! `template_card:`: WeCom's card JSON written in YAML, checked against the fields WeCom
//! documents for each card type, then kept as written (keys in their order) for the body.
//!
//! The fields, which of them are required and their bounds are those of WeCom's 发送应用消息,
//! 模板卡片消息, 文本通知型 and 图文展示型:
//! <https://developer.work.weixin.qq.com/document/path/90236> (last updated 2025-09-24).
//! Lengths WeCom only *recommends* ("建议不超过36个字") are not enforced.

use super::super::fields::{closest, kind};
use super::*;
use crate::message::{CardType, CardValue};

/// What a key holds.
#[derive(Clone, Copy)]
enum Kind {
    /// A string: a template.
    Text,
    /// An integer within the bounds.
    Int(i64, i64),
    /// A number within the bounds (`card_image.aspect_ratio`).
    Ratio(f64, f64),
    Object(&'static Shape),
    /// A list of `min..=max` objects.
    List(usize, usize, &'static Shape),
}

struct Key {
    name: &'static str,
    kind: Kind,
}

/// A mapping WeCom documents: its keys, the required ones, and the keys a `type: N` requires.
struct Shape {
    keys: &'static [Key],
    required: &'static [&'static str],
    by_type: &'static [(i64, &'static str)],
}

const fn text(name: &'static str) -> Key {
    Key {
        name,
        kind: Kind::Text,
    }
}

const fn int(name: &'static str, min: i64, max: i64) -> Key {
    Key {
        name,
        kind: Kind::Int(min, max),
    }
}

const fn object(name: &'static str, shape: &'static Shape) -> Key {
    Key {
        name,
        kind: Kind::Object(shape),
    }
}

const fn list(name: &'static str, min: usize, max: usize, shape: &'static Shape) -> Key {
    Key {
        name,
        kind: Kind::List(min, max, shape),
    }
}

/// A click target: `type` 1 opens `url`, 2 opens the mini program `appid`.
const LINK_TYPES: &[(i64, &str)] = &[(1, "url"), (2, "appid")];

static SOURCE: Shape = Shape {
    keys: &[text("icon_url"), text("desc"), int("desc_color", 0, 3)],
    required: &[],
    by_type: &[],
};
static ACTION: Shape = Shape {
    keys: &[text("text"), text("key")],
    required: &["text", "key"],
    by_type: &[],
};
static ACTION_MENU: Shape = Shape {
    keys: &[text("desc"), list("action_list", 1, 3, &ACTION)],
    required: &["action_list"],
    by_type: &[],
};
static TITLE_DESC: Shape = Shape {
    keys: &[text("title"), text("desc")],
    required: &[],
    by_type: &[],
};
static QUOTE_AREA: Shape = Shape {
    keys: &[
        int("type", 0, 2),
        text("url"),
        text("appid"),
        text("pagepath"),
        text("title"),
        text("quote_text"),
    ],
    required: &[],
    by_type: LINK_TYPES,
};
static HORIZONTAL: Shape = Shape {
    keys: &[
        int("type", 0, 3),
        text("keyname"),
        text("value"),
        text("url"),
        text("media_id"),
        text("userid"),
    ],
    required: &["keyname"],
    by_type: &[(1, "url"), (2, "media_id"), (3, "userid")],
};
static JUMP: Shape = Shape {
    keys: &[
        int("type", 0, 2),
        text("title"),
        text("url"),
        text("appid"),
        text("pagepath"),
    ],
    required: &["title"],
    by_type: LINK_TYPES,
};
static CARD_ACTION: Shape = Shape {
    keys: &[
        int("type", 1, 2),
        text("url"),
        text("appid"),
        text("pagepath"),
    ],
    required: &["type"],
    by_type: LINK_TYPES,
};
static IMAGE_TEXT_AREA: Shape = Shape {
    keys: &[
        int("type", 0, 2),
        text("url"),
        text("appid"),
        text("pagepath"),
        text("title"),
        text("desc"),
        text("image_url"),
    ],
    required: &["image_url"],
    by_type: LINK_TYPES,
};
static CARD_IMAGE: Shape = Shape {
    keys: &[
        text("url"),
        Key {
            name: "aspect_ratio",
            kind: Kind::Ratio(1.3, 2.25),
        },
    ],
    required: &["url"],
    by_type: &[],
};
static VERTICAL: Shape = Shape {
    keys: &[text("title"), text("desc")],
    required: &["title"],
    by_type: &[],
};

static TEXT_NOTICE: Shape = Shape {
    keys: &[
        text("card_type"),
        object("source", &SOURCE),
        object("action_menu", &ACTION_MENU),
        text("task_id"),
        object("main_title", &TITLE_DESC),
        object("quote_area", &QUOTE_AREA),
        object("emphasis_content", &TITLE_DESC),
        text("sub_title_text"),
        list("horizontal_content_list", 0, 6, &HORIZONTAL),
        list("jump_list", 0, 3, &JUMP),
        object("card_action", &CARD_ACTION),
    ],
    required: &["card_action"],
    by_type: &[],
};
static NEWS_NOTICE: Shape = Shape {
    keys: &[
        text("card_type"),
        object("source", &SOURCE),
        object("action_menu", &ACTION_MENU),
        text("task_id"),
        object("main_title", &TITLE_DESC),
        object("quote_area", &QUOTE_AREA),
        object("image_text_area", &IMAGE_TEXT_AREA),
        object("card_image", &CARD_IMAGE),
        list("vertical_content_list", 0, 4, &VERTICAL),
        list("horizontal_content_list", 0, 6, &HORIZONTAL),
        list("jump_list", 0, 3, &JUMP),
        object("card_action", &CARD_ACTION),
    ],
    required: &["card_action"],
    by_type: &[],
};

const FIELD: &str = "template_card";

/// `template_card:` of a schedule; every problem is reported, `None` when there was one.
pub(super) fn validate_card(
    value: &Value,
    subject: &Subject,
    report: &mut Report,
) -> Option<MessageTemplate> {
    let card_type = card_type(value, subject, report)?;
    let shape = match card_type {
        CardType::TextNotice => &TEXT_NOTICE,
        CardType::NewsNotice => &NEWS_NOTICE,
    };
    let mut walk = Walk {
        subject,
        report,
        card_type,
        typos: Vec::new(),
    };
    let card = walk.object(value, shape, FIELD);
    let rules_hold = walk.card_rules(value);
    let card = card.filter(|_| rules_hold)?;
    if let Some(task_id) = card.get("task_id").and_then(CardValue::as_string)
        && task_id.is_static()
    {
        report.error(subject, &format!("{FIELD}.task_id"), "is the same at every send, but WeCom refuses a task_id this app has used before; put a slot variable in it, e.g. oncall-{{ slot:%Y%m%d%H%M%S }}");
        return None;
    }
    Some(MessageTemplate::TemplateCard { card_type, card })
}

fn card_type(value: &Value, subject: &Subject, report: &mut Report) -> Option<CardType> {
    let field = format!("{FIELD}.card_type");
    let allowed = CardType::ALL.map(CardType::as_str).join(" or ");
    let Value::Mapping(map) = value else {
        report.error(
            subject,
            FIELD,
            format!("must be a mapping of keys, not {}", kind(value)),
        );
        return None;
    };
    match map.get("card_type") {
        None | Some(Value::Null) => {
            report.error(subject, &field, format!("is missing; use {allowed}"));
            None
        }
        Some(Value::String(name)) if let Some(card_type) = CardType::parse(name) => Some(card_type),
        Some(other) => {
            let shown = match other {
                Value::String(name) => format!("\"{}\"", super::super::escaped(name)),
                other => kind(other).to_string(),
            };
            report.error(subject, &field, format!("{shown} is not a card type this daemon sends; use {allowed} (button_interaction, vote_interaction and multiple_interaction need a callback URL that answers WeCom)"));
            None
        }
    }
}

/// True when `value` has `key` set to something other than nothing or an empty string.
fn has(value: &Value, key: &str) -> bool {
    match value.get(key) {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(_) => true,
    }
}

struct Walk<'a, 'r> {
    subject: &'a Subject,
    report: &'r mut Report,
    card_type: CardType,
    /// The fields an unknown key looked like (`template_card.main_title.title` for `titel`):
    /// they are not reported missing as well.
    typos: Vec<String>,
}

impl Walk<'_, '_> {
    fn error(&mut self, field: &str, message: impl Into<String>) {
        self.report.error(self.subject, field, message);
    }

    /// Reports `field` missing, unless a misspelling of it was reported.
    fn missing(&mut self, field: &str, message: impl Into<String>) {
        if !self.typos.iter().any(|t| t == field) {
            self.error(field, message);
        }
    }

    /// The rules across fields of the card as a whole.
    fn card_rules(&mut self, card: &Value) -> bool {
        let mut ok = true;
        let main_title = card.get("main_title").unwrap_or(&Value::Null);
        let title = format!("{FIELD}.main_title.title");
        match self.card_type {
            CardType::TextNotice => {
                if !has(main_title, "title") && !has(card, "sub_title_text") {
                    self.missing(
                        &title,
                        "is missing; a text_notice card needs main_title.title or sub_title_text",
                    );
                    ok = false;
                }
            }
            CardType::NewsNotice => {
                if !has(main_title, "title") {
                    self.missing(&title, "is missing; a news_notice card needs it");
                    ok = false;
                }
                if !has(card, "card_image") && !has(card, "image_text_area") {
                    self.missing(
                        &format!("{FIELD}.card_image"),
                        "is missing; a news_notice card needs card_image or image_text_area",
                    );
                    ok = false;
                }
            }
        }
        if has(card, "action_menu") && !has(card, "task_id") {
            self.missing(&format!("{FIELD}.task_id"), "is missing; WeCom needs a task_id when action_menu is set (unique per send, e.g. oncall-{{ slot:%Y%m%d%H%M%S }})");
            ok = false;
        }
        ok
    }

    /// A mapping of `shape` at `path`, with every problem inside it reported.
    fn object(&mut self, value: &Value, shape: &Shape, path: &str) -> Option<CardValue<Template>> {
        let Value::Mapping(map) = value else {
            self.error(
                path,
                format!("must be a mapping of keys, not {}", kind(value)),
            );
            return None;
        };
        let known: Vec<&'static str> = shape.keys.iter().map(|k| k.name).collect();
        let mut entries = Vec::with_capacity(map.len());
        let mut ok = true;
        for (key, value) in map {
            let name = key
                .as_str()
                .map_or_else(|| format!("{key:?}"), str::to_string);
            let field = format!("{path}.{name}");
            let Some(spec) = shape.keys.iter().find(|k| k.name == name) else {
                let suggestion = closest(&name, &known);
                self.typos.extend(suggestion.map(|k| format!("{path}.{k}")));
                let hint = match (suggestion, self.other_type_has(path, &name)) {
                    (Some(k), _) => format!(" (did you mean {k}?)"),
                    (None, Some(other)) => format!(" ({name} belongs to {other} cards)"),
                    (None, None) => String::new(),
                };
                self.error(&field, format!("unknown key{hint}; known keys here: {}. A typo must not silently drop a setting", known.join(", ")));
                ok = false;
                continue;
            };
            if value.is_null() {
                continue;
            }
            match self.value(value, spec.kind, &field) {
                Some(v) => entries.push((name, v)),
                None => ok = false,
            }
        }
        for key in shape.required {
            if !has(value, key) {
                self.missing(
                    &format!("{path}.{key}"),
                    "is missing or empty; WeCom requires it",
                );
                ok = false;
            }
        }
        if let Some(n) = value.get("type").and_then(Value::as_i64) {
            for (_, key) in shape.by_type.iter().filter(|(t, _)| *t == n) {
                if !has(value, key) {
                    self.missing(
                        &format!("{path}.{key}"),
                        format!("is missing; type {n} needs it"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(CardValue::Map(entries))
    }

    fn value(&mut self, value: &Value, kind_of: Kind, field: &str) -> Option<CardValue<Template>> {
        match (kind_of, value) {
            (Kind::Text, Value::String(source)) => match Template::parse(source) {
                Ok(template) => Some(CardValue::String(template)),
                Err(message) => {
                    self.error(field, message);
                    None
                }
            },
            (Kind::Text, other) => {
                self.error(
                    field,
                    format!("must be text; quote it (\"...\"), it is {}", kind(other)),
                );
                None
            }
            (Kind::Int(min, max), Value::Number(n))
                if let Some(i) = n.as_i64().filter(|i| (min..=max).contains(i)) =>
            {
                Some(CardValue::Number(i.into()))
            }
            (Kind::Int(min, max), _) => {
                self.error(
                    field,
                    format!("must be an integer from {min} to {max} (see WeCom's template_card documentation)"),
                );
                None
            }
            (Kind::Ratio(min, max), Value::Number(n))
                if let Some(f) = n.as_f64().filter(|f| (min..=max).contains(f)) =>
            {
                // As written: an integer stays an integer.
                let number = match n.as_i64() {
                    Some(i) => Some(i.into()),
                    None => serde_json::Number::from_f64(f),
                };
                number.map(CardValue::Number)
            }
            (Kind::Ratio(min, max), _) => {
                self.error(field, format!("must be a number from {min} to {max}"));
                None
            }
            (Kind::Object(shape), value) => self.object(value, shape, field),
            (Kind::List(min, max, shape), Value::Sequence(items)) => {
                let mut ok = true;
                if items.len() > max || items.len() < min {
                    let bounds = if min == 0 {
                        format!("at most {max}")
                    } else {
                        format!("{min} to {max}")
                    };
                    self.error(
                        field,
                        format!("lists {} items; WeCom accepts {bounds}", items.len()),
                    );
                    ok = false;
                }
                let mut values = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match self.object(item, shape, &format!("{field}[{i}]")) {
                        Some(v) => values.push(v),
                        None => ok = false,
                    }
                }
                ok.then_some(CardValue::List(values))
            }
            (Kind::List(..), other) => {
                self.error(field, format!("must be a list, not {}", kind(other)));
                None
            }
        }
    }

    /// At the card's top level, the other card type when it has `key`.
    fn other_type_has(&self, path: &str, key: &str) -> Option<&'static str> {
        let (other, shape) = match self.card_type {
            CardType::TextNotice => ("news_notice", &NEWS_NOTICE),
            CardType::NewsNotice => ("text_notice", &TEXT_NOTICE),
        };
        (path == FIELD && shape.keys.iter().any(|k| k.name == key)).then_some(other)
    }
}
