//! Test fixtures: a temporary folder with a config pointing at the fake WeCom, a database, the
//! real binary as a child process, and polling with deadlines instead of sleeps.
#![allow(dead_code)]

pub mod fake_wecom;
pub mod postgres;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use fake_wecom::{Chaos, FakeWeCom, Hold, Outcome, Received, Reply};
#[allow(unused_imports)]
pub use proxy::{ProxyMode, Seen, TestProxy};
use std::sync::Arc;
use tempfile::TempDir;
use tokio::sync::mpsc;
use wecom_notify::config::{self, Config, Secrets};
use wecom_notify::daemon;
use wecom_notify::dispatch::Dispatcher;
use wecom_notify::retry::RetryPolicy;
use wecom_notify::store::{PgTarget, Store};
use wecom_notify::wecom::Client;
use wecom_notify::wecom::token::TokenCache;

/// A retry policy with the production shape but millisecond delays, for in-process tests.
pub fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 6,
        max_elapsed: Duration::from_secs(20),
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        rate_limit_pause: Duration::from_millis(800),
        duplicate_margin: Duration::from_millis(0),
    }
}

/// The test app's credentials. The secret is distinctive so that a leak is easy to grep for.
pub const CORP: &str = "wwfakecorp000001";
pub const SECRET: &str = "S3cr3t-do-not-leak-4f9a2c";
pub const AGENT: i64 = 1000002;

pub const SIGHUP: i32 = libc::SIGHUP;
pub const SIGTERM: i32 = libc::SIGTERM;
pub const SIGKILL: i32 = libc::SIGKILL;
/// How long a test waits for something that should take a few seconds.
pub const WAIT: Duration = Duration::from_secs(20);

/// A schedule firing every 2 seconds whose body names its slot, so that WeCom's duplicate check
/// can never hide a second send of the same slot.
pub fn every_two_seconds(name: &str, text: &str) -> String {
    every(name, "*/2 * * * * *", text, "duplicate_check_interval: 1")
}

/// A schedule item with `cron`, a body naming its slot, and `extra` keys (`a: 1, b: 2`).
pub fn every(name: &str, cron: &str, text: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        "  - {{ name: {name}, cron: '{cron}', to: {{ users: [u] }}{extra}, text: {{ content: '{text} {{{{ slot:%H:%M:%S }}}}' }} }}\n"
    )
}

/// A 6-field cron naming the one instant `at` (whole seconds) in Asia/Shanghai, the zone of
/// [`Env::write_schedules`].
pub fn cron_at(at: chrono::DateTime<chrono::Utc>) -> String {
    use chrono::Timelike;
    let local = at.with_timezone(&chrono_tz::Asia::Shanghai);
    format!(
        "{} {} {} {} {} *",
        local.second(),
        local.minute(),
        local.hour(),
        chrono::Datelike::day(&local),
        chrono::Datelike::month(&local)
    )
}

/// The environment variables that choose a proxy.
pub const PROXY_VARS: [&str; 8] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Sleeps until the wall clock reads `at` (at once if it is past).
pub async fn sleep_until(at: chrono::DateTime<chrono::Utc>) {
    if let Ok(wait) = (at - chrono::Utc::now()).to_std() {
        tokio::time::sleep(wait).await;
    }
}

/// Makes a named pipe at `path`.
pub fn make_fifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_wecom-notify")
}

/// The daemon running inside the test process (`wecom_notify::daemon::run`), for tests that
/// need to reach into it: a short database busy timeout, a fast retry policy, its dispatcher.
pub struct InProcess {
    pub dispatcher: Arc<Dispatcher>,
    reload: mpsc::UnboundedSender<()>,
    stop: mpsc::UnboundedSender<()>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    pub fn reload(&self) {
        self.reload.send(()).expect("daemon running");
    }

    /// Waits until a send is recorded `sent`.
    pub async fn wait_first_sent(&self, env: &Env) {
        eventually(WAIT, "a first recorded send", || {
            env.count("SELECT count(*) FROM sends WHERE status = 'sent'") >= 1
        })
        .await;
    }

    /// Makes the daemon's database connection refuse every write (SQLITE_READONLY, as on a
    /// file system remounted read-only), or take writes again.
    pub async fn refuse_writes(&self, refuse: bool) {
        self.dispatcher
            .store()
            .call(move |c| c.pragma_update(None, "query_only", refuse))
            .await
            .expect("query_only");
    }

