//! `send`: the exact bodies WeCom receives, the history row, exit codes, errcode handling,
//! retries, dry runs, malformed answers, and that no secret or token leaks.

use std::time::Duration;

use chrono::{SubsecRound, Utc};
use serde_json::json;
use wecom_notify::dispatch::Fired;
use wecom_notify::store::history::{Status, Trigger};

use crate::support::*;

const STANDUP: &str = r#"  - name: standup
    cron: "30 9 * * 1-5"
    to: { users: [ZhangSan, LiSi], parties: ["2"] }
    text: { content: "站会十分钟后开始" }
"#;

const WEEKLY: &str = r#"  - name: weekly
    cron: "0 16 * * Fri"
    to: { parties: [2, 3], tags: ["7"] }
    enable_id_trans: true
    duplicate_check_interval: 600
    textcard:
      title: "周报提醒"
      description: "<div class=\"gray\">本周</div>"
      url: https://example.com/weekly
      btntxt: 查看
"#;

/// One row of `sends` as a JSON object, for readable assertions.
fn row(env: &Env, id: i64) -> serde_json::Value {
    let conn = env.db();
    conn.query_row(
        "SELECT schedule, trigger, status, attempts, app, agent_id, msgtype, payload, errcode, errmsg, msgid,
                invaliduser, invalidparty, invalidtag, unlicenseduser, scheduled_at, created_at, finished_at
         FROM sends WHERE id = ?1",
        [id],
        |r| {
            Ok(json!({
                "schedule": r.get::<_, String>(0)?, "trigger": r.get::<_, String>(1)?,
                "status": r.get::<_, String>(2)?, "attempts": r.get::<_, i64>(3)?,
                "app": r.get::<_, String>(4)?, "agent_id": r.get::<_, i64>(5)?,
                "msgtype": r.get::<_, String>(6)?, "payload": r.get::<_, String>(7)?,
                "errcode": r.get::<_, Option<i64>>(8)?, "errmsg": r.get::<_, Option<String>>(9)?,
                "msgid": r.get::<_, Option<String>>(10)?, "invaliduser": r.get::<_, Option<String>>(11)?,
                "invalidparty": r.get::<_, Option<String>>(12)?, "invalidtag": r.get::<_, Option<String>>(13)?,
                "unlicenseduser": r.get::<_, Option<String>>(14)?, "scheduled_at": r.get::<_, String>(15)?,
                "created_at": r.get::<_, String>(16)?, "finished_at": r.get::<_, Option<String>>(17)?,
            }))
        },
    )
    .expect("row")
}

fn delivered_msgid(received: &Received) -> String {
    match &received.outcome {
        Outcome::Delivered { msgid } => msgid.clone(),
        other => panic!("not delivered: {other:?}"),
    }
}

#[tokio::test]
async fn text_body_arrives_exactly_and_the_row_records_it() {
    let env = Env::new().await;
    env.write_schedules(STANDUP);
    let output = env.cli_ok(&["send", "standup"]).await;

    let messages = env.fake.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].json,
        json!({
            "touser": "ZhangSan|LiSi", "toparty": "2", "msgtype": "text", "agentid": AGENT,
            "text": {"content": "站会十分钟后开始"}, "safe": 0, "enable_id_trans": 0,
            "enable_duplicate_check": 1, "duplicate_check_interval": 1800
        })
    );
    let msgid = delivered_msgid(&messages[0]);
    let row = row(&env, 1);
    assert_eq!(
        row["payload"], messages[0].raw,
        "payload is the body exactly as POSTed"
    );
    assert_eq!(row["status"], "sent");
    assert_eq!(row["trigger"], "manual");
    assert_eq!(row["attempts"], 1);
    assert_eq!(row["errcode"], 0);
    assert_eq!(row["msgid"], msgid);
    assert_eq!(row["app"], "ops");
    assert_eq!(row["agent_id"], AGENT);
    assert_eq!(row["msgtype"], "text");
    assert_eq!(row["invaliduser"], serde_json::Value::Null);
    for column in ["scheduled_at", "created_at", "finished_at"] {
        let at = row[column].as_str().expect(column);
        assert!(
            at.len() == 20 && at.ends_with('Z'),
            "{column} = {at}: RFC 3339, whole seconds, Z"
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("history id 1: sent after 1 attempt(s)") && stdout.contains(&msgid),
        "{stdout}"
    );
}

