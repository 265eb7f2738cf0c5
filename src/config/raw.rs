//! The YAML file as written: serde structs with every key optional and unknown keys rejected.
//!
//! Required keys are `Option`s on purpose: validation then reports every missing key of every
//! entry at once instead of stopping at serde's first "missing field".

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// The top level of the config file. Apps and schedules stay as YAML values here so that each
/// one is deserialized on its own and a typo in one does not hide the problems of the others.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub database: Option<PathBuf>,
    pub timezone: Option<String>,
    #[serde(default)]
    pub apps: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    pub schedules: Vec<serde_yaml::Value>,
}

/// One entry under `apps:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    pub corp_id: Option<String>,
    pub agent_id: Option<i64>,
    pub secret_env: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub secret_credential: Option<String>,
    pub secret: Option<String>,
    pub api_base: Option<String>,
}

/// One entry under `schedules:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    pub name: Option<String>,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub app: Option<String>,
    pub to: Option<RawRecipients>,
    pub text: Option<RawText>,
    pub textcard: Option<RawTextCard>,
    pub safe: Option<bool>,
    pub enable_id_trans: Option<bool>,
    pub duplicate_check_interval: Option<i64>,
    pub enabled: Option<bool>,
}

/// `to:` of a schedule. Ids may be written as YAML numbers (`parties: [2]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecipients {
    #[serde(default)]
    pub users: Vec<Id>,
    #[serde(default)]
    pub parties: Vec<Id>,
    #[serde(default)]
    pub tags: Vec<Id>,
}

/// A recipient id: a string or a number in YAML, always a string to WeCom.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Id {
    Text(String),
    Number(i64),
}

impl Id {
    pub fn into_string(self) -> String {
        match self {
            Id::Text(text) => text,
            Id::Number(number) => number.to_string(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawText {
    pub content: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTextCard {
    pub title: Option<String>,
    pub description: Option<String>,
    pub url: Option<String>,
    pub btntxt: Option<String>,
}
