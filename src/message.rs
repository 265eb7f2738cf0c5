//! What a schedule says, whatever carries it: the message templates of a schedule, the content
//! they render to at one slot, and the limits WeCom would otherwise enforce by silently
//! truncating. How a content becomes the JSON body of one destination is the [`crate::channel`]'s
//! business.

use chrono::DateTime;
use chrono_tz::Tz;

use crate::template::{SlotContext, Template};

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

/// The `text:` or `textcard:` of a schedule, with its template variables unrendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageTemplate {
    Text {
        content: Template,
    },
    TextCard {
        title: Template,
        description: Template,
        url: Template,
        btntxt: Option<String>,
    },
}

impl MessageTemplate {
    /// The `msgtype` it renders to.
    pub fn msgtype(&self) -> &'static str {
        match self {
            MessageTemplate::Text { .. } => "text",
            MessageTemplate::TextCard { .. } => "textcard",
        }
    }

    /// True when no part depends on the slot, so every send has the same body.
    pub fn is_static(&self) -> bool {
        match self {
            MessageTemplate::Text { content } => content.is_static(),
            MessageTemplate::TextCard {
                title,
                description,
                url,
                ..
            } => title.is_static() && description.is_static() && url.is_static(),
        }
    }

    /// Renders every part at `slot` (already in the schedule's zone).
    pub fn render(&self, schedule: &str, slot: DateTime<Tz>) -> Content {
        let context = SlotContext { schedule, slot };
        match self {
            MessageTemplate::Text { content } => Content::Text {
                content: content.render(&context),
            },
            MessageTemplate::TextCard {
                title,
                description,
                url,
                btntxt,
            } => Content::TextCard {
                title: title.render(&context),
                description: description.render(&context),
                url: url.render(&context),
                btntxt: btntxt.clone(),
            },
        }
    }
}