#[tokio::test]
async fn textcard_body_arrives_exactly() {
    let env = Env::new().await;
    env.write_schedules(WEEKLY);
    env.cli_ok(&["send", "weekly"]).await;
    let messages = env.fake.messages();
    assert_eq!(messages.len(), 1, "{:?}", env.fake.all_requests());
    assert_eq!(
        messages[0].json,
        json!({
            "toparty": "2|3", "totag": "7", "msgtype": "textcard", "agentid": AGENT,
            "textcard": {"title": "周报提醒", "description": "<div class=\"gray\">本周</div>",
                         "url": "https://example.com/weekly", "btntxt": "查看"},
            "enable_id_trans": 1, "enable_duplicate_check": 1, "duplicate_check_interval": 600
        })
    );
    assert_eq!(row(&env, 1)["msgtype"], "textcard");
}

#[tokio::test]
async fn partial_delivery_is_recorded_with_the_rejected_recipients() {
    let env = Env::new().await;
    env.write_schedules(STANDUP);
    env.fake.set_unknown_users(&["LiSi"]);
    let output = env.cli(&["send", "standup"]).await;
    assert!(
        output.status.success(),
        "errcode 0 exits 0: {}",
        text(&output)
    );
    let row = row(&env, 1);
    assert_eq!(row["status"], "partial");
    assert_eq!(row["errcode"], 0);
    assert_eq!(row["invaliduser"], "lisi");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("invalid users: lisi"),
        "{}",
        text(&output)
    );
}

#[tokio::test]
async fn permanent_errors_fail_at_once_with_advice() {
    // (how to provoke it, errcode, words the operator needs)
    let cases: [(&str, i64, &str); 3] = [
        ("ip", 60020, "企业可信IP"),
        ("secret", 40001, "secret is wrong"),
        ("recipients", 81013, "no valid recipient"),
    ];
    for (case, errcode, advice) in cases {
        let env = Env::new().await;
        env.write_schedules(STANDUP);
        match case {
            "ip" => env.fake.script_send(Reply::Errcode(60020)),
            "secret" => std::fs::write(env.path("ops.secret"), "wrong-secret").expect("write"),
            _ => env.fake.set_unknown_users(&["ZhangSan", "LiSi"]),
        }
        if case == "recipients" {
            env.write_schedules(&STANDUP.replace(", parties: [\"2\"]", ""));
        }
        let output = env.cli(&["send", "standup"]).await;
        assert_eq!(output.status.code(), Some(1), "{case}: {}", text(&output));
        let row = row(&env, 1);
        assert_eq!(row["status"], "failed", "{case}");
        assert_eq!(row["errcode"], errcode, "{case}");
        assert_eq!(
            row["attempts"], 1,
            "{case}: permanent errors are not retried"
        );
        assert!(
            String::from_utf8_lossy(&output.stdout).contains(advice),
            "{case}: {}",
            text(&output)
        );
        let calls = if case == "secret" {
            env.fake.gettoken_calls()
        } else {
            env.fake.send_calls()
        };
        assert_eq!(calls, 1, "{case}: exactly one call");
        assert!(env.fake.messages().is_empty(), "{case}");
    }
}

#[tokio::test]
async fn busy_then_success_is_recorded_with_two_attempts() {
    let env = Env::new().await;
    env.write_schedules(STANDUP);
    env.fake.script_send(Reply::Errcode(-1));
    env.cli_ok(&["send", "standup"]).await;
    let row = row(&env, 1);
    assert_eq!(row["status"], "sent");
    assert_eq!(row["attempts"], 2);
    assert_eq!(env.fake.send_calls(), 2);
    assert_eq!(env.fake.messages().len(), 1);
}

#[tokio::test]
async fn dry_run_prints_the_body_records_it_and_calls_nothing() {
    let env = Env::new().await;
    // No secret at all: a dry run must not need one.
    env.write_config(&format!(
        "timezone: UTC\napps:\n  ops: {{ corp_id: {CORP}, agent_id: {AGENT}, secret_env: WECOM_NOTIFY_TEST_UNSET_SECRET, api_base: {} }}\nschedules:\n{STANDUP}",
        env.fake.base_url()
    ));
    let output = env.cli_ok(&["send", "standup", "--dry-run"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let body = stdout.lines().next().expect("body line");
    let row = row(&env, 1);
    assert_eq!(row["status"], "dry_run");
    assert_eq!(
        row["payload"], body,
        "the printed body is the recorded payload"
    );
    let parsed: serde_json::Value = serde_json::from_str(body).expect("the body is JSON");
    assert_eq!(parsed["text"]["content"], "站会十分钟后开始");
    assert_eq!(
        env.fake.gettoken_calls() + env.fake.send_calls(),
        0,
        "a dry run calls nothing"
    );
}

#[tokio::test]
async fn unknown_schedule_is_a_clear_error() {
    let env = Env::new().await;
    env.write_schedules(STANDUP);
    let output = env.cli(&["send", "stanup"]).await;
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no schedule named \"stanup\"") && stderr.contains("standup"),
        "{stderr}"
    );
}

