//! Integration tests: the real binary and the library against a strict fake WeCom on 127.0.0.1,
//! with real SQLite files in temporary folders. One test binary keeps link times down.

#[macro_use]
mod support;

mod calendar;
mod check;
mod client;
mod clock;
mod crashes;
mod daemon;
mod fake_robot;
mod generated;
mod guarantees;
mod history;
mod hostile;
mod instances;
mod messages;
mod operating;
mod pg_commands;
mod pg_harness;
mod pg_tls;
mod postgres;
mod properties;
mod proxy;
mod readers;
mod recall;
mod robots;
mod send;
mod storage;
mod systemd;
mod tokens;
mod zones;
