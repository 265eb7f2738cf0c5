//! The man page and the completions that the hidden `generate` command writes for the package:
//! the page renders with `man -l` and covers every command and option; bash parses its script.

use std::process::Command;

fn generate(args: &[&str]) -> std::path::PathBuf {
    let output = Command::new(crate::support::binary())
        .arg("generate")
        .args(args)
        .output()
        .expect("run wecom-notify generate");
    assert!(
        output.status.success(),
        "generate {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path = String::from_utf8(output.stdout).expect("utf-8 path");
    std::path::PathBuf::from(path.trim())
}

#[test]
fn the_man_page_renders_with_man_and_names_every_command_option_exit_code_and_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let page = generate(&["man", dir.path().to_str().expect("utf-8 dir")]);
    assert_eq!(page, dir.path().join("wecom-notify.1"));
    let output = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&page)
        .env("MANWIDTH", "200")
        // UTF-8 for the 企业微信 in the NAME line; roff's \- then shows as U+2212, mapped back
        // below to the - a user types.
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("man is needed for this test (apt-get install man-db): {e}"));
    let warnings = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "man -l failed: {warnings}");
    assert!(warnings.trim().is_empty(), "man warned: {warnings}");
    // Off a terminal, man still emboldens by overstriking: "X\x08X". Keep what is read.
    let mut text = String::new();
    for c in String::from_utf8_lossy(&output.stdout).chars() {
        if c == '\u{8}' {
            text.pop();
        } else if c == '\u{2212}' || c == '\u{2010}' {
            text.push('-');
        } else {
            text.push(c);
        }
    }
    for needle in [
        "SYNOPSIS",
        "wecom-notify run",
        "wecom-notify check",
        "wecom-notify send",
        "wecom-notify history",
        "wecom-notify recall",
        "--config",
        "--db",
        "--log-format",
        "--dry-run",
        "--next",
        "--schedule",
        "--status",
        "--since",
        "--limit",
        "--json",
        "--summary",
        "EXIT STATUS",
        "ENVIRONMENT",
        "WECOM_NOTIFY_CONFIG",
        "CREDENTIALS_DIRECTORY",
        "FILES",
        "/etc/wecom-notify/schedules.yaml",
        "/var/lib/wecom-notify/wecom-notify.db",
    ] {
        assert!(
            text.contains(needle),
            "{needle:?} missing from the man page:\n{text}"
        );
    }
    assert!(
        !text.contains("generate"),
        "the hidden command is in the man page:\n{text}"
    );
    assert!(
        !text.contains("--now"),
        "the hidden --now is in the man page:\n{text}"
    );
}

#[test]
fn the_completions_are_written_for_bash_zsh_and_fish_and_bash_parses_its_script() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().to_str().expect("utf-8 dir");
    let bash = generate(&["completions", "bash", out]);
    let zsh = generate(&["completions", "zsh", out]);
    let fish = generate(&["completions", "fish", out]);
    assert_eq!(bash, dir.path().join("wecom-notify.bash"));
    assert_eq!(zsh, dir.path().join("_wecom-notify"));
    assert_eq!(fish, dir.path().join("wecom-notify.fish"));
    let script = std::fs::read_to_string(&bash).expect("bash script");
    assert!(script.contains("--log-format") && script.contains("recall"));
    let output = Command::new("bash")
        .arg("-n")
        .arg(&bash)
        .output()
        .expect("run bash");
    assert!(
        output.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
