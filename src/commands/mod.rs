//! The command line's commands, one file each. `main.rs` parses arguments and calls these.

pub mod check;
mod check_json;
pub mod generate;
pub mod history;
pub mod recall;
pub mod run;
pub mod send;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};

use crate::config::{self, Config, ConfigError, Secrets};
use crate::shown::shown;
use crate::store::{Location, Store};

/// Exit code: the command did what was asked.
pub const EXIT_OK: u8 = 0;
/// Exit code: the command ran but failed (WeCom refused, network, database).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the command line was wrong (clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the config file is missing or invalid.
pub const EXIT_CONFIG: u8 = 3;
/// Exit code: `recall` found another recall of the row in progress, and did nothing.
pub const EXIT_IN_PROGRESS: u8 = 4;

/// The options every command shares.
#[derive(Debug, Clone)]
pub struct Globals {
    pub config: PathBuf,
    /// `--db`: a SQLite file or a `postgres://` URL.
    pub db: Option<OsString>,
    /// `--now`: the instant `check` and `history` take as now, so that a test can compute what
    /// they must print from the very instant they used. `None`: the clock.
    pub now: Option<DateTime<Utc>>,
}

/// `--now`: an RFC 3339 timestamp.
pub fn parse_instant(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|at| at.with_timezone(&Utc))
        .map_err(|e| {
            format!("{e}; expected an RFC 3339 timestamp such as 2026-11-30T09:30:00+08:00")
        })
}

impl Globals {
    /// The instant `check` and `history` take as now: `--now` when given, else the clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.now.unwrap_or_else(Utc::now)
    }

    /// Loads the config, printing every problem (and warning) on failure. On success the
    /// warnings are logged, except for `check`, which prints them in its report.
    pub fn load(&self, secrets: Secrets) -> Result<Config, ExitCode> {
        self.load_at(secrets, Utc::now())
    }

    /// [`Globals::load`], validating the slots after `now` (see [`config::load_at`]).
    pub fn load_at(&self, secrets: Secrets, now: DateTime<Utc>) -> Result<Config, ExitCode> {
        Self::loaded(config::load_at(&self.config, secrets, now))
    }

    /// [`Globals::load`] for the daemon: the config keeps what its reloads take over (see
    /// [`config::load_to_run`]).
    pub fn load_to_run(&self, secrets: Secrets) -> Result<Config, ExitCode> {
        Self::loaded(config::load_to_run(&self.config, secrets, None))
    }

    fn loaded(loaded: Result<Config, ConfigError>) -> Result<Config, ExitCode> {
        match loaded {
            Ok(config) => Ok(config),
            Err(error) => {
                // One line per problem: the config's own text inside them is escaped.
                for (n, line) in error.to_string().lines().enumerate() {
                    let lead = match n {
                        0 => "error: ",
                        _ if line.starts_with("  - ") => "",
                        // A problem quoting config text that holds a line break.
                        _ => "    ",
                    };
                    eprintln!("{lead}{}", shown(line));
                }
                if let ConfigError::Invalid { warnings, .. } = &error {
                    for warning in warnings {
                        eprintln!("warning: {}", shown(&warning.to_string()));
                    }
                }
                Err(ExitCode::from(EXIT_CONFIG))
            }
        }
    }

    /// The database for `config` (see [`config::database_location`]), printing the reason
    /// when `--db` cannot be used (a URL holding a password): that is the config's exit code.
    pub fn database(&self, config: Option<&Config>) -> Result<Location, ExitCode> {
        config::database_location(self.db.as_deref(), config.and_then(|c| c.database.as_ref()))
            .map_err(|message| {
                eprintln!("error: --db: {}", shown(&message));
                ExitCode::from(EXIT_CONFIG)
            })
    }

    /// Opens the database, printing the reason on failure.
    pub async fn open_store(&self, location: &Location) -> Result<Store, ExitCode> {
        Store::open_location(location).await.map_err(|e| {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILED)
        })
    }

    /// [`Globals::database`], then [`Globals::open_store`].
    pub async fn open_database(&self, config: Option<&Config>) -> Result<Store, ExitCode> {
        self.open_store(&self.database(config)?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn now_takes_an_rfc_3339_timestamp_in_any_offset() {
        let at = Utc.with_ymd_and_hms(2026, 11, 30, 1, 30, 0).unwrap();
        assert_eq!(parse_instant("2026-11-30T09:30:00+08:00"), Ok(at));
        assert_eq!(parse_instant("2026-11-30T01:30:00Z"), Ok(at));
        assert_eq!(
            parse_instant("2026-11-30T01:30:00.25Z"),
            Ok(at + chrono::Duration::milliseconds(250))
        );
        for bad in ["", "2026-11-30", "2026-11-30 09:30", "now", "1764466200"] {
            let error = parse_instant(bad).unwrap_err();
            assert!(error.contains("RFC 3339"), "{bad}: {error}");
        }
    }
}
