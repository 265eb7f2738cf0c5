//! `check`: every validation rule has a broken config in `tests/configs/invalid/` that must be
//! rejected (exit 3) with a message naming the schedule or app and the field; valid configs are
//! listed with their next fire times, warnings and rendered text.
//!
//! A corpus file is a complete config whose leading comment lines say what `check` must print on
//! stderr:
//! - `# expect: TEXT`: TEXT appears (every such line, at least one per file);
//! - `# absent: TEXT`: TEXT does not appear.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use tempfile::TempDir;

use crate::support::{Env, binary, text};

/// The exit code of `check` for a missing or invalid config.
const EXIT_CONFIG: i32 = 3;
/// The folder of broken configs.
const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/configs/invalid");
/// A secret variable that the corpus references and every run removes from the environment.
const UNSET_VAR: &str = "WECOM_NOTIFY_TEST_SURELY_UNSET";
/// The example config shipped with the crate.
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/schedules.example.yaml");
/// The corpus must not shrink silently (a deleted folder would otherwise pass).
const MIN_CORPUS_FILES: usize = 25;

/// The `apps:` part of configs that never reach WeCom: the inline secret only causes a warning.
const OFFLINE_HEADER: &str = "timezone: Asia/Shanghai
apps:
  ops:
    corp_id: ww0123456789abcdef
    agent_id: 1000002
    secret: x
    api_base: http://127.0.0.1:9
schedules:
";

// ---------------------------------------------------------------------------------------------
// Running `check`

/// Runs `wecom-notify --config CONFIG --db DIR/x.db check ARGS` with a controlled environment.
async fn run_check(config: &Path, db_dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(binary())
        .arg("--config")
        .arg(config)
        .arg("--db")
        .arg(db_dir.join("x.db"))
        .arg("check")
        .args(args)
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .env_remove(UNSET_VAR)
        .env_remove("WECOM_OPS_SECRET")
        .env_remove("WECOM_NOTIFY_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("STATE_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .await
        .expect("run wecom-notify check")
}

/// Writes `yaml` as DIR/NAME and checks it.
async fn check_yaml(dir: &TempDir, name: &str, yaml: &str, args: &[&str]) -> Output {
    let path = dir.path().join(name);
    std::fs::write(&path, yaml).expect("write config");
    run_check(&path, dir.path(), args).await
}

/// A config with the offline app and one schedule (`schedule` is a YAML list item).
fn offline_config(schedule: &str) -> String {
    format!("{OFFLINE_HEADER}{schedule}")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn assert_exit(output: &Output, code: i32) {
    assert_eq!(output.status.code(), Some(code), "{}", text(output));
}

#[track_caller]
fn assert_rejected_with(output: &Output, needles: &[&str]) {
    assert_exit(output, EXIT_CONFIG);
    let stderr = stderr(output);
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "stderr lacks {needle:?}\n{}",
            text(output)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The corpus

/// One file of the corpus and what its header comments demand.
#[derive(Debug)]
struct Case {
    name: String,
    path: PathBuf,
    expect: Vec<String>,
    absent: Vec<String>,
}

impl Case {
    fn load(path: PathBuf) -> Case {
        let source = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let mut case = Case {
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            path,
            expect: Vec::new(),
            absent: Vec::new(),
        };
        for line in source.lines().take_while(|l| l.starts_with('#')) {
            if let Some(text) = line.strip_prefix("# expect: ") {
                case.expect.push(text.to_string());
            } else if let Some(text) = line.strip_prefix("# absent: ") {
                case.absent.push(text.to_string());
            }
        }
        case
    }

    /// Runs `check` on the file; `Err` says everything that is wrong with the outcome.
    async fn verify(&self, db_dir: &Path) -> Result<(), String> {
        let output = run_check(&self.path, db_dir, &[]).await;
        let stderr = stderr(&output);
        let mut wrong = Vec::new();
        if self.expect.is_empty() {
            wrong.push("the file has no `# expect: ` line".to_string());
        }
        if output.status.code() != Some(EXIT_CONFIG) {
            wrong.push(format!("{} instead of exit {EXIT_CONFIG}", output.status));
        }
        for needle in &self.expect {
            if !stderr.contains(needle.as_str()) {
                wrong.push(format!("missing {needle:?}"));
            }
        }
        for needle in &self.absent {
            if stderr.contains(needle.as_str()) {
                wrong.push(format!("unexpected {needle:?}"));
            }
        }
        if wrong.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{}:\n  {}\n{}",
            self.name,
            wrong.join("\n  "),
            text(&output)
        ))
    }
}

/// Every `*.yaml` in the corpus folder, sorted by name.
fn corpus() -> Vec<Case> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(CORPUS)
        .unwrap_or_else(|e| panic!("read {CORPUS}: {e}"))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    paths.sort();
    paths.into_iter().map(Case::load).collect()
}

/// Verifies every case and returns the report of each one that failed.
async fn failures(cases: &[&Case]) -> Vec<String> {
    let db_dir = TempDir::new().expect("temp dir");
    let mut report = Vec::new();
    for case in cases {
        if let Err(failure) = case.verify(db_dir.path()).await {
            report.push(failure);
        }
    }
    report
}

