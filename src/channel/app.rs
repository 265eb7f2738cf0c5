//! The application destination: a WeCom application's `message/send`, addressed to members,
//! departments and tags, with WeCom's duplicate check on.

use serde::Serialize;

use crate::config::Schedule;
use crate::message::{Article, CardValue, Content, Recipients};

/// The body of `schedule`'s `content` as application `agent_id` posts it.
pub fn body(agent_id: i64, schedule: &Schedule, content: &Content) -> String {
    let envelope = Envelope {
        agent_id,
        to: &schedule.to,
        safe: schedule.safe,
        enable_id_trans: schedule.enable_id_trans,
        duplicate_check_interval: schedule.duplicate_check_interval,
    };
    render_body(&envelope, content)
}

/// Everything that goes into one `message/send` body besides the content.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Envelope<'a> {
    agent_id: i64,
    to: &'a Recipients,
    safe: bool,
    enable_id_trans: bool,
    duplicate_check_interval: u32,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    markdown: Option<TextBody<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    news: Option<NewsBody<'a>>,
    /// The card as the operator wrote it, strings rendered.
    #[serde(skip_serializing_if = "Option::is_none")]
    template_card: Option<&'a CardValue>,
    /// WeCom documents `safe` for text, not for textcard, markdown, news or template_card.
    #[serde(skip_serializing_if = "Option::is_none")]
    safe: Option<u8>,
    /// WeCom documents `enable_id_trans` for every type sent here but markdown.
    #[serde(skip_serializing_if = "Option::is_none")]
    enable_id_trans: Option<u8>,
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

#[derive(Debug, Serialize)]
pub(super) struct NewsBody<'a> {
    pub(super) articles: Vec<ArticleBody<'a>>,
}

/// One article, its fields in WeCom's documented order.
#[derive(Debug, Serialize)]
pub(super) struct ArticleBody<'a> {
    title: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    picurl: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    appid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pagepath: Option<&'a str>,
}

impl<'a> From<&'a Article> for ArticleBody<'a> {
    fn from(article: &'a Article) -> ArticleBody<'a> {
        ArticleBody {
            title: &article.title,
            description: article.description.as_deref(),
            url: &article.url,
            picurl: article.picurl.as_deref(),
            appid: article.appid.as_deref(),
            pagepath: article.pagepath.as_deref(),
        }
    }
}

