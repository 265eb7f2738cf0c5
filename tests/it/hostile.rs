//! Hostile or careless files: a secret that is `/dev/zero` or a named pipe, a config nested a
//! hundred thousand deep, a byte order mark. Every command is run with a deadline, so that a
//! regression fails the test instead of hanging CI.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::support::{Env, SIGHUP, WAIT, eventually, every_two_seconds, make_fifo, text};

/// Far longer than any of these commands needs (milliseconds), far shorter than a hang.
const DEADLINE: Duration = Duration::from_secs(8);
/// The exit code of a missing or invalid config.
const EXIT_CONFIG: i32 = 3;

/// Runs the binary in `env` with `args`, failing the test if it has not finished by [`DEADLINE`]
/// (the child is killed then).
async fn bounded(env: &Env, args: &[&str], vars: &[(&str, &Path)]) -> Output {
    let mut command = env.command(args);
    command.env("RUST_LOG", "warn");
    for (name, value) in vars {
        command.env(name, value);
    }
    let started = Instant::now();
    match tokio::time::timeout(DEADLINE, command.output()).await {
        Ok(output) => output.expect("run wecom-notify"),
        Err(_) => panic!(
            "{args:?} had not finished after {:?}: it hangs or reads without bound",
            started.elapsed()
        ),
    }
}

/// A config whose one app reads its secret with `secret` (e.g. `secret_file: /dev/zero`).
fn write_config_with_secret(env: &Env, secret: &str) {
    env.write_config(&format!(
        "timezone: Asia/Shanghai\napps:\n  ops:\n    corp_id: ww1\n    agent_id: 1000002\n    {secret}\n    api_base: {}\nschedules:\n  - {{ name: standup, cron: '30 9 * * 1-5', to: {{ users: [u] }}, text: {{ content: hi }} }}\n",
        env.fake.base_url()
    ));
}

#[track_caller]
fn assert_refused(output: &Output, needles: &[&str]) {
    assert_eq!(output.status.code(), Some(EXIT_CONFIG), "{}", text(output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "lacks {needle:?}\n{}",
            text(output)
        );
    }
}

#[tokio::test]
async fn a_secret_file_or_credential_that_is_dev_zero_is_refused_at_once() {
    let env = Env::new().await;
    write_config_with_secret(&env, "secret_file: /dev/zero");
    let output = bounded(&env, &["check"], &[]).await;
    assert_refused(
        &output,
        &[
            "app \"ops\", field secret_file: /dev/zero is refused: it is a character device, not a regular file",
        ],
    );

    // A credential is a file under $CREDENTIALS_DIRECTORY: the same bounds apply.
    let credentials = env.path("credentials");
    std::fs::create_dir(&credentials).unwrap();
    std::os::unix::fs::symlink("/dev/urandom", credentials.join("ops")).unwrap();
    write_config_with_secret(&env, "secret_credential: ops");
    let output = bounded(&env, &["check"], &[("CREDENTIALS_DIRECTORY", &credentials)]).await;
    assert_refused(
        &output,
        &[
            "field secret_credential: credential ops in $CREDENTIALS_DIRECTORY is refused: it is a character device",
        ],
    );
}

#[tokio::test]
async fn a_secret_file_longer_than_any_secret_is_refused() {
    let env = Env::new().await;
    std::fs::write(env.path("big.secret"), "x".repeat(10_000)).unwrap();
    write_config_with_secret(&env, "secret_file: big.secret");
    let output = bounded(&env, &["check"], &[]).await;
    assert_refused(
        &output,
        &["field secret_file:", "is longer than 4096 bytes"],
    );
}

#[tokio::test]
async fn a_secret_file_that_is_a_named_pipe_is_refused_without_waiting_for_a_writer() {
    let env = Env::new().await;
    make_fifo(&env.path("ops.fifo"));
    write_config_with_secret(&env, "secret_file: ops.fifo");
    let output = bounded(&env, &["check"], &[]).await;
    assert_refused(
        &output,
        &[
            "field secret_file:",
            "it is a named pipe (FIFO), not a regular file",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_secret_file_is_a_named_pipe_fails_and_the_next_one_applies() {
    let env = Env::new().await;
    env.write_schedules(&every_two_seconds("tick", "tick"));
    let mut daemon = env.spawn_daemon(&[]);
    eventually(WAIT, "the daemon's start", || {
        env.count("SELECT count(*) FROM events WHERE kind = 'started'") == 1
    })
    .await;

    std::fs::rename(env.path("ops.secret"), env.path("real.secret")).unwrap();
    make_fifo(&env.path("ops.secret"));
    env.write_schedules(&every_two_seconds("tock", "tock"));
    daemon.signal(SIGHUP);
    eventually(WAIT, "reload_failed naming the pipe", || {
        env.column("SELECT detail FROM events WHERE kind = 'reload_failed'")
            .iter()
            .any(|d| d.contains("named pipe"))
    })
    .await;

    std::fs::remove_file(env.path("ops.secret")).unwrap();
    std::fs::rename(env.path("real.secret"), env.path("ops.secret")).unwrap();
    env.write_schedules(&every_two_seconds("tack", "tack"));
    daemon.signal(SIGHUP);
    eventually(WAIT, "the fixed config applied", || {
        env.count("SELECT count(*) FROM events WHERE kind = 'reloaded'") == 1
    })
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn check_dry_run_and_history_never_open_a_secret() {
    let env = Env::new().await;
    make_fifo(&env.path("ops.fifo"));
    for secret in [
        "secret_file: ops.fifo",
        "secret_file: /dev/zero",
        "secret_file: no-such.secret",
        "secret_env: WECOM_NOTIFY_SURELY_UNSET_VARIABLE",
        "secret_credential: ops",
    ] {
        write_config_with_secret(&env, secret);
        for args in [&["check", "--dry-run"][..], &["history"][..]] {
            let output = bounded(&env, args, &[]).await;
            assert!(
                output.status.success(),
                "{secret}: {args:?}\n{}",
                text(&output)
            );
            let all = text(&output);
            assert!(
                !all.contains("secret_file")
                    && !all.contains("secret_env")
                    && !all.contains("secret_credential"),
                "{secret}: {args:?} looked at the secret\n{all}"
            );
        }
    }
}

#[tokio::test]
async fn deeply_nested_yaml_is_refused_before_parsing_naming_the_line() {
    let env = Env::new().await;
    let header = format!("timezone: Asia/Shanghai\n{}schedules:\n", env.apps_yaml());
    for (what, value) in [
        ("100,000 [", "[".repeat(100_000)),
        ("250 KB of {b:", "{b: ".repeat(62_500)),
    ] {
        env.write_config(&format!(
            "{header}  - name: deep\n    cron: '30 9 * * 1-5'\n    to: {{ users: [u] }}\n    text: {{ content: {value} }}\n"
        ));
        let started = Instant::now();
        let output = bounded(&env, &["check", "--dry-run"], &[]).await;
        assert_refused(
            &output,
            &["yaml: line 12: nesting is deeper than 64 levels"],
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{what}: refusing took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_config_starting_with_a_byte_order_mark_is_read() {
    let env = Env::new().await;
    env.write_schedules(&every_two_seconds("tick", "tick"));
    let yaml = std::fs::read_to_string(env.config_path()).unwrap();
    env.write_config(&format!("\u{feff}{yaml}"));
    let output = bounded(&env, &["check"], &[]).await;
    assert!(output.status.success(), "{}", text(&output));
}
