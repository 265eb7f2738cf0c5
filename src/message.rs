//! What a schedule says, whatever carries it: the message templates of a schedule, the content
//! they render to at one slot, and the limits WeCom would otherwise enforce by silently
//! truncating. How a content becomes the JSON body of one destination is the [`crate::channel`]'s
//! business.

mod card;

use chrono::DateTime;
use chrono_tz::Tz;

pub use card::{ACTION_KEY_MAX_BYTES, CardType, CardValue, TASK_ID_MAX_BYTES};

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
/// `markdown.content` of an application, in bytes.
pub const MARKDOWN_APP_MAX_BYTES: usize = 2048;
/// `markdown.content` of a group robot, in bytes (WeCom refuses more with 40058).
pub const MARKDOWN_ROBOT_MAX_BYTES: usize = 4096;
/// `news.articles`: one message carries 1 to this many.
pub const NEWS_MAX_ARTICLES: usize = 8;
/// `news.articles[].title`, in bytes.
pub const NEWS_TITLE_MAX_BYTES: usize = 128;
/// `news.articles[].description`, in bytes.
pub const NEWS_DESCRIPTION_MAX_BYTES: usize = 512;
/// `news.articles[].url` and `picurl`, in bytes.
pub const NEWS_URL_MAX_BYTES: usize = 2048;
/// `news.articles[].pagepath` (a mini program page), in bytes.
pub const NEWS_PAGEPATH_MAX_BYTES: usize = 128;
/// `touser`: at most this many user ids.
pub const MAX_USERS: usize = 1000;
/// `toparty`: at most this many department ids.
pub const MAX_PARTIES: usize = 100;
/// `totag`: at most this many tag ids.
pub const MAX_TAGS: usize = 100;
/// `duplicate_check_interval` bounds in seconds (WeCom allows up to 4 hours).
pub const DUPLICATE_CHECK_INTERVAL: std::ops::RangeInclusive<u32> = 1..=14400;

/// Who receives a message. `users: ["@all"]` means every member who can see the app.
///
/// Each list is kept as WeCom takes it (`touser`, `toparty`, `totag`): its ids joined with
/// `|`, which no id holds (the config refuses one that does). One string per list, not one
/// per id, is most of what a schedule's recipients cost (measured with heaptrack, 100,000
/// schedules: 9.5 MB as lists of strings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Recipients {
    users: Box<str>,
    parties: Box<str>,
    tags: Box<str>,
}

/// `ids` joined with `|`.
fn joined(ids: &[impl AsRef<str>]) -> Box<str> {
    debug_assert!(
        ids.iter()
            .all(|id| !id.as_ref().is_empty() && !id.as_ref().contains('|'))
    );
    ids.iter()
        .map(AsRef::as_ref)
        .collect::<Vec<&str>>()
        .join("|")
        .into_boxed_str()
}

/// The ids of a joined list.
fn ids(list: &str) -> impl Iterator<Item = &str> {
    list.split('|').filter(|id| !id.is_empty())
}

impl Recipients {
    /// The recipients of these ids. None is empty or holds `|`.
    pub fn new(
        users: &[impl AsRef<str>],
        parties: &[impl AsRef<str>],
        tags: &[impl AsRef<str>],
    ) -> Recipients {
        Recipients {
            users: joined(users),
            parties: joined(parties),
            tags: joined(tags),
        }
    }

    /// These users only.
    pub fn users_only(users: &[impl AsRef<str>]) -> Recipients {
        Recipients::new(users, &[] as &[&str], &[] as &[&str])
    }

    pub fn users(&self) -> impl Iterator<Item = &str> {
        ids(&self.users)
    }

    pub fn parties(&self) -> impl Iterator<Item = &str> {
        ids(&self.parties)
    }

    pub fn tags(&self) -> impl Iterator<Item = &str> {
        ids(&self.tags)
    }

    /// `touser`, `toparty` and `totag` as WeCom takes them.
    pub fn joined(&self) -> (&str, &str, &str) {
        (&self.users, &self.parties, &self.tags)
    }

