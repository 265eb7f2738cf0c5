//! sd_notify: telling systemd (`Type=notify`) when the daemon is ready, reloading or stopping,
//! and keeping its watchdog fed. Without `NOTIFY_SOCKET` every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

/// Talks to systemd's notification socket.
#[derive(Debug, Clone, Default)]
pub struct Notifier;

impl Notifier {
    fn send(&self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::warn!(error = %e, "could not notify systemd");
        }
    }

    /// `READY=1` with a status line, once every schedule is armed (also after a reload).
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC`, which systemd 253+ requires to accept the reload.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading"),
            ]),
            Err(e) => tracing::warn!(error = %e, "cannot read the monotonic clock for RELOADING=1"),
        }
    }

    /// `STOPPING=1`.
    pub fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// How often to ping the watchdog: half of `WATCHDOG_USEC`, when the unit sets `WatchdogSec=`.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        let mut usec = 0;
        sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
    }
}