/// Serializes the exact body to POST. `enable_duplicate_check` is always 1: it is what makes a
/// retry of an already delivered body harmless.
fn render_body(envelope: &Envelope<'_>, content: &Content) -> String {
    let mut body = Body {
        touser: envelope.to.joined().0.to_string(),
        toparty: envelope.to.joined().1.to_string(),
        totag: envelope.to.joined().2.to_string(),
        msgtype: content.msgtype(),
        agentid: envelope.agent_id,
        text: None,
        textcard: None,
        markdown: None,
        news: None,
        template_card: None,
        safe: None,
        enable_id_trans: Some(u8::from(envelope.enable_id_trans)),
        enable_duplicate_check: 1,
        duplicate_check_interval: envelope.duplicate_check_interval,
    };
    match content {
        Content::Text { content } => {
            body.text = Some(TextBody { content });
            body.safe = Some(u8::from(envelope.safe));
        }
        Content::TextCard {
            title,
            description,
            url,
            btntxt,
        } => {
            body.textcard = Some(TextCardBody {
                title,
                description,
                url,
                btntxt: btntxt.as_deref(),
            });
        }
        Content::Markdown { content } => {
            body.markdown = Some(TextBody { content });
            body.enable_id_trans = None;
        }
        Content::News { articles } => {
            body.news = Some(NewsBody {
                articles: articles.iter().map(ArticleBody::from).collect(),
            });
        }
        Content::TemplateCard { card, .. } => body.template_card = Some(card),
    }
    // Serializing plain strings, numbers and the card's tree (string keys only, numbers that
    // came from YAML, hence finite) into a String cannot fail.
    serde_json::to_string(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{CardType, Dest};

    fn envelope(to: &Recipients) -> Envelope<'_> {
        Envelope {
            agent_id: 1000002,
            to,
            safe: true,
            enable_id_trans: false,
            duplicate_check_interval: 1800,
        }
    }

    fn oncall() -> Recipients {
        Recipients::new(&["ZhangSan"], &[] as &[&str], &["7"])
    }

    #[test]
    fn markdown_body_has_neither_safe_nor_enable_id_trans() {
        let to = oncall();
        let body = render_body(
            &envelope(&to),
            &Content::Markdown {
                content: "**值班** <font color=\"warning\">张三</font>\n> 电话 1234".into(),
            },
        );
        assert_eq!(
            body,
            r#"{"touser":"ZhangSan","totag":"7","msgtype":"markdown","agentid":1000002,"markdown":{"content":"**值班** <font color=\"warning\">张三</font>\n> 电话 1234"},"enable_duplicate_check":1,"duplicate_check_interval":1800}"#
        );
    }

    #[test]
    fn news_body_lists_articles_with_only_the_fields_given() {
        let to = oncall();
        let articles = vec![
            Article {
                title: "技术分享".into(),
                description: Some("周五 16:00".into()),
                url: "https://example.com/talks".into(),
                picurl: Some("https://example.com/a.png".into()),
                appid: None,
                pagepath: None,
            },
            Article {
                title: "报名".into(),
                description: None,
                url: "https://example.com/signup".into(),
                picurl: None,
                appid: Some("wx123".into()),
                pagepath: Some("pages/index".into()),
            },
        ];
        let body = render_body(&envelope(&to), &Content::News { articles });
        assert_eq!(
            body,
            r#"{"touser":"ZhangSan","totag":"7","msgtype":"news","agentid":1000002,"news":{"articles":[{"title":"技术分享","description":"周五 16:00","url":"https://example.com/talks","picurl":"https://example.com/a.png"},{"title":"报名","url":"https://example.com/signup","appid":"wx123","pagepath":"pages/index"}]},"enable_id_trans":0,"enable_duplicate_check":1,"duplicate_check_interval":1800}"#
        );
    }

    #[test]
    fn template_card_body_is_the_card_as_written() {
        let to = oncall();
        let text = |s: &str| CardValue::String(s.to_string());
        let card = CardValue::Map(vec![
            ("card_type".into(), text("news_notice")),
            (
                "main_title".into(),
                CardValue::Map(vec![("title".into(), text("交接"))]),
            ),
            (
                "card_image".into(),
                CardValue::Map(vec![
                    ("url".into(), text("https://example.com/c.png")),
                    (
                        "aspect_ratio".into(),
                        CardValue::Number(serde_json::Number::from_f64(2.25).unwrap()),
                    ),
                ]),
            ),
            (
                "card_action".into(),
                CardValue::Map(vec![
                    ("type".into(), CardValue::Number(1.into())),
                    ("url".into(), text("https://example.com/oncall")),
                ]),
            ),
        ]);
        let body = render_body(
            &envelope(&to),
            &Content::TemplateCard {
                card_type: CardType::NewsNotice,
                card,
            },
        );
        assert_eq!(
            body,
            r#"{"touser":"ZhangSan","totag":"7","msgtype":"template_card","agentid":1000002,"template_card":{"card_type":"news_notice","main_title":{"title":"交接"},"card_image":{"url":"https://example.com/c.png","aspect_ratio":2.25},"card_action":{"type":1,"url":"https://example.com/oncall"}},"enable_id_trans":0,"enable_duplicate_check":1,"duplicate_check_interval":1800}"#
        );
    }

    #[test]
    fn text_body_is_exactly_what_wecom_documents() {
        let to = Recipients::new(&["ZhangSan", "LiSi"], &["2"], &[] as &[&str]);
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
        let to = Recipients::users_only(&["@all"]);
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
        assert!(card.limit_problems(Dest::App).is_empty());
        let long = Content::TextCard {
            title: "标".repeat(43),
            description: String::new(),
            url: "ftp://x".into(),
            btntxt: Some("查看详情页".into()),
        };
        let fields: Vec<_> = long
            .limit_problems(Dest::App)
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            fields,
            ["textcard.title", "textcard.url", "textcard.btntxt"]
        );
    }
}
