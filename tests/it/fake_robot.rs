//! Self-tests of the fake WeCom's newer parts, driven directly over HTTP: the markdown, news and
//! template_card application messages, and the group robot webhook (strict bodies, 93000,
//! 40058, the rolling 45009 limit, no duplicate check, holds, scripts and detached delivery).
//! Each runs in well under a second and reads no calendar.

use std::time::{Duration, Instant};

use reqwest::{Client, RequestBuilder};
use serde_json::{Value, json};

use crate::support::fake_wecom::RobotReceived;
use crate::support::{Chaos, FakeWeCom, Outcome, Reply};

const CORP: &str = "wwfakerobot00001";
const SECRET: &str = "robot-test-secret";
const AGENT: i64 = 1000009;
const KEY: &str = "693a91f6-7xxx-4bc4-97a0-0ec2sifa5aaa";

async fn setup() -> (FakeWeCom, Client) {
    let fake = FakeWeCom::start().await;
    fake.add_app(CORP, SECRET, AGENT);
    fake.add_robot(KEY);
    wecom_notify::wecom::client::install_crypto_provider();
    let client = Client::builder().timeout(Duration::from_secs(5)).build();
    (fake, client.expect("reqwest client"))
}

async fn call(req: RequestBuilder) -> Value {
    let resp = req.send().await.expect("answered");
    resp.json().await.expect("a JSON answer")
}

async fn token(fake: &FakeWeCom, client: &Client) -> String {
    let url = format!(
        "{}/cgi-bin/gettoken?corpid={CORP}&corpsecret={SECRET}",
        fake.base_url()
    );
    let v = call(client.get(url)).await;
    v["access_token"].as_str().expect("access_token").to_owned()
}

fn app_send(fake: &FakeWeCom, client: &Client, token: &str, body: &Value) -> RequestBuilder {
    let url = format!(
        "{}/cgi-bin/message/send?access_token={token}",
        fake.base_url()
    );
    client.post(url).json(body)
}

fn robot_send(fake: &FakeWeCom, client: &Client, key: &str, body: &Value) -> RequestBuilder {
    let url = format!("{}/cgi-bin/webhook/send?key={key}", fake.base_url());
    client.post(url).json(body)
}

/// An application body of `msgtype` with `content` under its key.
fn app(msgtype: &str, content: Value) -> Value {
    let mut body = json!({"touser": "ZhangSan", "msgtype": msgtype, "agentid": AGENT,
                          "enable_duplicate_check": 1, "duplicate_check_interval": 600});
    body[msgtype] = content;
    body
}

fn article(title: &str) -> Value {
    json!({"title": title, "description": "周五 16:00", "url": "https://example.com/talks",
           "picurl": "https://example.com/a.png"})
}

fn text_notice() -> Value {
    json!({
        "card_type": "text_notice",
        "source": {"icon_url": "https://example.com/i.png", "desc": "值班", "desc_color": 1},
        "action_menu": {"desc": "更多", "action_list": [{"text": "不再提醒", "key": "mute"}]},
        "task_id": "oncall-2024_05@handover",
        "main_title": {"title": "月度值班交接", "desc": "五月"},
        "quote_area": {"type": 1, "url": "https://example.com/q", "title": "引用",
                       "quote_text": "交接清单"},
        "emphasis_content": {"title": "3", "desc": "未完成"},
        "sub_title_text": "请在今天 18:00 前完成交接",
        "horizontal_content_list": [{"keyname": "值班人", "value": "张三"},
                                    {"type": 1, "keyname": "文档", "value": "打开",
                                     "url": "https://example.com/doc"}],
        "jump_list": [{"type": 1, "title": "值班表", "url": "https://example.com/oncall"}],
        "card_action": {"type": 1, "url": "https://example.com/oncall"},
    })
}

