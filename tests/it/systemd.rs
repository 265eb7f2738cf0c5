//! The shipped unit: `systemd-analyze verify` is silent on it, and its exposure score in
//! `systemd-analyze security --offline=yes` stays at 2.0 or below. Needs systemd-analyze
//! (Debian package `systemd`; `.ci/run` installs it).

use std::path::Path;
use std::process::Command;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/wecom-notify.service");

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze is needed for this test (apt-get install systemd): {e}")
        })
}

fn install(root: &Path, source: &Path, target: &str) {
    let path = root.join(target.trim_start_matches('/'));
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::copy(source, &path)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", source.display(), path.display()));
}

#[test]
fn the_unit_verifies_without_a_word() {
    // verify checks that every Exec binary exists, so it runs against a throw-away root holding
    // the binary, kill, and systemd's own units.
    let root = tempfile::tempdir().expect("temp dir");
    install(
        root.path(),
        Path::new(crate::support::binary()),
        "/usr/local/bin/wecom-notify",
    );
    let kill = ["/bin/kill", "/usr/bin/kill"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("a kill binary");
    install(root.path(), kill, "/bin/kill");
    install(
        root.path(),
        Path::new(UNIT),
        "/etc/systemd/system/wecom-notify.service",
    );
    let units = root.path().join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).expect("mkdir");
    for entry in std::fs::read_dir("/usr/lib/systemd/system")
        .expect("systemd's units")
        .flatten()
    {
        let path = entry.path();
        if path.is_file() {
            let _ = std::fs::copy(&path, units.join(entry.file_name()));
        }
    }
    let root_arg = format!("--root={}", root.path().display());
    let output = systemd_analyze(&["verify", &root_arg, "wecom-notify.service"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // verify exits 0 even when it warns about an unknown key: clean means silent.
    assert!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}

#[test]
fn the_unit_is_hardened_to_an_exposure_of_two_or_less() {
    let output = systemd_analyze(&["security", "--offline=yes", UNIT]);
    let said = String::from_utf8_lossy(&output.stdout).to_string();
    let line = said
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "no score in:\n{said}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let score: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable score line: {line}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{said}");
}

#[test]
fn the_unit_says_what_the_design_promises() {
    let unit = std::fs::read_to_string(UNIT).expect("unit");
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "StateDirectory=wecom-notify",
        "ConfigurationDirectory=wecom-notify",
        "LoadCredential=ops:",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "WatchdogSec=",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "the unit lacks {line}"
        );
    }
    // The egress proxy (WeCom's trusted IPs) is set in a drop-in, which the comments show.
    for comment in [
        "systemctl edit wecom-notify",
        "#     Environment=HTTPS_PROXY=http://",
        "#     EnvironmentFile=",
    ] {
        assert!(unit.contains(comment), "the unit's comments lack {comment}");
    }
}