#[tokio::test]
async fn every_invalid_config_in_the_corpus_is_rejected_with_its_message() {
    let cases = corpus();
    let rules: Vec<&Case> = cases.iter().collect();
    assert!(
        rules.len() >= MIN_CORPUS_FILES,
        "only {} corpus files in {CORPUS}; expected at least {MIN_CORPUS_FILES}",
        rules.len()
    );
    let report = failures(&rules).await;
    assert!(
        report.is_empty(),
        "{} of {} corpus files were not rejected as their `# expect:` lines say:\n\n{}",
        report.len(),
        rules.len(),
        report.join("\n\n")
    );
}

#[tokio::test]
async fn the_corpus_runner_fails_a_config_that_check_accepts() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("valid.yaml");
    let yaml = offline_config(
        "  - name: standup\n    cron: \"30 9 * * 1-5\"\n    to: {users: [ZhangSan]}\n    text: {content: 站会}\n",
    );
    std::fs::write(&path, format!("# expect: field cron:\n{yaml}")).unwrap();
    let failure = Case::load(path).verify(dir.path()).await.unwrap_err();
    assert!(
        failure.contains("exit status: 0 instead of exit 3"),
        "{failure}"
    );
    assert!(failure.contains("missing \"field cron:\""), "{failure}");
}

// ---------------------------------------------------------------------------------------------
// Rules whose configs are generated (they would be unwieldy as static files)

/// A schedule item sending `content` to `users`.
fn text_schedule(name: &str, users: &[String], content: &str) -> String {
    format!(
        "  - name: {name}\n    cron: \"30 9 * * 1-5\"\n    to:\n      users: [{}]\n    text:\n      content: \"{content}\"\n",
        users.join(", ")
    )
}

#[tokio::test]
async fn more_than_1000_users_are_rejected_and_1000_are_accepted() {
    let dir = TempDir::new().unwrap();
    let users = |n: usize| (1..=n).map(|i| format!("u{i:04}")).collect::<Vec<_>>();

    let at_limit = offline_config(&text_schedule("everyone", &users(1000), "全员通知"));
    let output = check_yaml(&dir, "1000.yaml", &at_limit, &[]).await;
    assert_exit(&output, 0);
    assert!(
        stdout(&output).contains("to 1000 users"),
        "{}",
        text(&output)
    );

    let over = offline_config(&text_schedule("everyone", &users(1001), "全员通知"));
    let output = check_yaml(&dir, "1001.yaml", &over, &[]).await;
    assert_rejected_with(
        &output,
        &[
            "schedule \"everyone\", field to.users:",
            "lists 1001 ids",
            "at most 1000",
        ],
    );
}

#[tokio::test]
async fn text_content_over_2048_bytes_once_rendered_is_rejected() {
    // "{{ date_cn }}" is 13 bytes as written and 17 once rendered ("2026年11月30日"), so the
    // second config is under the limit as written and over it only when rendered.
    let dir = TempDir::new().unwrap();
    let users = ["ZhangSan".to_string()];
    let content = |pad: usize| format!("{}{{{{ date_cn }}}}", "x".repeat(pad));

    let at_limit = offline_config(&text_schedule("long", &users, &content(2031)));
    let output = check_yaml(&dir, "2048.yaml", &at_limit, &[]).await;
    assert_exit(&output, 0);

    let over = offline_config(&text_schedule("long", &users, &content(2032)));
    let output = check_yaml(&dir, "2049.yaml", &over, &[]).await;
    assert_rejected_with(
        &output,
        &["schedule \"long\", field text.content:", "is 2049 bytes"],
    );
}

#[tokio::test]
async fn markdown_over_2048_bytes_once_rendered_is_rejected_for_an_application() {
    // As for text: 13 bytes as written, 17 once rendered. A robot would take 4096 bytes.
    let dir = TempDir::new().unwrap();
    let schedule = |pad: usize| {
        format!(
            "  - name: oncall\n    cron: \"0 9 * * 1\"\n    to: {{users: [ZhangSan]}}\n    markdown:\n      content: \"{}{{{{ date_cn }}}}\"\n",
            "x".repeat(pad)
        )
    };
    let output = check_yaml(&dir, "2048.yaml", &offline_config(&schedule(2031)), &[]).await;
    assert_exit(&output, 0);

    let output = check_yaml(&dir, "2049.yaml", &offline_config(&schedule(2032)), &[]).await;
    assert_rejected_with(
        &output,
        &[
            "schedule \"oncall\", field markdown.content:",
            "is 2049 bytes",
        ],
    );
}

#[tokio::test]
async fn the_wechat_plugin_note_appears_once_per_markdown_or_template_card_schedule() {
    let env = Env::new().await;
    let markdown = |name: &str| {
        format!(
            "  - name: {name}\n    cron: \"0 9 * * 1\"\n    to: {{users: [ZhangSan]}}\n    markdown: {{content: \"**值班** {{{{ date }}}}\"}}\n"
        )
    };
    let others = "  - name: plain\n    cron: \"0 9 * * 1\"\n    to: {users: [ZhangSan]}\n    text: {content: \"值班 {{ date }}\"}\n\
         \x20 - name: talks\n    cron: \"0 10 * * 5\"\n    to: {users: [ZhangSan]}\n    news: {articles: [{title: \"分享 {{ date }}\", url: \"https://example.com/t\"}]}\n\
         \x20 - name: handover\n    cron: \"0 18 28 * *\"\n    to: {users: [ZhangSan]}\n    template_card: {card_type: text_notice, sub_title_text: \"交接 {{ date }}\", card_action: {type: 1, url: \"https://example.com/h\"}}\n";
    let output = check_schedules(
        &env,
        &format!("{}{}{others}", markdown("oncall-a"), markdown("oncall-b")),
        &[],
    )
    .await;
    let stdout = stdout(&output);
    let notes: Vec<&str> = stdout
        .lines()
        .filter(|line| line.contains("WeChat plugin"))
        .collect();
    let expected = [
        "warning: schedule \"oncall-a\", field markdown: members who read WeCom through the WeChat plugin (微信插件 / 微工作台) are not shown markdown messages",
        "warning: schedule \"oncall-b\", field markdown: members who read WeCom through the WeChat plugin (微信插件 / 微工作台) are not shown markdown messages",
        "warning: schedule \"handover\", field template_card: members who read WeCom through the WeChat plugin (微信插件 / 微工作台) are not shown template cards",
    ];
    assert_eq!(notes.len(), expected.len(), "{stdout}");
    for (note, expected) in notes.iter().zip(expected) {
        assert!(note.starts_with(expected), "{note}\n{stdout}");
    }
}

