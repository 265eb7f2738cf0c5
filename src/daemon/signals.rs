//! The edge between Unix signals and the daemon: SIGHUP becomes a reload request, SIGTERM and
//! SIGINT stop requests.

use futures::StreamExt;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio::sync::mpsc;

use super::Control;

/// Installs the handlers and returns the channels the daemon listens on.
pub fn install() -> std::io::Result<Control> {
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    let (reload_tx, reloads) = mpsc::unbounded_channel();
    let (stop_tx, stops) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(signal) = signals.next().await {
            let sent = match signal {
                SIGHUP => reload_tx.send(()),
                _ => stop_tx.send(()),
            };
            if sent.is_err() {
                break;
            }
        }
    });
    Ok(Control { reloads, stops })
}
