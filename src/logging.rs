//! Logs to stderr (journald picks them up), as text or JSON, filtered by `RUST_LOG`.
//!
//! Field values (WeCom's errmsg, schedule names, config text) never reach a log line raw:
//! text logs escape them in their one field formatter ([`crate::shown`]), so a newline in an
//! errmsg cannot forge a line; JSON already escapes C0 controls, and its writer escapes the
//! rest (DEL, C1, bidi controls) as `\uXXXX`.

use std::io::{self, IsTerminal, Write};

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::{Writer, debug_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::shown::{json_safe, write_shown};

/// The filter when `RUST_LOG` is unset. tokio-cron-scheduler logs every job it adds at info.
pub const DEFAULT_FILTER: &str = "info,tokio_cron_scheduler=warn";

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber; `RUST_LOG` defaults to `info`.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only for a person at a terminal: journald would store the escape codes verbatim.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr)
                    .fmt_fields(debug_fn(text_field).delimited(" "))
                    .with_filter(filter_fn(not_a_statement)),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(|| JsonSafe(std::io::stderr()))
                    .json()
                    .flatten_event(true)
                    .with_filter(filter_fn(not_a_statement)),
            )
            .try_init(),
    };
    if let Err(e) = result {
        eprintln!("logging is already set up: {e}");
    }
}

/// Whatever `RUST_LOG` asks: tokio-postgres logs each statement with its parameters at
/// debug, and a parameter may be an access token (the token cache's writes). Its info and
/// above (notices, connection errors) are kept.
fn not_a_statement(meta: &tracing::Metadata<'_>) -> bool {
    !(meta.target().starts_with("tokio_postgres") && *meta.level() > tracing::Level::INFO)
}

/// One field of a text log line, as the default formatter writes it (`name=value`, the message
/// bare), with its value escaped.
fn text_field(
    writer: &mut Writer<'_>,
    field: &tracing::field::Field,
    value: &dyn std::fmt::Debug,
) -> std::fmt::Result {
    let value = format!("{value:?}");
    match field.name() {
        "message" => write_shown(writer, &value),
        name => {
            write!(writer, "{name}=")?;
            write_shown(writer, &value)
        }
    }
}

/// stderr for JSON lines, through [`json_safe`].
struct JsonSafe<W>(W);

impl<W: Write> Write for JsonSafe<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The formatter writes each event whole, so a buffer is complete UTF-8; anything else
        // is passed on as it came.
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(json_safe(text).as_bytes())?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
