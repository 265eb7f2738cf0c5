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

/// How long one attempt of a statement may take before it is given up and tried again: a
/// network cut that drops packets would otherwise hold it for TCP's retransmissions (minutes).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

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
    /// Which database this is, whatever the URL's spelling: user, hosts, ports, database.
    identity: String,
    /// Token refreshes that may hold a connection at once (each holds one across its
    /// gettoken call): the rest of the pool stays free for claims, renewals and heartbeats.
    refreshes: tokio::sync::Semaphore,
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
        // A connection whose peer vanished is noticed within seconds, not TCP's minutes.
        config.keepalives_idle(Duration::from_secs(10));
        config.keepalives_interval(Duration::from_secs(5));
        config.keepalives_retries(3);
        config.tcp_user_timeout(Duration::from_secs(15));
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let identity = format!(
            "{}@{:?}:{:?}/{}",
            config.get_user().unwrap_or_default(),
            config.get_hosts(),
            config.get_ports(),
            config.get_dbname().unwrap_or_default()
        );
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
            .wait_timeout(Some(OUTAGE_PATIENCE))
            .build()
            .context("cannot set up the database connections")?;
        let pg = Pg {
            pool,
            health,
            identity,
            refreshes: tokio::sync::Semaphore::new(POOL_SIZE / 2),
            shown: target.url.clone(),
        };
        pg.migrate().await?;
        Ok(pg)
    }

    /// The URL, without a password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Which database this is, the same for every spelling of its URL.
    pub fn identity(&self) -> &str {
        &self.identity
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
        // Created only when missing: a role without CREATE on the schema starts once it exists.
        let known: Option<String> = tx
            .query_one("SELECT to_regclass('wecom_notify_schema')::text", &[])
            .await?
            .get(0);
        if known.is_none() {
            tx.batch_execute("CREATE TABLE wecom_notify_schema (version BIGINT NOT NULL)")
                .await?;
        }
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
                Ok(client) => match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt(client)).await {
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(e)) if is_outage(&e) => describe(&e),
                    Ok(Err(e)) => {
                        return Err(anyhow::anyhow!("database {}: {}", self.shown, describe(&e)));
                    }
                    // A cut that drops packets rather than refusing them: the attempt is given
                    // up (it may have committed; every write here may be repeated).
                    Err(_) => format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs()),
                },
                Err(e) if is_pool_outage(&e) => describe_pool(&e),
                Err(e) => {
                    return Err(anyhow::anyhow!(
                        "cannot connect to the database {}: {}",
                        self.shown,
                        describe_pool(&e)
                    ));
                }
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

/// Whether a statement failed because the server could not be reached, went away or is not
/// taking work for now (a restart, a fail-over, a network cut), not because of the statement:
/// worth another try on a new connection. A wrong password, a missing table or a type
/// mismatch is not: trying again would only hide it.
fn is_outage(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    if let Some(db) = error.as_db_error() {
        let code = db.code().code();
        // Connection exceptions (class 08); admin_shutdown, crash_shutdown, cannot_connect_now
        // (a server restarting); too_many_connections; a server that became a standby
        // (read_only_sql_transaction); a deadlock, rolled back whole.
        return code.starts_with("08")
            || matches!(
                code,
                "57P01" | "57P02" | "57P03" | "53300" | "25006" | "40P01"
            );
    }
    // No database error: an I/O error on the connection, a connect that failed or timed out.
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        source = cause.source();
    }
    error.to_string().contains("timeout")
}

/// [`is_outage`] for getting a connection from the pool.
fn is_pool_outage(error: &deadpool_postgres::PoolError) -> bool {
    match error {
        deadpool_postgres::PoolError::Backend(e) => is_outage(e),
        deadpool_postgres::PoolError::Timeout(_) => true,
        _ => false,
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
