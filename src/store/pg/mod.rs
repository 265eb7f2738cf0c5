//! PostgreSQL: the history of several daemons, on several hosts, in one database.
//!
//! The same tables, columns and statuses as on SQLite (`migrations/postgres/`), and the same
//! rules: the unique slot claim decides which daemon sends a slot, a claim names its instance
//! and holds a lease, and one gettoken per application is in flight across every node (a
//! transaction-scoped advisory lock, which a dropped connection or a pooler cannot leave held).
//!
//! Connections come from a small pool. A statement that fails because the server cannot be
//! reached (a restart, a network cut) is tried again on a new connection for a while before its
//! caller hears of it: every write here is safe to repeat (see [`Pg::retrying`]).

mod rows;
mod sends;
mod tls;

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use super::PgTarget;
use crate::config::database::{SslMode, split_sslmode};

/// The schema, one entry per folder under `migrations/postgres/`.
const MIGRATIONS: &[&str] = &[include_str!(
    "../../../migrations/postgres/01-initial/up.sql"
)];

/// Connections one process keeps: a burst's claims and finishes share them (each statement is
/// short), a token refresh holds one across its gettoken call.
const POOL_SIZE: usize = 8;

/// How long a statement keeps trying while the server cannot be reached: a restart of
/// PostgreSQL or a fail-over of its host takes seconds. Longer outages reach the caller, which
/// keeps the send's outcome in its journal (see `dispatch`).
pub const OUTAGE_PATIENCE: Duration = Duration::from_secs(20);

/// The advisory lock keys of this program (the first of the two 32-bit keys): an application's
/// token refresh, the schema's migration.
const LOCK_TOKEN: i32 = 0x5743_4e01;
const LOCK_MIGRATE: i32 = 0x5743_4e02;

/// A PostgreSQL database.
pub struct Pg {
    pool: Pool,
    /// Where outages are counted (metrics, the `database_fault` event).
    health: std::sync::Arc<crate::store::health::Health>,
    /// The URL, without a password, for messages.
    shown: String,
}

impl Pg {
    /// Connects to `target` (its password read from its source now), and brings the schema
    /// up to date.
    pub async fn open(
        target: &PgTarget,
        health: std::sync::Arc<crate::store::health::Health>,
    ) -> anyhow::Result<Pg> {
        let (url, mode) =
            split_sslmode(&target.url).map_err(|e| anyhow::anyhow!("database: {e}"))?;
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            anyhow::anyhow!("database {} is not a URL PostgreSQL takes: {e}", target.url)
        })?;
        if let Some(source) = &target.password {
            let password = source.resolve().map_err(|e| {
                anyhow::anyhow!(
                    "cannot read the database password ({}): {e}",
                    crate::config::database::password_field(source)
                )
            })?;
            config.password(password.expose());
        }
        if config.get_application_name().is_none() {
            config.application_name("wecom-notify");
        }
        config.connect_timeout(Duration::from_secs(10));
        config.keepalives_idle(Duration::from_secs(30));
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = tls::connector(mode)?;
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(15)))
            .wait_timeout(Some(Duration::from_secs(60)))
            .build()
            .context("cannot set up the database connections")?;
        let pg = Pg {
            pool,
            health,
            shown: target.url.clone(),
        };
        pg.migrate().await?;
        Ok(pg)
    }

    /// The URL, without a password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// A connection from the pool.
    async fn client(&self) -> anyhow::Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the database {}: {}",
                self.shown,
                describe_pool(&e)
            )
        })
    }

    /// Brings the schema up to date, under an advisory lock: nodes starting at once migrate
    /// one after the other, and the second finds the schema there.
    async fn migrate(&self) -> anyhow::Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&LOCK_MIGRATE])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS wecom_notify_schema (version BIGINT NOT NULL)",
        )
        .await?;
        let version: Option<i64> = tx
            .query_opt("SELECT max(version) FROM wecom_notify_schema", &[])
            .await?
            .and_then(|r| r.get(0));
        let version = version.unwrap_or(0);
        let known = MIGRATIONS.len() as i64;
        if version > known {
            anyhow::bail!(
                "database {} has schema version {version}, newer than this wecom-notify knows ({known}): upgrade this node",
                self.shown
            );
        }
        for (n, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(sql).await.with_context(|| {
                format!(
                    "cannot migrate database {} to version {}",
                    self.shown,
                    n + 1
                )
            })?;
            tx.execute(
                "INSERT INTO wecom_notify_schema (version) VALUES ($1)",
                &[&(n as i64 + 1)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Runs `attempt` on a pooled connection; while the server cannot be reached (the
    /// connection broke, or none can be made), tries again on a new one for up to
    /// [`OUTAGE_PATIENCE`]. Only for work that is safe to repeat: a write whose commit was
    /// lost with the connection may have happened (each caller says why a repeat is harmless).
    pub async fn retrying<T, F, Fut>(&self, mut attempt: F) -> anyhow::Result<T>
    where
        F: FnMut(deadpool_postgres::Object) -> Fut,
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let started = Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let error = match self.pool.get().await {
                Ok(client) => match attempt(client).await {
                    Ok(value) => return Ok(value),
                    Err(e) if is_outage(&e) => describe(&e),
                    Err(e) => {
                        return Err(anyhow::anyhow!("database {}: {}", self.shown, describe(&e)));
                    }
                },
                Err(e) => describe_pool(&e),
            };
            self.health.record(
                crate::store::health::FaultKind::Unreachable,
                format!("cannot reach the database {}: {error}", self.shown),
            );
            if started.elapsed() + pause > OUTAGE_PATIENCE {
                anyhow::bail!("cannot reach the database {}: {error}", self.shown);
            }
            tracing::debug!("the database cannot be reached ({error}); trying again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

/// Whether a statement failed because the server could not be reached or went away (not
/// because of the statement): worth another try on a new connection.
fn is_outage(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        // admin_shutdown, crash_shutdown, cannot_connect_now: a server restarting.
        Some(code) => matches!(
            code.code(),
            "57P01" | "57P02" | "57P03" | "08000" | "08003" | "08006"
        ),
        // No SQLSTATE: an I/O error on the connection.
        None => error.as_db_error().is_none(),
    }
}

/// An error in words: the server's message and its SQLSTATE, or what broke.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

fn describe_pool(error: &deadpool_postgres::PoolError) -> String {
    match error {
        deadpool_postgres::PoolError::Backend(e) => describe(e),
        other => other.to_string(),
    }
}
