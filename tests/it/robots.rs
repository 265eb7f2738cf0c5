//! Group robots (群机器人): the exact webhook bodies, the row naming the robot, the 20-a-minute
//! limit spread instead of refused, at most once (never a resend of what may have arrived, also
//! after a crash), and the webhook key never shown anywhere.

use std::time::Duration;

use chrono::{SubsecRound, TimeZone, Utc};
use wecom_notify::channel::Channel;
use wecom_notify::dispatch::Fired;
use wecom_notify::store::history::{Status, Trigger};

use crate::support::*;

/// The robot's webhook key: distinctive, so that a leak is easy to grep for.
const KEY: &str = "5d1c0b7e-robot-key-do-not-leak-77a3";

/// The config's `robots:` section, the robot pointing at the fake.
fn robots_yaml(env: &Env) -> String {
    format!(
        "robots:\n  oncall-group:\n    key_file: robot.key\n    api_base: {}\n",
        env.fake.base_url()
    )
}

/// An `Env` whose fake knows the robot, with a config of the test app, the robot and
/// `schedules`.
async fn robot_env(schedules: &str) -> Env {
    let env = Env::new().await;
    env.fake.add_robot(KEY);
    std::fs::write(env.path("robot.key"), format!("{KEY}\n")).expect("key file");
    write_robot_config(&env, schedules);
    env
}

fn write_robot_config(env: &Env, schedules: &str) {
    env.write_config(&format!(
        "timezone: Asia/Shanghai\n{}{}schedules:\n{schedules}",
        env.apps_yaml(),
        robots_yaml(env)
    ));
}

const STANDUP_GROUP: &str = r#"  - name: standup-group
    cron: "25 9 * * 1-5"
    robot: oncall-group
    text:
      content: "站会五分钟后开始 {{ slot:%Y-%m-%d %H:%M }}"
      mention: { users: [wangqing, "@all"], mobiles: ["13800001111"] }
"#;

/// Fires `name` once in this process for `slot` (trigger manual), through its channel.
async fn fire(env: &Env, name: &str, slot: chrono::DateTime<Utc>) -> Fired {
    let config = env.load();
    let schedule = config.schedule(name).expect("schedule").clone();
    let channel =
        Channel::for_schedule(&schedule, &config.apps, &config.robots).expect("its channel");
    env.dispatcher(fast_policy())
        .fire(&schedule, &channel, slot, Trigger::Manual)
        .await
        .expect("recorded")
}

fn outcome(fired: Fired) -> wecom_notify::dispatch::SendOutcome {
    match fired {
        Fired::Done(outcome) => *outcome,
        Fired::Taken => panic!("not sent: taken"),
    }
}

#[tokio::test]
async fn robot_text_with_mentions_arrives_as_exactly_this_json_and_the_row_names_the_robot() {
    let env = robot_env(STANDUP_GROUP).await;
    // The slot the template renders: 01:25 UTC is 09:25 in Shanghai.
    let slot = Utc.with_ymd_and_hms(2026, 11, 30, 1, 25, 0).unwrap();
    let sent = outcome(fire(&env, "standup-group", slot).await);
    assert_eq!(sent.finish.status, Status::Sent, "{sent:?}");
    let received = env.fake.robot_messages();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].key, KEY, "posted to the robot's own webhook");
    let expected = r#"{"msgtype":"text","text":{"content":"站会五分钟后开始 2026-11-30 09:25","mentioned_list":["wangqing","@all"],"mentioned_mobile_list":["13800001111"]}}"#;
    assert_eq!(received[0].raw, expected);
    assert!(
        env.fake.messages().is_empty(),
        "nothing went to message/send"
    );
    assert_eq!(env.fake.gettoken_calls(), 0, "a robot needs no token");

    let row = env.column(
        "SELECT app || '|' || agent_id || '|' || coalesce(robot, 'NULL') || '|' || msgtype || '|' || status || '|' || attempts || '|' || coalesce(msgid, 'NULL') FROM sends",
    );
    assert_eq!(row, ["|0|oncall-group|text|sent|1|NULL"]);
    assert_eq!(
        env.column("SELECT payload FROM sends"),
        [expected],
        "the row keeps the body as posted"
    );

    // The history shows the destination by name, in the table and in the JSON.
    let stdout =
        |output: std::process::Output| String::from_utf8_lossy(&output.stdout).into_owned();
    let table = stdout(env.cli_ok(&["history"]).await);
    let line = table
        .lines()
        .find(|l| l.contains("standup-group"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("DESTINATION"))
            && line.contains("robot oncall-group"),
        "{table}"
    );
    let json = stdout(env.cli_ok(&["history", "--json"]).await);
    let first: serde_json::Value =
        serde_json::from_str(json.lines().next().unwrap_or_default()).expect("json line");
    assert_eq!(first["robot"], "oncall-group", "{json}");
    assert_eq!(first["app"], "", "{json}");
}

