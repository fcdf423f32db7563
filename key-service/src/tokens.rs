//! The bearer tokens of the admin and filter APIs: taken from the configuration, or
//! generated on first start and kept in a file readable by the owner only (mode 0600)
//! beside the database, then reused. Token values are never logged; their paths are.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::random;

/// File names in the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const FILTER_TOKEN_FILE: &str = "filter.token";

/// Characters of a generated token (base62, about 190 bits).
pub const GENERATED_LEN: usize = 32;

/// A bearer token. Its `Debug` form hides the value, so configs can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Surrounding whitespace is dropped; `None` when nothing is left, so an empty
    /// `KEYGATE_ADMIN_TOKEN=` counts as not given rather than as an empty password.
    pub fn new(value: &str) -> Option<Self> {
        let value = value.trim();
        (!value.is_empty()).then(|| Token(value.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// For clap: an empty value parses to a token that [`resolve`] treats as absent.
impl FromStr for Token {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Token(s.trim().to_owned()))
    }
}

/// Where a token in use came from, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Configured,
    /// Read from a file an earlier start wrote.
    Stored(PathBuf),
    /// Generated now and written to this file.
    Generated(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read or write token file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("token file {path} is empty; delete it to have a new token generated")]
    Empty { path: PathBuf },
    #[error("cannot draw random bytes for a token: {0}")]
    Random(#[from] getrandom::Error),
}

/// The configured token, if one was given and is not empty.
pub fn given(configured: Option<Token>) -> Option<Token> {
    configured.and_then(|t| Token::new(&t.0))
}

/// The token to use: the configured one if given (non-empty), else the one in
/// `dir/file`, else a new one written there.
pub fn resolve(
    configured: Option<Token>,
    dir: &Path,
    file: &str,
) -> Result<(Token, Origin), TokenError> {
    if let Some(token) = given(configured) {
        return Ok((token, Origin::Configured));
    }
    let path = dir.join(file);
    match read(&path)? {
        Some(token) => Ok((token, Origin::Stored(path))),
        None => {
            let token = Token(random::base62(GENERATED_LEN)?);
            match write_new(&path, &token) {
                Ok(()) => Ok((token, Origin::Generated(path))),
                // Another process sharing the directory wrote it first: use theirs.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match read(&path)? {
                    Some(theirs) => Ok((theirs, Origin::Stored(path))),
                    None => Err(TokenError::Empty { path }),
                },
                Err(source) => Err(TokenError::Io { path, source }),
            }
        }
    }
}

/// The token in `path`; `None` if there is no such file.
fn read(path: &Path) -> Result<Option<Token>, TokenError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TokenError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    warn_if_shared(path);
    Token::new(&text)
        .map(Some)
        .ok_or_else(|| TokenError::Empty {
            path: path.to_owned(),
        })
}

/// Creates `path` (failing if it exists) readable and writable by the owner only.
fn write_new(path: &Path, token: &Token) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(token.0.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(unix)]
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "token file is readable by other users; consider chmod 600"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (first, origin) = resolve(None, dir.path(), ADMIN_TOKEN_FILE).unwrap();
        let path = dir.path().join(ADMIN_TOKEN_FILE);
        assert_eq!(origin, Origin::Generated(path.clone()));
        assert_eq!(first.expose().len(), GENERATED_LEN);
        assert!(first.expose().bytes().all(|b| b.is_ascii_alphanumeric()));

        let (again, origin) = resolve(None, dir.path(), ADMIN_TOKEN_FILE).unwrap();
        assert_eq!(origin, Origin::Stored(path));
        assert_eq!(again, first);
    }

    #[cfg(unix)]
    #[test]
    fn a_generated_token_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        resolve(None, dir.path(), FILTER_TOKEN_FILE).unwrap();
        let mode = fs::metadata(dir.path().join(FILTER_TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_configured_token_wins_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let given = Token::new("from-the-environment").unwrap();
        let (token, origin) = resolve(Some(given.clone()), dir.path(), ADMIN_TOKEN_FILE).unwrap();
        assert_eq!((token, origin), (given, Origin::Configured));
        assert!(!dir.path().join(ADMIN_TOKEN_FILE).exists());
    }

    #[test]
    fn an_empty_configured_token_counts_as_not_given() {
        let dir = tempfile::tempdir().unwrap();
        let empty: Token = "  ".parse().unwrap();
        let (_, origin) = resolve(Some(empty), dir.path(), ADMIN_TOKEN_FILE).unwrap();
        assert!(matches!(origin, Origin::Generated(_)));
    }

    #[test]
    fn a_stored_token_is_trimmed_and_an_empty_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ADMIN_TOKEN_FILE);
        fs::write(&path, "  written-by-hand\n").unwrap();
        let (token, _) = resolve(None, dir.path(), ADMIN_TOKEN_FILE).unwrap();
        assert_eq!(token.expose(), "written-by-hand");

        fs::write(&path, "\n").unwrap();
        assert!(matches!(
            resolve(None, dir.path(), ADMIN_TOKEN_FILE),
            Err(TokenError::Empty { .. })
        ));
    }

    #[test]
    fn debug_output_hides_the_value() {
        let token = Token::new("hunter2").unwrap();
        assert!(!format!("{token:?}").contains("hunter2"));
    }
}
