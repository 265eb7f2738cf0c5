//! The group-robot destination (群机器人): `POST {api_base}/cgi-bin/webhook/send?key=KEY` into the
//! robot's group chat. A robot body has no recipients, no agent id and no duplicate check: only
//! `msgtype` and the message.

use serde::Serialize;

use super::app::{ArticleBody, NewsBody};
use crate::config::{Mention, Schedule};
use crate::message::Content;

/// The body of `schedule`'s `content` as a robot posts it.
pub fn body(schedule: &Schedule, content: &Content) -> String {
    let body = match content {
        Content::Text { content } => Body::Text {
            text: Text {
                content,
                mention: &schedule.mention,
            },
        },
        Content::Markdown { content } => Body::Markdown {
            markdown: Markdown { content },
        },
        // The application's article body: a robot's article never has the mini-program fields
        // (validation refuses them), which it leaves out when absent.
        Content::News { articles } => Body::News {
            news: NewsBody {
                articles: articles.iter().map(ArticleBody::from).collect(),
            },
        },
        // Validation lets only the types above reach a robot; a card is said as its title and
        // link, should one ever get here.
        Content::TextCard { title, url, .. } => {
            return serde_json::json!({
                "msgtype": "text",
                "text": { "content": format!("{title}\n{url}") },
            })
            .to_string();
        }
        Content::TemplateCard { card, .. } => {
            return serde_json::json!({
                "msgtype": "text",
                "text": { "content": card.headline() },
            })
            .to_string();
        }
    };
    // Serializing plain strings into a String cannot fail.
    serde_json::to_string(&body).unwrap_or_default()
}

#[derive(Serialize)]
#[serde(tag = "msgtype", rename_all = "snake_case")]
enum Body<'a> {
    Text { text: Text<'a> },
    Markdown { markdown: Markdown<'a> },
    News { news: NewsBody<'a> },
}

#[derive(Serialize)]
struct Markdown<'a> {
    content: &'a str,
}

struct Text<'a> {
    content: &'a str,
    mention: &'a Mention,
}

impl Serialize for Text<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("content", self.content)?;
        if !self.mention.users.is_empty() {
            map.serialize_entry("mentioned_list", &self.mention.users)?;
        }
        if !self.mention.mobiles.is_empty() {
            map.serialize_entry("mentioned_mobile_list", &self.mention.mobiles)?;
        }
        map.end()
    }
}
