//! The schedules file: `load(path)` → `parse(text)` → validated [`Config`].
//!
//! Validation collects every problem in the file (each naming the schedule or app, the field and
//! the fix) before it reports, so an operator fixes a broken file in one round.

pub mod database;
mod fields;
pub mod proxy;
pub mod secret;
mod validate;
mod yaml;
mod zone;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sha2::{Digest, Sha256};

use crate::calendar::Calendar;
use crate::cron::CronSpec;
use crate::message::{Content, MessageTemplate, Recipients};
pub use proxy::{Egress, ProxyUrl};
pub use secret::{MAX_SECRET_BYTES, Secret, SecretSource};
pub use yaml::{MAX_CONFIG_BYTES, MAX_DEPTH};

/// The default WeCom API address.
pub const DEFAULT_API_BASE: &str = "https://qyapi.weixin.qq.com";
/// The default `max_in_flight`: requests one app has in flight at once (WeCom limits concurrent
/// calls, 45033; a handful of kept-alive connections sends a burst about as fast as hundreds).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;
/// The largest `max_in_flight` accepted.
pub const MAX_MAX_IN_FLIGHT: usize = 64;
/// The default `duplicate_check_interval`, WeCom's own default.
pub const DEFAULT_DUPLICATE_CHECK_INTERVAL: u32 = 1800;

/// A validated config file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// SHA-256 of the file's bytes (hex, 16 digits): which config was in force, for `events`.
    pub digest: String,
    /// `database:`: a SQLite file, made absolute against the config file's folder, or a
    /// `postgres://` URL (never holding a password) with its `database_password_*` source.
    pub database: Option<crate::store::Location>,
    /// The default zone of schedules.
    pub timezone: Tz,
    pub apps: BTreeMap<String, Arc<App>>,
    /// `robots:`: group robots, by name.
    pub robots: BTreeMap<String, Arc<Robot>>,
    pub schedules: Vec<Arc<Schedule>>,
    /// `history_retention:`: `sends` rows older than this are pruned (off when `None`).
    pub history_retention: Option<chrono::Duration>,
    /// `metrics.listen:`: where Prometheus text is served at `/metrics` (off when `None`).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `instance:`: names this daemon in the rows it claims and the events it writes; `None`
    /// takes the host name ([`Config::instance`]).
    pub instance: Option<String>,
    /// `claim_lease:`: how long a claim of this daemon stays its own without being renewed;
    /// once it lapsed, another daemon on the database resolves the row as a crash row.
    pub claim_lease: chrono::Duration,
    /// Things that are valid but probably not what the operator wants.
    pub warnings: Vec<Problem>,
    /// What a reload may take over from this reading ([`Config::prior`]): kept by the daemon
    /// ([`load_to_run`]) for a file read in pieces, about 40 bytes a schedule.
    memo: Option<Arc<validate::Memo>>,
}

/// What a reload takes over from the config in force: the schedules whose text and context did
/// not change, with their warnings, are not read again (see [`load_to_run`]).
pub struct Prior {
    memo: Arc<validate::Memo>,
    schedules: Vec<Arc<Schedule>>,
    warnings: Vec<Problem>,
}

/// One WeCom application: its own secret, hence its own access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub name: String,
    pub corp_id: String,
    pub agent_id: i64,
    pub secret_source: SecretSource,
    /// `None` only when secrets were not read ([`Secrets::Unneeded`]: `--dry-run`, `history`).
    pub secret: Option<Secret>,
    /// Without a trailing slash.
    pub api_base: String,
    /// `max_in_flight`: HTTP calls of this app in flight at once (gettoken included).
    pub max_in_flight: usize,
    /// `proxy:`: how the app's calls reach `api_base`.
    pub egress: Egress,
}

/// One group robot (群机器人): it posts into its group chat through a webhook whose key is the
/// only credential. No app, token or trusted IP is involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Robot {
    pub name: String,
    pub key_source: SecretSource,
    /// The webhook key, a secret. `None` only when secrets were not read.
    pub key: Option<Secret>,
    /// Without a trailing slash.
    pub api_base: String,
    /// `proxy:`: how the robot's calls reach `api_base`.
    pub egress: Egress,
}

/// `text.mention` of a robot schedule: members to @ in the group (`@all` allowed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Mention {
    /// User ids → `mentioned_list`.
    pub users: Vec<String>,
    /// Mobile numbers → `mentioned_mobile_list`.
    pub mobiles: Vec<String>,
}

/// A duration kept as whole seconds, for chrono's arithmetic.
fn seconds(seconds: NonZeroU32) -> chrono::Duration {
    chrono::Duration::seconds(seconds.get().into())
}

/// A duration of the config (longer than zero, whole seconds, at most a hundred years) as kept
/// in a [`Schedule`]; `None` for none (or one beyond `u32`, which the config refuses).
fn kept_seconds(duration: Option<chrono::Duration>) -> Option<NonZeroU32> {
    duration
        .and_then(|d| u32::try_from(d.num_seconds()).ok())
        .and_then(NonZeroU32::new)
}

