//! The reload diff: which schedules a new config adds, removes, changes or leaves alone, and
//! which apps changed credentials.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::config::{App, Config, Schedule};

/// What a reload does to the armed schedules: the names added, removed and changed (each by
/// name), and how many stayed. It copies no name of a schedule that stayed: at 100,000
/// schedules those copies (and a map of every name) were made on the daemon's thread for each
/// reload, among the pages the schedules it arms next are allocated in, and kept them resident
/// (measured, `scale`: 5.9 MiB more after 10 reloads of 1 %).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: usize,
}

impl Diff {
    /// Compares the armed schedules (by name) with the enabled schedules of `new`. A schedule
    /// switched to `enabled: false` counts as removed; switched back on, as added.
    pub fn between(armed: &HashMap<&str, &Arc<Schedule>>, new: &Config) -> Diff {
        let mut diff = Diff::default();
        let enabled: HashSet<&str> = new
            .schedules
            .iter()
            .filter(|s| s.enabled)
            .map(|s| &*s.name)
            .collect();
        // Names are unique in a valid config; `enabled` holds each once.
        for schedule in new.schedules.iter().filter(|s| s.enabled) {
            match armed.get(&*schedule.name) {
                None => diff.added.push(schedule.name.to_string()),
                // `Arc`s of an `Eq` type compare by pointer first: a schedule a reload took
                // over is the same allocation.
                Some(old) if *old == schedule => diff.unchanged += 1,
                Some(_) => diff.changed.push(schedule.name.to_string()),
            }
        }
        diff.removed = armed
            .keys()
            .filter(|name| !enabled.contains(*name))
            .map(|name| name.to_string())
            .collect();
        diff.added.sort_unstable();
        diff.removed.sort_unstable();
        diff.changed.sort_unstable();
        diff
    }

    /// "added a; removed b; changed c; 4 unchanged", for logs and the `events` table.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (what, names) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("changed", &self.changed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what} {}", names.join(", ")));
            }
        }
        parts.push(format!("{} unchanged", self.unchanged));
        parts.join("; ")
    }
}

/// Apps whose identity stayed but whose secret or address changed: their cached token must go.
pub fn changed_credentials<'a>(
    old: &'a BTreeMap<String, Arc<App>>,
    new: &BTreeMap<String, Arc<App>>,
) -> Vec<&'a Arc<App>> {
    old.values()
        .filter(|old| {
            new.values().any(|app| {
                app.corp_id == old.corp_id
                    && app.agent_id == old.agent_id
                    && (app.secret != old.secret || app.api_base != old.api_base)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secrets, parse};
    use std::path::Path;

    fn config(schedules: &str) -> Config {
        let text = format!(
            "timezone: UTC\napps:\n  ops: {{ corp_id: ww1, agent_id: 1, secret: s }}\nschedules:\n{schedules}"
        );
        parse(&text, Path::new("/tmp/x.yaml"), Secrets::Required).unwrap()
    }

    #[test]
    fn diff_by_name() {
        let old = config(
            "  - { name: a, cron: '0 9 * * *', to: { users: [u] }, text: { content: a } }\n  - { name: b, cron: '0 9 * * *', to: { users: [u] }, text: { content: b } }\n  - { name: c, cron: '0 9 * * *', to: { users: [u] }, text: { content: c } }\n  - { name: f, cron: '0 9 * * *', to: { users: [u] }, text: { content: f } }\n  - { name: g, cron: '0 9 * * *', to: { users: [u] }, text: { content: g } }\n",
        );
        let armed = old.schedules.iter().map(|s| (&*s.name, s)).collect();
        let new = config(
            "  - { name: a, cron: '0 9 * * *', to: { users: [u] }, text: { content: a } }\n  - { name: c, cron: '0 10 * * *', to: { users: [u] }, text: { content: c } }\n  - { name: d, cron: '0 9 * * *', to: { users: [u] }, text: { content: d } }\n  - { name: e, cron: '0 9 * * *', to: { users: [u] }, text: { content: e }, enabled: false }\n  - { name: g, cron: '0 9 * * *', to: { users: [u] }, text: { content: g2 } }\n  - { name: b2, cron: '0 9 * * *', to: { users: [u] }, text: { content: b } }\n",
        );
        let diff = Diff::between(&armed, &new);
        // Each list by name, whatever the order of either file or of the armed map.
        assert_eq!(diff.added, ["b2", "d"]);
        assert_eq!(diff.removed, ["b", "f"]);
        assert_eq!(diff.changed, ["c", "g"]);
        assert_eq!(diff.unchanged, 1);
        assert_eq!(
            diff.summary(),
            "added b2, d; removed b, f; changed c, g; 1 unchanged"
        );
    }
}

/// How much lower than the daemon's own threads the thread that reads a reloaded config runs
/// (added to its niceness, at most 19).
pub const RELOAD_NICENESS: libc::c_int = 10;

/// Lowers the calling thread's CPU priority by [`RELOAD_NICENESS`]: reading a large config
/// keeps every core busy for a second or more, and the daemon's own threads, which fire the
/// slots meanwhile, must come first. On Linux a niceness is a thread's own, and the threads it
/// starts inherit it. Lowering one's priority needs no privilege; a failure is harmless.
pub fn yield_to_firing() {
    #[cfg(target_os = "linux")]
    {
        let lower = (niceness() + RELOAD_NICENESS).min(19);
        // SAFETY: gettid and setpriority take and return plain integers; setpriority only
        // changes the scheduling priority of the calling thread (who = its thread id).
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, lower);
        }
    }
}

/// The calling thread's niceness (Linux).
#[cfg(target_os = "linux")]
fn niceness() -> libc::c_int {
    // SAFETY: gettid and getpriority take and return plain integers; getpriority reads the
    // priority of the calling thread (who = its thread id).
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::getpriority(libc::PRIO_PROCESS, tid)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod priority_tests {
    use super::*;

    #[test]
    fn the_reload_thread_and_the_threads_it_starts_yield_to_the_others() {
        let before = niceness();
        let (own, started) = std::thread::spawn(|| {
            yield_to_firing();
            (niceness(), std::thread::spawn(niceness).join().unwrap())
        })
        .join()
        .unwrap();
        let lower = (before + RELOAD_NICENESS).min(19);
        assert_eq!((own, started), (lower, lower));
        assert_eq!(niceness(), before, "the calling thread keeps its priority");
    }
}
