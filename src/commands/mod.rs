//! The command line's commands, one file each. `main.rs` parses arguments and calls these.

pub mod check;
pub mod history;
pub mod recall;
pub mod run;
pub mod send;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{self, Config, ConfigError, Secrets};
use crate::store::Store;

/// Exit code: the command did what was asked.
pub const EXIT_OK: u8 = 0;
/// Exit code: the command ran but failed (WeCom refused, network, database).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the command line was wrong (clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the config file is missing or invalid.
pub const EXIT_CONFIG: u8 = 3;

/// The options every command shares.
#[derive(Debug, Clone)]
pub struct Globals {
    pub config: PathBuf,
    pub db: Option<PathBuf>,
}

impl Globals {
    /// Loads the config, printing every problem (and warning) on failure. On success the
    /// warnings are logged, except for `check`, which prints them in its report.
    pub fn load(&self, secrets: Secrets) -> Result<Config, ExitCode> {
        match config::load(&self.config, secrets) {
            Ok(config) => Ok(config),
            Err(error) => {
                eprintln!("error: {error}");
                if let ConfigError::Invalid { warnings, .. } = &error {
                    for warning in warnings {
                        eprintln!("warning: {warning}");
                    }
                }
                Err(ExitCode::from(EXIT_CONFIG))
            }
        }
    }

    /// The database path for `config` (see [`config::database_path`]).
    pub fn database(&self, config: Option<&Config>) -> PathBuf {
        config::database_path(
            self.db.as_deref(),
            config.and_then(|c| c.database.as_deref()),
        )
    }

    /// Opens the database, printing the reason on failure.
    pub fn open_store(&self, path: &Path) -> Result<Store, ExitCode> {
        Store::open(path).map_err(|e| {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILED)
        })
    }
}