const GROUP_NOTICES: &str = r#"  - name: oncall-group-notice
    cron: "5 9 * * 1"
    robot: oncall-group
    markdown:
      content: "**本周值班** {{ slot:%Y-%m-%d }}\n> 主值班：<font color=\"warning\">张三</font>"
  - name: talk-group
    cron: "5 14 * * Fri"
    robot: oncall-group
    news:
      articles:
        - title: "本周技术分享 {{ slot:%m-%d }}"
          description: 16:00 三楼
          url: https://example.com/talks
          picurl: https://example.com/poster.png
        - title: 往期回顾
          url: https://example.com/archive
"#;

#[tokio::test]
async fn robot_markdown_and_news_arrive_as_exactly_this_json() {
    let env = robot_env(GROUP_NOTICES).await;
    let slot = Utc.with_ymd_and_hms(2026, 11, 30, 1, 5, 0).unwrap();
    for name in ["oncall-group-notice", "talk-group"] {
        let sent = outcome(fire(&env, name, slot).await);
        assert_eq!(sent.finish.status, Status::Sent, "{name}: {sent:?}");
    }
    let raw: Vec<String> = env
        .fake
        .robot_messages()
        .iter()
        .map(|r| r.raw.clone())
        .collect();
    assert_eq!(
        raw,
        [
            r#"{"msgtype":"markdown","markdown":{"content":"**本周值班** 2026-11-30\n> 主值班：<font color=\"warning\">张三</font>"}}"#,
            r#"{"msgtype":"news","news":{"articles":[{"title":"本周技术分享 11-30","description":"16:00 三楼","url":"https://example.com/talks","picurl":"https://example.com/poster.png"},{"title":"往期回顾","url":"https://example.com/archive"}]}}"#,
        ]
    );
    assert_eq!(
        env.column("SELECT msgtype || '|' || robot FROM sends ORDER BY id"),
        ["markdown|oncall-group", "news|oncall-group"]
    );
    assert_eq!(env.column("SELECT payload FROM sends ORDER BY id"), raw);
}

#[tokio::test]
async fn a_robot_takes_markdown_up_to_4096_bytes_an_app_2048() {
    let markdown = |target: &str| {
        format!(
            "  - {{ name: notice, cron: '5 9 * * 1', {target}markdown: {{ content: '{}' }} }}\n",
            "值".repeat(1000)
        )
    };
    let env = robot_env(&markdown("robot: oncall-group, ")).await;
    env.cli_ok(&["check", "--dry-run"]).await;
    write_robot_config(&env, &markdown("app: ops, to: { users: [u] }, "));
    let refused = env.cli(&["check", "--dry-run"]).await;
    assert!(
        !refused.status.success() && text(&refused).contains("is 3000 bytes"),
        "{}",
        text(&refused)
    );
}

#[tokio::test]
async fn an_app_row_keeps_robot_null_and_shows_its_app_as_destination() {
    let env = robot_env(
        r#"  - name: standup
    cron: "30 9 * * 1-5"
    app: ops
    to: { users: [ZhangSan] }
    text: { content: "站会十分钟后开始" }
"#,
    )
    .await;
    let sent = outcome(fire(&env, "standup", Utc::now().trunc_subsecs(0)).await);
    assert_eq!(sent.finish.status, Status::Sent, "{sent:?}");
    assert_eq!(
        env.column("SELECT app || '|' || coalesce(robot, 'NULL') FROM sends"),
        ["ops|NULL"]
    );
    assert!(env.fake.robot_calls() == 0 && env.fake.messages().len() == 1);
    let table = text(&env.cli_ok(&["history"]).await);
    assert!(table.contains("app ops"), "{table}");
}

