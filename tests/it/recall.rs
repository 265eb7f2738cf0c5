//! `recall`: a delivered message is withdrawn through the fake's `message/recall` and the row
//! records when; everything that cannot be recalled is refused before WeCom is called.

use chrono::{Duration, Utc};

use crate::support::*;

const STANDUP: &str = r#"  - name: standup
    cron: "30 9 * * 1-5"
    to: { users: [ZhangSan, LiSi] }
    text: { content: "站会十分钟后开始" }
"#;

/// Sends `standup` for real and returns WeCom's msgid (history id 1).
async fn send_one(env: &Env) -> String {
    env.write_schedules(STANDUP);
    env.cli_ok(&["send", "standup"]).await;
    match &env.fake.messages()[0].outcome {
        Outcome::Delivered { msgid } => msgid.clone(),
        other => panic!("not delivered: {other:?}"),
    }
}

fn recalled_at(env: &Env, id: i64) -> String {
    env.column(&format!("SELECT recalled_at FROM sends WHERE id = {id}"))
        .pop()
        .expect("row")
}

/// Runs `recall ID`, expects exit 1, and returns stderr.
async fn refused(env: &Env, id: &str) -> String {
    let output = env.cli(&["recall", id]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn a_sent_message_is_recalled_once_and_the_row_says_when() {
    let env = Env::new().await;
    let msgid = send_one(&env).await;

    let output = env.cli_ok(&["recall", "1"]).await;
    assert_eq!(env.fake.recall_calls(), std::slice::from_ref(&msgid));
    assert_eq!(
        env.fake.gettoken_calls(),
        1,
        "the token cached by `send` was reused"
    );
    let at = recalled_at(&env, 1);
    assert!(at.len() == 20 && at.ends_with('Z'), "{at}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("recalled at {at}")) && stdout.contains(&msgid),
        "{stdout}"
    );

    let history = env.cli(&["history", "--json"]).await;
    let row: serde_json::Value = serde_json::from_slice(&history.stdout).expect("one JSON line");
    assert_eq!(row["recalled_at"], at.as_str());
    let table = env.cli(&["history"]).await;
    assert!(
        String::from_utf8_lossy(&table.stdout).contains("sent (recalled)"),
        "{}",
        text(&table)
    );

    let stderr = refused(&env, "1").await;
    assert!(
        stderr.contains(&format!("already recalled at {at}")),
        "{stderr}"
    );
    assert_eq!(
        env.fake.recall_calls().len(),
        1,
        "WeCom was not asked again"
    );
}

#[tokio::test]
async fn a_dry_run_row_has_no_msgid_and_is_refused_without_calling_wecom() {
    let env = Env::new().await;
    env.write_schedules(STANDUP);
    env.cli_ok(&["send", "standup", "--dry-run"]).await;

    let stderr = refused(&env, "1").await;
    assert!(
        stderr.contains("no msgid") && stderr.contains("dry run"),
        "{stderr}"
    );
    assert_eq!(env.fake.gettoken_calls() + env.fake.recall_calls().len(), 0);
    assert_eq!(recalled_at(&env, 1), "NULL");
}

#[tokio::test]
async fn a_message_older_than_24_hours_is_refused_without_calling_wecom() {
    let env = Env::new().await;
    send_one(&env).await;
    let old = wecom_notify::time::to_db(Utc::now() - Duration::hours(25));
    env.db()
        .execute("UPDATE sends SET finished_at = ?1 WHERE id = 1", [&old])
        .expect("age the row");

    let stderr = refused(&env, "1").await;
    assert!(
        stderr.contains(&old) && stderr.contains("within 24 h"),
        "{stderr}"
    );
    // Without finished_at the age is measured from created_at.
    env.db()
        .execute(
            "UPDATE sends SET finished_at = NULL, created_at = ?1 WHERE id = 1",
            [&old],
        )
        .expect("age the row");
    let stderr = refused(&env, "1").await;
    assert!(stderr.contains("within 24 h"), "{stderr}");

    assert!(env.fake.recall_calls().is_empty());
    assert_eq!(env.fake.gettoken_calls(), 1, "only the send's");
    assert_eq!(recalled_at(&env, 1), "NULL");
}

#[tokio::test]
async fn an_unknown_id_is_refused() {
    let env = Env::new().await;
    send_one(&env).await;
    let stderr = refused(&env, "42").await;
    assert!(stderr.contains("no history id 42"), "{stderr}");
    let output = env.cli(&["recall", "latest"]).await;
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(env.fake.recall_calls().is_empty());
}

#[tokio::test]
async fn a_row_whose_app_left_the_config_is_refused() {
    let env = Env::new().await;
    send_one(&env).await;
    env.db()
        .execute("UPDATE sends SET app = 'hr' WHERE id = 1", [])
        .expect("update");
    let stderr = refused(&env, "1").await;
    assert!(
        stderr.contains("app \"hr\"") && stderr.contains("add the app back"),
        "{stderr}"
    );
    assert!(env.fake.recall_calls().is_empty());
}

#[tokio::test]
async fn a_rejected_token_is_replaced_once() {
    let env = Env::new().await;
    let msgid = send_one(&env).await;
    env.fake.invalidate_all_tokens();
    env.cli_ok(&["recall", "1"]).await;
    assert_eq!(env.fake.gettoken_calls(), 2);
    assert_eq!(env.fake.recall_calls(), [msgid]);
}

#[tokio::test]
async fn a_wecom_error_is_explained_and_leaves_the_row_unrecalled() {
    let env = Env::new().await;
    send_one(&env).await;
    env.db()
        .execute("UPDATE sends SET msgid = 'no-such-msgid' WHERE id = 1", [])
        .expect("update");
    let stderr = refused(&env, "1").await;
    assert!(
        stderr.contains("errcode 40003") && stderr.contains("msgid"),
        "{stderr}"
    );
    assert_eq!(recalled_at(&env, 1), "NULL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_concurrent_recalls_make_one_call_and_one_reports_success() {
    let env = Env::new().await;
    let msgid = send_one(&env).await;
    // Each recall stays at WeCom a while, so that the five processes overlap.
    env.fake
        .set_recall_delay(std::time::Duration::from_millis(500));
    let outputs = futures::future::join_all((0..5).map(|_| env.cli(&["recall", "1"]))).await;

    assert_eq!(env.fake.recall_arrivals(), 1, "WeCom was asked once");
    assert_eq!(env.fake.recall_calls(), [msgid]);
    let (succeeded, others): (Vec<_>, Vec<_>) = outputs.iter().partition(|o| o.status.success());
    assert_eq!(succeeded.len(), 1, "one process recalled it: {outputs:#?}");
    for output in others {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let in_progress = output.status.code() == Some(4) && stderr.contains("in progress");
        let done = output.status.code() == Some(1) && stderr.contains("already recalled at");
        assert!(in_progress || done, "{}", text(output));
    }
    assert_ne!(recalled_at(&env, 1), "NULL");
}

#[tokio::test]
async fn a_recall_whose_call_fails_releases_its_claim_for_the_next_try() {
    let env = Env::new().await;
    let msgid = send_one(&env).await;
    env.fake
        .script_recall(Reply::Http(503, "<html>503</html>".into()));
    let stderr = refused(&env, "1").await;
    assert!(stderr.contains("was not recalled"), "{stderr}");
    env.fake.script_recall(Reply::Errcode(-1));
    let stderr = refused(&env, "1").await;
    assert!(stderr.contains("errcode -1"), "{stderr}");
    assert_eq!(recalled_at(&env, 1), "NULL");

    env.cli_ok(&["recall", "1"]).await;
    assert_eq!(env.fake.recall_arrivals(), 3);
    assert_eq!(env.fake.recall_calls(), [msgid]);
}

#[tokio::test]
async fn a_recall_in_progress_is_reported_and_one_left_by_a_crash_is_taken_over() {
    let env = Env::new().await;
    let msgid = send_one(&env).await;
    let claim = |at: chrono::DateTime<Utc>| {
        env.db()
            .execute(
                "UPDATE sends SET recall_started_at = ?1 WHERE id = 1",
                [wecom_notify::time::to_db(at)],
            )
            .expect("claim the recall");
    };
    claim(Utc::now());
    let output = env.cli(&["recall", "1"]).await;
    assert_eq!(output.status.code(), Some(4), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in progress"), "{stderr}");
    assert_eq!(env.fake.recall_arrivals(), 0);

    // A claim older than any recall can take was left by a process that died in it.
    claim(Utc::now() - Duration::minutes(10));
    env.cli_ok(&["recall", "1"]).await;
    assert_eq!(env.fake.recall_calls(), [msgid]);
}
