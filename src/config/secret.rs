//! Where an app's secret comes from, and the `Secret` newtype that never prints its value.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The most bytes read from a secret file or credential. A WeCom secret is 43 bytes; anything
/// longer than this is not a secret file (`/dev/zero`, a log, a disk image) and is refused
/// before it can fill memory.
pub const MAX_SECRET_BYTES: u64 = 4096;

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
                format!("environment variable {} is not set; export it before starting, or use secret_file / secret_credential", shown(name))
            })?,
            SecretSource::File(path) => read_secret_file(path)?,
            SecretSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    let name = shown(name);
                    format!("CREDENTIALS_DIRECTORY is not set, so credential {name} cannot be read; run under systemd with LoadCredential=NAME:/path/to/secret, or use secret_file")
                })?;
                read_bounded(&Path::new(&dir).join(name)).map_err(|e| match e {
                    Unreadable::Io(e) => format!("credential {} cannot be read from $CREDENTIALS_DIRECTORY: {e}; check the unit's LoadCredential=", shown(name)),
                    refused => format!("credential {} in $CREDENTIALS_DIRECTORY is refused: {refused}", shown(name)),
                })?
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

/// A variable or credential name as messages show it. A value that does not look like a name
/// (WeCom secrets are 43 characters long) may be the secret itself, pasted under the wrong key,
/// and is not repeated.
fn shown(name: &str) -> String {
    let looks_like_a_name = (1..=32).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
    if looks_like_a_name {
        name.to_string()
    } else {
        "(not shown: it does not look like a name and may be the secret itself)".to_string()
    }
}

fn read_secret_file(path: &Path) -> Result<String, String> {
    read_bounded(path).map_err(|e| match e {
        Unreadable::Io(e) => format!(
            "cannot read {}: {e}; check the path and that this user may read it",
            path.display()
        ),
        refused => format!("{} is refused: {refused}", path.display()),
    })
}

/// Why a secret file was not read.
#[derive(Debug)]
enum Unreadable {
    Io(std::io::Error),
    NotRegular(&'static str),
    TooLong,
    NotText,
}

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreadable::Io(e) => write!(f, "{e}"),
            Unreadable::NotRegular(kind) => write!(
                f,
                "it is {kind}, not a regular file; point it at a file that holds only the secret"
            ),
            Unreadable::TooLong => write!(
                f,
                "it is longer than {MAX_SECRET_BYTES} bytes, which no secret is (a WeCom secret is 43 characters); point it at a file that holds only the secret"
            ),
            Unreadable::NotText => write!(
                f,
                "it is not UTF-8 text; point it at a file that holds only the secret"
            ),
        }
    }
}

/// Reads a small regular file. Opening never blocks (`O_NONBLOCK`: a FIFO with no writer
/// would otherwise hang `check` and a reload forever), the type is taken from the opened
/// descriptor (no stat-then-open race), and at most [`MAX_SECRET_BYTES`] are read.
fn read_bounded(path: &Path) -> Result<String, Unreadable> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(Unreadable::Io)?;
    let kind = file.metadata().map_err(Unreadable::Io)?.file_type();
    if !kind.is_file() {
        return Err(Unreadable::NotRegular(describe(&kind)));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Unreadable::Io)?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err(Unreadable::TooLong);
    }
    String::from_utf8(bytes).map_err(|_| Unreadable::NotText)
}

fn describe(kind: &std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a named pipe (FIFO)"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_pasted_as_a_variable_or_credential_name_is_not_repeated() {
        let pasted = "Xq3vB8kLm2NpR7sT1uW4yZ6aC9dE0fG5hJ8kL1mN2pQ";
        for source in [
            SecretSource::Env(pasted.to_string()),
            SecretSource::Credential(pasted.to_string()),
        ] {
            let message = source.resolve().expect_err("neither can resolve");
            assert!(!message.contains(pasted), "{message}");
            assert!(message.contains("not shown"), "{message}");
        }
        let message = SecretSource::Env("WECOM_NOTIFY_SURELY_UNSET_VAR".into())
            .resolve()
            .expect_err("unset");
        assert!(
            message.contains("WECOM_NOTIFY_SURELY_UNSET_VAR"),
            "{message}"
        );
    }

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