#[tokio::test]
async fn textcard_url_over_2048_bytes_is_rejected() {
    let dir = TempDir::new().unwrap();
    let url = format!("https://example.com/{}", "a".repeat(2029));
    assert_eq!(url.len(), 2049);
    let yaml = offline_config(&format!(
        "  - name: card\n    cron: \"0 16 * * Fri\"\n    to: {{parties: [\"2\"]}}\n    textcard:\n      title: 周报\n      description: 提交周报\n      url: {url}\n"
    ));
    let output = check_yaml(&dir, "url.yaml", &yaml, &[]).await;
    assert_rejected_with(
        &output,
        &["schedule \"card\", field textcard.url:", "is 2049 bytes"],
    );
}

#[tokio::test]
async fn an_empty_config_file_is_rejected() {
    let dir = TempDir::new().unwrap();
    let output = check_yaml(&dir, "empty.yaml", "", &[]).await;
    assert_rejected_with(&output, &["file: is empty"]);
}

// ---------------------------------------------------------------------------------------------
// The report of a valid config

/// The lines of `schedule`'s block in `check`'s stdout (its name line up to the blank line).
fn section<'a>(stdout: &'a str, schedule: &str) -> Vec<&'a str> {
    let mut lines = stdout.lines();
    let found = lines.any(|line| line == schedule || line.starts_with(&format!("{schedule} (")));
    assert!(found, "no section for schedule {schedule:?} in:\n{stdout}");
    lines.take_while(|line| !line.is_empty()).collect()
}

/// One `  next: 2026-11-30 Mon 09:30:00 +08:00` line, with its calendar note if any.
#[derive(Debug, PartialEq, Eq)]
struct Next {
    date: NaiveDate,
    weekday: String,
    time: String,
    offset: String,
    /// `skipped: a holiday in calendar NAME` or `make-up workday in calendar NAME`.
    note: Option<String>,
}

/// The `next:` lines of `schedule`, parsed; the weekday shown must be the date's.
fn next_times(stdout: &str, schedule: &str) -> Vec<Next> {
    section(stdout, schedule)
        .into_iter()
        .filter_map(|line| line.trim_start().strip_prefix("next: "))
        .map(|rest| {
            let fields: Vec<&str> = rest.splitn(5, ' ').collect();
            let (&[date, weekday, time, offset], note) = fields.split_at(fields.len().min(4))
            else {
                panic!("unexpected next line {rest:?}");
            };
            let note = note.first().map(|note| {
                let inner = note
                    .strip_prefix('(')
                    .and_then(|n| n.strip_suffix(')'))
                    .filter(|n| {
                        n.starts_with("skipped: a holiday in calendar ")
                            || n.starts_with("make-up workday in calendar ")
                    });
                inner
                    .unwrap_or_else(|| panic!("unexpected note in next line {rest:?}"))
                    .to_string()
            });
            let date = NaiveDate::parse_from_str(date, "%Y-%m-%d")
                .unwrap_or_else(|e| panic!("bad date in {rest:?}: {e}"));
            let weekday_of_date: Weekday = weekday.parse().expect("weekday name");
            assert_eq!(date.weekday(), weekday_of_date, "wrong weekday in {rest:?}");
            Next {
                date,
                weekday: weekday.to_string(),
                time: time.to_string(),
                offset: offset.to_string(),
                note,
            }
        })
        .collect()
}

/// Writes the test app (secret in a file, so no warning) and `schedules`, then runs `check ARGS`.
async fn check_schedules(env: &Env, schedules: &str, args: &[&str]) -> Output {
    env.write_schedules(schedules);
    let mut full = vec!["check"];
    full.extend_from_slice(args);
    let output = env.cli(&full).await;
    assert_exit(&output, 0);
    output
}

/// The zone of every schedule in the example config.
fn shanghai() -> Tz {
    "Asia/Shanghai".parse().unwrap()
}

