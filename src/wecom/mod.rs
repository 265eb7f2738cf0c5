//! The WeCom API: HTTP calls, errcode classes and cached access tokens.

pub mod client;
pub mod egress;
pub mod error;
pub mod in_flight;
pub mod token;

pub use client::{AccessToken, Client, Reply, Transport};
pub use error::{ErrorClass, classify};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::App;

/// One `T` per WeCom application (corp id and agent id), made on first use: the same app under
/// another name in the config, or after a reload, gets the same one.
pub struct PerApp<T>(Mutex<HashMap<(String, i64), Arc<T>>>);

impl<T: Default> PerApp<T> {
    pub fn get(&self, app: &App) -> Arc<T> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((app.corp_id.clone(), app.agent_id))
            .or_default()
            .clone()
    }
}

impl<T> Default for PerApp<T> {
    fn default() -> Self {
        PerApp(Mutex::new(HashMap::new()))
    }
}
