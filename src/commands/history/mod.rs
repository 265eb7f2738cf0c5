//! `history`: the sends, filtered and newest first, as a table or JSON Lines; `history --summary`:
//! per schedule, its last slot, its status, its next fire time and its recent failures.
//!
//! History is for auditors, who may have the database but not a working config: the config only
//! lends zones and next fire times, and a missing or invalid one is a warning, not an error.

use crate::shown::json_safe;
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::{EXIT_FAILED, EXIT_OK, Globals};
use crate::config::{self, Config, ConfigError, Secrets};
use crate::store::Store;
use crate::store::history::Status;
use crate::store::query::{HistoryFilter, ScheduleActivity};

mod format;
mod since;

use format::{errcode, invalid, local, table};
pub use since::{Since, parse_status};

/// Every value of the `status` column.
const STATUSES: [Status; 8] = [
    Status::Pending,
    Status::Sent,
    Status::Partial,
    Status::Failed,
    Status::Interrupted,
    Status::DryRun,
    Status::Missed,
    Status::Skipped,
];

/// How far back `--summary` counts failures.
const FAILURE_WINDOW: Duration = Duration::hours(24);

/// The longest `--since` duration accepted; anything longer is surely a typo.
const MAX_SINCE_DAYS: i64 = 100 * 366;

/// The accepted forms of `--since`, for its help and its error.
const SINCE_FORMS: &str = "a duration ago (30m, 12h, 7d, 2w), a date (2026-11-30: midnight in the config's zone) or an RFC 3339 timestamp (2026-11-30T09:30:00+08:00)";

/// The options of `history`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Only the rows of this schedule.
    #[arg(long, value_name = "NAME")]
    pub schedule: Option<String>,
    /// Only rows with this status (pending, sent, partial, failed, interrupted, dry_run, missed, skipped).
    #[arg(long, value_parser = parse_status)]
    pub status: Option<Status>,
    /// Only slots since WHEN: a duration ago (30m, 12h, 7d, 2w), a date (2026-11-30, midnight in the config's zone) or an RFC 3339 timestamp.
    #[arg(long, value_name = "WHEN", value_parser = Since::parse)]
    pub since: Option<Since>,
    /// At most N rows, newest first.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,
    /// One JSON object per line (JSON Lines), keys named like the columns of `sends`.
    #[arg(long)]
    pub json: bool,
    /// Per schedule: the last slot, its status, the next fire time and the failures in the last 24 h.
    #[arg(long, conflicts_with_all = ["status", "since", "limit"])]
    pub summary: bool,
}

/// Runs `history`.
pub async fn run(globals: &Globals, options: &Options) -> ExitCode {
    // One instant for `--since`, the next fire times and the failure window.
    let now = globals.now();
    let config = load_config(globals, now);
    if config.is_none() && globals.db.is_none() && names_a_database(&globals.config) {
        // Its `database:` cannot be trusted, and the default would be another database: a
        // history read there would show rows (or none) that are not this config's.
        eprintln!(
            "error: the config names a database but cannot be loaded, so history does not know which database to read; fix the config (`wecom-notify check`) or give --db"
        );
        return ExitCode::from(super::EXIT_CONFIG);
    }
    let store = match globals.open_database(config.as_ref()).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    warn_of_unrecorded(&store);
    let printed = if options.summary {
        summary(&store, config.as_ref(), options, now).await
    } else {
        list(&store, config.as_ref(), options, now).await
    };
    match printed {
        Ok(()) => ExitCode::from(EXIT_OK),
        // `history --json | head` closes the pipe early: that is not a failure.
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::from(EXIT_OK)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Says so when sends wait beside the database in unrecorded-sends files: an auditor must not
/// take the listing for all there is.
fn warn_of_unrecorded(store: &Store) {
    let files = store.unrecorded_files();
    if files.is_empty() {
        return;
    }
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    eprintln!(
        "warning: sends made while the database refused writes wait in {} and are not listed here yet; the daemon writes them into the database as soon as it takes writes (its next start at the latest)",
        names.join(", ")
    );
}

/// The config for zones and next fire times, if it can be read; history works without it.
/// Whether the file at `path` has a top-level `database:` key (read as plain YAML, whatever
/// else is wrong with it).
fn names_a_database(path: &std::path::Path) -> bool {
    // Only a regular file of a config's size (the load has refused anything else already).
    let regular = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() <= 64 << 20);
    if !regular {
        return false;
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    serde_yaml::from_str::<serde_yaml::Value>(&text)
        .ok()
        .and_then(|value| value.get("database").cloned())
        .is_some()
}

fn load_config(globals: &Globals, now: DateTime<Utc>) -> Option<Config> {
    match config::load_at(&globals.config, Secrets::Unneeded, now) {
        Ok(config) => Some(config),
        Err(error) => {
            let why = match &error {
                ConfigError::Read { .. } => error.to_string(),
                ConfigError::Invalid { path, problems, .. } => format!(
                    "config {} has {} problem(s) (`wecom-notify check` lists them)",
                    path.display(),
                    problems.len()
                ),
            };
            eprintln!("warning: {why}; times are shown in UTC, without next fire times");
            None
        }
    }
}

async fn list(
    store: &Store,
    config: Option<&Config>,
    options: &Options,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let default_zone = config.map_or(Tz::UTC, |c| c.timezone);
    let filter = HistoryFilter {
        schedule: options.schedule.clone(),
        status: options.status,
        since: options.since.map(|s| s.resolve(now, default_zone)),
        limit: options.limit,
    };
    let rows = store.history(filter).await?;
    let mut out = BufWriter::new(io::stdout().lock());
    if options.json {
        for row in &rows {
            out.write_all(json_safe(&serde_json::to_string(row)?).as_bytes())?;
            out.write_all(b"\n")?;
        }
        return Ok(out.flush()?);
    }
    if rows.is_empty() {
        writeln!(out, "no sends match")?;
        return Ok(out.flush()?);
    }
    let header = [
        "ID",
        "SCHEDULE",
        "DESTINATION",
        "TRIGGER",
        "SLOT",
        "STATUS",
        "ATTEMPTS",
        "ERRCODE",
        "MSGID",
        "INVALID",
    ];
    let mut unzoned: Vec<&str> = Vec::new();
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let zone = config
                .and_then(|c| c.schedule(&row.schedule))
                .map(|s| s.zone);
            if config.is_some() && zone.is_none() && !unzoned.contains(&row.schedule.as_str()) {
                unzoned.push(&row.schedule);
            }
            let status = match row.recalled_at {
                Some(_) => format!("{} (recalled)", row.status),
                None => row.status.clone(),
            };
            vec![
                row.id.to_string(),
                row.schedule.clone(),
                row.destination.clone(),
                row.trigger.clone(),
                local(&row.scheduled_at, zone.unwrap_or(Tz::UTC)),
                status,
                row.attempts.to_string(),
                errcode(row),
                row.msgid.clone().unwrap_or_else(|| "-".into()),
                invalid(row),
            ]
        })
        .collect();
    write!(out, "{}", table(&header, &lines))?;
    if !unzoned.is_empty() {
        writeln!(
            out,
            "(slots of {} are in UTC: not in the config any more)",
            unzoned.join(", ")
        )?;
    }
    Ok(out.flush()?)
}

