//! The system's zone as glibc reads `TZ`: file paths and POSIX rules resolve to their IANA zone,
//! and a `TZ` that cannot be resolved is a config error (not UTC with a warning) when the file
//! sets no `timezone:`.

use std::process::Output;

use crate::support::{Env, text};

/// A config with no top-level `timezone:`: the schedule runs in the system's zone.
fn write_zoneless_config(env: &Env, extra: &str) {
    env.write_config(&format!(
        "{extra}{}schedules:\n  - {{ name: standup, cron: '30 9 * * *', to: {{ users: [u] }}, text: {{ content: hi }} }}\n",
        env.apps_yaml()
    ));
}

async fn check_with_tz(env: &Env, tz: &str) -> Output {
    env.command(&["check", "--dry-run", "--next", "2"])
        .env("TZ", tz)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run check")
}

#[track_caller]
fn assert_default_zone(output: &Output, zones: &[&str], offset: &str) {
    assert!(output.status.success(), "{}", text(output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        zones
            .iter()
            .any(|zone| stdout.contains(&format!("default zone {zone})"))),
        "not in {zones:?}\n{}",
        text(output)
    );
    let nexts: Vec<&str> = stdout.lines().filter(|l| l.contains("next:")).collect();
    assert_eq!(nexts.len(), 2, "{}", text(output));
    for next in nexts {
        assert!(next.ends_with(&format!("09:30:00 {offset}")), "{next}");
    }
    assert!(!stdout.contains("warning: timezone"), "{}", text(output));
}

#[tokio::test]
async fn tz_file_paths_resolve_to_their_zone() {
    let env = Env::new().await;
    write_zoneless_config(&env, "");
    let link = env.path("localtime-link");
    std::os::unix::fs::symlink("/usr/share/zoneinfo/Asia/Tokyo", &link).unwrap();
    let copy = env.path("localtime-copy");
    std::fs::copy("/usr/share/zoneinfo/Asia/Tokyo", &copy).unwrap();
    for tz in [
        "/usr/share/zoneinfo/Asia/Tokyo".to_string(),
        ":/usr/share/zoneinfo/Asia/Tokyo".to_string(),
        // What TZ=:/etc/localtime does on a Tokyo host, with a link and with a copied file.
        format!(":{}", link.display()),
        format!(":{}", copy.display()),
    ] {
        let output = check_with_tz(&env, &tz).await;
        assert_default_zone(&output, &["Asia/Tokyo", "Japan"], "+09:00");
    }
    // The host's own /etc/localtime resolves too (to whichever zone it is).
    let output = check_with_tz(&env, ":/etc/localtime").await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("warning: timezone"),
        "{}",
        text(&output)
    );
}

#[tokio::test]
async fn a_posix_tz_rule_resolves_to_the_zone_that_follows_it() {
    let env = Env::new().await;
    write_zoneless_config(&env, "");
    let output = check_with_tz(&env, "EST5EDT,M3.2.0,M11.1.0").await;
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("default zone EST5EDT)"),
        "{}",
        text(&output)
    );
    let output = check_with_tz(&env, "JST-9").await;
    assert_default_zone(&output, &["Etc/GMT-9"], "+09:00");
}

#[tokio::test]
async fn a_tz_that_cannot_be_resolved_is_an_error_unless_the_file_sets_a_zone() {
    let env = Env::new().await;
    write_zoneless_config(&env, "");
    for tz in ["Nowhere/Atlantis", "XYZ3ABC,M1.1.0,M2.1.0", ":/etc/passwd"] {
        let output = check_with_tz(&env, tz).await;
        assert_eq!(output.status.code(), Some(3), "{tz}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("timezone: TZ={tz} ")) && stderr.contains("set timezone:"),
            "{tz}: {}",
            text(&output)
        );
    }
    write_zoneless_config(&env, "timezone: Asia/Shanghai\n");
    let output = check_with_tz(&env, "Nowhere/Atlantis").await;
    assert!(output.status.success(), "{}", text(&output));
}