/// The copies [`Schedule::relocated`] made, by the address of what they copy (an address as
/// a number: it is never followed). The originals were all alive together when the first copy
/// was made, so no two of them share an address.
#[derive(Default)]
pub struct Relocation {
    crons: HashMap<usize, Arc<CronSpec>>,
    apps: HashMap<usize, Arc<Box<str>>>,
    recipients: HashMap<usize, Arc<Recipients>>,
    mentions: HashMap<usize, Arc<Mention>>,
    messages: HashMap<usize, Arc<MessageTemplate>>,
    calendars: HashMap<usize, Arc<Calendar>>,
}

/// The copy of `value` in `copies`, made by `make` the first time.
fn copy<T: ?Sized>(
    copies: &mut HashMap<usize, Arc<T>>,
    value: &Arc<T>,
    make: impl FnOnce(&T) -> Arc<T>,
) -> Arc<T> {
    copies
        .entry(Arc::as_ptr(value).cast::<()>() as usize)
        .or_insert_with(|| make(value))
        .clone()
}

/// One schedule. What many schedules of a large config write alike (the expression, the app,
/// the recipients, the message) is shared between them: one copy in memory per distinct value.
/// `Eq`, so that two `Arc<Schedule>` compare by pointer first: a reload takes an unchanged
/// schedule over as the same allocation (`validate::reuse`), and its diff then costs nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub name: Box<str>,
    pub cron: Arc<CronSpec>,
    pub zone: Tz,
    /// The app it sends as, or the group robot it posts through ([`Schedule::app`],
    /// [`Schedule::robot`]): one field for the two, which no schedule has both of. A thin
    /// pointer (8 bytes, where `Arc<str>` takes 16), shared by every schedule of the sender.
    sender: Arc<Box<str>>,
    /// `robot:`: `sender` is a group robot, not an app.
    is_robot: bool,
    /// The app's recipients; empty for a robot schedule.
    pub to: Arc<Recipients>,
    /// `text.mention` (robot schedules only).
    pub mention: Arc<Mention>,
    pub message: Arc<MessageTemplate>,
    pub safe: bool,
    pub enable_id_trans: bool,
    pub duplicate_check_interval: u32,
    pub enabled: bool,
    /// How late a slot missed while the daemon was down (or the clock jumped) may still be sent:
    /// whole seconds, as the config writes durations (at most a hundred years, which fits);
    /// 4 bytes instead of chrono's 24 ([`Schedule::catch_up`]).
    catch_up: Option<NonZeroU32>,
    /// Spread: each slot fires up to this much later, by a fixed offset per slot (seconds, as
    /// `catch_up`; [`Schedule::jitter`]).
    jitter: Option<NonZeroU32>,
    /// `calendar:`: skipped dates and make-up workdays.
    pub calendar: Option<Arc<Calendar>>,
    /// The every-day form of a workday schedule, for the calendar's make-up workdays.
    pub workday_cron: Option<Arc<CronSpec>>,
}

impl Schedule {
    /// A copy that shares no allocation with `self`, made by the calling thread. The daemon
    /// keeps the schedules a reload added or changed as such copies: made on the reload thread,
    /// they would sit among the pages of the YAML tree it read, and keep those pages from going
    /// back to the system (measured, 10 reloads of 1 % at 10,000 schedules: 66.7 MiB after
    /// them instead of 60.1). What several schedules shared, their copies share (`copies`).
    pub fn relocated(&self, copies: &mut Relocation) -> Schedule {
        Schedule {
            name: self.name.clone(),
            cron: copy(&mut copies.crons, &self.cron, |c| Arc::new(c.clone())),
            zone: self.zone,
            sender: copy(&mut copies.apps, &self.sender, |a| Arc::new(a.clone())),
            is_robot: self.is_robot,
            to: copy(&mut copies.recipients, &self.to, |r| Arc::new(r.clone())),
            mention: copy(&mut copies.mentions, &self.mention, |m| Arc::new(m.clone())),
            message: copy(&mut copies.messages, &self.message, |m| Arc::new(m.clone())),
            safe: self.safe,
            enable_id_trans: self.enable_id_trans,
            duplicate_check_interval: self.duplicate_check_interval,
            enabled: self.enabled,
            catch_up: self.catch_up,
            jitter: self.jitter,
            calendar: self
                .calendar
                .as_ref()
                .map(|c| copy(&mut copies.calendars, c, |c| Arc::new(c.clone()))),
            workday_cron: self
                .workday_cron
                .as_ref()
                .map(|c| copy(&mut copies.crons, c, |c| Arc::new(c.clone()))),
        }
    }

