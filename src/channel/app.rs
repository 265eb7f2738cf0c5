//! The application destination: a WeCom application's `message/send`, addressed to members,
//! departments and tags, with WeCom's duplicate check on.

use serde::Serialize;

use crate::config::Schedule;
use crate::message::{Content, Recipients};

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
fn render_body(envelope: &Envelope<'_>, content: &Content) -> String {
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
