//! A throwaway PostgreSQL server that a test starts itself: its own data directory under `/tmp`,
//! its own free port on 127.0.0.1, stopped and deleted when the value is dropped. Tests run in
//! parallel (threads under `cargo test`, processes under `cargo nextest`), so nothing is shared:
//! not a port, not a directory, not the machine's own cluster (Debian's `main` on 5432).
//!
//! The server trusts the superuser `wecom` on every connection, so that tests can read rows as
//! an auditor would without a password. The role `wecom_pw` must give its password, so that
//! tests can check what the daemon does with one.
//!
//! PostgreSQL's tools refuse to run as root. As root (CI runs so) they run as the user
//! `postgres` through `runuser`, on a data directory that user owns. psql is only a TCP client
//! and runs as the current user.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tempfile::TempDir;

/// Set to `1` (CI does) to fail, not skip, the tests when PostgreSQL is not installed.
pub const REQUIRE_VAR: &str = "WECOM_NOTIFY_REQUIRE_POSTGRES";
/// The superuser made by initdb. It logs in without a password.
pub const SUPERUSER: &str = "wecom";
/// The role that logs in with a password only.
pub const PASSWORD_ROLE: &str = "wecom_pw";
/// Where the versioned installs live on Debian: `/usr/lib/postgresql/<major>/bin`.
const INSTALL_ROOT: &str = "/usr/lib/postgresql";
/// The prefix of every server's folder in `/tmp`, so that abandoned ones can be found.
const DIR_PREFIX: &str = "wecom-notify-pg-";
/// The file in a server's folder that names the test process that owns it.
const OWNER_FILE: &str = "owner.pid";
/// The settings file the harness writes, included from postgresql.conf.
const SETTINGS_FILE: &str = "wecom-notify-test.conf";
/// How long pg_ctl waits for a start or stop, in seconds. Generous: CI machines can be slow.
const PG_CTL_WAIT: &str = "60";
/// How many free ports a start tries. Another process can take a port between our probe and
/// the server's bind; a new port then does.
const PORT_ATTEMPTS: usize = 5;

/// A running PostgreSQL server owned by the test. Dropping it stops the server (also when the
/// test panics) and deletes its data.
pub struct Postgres {
    /// The server's folder: the owner file and the data directory.
    dir: TempDir,
    /// The data directory (`-D`), which also holds the Unix socket and `server.log`.
    data: PathBuf,
    /// The folder of initdb, pg_ctl and psql.
    bin: PathBuf,
    /// The TCP port on 127.0.0.1. It stays the same across restarts.
    port: u16,
    /// The password of [`PASSWORD_ROLE`].
    password: String,
    /// True when the server's tools run as the user `postgres` (the test runs as root).
    as_postgres: bool,
}

