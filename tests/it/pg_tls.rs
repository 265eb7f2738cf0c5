//! TLS to PostgreSQL as libpq's `sslmode` says: a throwaway server with a self-signed
//! certificate that refuses every connection without TLS. `require` connects (encrypted, the
//! certificate not checked), `disable` is refused by the server, `verify-full` and `verify-ca`
//! refuse a certificate no trusted root signed.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::support::postgres::Postgres;
use crate::support::*;

/// Gives `server` a self-signed certificate for `localhost` and makes it refuse connections
/// without TLS; restarts it.
fn with_tls_only(server: &Postgres) {
    let data = server.data_dir();
    let (cert, key) = (data.join("server.crt"), data.join("server.key"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(made.status.success(), "{}", text(&made));
    // The server refuses a key others may read, and must own it.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    let owner = std::fs::metadata(data.join("PG_VERSION")).expect("data dir");
    use std::os::unix::fs::MetadataExt;
    for file in [&cert, &key] {
        std::os::unix::fs::chown(file, Some(owner.uid()), Some(owner.gid())).expect("chown");
    }
    let conf = data.join("postgresql.conf");
    let mut settings = std::fs::read_to_string(&conf).expect("read postgresql.conf");
    settings.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    std::fs::write(&conf, settings).expect("write postgresql.conf");
    let hba = data.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
    std::fs::write(
        &hba,
        format!("hostnossl all all 127.0.0.1/32 reject\n{rules}"),
    )
    .expect("write pg_hba.conf");
    server.restart();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_is_read_as_libpq_reads_it() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let url = server.create_database();
    with_tls_only(&server);
    let env = Env::new().await;
    env.write_schedules(&every_two_seconds("tick", "tick"));
    let with_mode = |mode: &str| url.replace("sslmode=disable", &format!("sslmode={mode}"));
    let history = |mode: &str| {
        let mut command = env.command(&["history"]);
        // `--db` again, after the folder's own: the last one counts.
        command.arg("--db").arg(with_mode(mode));
        command
    };
    for mode in ["require", "prefer"] {
        let output = history(mode).output().await.expect("run history");
        assert!(output.status.success(), "sslmode={mode}: {}", text(&output));
    }
    let refused = history("disable").output().await.expect("run history");
    assert!(!refused.status.success(), "the server refuses plain TCP");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no encryption"),
        "{}",
        text(&refused)
    );
    for mode in ["verify-full", "verify-ca"] {
        let output = history(mode).output().await.expect("run history");
        assert!(
            !output.status.success(),
            "sslmode={mode} took a self-signed certificate"
        );
        let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
        assert!(
            stderr.contains("certificate"),
            "sslmode={mode}: {}",
            text(&output)
        );
    }
}