/// One line of `history --summary --json`.
#[derive(Debug, Serialize)]
struct SummaryLine<'a> {
    schedule: &'a str,
    in_config: bool,
    enabled: Option<bool>,
    last_id: Option<i64>,
    last_slot: Option<&'a str>,
    last_status: Option<&'a str>,
    next_fire: Option<String>,
    failed_24h: i64,
}

async fn summary(
    store: &Store,
    config: Option<&Config>,
    options: &Options,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let wanted = |name: &str| options.schedule.as_deref().is_none_or(|w| w == name);
    let names = config
        .map(|c| {
            c.schedules
                .iter()
                .map(|s| s.name.to_string())
                .filter(|n| wanted(n))
                .collect()
        })
        .unwrap_or_default();
    let activity: Vec<ScheduleActivity> = store
        .activity(names, now - FAILURE_WINDOW)
        .await?
        .into_iter()
        .filter(|a| wanted(&a.schedule))
        .collect();
    let mut out = BufWriter::new(io::stdout().lock());
    let mut lines = Vec::new();
    for a in &activity {
        let schedule = config.and_then(|c| c.schedule(&a.schedule));
        let next = schedule
            .filter(|s| s.enabled)
            .and_then(|s| s.next_after(now));
        let line = SummaryLine {
            schedule: &a.schedule,
            in_config: schedule.is_some(),
            enabled: schedule.map(|s| s.enabled),
            last_id: a.last_slot.as_ref().map(|l| l.0),
            last_slot: a.last_slot.as_ref().map(|l| l.1.as_str()),
            last_status: a.last_slot.as_ref().map(|l| l.2.as_str()),
            next_fire: next.map(crate::time::to_db),
            failed_24h: a.failed,
        };
        if options.json {
            out.write_all(json_safe(&serde_json::to_string(&line)?).as_bytes())?;
            out.write_all(b"\n")?;
            continue;
        }
        let zone = schedule.map_or(Tz::UTC, |s| s.zone);
        let next_fire = match (schedule, next) {
            (None, _) => "- (not in config)".to_string(),
            (Some(s), _) if !s.enabled => "- (disabled)".to_string(),
            (Some(_), None) => "- (never again)".to_string(),
            (Some(_), Some(at)) => local(&crate::time::to_db(at), zone),
        };
        lines.push(vec![
            a.schedule.clone(),
            line.last_slot
                .map_or_else(|| "-".into(), |at| local(at, zone)),
            line.last_status.unwrap_or("-").to_string(),
            next_fire,
            a.failed.to_string(),
        ]);
    }
    if !options.json {
        if lines.is_empty() {
            writeln!(out, "no schedules in the config or the history")?;
        } else {
            let header = ["SCHEDULE", "LAST SLOT", "STATUS", "NEXT FIRE", "FAILED 24H"];
            write!(out, "{}", table(&header, &lines))?;
        }
    }
    Ok(out.flush()?)
}
