//! The `wecom-notify` command line: parse the arguments, set up logging, dispatch to
//! [`wecom_notify::commands`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{CommandFactory, Parser, Subcommand};
use wecom_notify::commands::{self, Globals};
use wecom_notify::config::DEFAULT_CONFIG_PATH;
use wecom_notify::logging::{self, LogFormat};

/// Send WeCom (企业微信) application messages on cron schedules, with an auditable history.
#[derive(Debug, Parser)]
#[command(name = "wecom-notify", version, about)]
struct Cli {
    /// The schedules file.
    #[arg(long, global = true, env = "WECOM_NOTIFY_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// The database: a SQLite file or a postgres:// URL (no password in it: see database_password_env) [default: the config's `database`, else $STATE_DIRECTORY/wecom-notify.db, else ./wecom-notify.db].
    #[arg(long, global = true, value_name = "PATH|URL")]
    db: Option<OsString>,
    /// Log format on stderr (filter with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// For tests: the instant check and history take as now (RFC 3339).
    #[arg(long, global = true, hide = true, value_name = "TIMESTAMP", value_parser = commands::parse_instant)]
    now: Option<DateTime<Utc>>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon in the foreground (systemd Type=notify).
    Run {
        /// Render and record every send, but never call WeCom (no credentials needed).
        #[arg(long)]
        dry_run: bool,
    },
    /// Validate the config; list every schedule with its next fire times.
    Check {
        /// How many upcoming fire times to list per schedule.
        #[arg(long, default_value_t = 3)]
        next: usize,
        /// Do not require the apps' secrets to be readable (as for `run --dry-run`).
        #[arg(long)]
        dry_run: bool,
        /// `text` for a person, `json` for a CI pipeline (the problems, the warnings and the
        /// next fire times as one JSON document on stdout).
        #[arg(long, value_enum, default_value_t = commands::check::Format::Text)]
        format: commands::check::Format,
    },
    /// Fire one schedule now (trigger = manual); exits 0 only if WeCom accepted it.
    Send {
        /// The schedule's name.
        schedule: String,
        /// Print and record the exact body, but do not call WeCom.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the history of sends, newest first (or per schedule with --summary).
    History(commands::history::Options),
    /// Recall a sent message by history id, within WeCom's 24 h window.
    Recall {
        /// The history id (`history` lists them; `send` prints it).
        id: i64,
    },
    /// For packagers: write the man page or a shell's completion script, generated from these
    /// very definitions.
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generated,
    },
}

#[derive(Debug, Subcommand)]
enum Generated {
    /// The man page, wecom-notify.1.
    Man {
        /// The folder to write it into.
        dir: PathBuf,
    },
    /// The completion script for a shell.
    Completions {
        shell: clap_complete::Shell,
        /// The folder to write it into.
        dir: PathBuf,
    },
}

/// `generate`: writes the file, prints its path.
fn generate(what: Generated) -> ExitCode {
    let written = match &what {
        Generated::Man { dir } => commands::generate::man_page_to(Cli::command(), dir),
        Generated::Completions { shell, dir } => {
            commands::generate::completions_to(Cli::command(), *shell, dir)
        }
    };
    match written {
        Ok(path) => {
            println!("{}", path.display());
            ExitCode::from(commands::EXIT_OK)
        }
        Err(e) => {
            eprintln!("error: cannot write the generated file: {e}");
            ExitCode::from(commands::EXIT_FAILED)
        }
    }
}

/// mimalloc, not glibc's malloc: a large config left glibc's heap fragmented (see
/// `src/daemon/memory.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off before the first allocation, which Rust's runtime makes before
/// `main` (see [`wecom_notify::daemon::disable_transparent_huge_pages`]).
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static HUGE_PAGES_OFF: extern "C" fn() = huge_pages_off;

#[cfg(target_os = "linux")]
extern "C" fn huge_pages_off() {
    wecom_notify::daemon::disable_transparent_huge_pages();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.now.is_some() && !matches!(cli.command, Command::Check { .. } | Command::History(_)) {
        // run, send and recall act on the real clock: a test passing --now to them would be
        // misled, so say so instead of ignoring it.
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--now applies to check and history only",
            )
            .exit();
    }
    logging::init(cli.log_format);
    let globals = Globals {
        config: cli.config,
        db: cli.db,
        now: cli.now,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(commands::EXIT_FAILED);
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run { dry_run } => commands::run::run(&globals, dry_run).await,
            Command::Send { schedule, dry_run } => {
                commands::send::run(&globals, &schedule, dry_run).await
            }
            Command::History(options) => commands::history::run(&globals, &options).await,
            Command::Recall { id } => commands::recall::run(&globals, id).await,
            Command::Check {
                next,
                dry_run,
                format,
            } => commands::check::run(&globals, next, dry_run, format),
            Command::Generate { what } => generate(what),
        }
    })
}