/// `--now` for the binary: `now` to the nanosecond, so that `check` takes the very instant the
/// test derives its expectations from.
fn now_arg(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// `next:` as `check` prints it.
fn next_line(slot: DateTime<Tz>, note: Option<String>) -> String {
    let note = note.map_or_else(String::new, |n| format!(" ({n})"));
    format!("next: {}{note}", slot.format("%Y-%m-%d %a %H:%M:%S %:z"))
}

/// The first `n` slots after `now` at `hour:minute` in Shanghai, on the dates `fires` accepts.
fn daily_slots(
    now: DateTime<Utc>,
    (hour, minute): (u32, u32),
    n: usize,
    fires: impl Fn(NaiveDate) -> bool,
) -> Vec<DateTime<Tz>> {
    let zone = shanghai();
    now.with_timezone(&zone)
        .date_naive()
        .iter_days()
        .filter(|date| fires(*date))
        .map(|date| {
            zone.from_local_datetime(&date.and_hms_opt(hour, minute, 0).unwrap())
                .unwrap()
        })
        .filter(|slot| slot.with_timezone(&Utc) > now)
        .take(n)
        .collect()
}

/// A `YYYY-MM-DD` list of the example's YAML, e.g. `calendars.cn-holidays.skip`.
fn yaml_dates(value: &serde_yaml::Value) -> BTreeSet<NaiveDate> {
    value
        .as_sequence()
        .expect("a list of dates")
        .iter()
        .map(|date| {
            let text = date.as_str().expect("a date as text");
            NaiveDate::parse_from_str(text, "%Y-%m-%d").expect("YYYY-MM-DD")
        })
        .collect()
}

/// What `check --now NOW --next 3` must list for each schedule of the example config, whose
/// schedules are all in Asia/Shanghai: `(schedule, next: lines)`.
fn example_next_lines(now: DateTime<Utc>) -> Vec<(&'static str, Vec<String>)> {
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&crate::support::read(Path::new(EXAMPLE))).expect("example YAML");
    let calendar = &yaml["calendars"]["cn-holidays"];
    let (skip, workdays) = (
        yaml_dates(&calendar["skip"]),
        yaml_dates(&calendar["workdays"]),
    );
    let weekday = |date: NaiveDate| date.weekday().num_days_from_monday() < 5;
    // standup: 09:30 Mon-Fri and on make-up workdays; a holiday is listed with its note.
    let standup = daily_slots(now, (9, 30), 3, |d| weekday(d) || workdays.contains(&d))
        .into_iter()
        .map(|slot| {
            let date = slot.date_naive();
            let note = if skip.contains(&date) {
                Some("skipped: a holiday in calendar cn-holidays".to_string())
            } else if workdays.contains(&date) {
                Some("make-up workday in calendar cn-holidays".to_string())
            } else {
                None
            };
            next_line(slot, note)
        })
        .collect();
    // weekly-report: 16:00 on Fridays, no calendar.
    let weekly = daily_slots(now, (16, 0), 3, |d| d.weekday() == Weekday::Fri)
        .into_iter()
        .map(|slot| next_line(slot, None))
        .collect();
    // demo-heartbeat: every 20 seconds (Shanghai's offset is whole hours, so UTC's multiples).
    let first = (now.timestamp().div_euclid(20) + 1) * 20;
    let heartbeat = (0..3)
        .map(|i| {
            let slot = DateTime::from_timestamp(first + 20 * i, 0).unwrap();
            next_line(slot.with_timezone(&shanghai()), None)
        })
        .collect();
    vec![
        ("standup", standup),
        ("weekly-report", weekly),
        ("demo-heartbeat", heartbeat),
    ]
}

/// Checks the example config as of `now` and compares every `next:` line with what it must be.
async fn check_example_at(env: &Env, now: DateTime<Utc>) -> Vec<(&'static str, Vec<String>)> {
    let at = now_arg(now);
    let output = env
        .command(&["--now", &at, "check", "--next", "3", "--dry-run"])
        .env_remove("WECOM_OPS_SECRET")
        .output()
        .await
        .unwrap();
    assert_exit(&output, 0);
    let stdout = stdout(&output);
    let expected = example_next_lines(now);
    for (schedule, lines) in &expected {
        let listed: Vec<&str> = section(&stdout, schedule)
            .into_iter()
            .map(str::trim_start)
            .filter(|line| line.starts_with("next: "))
            .collect();
        assert_eq!(&listed, lines, "{schedule} at --now {at}:\n{stdout}");
        assert_eq!(next_times(&stdout, schedule).len(), 3, "{stdout}");
    }
    assert!(
        !stdout.contains("secret_env"),
        "a dry run does not read the secret, so it says nothing of it:\n{stdout}"
    );
    expected
}

#[tokio::test]
async fn the_example_config_passes_a_dry_run_check_and_lists_every_schedule() {
    let env = Env::new().await;
    env.write_config(&crate::support::read(Path::new(EXAMPLE)));
    check_example_at(&env, Utc::now()).await;
}

#[tokio::test]
async fn the_example_config_lists_its_first_holiday_as_skipped_on_the_eve_of_it() {
    // Whatever today is, the note on a skipped slot is parsed and checked: noon of the day
    // before the example calendar's first holiday.
    let env = Env::new().await;
    let example = crate::support::read(Path::new(EXAMPLE));
    env.write_config(&example);
    let yaml: serde_yaml::Value = serde_yaml::from_str(&example).expect("example YAML");
    let holiday = *yaml_dates(&yaml["calendars"]["cn-holidays"]["skip"])
        .first()
        .expect("the example lists a holiday");
    let eve = shanghai()
        .from_local_datetime(&holiday.pred_opt().unwrap().and_hms_opt(12, 0, 0).unwrap())
        .unwrap()
        .with_timezone(&Utc);
    let expected = check_example_at(&env, eve).await;
    let standup = &expected[0].1;
    assert!(
        standup[0].starts_with(&format!("next: {holiday} "))
            && standup[0].ends_with(" (skipped: a holiday in calendar cn-holidays)"),
        "the holiday is the first slot after its eve: {standup:?}"
    );
}

