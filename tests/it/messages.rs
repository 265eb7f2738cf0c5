//! markdown, news and template cards as WeCom receives them: the exact body, with the template
//! variables rendered at the slot the send was fired for, and the history row recording that
//! very body.

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::{Value, json};
use wecom_notify::channel::Channel;
use wecom_notify::dispatch::Fired;
use wecom_notify::store::history::Trigger;

use crate::support::*;

const MARKDOWN: &str = r#"  - name: oncall
    cron: "0 9 * * 1"
    to: { users: [ZhangSan], tags: ["7"] }
    markdown:
      content: "**本周值班** <font color=\"warning\">{{ date_cn }}</font>\n> 张三"
"#;

const NEWS: &str = r#"  - name: talks
    cron: "0 10 * * 5"
    to: { parties: ["2"] }
    enable_id_trans: true
    news:
      articles:
        - title: "技术分享 {{ date }}"
          description: 周五 16:00，三楼
          url: https://example.com/talks
          picurl: https://example.com/talks.png
        - title: 报名
          url: "https://example.com/signup?week={{ slot:%V }}"
"#;

const TEXT_NOTICE: &str = r#"  - name: handover
    cron: "0 18 28 * *"
    to: { users: ["@all"] }
    template_card:
      card_type: text_notice
      source: { desc: 值班系统, desc_color: 1 }
      main_title: { title: 月度值班交接, desc: "{{ date_cn }}" }
      sub_title_text: 请在今天 18:00 前完成交接
      horizontal_content_list:
        - { keyname: 交出, value: 张三 }
        - { type: 3, keyname: 接手, value: 李四, userid: LiSi }
      jump_list:
        - { type: 1, title: 值班表, url: https://example.com/roster }
      card_action: { type: 1, url: "https://example.com/oncall/{{ date }}" }
"#;

const NEWS_NOTICE: &str = r#"  - name: poster
    cron: "0 10 * * 5"
    to: { parties: ["2"] }
    template_card:
      card_type: news_notice
      main_title: { title: "技术分享 {{ weekday_cn }}" }
      card_image: { url: https://example.com/poster.png, aspect_ratio: 2.25 }
      vertical_content_list:
        - { title: Rust 的所有权, desc: 讲者 王五 }
      card_action: { type: 1, url: https://example.com/talks }
"#;

/// The slot every send below is fired for: Monday 2026-11-30 09:30 in Shanghai.
fn slot() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 30, 1, 30, 0).unwrap()
}

/// `format` applied to the slot in the schedules' zone, as the templates render it.
fn at_slot(format: &str) -> String {
    let zone: Tz = "Asia/Shanghai".parse().unwrap();
    slot().with_timezone(&zone).format(format).to_string()
}

/// Fires `schedule` of `schedules` for [`slot`] and returns the one body WeCom received,
/// after checking that the history row holds that body and its msgtype.
async fn received(schedules: &str, schedule: &str, msgtype: &str) -> Value {
    let env = Env::new().await;
    env.write_schedules(schedules);
    let config = env.load();
    let dispatcher = env.dispatcher(fast_policy());
    let found = config.schedule(schedule).expect("schedule");
    let app = Channel::App(config.app("ops").expect("app").clone());
    let fired = dispatcher
        .fire(found, &app, slot(), Trigger::Manual)
        .await
        .expect("recorded");
    let Fired::Done(outcome) = fired else {
        panic!("not done")
    };
    assert_eq!(outcome.finish.status.as_str(), "sent", "{outcome:?}");
    let messages = env.fake.messages();
    assert_eq!(messages.len(), 1, "{:?}", env.fake.all_requests());
    let history = env.cli_ok(&["history", "--json"]).await;
    let rows: Vec<Value> = String::from_utf8_lossy(&history.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON row a line"))
        .collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["msgtype"], msgtype);
    assert_eq!(
        rows[0]["payload"], messages[0].raw,
        "the row holds the body exactly as POSTed"
    );
    messages[0].json.clone()
}

#[tokio::test]
async fn a_markdown_body_arrives_exactly_without_safe_or_id_translation() {
    let body = received(MARKDOWN, "oncall", "markdown").await;
    assert_eq!(
        body,
        json!({
            "touser": "ZhangSan", "totag": "7", "msgtype": "markdown", "agentid": AGENT,
            "markdown": {"content": format!(
                "**本周值班** <font color=\"warning\">{}</font>\n> 张三",
                at_slot("%Y年%m月%d日")
            )},
            "enable_duplicate_check": 1, "duplicate_check_interval": 1800
        })
    );
}

#[tokio::test]
async fn a_news_body_arrives_exactly_with_only_the_fields_each_article_has() {
    let body = received(NEWS, "talks", "news").await;
    assert_eq!(
        body,
        json!({
            "toparty": "2", "msgtype": "news", "agentid": AGENT,
            "news": {"articles": [
                {"title": format!("技术分享 {}", at_slot("%Y-%m-%d")), "description": "周五 16:00，三楼",
                 "url": "https://example.com/talks", "picurl": "https://example.com/talks.png"},
                {"title": "报名", "url": format!("https://example.com/signup?week={}", at_slot("%V"))}
            ]},
            "enable_id_trans": 1, "enable_duplicate_check": 1, "duplicate_check_interval": 1800
        })
    );
}

#[tokio::test]
async fn a_text_notice_card_arrives_as_written_with_its_strings_rendered() {
    let body = received(TEXT_NOTICE, "handover", "template_card").await;
    assert_eq!(
        body,
        json!({
            "touser": "@all", "msgtype": "template_card", "agentid": AGENT,
            "template_card": {
                "card_type": "text_notice",
                "source": {"desc": "值班系统", "desc_color": 1},
                "main_title": {"title": "月度值班交接", "desc": at_slot("%Y年%m月%d日")},
                "sub_title_text": "请在今天 18:00 前完成交接",
                "horizontal_content_list": [
                    {"keyname": "交出", "value": "张三"},
                    {"type": 3, "keyname": "接手", "value": "李四", "userid": "LiSi"}
                ],
                "jump_list": [{"type": 1, "title": "值班表", "url": "https://example.com/roster"}],
                "card_action": {"type": 1, "url": format!("https://example.com/oncall/{}", at_slot("%Y-%m-%d"))}
            },
            "enable_id_trans": 0, "enable_duplicate_check": 1, "duplicate_check_interval": 1800
        })
    );
}

#[tokio::test]
async fn a_news_notice_card_arrives_as_written_in_the_order_written() {
    let body = received(NEWS_NOTICE, "poster", "template_card").await;
    let days = [
        "星期一",
        "星期二",
        "星期三",
        "星期四",
        "星期五",
        "星期六",
        "星期日",
    ];
    let weekday = days[at_slot("%u").parse::<usize>().expect("1 to 7") - 1];
    assert_eq!(
        body,
        json!({
            "toparty": "2", "msgtype": "template_card", "agentid": AGENT,
            "template_card": {
                "card_type": "news_notice",
                "main_title": {"title": format!("技术分享 {weekday}")},
                "card_image": {"url": "https://example.com/poster.png", "aspect_ratio": 2.25},
                "vertical_content_list": [{"title": "Rust 的所有权", "desc": "讲者 王五"}],
                "card_action": {"type": 1, "url": "https://example.com/talks"}
            },
            "enable_id_trans": 0, "enable_duplicate_check": 1, "duplicate_check_interval": 1800
        })
    );
}

#[tokio::test]
async fn the_card_keys_are_posted_in_the_order_the_yaml_wrote_them() {
    // serde_json's Value compares maps by content; the raw body shows the order.
    let env = Env::new().await;
    env.write_schedules(&NEWS_NOTICE.replace(
        "card_action: { type: 1, url: https://example.com/talks }",
        "card_action: { url: https://example.com/talks, type: 1 }",
    ));
    let output = env.cli_ok(&["send", "poster", "--dry-run"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let body = stdout.lines().next().unwrap_or_default();
    let order = [
        "\"card_type\"",
        "\"main_title\"",
        "\"card_image\"",
        "\"vertical_content_list\"",
        "\"card_action\":{\"url\":\"https://example.com/talks\",\"type\":1}",
    ];
    let positions: Vec<Option<usize>> = order.iter().map(|key| body.find(key)).collect();
    assert!(
        positions.iter().all(Option::is_some) && positions.is_sorted(),
        "{positions:?} in {body}"
    );
}