    /// No user, party or tag.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.parties.is_empty() && self.tags.is_empty()
    }

    /// Every member who can see the app.
    pub fn is_everyone(&self) -> bool {
        self.users().any(|u| u == "@all")
    }

    /// "3 users, 1 party" / "@all", for `check` and logs.
    pub fn summary(&self) -> String {
        if self.is_everyone() {
            return "@all".to_string();
        }
        let mut parts = Vec::new();
        for (n, one, many) in [
            (self.users().count(), "user", "users"),
            (self.parties().count(), "party", "parties"),
            (self.tags().count(), "tag", "tags"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {}", if n == 1 { one } else { many }));
            }
        }
        parts.join(", ")
    }
}

/// The kind of destination a message goes to: some limits differ between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// A WeCom application (`message/send`).
    App,
    /// A group robot's webhook (`webhook/send`).
    Robot,
}

/// One article of a `news` message: `S = Template` as configured, `S = String` once rendered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Article<S = String> {
    pub title: S,
    pub description: Option<S>,
    pub url: S,
    pub picurl: Option<S>,
    /// A mini program the article opens instead of `url` (applications only; with `pagepath`).
    pub appid: Option<S>,
    pub pagepath: Option<S>,
}

impl Article<Template> {
    fn is_static(&self) -> bool {
        let optional = [&self.description, &self.picurl, &self.appid, &self.pagepath];
        self.title.is_static()
            && self.url.is_static()
            && optional
                .iter()
                .all(|t| t.as_ref().is_none_or(Template::is_static))
    }

    fn render(&self, context: &SlotContext<'_>) -> Article {
        let optional = |t: &Option<Template>| t.as_ref().map(|t| t.render(context));
        Article {
            title: self.title.render(context),
            description: optional(&self.description),
            url: self.url.render(context),
            picurl: optional(&self.picurl),
            appid: optional(&self.appid),
            pagepath: optional(&self.pagepath),
        }
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
    Markdown {
        content: String,
    },
    News {
        articles: Vec<Article>,
    },
    /// The card as written (`card_type` included), its strings rendered.
    TemplateCard {
        card_type: CardType,
        card: CardValue,
    },
}

impl Content {
    pub fn msgtype(&self) -> &'static str {
        match self {
            Content::Text { .. } => "text",
            Content::TextCard { .. } => "textcard",
            Content::Markdown { .. } => "markdown",
            Content::News { .. } => "news",
            Content::TemplateCard { .. } => "template_card",
        }
    }

    /// Every WeCom limit this content breaks when sent to `dest`, as `(field, problem)`.
    pub fn limit_problems(&self, dest: Dest) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut bytes = |field: &str, value: &str, max: usize| {
            if value.len() > max {
                problems.push((
                    field.to_string(),
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
                if !is_web_url(url) {
                    problems.push((
                        "textcard.url".to_string(),
                        format!("\"{url}\" must start with https:// or http://"),
                    ));
                }
                if let Some(btntxt) = btntxt
                    && btntxt.chars().count() > TEXTCARD_BTNTXT_MAX_CHARS
                {
                    problems.push((
                        "textcard.btntxt".to_string(),
                        format!(
                            "\"{btntxt}\" is {} characters, WeCom shows at most {TEXTCARD_BTNTXT_MAX_CHARS}; shorten it (e.g. 详情)",
                            btntxt.chars().count()
                        ),
                    ));
                }
            }
            Content::Markdown { content } => {
                let max = match dest {
                    Dest::App => MARKDOWN_APP_MAX_BYTES,
                    Dest::Robot => MARKDOWN_ROBOT_MAX_BYTES,
                };
                bytes("markdown.content", content, max);
            }
            Content::News { articles } => {
                for (i, article) in articles.iter().enumerate() {
                    let field = |key: &str| format!("news.articles[{i}].{key}");
                    bytes(&field("title"), &article.title, NEWS_TITLE_MAX_BYTES);
                    if let Some(description) = &article.description {
                        bytes(
                            &field("description"),
                            description,
                            NEWS_DESCRIPTION_MAX_BYTES,
                        );
                    }
                    bytes(&field("url"), &article.url, NEWS_URL_MAX_BYTES);
                    if let Some(picurl) = &article.picurl {
                        bytes(&field("picurl"), picurl, NEWS_URL_MAX_BYTES);
                    }
                    if let Some(pagepath) = &article.pagepath {
                        bytes(&field("pagepath"), pagepath, NEWS_PAGEPATH_MAX_BYTES);
                    }
                }
                for (i, article) in articles.iter().enumerate() {
                    let field = |key: &str| format!("news.articles[{i}].{key}");
                    for (key, url) in [
                        ("url", Some(&article.url)),
                        ("picurl", article.picurl.as_ref()),
                    ] {
                        if let Some(url) = url.filter(|u| !is_web_url(u)) {
                            problems.push((
                                field(key),
                                format!("\"{url}\" must start with https:// or http://"),
                            ));
                        }
                    }
                    if dest == Dest::Robot && article.appid.is_some() {
                        problems.push((field("appid"), "a group robot's news cannot open a mini program; remove appid and pagepath".to_string()));
                    }
                }
                if !(1..=NEWS_MAX_ARTICLES).contains(&articles.len()) {
                    problems.push((
                        "news.articles".to_string(),
                        format!(
                            "lists {} articles; WeCom sends 1 to {NEWS_MAX_ARTICLES} in one message (split the schedule)",
                            articles.len()
                        ),
                    ));
                }
            }
            Content::TemplateCard { card, .. } => problems.extend(card.limit_problems()),
        }
        problems
    }
}

/// True for an `http://` or `https://` URL, the only links WeCom opens from a message.
fn is_web_url(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://")
}

/// The message of a schedule (`text:`, `textcard:`, `markdown:`, `news:` or `template_card:`),
/// with its template variables unrendered.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
    Markdown {
        content: Template,
    },
    News {
        articles: Vec<Article<Template>>,
    },
    /// The card's tree as written, `card_type` included.
    TemplateCard {
        card_type: CardType,
        card: CardValue<Template>,
    },
}