#[tokio::test]
async fn a_robot_send_whose_answer_is_lost_is_interrupted_and_never_resent() {
    let env = robot_env(STANDUP_GROUP).await;
    // The request reaches WeCom, the connection drops before the answer: it may have been posted.
    env.fake.script_robot(Reply::Drop);
    let sent = outcome(fire(&env, "standup-group", Utc::now().trunc_subsecs(0)).await);
    assert_eq!(sent.finish.status, Status::Interrupted, "{sent:?}");
    let errmsg = sent.finish.errmsg.clone().unwrap_or_default();
    assert!(
        errmsg.contains("no duplicate check") && errmsg.contains("may or may not have arrived"),
        "{errmsg}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.fake.robot_calls(), 1, "not resent");
    assert_eq!(
        env.column("SELECT status || '|' || attempts FROM sends"),
        ["interrupted|1"]
    );
}

#[tokio::test]
async fn a_robot_answer_that_does_not_prove_refusal_is_never_retried() {
    // A 5xx, 429 or 408 may come from something between that passed the request on, and an
    // unreadable answer may follow a post: each may have been posted, so none is retried.
    let answers = [
        Reply::Http(502, "<html>Bad Gateway</html>".to_string()),
        Reply::Http(503, "busy".to_string()),
        Reply::Http(429, "slow down".to_string()),
        Reply::Http(408, "timeout".to_string()),
        Reply::Raw("<html>not json</html>".to_string()),
    ];
    for answer in answers {
        let case = format!("{answer:?}");
        let env = robot_env(STANDUP_GROUP).await;
        env.fake.script_robot(answer);
        let sent = outcome(fire(&env, "standup-group", Utc::now().trunc_subsecs(0)).await);
        assert_eq!(sent.finish.status, Status::Interrupted, "{case}: {sent:?}");
        assert_eq!(sent.finish.attempts, 1, "{case}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(env.fake.robot_calls(), 1, "{case}: not resent");
    }
}

#[tokio::test]
async fn a_robot_slot_whose_claim_the_database_refuses_is_not_sent_and_recorded_missed() {
    // An app's send goes ahead on a claim kept outside the database (WeCom's duplicate check
    // absorbs a second sender); a robot's cannot: another daemon could post the slot too.
    let env = robot_env(
        "  - { name: tick-group, cron: '* * * * * *', robot: oncall-group, text: { content: 'tick {{ slot:%H:%M:%S }}' } }\n",
    )
    .await;
    let daemon = env.start_in_process(fast_policy(), Duration::from_millis(200));
    eventually(WAIT, "a first robot send", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= 1
    })
    .await;
    daemon.refuse_writes(true).await;
    let posted = env.fake.robot_calls();
    let rows = env.count("SELECT count(*) FROM sends");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // A slot already claimed before the switch may still finish; nothing after it is posted.
    assert!(
        env.fake.robot_calls() <= posted + 1,
        "no robot send without a claim in the database"
    );
    let during = env.fake.robot_calls();
    daemon.refuse_writes(false).await;
    eventually(WAIT, "the slots not sent recorded as missed", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'missed' AND errmsg LIKE '%no duplicate check%'") >= 2
    })
    .await;
    daemon.stop().await;
    assert!(env.count("SELECT count(*) FROM sends") > rows);
    assert_eq!(
        env.count("SELECT count(*) FROM sends WHERE status = 'sent'") as usize,
        env.fake.robot_messages().len(),
        "every post has its sent row, and only those ({during} posted during the outage)"
    );
    env.assert_contiguous("tick-group", 1);
}

#[tokio::test]
async fn answers_that_prove_a_robot_message_was_not_taken_are_retried() {
    // -1 (busy) and 45009 (the robot's minute is full) mean WeCom did not take the message.
    for refusal in [-1, 45009] {
        let env = robot_env(STANDUP_GROUP).await;
        env.fake.script_robot(Reply::Errcode(refusal));
        let sent = outcome(fire(&env, "standup-group", Utc::now().trunc_subsecs(0)).await);
        assert_eq!(sent.finish.status, Status::Sent, "{refusal}: {sent:?}");
        assert_eq!(sent.finish.attempts, 2, "{refusal}");
        assert_eq!(env.fake.robot_messages().len(), 1, "{refusal}: posted once");
    }
    // A refused connection never reached WeCom: retried until the budget is spent, then failed.
    let env = robot_env(STANDUP_GROUP).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let config = std::fs::read_to_string(env.config_path()).expect("config");
    env.write_config(&config.replace(
        &format!("api_base: {}\nschedules", env.fake.base_url()),
        &format!("api_base: http://127.0.0.1:{port}\nschedules"),
    ));
    let mut policy = fast_policy();
    policy.max_attempts = 3;
    let config = env.load();
    let schedule = config.schedule("standup-group").expect("schedule").clone();
    let channel = Channel::for_schedule(&schedule, &config.apps, &config.robots).expect("channel");
    let fired = env
        .dispatcher(policy)
        .fire(
            &schedule,
            &channel,
            Utc::now().trunc_subsecs(0),
            Trigger::Manual,
        )
        .await
        .expect("recorded");
    let failed = outcome(fired);
    assert_eq!(failed.finish.status, Status::Failed, "{failed:?}");
    assert_eq!(failed.finish.attempts, 3, "{failed:?}");
}

