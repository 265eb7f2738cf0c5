//! `check [--next N]`: validate the config, name the database, and preview what each schedule
//! will send, and when.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use chrono::{DateTime, Utc};

use super::{EXIT_OK, Globals};
use crate::config::database::password_field;
use crate::config::{Config, Schedule, Secrets, database_location};
use crate::message::Content;
use crate::shown::shown;
use crate::store::{Location, PgTarget};

/// How `check` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Lines for a person.
    #[default]
    Text,
    /// One JSON document on stdout, for a CI pipeline (keys in the README).
    Json,
}

/// Runs `check`. With `dry_run`, secrets need not be readable (as for `run --dry-run`).
pub fn run(globals: &Globals, next: usize, dry_run: bool, format: Format) -> ExitCode {
    let secrets = Secrets::for_dry_run(dry_run);
    // One instant for validation and the listing: both then sample the very same slots.
    let now = globals.now();
    if format == Format::Json {
        let (document, code) = match crate::config::load_at(&globals.config, secrets, now) {
            Ok(config) => {
                match database_location(globals.db.as_deref(), config.database.as_ref()) {
                    Ok(_) => (super::check_json::valid(&config, next, now), EXIT_OK),
                    Err(message) => (
                        super::check_json::db_refused(&globals.config, &message),
                        super::EXIT_CONFIG,
                    ),
                }
            }
            Err(error) => (
                super::check_json::invalid(&globals.config, &error),
                super::EXIT_CONFIG,
            ),
        };
        // JSON escapes C0 controls itself; what a terminal would still act on is escaped too.
        println!("{}", crate::shown::json_safe(&document.to_string()));
        return ExitCode::from(code);
    }
    let config = match globals.load_at(secrets, now) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let database = match globals.database(Some(&config)) {
        Ok(database) => database,
        Err(code) => return code,
    };
    // Names, crons, texts and warnings come from the config: escaped, each line on its own.
    // Buffered: stdout flushes at every line, a write each (100,000 schedules print 400,000).
    let printed = (|| {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        for line in report(&config, &database, next, now).lines() {
            writeln!(out, "{}", shown(line))?;
        }
        out.flush()
    })();
    match printed {
        // `check | head` closes the pipe early: that is not a failure.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: cannot write the listing: {e}");
            ExitCode::from(super::EXIT_FAILED)
        }
        _ => ExitCode::from(EXIT_OK),
    }
}

/// The text `check` prints for a valid config using `database`, listing the `next` slots after
/// `now`.
pub fn report(config: &Config, database: &Location, next: usize, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let robots = match config.robots.len() {
        0 => String::new(),
        n => format!(", {n} robot(s)"),
    };
    let _ = writeln!(
        out,
        "{}: OK (digest {}, {} app(s){robots}, {} schedule(s), default zone {})",
        config.path.display(),
        config.digest,
        config.apps.len(),
        config.schedules.len(),
        config.timezone.name()
    );
    // Which database `run` would open: a URL never holds a password, only where it comes from.
    let password = match database {
        Location::Postgres(PgTarget {
            password: Some(source),
            ..
        }) => format!(" (password from {})", password_field(source)),
        Location::Postgres(_) => " (no password)".to_string(),
        Location::Sqlite(_) => String::new(),
    };
    let _ = writeln!(out, "database: {database}{password}");
    for warning in &config.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    // Each schedule's lines depend on it alone: a large config is described on every core, in
    // runs of consecutive schedules, joined in order.
    let describe_all = |schedules: &[std::sync::Arc<Schedule>]| {
        let mut out = String::new();
        for schedule in schedules {
            out.push('\n');
            describe(&mut out, config, schedule, now, next);
        }
        out
    };
    let per_run = config
        .schedules
        .len()
        .div_ceil(crate::parallel::threads(MAX_DESCRIBERS))
        .max(SCHEDULES_PER_DESCRIBER);
    let runs: Vec<&[std::sync::Arc<Schedule>]> = config.schedules.chunks(per_run).collect();
    let runs = crate::parallel::in_order(&runs, || (), |run, ()| describe_all(run));
    for run in runs {
        out.push_str(&run);
    }
    out
}

/// The most threads that describe schedules, and the fewest schedules worth a thread.
const MAX_DESCRIBERS: usize = 4;
const SCHEDULES_PER_DESCRIBER: usize = 2000;

fn describe(
    out: &mut String,
    config: &Config,
    schedule: &Schedule,
    now: DateTime<Utc>,
    next: usize,
) {
    let destination = match schedule.robot() {
        Some(robot) => {
            let mention = &schedule.mention;
            let mut line = format!("robot {robot} (its group chat");
            if !mention.users.is_empty() || !mention.mobiles.is_empty() {
                let mut names = mention.users.clone();
                names.extend(mention.mobiles.iter().cloned());
                line.push_str(&format!(", mentions {}", names.join(", ")));
            }
            line.push_str("), at most once");
            line
        }
        None => format!(
            "app {} (agent {}), to {}",
            schedule.app(),
            config.app(schedule.app()).map_or(0, |a| a.agent_id),
            schedule.to.summary()
        ),
    };
    let _ = writeln!(
        out,
        "{}{}\n  cron \"{}\" in {}, {destination}, {}",
        schedule.name,
        if schedule.enabled {
            ""
        } else {
            " (disabled: not armed by run)"
        },
        schedule.cron.as_str(),
        schedule.zone.name(),
        schedule.message.msgtype(),
    );
    let slots = schedule.upcoming(now, next);
    if slots.is_empty() {
        let _ = writeln!(out, "  never fires again");
    }
    for slot in &slots {
        let local = slot.with_timezone(&schedule.zone);
        let calendar = schedule.calendar.as_ref().map_or("", |c| c.name.as_str());
        let note = if schedule.skips(*slot) {
            format!(" (skipped: a holiday in calendar {calendar})")
        } else if schedule.is_make_up(*slot) {
            format!(" (make-up workday in calendar {calendar})")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  next: {}{note}",
            local.format("%Y-%m-%d %a %H:%M:%S %:z")
        );
    }
    if let Some(first) = slots.first() {
        let _ = writeln!(
            out,
            "  renders as: {}",
            preview(&schedule.content_at(*first))
        );
    }
}

pub(super) fn preview(content: &Content) -> String {
    let one_line = |text: &str| text.replace('\n', "⏎");
    match content {
        Content::Text { content } => format!("\"{}\"", one_line(content)),
        Content::TextCard { title, url, .. } => format!("card \"{}\" → {}", one_line(title), url),
        Content::Markdown { content } => format!("markdown \"{}\"", one_line(content)),
        Content::News { articles } => {
            let titles: Vec<String> = articles
                .iter()
                .map(|a| format!("\"{}\"", one_line(&a.title)))
                .collect();
            format!("news: {} article(s): {}", articles.len(), titles.join(", "))
        }
        Content::TemplateCard { card_type, card } => format!(
            "card {} \"{}\"",
            card_type.as_str(),
            one_line(card.headline())
        ),
    }
}