    /// Waits until `n` sends wait for the database (the fake counts a delivery before the
    /// sender has its answer); returns the unrecorded-sends file that holds them meanwhile.
    pub async fn wait_unrecorded(&self, n: usize) -> PathBuf {
        eventually(WAIT, "sends kept until the database takes them", || {
            self.dispatcher.unwritten_count() >= n
        })
        .await;
        self.dispatcher
            .store()
            .spill_path()
            .expect("the claims and outcomes are in the unrecorded-sends file meanwhile")
    }

    /// Stops the daemon gracefully and waits for it.
    pub async fn stop(self) {
        self.stop.send(()).expect("daemon running");
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the daemon stops")
            .expect("join")
            .expect("the daemon ran");
    }

    /// Ends the daemon as a crash would: nothing more runs, nothing is flushed, and once the
    /// sends in flight are done every file it held is closed.
    pub async fn crash(self) {
        self.handle.abort();
        let _ = self.handle.await;
        let dispatcher = self.dispatcher;
        eventually(WAIT, "the crashed daemon's sends to end", || {
            Arc::strong_count(&dispatcher) == 1
        })
        .await;
        drop(dispatcher);
    }
}

/// Turns `async fn NAME(env: Env) { … }` into two tests, `NAME::sqlite` on a SQLite file and
/// `NAME::postgres` on a throwaway PostgreSQL server (which says it was skipped where
/// PostgreSQL is not installed): the same guarantee, checked on both backends.
macro_rules! on_both_backends {
    ($(#[$meta:meta])* async fn $name:ident($env:ident: Env) $body:block) => {
        $(#[$meta])*
        mod $name {
            use super::*;

            async fn run($env: Env) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(Env::new().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(server) = crate::support::postgres::Postgres::start() else {
                    return;
                };
                run(Env::on_postgres(&std::sync::Arc::new(server)).await).await
            }
        }
    };
}

/// A temporary folder holding a config, a secret file and a database, and the fake WeCom.
pub struct Env {
    pub dir: TempDir,
    pub fake: FakeWeCom,
    /// The database (`wecom-notify.db` in the folder unless a test moved it).
    db: PathBuf,
    /// Instead, a database on a throwaway PostgreSQL server, and its URL.
    pg: Option<(Arc<postgres::Postgres>, String)>,
}

impl Env {
    /// A fake WeCom that knows the test app, and an empty folder.
    pub async fn new() -> Env {
        let fake = FakeWeCom::start().await;
        fake.add_app(CORP, SECRET, AGENT);
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("ops.secret"), format!("{SECRET}\n")).expect("secret file");
        let db = dir.path().join("wecom-notify.db");
        Env {
            dir,
            fake,
            db,
            pg: None,
        }
    }

    /// [`Env::new`] with a fresh database on `server` instead of a SQLite file: the binary's
    /// `--db` is its URL, and [`Env::count`] and [`Env::column`] read it with psql.
    pub async fn on_postgres(server: &Arc<postgres::Postgres>) -> Env {
        let mut env = Env::new().await;
        env.pg = Some((server.clone(), server.create_database()));
        env
    }

    /// What `--db` says: the SQLite file, or the PostgreSQL URL.
    pub fn db_arg(&self) -> std::ffi::OsString {
        match &self.pg {
            Some((_, url)) => url.into(),
            None => self.db_path().into(),
        }
    }

    /// The rows of `sql` on the PostgreSQL database, one line each (columns joined by `|`,
    /// NULL as an empty string); no rows while the daemon has not created the tables yet.
    fn psql_rows(server: &postgres::Postgres, url: &str, sql: &str) -> Vec<String> {
        let output = server
            .psql_command(postgres::SUPERUSER, url)
            .args(["-c", sql])
            .output()
            .expect("run psql");
        if !output.status.success() {
            let error = String::from_utf8_lossy(&output.stderr);
            if error.contains("does not exist") {
                return Vec::new();
            }
            panic!("{sql}: {error}");
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Keeps the database at `path` instead (on a small file system, say).
    pub fn move_db_to(&mut self, path: PathBuf) {
        self.db = path;
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("schedules.yaml")
    }

    pub fn db_path(&self) -> PathBuf {
        self.db.clone()
    }

    /// The `apps:` section for the test app, pointing at the fake.
    pub fn apps_yaml(&self) -> String {
        format!(
            "apps:\n  ops:\n    corp_id: {CORP}\n    agent_id: {AGENT}\n    secret_file: ops.secret\n    api_base: {}\n",
            self.fake.base_url()
        )
    }

    /// Writes a config with the test app and these `schedules:` entries (YAML list items).
    pub fn write_schedules(&self, schedules: &str) {
        self.write_config(&format!(
            "timezone: Asia/Shanghai\n{}schedules:\n{schedules}",
            self.apps_yaml()
        ));
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("write config");
    }

    /// Runs the binary to completion with `--config` and `--db` of this folder.
    pub async fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().await.expect("run wecom-notify")
    }

    /// [`Env::cli`], failing the test unless the command succeeds.
    pub async fn cli_ok(&self, args: &[&str]) -> Output {
        let output = self.cli(args).await;
        assert!(output.status.success(), "{args:?}: {}", text(&output));
        output
    }

    /// The binary with this folder's config and database, logs at debug level.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        self.command_with_config(&self.config_path(), args)
    }

    /// [`Env::command`] with another config file (a second node's, with its own `instance:`).
    pub fn command_with_config(&self, config: &Path, args: &[&str]) -> tokio::process::Command {
        self.command_on(config, Some(self.db_arg()), args)
    }

    /// The binary on `config`, with `--db db` when given (else the config's database), in
    /// this folder's environment.
    pub fn command_on(
        &self,
        config: &Path,
        db: Option<std::ffi::OsString>,
        args: &[&str],
    ) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(binary());
        command.arg("--config").arg(config);
        if let Some(db) = db {
            command.arg("--db").arg(db);
        }
        command
            .args(args)
            .env("RUST_LOG", "debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("STATE_DIRECTORY")
            .env_remove("CREDENTIALS_DIRECTORY")
            .kill_on_drop(true);
        if self.pg.is_some() {
            // A PostgreSQL database's unrecorded-sends files go to the state directory: this
            // folder, not the working directory of the test run.
            command.env("STATE_DIRECTORY", self.dir.path());
        }
        // The test runner's own proxy settings must not route the fake's calls; tests that
        // want a proxy set these themselves.
        for name in PROXY_VARS {
            command.env_remove(name);
        }
        command
    }

    /// Starts `run` in the background, its stderr going to a file.
    pub fn spawn_daemon(&self, extra: &[&str]) -> Daemon {
        self.spawn_daemon_with(extra, |_| {})
    }

    pub fn spawn_daemon_with(
        &self,
        extra: &[&str],
        customize: impl FnOnce(&mut tokio::process::Command),
    ) -> Daemon {
        self.spawn_daemon_from(&self.config_path(), extra, customize)
    }

    /// [`Env::spawn_daemon_with`] on the config file `config`.
    pub fn spawn_daemon_from(
        &self,
        config: &Path,
        extra: &[&str],
        customize: impl FnOnce(&mut tokio::process::Command),
    ) -> Daemon {
        let log = self.path(&format!("daemon-{}.log", rand_suffix()));
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        let mut command = self.command_with_config(config, &args);
        command.stdout(Stdio::null()).stderr(Stdio::from(stderr));
        customize(&mut command);
        let child = command.spawn().expect("spawn daemon");
        Daemon { child, log }
    }

    /// The config as the library validates it.
    pub fn load(&self) -> Config {
        config::load(&self.config_path(), Secrets::Required).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The library's sender on this folder's database, for in-process tests.
    pub fn dispatcher(&self, policy: RetryPolicy) -> Arc<Dispatcher> {
        let store = Store::open(&self.db_path()).expect("open store");
        let client = Client::new().expect("http client");
        let tokens = TokenCache::new(store.clone(), client.clone());
        Arc::new(Dispatcher::new(store, client, tokens, policy, false))
    }

    /// Runs the daemon in this process on this folder's config and database.
    pub fn start_in_process(&self, policy: RetryPolicy, busy_timeout: Duration) -> InProcess {
        self.start_in_process_with(self.load(), policy, busy_timeout)
    }

    /// [`Env::start_in_process`] with a config the test built or changed.
    pub fn start_in_process_with(
        &self,
        config: Config,
        policy: RetryPolicy,
        busy_timeout: Duration,
    ) -> InProcess {
        // Every wait that can goes through tokio-cron-scheduler, so that in-process tests
        // exercise the wall-clock alarm that the binary keeps for waits over a minute.
        let options = daemon::Options {
            stop_timeout: Duration::from_secs(20),
            scheduler_min_wait: Duration::ZERO,
            ..Default::default()
        };
        self.start_in_process_with_options(config, policy, busy_timeout, options)
    }

    /// [`Env::start_in_process_with`] with the daemon's options too.
    pub fn start_in_process_with_options(
        &self,
        config: Config,
        policy: RetryPolicy,
        busy_timeout: Duration,
        options: daemon::Options,
    ) -> InProcess {
        let store = match &self.pg {
            // (A multi-threaded test runtime: the connection is made on this thread.)
            Some((_, url)) => tokio::task::block_in_place(|| {
                let target = PgTarget {
                    url: url.clone(),
                    password: None,
                };
                // Its unrecorded-sends files in the test's folder, not the working directory.
                tokio::runtime::Handle::current()
                    .block_on(Store::open_postgres(&target, self.dir.path()))
                    .expect("open store")
            }),
            None => {
                Store::open_with_busy_timeout(&self.db_path(), busy_timeout).expect("open store")
            }
        };
        let client = Client::new().expect("http client");
        let tokens = TokenCache::new(store.clone(), client.clone());
        let dispatcher = Arc::new(
            Dispatcher::new(store, client, tokens, policy, false).sending_unrecorded(true),
        );
        let (reload, reloads) = mpsc::unbounded_channel();
        let (stop, stops) = mpsc::unbounded_channel();
        let handle = tokio::spawn(daemon::run(
            config,
            dispatcher.clone(),
            options,
            daemon::Control { reloads, stops },
        ));
        InProcess {
            dispatcher,
            reload,
            stop,
            handle,
        }
    }

    /// Starts `run` and waits until WeCom (the fake) holds one of its sends.
    pub async fn spawn_daemon_with_a_held_send(&self) -> (Daemon, Hold) {
        let hold = self.fake.hold_sends();
        let daemon = self.spawn_daemon(&[]);
        eventually(WAIT, "a send held by WeCom", || {
            self.fake.sends_waiting() >= 1
        })
        .await;
        (daemon, hold)
    }

    /// Runs `sql` (statements both backends read alike) on the test database, as an operator
    /// with its own client would.
    pub fn execute(&self, sql: &str) {
        match &self.pg {
            Some((server, url)) => {
                server.psql(url, sql);
            }
            None => self
                .db()
                .execute_batch(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        }
    }

    /// Whether the database is a PostgreSQL one ([`Env::on_postgres`]).
    pub fn is_postgres(&self) -> bool {
        self.pg.is_some()
    }

    /// A connection to the test database.
    pub fn db(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open(self.db_path()).expect("open db");
        conn.busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        conn
    }

    /// `SELECT count(*) ...` shorthand: 0 before the daemon has created the database, and a
    /// failed test on any other error (a typo must not read as "no such rows").
    pub fn count(&self, sql: &str) -> i64 {
        if let Some((server, url)) = &self.pg {
            return match Env::psql_rows(server, url, sql).first() {
                Some(n) if !n.is_empty() => n.parse().unwrap_or_else(|e| panic!("{sql}: {n}: {e}")),
                _ => 0,
            };
        }
        if !self.db_path().exists() {
            return 0;
        }
        match self.db().query_row(sql, [], |r| r.get(0)) {
            Ok(n) => n,
            Err(e) if e.to_string().contains("no such table") => 0,
            Err(e) => panic!("{sql}: {e}"),
        }
    }

    /// The `scheduled_at` of every row of `schedule`, in order.
    pub fn slots(&self, schedule: &str) -> Vec<chrono::DateTime<chrono::Utc>> {
        self.column(&format!(
            "SELECT scheduled_at FROM sends WHERE schedule = '{schedule}' ORDER BY scheduled_at"
        ))
        .iter()
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s)
                .expect("timestamp")
                .to_utc()
        })
        .collect()
    }

    /// Asserts that the rows of `schedule` are consecutive slots `step` seconds apart: none
    /// missing, none doubled.
    pub fn assert_contiguous(&self, schedule: &str, step: i64) {
        let slots = self.slots(schedule);
        assert!(
            slots
                .windows(2)
                .all(|w| (w[1] - w[0]).num_seconds() == step),
            "a slot of {schedule} is missing or doubled: {slots:?}"
        );
    }

    /// How often the fake delivered each body (each test body names its schedule and slot).
    pub fn deliveries(&self) -> std::collections::BTreeMap<String, usize> {
        let mut count = std::collections::BTreeMap::new();
        for message in self.fake.messages() {
            *count.entry(message.raw).or_default() += 1;
        }
        count
    }

    /// No body was delivered twice, and every row that says it was sent was delivered.
    #[track_caller]
    pub fn assert_sent_rows_delivered_once(&self) {
        let delivered = self.deliveries();
        let twice: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "a body was delivered twice: {twice:?}");
        for payload in self.column("SELECT payload FROM sends WHERE status = 'sent'") {
            assert!(
                delivered.contains_key(&payload),
                "sent but not delivered: {payload}"
            );
        }
    }

    /// Text messages delivered by the fake, in arrival order.
    pub fn texts(&self) -> Vec<String> {
        self.fake
            .messages()
            .iter()
            .map(|m| {
                m.json["text"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    /// First column of every row, as text.
    pub fn column(&self, sql: &str) -> Vec<String> {
        if let Some((server, url)) = &self.pg {
            return Env::psql_rows(server, url, sql);
        }
        let conn = self.db();
        let mut statement = conn.prepare(sql).expect("prepare");
        statement
            .query_map([], |r| r.get::<_, rusqlite::types::Value>(0))
            .expect("query")
            .map(|v| match v.expect("row") {
                rusqlite::types::Value::Null => "NULL".to_string(),
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Real(f) => f.to_string(),
                rusqlite::types::Value::Text(t) => t,
                rusqlite::types::Value::Blob(_) => "<blob>".to_string(),
            })
            .collect()
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// The daemon as a child process.
pub struct Daemon {
    pub child: tokio::process::Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.id().expect("daemon still running") as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we spawned and a valid signal number.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({signal}) failed");
    }

    /// Waits for the process to exit, failing the test after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!(
                "daemon did not exit within {timeout:?}; log:\n{}",
                self.logs()
            ),
        }
    }

    /// SIGTERM, and the exit code must be 0.
    pub async fn stop(&mut self) {
        self.signal(SIGTERM);
        let status = self.wait_exit(WAIT).await;
        assert_eq!(status.code(), Some(0), "exit code; log:\n{}", self.logs());
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `state` every 20 ms until it says `Ok`; after `timeout`, fails the test with the
    /// last state it described and the daemon's log.
    pub async fn eventually(
        &self,
        timeout: Duration,
        mut state: impl FnMut() -> Result<(), String>,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let Err(why) = state() else { return };
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?}: {why}; log:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) {
        let log = self.log.clone();
        let needle = needle.to_string();
        eventually(timeout, &format!("log line containing {needle:?}"), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains(&needle)
        })
        .await;
    }
}

