//! `generate` (hidden): the man page and the shell completions, written from the clap
//! definitions in `main.rs`, so that neither is ever kept by hand beside the code.
//!
//! The man page is clap_mangen's title, synopsis, description and global options, then one
//! COMMANDS subsection per command with that command's own options (clap_mangen lists commands
//! but not their options), then EXIT STATUS (from the `EXIT_*` constants), ENVIRONMENT and FILES.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap_complete::Shell;

use super::{EXIT_CONFIG, EXIT_FAILED, EXIT_IN_PROGRESS, EXIT_OK, EXIT_USAGE};
use crate::config::DEFAULT_CONFIG_PATH;

/// The exit codes, as the man page's EXIT STATUS lists them.
pub const EXIT_CODES: &[(u8, &str)] = &[
    (
        EXIT_OK,
        "Done: the config is valid (check), WeCom accepted the message (send), a clean stop (run).",
    ),
    (
        EXIT_FAILED,
        "The command ran but failed: WeCom refused, the network, the database.",
    ),
    (
        EXIT_USAGE,
        "The command line is wrong (an unknown flag, a missing argument).",
    ),
    (
        EXIT_CONFIG,
        "The config file is missing or invalid, or names no such schedule.",
    ),
    (
        EXIT_IN_PROGRESS,
        "recall: another recall of the same row is in progress; nothing was done.",
    ),
];

/// The environment variables the program reads, as the man page's ENVIRONMENT lists them.
pub const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "WECOM_NOTIFY_CONFIG",
        "The schedules file when --config is not given.",
    ),
    (
        "STATE_DIRECTORY",
        "Set by systemd (StateDirectory=): the database is $STATE_DIRECTORY/wecom-notify.db when neither --db nor the config's database is set.",
    ),
    (
        "CREDENTIALS_DIRECTORY",
        "Set by systemd (LoadCredential=): an app's secret_credential: NAME is read from $CREDENTIALS_DIRECTORY/NAME.",
    ),
    (
        "RUST_LOG",
        "Filters the log lines on stderr, e.g. RUST_LOG=debug (default: info).",
    ),
    (
        "NO_COLOR",
        "When set, log lines carry no colour codes even on a terminal.",
    ),
    (
        "TZ",
        "The system's local zone, used when the config sets no timezone.",
    ),
    (
        "NOTIFY_SOCKET, WATCHDOG_USEC",
        "Set by systemd for Type=notify and WatchdogSec=: run reports READY=1, RELOADING=1, STOPPING=1 and WATCHDOG=1 there.",
    ),
    (
        "https_proxy, HTTPS_PROXY, http_proxy, HTTP_PROXY, ALL_PROXY, NO_PROXY",
        "Read at start as curl reads them: WeCom calls go through that proxy (send through the host whose IP the app trusts, or WeCom answers 60020), except to the hosts NO_PROXY names. An app's proxy: key overrides them.",
    ),
    (
        "the config's secret_env",
        "An app's secret_env: NAME reads the app secret from the variable NAME.",
    ),
];

/// The files the program and its package use, as the man page's FILES lists them.
pub const FILES: &[(&str, &str)] = &[
    (
        DEFAULT_CONFIG_PATH,
        "The schedules (YAML): apps, schedules, database. The package installs a commented example here.",
    ),
    (
        "/etc/wecom-notify/*.secret",
        "App secrets, root-only (0600), handed to the service by the unit's LoadCredential= lines.",
    ),
    (
        "/var/lib/wecom-notify/wecom-notify.db",
        "The SQLite history of every send, the daemon's events and the cached access tokens (0600), under systemd's StateDirectory=.",
    ),
    (
        "/lib/systemd/system/wecom-notify.service",
        "The systemd unit (Type=notify, DynamicUser=yes, hardened).",
    ),
    (
        "/usr/share/doc/wecom-notify/README.md",
        "The full reference: configuration, database, operations.",
    ),
];

/// Writes `wecom-notify.1` into `dir` and returns its path.
pub fn man_page_to(cli: clap::Command, dir: &Path) -> io::Result<PathBuf> {
    let path = dir.join(format!("{}.1", cli.get_name()));
    let mut page = Vec::new();
    man_page(cli, &mut page)?;
    fs::write(&path, page)?;
    Ok(path)
}

