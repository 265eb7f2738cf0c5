//! Where an app's secret comes from, and the `Secret` newtype that never prints its value.

use std::fmt;
use std::path::{Path, PathBuf};

/// A value that must never reach a log line, an error message or a history row.
/// `Debug` and `Display` print a mask; only [`Secret::expose`] gives the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that must send it (the gettoken query).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The config key an app's secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `secret_env: NAME`
    Env(String),
    /// `secret_file: PATH` (relative to the config file)
    File(PathBuf),
    /// `secret_credential: NAME`: `$CREDENTIALS_DIRECTORY/NAME` (systemd `LoadCredential=`)
    Credential(String),
    /// `secret: VALUE` written in the config file
    Inline(Secret),
}

impl SecretSource {
    /// The config key, for messages.
    pub fn field(&self) -> &'static str {
        match self {
            SecretSource::Env(_) => "secret_env",
            SecretSource::File(_) => "secret_file",
            SecretSource::Credential(_) => "secret_credential",
            SecretSource::Inline(_) => "secret",
        }
    }

    /// Reads the secret. The error says what to fix and never contains the value.
    pub fn resolve(&self) -> Result<Secret, String> {
        let value = match self {
            SecretSource::Env(name) => std::env::var(name).map_err(|_| {
                format!("environment variable {name} is not set; export it before starting, or use secret_file / secret_credential")
            })?,
            SecretSource::File(path) => read_secret_file(path)?,
            SecretSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    format!("CREDENTIALS_DIRECTORY is not set, so credential \"{name}\" cannot be read; run under systemd with LoadCredential={name}:/path/to/secret, or use secret_file")
                })?;
                read_secret_file(&Path::new(&dir).join(name))?
            }
            SecretSource::Inline(secret) => secret.expose().to_string(),
        };
        let value = value.trim().to_string();
        if value.is_empty() {
            return Err(format!(
                "the {} gives an empty secret; put the app's Secret from the WeCom admin console there",
                self.field()
            ));
        }
        Ok(Secret(value))
    }
}

fn read_secret_file(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read {}: {e}; check the path and that this user may read it",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_print_as_a_mask() {
        let secret = Secret::new("s3cr3t-value");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        let source = SecretSource::Inline(secret);
        assert!(!format!("{source:?}").contains("s3cr3t"));
    }

    #[test]
    fn file_secrets_are_trimmed_and_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ops.secret");
        std::fs::write(&path, "abc\n").unwrap();
        assert_eq!(
            SecretSource::File(path.clone()).resolve().unwrap().expose(),
            "abc"
        );
        let missing = SecretSource::File(dir.path().join("nope"))
            .resolve()
            .unwrap_err();
        assert!(missing.contains("nope"), "{missing}");
    }
}
