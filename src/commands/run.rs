//! `run [--dry-run]`: the daemon in the foreground, as systemd (`Type=notify`) starts it.

use std::process::ExitCode;
use std::sync::Arc;

use super::{EXIT_FAILED, EXIT_OK, Globals};
use crate::config::Secrets;
use crate::daemon::{self, Options};
use crate::dispatch::Dispatcher;
use crate::retry::RetryPolicy;
use crate::wecom::Client;
use crate::wecom::token::TokenCache;

pub async fn run(globals: &Globals, dry_run: bool) -> ExitCode {
    daemon::tune_allocator();
    let secrets = Secrets::for_dry_run(dry_run);
    let config = match globals.load_to_run(secrets) {
        Ok(config) => config,
        Err(code) => return code,
    };
    config.log_warnings();
    let db = match globals.database(Some(&config)) {
        Ok(db) => db,
        Err(code) => return code,
    };
    let store = match globals.open_store(&db).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    store.set_owner(config.owner());
    tracing::info!(database = %db, "database open");
    let control = match daemon::signals::install() {
        Ok(control) => control,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let client = match Client::new() {
        Ok(client) => client,
        Err(e) => {
            eprintln!("error: cannot set up the HTTP client: {e:#}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let tokens = TokenCache::new(store.clone(), client.clone());
    // The daemon sends even when the database refuses a write (and records it later): a
    // schedule must not fall silent because the disk is full.
    let dispatcher = Dispatcher::new(store, client, tokens, RetryPolicy::default(), dry_run);
    let dispatcher = Arc::new(dispatcher.sending_unrecorded(true));
    let options = Options::default();
    match daemon::run(config, dispatcher, options, control).await {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