/// Renders the man page (roff) of the whole command line.
pub fn man_page(cli: clap::Command, out: &mut dyn Write) -> io::Result<()> {
    let name = cli.get_name().to_owned();
    let man = clap_mangen::Man::new(cli.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;

    writeln!(out, ".SH COMMANDS")?;
    for command in cli.get_subcommands().filter(|c| !c.is_hide_set()) {
        let full = format!("{name} {}", command.get_name());
        writeln!(out, ".SS \"{}\"", escape(&full))?;
        let command = command.clone().bin_name(full).disable_help_flag(true);
        let man = clap_mangen::Man::new(command.clone());
        // The sections of a command's own page become paragraphs of its subsection.
        let mut synopsis = Vec::new();
        man.render_synopsis_section(&mut synopsis)?;
        out.write_all(&without_heading(&synopsis))?;
        writeln!(out, ".PP")?;
        let mut description = Vec::new();
        man.render_description_section(&mut description)?;
        out.write_all(&without_heading(&description))?;
        if command.get_arguments().any(|a| !a.is_hide_set()) {
            let mut options = Vec::new();
            man.render_options_section(&mut options)?;
            out.write_all(&without_heading(&options))?;
        }
    }

    writeln!(out, ".SH \"EXIT STATUS\"")?;
    for (code, meaning) in EXIT_CODES {
        writeln!(out, ".TP\n\\fB{code}\\fR\n{}", escape(meaning))?;
    }
    writeln!(out, ".SH ENVIRONMENT")?;
    for (variable, meaning) in ENVIRONMENT {
        writeln!(
            out,
            ".TP\n\\fB{}\\fR\n{}",
            escape(variable),
            escape(meaning)
        )?;
    }
    writeln!(out, ".SH FILES")?;
    for (file, meaning) in FILES {
        writeln!(out, ".TP\n\\fI{}\\fR\n{}", escape(file), escape(meaning))?;
    }
    writeln!(out, ".SH \"SEE ALSO\"")?;
    writeln!(
        out,
        "\\fBsystemctl\\fR(1), \\fBjournalctl\\fR(1), \\fBsqlite3\\fR(1), \\fBcrontab\\fR(5)"
    )?;
    man.render_version_section(out)?;
    Ok(())
}

/// Writes the completion script for `shell` into `dir` (named as that shell looks it up:
/// `wecom-notify.bash`, `_wecom-notify`, `wecom-notify.fish`) and returns its path.
pub fn completions_to(mut cli: clap::Command, shell: Shell, dir: &Path) -> io::Result<PathBuf> {
    let name = cli.get_name().to_owned();
    clap_complete::generate_to(shell, &mut cli, name, dir)
}

/// Drops the `.SH` line that clap_mangen puts before a section.
fn without_heading(section: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(section);
    text.lines()
        .filter(|line| !line.starts_with(".SH"))
        .flat_map(|line| [line, "\n"])
        .collect::<String>()
        .into_bytes()
}

/// Text as roff shows it literally: backslashes and hyphens escaped, no line that starts a
/// request.
fn escape(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    if text.starts_with('.') || text.starts_with('\'') {
        format!("\\&{text}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> clap::Command {
        clap::Command::new("demo")
            .version("1.0")
            .about("A demo.")
            .arg(clap::Arg::new("config").long("config").global(true))
            .subcommand(
                clap::Command::new("check")
                    .about("Check it.")
                    .arg(clap::Arg::new("next").long("next").help("How many.")),
            )
            .subcommand(clap::Command::new("internal-only").hide(true))
    }

    #[test]
    fn the_man_page_lists_every_command_with_its_options_and_the_contract_sections() {
        let mut page = Vec::new();
        man_page(demo(), &mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        for needle in [
            ".TH demo 1",
            ".SH OPTIONS",
            "\\-\\-config",
            ".SH COMMANDS",
            ".SS \"demo check\"",
            "\\-\\-next",
            "How many.",
            ".SH \"EXIT STATUS\"",
            ".SH ENVIRONMENT",
            "WECOM_NOTIFY_CONFIG",
            ".SH FILES",
            "/etc/wecom\\-notify/schedules.yaml",
        ] {
            assert!(page.contains(needle), "{needle:?} missing from:\n{page}");
        }
        assert!(
            !page.contains("internal"),
            "a hidden command is shown:\n{page}"
        );
        assert_eq!(
            page.matches(".SH OPTIONS").count(),
            1,
            "a command's options are a subsection, not a second OPTIONS:\n{page}"
        );
    }

    #[test]
    fn every_exit_code_the_commands_use_is_listed_once() {
        let codes: Vec<u8> = EXIT_CODES.iter().map(|(code, _)| *code).collect();
        assert_eq!(
            codes,
            [
                EXIT_OK,
                EXIT_FAILED,
                EXIT_USAGE,
                EXIT_CONFIG,
                EXIT_IN_PROGRESS
            ]
        );
    }

    #[test]
    fn escape_keeps_hyphens_and_leading_dots_literal() {
        assert_eq!(escape("--db"), "\\-\\-db");
        assert_eq!(escape(".hidden"), "\\&.hidden");
        assert_eq!(escape("a\\b"), "a\\eb");
    }
}
