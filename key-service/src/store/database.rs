//! Where the data lives, from `--database-url`: SQLite (a file) or PostgreSQL.

use std::path::{Path, PathBuf};

/// Where the data lives, from `--database-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite {
        path: PathBuf,
    },
    /// The URL as given, for sqlx to read.
    Postgres {
        url: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatabaseUrlError {
    #[error("an in-memory SQLite database would lose every key at exit; use sqlite://PATH")]
    InMemory,
    #[error("query parameters in the database URL are not supported")]
    QueryParameters,
    #[error("the database URL has no file path; use sqlite://PATH")]
    NoPath,
    #[error("unsupported database URL scheme; use sqlite://PATH or postgres://...")]
    Scheme,
}

impl Database {
    /// Reads `sqlite://PATH` (relative to the working directory), `sqlite:///ABS/PATH`, or
    /// a PostgreSQL URL (`postgres://` or `postgresql://`, parameters allowed).
    pub fn parse(url: &str) -> Result<Self, DatabaseUrlError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Database::Postgres {
                url: url.to_owned(),
            });
        }
        let rest = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or(DatabaseUrlError::Scheme)?;
        if rest.contains('?') {
            return Err(DatabaseUrlError::QueryParameters);
        }
        if rest == ":memory:" {
            return Err(DatabaseUrlError::InMemory);
        }
        if rest.is_empty() || rest.ends_with('/') {
            return Err(DatabaseUrlError::NoPath);
        }
        Ok(Database::Sqlite {
            path: PathBuf::from(rest),
        })
    }

    /// The directory holding an SQLite database, where generated tokens are kept too.
    /// `None` for PostgreSQL: replicas on several machines cannot share generated tokens.
    pub fn data_dir(&self) -> Option<&Path> {
        match self {
            Database::Sqlite { path } => Some(match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            }),
            Database::Postgres { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_a_file_and_its_directory() {
        let db = Database::parse("sqlite://data/keygate.db").unwrap();
        assert_eq!(
            db,
            Database::Sqlite {
                path: "data/keygate.db".into()
            }
        );
        assert_eq!(db.data_dir(), Some(Path::new("data")));

        let db = Database::parse("sqlite:///var/lib/keygate/k.db").unwrap();
        assert_eq!(db.data_dir(), Some(Path::new("/var/lib/keygate")));

        let db = Database::parse("sqlite:k.db").unwrap();
        assert_eq!(db.data_dir(), Some(Path::new(".")));
    }

    #[test]
    fn postgres_urls_are_kept_whole() {
        for url in [
            "postgres://keygate:pw@db.internal:5432/keygate",
            "postgresql://u@h/db?sslmode=require",
        ] {
            let db = Database::parse(url).unwrap();
            assert_eq!(db, Database::Postgres { url: url.into() });
            assert_eq!(db.data_dir(), None);
        }
    }

    #[test]
    fn other_urls_are_refused_with_a_reason() {
        let cases = [
            ("sqlite::memory:", DatabaseUrlError::InMemory),
            ("sqlite://k.db?mode=ro", DatabaseUrlError::QueryParameters),
            ("sqlite://", DatabaseUrlError::NoPath),
            ("sqlite://data/", DatabaseUrlError::NoPath),
            ("mysql://h/db", DatabaseUrlError::Scheme),
            ("data/keygate.db", DatabaseUrlError::Scheme),
        ];
        for (url, want) in cases {
            assert_eq!(Database::parse(url), Err(want), "{url}");
        }
    }
}