#[tokio::test]
async fn now_is_a_usage_error_when_malformed_or_given_to_a_command_on_the_clock() {
    let env = Env::new().await;
    env.write_schedules(
        "  - name: standup\n    cron: \"30 9 * * 1-5\"\n    to: {users: [ZhangSan]}\n    text: {content: 站会}\n",
    );
    let malformed = env.cli(&["--now", "2026-11-30 09:30", "check"]).await;
    assert_exit(&malformed, 2);
    assert!(
        stderr(&malformed).contains("RFC 3339"),
        "{}",
        text(&malformed)
    );
    // run, send and recall act on the real clock: --now would mislead a test, so it is refused.
    let send = env
        .cli(&[
            "--now",
            "2026-11-30T09:30:00+08:00",
            "send",
            "standup",
            "--dry-run",
        ])
        .await;
    assert_exit(&send, 2);
    assert!(
        stderr(&send).contains("--now applies to check and history only"),
        "{}",
        text(&send)
    );
    assert!(!env.db_path().exists(), "nothing was sent or recorded");
}

#[tokio::test]
async fn the_example_config_without_its_secret_fails_and_says_how_to_fix_it() {
    let env = Env::new().await;
    env.write_config(&crate::support::read(Path::new(EXAMPLE)));
    let output = env
        .command(&["check", "--next", "3"])
        .env_remove("WECOM_OPS_SECRET")
        .output()
        .await
        .unwrap();
    assert_rejected_with(
        &output,
        &[
            "app \"ops\", field secret_env:",
            "WECOM_OPS_SECRET is not set",
            "export it",
        ],
    );
}

#[tokio::test]
async fn next_fire_times_of_a_workday_schedule_are_weekdays_at_0930_in_shanghai() {
    let env = Env::new().await;
    let output = check_schedules(
        &env,
        "  - name: standup\n    cron: \"30 9 * * 1-5\"\n    timezone: Asia/Shanghai\n    to: {users: [ZhangSan]}\n    text: {content: 站会}\n",
        &["--next", "5"],
    )
    .await;
    let next = next_times(&stdout(&output), "standup");
    assert_eq!(next.len(), 5, "{}", text(&output));
    for slot in &next {
        assert!(
            ["Mon", "Tue", "Wed", "Thu", "Fri"].contains(&slot.weekday.as_str()),
            "{slot:?}"
        );
        assert_eq!(
            (slot.time.as_str(), slot.offset.as_str()),
            ("09:30:00", "+08:00")
        );
    }
    // Consecutive workdays: the next day, or Friday to Monday.
    for pair in next.windows(2) {
        let gap = (pair[1].date - pair[0].date).num_days();
        let friday_to_monday = pair[0].weekday == "Fri" && gap == 3;
        assert!(gap == 1 || friday_to_monday, "{pair:?} skips a workday");
    }
}

#[tokio::test]
async fn day_of_week_0_and_7_both_mean_sunday() {
    let env = Env::new().await;
    let output = check_schedules(
        &env,
        "  - name: sunday-0\n    cron: \"0 9 * * 0\"\n    to: {users: [ZhangSan]}\n    text: {content: \"{{ weekday }}\"}\n\
         \x20 - name: sunday-7\n    cron: \"0 9 * * 7\"\n    to: {users: [ZhangSan]}\n    text: {content: \"{{ weekday }}\"}\n",
        &["--next", "3"],
    )
    .await;
    let stdout = stdout(&output);
    let zero = next_times(&stdout, "sunday-0");
    let seven = next_times(&stdout, "sunday-7");
    assert_eq!(zero.len(), 3, "{stdout}");
    assert_eq!(zero, seven);
    for slot in &zero {
        assert_eq!(
            (slot.weekday.as_str(), slot.time.as_str()),
            ("Sun", "09:00:00")
        );
    }
}

#[tokio::test]
async fn a_static_body_repeating_within_the_duplicate_check_interval_is_warned_about() {
    let env = Env::new().await;
    let output = check_schedules(
        &env,
        "  - name: static-ping\n    cron: \"*/10 * * * *\"\n    to: {users: [ZhangSan]}\n    text: {content: ping}\n\
         \x20 - name: timed-ping\n    cron: \"*/10 * * * *\"\n    to: {users: [ZhangSan]}\n    text: {content: \"ping {{ time }}\"}\n",
        &[],
    )
    .await;
    let stdout = stdout(&output);
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("warning:") && line.contains("duplicate_check_interval"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stdout}");
    assert!(
        warnings[0]
            .starts_with("warning: schedule \"static-ping\", field duplicate_check_interval:"),
        "{stdout}"
    );
    assert!(warnings[0].contains("600s"), "names the gap: {stdout}");
}

#[tokio::test]
async fn check_shows_how_each_schedule_renders_at_its_next_slot() {
    let env = Env::new().await;
    let output = check_schedules(
        &env,
        "  - name: standup\n    cron: \"30 9 * * 1-5\"\n    to: {users: [ZhangSan]}\n    text: {content: \"{{ schedule }} {{ date }} {{ time }}\"}\n\
         \x20 - name: weekly-report\n    cron: \"0 16 * * Fri\"\n    to: {parties: [\"2\"]}\n    textcard:\n      title: \"周报 {{ date_cn }}\"\n      description: 提交周报\n      url: https://example.com/weekly\n",
        &[],
    )
    .await;
    let stdout = stdout(&output);
    let first = &next_times(&stdout, "standup")[0];
    let expected = format!(
        "  renders as: \"standup {} 09:30\"",
        first.date.format("%Y-%m-%d")
    );
    assert!(
        section(&stdout, "standup").contains(&expected.as_str()),
        "{expected}\n{stdout}"
    );

    let first = &next_times(&stdout, "weekly-report")[0];
    let expected = format!(
        "  renders as: card \"周报 {}\" → https://example.com/weekly",
        first.date.format("%Y年%m月%d日")
    );
    assert!(
        section(&stdout, "weekly-report").contains(&expected.as_str()),
        "{expected}\n{stdout}"
    );
}

