//! Where the history lives: a SQLite file (the default) or a PostgreSQL database.

use std::fmt;
use std::path::PathBuf;

use crate::config::secret::SecretSource;

/// The database a [`super::Store`] opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, several daemons (on several hosts) sharing it.
    Postgres(PgTarget),
}

/// A PostgreSQL database: its `postgres://` URL, which never holds a password, and where the
/// password comes from.
#[derive(Clone, PartialEq, Eq)]
pub struct PgTarget {
    /// `postgres://user@host:port/db?sslmode=...`, without a password.
    pub url: String,
    /// `database_password_env | _file | _credential`; `None`: no password (trust, peer or
    /// certificate authentication).
    pub password: Option<SecretSource>,
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTarget")
            .field("url", &self.url)
            .field(
                "password",
                &self
                    .password
                    .as_ref()
                    .map(crate::config::database::password_field),
            )
            .finish()
    }
}

impl Location {
    /// Whether `text` (a `database:` value or `--db`) names a PostgreSQL database.
    pub fn is_url(text: &str) -> bool {
        text.starts_with("postgres://") || text.starts_with("postgresql://")
    }
}

impl fmt::Display for Location {
    /// For logs: the path, or the URL (which holds no password).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(target) => f.write_str(&target.url),
        }
    }
}
