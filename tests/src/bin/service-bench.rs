//! `keygate-service-bench`: the key-service's speed on each database engine, over HTTP on
//! loopback against the release binary: a full snapshot of many keys (all pages), `since=`
//! polls with nothing changed (304 with the ETag, and an empty delta without it), creating
//! 10,000 keys through the API, and usage intake. Writes a Markdown report.
//!
//! PostgreSQL needs a server: run under `.ci/postgres.sh`, which names one in
//! `KEYGATE_TEST_POSTGRES` (`make bench` does).

// A benchmark driver: a failed step is a failed run, said loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use key_service::config::Database;
use keygate_e2e::seed::seed_database;
use keygate_e2e::stack::KeyService;
use reqwest::blocking::Client;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "the key-service's speed on SQLite and PostgreSQL")]
struct Args {
    /// Keys in the database for the full-snapshot measurement.
    #[arg(long, default_value_t = 1_000_000)]
    keys: usize,
    /// Engines to measure, in this order.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    engines: Vec<String>,
    /// Full snapshots fetched (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// `since=` polls of each kind.
    #[arg(long, default_value_t = 1000)]
    polls: usize,
    #[arg(long, default_value = "bench/results/key-service.md")]
    out: PathBuf,
}

/// What one engine measured.
struct Figures {
    engine: String,
    seed: Duration,
    full: Duration,
    pages: usize,
    not_modified: (Duration, Duration),
    empty_delta: (Duration, Duration),
    create_10k: Duration,
    intake_per_s: f64,
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut figures = Vec::new();
    for engine in &args.engines {
        let dir = tempfile_dir();
        let database = match engine.as_str() {
            "sqlite" => Database::Sqlite {
                path: dir.join("keygate.db"),
            },
            "postgres" => {
                assert!(
                    std::env::var_os("KEYGATE_TEST_POSTGRES").is_some(),
                    "postgres needs a server: run under .ci/postgres.sh (make bench does)"
                );
                runtime
                    .block_on(key_service::store::test_database(&dir))
                    .unwrap()
            }
            other => panic!("unknown engine {other:?}: sqlite or postgres"),
        };
        eprintln!("{engine}: seeding {} keys", args.keys);
        let started = Instant::now();
        runtime.block_on(seed_database(&database, args.keys));
        let seed = started.elapsed();
        let url = match &database {
            Database::Sqlite { path } => format!("sqlite://{}", path.display()),
            Database::Postgres { url } => url.clone(),
        };
        let service = KeyService::start(&url);
        eprintln!("{engine}: measuring");
        figures.push(measure(engine, &service, &args, seed));
        drop(service);
        let _ = std::fs::remove_dir_all(&dir);
    }
    let report = report(&args, &figures);
    print!("{report}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&args.out, report).unwrap();
    eprintln!("written: {}", args.out.display());
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "keygate-service-bench-{}",
        keygate_e2e::stack::random_token()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn measure(engine: &str, service: &KeyService, args: &Args, seed: Duration) -> Figures {
    let client = Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let filter = |path: &str| {
        client
            .get(format!("{}{path}", service.url))
            .bearer_auth(&service.filter_token)
    };

    // Full snapshots: every page, as a filter's first load does.
    let mut fulls = Vec::new();
    let mut pages = 0;
    let mut version = 0;
    for _ in 0..args.rounds {
        let started = Instant::now();
        let (mut keys, mut after) = (0, None::<String>);
        pages = 0;
        loop {
            let path = match &after {
                Some(cursor) => format!("/filter/v1/snapshot?after={cursor}"),
                None => "/filter/v1/snapshot".into(),
            };
            let body: Value = filter(&path).send().unwrap().json().unwrap();
            pages += 1;
            keys += body["keys"].as_array().unwrap().len();
            version = body["version"].as_u64().unwrap();
            match body["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => break,
            }
        }
        fulls.push(started.elapsed());
        assert_eq!(keys, args.keys, "{engine}: the full snapshot's key count");
    }

    // Polls with nothing changed: with the ETag (304), and without (an empty delta).
    let since = format!("/filter/v1/snapshot?since={version}");
    let time_polls = |etag: bool, want: u16| {
        let mut times = Vec::with_capacity(args.polls);
        for _ in 0..args.polls {
            let mut request = filter(&since);
            if etag {
                request = request.header("if-none-match", format!("\"{version}\""));
            }
            let started = Instant::now();
            let response = request.send().unwrap();
            let status = response.status().as_u16();
            let _ = response.bytes().unwrap();
            times.push(started.elapsed());
            assert_eq!(status, want, "{engine}: since poll");
        }
        percentiles(times)
    };
    let not_modified = time_polls(true, 304);
    let empty_delta = time_polls(false, 200);

    // 10,000 keys through the API: 100 batches of 100, one after another.
    let started = Instant::now();
    let mut key_ids = Vec::new();
    for batch in 0..100 {
        let body: Value = client
            .post(format!("{}/api/v1/keys", service.url))
            .bearer_auth(&service.admin_token)
            .json(&json!({"name": format!("bench-{batch}"), "quantity": 100}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let keys = body["keys"].as_array().expect("created keys");
        key_ids.extend(keys.iter().map(|k| k["id"].as_str().unwrap().to_owned()));
    }
    let create_10k = started.elapsed();
    assert_eq!(key_ids.len(), 10_000);

    // Usage intake: 20 reports of 1,000 new records over those keys.
    let mut records = 0;
    let started = Instant::now();
    for report in 0..20 {
        let batch: Vec<Value> = (0..1000)
            .map(|i| {
                json!({
                    "request_id": format!("bench-{report}-{i}"),
                    "key_id": key_ids[(report * 1000 + i) % key_ids.len()],
                    "model": "gpt-4o-mini",
                    "input_tokens": 100,
                    "output_tokens": 20,
                    "status": 200,
                })
            })
            .collect();
        let done: Value = client
            .post(format!("{}/filter/v1/usage", service.url))
            .bearer_auth(&service.filter_token)
            .json(&json!({ "records": batch }))
            .send()
            .unwrap()
            .json()
            .unwrap();
        records += done["accepted"].as_u64().expect("an intake answer");
    }
    let intake = started.elapsed();
    assert_eq!(records, 20_000, "{engine}: records accepted");

    fulls.sort();
    Figures {
        engine: engine.to_owned(),
        seed,
        full: fulls[fulls.len() / 2],
        pages,
        not_modified,
        empty_delta,
        create_10k,
        intake_per_s: records as f64 / intake.as_secs_f64(),
    }
}

/// Median and 99th percentile.
fn percentiles(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn report(args: &Args, figures: &[Figures]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# key-service: speed by database engine\n");
    let _ = writeln!(
        out,
        "`.ci/postgres.sh target/release/keygate-service-bench --keys {} --rounds {} --polls {}` \
         (from `make bench`). The release key-service over HTTP on loopback, one client, \
         requests one after another; PostgreSQL {} on the same machine (fsync off: a \
         throwaway server). Times are the client's, HTTP included.\n",
        args.keys,
        args.rounds,
        args.polls,
        postgres_version(),
    );
    let _ = writeln!(
        out,
        "| engine | full snapshot, {} keys (median of {}, {} pages) | `since=` unchanged, 304 p50 / p99 | `since=` unchanged, empty delta p50 / p99 | 10,000 keys via the API (100 x 100) | usage intake (20 x 1,000 records) | seeding {} keys (store, not API) |",
        args.keys, args.rounds, figures.first().map_or(0, |f| f.pages), args.keys
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    for f in figures {
        let _ = writeln!(
            out,
            "| {} | {:.2} s | {} / {} | {} / {} | {:.2} s | {:.0} records/s | {:.1} s |",
            f.engine,
            f.full.as_secs_f64(),
            ms(f.not_modified.0),
            ms(f.not_modified.1),
            ms(f.empty_delta.0),
            ms(f.empty_delta.1),
            f.create_10k.as_secs_f64(),
            f.intake_per_s,
            f.seed.as_secs_f64(),
        );
    }
    out
}

fn postgres_version() -> String {
    std::process::Command::new("psql")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| v.split_whitespace().nth(2).map(str::to_owned))
        .unwrap_or_else(|| "(version unknown)".into())
}