#[tokio::test]
async fn malformed_answers_are_failures_never_successes() {
    let answers = [
        (
            "html",
            Reply::Http(502, "<html><body>502 Bad Gateway</body></html>".into()),
        ),
        (
            "truncated",
            Reply::Raw(r#"{"errcode":0,"errmsg":"o"#.into()),
        ),
        (
            "no errcode",
            Reply::Raw(r#"{"errmsg":"ok","msgid":"x"}"#.into()),
        ),
        ("10 MB", Reply::Huge(10 * 1024 * 1024)),
        ("dropped", Reply::Drop),
    ];
    for (case, answer) in answers {
        let env = Env::new().await;
        env.write_schedules(STANDUP);
        let config = env.load();
        let mut policy = fast_policy();
        policy.max_attempts = 1;
        let dispatcher = env.dispatcher(policy);
        env.fake.script_send(answer);
        let schedule = config.schedule("standup").expect("schedule");
        let app = &wecom_notify::channel::Channel::App(config.app("ops").expect("app").clone());
        let now = Utc::now().trunc_subsecs(0);
        let fired = dispatcher
            .fire(schedule, app, now, Trigger::Manual)
            .await
            .expect("recorded");
        let Fired::Done(outcome) = fired else {
            panic!("{case}: not done")
        };
        assert_eq!(outcome.finish.status, Status::Failed, "{case}: {outcome:?}");
        assert_eq!(outcome.finish.errcode, None, "{case}");
        assert!(
            outcome
                .finish
                .errmsg
                .as_deref()
                .is_some_and(|m| !m.is_empty()),
            "{case}: the reason is recorded"
        );
        assert_eq!(row(&env, 1)["status"], "failed", "{case}");
    }
}

#[tokio::test]
async fn ambiguous_failures_are_retried_and_the_duplicate_check_absorbs_the_repeat() {
    let env = Env::new().await;
    env.write_schedules(STANDUP);
    let config = env.load();
    let dispatcher = env.dispatcher(fast_policy());
    // The first answer is lost after WeCom delivered the message; the retry resends the same
    // body, which WeCom's duplicate check drops: one message, row `sent`.
    env.fake.set_send_delay(Duration::from_secs(20));
    let schedule = config.schedule("standup").expect("schedule").clone();
    let app = wecom_notify::channel::Channel::App(config.app("ops").expect("app").clone());
    let fire = tokio::spawn(async move {
        dispatcher
            .fire(
                &schedule,
                &app,
                Utc::now().trunc_subsecs(0),
                Trigger::Manual,
            )
            .await
    });
    env.fake.wait_for_messages(1, Duration::from_secs(30)).await;
    env.fake.set_send_delay(Duration::ZERO);
    let fired = tokio::time::timeout(Duration::from_secs(30), fire)
        .await
        .expect("finishes")
        .expect("join")
        .expect("recorded");
    let Fired::Done(outcome) = fired else {
        panic!("not done")
    };
    assert!(matches!(outcome.finish.status, Status::Sent), "{outcome:?}");
    assert!(outcome.finish.attempts >= 2, "{outcome:?}");
    assert_eq!(env.fake.messages().len(), 1, "delivered exactly once");
    assert!(
        env.fake
            .all_requests()
            .iter()
            .any(|r| r.outcome == Outcome::Duplicate)
    );
}

on_both_backends! {
    async fn logs_history_and_output_never_contain_the_secret_or_a_token(env: Env) {
        env.write_schedules(STANDUP);
        // A full send with a token refresh in the middle, logged at the most verbose level.
        let first = env
            .command(&["send", "standup"])
            .env("RUST_LOG", "trace")
            .output()
            .await
            .expect("run");
        env.fake.invalidate_all_tokens();
        env.write_schedules(&STANDUP.replace("站会十分钟后开始", "second"));
        let second = env
            .command(&["send", "standup"])
            .env("RUST_LOG", "trace")
            .output()
            .await
            .expect("run");
        assert!(
            first.status.success() && second.status.success(),
            "{}\n{}",
            text(&first),
            text(&second)
        );
        assert_eq!(env.fake.gettoken_calls(), 2, "the refresh happened");

        let tokens: Vec<String> = env
            .fake
            .all_requests()
            .iter()
            .map(|r| r.access_token.clone())
            .collect();
        assert!(
            tokens.len() >= 3 && tokens.iter().all(|t| t.len() >= 32),
            "{tokens:?}"
        );
        let logs = format!("{}{}", text(&first), text(&second));
        assert!(
            logs.contains("TRACE"),
            "trace-level logging was on, HTTP internals included"
        );
        let rows = env.column("SELECT payload || ' ' || coalesce(errmsg, '') || ' ' || coalesce(msgid, '') FROM sends").join("\n");
        let events = env
            .column("SELECT coalesce(detail, '') FROM events")
            .join("\n");
        for (what, haystack) in [("logs", &logs), ("sends", &rows), ("events", &events)] {
            assert!(!haystack.contains(SECRET), "the secret leaked into {what}");
            for token in &tokens {
                assert!(
                    !haystack.contains(token.as_str()),
                    "a token leaked into {what}"
                );
            }
        }
    }
}

#[tokio::test]
async fn sending_the_same_body_again_within_the_interval_warns_that_wecom_will_drop_it() {
    let env = Env::new().await;
    env.write_schedules(STANDUP);
    let first = env.cli_ok(&["send", "standup"]).await;
    assert!(
        !String::from_utf8_lossy(&first.stderr).contains("warning: history id"),
        "{}",
        text(&first)
    );
    let second = env.cli_ok(&["send", "standup"]).await;
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("warning: history id 1 sent this very body")
            && stderr.contains("will answer ok but not deliver"),
        "{stderr}"
    );
    assert_eq!(
        env.fake.messages().len(),
        1,
        "the fake, like WeCom, dropped the repeat"
    );
}

#[tokio::test]
async fn a_connection_error_leaks_no_secret_either() {
    let env = Env::new().await;
    // Nothing listens on port 9 of the loopback: every call fails to connect.
    env.write_config(&format!(
        "timezone: UTC\napps:\n  ops: {{ corp_id: {CORP}, agent_id: {AGENT}, secret_file: ops.secret, api_base: \"http://127.0.0.1:9\" }}\nschedules:\n{STANDUP}"
    ));
    let output = env
        .command(&["send", "standup"])
        .env("RUST_LOG", "trace")
        .output()
        .await
        .expect("run");
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let everything = format!(
        "{}{}",
        text(&output),
        env.column("SELECT coalesce(errmsg, '') FROM sends")
            .join("\n")
    );
    assert!(everything.contains("could not connect"), "{everything}");
    assert!(
        !everything.contains(SECRET) && !everything.contains("corpsecret="),
        "the secret leaked:\n{everything}"
    );
}

/// Characters that must never reach a terminal or a log line raw (a line's own end aside).
fn raw_controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|&c| {
            c != '\n'
                && (c.is_control()
                    || ('\u{202a}'..='\u{202e}').contains(&c)
                    || ('\u{2066}'..='\u{2069}').contains(&c))
        })
        .collect()
}