fn news_notice() -> Value {
    json!({
        "card_type": "news_notice",
        "main_title": {"title": "本周技术分享"},
        "card_image": {"url": "https://example.com/cover.png", "aspect_ratio": 2.25},
        "vertical_content_list": [{"title": "主讲", "desc": "李四"}],
        "card_action": {"type": 1, "url": "https://example.com/talks"},
    })
}

/// The errcode answered and the reason the fake recorded for the last application request.
async fn app_refusal(
    fake: &FakeWeCom,
    client: &Client,
    token: &str,
    body: &Value,
) -> (i64, String) {
    let v = call(app_send(fake, client, token, body)).await;
    let last = fake.all_requests().pop().expect("recorded");
    match last.outcome {
        Outcome::Rejected { errcode, reason } => {
            assert_eq!(v["errcode"], errcode, "{v}");
            (errcode, reason)
        }
        other => panic!("accepted, want a refusal: {other:?} for {body}"),
    }
}

async fn robot_refusal(
    fake: &FakeWeCom,
    client: &Client,
    key: &str,
    body: &Value,
) -> (i64, String) {
    let v = call(robot_send(fake, client, key, body)).await;
    let last = fake.robot_requests().pop().expect("recorded");
    match last.outcome {
        Outcome::Rejected { errcode, reason } => {
            assert_eq!(v["errcode"], errcode, "{v}");
            (errcode, reason)
        }
        other => panic!("accepted, want a refusal: {other:?} for {body}"),
    }
}

fn assert_refused((code, reason): (i64, String), want: i64, names: &str) {
    assert_eq!(code, want, "{reason}");
    assert!(
        reason.contains(names),
        "the reason names {names:?}: {reason}"
    );
}

// ---------------------------------------------------------------- application types

