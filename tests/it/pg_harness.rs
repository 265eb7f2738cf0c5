//! The throwaway PostgreSQL server of `support::postgres`, which the PostgreSQL tests stand on:
//! its databases are apart, its rows survive a clean restart and a crash, the password role
//! needs its password, and its URLs work with the driver the daemon uses. Each test returns
//! early (having said so) when PostgreSQL is not installed, unless CI requires it.

use crate::support::postgres::{PASSWORD_ROLE, Postgres, SUPERUSER};
use crate::support::text;

/// The rows of `t`, in order, joined by commas.
const ROWS: &str = "SELECT coalesce(string_agg(x::text, ',' ORDER BY x), '') FROM t";

#[test]
fn databases_are_apart_and_their_rows_survive_a_restart_and_a_crash() {
    let Some(pg) = Postgres::start() else { return };
    let a = pg.create_database();
    let b = pg.create_database();
    assert_ne!(a, b, "every database is new");
    assert!(
        a.starts_with(&format!(
            "postgres://{SUPERUSER}@127.0.0.1:{}/wn_",
            pg.port()
        )),
        "{a}"
    );
    pg.psql(&a, "CREATE TABLE t(x int); INSERT INTO t VALUES (2), (1)");
    pg.psql(&b, "CREATE TABLE t(x int); INSERT INTO t VALUES (3)");
    assert_eq!(pg.psql(&a, ROWS), "1,2");
    assert_eq!(pg.psql(&b, ROWS), "3");

    pg.restart();
    assert_eq!(pg.psql(&a, ROWS), "1,2", "rows after a clean restart");

    // Committed rows survive a crash: the server replays its write-ahead log on the next start.
    pg.psql(&b, "INSERT INTO t VALUES (4)");
    pg.kill();
    pg.start_again();
    assert_eq!(pg.psql(&b, ROWS), "3,4", "rows after a crash");
    assert!(
        pg.log().contains("not properly shut down"),
        "the start after kill() recovered from a crash:\n{}",
        pg.log()
    );

    pg.stop();
    pg.start_again();
    assert_eq!(pg.psql(&a, ROWS), "1,2", "rows after a stop and a start");
    assert_eq!(pg.psql(&a, "SELECT current_user"), SUPERUSER);
}

#[test]
fn the_password_role_logs_in_with_its_password_only() {
    let Some(pg) = Postgres::start() else { return };
    let db = pg.create_database();
    let (role, password) = pg.password_role();
    assert_eq!(role, PASSWORD_ROLE);
    assert_eq!(password.len(), 24);

    let without = pg
        .psql_command(role, &db)
        .args(["-c", "SELECT 1"])
        .output()
        .expect("run psql");
    assert!(!without.status.success(), "{}", text(&without));
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("no password supplied"),
        "{}",
        text(&without)
    );

    let wrong = pg
        .psql_command(role, &db)
        .args(["-c", "SELECT 1"])
        .env("PGPASSWORD", "not-the-password")
        .output()
        .expect("run psql");
    assert!(!wrong.status.success(), "{}", text(&wrong));
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"),
        "{}",
        text(&wrong)
    );

    // The role may create tables in the database's public schema (granted by create_database).
    let with = pg
        .psql_command(role, &db)
        .args(["-c", "CREATE TABLE mine(x int); SELECT current_user"])
        .env("PGPASSWORD", password)
        .output()
        .expect("run psql");
    assert!(with.status.success(), "{}", text(&with));
    assert_eq!(String::from_utf8_lossy(&with.stdout).trim(), role);
    assert_eq!(
        pg.psql(
            &db,
            "SELECT tableowner FROM pg_tables WHERE tablename = 'mine'"
        ),
        role
    );
}

#[tokio::test]
async fn its_urls_work_with_tokio_postgres() {
    let Some(pg) = Postgres::start() else { return };
    let db = pg.create_database();
    for (url, user) in [
        (db.clone(), SUPERUSER),
        (pg.password_url(&db), PASSWORD_ROLE),
    ] {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
        let connection = tokio::spawn(connection);
        let row = client
            .query_one("SELECT current_user::text", &[])
            .await
            .expect("query");
        assert_eq!(row.get::<_, String>(0), user);
        drop(client);
        connection.await.expect("join").expect("connection");
    }
    // Without its password, the password role is refused.
    let refused =
        tokio_postgres::connect(&pg.url_as(PASSWORD_ROLE, &db), tokio_postgres::NoTls).await;
    assert!(refused.is_err(), "logged in without a password");
}

#[test]
fn servers_started_at_once_have_their_own_ports_and_data() {
    let servers: Vec<Option<Postgres>> = std::thread::scope(|scope| {
        let starts: Vec<_> = (0..3).map(|_| scope.spawn(Postgres::start)).collect();
        starts
            .into_iter()
            .map(|s| s.join().expect("start"))
            .collect()
    });
    let servers: Vec<Postgres> = servers.into_iter().flatten().collect();
    if servers.is_empty() {
        return;
    }
    let mut ports: Vec<u16> = servers.iter().map(Postgres::port).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), servers.len(), "each server has its own port");
    for (i, pg) in servers.iter().enumerate() {
        let db = pg.create_database();
        pg.psql(
            &db,
            &format!("CREATE TABLE t(x int); INSERT INTO t VALUES ({i})"),
        );
    }
    for (i, pg) in servers.iter().enumerate() {
        assert_eq!(
            pg.psql(
                "postgres",
                "SELECT count(*) FROM pg_database WHERE datname LIKE 'wn_%'"
            ),
            "1",
            "a server holds only its own database"
        );
        let db = pg.psql(
            "postgres",
            "SELECT datname FROM pg_database WHERE datname LIKE 'wn_%'",
        );
        assert_eq!(pg.psql(&db, ROWS), i.to_string());
    }
}
