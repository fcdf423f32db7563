//! `key-service keys ...` run as a process on a database, as an operator would.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use serde_json::Value;

struct Cli {
    db: String,
    database: key_service::config::Database,
    _dir: tempfile::TempDir,
}

impl Cli {
    /// A fresh database: SQLite, or PostgreSQL when `KEYGATE_TEST_POSTGRES` names a server.
    fn new() -> Cli {
        let dir = tempfile::tempdir().unwrap();
        let database = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(key_service::store::test_database(dir.path()))
            .unwrap();
        let db = match &database {
            key_service::config::Database::Sqlite { path } => {
                format!("sqlite://{}", path.display())
            }
            key_service::config::Database::Postgres { url } => url.clone(),
        };
        Cli {
            db,
            database,
            _dir: dir,
        }
    }

    /// The audit log's entries, oldest first, as (actor kind, actor id, action, target).
    fn audit(&self) -> Vec<(String, String, String, String)> {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let store = key_service::Store::open(&self.database).await.unwrap();
            let (rows, _) = store
                .list_audit(&key_service::store::AuditFilter::default(), 100, 0)
                .await
                .unwrap();
            store.close().await;
            let mut entries: Vec<_> = rows
                .into_iter()
                .map(|r| {
                    let text = format!("{:?} {:?}", r.before, r.after);
                    assert!(!text.contains("\"key\""), "a secret's field in {text}");
                    (r.actor_kind, r.actor_id, r.action, r.target)
                })
                .collect();
            entries.reverse();
            entries
        })
    }

    /// Runs `key-service keys <args>`; returns (success, stdout lines as JSON, stderr).
    fn keys(&self, args: &[&str]) -> (bool, Vec<Value>, String) {
        self.run("keys", args)
    }

    /// Runs `key-service <command> <args>`, likewise.
    fn run(&self, command: &str, args: &[&str]) -> (bool, Vec<Value>, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_key-service"))
            .args(["--database-url", &self.db, command])
            .args(args)
            .env_remove("KEYGATE_ADMIN_TOKEN")
            .env_remove("KEYGATE_FILTER_TOKEN")
            .output()
            .unwrap();
        let lines = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (
            out.status.success(),
            lines,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

#[test]
fn an_operator_manages_keys_from_the_command_line() {
    let cli = Cli::new();
    let (ok, created, err) = cli.keys(&[
        "create",
        "--name",
        "ops",
        "--quantity",
        "2",
        "--quota",
        "100",
        "--models",
        "gpt-4o,gpt-4o-mini",
        "--expires-in",
        "1d",
        "--rpm",
        "60",
        "--tpm",
        "100000",
        "--max-parallel",
        "4",
    ]);
    assert!(ok, "{err}");
    assert_eq!(created.len(), 2);
    let secret = created[0]["key"].as_str().unwrap();
    assert!(keygate_core::keys::secret::is_well_formed(secret));
    assert_eq!(
        created[0]["models"],
        serde_json::json!(["gpt-4o", "gpt-4o-mini"])
    );
    assert_eq!(created[0]["remaining_quota"], 100);
    for key in &created {
        assert_eq!(
            (&key["rpm"], &key["tpm"], &key["max_parallel"]),
            (&60.into(), &100_000.into(), &4.into())
        );
    }
    let id = created[0]["id"].as_str().unwrap();

    let (ok, listed, _) = cli.keys(&["list"]);
    assert!(ok);
    assert_eq!(listed.len(), 2);
    assert!(
        listed.iter().all(|k| k.get("key").is_none()),
        "list never shows secrets"
    );

    let (ok, disabled, _) = cli.keys(&["disable", id]);
    assert!(ok);
    assert_eq!(disabled[0]["status"], "disabled");
    let (_, only_disabled, _) = cli.keys(&["list", "--status", "disabled"]);
    assert_eq!(only_disabled.len(), 1);

    let (ok, rotated, _) = cli.keys(&["rotate", id, "--grace-period", "1h"]);
    assert!(ok);
    assert_ne!(rotated[0]["key"].as_str().unwrap(), secret);
    let (ok, _, _) = cli.keys(&["delete", id]);
    assert!(ok);
    let (_, left, _) = cli.keys(&["list"]);
    assert_eq!(left.len(), 1);

    // Each change is in the audit log, by the command line; the listings are not.
    let actions: Vec<String> = cli
        .audit()
        .into_iter()
        .map(|(kind, _, action, target)| {
            assert_eq!(kind, "cli");
            if action != "key.create" {
                assert_eq!(target, id);
            }
            action
        })
        .collect();
    assert_eq!(
        actions,
        [
            "key.create",
            "key.create",
            "key.update",
            "key.rotate",
            "key.delete"
        ]
    );
}

#[test]
fn bad_input_fails_with_the_apis_message() {
    let cli = Cli::new();
    let (ok, out, err) = cli.keys(&["create", "--name", "x", "--quantity", "0"]);
    assert!(!ok && out.is_empty());
    assert!(err.contains("quantity"), "{err}");
    let (ok, out, err) = cli.keys(&["create", "--name", "x", "--max-parallel", "0"]);
    assert!(!ok && out.is_empty());
    assert!(err.contains("max_parallel"), "{err}");
    let (ok, _, err) = cli.keys(&["disable", "key_nope"]);
    assert!(!ok);
    assert!(err.contains("no key"), "{err}");
    let (ok, _, err) = cli.keys(&["list", "--status", "sleepy"]);
    assert!(!ok);
    assert!(err.contains("status"), "{err}");
}

#[test]
fn an_operator_manages_webhooks_and_rotation_dates_from_the_command_line() {
    let cli = Cli::new();
    let (ok, created, err) = cli.run(
        "webhooks",
        &[
            "create",
            "--url",
            "http://127.0.0.1:1/hook",
            "--events",
            "key.disabled",
        ],
    );
    assert!(ok, "{err}");
    let id = created[0]["id"].as_str().unwrap().to_owned();
    let secret = created[0]["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let (ok, listed, _) = cli.run("webhooks", &["list"]);
    assert!(ok);
    assert_eq!(listed.len(), 1);
    assert!(listed[0].get("secret").is_none());

    let (ok, key, _) = cli.keys(&[
        "create",
        "--name",
        "r",
        "--rotate-by",
        "2001-01-01T00:00:00Z",
    ]);
    assert!(ok);
    let key_id = key[0]["id"].as_str().unwrap().to_owned();
    let (_, due, _) = cli.keys(&["list", "--rotation-due"]);
    assert_eq!(due.len(), 1);
    let (ok, edited, _) = cli.keys(&["edit", &key_id, "--rotate-by", "none"]);
    assert!(ok);
    assert_eq!(edited[0]["rotate_by"], Value::Null);
    let (_, due, _) = cli.keys(&["list", "--rotation-due"]);
    assert!(due.is_empty());
    let (ok, _, _) = cli.keys(&["disable", &key_id]);
    assert!(ok);

    let (ok, queued, _) = cli.run("webhooks", &["test", &id]);
    assert!(ok);
    let (ok, log, _) = cli.run("webhooks", &["deliveries", &id, "--status", "pending"]);
    assert!(ok);
    let mut types: Vec<&str> = log
        .iter()
        .map(|d| d["event_type"].as_str().unwrap())
        .collect();
    types.sort_unstable();
    assert_eq!(types, ["key.disabled", "test"]);
    assert!(log.iter().any(|d| d["event_id"] == queued[0]["event_id"]));
    let (ok, _, err) = cli.run("webhooks", &["deliveries", &id, "--status", "lost"]);
    assert!(!ok && err.contains("status"), "{err}");

    let (ok, _, _) = cli.run("webhooks", &["delete", &id]);
    assert!(ok);
    let (_, listed, _) = cli.run("webhooks", &["list"]);
    assert!(listed.is_empty());
}
