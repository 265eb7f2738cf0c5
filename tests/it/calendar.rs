//! Holiday calendars: skipped dates and make-up workdays, in `check --next` and in real fires.

use std::sync::Arc;
use std::time::Duration;

use chrono::{Datelike, NaiveDate, SecondsFormat, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use wecom_notify::calendar::Calendar;

use crate::support::*;

fn shanghai() -> Tz {
    "Asia/Shanghai".parse().unwrap()
}

fn shanghai_today() -> NaiveDate {
    Utc::now().with_timezone(&shanghai()).date_naive()
}

/// The first date after `from` that falls on `weekday`.
fn next(from: NaiveDate, weekday: Weekday) -> NaiveDate {
    from.iter_days()
        .skip(1)
        .find(|d| d.weekday() == weekday)
        .unwrap()
}

#[tokio::test]
async fn check_shows_skipped_holidays_and_make_up_workdays() {
    let env = Env::new().await;
    let zone = shanghai();
    // `check` takes this instant as now (`--now`), and every expectation below derives from it.
    let now = Utc::now();
    let today = now.with_timezone(&zone).date_naive();
    let monday = next(today, Weekday::Mon);
    let saturday = next(monday, Weekday::Sat);
    let monday_after = next(saturday, Weekday::Mon);
    env.write_config(&format!(
        "timezone: Asia/Shanghai\n{}calendars:\n  cn: {{ skip: [{monday}], workdays: [{saturday}] }}\nschedules:\n  - {{ name: standup, cron: '30 9 * * 1-5', calendar: cn, to: {{ users: [u] }}, text: {{ content: hi }} }}\n  - {{ name: weekly, cron: '0 16 * * Fri', calendar: cn, to: {{ users: [u] }}, text: {{ content: hi }} }}\n",
        env.apps_yaml()
    ));
    // Every 09:30 of a weekday or of the make-up Saturday after now, up to the Monday after that
    // Saturday: the skipped Monday is listed with its note, the Sunday between is not listed.
    let expected: Vec<String> = today
        .iter_days()
        .take_while(|date| *date <= monday_after)
        .filter(|date| date.weekday().num_days_from_monday() < 5 || *date == saturday)
        .map(|date| {
            (
                date,
                zone.from_local_datetime(&date.and_hms_opt(9, 30, 0).unwrap())
                    .unwrap(),
            )
        })
        .filter(|(_, slot)| slot.with_timezone(&Utc) > now)
        .map(|(date, slot)| {
            let note = if date == monday {
                " (skipped: a holiday in calendar cn)"
            } else if date == saturday {
                " (make-up workday in calendar cn)"
            } else {
                ""
            };
            format!("  next: {}{note}", slot.format("%Y-%m-%d %a %H:%M:%S %:z"))
        })
        .collect();
    let now_arg = now.to_rfc3339_opts(SecondsFormat::Nanos, true);
    let count = expected.len().to_string();
    let output = env
        .cli_ok(&["--now", &now_arg, "check", "--next", &count])
        .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let listed: Vec<&str> = stdout
        .lines()
        .skip_while(|l| *l != "standup")
        .take_while(|l| !l.is_empty())
        .filter(|l| l.starts_with("  next: "))
        .collect();
    assert_eq!(listed, expected, "check --now {now_arg}:\n{stdout}");
    // A Friday-only schedule is not a workday schedule: make-up days do not apply to it.
    assert!(
        stdout.contains(
            "schedule \"weekly\", field calendar: calendar \"cn\" lists make-up workdays"
        ),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_date_records_skipped_rows_and_sends_nothing() {
    let env = Env::new().await;
    let today = shanghai_today();
    let tomorrow = today.succ_opt().unwrap();
    // Every slot today is skipped; the dates around midnight are covered too.
    env.write_config(&format!(
        "timezone: Asia/Shanghai\n{}calendars:\n  cn: {{ skip: [{today}, {tomorrow}] }}\nschedules:\n{}",
        env.apps_yaml(),
        every("holiday", "*/2 * * * * *", "holiday", "calendar: cn")
    ));
    let mut daemon = env.spawn_daemon(&[]);
    eventually(WAIT, "two skipped slots", || {
        env.count("SELECT count(*) FROM sends WHERE status = 'skipped'") >= 2
    })
    .await;
    daemon.signal(SIGTERM);
    assert_eq!(daemon.wait_exit(WAIT).await.code(), Some(0));
    assert_eq!(env.fake.send_calls(), 0, "nothing is sent on a holiday");
    assert_eq!(env.column("SELECT DISTINCT status FROM sends"), ["skipped"]);
    // One row per slot.
    env.assert_contiguous("holiday", 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_make_up_workday_fires_a_schedule_whose_weekdays_exclude_it() {
    let env = Env::new().await;
    let zone = shanghai();
    let today = shanghai_today();
    // A cron that never matches today's weekday; its every-day form is what a make-up day uses.
    let not_today = (today.weekday().num_days_from_sunday() + 1) % 7;
    env.write_schedules(&every(
        "makeup",
        &format!("*/2 * * * * {not_today}"),
        "makeup",
        "",
    ));
    let mut config = env.load();
    // Whether a weekday set counts as "workdays" is the unit tests' business (cron.rs); here the
    // calendar is attached directly, so the test runs whatever day of the week it is.
    let mut schedule = config.schedules[0].as_ref().clone();
    schedule.calendar = Some(Arc::new(Calendar {
        name: "cn".into(),
        skip: Default::default(),
        workdays: [today, today.succ_opt().unwrap()].into(),
    }));
    schedule.workday_cron = Some(std::sync::Arc::new(
        wecom_notify::cron::CronSpec::parse("*/2 * * * * *").unwrap(),
    ));
    assert!(
        schedule
            .cron
            .next_after(Utc::now(), zone)
            .is_none_or(|s| s.with_timezone(&zone).date_naive() != today)
    );
    config.schedules[0] = Arc::new(schedule);
    let daemon = env.start_in_process_with(config, fast_policy(), Duration::from_secs(5));
    eventually(WAIT, "two sends on the make-up day", || {
        env.fake.messages().len() >= 2
    })
    .await;
    daemon.stop().await;
    assert_eq!(env.column("SELECT DISTINCT status FROM sends"), ["sent"]);
    let slots = env.slots("makeup");
    assert!(
        slots
            .iter()
            .all(|s| s.with_timezone(&zone).date_naive() >= today && s.timestamp() % 2 == 0),
        "{slots:?}"
    );
}
