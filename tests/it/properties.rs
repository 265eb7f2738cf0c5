//! Property tests with a fixed seed: thousands of generated cron expressions and zones against
//! the slot arithmetic's invariants, and thousands of mutated configs against the parser
//! (never a panic, always a located problem, never the secret in a message).

use std::path::Path;

use chrono::{DateTime, Duration, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wecom_notify::config::{Secrets, parse};
use wecom_notify::cron::CronSpec;

const ZONES: &[&str] = &[
    "UTC",
    "Asia/Shanghai",
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe", // a 30-minute daylight-saving shift
    "Pacific/Chatham",     // a +12:45 / +13:45 zone
    "America/Sao_Paulo",
];

fn field(rng: &mut StdRng, low: u32, high: u32) -> String {
    let a = rng.random_range(low..=high);
    let b = rng.random_range(a..=high);
    match rng.random_range(0..7) {
        0 | 1 => "*".to_string(),
        2 => format!("*/{}", rng.random_range(1..=(high - low).max(1))),
        3 => a.to_string(),
        4 => format!("{a}-{b}"),
        5 => format!("{a},{b}"),
        _ => format!("{a}-{b}/{}", rng.random_range(1..=3)),
    }
}

fn expression(rng: &mut StdRng) -> String {
    let mut fields = vec![
        field(rng, 0, 59),
        field(rng, 0, 23),
        field(rng, 1, 28),
        field(rng, 1, 12),
        field(rng, 0, 7),
    ];
    if rng.random_bool(0.4) {
        fields.insert(0, field(rng, 0, 59));
    }
    fields.join(" ")
}

fn offset(zone: Tz, at: DateTime<Utc>) -> i32 {
    zone.offset_from_utc_datetime(&at.naive_utc())
        .fix()
        .local_minus_utc()
}

#[test]
fn slots_are_ordered_consistent_and_match_their_expression() {
    let mut rng = StdRng::seed_from_u64(0x5eed_c0de);
    let base = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let mut checked = 0;
    for _ in 0..1500 {
        let expr = expression(&mut rng);
        let Ok(spec) = CronSpec::parse(&expr) else {
            continue;
        };
        let matcher: croner::Cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(&expr)
            .expect("croner parses what CronSpec parsed");
        let zone: Tz = ZONES[rng.random_range(0..ZONES.len())].parse().unwrap();
        let start = base + Duration::seconds(rng.random_range(0..2 * 365 * 86_400));
        let slots = spec.upcoming(start, zone, 12);
        for (i, slot) in slots.iter().enumerate() {
            assert!(
                *slot > start && slot.timestamp_subsec_nanos() == 0,
                "{expr} in {zone}: {slot}"
            );
            if i > 0 {
                assert!(
                    slots[i - 1] < *slot,
                    "{expr} in {zone}: out of order {slots:?}"
                );
            }
            assert_eq!(
                spec.next_after(*slot - Duration::seconds(1), zone),
                Some(*slot),
                "{expr} in {zone}: next_after disagrees"
            );
            assert_eq!(
                spec.next_from(*slot, zone),
                Some(*slot),
                "{expr} in {zone}: next_from is inclusive"
            );
            let local = slot.with_timezone(&zone);
            let matches = matcher.is_time_matching(&local).unwrap_or(false);
            // The only slot allowed not to match: a fixed-time job moved to the end of a gap.
            let at_gap_end = offset(zone, *slot - Duration::seconds(1)) < offset(zone, *slot);
            assert!(
                matches || (spec.is_fixed_time() && at_gap_end),
                "{expr} in {zone}: {local} does not match"
            );
        }
        if spec.is_fixed_time() {
            let readings: Vec<_> = slots
                .iter()
                .map(|s| s.with_timezone(&zone).naive_local())
                .collect();
            let mut unique = readings.clone();
            unique.dedup();
            assert_eq!(
                unique.len(),
                readings.len(),
                "{expr} in {zone}: a fixed-time job fired twice at one reading"
            );
        }
        checked += 1;
    }
    assert!(
        checked > 1000,
        "the generator produced too few valid expressions ({checked})"
    );
}

const BASE: &str = r#"timezone: Asia/Shanghai
apps:
  ops:
    corp_id: ww0123456789abcdef
    agent_id: 1000002
    secret: "S3cr3t-in-the-file-77"
schedules:
  - name: standup
    cron: "30 9 * * 1-5"
    to:
      users: [ZhangSan, LiSi]
      parties: ["2"]
    text:
      content: "站会 {{ date_cn }}"
    duplicate_check_interval: 1800
  - name: weekly
    cron: "0 16 * * Fri"
    to: { tags: ["7"] }
    textcard:
      title: 周报 {{ date }}
      description: 请提交
      url: https://example.com/w
      btntxt: 查看
"#;

fn mutate(rng: &mut StdRng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..rng.random_range(1..=3) {
        let i = rng.random_range(0..lines.len());
        match rng.random_range(0..6) {
            0 => {
                lines.remove(i);
            }
            1 => lines.insert(i, lines[i].clone()),
            2 => {
                let mut chars: Vec<char> = lines[i].chars().collect();
                if !chars.is_empty() {
                    let at = rng.random_range(0..chars.len());
                    chars[at] = ['x', ':', '-', ' ', '"', '{', '9', '@'][rng.random_range(0..8)];
                }
                lines[i] = chars.into_iter().collect();
            }
            3 => lines.insert(i, "    colour: blue".to_string()),
            4 => lines[i] = lines[i].replace("9", "99").replace("Fri", "Fry"),
            _ => lines[i] = format!("  {}", lines[i]),
        }
        if lines.is_empty() {
            break;
        }
    }
    lines.join("\n")
}

#[test]
fn mutated_configs_never_panic_and_every_problem_is_located() {
    let mut rng = StdRng::seed_from_u64(0xc0ff_ee00);
    assert!(
        parse(BASE, Path::new("/tmp/base.yaml"), Secrets::Required).is_ok(),
        "the base config is valid"
    );
    let mut rejected = 0;
    for _ in 0..3000 {
        let text = mutate(&mut rng, BASE);
        match parse(&text, Path::new("/tmp/mutated.yaml"), Secrets::Required) {
            Ok(_) => {}
            Err(error) => {
                rejected += 1;
                let message = error.to_string();
                assert!(
                    !message.contains("S3cr3t"),
                    "a secret in an error:\n{message}\n---\n{text}"
                );
                if let wecom_notify::config::ConfigError::Invalid { problems, .. } = error {
                    assert!(!problems.is_empty(), "rejected without a problem:\n{text}");
                    assert!(
                        problems
                            .iter()
                            .all(|p| !p.field.is_empty() && !p.message.is_empty()),
                        "{problems:?}"
                    );
                }
            }
        }
    }
    assert!(
        rejected > 500,
        "the mutations should break most configs ({rejected} of 3000)"
    );
}
