//! Typed `message/send` bodies for `text` and `textcard`, serialized exactly as WeCom expects,
//! and the limits WeCom would otherwise enforce by silently truncating.

use serde::Serialize;

/// `text.content`: WeCom truncates beyond this many bytes.
pub const TEXT_CONTENT_MAX_BYTES: usize = 2048;
/// `textcard.title`, in bytes.
pub const TEXTCARD_TITLE_MAX_BYTES: usize = 128;
/// `textcard.description`, in bytes.
pub const TEXTCARD_DESCRIPTION_MAX_BYTES: usize = 512;
/// `textcard.url`, in bytes.
pub const TEXTCARD_URL_MAX_BYTES: usize = 2048;
/// `textcard.btntxt`, in characters.
pub const TEXTCARD_BTNTXT_MAX_CHARS: usize = 4;
/// `touser`: at most this many user ids.
pub const MAX_USERS: usize = 1000;
/// `toparty`: at most this many department ids.
pub const MAX_PARTIES: usize = 100;
/// `totag`: at most this many tag ids.
pub const MAX_TAGS: usize = 100;
/// `duplicate_check_interval` bounds in seconds (WeCom allows up to 4 hours).
pub const DUPLICATE_CHECK_INTERVAL: std::ops::RangeInclusive<u32> = 1..=14400;

/// Who receives a message. `users: ["@all"]` means every member who can see the app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipients {
    pub users: Vec<String>,
    pub parties: Vec<String>,
    pub tags: Vec<String>,
}

impl Recipients {
    /// "3 users, 1 party" / "@all", for `check` and logs.
    pub fn summary(&self) -> String {
        if self.users.iter().any(|u| u == "@all") {
            return "@all".to_string();
        }
        let mut parts = Vec::new();
        for (n, one, many) in [
            (self.users.len(), "user", "users"),
            (self.parties.len(), "party", "parties"),
            (self.tags.len(), "tag", "tags"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {}", if n == 1 { one } else { many }));
            }
        }
        parts.join(", ")
    }
}

/// The content of one message, rendered for one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Text {
        content: String,
    },
    TextCard {
        title: String,
        description: String,
        url: String,
        btntxt: Option<String>,
    },
}

impl Content {
    pub fn msgtype(&self) -> &'static str {
        match self {
            Content::Text { .. } => "text",
            Content::TextCard { .. } => "textcard",
        }
    }

    /// Every WeCom limit this content breaks, as `(field, problem)`.
    pub fn limit_problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let mut bytes = |field: &'static str, value: &str, max: usize| {
            if value.len() > max {
                problems.push((
                    field,
                    format!(
                        "is {} bytes, WeCom allows {max} and would cut the rest off; shorten it (a Chinese character takes 3 bytes)",
                        value.len()
                    ),
                ));
            }
        };
        match self {
            Content::Text { content } => {
                bytes("text.content", content, TEXT_CONTENT_MAX_BYTES);
            }
            Content::TextCard {
                title,
                description,
                url,
                btntxt,
            } => {
                bytes("textcard.title", title, TEXTCARD_TITLE_MAX_BYTES);
                bytes(
                    "textcard.description",
                    description,
                    TEXTCARD_DESCRIPTION_MAX_BYTES,
                );
                bytes("textcard.url", url, TEXTCARD_URL_MAX_BYTES);
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    problems.push((
                        "textcard.url",
                        format!("\"{url}\" must start with https:// or http://"),
                    ));
                }
                if let Some(btntxt) = btntxt
                    && btntxt.chars().count() > TEXTCARD_BTNTXT_MAX_CHARS
                {
                    problems.push((
                        "textcard.btntxt",
                        format!(
                            "\"{btntxt}\" is {} characters, WeCom shows at most {TEXTCARD_BTNTXT_MAX_CHARS}; shorten it (e.g. 详情)",
                            btntxt.chars().count()
                        ),
                    ));
                }
            }
        }
        problems
    }
}

/// Everything that goes into one `message/send` body besides the content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub agent_id: i64,
    pub to: &'a Recipients,
    pub safe: bool,
    pub enable_id_trans: bool,
    pub duplicate_check_interval: u32,
}