#[tokio::test]
async fn app_markdown_is_delivered_and_its_limits_hold() {
    let (fake, client) = setup().await;
    let t = token(&fake, &client).await;
    let body = app(
        "markdown",
        json!({"content": "**今日值班** <font color=\"warning\">张三</font>"}),
    );
    let v = call(app_send(&fake, &client, &t, &body)).await;
    assert_eq!(v["errcode"], 0, "{v}");
    assert!(v["msgid"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(fake.messages()[0].json, body);

    let long = app("markdown", json!({"content": "x".repeat(2049)}));
    let refusal = app_refusal(&fake, &client, &t, &long).await;
    assert_refused(refusal, 45002, "markdown.content has 2049 bytes");
    let extra = app(
        "markdown",
        json!({"content": "x", "mentioned_list": ["@all"]}),
    );
    let refusal = app_refusal(&fake, &client, &t, &extra).await;
    assert_refused(refusal, 40058, "markdown.mentioned_list");
    let mut safe = app("markdown", json!({"content": "x"}));
    safe["safe"] = json!(0);
    let refusal = app_refusal(&fake, &client, &t, &safe).await;
    assert_refused(refusal, 40058, "markdown does not support safe");
    assert_eq!(fake.messages().len(), 1);
}

#[tokio::test]
async fn app_type_key_must_match_msgtype() {
    let (fake, client) = setup().await;
    let t = token(&fake, &client).await;
    let mut both = app("markdown", json!({"content": "x"}));
    both["text"] = json!({"content": "x"});
    let refusal = app_refusal(&fake, &client, &t, &both).await;
    assert_refused(refusal, 40058, "text (msgtype is markdown)");
    let mut missing = app("news", json!(null));
    missing.as_object_mut().expect("object").remove("news");
    missing["markdown"] = json!({"content": "x"});
    let refusal = app_refusal(&fake, &client, &t, &missing).await;
    assert_refused(refusal, 40058, "markdown (msgtype is news)");
    let mut absent = app("news", json!(null));
    absent.as_object_mut().expect("object").remove("news");
    let refusal = app_refusal(&fake, &client, &t, &absent).await;
    assert_refused(refusal, 44004, "\"news\"");
    let unknown = app("mpnews", json!({"articles": []}));
    let refusal = app_refusal(&fake, &client, &t, &unknown).await;
    assert_refused(refusal, 40058, "mpnews");
    let mut bad_type = app("markdown", json!({"content": "x"}));
    bad_type["msgtype"] = json!("voice");
    let refusal = app_refusal(&fake, &client, &t, &bad_type).await;
    assert_refused(refusal, 40008, "\"voice\"");
}

#[tokio::test]
async fn app_news_is_delivered_and_its_limits_hold() {
    let (fake, client) = setup().await;
    let t = token(&fake, &client).await;
    let minimal = json!({"title": "t", "url": "http://e.x/"});
    let two = json!({"articles": [article("本周技术分享"), minimal]});
    let v = call(app_send(&fake, &client, &t, &app("news", two))).await;
    assert_eq!(v["errcode"], 0, "{v}");

    let nine: Vec<Value> = (0..9).map(|i| article(&format!("a{i}"))).collect();
    let refusal = app_refusal(&fake, &client, &t, &app("news", json!({"articles": nine}))).await;
    assert_refused(refusal, 45008, "9 articles, limit 8");
    let none = app("news", json!({"articles": []}));
    assert_refused(
        app_refusal(&fake, &client, &t, &none).await,
        44004,
        "news.articles is empty",
    );
    let cases = [
        (
            json!({"title": "t".repeat(129), "url": "https://e.x/"}),
            45002,
            "articles[0].title has 129 bytes",
        ),
        (
            json!({"title": "t", "description": "d".repeat(513), "url": "https://e.x/"}),
            45002,
            "articles[0].description has 513 bytes",
        ),
        (
            json!({"title": "t", "url": "ftp://e.x/"}),
            40058,
            "articles[0].url must be an http(s) URL",
        ),
        (
            json!({"title": "t", "url": format!("https://e.x/{}", "p".repeat(2040))}),
            45002,
            "articles[0].url has 2052 bytes",
        ),
        (
            json!({"title": "t", "url": "https://e.x/", "picurl": "e.x/a.png"}),
            40058,
            "articles[0].picurl",
        ),
        (json!({"title": "t"}), 44004, "articles[0].url missing"),
        (
            json!({"title": "t", "url": "https://e.x/", "btntxt": "更多"}),
            40058,
            "articles[0].btntxt",
        ),
    ];
    for (a, code, names) in cases {
        let body = app("news", json!({"articles": [article("ok"), a]}));
        let names = names.replace("[0]", "[1]");
        assert_refused(app_refusal(&fake, &client, &t, &body).await, code, &names);
    }
    assert_eq!(fake.messages().len(), 1);
}

#[tokio::test]
async fn app_template_cards_of_both_types_are_delivered() {
    let (fake, client) = setup().await;
    let t = token(&fake, &client).await;
    for card in [text_notice(), news_notice()] {
        let v = call(app_send(&fake, &client, &t, &app("template_card", card))).await;
        assert_eq!(v["errcode"], 0, "{v}");
    }
    // Only a sub title, and a news_notice with an image_text_area instead of a card_image.
    let mut sub_only = json!({"card_type": "text_notice", "sub_title_text": "交接",
                              "card_action": {"type": 2, "appid": "wx123", "pagepath": "/i"}});
    let v = call(app_send(
        &fake,
        &client,
        &t,
        &app("template_card", sub_only.clone()),
    ))
    .await;
    assert_eq!(v["errcode"], 0, "{v}");
    let mut area = news_notice();
    let area_obj = area.as_object_mut().expect("object");
    area_obj.remove("card_image");
    area_obj.insert(
        "image_text_area".into(),
        json!({"type": 1, "url": "https://e.x/", "title": "t", "image_url": "https://e.x/i.png"}),
    );
    let v = call(app_send(&fake, &client, &t, &app("template_card", area))).await;
    assert_eq!(v["errcode"], 0, "{v}");
    assert_eq!(fake.messages().len(), 4);

    sub_only["sub_title_text"] = json!("");
    let refusal = app_refusal(&fake, &client, &t, &app("template_card", sub_only)).await;
    assert_refused(
        refusal,
        40058,
        "main_title.title or template_card.sub_title_text",
    );
}

#[tokio::test]
async fn app_template_card_rules_are_enforced() {
    let (fake, client) = setup().await;
    let t = token(&fake, &client).await;
    let without = |mut card: Value, key: &str| {
        card.as_object_mut().expect("object").remove(key);
        card
    };
    let with = |mut card: Value, key: &str, v: Value| {
        card[key] = v;
        card
    };
    let cases = [
        (
            without(text_notice(), "card_action"),
            "text_notice needs template_card.card_action",
        ),
        (
            without(news_notice(), "card_action"),
            "news_notice needs template_card.card_action",
        ),
        (
            without(text_notice(), "task_id"),
            "task_id missing, action_menu needs it",
        ),
        (
            with(text_notice(), "card_type", json!("vote_interaction")),
            "card_type \"vote_interaction\"",
        ),
        (without(text_notice(), "card_type"), "card_type missing"),
        (
            with(text_notice(), "colour", json!(1)),
            "template_card.colour",
        ),
        (
            with(
                text_notice(),
                "card_image",
                json!({"url": "https://e.x/i.png"}),
            ),
            "card_image (not a field of text_notice)",
        ),
        (
            with(news_notice(), "sub_title_text", json!("x")),
            "sub_title_text (not a field of news_notice)",
        ),
        (
            without(news_notice(), "card_image"),
            "card_image.url or template_card.image_text_area",
        ),
        (
            with(news_notice(), "main_title", json!({"desc": "d"})),
            "news_notice needs template_card.main_title.title",
        ),
        (
            with(
                text_notice(),
                "main_title",
                json!({"title": "t", "icon": "x"}),
            ),
            "main_title.icon",
        ),
        (
            with(text_notice(), "card_action", json!({"type": 1})),
            "card_action.url missing",
        ),
        (
            with(
                text_notice(),
                "card_action",
                json!({"type": 0, "url": "https://e.x/"}),
            ),
            "card_action.type must be an integer in 1..=2",
        ),
        (
            with(text_notice(), "task_id", json!("has space")),
            "task_id must be",
        ),
        (
            with(
                text_notice(),
                "jump_list",
                json!(vec![
                    json!({"type": 1, "title": "a", "url": "https://e.x/"});
                    4
                ]),
            ),
            "jump_list has 4 items",
        ),
        (
            with(
                text_notice(),
                "horizontal_content_list",
                json!([{"type": 3, "keyname": "k"}]),
            ),
            "horizontal_content_list[0].userid missing",
        ),
        (
            with(
                news_notice(),
                "card_image",
                json!({"url": "https://e.x/i.png", "aspect_ratio": 3}),
            ),
            "card_image.aspect_ratio",
        ),
    ];
    for (card, names) in cases {
        let refusal = app_refusal(&fake, &client, &t, &app("template_card", card)).await;
        assert_refused(refusal, 40058, names);
    }
    assert!(fake.messages().is_empty());
}

#[tokio::test]
async fn duplicate_check_covers_the_new_app_types() {
    let (fake, client) = setup().await;
    let t = token(&fake, &client).await;
    let bodies = [
        app("markdown", json!({"content": "same"})),
        app("news", json!({"articles": [article("same")]})),
        app("template_card", text_notice()),
    ];
    for body in &bodies {
        for _ in 0..2 {
            let v = call(app_send(&fake, &client, &t, body)).await;
            assert_eq!(v["errcode"], 0, "{v}");
        }
    }
    let outcomes: Vec<bool> = (fake.all_requests().iter())
        .map(|r| r.outcome == Outcome::Duplicate)
        .collect();
    assert_eq!(outcomes, [false, true, false, true, false, true]);
    assert_eq!(fake.messages().len(), 3);
}

// ---------------------------------------------------------------- group robots

#[tokio::test]
async fn robot_text_with_mentions_is_delivered_without_msgid() {
    let (fake, client) = setup().await;
    let body = json!({"msgtype": "text", "text": {
        "content": "站会五分钟后开始",
        "mentioned_list": ["zhangsan", "@all"],
        "mentioned_mobile_list": ["13800001111"],
    }});
    let v = call(robot_send(&fake, &client, KEY, &body)).await;
    assert_eq!(v, json!({"errcode": 0, "errmsg": "ok"}));
    let msgs = fake
        .wait_for_robot_messages(1, Duration::from_secs(1))
        .await;
    assert_eq!((msgs[0].key.as_str(), &msgs[0].json), (KEY, &body));
    let delivered = Outcome::Delivered {
        msgid: String::new(),
    };
    assert_eq!(msgs[0].outcome, delivered);
    assert_eq!((fake.robot_calls(), fake.robot_requests().len()), (1, 1));
    // The application record is untouched.
    assert_eq!((fake.send_calls(), fake.all_requests().len()), (0, 0));
    assert!(fake.messages().is_empty());

    let markdown = json!({"msgtype": "markdown", "markdown": {"content": "x".repeat(4096)}});
    let news = json!({"msgtype": "news", "news": {"articles": [article("a"), article("b")]}});
    for body in [markdown, news] {
        let v = call(robot_send(&fake, &client, KEY, &body)).await;
        assert_eq!(v["errcode"], 0, "{v}");
    }
    assert_eq!(fake.robot_messages().len(), 3);
}

#[tokio::test]
async fn robot_bodies_are_strict() {
    let (fake, client) = setup().await;
    let text = || json!({"msgtype": "text", "text": {"content": "x"}});
    for key in [
        "agentid",
        "touser",
        "toparty",
        "totag",
        "safe",
        "enable_id_trans",
        "enable_duplicate_check",
        "duplicate_check_interval",
    ] {
        let mut body = text();
        body[key] = json!(1);
        let refusal = robot_refusal(&fake, &client, KEY, &body).await;
        assert_refused(
            refusal,
            40058,
            &format!("{key} is an application message field"),
        );
    }
    let cases = [
        (
            json!({"msgtype": "markdown", "markdown": {"content": "x".repeat(4097)}}),
            40058,
            "markdown.content has 4097 bytes, limit 4096",
        ),
        (
            json!({"msgtype": "text", "text": {"content": "x".repeat(2049)}}),
            40058,
            "text.content has 2049 bytes, limit 2048",
        ),
        (
            json!({"msgtype": "text", "text": {"content": ""}}),
            44004,
            "text.content is empty",
        ),
        (
            json!({"msgtype": "text", "text": {"content": "x", "mentioned_list": "@all"}}),
            40058,
            "text.mentioned_list",
        ),
        (
            json!({"msgtype": "text", "text": {"content": "x", "mentioned_mobile_list": [138]}}),
            40058,
            "text.mentioned_mobile_list",
        ),
        (
            json!({"msgtype": "markdown", "markdown": {"content": "x", "mentioned_list": ["a"]}}),
            40058,
            "markdown.mentioned_list",
        ),
        (
            json!({"msgtype": "text", "text": {"content": "x"}, "markdown": {"content": "x"}}),
            40058,
            "markdown (msgtype is text)",
        ),
        (
            json!({"msgtype": "text", "text": {"content": "x"}, "extra": 1}),
            40058,
            "extra",
        ),
        (json!({"msgtype": "markdown"}), 44004, "\"markdown\""),
        (
            json!({"msgtype": "textcard", "textcard": {}}),
            40008,
            "\"textcard\"",
        ),
        (
            json!({"msgtype": "template_card", "template_card": text_notice()}),
            40008,
            "\"template_card\"",
        ),
        (json!({"text": {"content": "x"}}), 40008, "nothing"),
        (
            robot_news((0..9).map(|i| article(&i.to_string())).collect()),
            40058,
            "9 articles, limit 8",
        ),
        (
            robot_news(vec![
                json!({"title": "t".repeat(129), "url": "https://e.x/"}),
            ]),
            40058,
            "title has 129 bytes",
        ),
        (
            robot_news(vec![json!({"title": "t", "url": "mailto:a@e.x"})]),
            40058,
            "url must be an http(s) URL",
        ),
    ];
    for (body, code, names) in cases {
        assert_refused(robot_refusal(&fake, &client, KEY, &body).await, code, names);
    }
    assert!(fake.robot_messages().is_empty());
    assert_eq!(fake.robot_refusals_45009(), 0);
}

#[tokio::test]
async fn unknown_or_missing_key_is_93000_without_echoing_the_key() {
    let (fake, client) = setup().await;
    let body = json!({"msgtype": "text", "text": {"content": "x"}});
    let v = call(robot_send(&fake, &client, "not-a-robot-key", &body)).await;
    assert_eq!(v["errcode"], 93000, "{v}");
    let errmsg = v["errmsg"].as_str().expect("errmsg");
    assert!(errmsg.starts_with("invalid webhook url"), "{errmsg}");
    assert!(!errmsg.contains("not-a-robot-key"), "{errmsg}");
    let url = format!("{}/cgi-bin/webhook/send", fake.base_url());
    let v = call(client.post(url).json(&body)).await;
    assert_eq!(v["errcode"], 93000, "{v}");
    let keys: Vec<String> = fake.robot_requests().into_iter().map(|r| r.key).collect();
    assert_eq!(keys, ["not-a-robot-key", ""]);
    assert!(fake.robot_messages().is_empty());
}

#[tokio::test]
async fn the_21st_message_in_the_window_is_45009_until_the_window_rolls() {
    let (fake, client) = setup().await;
    fake.add_robot("other");
    let body = |i: usize| json!({"msgtype": "text", "text": {"content": format!("n{i}")}});
    for i in 0..20 {
        let v = call(robot_send(&fake, &client, KEY, &body(i))).await;
        assert_eq!(v["errcode"], 0, "message {i}: {v}");
    }
    let refusal = robot_refusal(&fake, &client, KEY, &body(20)).await;
    assert_refused(refusal, 45009, "20 messages in the last 60s, limit 20");
    assert_eq!(fake.robot_refusals_45009(), 1);
    // A refused body does not count; another robot has its own minute.
    let broken = json!({"msgtype": "text", "text": {"content": ""}});
    assert_eq!(robot_refusal(&fake, &client, KEY, &broken).await.0, 44004);
    let v = call(robot_send(&fake, &client, "other", &body(0))).await;
    assert_eq!(v["errcode"], 0, "{v}");

    // A short window rolls: the 20 accepted messages leave it.
    fake.set_robot_window(Duration::from_millis(100));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let v = call(robot_send(&fake, &client, KEY, &body(21))).await;
    assert_eq!(v["errcode"], 0, "{v}");
    // A lower limit applies at once.
    fake.set_robot_window(Duration::from_secs(60));
    fake.set_robot_limit(2);
    let v = call(robot_send(&fake, &client, KEY, &body(22))).await;
    assert_eq!(v["errcode"], 0, "{v}");
    let refusal = robot_refusal(&fake, &client, KEY, &body(23)).await;
    assert_refused(refusal, 45009, "limit 2");
    assert_eq!(fake.robot_refusals_45009(), 2);
    assert_eq!(fake.robot_messages().len(), 23);
}

#[tokio::test]
async fn identical_robot_bodies_are_both_delivered() {
    let (fake, client) = setup().await;
    let body = json!({"msgtype": "markdown", "markdown": {"content": "**same**"}});
    for _ in 0..2 {
        let v = call(robot_send(&fake, &client, KEY, &body)).await;
        assert_eq!(v, json!({"errcode": 0, "errmsg": "ok"}));
    }
    let msgs = fake
        .wait_for_robot_messages(2, Duration::from_secs(1))
        .await;
    assert!(msgs.iter().all(|m| m.json == body && m.raw == msgs[0].raw));
}

fn robot_news(articles: Vec<Value>) -> Value {
    json!({"msgtype": "news", "news": {"articles": articles}})
}

/// Polls until `f` holds, for at most a second.
async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while !f() {
        assert!(Instant::now() < deadline, "not within 1 s: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn hold_sends_holds_robot_sends_too() {
    let (fake, client) = setup().await;
    let t = token(&fake, &client).await;
    let hold = fake.hold_sends();
    let body = json!({"msgtype": "text", "text": {"content": "held"}});
    let robot = tokio::spawn(call(robot_send(&fake, &client, KEY, &body)));
    let app_body = app("markdown", json!({"content": "held"}));
    let app_task = tokio::spawn(call(app_send(&fake, &client, &t, &app_body)));
    until("both held", || fake.sends_waiting() == 2).await;
    assert_eq!((fake.robot_sends_waiting(), fake.robot_calls()), (1, 1));
    assert!(fake.robot_requests().is_empty() && fake.robot_messages().is_empty());
    assert!(fake.max_in_flight() >= 2);
    hold.release();
    assert_eq!(robot.await.expect("join")["errcode"], 0);
    assert_eq!(app_task.await.expect("join")["errcode"], 0);
    assert_eq!((fake.sends_waiting(), fake.robot_messages().len()), (0, 1));
    assert_eq!(fake.messages().len(), 1);
}

#[tokio::test]
async fn a_robot_client_that_times_out_does_not_cancel_delivery() {
    let (fake, client) = setup().await;
    let hold = fake.hold_sends();
    let body = json!({"msgtype": "text", "text": {"content": "late"}});
    let impatient = robot_send(&fake, &client, KEY, &body).timeout(Duration::from_millis(100));
    let err = impatient
        .send()
        .await
        .expect_err("held past the client's timeout");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(fake.robot_sends_waiting(), 1);
    hold.release();
    let msgs = fake
        .wait_for_robot_messages(1, Duration::from_secs(1))
        .await;
    assert_eq!(msgs[0].json, body);
}

#[tokio::test]
async fn scripted_and_chaos_replies_reach_robots() {
    let (fake, client) = setup().await;
    let t = token(&fake, &client).await;
    fake.set_robot_limit(1);
    let body = json!({"msgtype": "text", "text": {"content": "x"}});
    fake.script_robot(Reply::Errcode(-1));
    fake.script_robot(Reply::Errcode(45009));
    fake.script_robot(Reply::Delay(
        Duration::from_millis(20),
        Box::new(Reply::Drop),
    ));
    assert_eq!(
        call(robot_send(&fake, &client, KEY, &body)).await["errcode"],
        -1
    );
    assert_eq!(
        call(robot_send(&fake, &client, KEY, &body)).await["errcode"],
        45009
    );
    let err = robot_send(&fake, &client, KEY, &body)
        .send()
        .await
        .expect_err("dropped");
    assert!(!err.is_timeout() && err.status().is_none(), "{err:?}");
    let scripted = |r: &RobotReceived| r.outcome == Outcome::Scripted;
    assert!(fake.robot_requests().iter().all(scripted));
    // Scripted answers deliver nothing and use none of the limit; app scripts stay apart.
    fake.script_send(Reply::Errcode(-1));
    assert_eq!(
        call(robot_send(&fake, &client, KEY, &body)).await["errcode"],
        0
    );
    assert_eq!(fake.robot_refusals_45009(), 0);
    let app_body = app("markdown", json!({"content": "x"}));
    assert_eq!(
        call(app_send(&fake, &client, &t, &app_body)).await["errcode"],
        -1
    );
    fake.set_chaos(Chaos {
        busy_fraction: 1.0,
        ..Chaos::default()
    });
    assert_eq!(
        call(robot_send(&fake, &client, KEY, &body)).await["errcode"],
        -1
    );
    assert_eq!((fake.robot_calls(), fake.robot_messages().len()), (5, 1));
}