    /// The first slot strictly after `after`: the cron expression's, or a make-up workday's.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next(after, false)
    }

    /// The first slot at or after `from`.
    pub fn next_from(&self, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next(from, true)
    }

    /// The next `n` slots strictly after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut slots = Vec::with_capacity(n);
        let mut cursor = after;
        while slots.len() < n
            && let Some(slot) = self.next_after(cursor)
        {
            slots.push(slot);
            cursor = slot;
        }
        slots
    }

    fn next(&self, from: DateTime<Utc>, inclusive: bool) -> Option<DateTime<Utc>> {
        let regular = self.cron.next_slot(from, inclusive, self.zone);
        let make_up = match (&self.calendar, &self.workday_cron) {
            (Some(calendar), Some(variant)) => {
                calendar.next_workday_slot(variant, self.zone, from, inclusive)
            }
            _ => None,
        };
        match (regular, make_up) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True when the schedule's calendar skips the date of `slot`.
    pub fn skips(&self, slot: DateTime<Utc>) -> bool {
        self.calendar
            .as_ref()
            .is_some_and(|c| c.skips(slot, self.zone))
    }

    /// True when `slot` falls on one of the calendar's make-up workdays.
    pub fn is_make_up(&self, slot: DateTime<Utc>) -> bool {
        self.workday_cron.is_some()
            && self
                .calendar
                .as_ref()
                .is_some_and(|c| c.is_workday(slot, self.zone))
    }

    /// The content for `slot`, with its template variables rendered in the schedule's zone.
    pub fn content_at(&self, slot: DateTime<Utc>) -> Content {
        self.message
            .render(&self.name, slot.with_timezone(&self.zone))
    }

    /// The app it sends as; empty for a robot schedule.
    pub fn app(&self) -> &str {
        if self.is_robot { "" } else { &self.sender }
    }

    /// `robot:`: the group robot it posts through instead of an app.
    pub fn robot(&self) -> Option<&str> {
        self.is_robot.then_some(&**self.sender)
    }

    /// `catch_up`: how late a missed slot may still be sent.
    pub fn catch_up(&self) -> Option<chrono::Duration> {
        self.catch_up.map(seconds)
    }

    /// `jitter`: up to how much later each slot fires.
    pub fn jitter(&self) -> Option<chrono::Duration> {
        self.jitter.map(seconds)
    }

    /// When `slot` is actually fired: the slot plus its jitter offset. The offset is derived from
    /// the schedule's name and the slot, so every process and restart agrees on it.
    pub fn due(&self, slot: DateTime<Utc>) -> DateTime<Utc> {
        let Some(jitter) = self.jitter().filter(|j| j.num_milliseconds() > 0) else {
            return slot;
        };
        let mut hasher = Sha256::new();
        hasher.update(self.name.as_bytes());
        hasher.update(slot.timestamp().to_be_bytes());
        let hash = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash[..8]);
        let offset = u64::from_be_bytes(first) % jitter.num_milliseconds().unsigned_abs();
        slot + chrono::Duration::milliseconds(offset as i64)
    }
}

impl Config {
    /// What a reload of this config's file may take over from it; `None` when it was not
    /// read for the daemon, or read whole (a file with anchors, or a flow list).
    pub fn prior(&self) -> Option<Prior> {
        Some(Prior {
            memo: self.memo.clone()?,
            schedules: self.schedules.clone(),
            warnings: self.warnings.clone(),
        })
    }

    /// The name of this daemon in rows and events: `instance:`, else the host name.
    pub fn instance(&self) -> String {
        self.instance.clone().unwrap_or_else(host_name)
    }

    /// Who the claims of a process running this config name, and their lease.
    pub fn owner(&self) -> crate::store::Owner {
        crate::store::Owner {
            instance: Some(self.instance().into()),
            lease: self.claim_lease,
        }
    }

    pub fn schedule(&self, name: &str) -> Option<&Arc<Schedule>> {
        self.schedules.iter().find(|s| *s.name == *name)
    }

    pub fn app(&self, name: &str) -> Option<&Arc<App>> {
        self.apps.get(name)
    }

    pub fn robot(&self, name: &str) -> Option<&Arc<Robot>> {
        self.robots.get(name)
    }

    /// Logs every warning (problems that do not stop the config from being used).
    pub fn log_warnings(&self) {
        for warning in &self.warnings {
            tracing::warn!("{warning}");
        }
    }
}

/// This host's name (`gethostname`), as an instance name: characters an instance may not
/// hold become `_`, at most 64 of them; `localhost` if the system gives none.
pub fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
    let name: String = if rc == 0 {
        String::from_utf8_lossy(&buffer[..end])
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect()
    } else {
        String::new()
    };
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

impl Secrets {
    /// Not read for a dry run (it never calls WeCom), required otherwise.
    pub fn for_dry_run(dry_run: bool) -> Secrets {
        if dry_run {
            Secrets::Unneeded
        } else {
            Secrets::Required
        }
    }
}