impl Postgres {
    /// Starts a new server, or returns `None` (after saying why on stderr) when PostgreSQL is
    /// not installed. With `WECOM_NOTIFY_REQUIRE_POSTGRES=1` a missing install fails the test
    /// instead: CI must not pass by skipping. Any other failure panics with the tools' output
    /// and the server log.
    pub fn start() -> Option<Postgres> {
        let began = Instant::now();
        let Some(bin) = find_bin_dir() else {
            if std::env::var(REQUIRE_VAR).as_deref() == Ok("1") {
                panic!(
                    "no PostgreSQL installed (no {INSTALL_ROOT}/*/bin with initdb and pg_ctl), \
                     and {REQUIRE_VAR}=1 says these tests must run: install the postgresql package"
                );
            }
            eprintln!(
                "skipped: no PostgreSQL installed ({INSTALL_ROOT}/*/bin/initdb); install the postgresql package to run this test"
            );
            return None;
        };
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let owner = as_postgres.then(postgres_user);
        reap_abandoned(&bin, as_postgres);

        // tempfile makes the folder 0700; the user postgres must be able to pass through it.
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir_in("/tmp")
            .expect("a temp dir for PostgreSQL");
        set_mode(dir.path(), 0o755);
        std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
            .expect("write the owner file");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("create the data directory");
        // initdb wants the data directory to be its user's alone.
        set_mode(&data, 0o700);
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&data, Some(uid), Some(gid)).expect("chown the data dir");
        }

        let mut server = Postgres {
            dir,
            data,
            bin,
            port: 0,
            password: random_password(),
            as_postgres,
        };
        server.initdb(owner);
        server.listen_on_a_free_port(owner);
        server.psql_ok(
            "postgres",
            &[&format!(
                "CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{}'",
                server.password
            )],
        );
        eprintln!(
            "postgres: started on 127.0.0.1:{} in {:.1} s (data in {})",
            server.port,
            began.elapsed().as_secs_f64(),
            server.data.display()
        );
        Some(server)
    }

    /// The TCP port the server listens on at 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory, which holds `server.log`.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server log so far, for a test's failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("server.log")).unwrap_or_default()
    }

    /// Creates an empty database with a name no other in this process has (`wn_<n>_<pid>`),
    /// owned by `wecom`. The password role may use it fully: it gets every right on the
    /// database and on its `public` schema (since PostgreSQL 15 only the owner may create
    /// there). Returns the database's URL for `wecom`.
    pub fn create_database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "wn_{}_{}",
            NEXT.fetch_add(1, Ordering::Relaxed),
            std::process::id()
        );
        // Each -c is its own transaction: CREATE DATABASE cannot run inside one.
        self.psql_ok(
            "postgres",
            &[
                &format!("CREATE DATABASE {name} OWNER {SUPERUSER}"),
                &format!("GRANT ALL ON DATABASE {name} TO {PASSWORD_ROLE}"),
            ],
        );
        self.psql_ok(
            &name,
            &[&format!("GRANT ALL ON SCHEMA public TO {PASSWORD_ROLE}")],
        );
        self.url_as(SUPERUSER, &name)
    }

    /// The role that must give a password, and its password.
    pub fn password_role(&self) -> (&str, &str) {
        (PASSWORD_ROLE, &self.password)
    }

    /// The URL of the same database (a URL or a bare name) for `user`, without a password.
    pub fn url_as(&self, user: &str, database_url: &str) -> String {
        let name = database_name(database_url);
        format!(
            "postgres://{user}@127.0.0.1:{}/{name}?sslmode=disable",
            self.port
        )
    }

    /// The URL of the same database (a URL or a bare name) for the password role, with its
    /// password. The password is alphanumeric, so it needs no escaping.
    pub fn password_url(&self, database_url: &str) -> String {
        let name = database_name(database_url);
        format!(
            "postgres://{PASSWORD_ROLE}:{}@127.0.0.1:{}/{name}?sslmode=disable",
            self.password, self.port
        )
    }

    /// Runs `sql` (one or more statements) on a database (its URL or its name) as `wecom`,
    /// and returns the rows as psql prints them unaligned: one per line, columns joined by
    /// `|`, no header, no command tags. Fails the test with psql's error on any error.
    pub fn psql(&self, url_or_db: &str, sql: &str) -> String {
        self.psql_ok(database_name(url_or_db), &[sql])
    }

    /// psql as `user` on a database (its URL or its name), ready for `-c` and a password:
    /// quiet, unaligned, tuples only, stopping at the first error, never prompting (`-w`).
    /// The caller's PG* variables and password file are not used, so that only what the test
    /// sets (`PGPASSWORD`, say) counts.
    pub fn psql_command(&self, user: &str, url_or_db: &str) -> Command {
        let mut command = Command::new(self.tool("psql"));
        self.isolate(&mut command);
        command
            .args(["-X", "-q", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", user, "-d", database_name(url_or_db)])
            .env("PGPASSFILE", self.dir.path().join("no-pgpass"))
            .env("PGCONNECT_TIMEOUT", "20")
            .stdin(Stdio::null());
        command
    }

    /// Stops the server cleanly (`-m fast`: sessions are ended, then a checkpoint).
    pub fn stop(&self) {
        self.pg_ctl_ok(&["-m", "fast", "stop"]);
    }

    /// Starts the stopped server again on the same data directory and port.
    pub fn start_again(&self) {
        self.start_server()
            .unwrap_or_else(|why| panic!("starting PostgreSQL again failed: {why}"));
    }

    /// Stops the server cleanly and starts it again.
    pub fn restart(&self) {
        // -l again: without it the new server writes to pg_ctl's output, which psql and
        // Command::output would then wait on forever.
        let log = self.log_path();
        self.pg_ctl_ok(&["-m", "fast", "-l", &log, "restart"]);
    }

    /// Stops the server as a crash would (`-m immediate`: no checkpoint, every process ends at
    /// once). The next start recovers from the write-ahead log.
    pub fn kill(&self) {
        self.pg_ctl_ok(&["-m", "immediate", "stop"]);
    }

    /// Runs initdb, then makes the password role need its password (pg_hba.conf is read top
    /// down, so its lines go before initdb's trust lines).
    fn initdb(&self, owner: Option<(u32, u32)>) {
        let data = self.data.to_string_lossy().into_owned();
        // --no-sync only skips flushing initdb's own files; the server still fsyncs as usual,
        // so a crash-ish restart loses nothing it said it committed.
        let output = self.run_tool(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        if !output.status.success() {
            panic!("initdb failed:\n{}", super::text(&output));
        }
        let hba = self.data.join("pg_hba.conf");
        let trusting = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        let password = format!(
            "# wecom-notify tests: {PASSWORD_ROLE} must give its password.\n\
             host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n\
             local all {PASSWORD_ROLE} scram-sha-256\n"
        );
        self.write_server_file(&hba, &format!("{password}{trusting}"), owner);
        let conf = self.data.join("postgresql.conf");
        let mut settings = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        settings.push_str(&format!("\ninclude '{SETTINGS_FILE}'\n"));
        self.write_server_file(&conf, &settings, owner);
    }

    /// Picks a free port, writes the settings, and starts the server; tries another port when
    /// someone took this one first.
    fn listen_on_a_free_port(&mut self, owner: Option<(u32, u32)>) {
        let mut why = String::new();
        for _ in 0..PORT_ATTEMPTS {
            self.port = free_port();
            // fsync stays on: tests restart and kill the server and expect their rows back.
            // After a crash the server first flushes its whole data directory; one syncfs(2)
            // does that as durably as an fsync per file, and took a start after kill() on
            // this machine from about 5 s to under 1 s.
            let settings = format!(
                "listen_addresses = '127.0.0.1'\n\
                 port = {}\n\
                 unix_socket_directories = '{}'\n\
                 max_connections = 200\n\
                 log_min_messages = warning\n\
                 recovery_init_sync_method = syncfs\n",
                self.port,
                self.data.to_string_lossy().replace('\'', "''")
            );
            self.write_server_file(&self.data.join(SETTINGS_FILE), &settings, owner);
            match self.start_server() {
                Ok(()) => return,
                Err(e) if e.contains("could not bind") || e.contains("could not create any") => {
                    why = e;
                }
                Err(e) => panic!("starting PostgreSQL failed: {e}"),
            }
        }
        panic!("starting PostgreSQL failed on {PORT_ATTEMPTS} ports: {why}");
    }

    /// `pg_ctl start`, waiting until the server takes connections. On failure, says what
    /// pg_ctl said and what the server logged during this start.
    fn start_server(&self) -> Result<(), String> {
        let log = self.log_path();
        let logged_before = self.log().len();
        let output = self.pg_ctl(&["-l", &log, "start"]);
        if output.status.success() {
            return Ok(());
        }
        let log = self.log();
        let new = log.get(logged_before..).unwrap_or(&log);
        Err(format!(
            "{}\nserver.log (this start):\n{}",
            super::text(&output),
            tail(new, 40)
        ))
    }

    /// pg_ctl on this data directory with `args`, waiting up to a minute.
    fn pg_ctl(&self, args: &[&str]) -> Output {
        let data = self.data.to_string_lossy().into_owned();
        let mut all = vec!["-D", &data, "-w", "-t", PG_CTL_WAIT];
        all.extend_from_slice(args);
        self.run_tool("pg_ctl", &all)
    }

    /// [`Postgres::pg_ctl`], failing the test with its output and the log's end on an error.
    fn pg_ctl_ok(&self, args: &[&str]) {
        let output = self.pg_ctl(args);
        if !output.status.success() {
            panic!(
                "pg_ctl {args:?} failed:\n{}\nserver.log:\n{}",
                super::text(&output),
                tail(&self.log(), 40)
            );
        }
    }

    /// psql as `wecom` with one `-c` per statement; returns stdout trimmed.
    fn psql_ok(&self, database: &str, commands: &[&str]) -> String {
        let mut command = self.psql_command(SUPERUSER, database);
        for sql in commands {
            command.arg("-c").arg(sql);
        }
        let output = command.output().expect("run psql");
        if !output.status.success() {
            panic!(
                "psql on {database} failed: {commands:?}\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Runs a server tool (initdb, pg_ctl) to completion, as `postgres` when we are root.
    fn run_tool(&self, name: &str, args: &[&str]) -> Output {
        let tool = self.tool(name);
        let mut command = if self.as_postgres {
            let mut command = Command::new(runuser());
            command.args(["-u", "postgres", "--"]).arg(&tool);
            command
        } else {
            Command::new(&tool)
        };
        command.args(args).stdin(Stdio::null());
        self.isolate(&mut command);
        command
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", tool.display()))
    }

    /// Keeps the caller's PG* variables (PGPORT, PGDATA, PGHOST, ...) away from a tool, and
    /// runs it in the server's folder: a tool run as `postgres` fails when it cannot enter its
    /// working directory, which the test's own (under /root, say) may be.
    fn isolate(&self, command: &mut Command) {
        for (name, _) in std::env::vars_os() {
            if name.as_encoded_bytes().starts_with(b"PG") {
                command.env_remove(&name);
            }
        }
        command.current_dir(self.dir.path());
    }

    /// Writes a file in the data directory that the server reads, owned by the server's user.
    fn write_server_file(&self, path: &Path, text: &str, owner: Option<(u32, u32)>) {
        std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }

    fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    fn log_path(&self) -> String {
        self.data.join("server.log").to_string_lossy().into_owned()
    }
}

impl Drop for Postgres {
    /// Stops the server at once (it is thrown away, so no checkpoint is needed), then the
    /// temp dir is deleted. A server that is already stopped makes pg_ctl fail, which is fine.
    /// When the test is failing, the log's end goes to stderr to help find out why.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "postgres on port {}: server.log ends:\n{}",
                self.port,
                tail(&self.log(), 40)
            );
        }
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
    }
}

/// The newest `/usr/lib/postgresql/<major>/bin` that has initdb and pg_ctl.
fn find_bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(INSTALL_ROOT)
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// The uid and gid of the user `postgres`, which the Debian package creates. getpwnam_r, not
/// getpwnam: tests start servers from several threads at once.
fn postgres_user() -> (u32, u32) {
    let name = CString::new("postgres").expect("no NUL");
    // SAFETY: passwd is plain old data; getpwnam_r fills it in.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r(3) with a NUL-terminated name, a record, a buffer of the given length
    // and a result pointer, all valid for the call; the record's strings point into buffer,
    // and only its numeric fields are read.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 || found.is_null() {
        panic!(
            "the tests run as root, so PostgreSQL's tools must run as the user postgres \
             (initdb refuses root), and there is no such user: install the postgresql package"
        );
    }
    (entry.pw_uid, entry.pw_gid)
}

/// runuser, which is in /usr/sbin (not always on a test's PATH).
fn runuser() -> PathBuf {
    ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("runuser"))
}

