//! The top-level `database:` (a SQLite file or a `postgres://` URL) and where a PostgreSQL
//! password comes from (`database_password_env | _file | _credential`).

use super::*;
use crate::config::database::{password_field, url_location};
use crate::store::Location;

/// The password keys, in the order messages list them.
const PASSWORD_KEYS: [&str; 3] = [
    "database_password_env",
    "database_password_file",
    "database_password_credential",
];

/// `database:` as a [`Location`]: a path made absolute against `base` (the config's folder), or
/// a checked URL with its password source. `None` when it is left out or invalid (reported).
/// The password itself is not read here: the store reads it when it connects.
pub(super) fn validate_database(
    top: &Entry<'_>,
    base: &Path,
    report: &mut Report,
) -> Option<Location> {
    let file = Subject::File;
    let sources = password_sources(top, base, report);
    let password = match sources.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    };
    let (location, is_url) = match top.get::<PathBuf>("database", report) {
        Field::Value(path) => match url_location(&path.to_string_lossy(), password) {
            Ok(Some(location)) => (Some(location), true),
            Ok(None) => (Some(Location::Sqlite(base.join(path))), false),
            Err(message) => {
                report.error(&file, "database", message);
                (None, true)
            }
        },
        // Already reported; the password keys are not blamed for it.
        Field::Invalid => return None,
        Field::Missing => (None, false),
    };
    if !is_url {
        for source in &sources {
            let key = password_field(source);
            report.error(
                &file,
                key,
                format!("{key} applies only to a postgres:// database; set database: to a postgres://USER@HOST/DATABASE URL, or remove {key}"),
            );
        }
    } else if sources.len() > 1 {
        let keys: Vec<_> = sources.iter().map(password_field).collect();
        report.error(
            &file,
            keys[1],
            format!(
                "{} are all set; keep exactly one password source",
                keys.join(", ")
            ),
        );
    }
    location
}

/// Every password key that is set, as a [`SecretSource`] (a file relative to `base`).
fn password_sources(top: &Entry<'_>, base: &Path, report: &mut Report) -> Vec<SecretSource> {
    let [env, file, credential] = PASSWORD_KEYS.map(|key| top.get::<String>(key, report).ok());
    [
        env.map(SecretSource::Env),
        file.map(|path| SecretSource::File(base.join(path))),
        credential.map(SecretSource::Credential),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, database_location, parse};
    use crate::store::PgTarget;

    const REST: &str = "apps:\n  ops: { corp_id: ww1, agent_id: 1, secret: s }\nschedules: []\n";

    fn load(top: &str) -> Result<crate::config::Config, ConfigError> {
        parse(
            &format!("{top}{REST}"),
            Path::new("/etc/wecom-notify/schedules.yaml"),
            Secrets::Unneeded,
        )
    }

    fn refused(top: &str) -> Vec<Problem> {
        match load(top) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_path_stays_a_path_against_the_config_folder_and_a_url_keeps_its_password_source() {
        let config = load("database: state/wecom.db\n").unwrap();
        assert_eq!(
            config.database,
            Some(Location::Sqlite("/etc/wecom-notify/state/wecom.db".into()))
        );
        let url = "postgres://wecom@db.internal:5432/wecom?sslmode=verify-full";
        let config = load(&format!(
            "database: {url}\ndatabase_password_file: pg.secret\n"
        ))
        .unwrap();
        assert_eq!(
            config.database,
            Some(Location::Postgres(PgTarget {
                url: url.to_string(),
                password: Some(SecretSource::File("/etc/wecom-notify/pg.secret".into())),
            }))
        );
        let config = load(&format!("database: {url}\n")).unwrap();
        assert!(
            matches!(&config.database, Some(Location::Postgres(t)) if t.password.is_none()),
            "{:?}",
            config.database
        );
    }

    #[test]
    fn a_password_in_the_url_is_refused_on_database_and_shown_nowhere() {
        let secret = "Pg-s3cr3t-9f2";
        for top in [
            format!("database: postgres://wecom:{secret}@db/wecom\n"),
            format!("database: \"postgres://wecom@db/wecom?password={secret}\"\n"),
        ] {
            let error = load(&top).unwrap_err();
            let ConfigError::Invalid { problems, .. } = &error else {
                panic!("{error}");
            };
            assert_eq!(problems.len(), 1, "{error}");
            assert_eq!(&*problems[0].field, "database");
            assert!(problems[0].message.contains("holds a password"), "{error}");
            for shown in [error.to_string(), format!("{error:?}")] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
        assert!(
            load(&format!("database: postgres://wecom:{secret}@db/wecom\n"))
                .unwrap_err()
                .to_string()
                .contains("postgres://wecom:***@db/wecom")
        );
        // Nor does a loaded config print what its password source holds.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pg.secret");
        std::fs::write(&file, secret).unwrap();
        let config = load(&format!(
            "database: postgres://wecom@db/wecom\ndatabase_password_file: {}\n",
            file.display()
        ))
        .unwrap();
        assert!(!format!("{config:?}").contains(secret));
    }

    #[test]
    fn password_keys_need_a_url_and_only_one_of_them() {
        for top in [
            "database_password_env: PGPASSWORD\n",
            "database: wecom.db\ndatabase_password_env: PGPASSWORD\n",
        ] {
            let problems = refused(top);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(&*problems[0].field, "database_password_env");
            assert!(
                problems[0]
                    .message
                    .starts_with("database_password_env applies only to a postgres:// database"),
                "{problems:?}"
            );
        }
        let problems = refused(
            "database: postgres://w@db/w\ndatabase_password_env: PGPASSWORD\ndatabase_password_credential: pg\n",
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(&*problems[0].field, "database_password_credential");
        assert!(
            problems[0]
                .message
                .contains("keep exactly one password source"),
            "{problems:?}"
        );
        // A broken URL is reported once; the password key is not blamed for it.
        let problems =
            refused("database: postgres://w@db/w?sslmode=on\ndatabase_password_env: P\n");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(&*problems[0].field, "database");
    }

    #[test]
    fn a_password_key_of_the_wrong_type_is_not_echoed() {
        let problems =
            refused("database: postgres://w@db/w\ndatabase_password_env: 9876543210123\n");
        assert_eq!(&*problems[0].field, "database_password_env");
        assert!(
            !problems[0].message.contains("9876543210123"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_db_url_takes_the_configs_password_source_and_is_refused_with_a_password() {
        let config =
            load("database: postgres://w@db/w\ndatabase_password_env: PGPASSWORD\n").unwrap();
        let flag = std::ffi::OsStr::new("postgres://other@db2/w2");
        assert_eq!(
            database_location(Some(flag), config.database.as_ref()),
            Ok(Location::Postgres(PgTarget {
                url: "postgres://other@db2/w2".to_string(),
                password: Some(SecretSource::Env("PGPASSWORD".into())),
            }))
        );
        let path = std::ffi::OsStr::new("local.db");
        assert_eq!(
            database_location(Some(path), config.database.as_ref()),
            Ok(Location::Sqlite("local.db".into()))
        );
        assert_eq!(
            database_location(None, config.database.as_ref()),
            Ok(config.database.clone().unwrap())
        );
        let refused =
            database_location(Some("postgres://u:pw-xyz@127.0.0.1/db".as_ref()), None).unwrap_err();
        assert!(
            refused.contains("postgres://u:***@127.0.0.1/db"),
            "{refused}"
        );
        assert!(!refused.contains("pw-xyz"), "{refused}");
    }
}