/// How strict loading is about secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Every app's secret must be readable now (a real run).
    Required,
    /// Secrets are not read at all: `--dry-run` and `history` never call WeCom, so a secret
    /// source that is slow, huge or broken must not stop (or stall) them.
    Unneeded,
}

/// What a problem is about. The name is shared by the problems of its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    File,
    App(Arc<str>),
    Robot(Arc<str>),
    Calendar(Arc<str>),
    Schedule(Arc<str>),
}

/// One thing wrong (or suspicious) in the config, with where and how to fix it. A clone
/// allocates nothing: a config's warnings are kept while it is in force, and each reload takes
/// over those of the schedules it does not read again ([`Prior`]), as copies that must not
/// scatter over the pages its reading frees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub subject: Subject,
    /// Shared between the warnings about the same field ([`fields::Report::warn`]).
    pub field: Arc<str>,
    /// Shared between the warnings that say the same thing ([`fields::Report::warn`]).
    pub message: Arc<str>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, name) = match &self.subject {
            Subject::File => return write!(f, "{}: {}", self.field, self.message),
            Subject::App(name) => ("app", name),
            Subject::Robot(name) => ("robot", name),
            Subject::Calendar(name) => ("calendar", name),
            Subject::Schedule(name) => ("schedule", name),
        };
        // The name comes from the file: a control character in it must not reach the terminal.
        let name = escaped(name);
        write!(
            f,
            "{kind} \"{name}\", field {}: {}",
            self.field, self.message
        )
    }
}

/// A robot's key field for `source` (`key_env`, `key_file`, `key_credential`, `key`).
pub fn robot_key_field(source: &SecretSource) -> &'static str {
    validate::robot_key_field(source)
}

/// A control or invisible character (see [`crate::shown::is_dangerous`]): refused in ids.
pub fn is_hidden_char(c: char) -> bool {
    crate::shown::is_dangerous(c)
}

/// `text` with every [`is_hidden_char`] written as an escape (`\u{202e}`, `\n`).
pub fn escaped(text: &str) -> String {
    crate::shown::shown(text).into_owned()
}

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} in {}:\n{}", count(.problems.len()), .path.display(), bullet(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
        warnings: Vec<Problem>,
    },
}

fn count(n: usize) -> String {
    if n == 1 {
        "1 problem".to_string()
    } else {
        format!("{n} problems")
    }
}

fn bullet(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path, secrets: Secrets) -> Result<Config, ConfigError> {
    load_at(path, secrets, Utc::now())
}

/// [`load`], with the slots that validation samples taken after `now` instead of the clock's
/// instant, so that `check --now` validates and lists the same slots.
pub fn load_at(path: &Path, secrets: Secrets, now: DateTime<Utc>) -> Result<Config, ConfigError> {
    let text = read_text(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_at(&text, path, secrets, now)
}

/// [`load`] for the daemon, at its start (`prior` is `None`) and at each reload: the config
/// keeps what the next reload may take over ([`Config::prior`]). The schedules `prior` read
/// whose text and context are unchanged, and that had no slot since, are taken over as read,
/// with their warnings, instead of being parsed and validated again. The outcome (the config,
/// or every problem and warning) is the one [`load`] gives; only the time differs.
pub fn load_to_run(
    path: &Path,
    secrets: Secrets,
    prior: Option<&Prior>,
) -> Result<Config, ConfigError> {
    let text = read_text(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    read_config(&text, path, secrets, Utc::now(), Reading::Kept(prior))
}

/// Whether a reading keeps what a reload may take over.
#[derive(Clone, Copy)]
enum Reading<'a> {
    /// A command's: read once.
    Once,
    /// The daemon's: kept, and taken over from the reading in force, if any.
    Kept(Option<&'a Prior>),
}

/// Reads at most [`MAX_CONFIG_BYTES`] (`--config /dev/zero` must not fill memory).
fn read_text(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    // Room for the whole file at once (its size as the file system says, if it says): grown
    // step by step, the buffer of a 16 MiB file was copied over and over.
    let size = file.metadata().map_or(0, |m| m.len()).min(MAX_CONFIG_BYTES);
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0) + 1);
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "it is larger than {} MiB, the most a schedules file may be",
                MAX_CONFIG_BYTES / (1024 * 1024)
            ),
        ));
    }
    String::from_utf8(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "it is not UTF-8 text; save it as UTF-8",
        )
    })
}

/// Validates config text; `path` names the file in messages and anchors relative paths.
pub fn parse(text: &str, path: &Path, secrets: Secrets) -> Result<Config, ConfigError> {
    parse_at(text, path, secrets, Utc::now())
}

/// [`parse`] as of `now` (see [`load_at`]).
pub fn parse_at(
    text: &str,
    path: &Path,
    secrets: Secrets,
    now: DateTime<Utc>,
) -> Result<Config, ConfigError> {
    read_config(text, path, secrets, now, Reading::Once)
}