#[tokio::test]
async fn check_shows_markdown_news_and_cards_at_their_next_slot() {
    let env = Env::new().await;
    let output = check_schedules(
        &env,
        "  - name: oncall\n    cron: \"0 9 * * 1\"\n    to: {users: [ZhangSan]}\n    markdown:\n      content: \"**值班** {{ date }}\\n> 张三\"\n\
         \x20 - name: talks\n    cron: \"0 10 * * 5\"\n    to: {users: [ZhangSan]}\n    news:\n      articles:\n        - {title: \"分享 {{ date }}\", url: \"https://example.com/t\"}\n        - {title: 报名, url: \"https://example.com/s\"}\n\
         \x20 - name: handover\n    cron: \"0 18 28 * *\"\n    to: {users: [ZhangSan]}\n    template_card: {card_type: text_notice, main_title: {title: \"交接 {{ date_cn }}\"}, card_action: {type: 1, url: \"https://example.com/h\"}}\n\
         \x20 - name: poster\n    cron: \"0 18 28 * *\"\n    to: {users: [ZhangSan]}\n    template_card: {card_type: news_notice, main_title: {title: 海报}, card_image: {url: \"https://example.com/p.png\"}, card_action: {type: 1, url: \"https://example.com/p\"}}\n",
        &[],
    )
    .await;
    let stdout = stdout(&output);
    let date = |schedule: &str, format: &str| {
        next_times(&stdout, schedule)[0]
            .date
            .format(format)
            .to_string()
    };
    let expected = [
        (
            "oncall",
            format!(
                "  renders as: markdown \"**值班** {}⏎> 张三\"",
                date("oncall", "%Y-%m-%d")
            ),
        ),
        (
            "talks",
            format!(
                "  renders as: news: 2 article(s): \"分享 {}\", \"报名\"",
                date("talks", "%Y-%m-%d")
            ),
        ),
        (
            "handover",
            format!(
                "  renders as: card text_notice \"交接 {}\"",
                date("handover", "%Y年%m月%d日")
            ),
        ),
        (
            "poster",
            "  renders as: card news_notice \"海报\"".to_string(),
        ),
    ];
    for (schedule, line) in expected {
        assert!(
            section(&stdout, schedule).contains(&line.as_str()),
            "{line}\n{stdout}"
        );
    }
    assert!(
        stdout.contains(", to 1 user, template_card\n"),
        "the msgtype is listed: {stdout}"
    );
}

#[tokio::test]
async fn a_schedule_beyond_wecoms_per_member_limits_is_warned_about() {
    let dir = TempDir::new().unwrap();
    let yaml = offline_config(
        "  - name: chatty\n    cron: \"* * * * * *\"\n    to: {users: [ZhangSan]}\n    text: {content: \"{{ slot:%T }}\"}\n  - name: hourly\n    cron: \"*/3 * * * * *\"\n    to: {users: [ZhangSan]}\n    text: {content: \"{{ slot:%T }}\"}\n  - name: calm\n    cron: \"*/5 * * * *\"\n    to: {users: [ZhangSan]}\n    text: {content: \"{{ slot:%T }}\"}\n",
    );
    let output = check_yaml(&dir, "limits.yaml", &yaml, &[]).await;
    assert_exit(&output, 0);
    let out = stdout(&output);
    assert!(
        out.contains("schedule \"chatty\", field cron: fires more than 30 times a minute"),
        "{out}"
    );
    assert!(
        out.contains("schedule \"hourly\", field cron: fires more than 1000 times an hour"),
        "{out}"
    );
    assert!(!out.contains("schedule \"calm\", field cron"), "{out}");
}

#[tokio::test]
async fn check_format_json_gives_problems_warnings_and_next_fire_times_a_pipeline_can_parse() {
    let env = Env::new().await;
    env.write_config(&crate::support::read(Path::new(EXAMPLE)));
    let now = Utc::now();
    let stamp = now_arg(now);
    let output = env
        .command(&[
            "--now",
            &stamp,
            "check",
            "--dry-run",
            "--format",
            "json",
            "--next",
            "2",
        ])
        .env_remove("WECOM_OPS_SECRET")
        .output()
        .await
        .expect("run check");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    assert_eq!(doc["format"], 1);
    assert_eq!(doc["valid"], true);
    assert_eq!(doc["problems"], serde_json::json!([]));
    assert!(
        doc["digest"].as_str().is_some_and(|d| d.len() == 16),
        "{doc}"
    );
    let schedules = doc["schedules"].as_array().expect("schedules");
    // The same next fire times as the text report, derived from the same instant.
    for (name, lines) in example_next_lines(now) {
        let schedule = schedules
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {doc}"));
        let next = schedule["next"].as_array().expect("next");
        let as_lines: Vec<String> = next
            .iter()
            .map(|slot| {
                let at = DateTime::parse_from_rfc3339(slot["at"].as_str().expect("at"))
                    .expect("RFC 3339");
                let note = match (slot["skipped"].as_bool(), slot["make_up"].as_bool()) {
                    (Some(true), _) => Some("skipped: a holiday in calendar cn-holidays".into()),
                    (_, Some(true)) => Some("make-up workday in calendar cn-holidays".into()),
                    _ => None,
                };
                next_line(at.with_timezone(&shanghai()), note)
            })
            .collect();
        assert_eq!(as_lines, lines[..2.min(lines.len())], "{name}: {schedule}");
        for key in ["cron", "zone", "app", "to", "msgtype", "renders_as"] {
            assert!(schedule[key].is_string(), "{name}: {key} in {schedule}");
        }
    }

    env.write_config(
        "timezone: UTC\napps: {}\nschedules:\n  - { name: broken, cron: 'bad', to: { users: [u] }, text: { content: hi } }\n",
    );
    let output = env.cli(&["check", "--format", "json"]).await;
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    assert_eq!(doc["valid"], false);
    assert_eq!(doc["schedules"], serde_json::json!([]));
    let problems = doc["problems"].as_array().expect("problems");
    let cron = problems
        .iter()
        .find(|p| p["field"] == "cron")
        .unwrap_or_else(|| panic!("{doc}"));
    assert_eq!(cron["subject"], "schedule");
    assert_eq!(cron["name"], "broken");
    assert!(
        cron["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"bad\"")),
        "{cron}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p["field"] == "apps" && p["subject"] == "file"),
        "{doc}"
    );
}