#[tokio::test]
async fn a_hostile_errmsg_forges_no_log_line_and_prints_no_control_character() {
    let env = Env::new().await;
    env.write_schedules(STANDUP);
    let forged = "2026-12-01T00:00:00.000000Z  INFO wecom_notify::dispatch: sent schedule=x";
    let errmsg = format!("invalid\n{forged}\n\u{1b}[2J\u{1b}]0;owned\u{7}\0\u{202e}desrever");
    for args in [
        &["send", "standup"][..],
        &["--log-format", "json", "send", "standup"][..],
    ] {
        env.fake
            .script_send(Reply::Json(json!({ "errcode": 40003, "errmsg": errmsg })));
        let output = env.cli(args).await;
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr
                .lines()
                .chain(stdout.lines())
                .any(|l| l.starts_with(forged)),
            "a forged line: {}",
            text(&output)
        );
        assert_eq!(raw_controls(&stdout), Vec::<char>::new(), "{stdout}");
        assert_eq!(raw_controls(&stderr), Vec::<char>::new(), "{stderr}");
        assert!(
            stdout.contains("\\u{1b}[2J"),
            "escaped, not dropped: {stdout}"
        );
    }
    for args in [&["history"][..], &["history", "--json"][..]] {
        let output = env.cli_ok(args).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(raw_controls(&stdout), Vec::<char>::new(), "{stdout}");
        assert!(!stdout.lines().any(|l| l.starts_with(forged)), "{stdout}");
    }
}