/// A tmpfs of a few MiB mounted on a folder for the life of the value (a disk that can be
/// filled). Needs root, as CI runs; the mount is lazily undone on drop.
pub struct SmallDisk {
    pub path: PathBuf,
}

impl SmallDisk {
    pub fn mount(path: PathBuf, mib: u32) -> SmallDisk {
        std::fs::create_dir_all(&path).expect("mount point");
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a {mib} MiB tmpfs on {} failed ({status}): this test needs root (CAP_SYS_ADMIN), as CI has",
            path.display()
        );
        SmallDisk { path }
    }

    /// Writes a file until the disk is full; returns it (delete it to free the disk).
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join(format!("filler-{}", rand_suffix()));
        let mut file = std::fs::File::create(&filler).expect("filler");
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    if chunk.len() == 512 {
                        break;
                    }
                    chunk.truncate(chunk.len() / 2);
                }
                Err(e) => panic!("fill {}: {e}", filler.display()),
            }
        }
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Polls `condition` every 20 ms until it holds, failing the test with `what` after `timeout`.
pub async fn eventually(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads a file that must exist.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// stdout + stderr of a finished command, for assertion messages.
pub fn text(output: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A wall clock the test steps, for the binary under libfaketime (Debian package `faketime`):
/// the offset lives in a file the library reads on every call; the monotonic clock stays real.
pub struct FakeClock {
    file: PathBuf,
    library: PathBuf,
}

impl FakeClock {
    /// A clock at the real time, in `env`'s folder.
    pub fn new(env: &Env) -> FakeClock {
        let library = [
            "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
            "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
            "/usr/lib/faketime/libfaketime.so.1",
            "/usr/local/lib/faketime/libfaketime.so.1",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("libfaketime is needed for this test (apt-get install faketime)")
        });
        let clock = FakeClock {
            file: env.path("faketime"),
            library,
        };
        clock.set_offset(0);
        clock
    }

    /// Steps the binary's wall clock to the real time plus `seconds`.
    pub fn set_offset(&self, seconds: i64) {
        let spec = format!("{seconds:+}\n");
        let staged = self.file.with_extension("new");
        std::fs::write(&staged, spec).expect("write faketime file");
        std::fs::rename(&staged, &self.file).expect("rename faketime file");
    }

    /// Makes `command` run on this clock.
    pub fn apply(&self, command: &mut tokio::process::Command) {
        command
            .env("LD_PRELOAD", &self.library)
            .env("FAKETIME_TIMESTAMP_FILE", &self.file)
            .env("FAKETIME_NO_CACHE", "1")
            .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            .env_remove("FAKETIME");
    }
}