// ---------------------------------------------------------------------------------------------
// The database: a SQLite file or a postgres:// URL that never holds a password

/// A PostgreSQL password that nothing the binary prints may contain.
const PG_PASSWORD: &str = "Pg-hunter2-s3cr3t";

/// A schedule item for the database tests.
const STANDUP: &str = "  - name: standup\n    cron: \"30 9 * * 1-5\"\n    to: {users: [ZhangSan]}\n    text: {content: 站会}\n";

/// Runs the binary with `--config CONFIG --db DB ARGS` (and no other `--db`), bounded in time.
async fn run_with_db(config: &Path, db: &str, args: &[&str]) -> Output {
    let command = tokio::process::Command::new(binary())
        .arg("--config")
        .arg(config)
        .arg("--db")
        .arg(db)
        .args(args)
        .env("RUST_LOG", "debug")
        .env_remove("WECOM_NOTIFY_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("STATE_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        // A URL mistaken for a relative path would leave its file here.
        .current_dir(config.parent().expect("config folder"))
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(std::time::Duration::from_secs(60), command)
        .await
        .unwrap_or_else(|_| panic!("{args:?} did not exit within 60 s"))
        .expect("run wecom-notify")
}

#[tokio::test]
async fn a_database_url_holding_a_password_is_refused_naming_database_and_never_shown() {
    let dir = TempDir::new().unwrap();
    let urls = [
        format!("postgres://wecom:{PG_PASSWORD}@db.internal:5432/wecom_notify?sslmode=verify-full"),
        format!("postgresql://wecom@db.internal/wecom_notify?password={PG_PASSWORD}"),
    ];
    for url in &urls {
        let yaml = format!("database: \"{url}\"\n{}", offline_config(STANDUP));
        for args in [&[][..], &["--dry-run"][..]] {
            let output = check_yaml(&dir, "pg.yaml", &yaml, args).await;
            assert_rejected_with(
                &output,
                &[
                    "  - database: \"postgres",
                    "holds a password",
                    "database_password_env, database_password_file or database_password_credential",
                ],
            );
            assert!(!text(&output).contains(PG_PASSWORD), "{}", text(&output));
        }
        let output = check_yaml(&dir, "pg.yaml", &yaml, &["--format", "json"]).await;
        assert_exit(&output, EXIT_CONFIG);
        assert!(!text(&output).contains(PG_PASSWORD), "{}", text(&output));
        let doc: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("one JSON document");
        let problems = doc["problems"].as_array().expect("problems");
        assert!(
            problems.iter().any(|p| p["field"] == "database"
                && p["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("holds a password"))),
            "{doc}"
        );
    }
    // Masked where it is quoted, so the operator sees which URL is meant.
    let yaml = format!("database: \"{}\"\n{}", urls[0], offline_config(STANDUP));
    let output = check_yaml(&dir, "pg.yaml", &yaml, &[]).await;
    assert!(
        stderr(&output)
            .contains("\"postgres://wecom:***@db.internal:5432/wecom_notify?sslmode=verify-full\""),
        "{}",
        text(&output)
    );
}

#[tokio::test]
async fn a_password_in_a_db_url_stops_every_command_with_the_config_exit_code_unshown() {
    let dir = TempDir::new().unwrap();
    let config = dir.path().join("schedules.yaml");
    std::fs::write(&config, offline_config(STANDUP)).unwrap();
    let url = "postgres://u:pw@127.0.0.1/db";
    for args in [
        &["history"][..],
        &["history", "--summary"][..],
        &["check"][..],
        &["send", "standup", "--dry-run"][..],
        &["recall", "1"][..],
        &["run", "--dry-run"][..],
    ] {
        let output = run_with_db(&config, url, args).await;
        assert_exit(&output, EXIT_CONFIG);
        let stderr = stderr(&output);
        assert!(
            stderr.contains("error: --db: \"postgres://u:***@127.0.0.1/db\" holds a password"),
            "{args:?}: {}",
            text(&output)
        );
        // The folder's random name is not the command's to answer for.
        let printed = text(&output).replace(&dir.path().display().to_string(), "DIR");
        assert!(!printed.contains("pw"), "{args:?}: {printed}");
    }
    // `check --format json` says it in its one document.
    let output = run_with_db(&config, url, &["check", "--format", "json"]).await;
    assert_exit(&output, EXIT_CONFIG);
    let printed = text(&output).replace(&dir.path().display().to_string(), "DIR");
    assert!(!printed.contains("pw"), "{printed}");
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    assert_eq!(doc["valid"], false, "{doc}");
    assert_eq!(doc["problems"][0]["field"], "--db", "{doc}");
    assert!(
        doc["problems"][0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("\"postgres://u:***@127.0.0.1/db\" holds a password")),
        "{doc}"
    );
    assert!(
        !dir.path().join("postgres:").exists() && !dir.path().join("wecom-notify.db").exists(),
        "no SQLite file is made in its place"
    );
}

#[tokio::test]
async fn check_names_the_database_it_would_use_and_where_its_password_comes_from() {
    let dir = TempDir::new().unwrap();
    let output = check_yaml(&dir, "sqlite.yaml", &offline_config(STANDUP), &[]).await;
    assert_exit(&output, 0);
    let line = format!("database: {}", dir.path().join("x.db").display());
    assert!(
        stdout(&output).lines().any(|l| l == line),
        "{line:?} in {}",
        text(&output)
    );

    let config = dir.path().join("pg.yaml");
    std::fs::write(
        &config,
        format!(
            "database: postgres://wecom@db.internal/wecom_notify?sslmode=verify-full\ndatabase_password_credential: pg\n{}",
            offline_config(STANDUP)
        ),
    )
    .unwrap();
    // `--db` replaces the URL and keeps the config's password source.
    let output = run_with_db(&config, "postgres://other@127.0.0.1/db", &["check"]).await;
    assert_exit(&output, 0);
    assert!(
        stdout(&output).lines().any(|l| l
            == "database: postgres://other@127.0.0.1/db (password from database_password_credential)"),
        "{}",
        text(&output)
    );
    let output = run_with_db(
        &config,
        &dir.path().join("y.db").display().to_string(),
        &["check"],
    )
    .await;
    assert_exit(&output, 0);
    let line = format!("database: {}", dir.path().join("y.db").display());
    assert!(
        stdout(&output).lines().any(|l| l == line),
        "{}",
        text(&output)
    );
}

/// 6,000 schedules, each at its own minute of the day in Asia/Shanghai: `check` describes a
/// config this large on several threads, and the listing must still be each schedule in the
/// file's order with its own slots and text. Then the same listing into a pipe closed after
/// its first line: that is no failure (it used to panic).
#[tokio::test]
async fn a_large_config_is_listed_in_file_order_and_a_closed_pipe_is_no_failure() {
    let dir = TempDir::new().expect("temp dir");
    let count = 6000;
    let mut yaml = OFFLINE_HEADER.to_string();
    for i in 0..count {
        let (h, m) = ((i / 60) % 24, i % 60);
        yaml.push_str(&format!(
            "  - {{ name: s{i:05}, cron: '{m} {h} * * *', to: {{ users: [u{i}] }}, text: {{ content: 'for {{{{ schedule }}}} on {{{{ date }}}}' }} }}\n"
        ));
    }
    let path = dir.path().join("large.yaml");
    std::fs::write(&path, &yaml).expect("write config");
    let now: DateTime<Utc> = Utc.with_ymd_and_hms(2026, 12, 2, 7, 30, 0).unwrap();
    let now_arg = now.to_rfc3339_opts(SecondsFormat::Secs, true);
    let output = run_check(&path, dir.path(), &["--next", "1", "--now", &now_arg]).await;
    assert!(output.status.success(), "{}", text(&output));
    let listing = stdout(&output);
    let names: Vec<&str> = listing
        .lines()
        .filter(|line| line.starts_with('s') && !line.starts_with(' '))
        .collect();
    let expected: Vec<String> = (0..count).map(|i| format!("s{i:05}")).collect();
    assert_eq!(names, expected, "every schedule once, in the file's order");
    let zone: Tz = "Asia/Shanghai".parse().unwrap();
    for (i, block) in listing.split("\n\n").skip(1).enumerate() {
        let (h, m) = (((i / 60) % 24) as u32, (i % 60) as u32);
        let local = now.with_timezone(&zone);
        let mut slot = zone
            .from_local_datetime(&local.date_naive().and_hms_opt(h, m, 0).unwrap())
            .unwrap();
        if slot <= local {
            slot += chrono::Duration::days(1);
        }
        let next = format!("  next: {}", slot.format("%Y-%m-%d %a %H:%M:%S %:z"));
        let renders = format!(
            "  renders as: \"for s{i:05} on {}\"",
            slot.format("%Y-%m-%d")
        );
        assert!(
            block.starts_with(&format!("s{i:05}\n"))
                && block.contains(&next)
                && block.contains(&renders),
            "schedule {i}: expected {next:?} and {renders:?} in\n{block}"
        );
    }

    let mut child = std::process::Command::new(binary())
        .arg("--config")
        .arg(&path)
        .arg("--db")
        .arg(dir.path().join("x.db"))
        .args(["check", "--next", "3"])
        .env("RUST_BACKTRACE", "0")
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start check");
    let mut first = String::new();
    let mut reader = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    std::io::BufRead::read_line(&mut reader, &mut first).expect("first line");
    assert!(first.contains(": OK ("), "{first}");
    drop(reader);
    let output = child.wait_with_output().expect("check ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