#[tokio::test]
async fn twenty_two_robot_schedules_on_one_slot_are_all_delivered_none_refused() {
    let env = Env::new().await;
    env.fake.add_robot(KEY);
    std::fs::write(env.path("robot.key"), KEY).expect("key file");
    // Far enough ahead for a slow start to arm the timers first.
    let at = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(8);
    let cron = cron_at(at);
    let schedules: String = (0..22)
        .map(|i| {
            format!(
                "  - {{ name: g{i:02}, cron: '{cron}', robot: oncall-group, text: {{ content: 'g{i:02} {{{{ slot:%H:%M:%S }}}}' }} }}\n"
            )
        })
        .collect();
    write_robot_config(&env, &schedules);
    let mut daemon = env.spawn_daemon(&[]);
    // 20 go out at the slot, the other 2 once the robot's minute has passed.
    let received = env
        .fake
        .wait_for_robot_messages(22, Duration::from_secs(100))
        .await;
    assert_eq!(received.len(), 22, "{}", daemon.logs());
    assert_eq!(
        env.fake.robot_refusals_45009(),
        0,
        "the daemon spread the burst instead of letting WeCom refuse it"
    );
    let mut names: Vec<String> = received
        .iter()
        .map(|r| r.json["text"]["content"].as_str().unwrap_or_default()[..3].to_string())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 22, "each schedule once: {names:?}");
    let first = received.iter().map(|r| r.at).min().expect("first");
    let last = received.iter().map(|r| r.at).max().expect("last");
    assert!(
        last.duration_since(first).unwrap_or_default() >= Duration::from_secs(60),
        "the last two waited for the robot's next minute"
    );
    daemon
        .eventually(WAIT, || {
            let sent = env.count("SELECT count(*) FROM sends WHERE status = 'sent'");
            (sent == 22)
                .then_some(())
                .ok_or(format!("{sent} rows sent"))
        })
        .await;
    assert!(
        daemon
            .logs()
            .contains("held back to stay within the robot's limit")
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_robot_send_in_flight_when_the_daemon_is_killed_is_interrupted_and_not_resent() {
    let env = Env::new().await;
    env.fake.add_robot(KEY);
    std::fs::write(env.path("robot.key"), KEY).expect("key file");
    let at = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(6);
    write_robot_config(
        &env,
        &format!(
            "  - {{ name: handover, cron: '{}', robot: oncall-group, catch_up: 10m, text: {{ content: '交接 {{{{ slot:%H:%M:%S }}}}' }} }}\n",
            cron_at(at)
        ),
    );
    let hold = env.fake.hold_sends();
    let mut daemon = env.spawn_daemon(&[]);
    eventually(WAIT, "the robot send held by WeCom", || {
        env.fake.robot_sends_waiting() >= 1
    })
    .await;
    daemon.signal(SIGKILL);
    daemon.wait_exit(WAIT).await;
    // It arrived: WeCom posts it into the group once the hold lets it go.
    drop(hold);
    env.fake
        .wait_for_robot_messages(1, Duration::from_secs(5))
        .await;
    let mut restarted = env.spawn_daemon(&[]);
    restarted
        .eventually(WAIT, || {
            let rows = env.column("SELECT status FROM sends");
            (rows == ["interrupted"])
                .then_some(())
                .ok_or(format!("rows: {rows:?}"))
        })
        .await;
    let errmsg = env.column("SELECT errmsg FROM sends");
    assert!(
        errmsg.len() == 1 && errmsg[0].contains("no duplicate check"),
        "{errmsg:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.fake.robot_calls(), 1, "nothing was resent");
    assert_eq!(env.fake.robot_messages().len(), 1);
    assert_eq!(
        env.count("SELECT count(*) FROM sends"),
        1,
        "one row for the slot, neither missed nor caught up"
    );
    restarted.stop().await;
}

#[tokio::test]
async fn the_robot_key_is_never_shown_in_logs_output_or_the_database() {
    let env = robot_env(STANDUP_GROUP).await;
    let trace = |args: &'static [&'static str]| {
        let mut command = env.command(args);
        command.env("RUST_LOG", "trace");
        command
    };
    let sent = trace(&["send", "standup-group"])
        .output()
        .await
        .expect("run");
    assert!(sent.status.success(), "{}", text(&sent));
    // Gateway pages that echo the request line: the key whole, then cut short (an exact-match
    // mask cannot see a part of it).
    env.fake.script_robot(Reply::Http(
        502,
        format!("<html>502 Bad Gateway: POST /cgi-bin/webhook/send?key={KEY}</html>"),
    ));
    let failed = trace(&["send", "standup-group"])
        .output()
        .await
        .expect("run");
    env.fake.script_robot(Reply::Http(
        502,
        format!("<html>502: /cgi-bin/webhook/send?key={}</html>", &KEY[..24]),
    ));
    let cut = trace(&["send", "standup-group"])
        .output()
        .await
        .expect("run");
    assert!(
        !failed.status.success() && !cut.status.success(),
        "{}",
        text(&failed)
    );
    assert_eq!(env.fake.robot_calls(), 3, "each failed once, not resent");
    assert!(env.fake.robot_requests().iter().all(|r| r.key == KEY));
    let mut shown = vec![
        ("send", text(&sent)),
        ("failed send", text(&failed)),
        ("failed send, key cut short", text(&cut)),
        (
            "send --dry-run",
            text(&env.cli_ok(&["send", "standup-group", "--dry-run"]).await),
        ),
        ("check", text(&env.cli_ok(&["check"]).await)),
        (
            "check json",
            text(&env.cli_ok(&["check", "--format", "json"]).await),
        ),
        ("history", text(&env.cli_ok(&["history"]).await)),
        (
            "history --json",
            text(&env.cli_ok(&["history", "--json"]).await),
        ),
    ];
    assert!(shown[0].1.contains("TRACE"), "trace logging was on");
    let dump = std::process::Command::new("sqlite3")
        .arg(env.db_path())
        .arg(".dump")
        .output()
        .expect("sqlite3");
    assert!(dump.status.success());
    shown.push((
        "sqlite3 .dump",
        String::from_utf8_lossy(&dump.stdout).into_owned(),
    ));
    for (what, haystack) in &shown {
        assert!(
            !haystack.contains(KEY),
            "the key leaked into {what}:\n{haystack}"
        );
        assert!(
            !haystack.contains("do-not-leak") && !haystack.contains(&KEY[..16]),
            "part of the key leaked into {what}"
        );
    }
    // `check` names the destination, by the robot's name.
    assert!(shown[4].1.contains("robot oncall-group"), "{}", shown[4].1);
    let statuses = env.column("SELECT status FROM sends WHERE trigger = 'manual' ORDER BY id");
    assert_eq!(
        statuses,
        ["sent", "interrupted", "interrupted", "dry_run"],
        "a 502 may come after the message was posted: not resent"
    );
}

#[tokio::test]
async fn check_lists_a_robot_schedule_with_its_robot_mentions_and_message_type() {
    let env = robot_env(STANDUP_GROUP).await;
    let out = text(&env.cli_ok(&["check", "--dry-run"]).await);
    assert!(
        out.contains("robot oncall-group (its group chat, mentions wangqing, @all, 13800001111), at most once, text"),
        "{out}"
    );
    let output = env
        .cli_ok(&["check", "--dry-run", "--format", "json"])
        .await;
    let json = String::from_utf8_lossy(&output.stdout);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("json");
    let schedule = &parsed["schedules"][0];
    assert_eq!(schedule["destination"], "robot oncall-group", "{json}");
    assert_eq!(schedule["robot"], "oncall-group", "{json}");
    assert_eq!(schedule["msgtype"], "text", "{json}");
}

#[tokio::test]
async fn recall_of_a_robot_row_is_refused_saying_why() {
    let env = robot_env(STANDUP_GROUP).await;
    outcome(fire(&env, "standup-group", Utc::now().trunc_subsecs(0)).await);
    let out = env.cli(&["recall", "1"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cannot recall a robot's message"),
        "{}",
        text(&out)
    );
}
