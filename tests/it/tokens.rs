//! The access-token cache: one gettoken per token lifetime per app, across tasks, processes and
//! restarts; refresh on rejection; never shared between apps.

use std::time::Duration;

use chrono::{SubsecRound, Utc};
use wecom_notify::dispatch::Fired;
use wecom_notify::store::history::{Status, Trigger};

use crate::support::*;

/// Fires every schedule of `config` for the same slot, all at once; the outcomes in order.
async fn fire_all_at_once(
    config: &wecom_notify::config::Config,
    dispatcher: &std::sync::Arc<wecom_notify::dispatch::Dispatcher>,
) -> Vec<Fired> {
    let app = wecom_notify::channel::Channel::App(config.app("ops").expect("app").clone());
    let now = Utc::now().trunc_subsecs(0);
    let sends: Vec<_> = config
        .schedules
        .iter()
        .cloned()
        .map(|schedule| {
            let (dispatcher, app) = (dispatcher.clone(), app.clone());
            tokio::spawn(async move { dispatcher.fire(&schedule, &app, now, Trigger::Cron).await })
        })
        .collect();
    let mut fired = Vec::new();
    for send in sends {
        fired.push(send.await.expect("join").expect("recorded"));
    }
    fired
}

fn schedules(n: usize) -> String {
    (0..n)
        .map(|i| format!("  - {{ name: s{i}, cron: '0 9 * * *', to: {{ users: [u{i}] }}, text: {{ content: 'message {i}' }} }}\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_sends_with_an_empty_cache_fetch_one_token() {
    let env = Env::new().await;
    env.write_schedules(&schedules(50));
    env.fake.set_gettoken_delay(Duration::from_millis(300));
    let config = env.load();
    let dispatcher = env.dispatcher(fast_policy());
    for fired in fire_all_at_once(&config, &dispatcher).await {
        assert!(
            matches!(fired, Fired::Done(ref o) if o.finish.status == Status::Sent),
            "{fired:?}"
        );
    }
    assert_eq!(env.fake.gettoken_calls(), 1);
    assert_eq!(env.fake.messages().len(), 50);
}

on_both_backends! {
    async fn two_processes_started_together_fetch_one_token(env: Env) {
        env.write_schedules(&schedules(2));
        // A slow gettoken widens the race: both processes find the cache empty.
        env.fake.set_gettoken_delay(Duration::from_millis(500));
        let first = env.command(&["send", "s0"]).output();
        let second = env.command(&["send", "s1"]).output();
        let (first, second) = tokio::join!(first, second);
        let (first, second) = (first.expect("run"), second.expect("run"));
        assert!(
            first.status.success() && second.status.success(),
            "{}\n{}",
            text(&first),
            text(&second)
        );
        assert_eq!(
            env.fake.gettoken_calls(),
            1,
            "{}\n{}",
            text(&first),
            text(&second)
        );
        assert_eq!(env.fake.messages().len(), 2);
    }
}

#[tokio::test]
async fn a_later_send_reuses_the_stored_token() {
    let env = Env::new().await;
    env.write_schedules(&schedules(2));
    env.cli_ok(&["send", "s0"]).await;
    assert_eq!(env.fake.gettoken_calls(), 1);
    env.cli_ok(&["send", "s1"]).await;
    assert_eq!(
        env.fake.gettoken_calls(),
        1,
        "the second process used the stored token"
    );
    let tokens: Vec<String> = env
        .fake
        .messages()
        .iter()
        .map(|m| m.access_token.clone())
        .collect();
    assert_eq!(tokens[0], tokens[1]);
    assert_eq!(env.count("SELECT count(*) FROM access_tokens"), 1);
}

#[tokio::test]
async fn a_rejected_token_is_replaced_once_and_the_send_retried() {
    for (case, reject) in [("40014 invalid", true), ("42001 expired", false)] {
        let env = Env::new().await;
        env.write_schedules(&schedules(2));
        assert!(env.cli(&["send", "s0"]).await.status.success());
        if reject {
            env.fake.invalidate_all_tokens();
        } else {
            env.fake.expire_all_tokens();
        }
        let output = env.cli(&["send", "s1"]).await;
        assert!(output.status.success(), "{case}: {}", text(&output));
        assert_eq!(env.fake.gettoken_calls(), 2, "{case}: one refresh");
        let requests = env.fake.all_requests();
        let (failed, retried) = (&requests[1], &requests[2]);
        assert!(
            matches!(failed.outcome, Outcome::Rejected { .. }),
            "{case}: {failed:?}"
        );
        assert!(
            matches!(retried.outcome, Outcome::Delivered { .. }),
            "{case}: {retried:?}"
        );
        assert_ne!(
            failed.access_token, retried.access_token,
            "{case}: the retry carries the new token"
        );
        assert_eq!(
            env.column("SELECT attempts FROM sends WHERE schedule = 's1'"),
            ["2"],
            "{case}"
        );
        let stored = env.column("SELECT access_token FROM access_tokens");
        assert_eq!(
            stored,
            std::slice::from_ref(&retried.access_token),
            "{case}: the new token replaced the old one"
        );
    }
}

#[tokio::test]
async fn a_token_rejected_twice_fails_instead_of_looping() {
    let env = Env::new().await;
    env.write_schedules(&schedules(1));
    env.fake.script_send(Reply::Errcode(40014));
    env.fake.script_send(Reply::Errcode(40014));
    let output = env.cli(&["send", "s0"]).await;
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert_eq!(env.fake.gettoken_calls(), 2, "one refresh only");
    assert_eq!(env.fake.send_calls(), 2);
    assert_eq!(env.column("SELECT errcode FROM sends"), ["40014"]);
}

#[tokio::test]
async fn two_apps_never_share_a_token() {
    let env = Env::new().await;
    env.fake
        .add_app("wwothercorp00002", "other-secret", 1000009);
    std::fs::write(env.path("hr.secret"), "other-secret").expect("write");
    env.write_config(&format!(
        "timezone: UTC\n{}  hr: {{ corp_id: wwothercorp00002, agent_id: 1000009, secret_file: hr.secret, api_base: {} }}\nschedules:\n\
         - {{ name: a, app: ops, cron: '0 9 * * *', to: {{ users: [u] }}, text: {{ content: a }} }}\n\
         - {{ name: b, app: hr, cron: '0 9 * * *', to: {{ users: [u] }}, text: {{ content: b }} }}\n",
        env.apps_yaml(),
        env.fake.base_url()
    ));
    for name in ["a", "b", "a", "b"] {
        env.cli_ok(&["send", name]).await;
    }
    assert_eq!(env.fake.gettoken_calls_for(CORP, SECRET), 1);
    assert_eq!(
        env.fake
            .gettoken_calls_for("wwothercorp00002", "other-secret"),
        1
    );
    let requests = env.fake.all_requests();
    assert_eq!(requests.len(), 4);
    assert_ne!(requests[0].access_token, requests[1].access_token);
    assert_eq!(
        (requests[0].agent_id, requests[1].agent_id),
        (AGENT, 1000009),
        "each app's token is its own"
    );
    assert_eq!(env.count("SELECT count(*) FROM access_tokens"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_gettoken_is_not_hammered_by_concurrent_sends() {
    let env = Env::new().await;
    env.write_schedules(&schedules(20));
    for _ in 0..100 {
        env.fake.script_gettoken(Reply::Errcode(-1));
    }
    let config = env.load();
    let mut policy = fast_policy();
    policy.max_attempts = 2;
    let dispatcher = env.dispatcher(policy);
    for fired in fire_all_at_once(&config, &dispatcher).await {
        assert!(
            matches!(fired, Fired::Done(ref o) if o.finish.status == Status::Failed && o.finish.errcode == Some(-1)),
            "{fired:?}"
        );
    }
    // 20 sends × 2 attempts would be 40 calls; waiting callers share the failure instead.
    assert!(
        env.fake.gettoken_calls() <= 3,
        "{} gettoken calls",
        env.fake.gettoken_calls()
    );
}