impl MessageTemplate {
    /// The `msgtype` it renders to.
    pub fn msgtype(&self) -> &'static str {
        match self {
            MessageTemplate::Text { .. } => "text",
            MessageTemplate::TextCard { .. } => "textcard",
            MessageTemplate::Markdown { .. } => "markdown",
            MessageTemplate::News { .. } => "news",
            MessageTemplate::TemplateCard { .. } => "template_card",
        }
    }

    /// True when WeCom's `safe` (confidential message) applies to this type: of the types a
    /// schedule sends, WeCom documents it for text only.
    pub fn supports_safe(&self) -> bool {
        matches!(self, MessageTemplate::Text { .. })
    }

    /// True when WeCom's `enable_id_trans` applies to this type (not to markdown).
    pub fn supports_id_trans(&self) -> bool {
        !matches!(self, MessageTemplate::Markdown { .. })
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
            MessageTemplate::Markdown { content } => content.is_static(),
            MessageTemplate::News { articles } => articles.iter().all(Article::is_static),
            MessageTemplate::TemplateCard { card, .. } => card.is_static(),
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
            MessageTemplate::Markdown { content } => Content::Markdown {
                content: content.render(&context),
            },
            MessageTemplate::News { articles } => Content::News {
                articles: articles.iter().map(|a| a.render(&context)).collect(),
            },
            MessageTemplate::TemplateCard { card_type, card } => Content::TemplateCard {
                card_type: *card_type,
                card: card.render(&context),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_keep_each_list_as_wecom_takes_it() {
        let none: &[&str] = &[];
        let to = Recipients::new(&["ZhangSan", "LiSi"], none, &["7"]);
        assert_eq!(to.joined(), ("ZhangSan|LiSi", "", "7"));
        assert_eq!(to.users().collect::<Vec<_>>(), ["ZhangSan", "LiSi"]);
        assert_eq!(to.parties().count(), 0, "an empty list has no id");
        assert_eq!(to.tags().collect::<Vec<_>>(), ["7"]);
        assert_eq!(to.summary(), "2 users, 1 tag");
        assert!(!to.is_empty() && !to.is_everyone());
        let everyone = Recipients::users_only(&["@all"]);
        assert!(everyone.is_everyone());
        assert_eq!(everyone.summary(), "@all");
        assert!(Recipients::new(none, none, none).is_empty());
        assert_eq!(
            Recipients::new(none, &["2", "3"], none).summary(),
            "2 parties"
        );
    }
}