/// The JSON body of `message/send`. Field order follows WeCom's documentation; the body is
/// stored byte for byte in `sends.payload` and resent unchanged after a crash, so that WeCom's
/// duplicate check recognises it.
#[derive(Debug, Serialize)]
struct Body<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    touser: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    toparty: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    totag: String,
    msgtype: &'static str,
    agentid: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<TextBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    textcard: Option<TextCardBody<'a>>,
    /// WeCom documents `safe` for text but not for textcard.
    #[serde(skip_serializing_if = "Option::is_none")]
    safe: Option<u8>,
    enable_id_trans: u8,
    enable_duplicate_check: u8,
    duplicate_check_interval: u32,
}

#[derive(Debug, Serialize)]
struct TextBody<'a> {
    content: &'a str,
}

#[derive(Debug, Serialize)]
struct TextCardBody<'a> {
    title: &'a str,
    description: &'a str,
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    btntxt: Option<&'a str>,
}

/// Serializes the exact body to POST. `enable_duplicate_check` is always 1: it is what makes a
/// retry of an already delivered body harmless.
pub fn render_body(envelope: &Envelope<'_>, content: &Content) -> String {
    let (text, textcard) = match content {
        Content::Text { content } => (Some(TextBody { content }), None),
        Content::TextCard {
            title,
            description,
            url,
            btntxt,
        } => (
            None,
            Some(TextCardBody {
                title,
                description,
                url,
                btntxt: btntxt.as_deref(),
            }),
        ),
    };
    let body = Body {
        touser: envelope.to.users.join("|"),
        toparty: envelope.to.parties.join("|"),
        totag: envelope.to.tags.join("|"),
        msgtype: content.msgtype(),
        agentid: envelope.agent_id,
        safe: text.as_ref().map(|_| u8::from(envelope.safe)),
        text,
        textcard,
        enable_id_trans: u8::from(envelope.enable_id_trans),
        enable_duplicate_check: 1,
        duplicate_check_interval: envelope.duplicate_check_interval,
    };
    // Serializing plain strings and integers into a String cannot fail.
    serde_json::to_string(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_body_is_exactly_what_wecom_documents() {
        let to = Recipients {
            users: vec!["ZhangSan".into(), "LiSi".into()],
            parties: vec!["2".into()],
            tags: vec![],
        };
        let envelope = Envelope {
            agent_id: 1000002,
            to: &to,
            safe: false,
            enable_id_trans: false,
            duplicate_check_interval: 1800,
        };
        let body = render_body(
            &envelope,
            &Content::Text {
                content: "站会".into(),
            },
        );
        assert_eq!(
            body,
            r#"{"touser":"ZhangSan|LiSi","toparty":"2","msgtype":"text","agentid":1000002,"text":{"content":"站会"},"safe":0,"enable_id_trans":0,"enable_duplicate_check":1,"duplicate_check_interval":1800}"#
        );
    }

    #[test]
    fn textcard_body_has_no_safe_and_checks_limits() {
        let to = Recipients {
            users: vec!["@all".into()],
            ..Default::default()
        };
        let envelope = Envelope {
            agent_id: 7,
            to: &to,
            safe: false,
            enable_id_trans: true,
            duplicate_check_interval: 60,
        };
        let card = Content::TextCard {
            title: "周报".into(),
            description: "<div class=\"gray\">x</div>".into(),
            url: "https://example.com/w".into(),
            btntxt: Some("查看".into()),
        };
        let body = render_body(&envelope, &card);
        assert_eq!(
            body,
            r#"{"touser":"@all","msgtype":"textcard","agentid":7,"textcard":{"title":"周报","description":"<div class=\"gray\">x</div>","url":"https://example.com/w","btntxt":"查看"},"enable_id_trans":1,"enable_duplicate_check":1,"duplicate_check_interval":60}"#
        );
        assert!(card.limit_problems().is_empty());
        let long = Content::TextCard {
            title: "标".repeat(43),
            description: String::new(),
            url: "ftp://x".into(),
            btntxt: Some("查看详情页".into()),
        };
        let fields: Vec<_> = long.limit_problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            ["textcard.title", "textcard.url", "textcard.btntxt"]
        );
    }
}