fn read_config(
    text: &str,
    path: &Path,
    secrets: Secrets,
    now: DateTime<Utc>,
    reading: Reading<'_>,
) -> Result<Config, ConfigError> {
    let digest = digest(text.as_bytes());
    let base = path.parent().unwrap_or(Path::new("."));
    let (config, problems, warnings) = validate::validate(text, base, secrets, now, reading);
    match config {
        Some(mut config) if problems.is_empty() => {
            config.path = path.to_path_buf();
            config.digest = digest;
            config.warnings = warnings;
            Ok(config)
        }
        _ => Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
            warnings,
        }),
    }
}

fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The default config path: `$WECOM_NOTIFY_CONFIG`, else `/etc/wecom-notify/schedules.yaml`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/wecom-notify/schedules.yaml";

/// Where the database lives: `--db`, else the config's `database`, else
/// `$STATE_DIRECTORY/wecom-notify.db` under systemd, else `./wecom-notify.db`.
///
/// `flag` is a path or a `postgres://` URL; a URL takes its password source from the config's
/// `database_password_*` keys (carried by a URL `config_database`). The error, about `--db`,
/// says how to fix it and never holds a password.
pub fn database_location(
    flag: Option<&OsStr>,
    config_database: Option<&crate::store::Location>,
) -> Result<crate::store::Location, String> {
    use crate::store::Location;
    if let Some(flag) = flag {
        let password = match config_database {
            Some(Location::Postgres(target)) => target.password.clone(),
            _ => None,
        };
        // A path that is not UTF-8 is no URL: it is taken as it is, as before.
        let url = match flag.to_str() {
            Some(text) => database::url_location(text, password)?,
            None => None,
        };
        return Ok(url.unwrap_or_else(|| Location::Sqlite(PathBuf::from(flag))));
    }
    if let Some(location) = config_database {
        return Ok(location.clone());
    }
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several directories separated by ':'; the first is ours.
        let dir = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        if !dir.is_empty() {
            return Ok(Location::Sqlite(Path::new(&dir).join("wecom-notify.db")));
        }
    }
    Ok(Location::Sqlite(PathBuf::from("wecom-notify.db")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::Channel;
    use crate::message::TEXTCARD_TITLE_MAX_BYTES as TEXTCARD_TITLE;
    use std::collections::HashSet;

    /// A file of `n` schedules; `quoted` writes the key `"schedules":`, which is not split.
    fn many(n: usize, quoted: bool, extra: &str) -> String {
        let key = if quoted { "\"schedules\"" } else { "schedules" };
        let mut text = format!(
            "timezone: Asia/Shanghai\napps:\n  ops: {{ corp_id: ww1, agent_id: 1, secret: s }}\n{key}:\n"
        );
        for i in 0..n {
            let cron = ["30 9 * * 1-5", "0 * * * *", "*/5 * * * *"][i % 3];
            text.push_str(&format!(
                "  - name: s{i}\n    cron: \"{cron}\"\n    to: {{ users: [u{}] }}\n    text: {{ content: \"hello {{{{ date }}}} {i}\" }}\n",
                i % 7
            ));
        }
        text.push_str(extra);
        text.push_str("calendars:\n  cn: { skip: [2026-10-01] }\n");
        text
    }

    #[test]
    fn a_large_file_read_in_pieces_validates_as_the_whole_file() {
        let now = "2026-12-02T07:00:00Z".parse().unwrap();
        let load = |text: &str| {
            parse_at(text, Path::new("s.yaml"), Secrets::Unneeded, now)
                .map(|c| (c.schedules, c.warnings))
                .map_err(|e| e.to_string())
        };
        let (split, whole) = (many(3000, false, ""), many(3000, true, ""));
        assert!(split.len() > 3 * yaml::PIECE_BYTES, "several pieces");
        let (schedules, warnings) = load(&split).expect("valid");
        assert_eq!(schedules.len(), 3000);
        assert_eq!(Ok((schedules, warnings)), load(&whole));
        // Problems in several pieces, a name used again far from its first use, a YAML error.
        let broken = "  - name: s5\n    cron: \"61 * * * *\"\n    txet: {}\n";
        let (split, whole) = (many(3000, false, broken), many(3000, true, broken));
        let error = load(&split).expect_err("invalid");
        assert!(
            error.contains("\"s5\", field name: is used by an earlier schedule"),
            "{error}"
        );
        assert_eq!(Err(error), load(&whole));
        // Problems and warnings in every run (and no name twice): reported in the file's order.
        let spoil = |text: String| {
            text.replace("name: s10\n", "name: s10\n    txet: 1\n")
                .replace(
                    "name: s2990\n",
                    "name: s2990\n    jitter: 3d\n    catch_up: -1s\n",
                )
                .replace(
                    "name: s1500\n",
                    "name: s1500\n    markdown: { content: x }\n",
                )
        };
        let (split, whole) = (spoil(many(3000, false, "")), spoil(many(3000, true, "")));
        let error = load(&split).expect_err("invalid");
        assert_eq!(error.matches("\n  - ").count(), 3, "{error}");
        assert!(error.find("\"s10\"") < error.find("\"s1500\""), "{error}");
        assert!(error.find("\"s1500\"") < error.find("\"s2990\""), "{error}");
        assert_eq!(Err(error), load(&whole));
        let syntax = "  - name: bad\n    cron: \"0 * * * *\n  x: [\n";
        let (split, whole) = (many(3000, false, syntax), many(3000, true, syntax));
        let error = load(&split).expect_err("invalid");
        assert!(error.contains("yaml:"), "{error}");
        assert_eq!(
            Err(error),
            load(&whole).map_err(|e| e.replace("\"schedules\"", "schedules"))
        );
    }

    /// Reads `text` at `now` taking over what `prior` read, and afresh: the outcomes must be
    /// the same (the schedules, warnings and what the next reload may take over, or every
    /// problem). Also how many schedules were taken over.
    fn reread(text: &str, prior: &Prior, now: &str) -> (Result<Config, String>, usize) {
        let now = now.parse().unwrap();
        let path = Path::new("s.yaml");
        let show = |read: Result<Config, ConfigError>| read.map_err(|e| e.to_string());
        let read = |reading| show(read_config(text, path, Secrets::Unneeded, now, reading));
        let (again, fresh) = (read(Reading::Kept(Some(prior))), read(Reading::Kept(None)));
        let outcome = |read: &Result<Config, String>| {
            read.as_ref()
                .map(|c| (c.schedules.clone(), c.warnings.clone(), c.memo.clone()))
                .map_err(String::clone)
        };
        // Not assert_eq: the two sides would fill the terminal.
        assert!(
            outcome(&again) == outcome(&fresh),
            "taken over vs read afresh at {now}: {:?} vs {:?}",
            again.as_ref().map(|c| c.schedules.len()),
            fresh.as_ref().map(|c| c.schedules.len())
        );
        assert!(
            fresh.as_ref().map_or(true, |c| c.memo.is_some()),
            "a memo to reload with"
        );
        let earlier: HashSet<*const Schedule> = prior.schedules.iter().map(Arc::as_ptr).collect();
        let taken = again.as_ref().map_or(0, |c| {
            c.schedules
                .iter()
                .filter(|s| earlier.contains(&Arc::as_ptr(s)))
                .count()
        });
        (again, taken)
    }

    /// The daemon's reading of `text` at `now`.
    fn kept(text: &str, now: &str) -> Config {
        let now = now.parse().unwrap();
        let path = Path::new("s.yaml");
        read_config(text, path, Secrets::Unneeded, now, Reading::Kept(None)).expect("valid")
    }

    #[test]
    fn a_reload_takes_over_unchanged_schedules_until_they_fire_and_reads_as_afresh() {
        let at = kept;
        // A command's reading keeps nothing.
        let text = many(3000, false, "");
        let once = parse_at(&text, Path::new("s.yaml"), Secrets::Unneeded, Utc::now());
        assert!(once.expect("valid").prior().is_none());
        // A warning on some schedules, to be taken over with them.
        let warned = |text: String| {
            text.replace(
                "text: { content: \"hello {{ date }} 4\" }",
                "markdown: { content: x }",
            )
        };
        let t0 = "2026-12-02T07:00:00Z";
        let config = at(&text, t0);
        let prior = config.prior().expect("read in pieces");
        // Unchanged, a minute later: every schedule is taken over (none fired).
        let (_, taken) = reread(&text, &prior, "2026-12-02T07:01:00Z");
        assert_eq!(taken, 3000);
        // The */5 schedules fired at 07:05: they are read again, the others are not.
        let (_, taken) = reread(&text, &prior, "2026-12-02T07:30:00Z");
        assert_eq!(taken, 2000);
        // At the instant of a slot, that slot is no longer ahead.
        assert_eq!(reread(&text, &prior, "2026-12-02T07:05:00Z").1, 2000);
        // Only the workday ones have not fired by 09:00: too few to take over.
        assert_eq!(reread(&text, &prior, "2026-12-02T09:00:00Z").1, 0);
        // A clock gone back: the slots after it are not the ones checked.
        assert_eq!(reread(&text, &prior, "2026-12-02T06:59:00Z").1, 0);
        // One changed, one removed, two swapped, one added: the rest taken over.
        let edited = text
            .replace("hello {{ date }} 7\"", "hi {{ date }} 7\"")
            .replace("  - name: s8\n    cron: \"*/5 * * * *\"\n    to: { users: [u1] }\n    text: { content: \"hello {{ date }} 8\" }\n", "")
            .replace("name: s10\n", "name: tmp\n")
            .replace("name: s11\n", "name: s10\n")
            .replace("name: tmp\n", "name: s11\n")
            .replace("calendars:", "  - { name: new, cron: '0 9 * * *', to: { users: [u] }, text: { content: n } }\ncalendars:");
        let (again, taken) = reread(&edited, &prior, "2026-12-02T07:01:00Z");
        assert_eq!(again.expect("valid").schedules.len(), 3000);
        assert_eq!(taken, 2996, "s7, s10, s11 and the new one read");
        // A name used twice, and an error: reported as a full reading reports them.
        let twice = text.replace("name: s9\n", "name: s12\n");
        let error = reread(&twice, &prior, "2026-12-02T07:01:00Z")
            .0
            .expect_err("invalid");
        assert!(
            error.contains("\"s12\", field name: is used by an earlier"),
            "{error}"
        );
        let broken = text.replace("name: s2999\n", "name: s2999\n    jitter: 3d\n");
        reread(&broken, &prior, "2026-12-02T07:01:00Z")
            .0
            .expect_err("invalid");
        // Another context (the default zone, an app, a calendar): nothing is taken over.
        for head in [
            text.replace("timezone: Asia/Shanghai", "timezone: Asia/Tokyo"),
            text.replace(
                "apps:\n",
                "apps:\n  dev: { corp_id: ww2, agent_id: 2, secret: t }\n",
            ),
            text.replace("skip: [2026-10-01]", "skip: [2026-10-02]"),
            text.replace(
                "timezone: Asia/Shanghai",
                "timezone: Asia/Shanghai\ncatch_up: 5m",
            ),
            text.replace("calendars:", "robots:\n  r: { key: k }\ncalendars:"),
        ] {
            assert_eq!(reread(&head, &prior, "2026-12-02T07:01:00Z").1, 0);
        }
        // Warnings are taken over with their schedules, in the file's order.
        let text = warned(many(3000, false, ""));
        let config = at(&text, t0);
        assert!(
            config
                .warnings
                .iter()
                .any(|w| w.subject == Subject::Schedule("s4".into()))
        );
        let (again, taken) = reread(&text, &config.prior().unwrap(), "2026-12-02T07:01:00Z");
        let again = again.unwrap().warnings;
        assert_eq!((&again, taken), (&config.warnings, 3000));
        // As the same text, not copies: the reload's own would stay scattered over the pages
        // its reading frees (`scale`: 3 MiB more after the first reload of 100,000 schedules).
        let mut schedules = 0;
        for (taken, kept) in again.iter().zip(&config.warnings) {
            // The file's, the apps' and the robots' warnings are read again.
            let (Subject::Schedule(taken_name), Subject::Schedule(kept_name)) =
                (&taken.subject, &kept.subject)
            else {
                continue;
            };
            schedules += 1;
            assert!(Arc::ptr_eq(taken_name, kept_name), "{taken}");
            assert!(Arc::ptr_eq(&taken.field, &kept.field), "{taken}");
            assert!(Arc::ptr_eq(&taken.message, &kept.message), "{taken}");
        }
        assert!(schedules > 1000, "{schedules} schedules' warnings");
        // A few copies of each field's name among them (one per piece read), not one each.
        let fields: HashSet<*const u8> = config.warnings.iter().map(|w| w.field.as_ptr()).collect();
        assert!(fields.len() < 100, "{} copies", fields.len());
    }

    #[test]
    fn a_schedule_taken_over_is_checked_at_the_slots_that_came_since() {
        // The title fits with "August" (6 bytes) and is too long with "September" (9).
        let title = "x".repeat(TEXTCARD_TITLE - "August".len());
        let card = format!(
            "  - name: monthly\n    cron: \"2 9 * * *\"\n    to: {{ users: [u] }}\n    textcard: {{ title: \"{title}{{{{ slot:%B }}}}\", description: d, url: \"https://example.com\" }}\n"
        );
        let text = many(3000, false, &card);
        // 09:02 in Shanghai is 01:02Z: the eight days sampled before it on the 24th are all in
        // August. Between 01:00 and 01:05 no other schedule fires.
        let prior = kept(&text, "2026-08-24T01:01:00Z").prior().unwrap();
        let (again, taken) = reread(&text, &prior, "2026-08-24T01:01:59Z");
        assert_eq!(
            (again.is_ok(), taken),
            (true, 3001),
            "no slot since: the same eight"
        );
        // After the slot of the 24th, the eight reach September 1st.
        let (again, taken) = reread(&text, &prior, "2026-08-24T01:03:00Z");
        assert_eq!(taken, 0, "invalid: nothing to take over");
        let error = again.expect_err("too long on September 1st");
        assert!(
            error.contains("\"monthly\", field textcard.title"),
            "{error}"
        );
    }

    #[test]
    fn relocated_copies_share_what_their_originals_shared_and_nothing_with_them() {
        let text = "\
apps:
  ops: { corp_id: ww1, agent_id: 1, secret: s }
schedules:
  - { name: a, cron: '30 9 * * 1-5', app: ops, to: { users: [u] }, text: { content: 'hi' } }
  - { name: b, cron: '30 9 * * 1-5', app: ops, to: { users: [u] }, text: { content: 'hi' } }
";
        let config = parse(text, Path::new("s.yaml"), Secrets::for_dry_run(true)).unwrap();
        let [a, b] = [&config.schedules[0], &config.schedules[1]];
        assert!(Arc::ptr_eq(&a.message, &b.message), "interned when loaded");
        let mut copies = Relocation::default();
        let (ra, rb) = (a.relocated(&mut copies), b.relocated(&mut copies));
        assert_eq!((&ra, &rb), (&**a, &**b), "equal to their originals");
        for (copy, original) in [(&ra, a), (&rb, b)] {
            assert!(!Arc::ptr_eq(&copy.message, &original.message));
            assert!(!Arc::ptr_eq(&copy.to, &original.to));
            assert!(!Arc::ptr_eq(&copy.cron, &original.cron));
            assert!(!Arc::ptr_eq(&copy.sender, &original.sender));
        }
        assert!(Arc::ptr_eq(&ra.message, &rb.message));
        assert!(Arc::ptr_eq(&ra.to, &rb.to));
        assert!(Arc::ptr_eq(&ra.cron, &rb.cron));
        assert!(Arc::ptr_eq(&ra.sender, &rb.sender));
    }

    /// A schedule is kept once per schedule of the config (100,000 of them in the `scale`
    /// benchmark): with its `Arc` counts it fits mimalloc's 112-byte size class (it took the
    /// 192 one, then the 128 one, before).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_schedule_fits_in_96_bytes() {
        // With its Arc's two counts, 112 bytes: one of mimalloc's size classes (the next is 128).
        assert!(
            std::mem::size_of::<Schedule>() <= 96,
            "{}",
            std::mem::size_of::<Schedule>()
        );
    }

    /// What the compact fields keep reads back as written: the app or the robot, and
    /// durations to the second, up to the longest the config takes.
    #[test]
    fn a_schedule_reads_back_its_sender_and_durations() {
        let text = "\
apps:
  ops: { corp_id: ww1, agent_id: 1, secret_file: s }
robots:
  ops: { key_file: k }
schedules:
  - { name: a, cron: '0 9 * * *', app: ops, to: { users: [u] }, text: { content: 'hi {{ date }}' }, catch_up: 36600d, jitter: 1h1s }
  - { name: r, cron: '0 9 * * *', robot: ops, text: { content: 'ho {{ date }}' } }
";
        let config = parse(text, Path::new("s.yaml"), Secrets::for_dry_run(true)).unwrap();
        let [a, r] = [&config.schedules[0], &config.schedules[1]];
        assert_eq!((a.app(), a.robot()), ("ops", None));
        assert_eq!((r.app(), r.robot()), ("", Some("ops")));
        assert_eq!(a.catch_up(), Some(chrono::Duration::days(36600)));
        assert_eq!(a.jitter(), Some(chrono::Duration::seconds(3601)));
        assert_eq!((r.catch_up(), r.jitter()), (None, None));
        assert!(
            Channel::for_schedule(r, &config.apps, &config.robots)
                .is_some_and(|c| matches!(c, Channel::Robot(_)))
        );
        assert!(
            Channel::for_schedule(a, &config.apps, &config.robots)
                .is_some_and(|c| matches!(c, Channel::App(_)))
        );
    }

    #[test]
    fn schedules_with_the_same_warning_share_its_text() {
        let text = "\
apps:
  ops: { corp_id: ww1, agent_id: 1, secret_file: s }
schedules:
  - { name: a, cron: '0 */15 9 * * *', app: ops, to: { users: [u] }, text: { content: 'hi {{ date }}' } }
  - { name: b, cron: '0 */15 10 * * *', app: ops, to: { users: [v] }, text: { content: 'ho {{ date }}' } }
  - { name: c, cron: '0 */20 10 * * *', app: ops, to: { users: [v] }, text: { content: 'ho {{ date }}' } }
";
        let config = parse(text, Path::new("s.yaml"), Secrets::for_dry_run(true)).unwrap();
        let warned: Vec<_> = config
            .warnings
            .iter()
            .filter(|w| &*w.field == "duplicate_check_interval")
            .collect();
        let subjects: Vec<_> = warned.iter().map(|w| w.subject.clone()).collect();
        assert_eq!(
            subjects,
            ["a", "b", "c"].map(|n| Subject::Schedule(n.into())),
            "{warned:?}"
        );
        assert!(
            warned[0].message.contains("again after 900s"),
            "{}",
            warned[0]
        );
        assert!(
            Arc::ptr_eq(&warned[0].message, &warned[1].message),
            "one copy of the text"
        );
        assert!(
            warned[2].message.contains("again after 1200s"),
            "{}",
            warned[2]
        );
    }
}
