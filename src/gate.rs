//! The per-app gate every send of an app passes: a shared pause after WeCom's frequency limit
//! (45009), so that many schedules of one app do not storm WeCom while it is refusing them.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// One app's gate.
#[derive(Debug, Default)]
pub struct AppGate {
    paused_until: Mutex<Option<Instant>>,
}

impl AppGate {
    /// Waits while the app is paused. Re-checks after waking, since the pause may have grown.
    pub async fn wait(&self) {
        loop {
            let until = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }

    /// Pauses every send of the app for `pause` (extending, never shortening, a pause).
    pub fn pause(&self, pause: Duration) {
        let until = Instant::now() + pause;
        let mut current = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if current.is_none_or(|c| c < until) {
            *current = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_every_waiter_until_it_ends() {
        let gate = AppGate::default();
        let start = Instant::now();
        gate.wait().await;
        assert_eq!(Instant::now(), start);
        gate.pause(Duration::from_secs(60));
        gate.pause(Duration::from_secs(10));
        gate.wait().await;
        assert!(Instant::now() >= start + Duration::from_secs(60));
    }
}