/// A port that was free a moment ago: the kernel's pick for a listener on port 0. The listener
/// is closed before the server binds, so the port can be taken meanwhile; the start then
/// tries another.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// 24 random letters and digits.
fn random_password() -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// The database name in a URL (`postgres://user@host:port/NAME?options`), or the argument
/// itself when it is a bare name.
fn database_name(url_or_db: &str) -> &str {
    match url_or_db.split_once("://") {
        None => url_or_db,
        Some((_, rest)) => {
            let path = rest.split_once('/').map_or("", |(_, path)| path);
            path.split(['?', '#']).next().unwrap_or(path)
        }
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Stops and deletes servers left behind by test processes that are gone. pg_ctl detaches the
/// server into its own session, so a test killed outright (SIGKILL, a runner's timeout) leaves
/// its server running; Drop never ran. A folder is only touched when the process its owner
/// file names no longer exists. (A folder without an owner file is being set up right now.)
/// Test processes in another pid namespace that share this /tmp would look gone; CI and the
/// usual containers give each its own /tmp.
fn reap_abandoned(bin: &Path, as_postgres: bool) {
    let Ok(entries) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(DIR_PREFIX.as_bytes())
        {
            continue;
        }
        let dir = entry.path();
        let Some(pid) = std::fs::read_to_string(dir.join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        let gone = unsafe { libc::kill(pid, 0) } == -1
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if !gone {
            continue;
        }
        let data = dir.join("data");
        let pg_ctl = bin.join("pg_ctl");
        let mut command = if as_postgres {
            let mut command = Command::new(runuser());
            command.args(["-u", "postgres", "--"]).arg(&pg_ctl);
            command
        } else {
            Command::new(&pg_ctl)
        };
        let _ = command
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "-t", PG_CTL_WAIT, "stop"])
            .current_dir("/tmp")
            .stdin(Stdio::null())
            .output();
        eprintln!(
            "postgres: stopped and removed {}, left behind by process {pid}",
            dir.display()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
