//! Faults of what the filter and the key-service stand on (issue 18): the database goes
//! away under load and comes back, its disk fills up and is freed.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use keygate_e2e::api::{admin, assert_error, chat, client, create_key, until_synced, usage_rows};
use keygate_e2e::stack::{random_token, Stack};
use reqwest::Method;
use serde_json::json;

/// Stops or starts the test's PostgreSQL server (`.ci/postgres.sh` provides the script).
fn postgres(action: &str) {
    let ctl = std::env::var("KEYGATE_TEST_POSTGRES_CTL")
        .expect("this test needs .ci/postgres.sh's server (make test-e2e runs it so)");
    let status = Command::new(&ctl)
        .arg(action)
        .status()
        .expect("run the script");
    assert!(status.success(), "postgres {action}: {status}");
}

/// Waits (at most 20 s) until an admin write works again.
fn until_writes_work(stack: &Stack) {
    let started = Instant::now();
    loop {
        let (status, _) = admin(
            stack,
            Method::POST,
            "/api/v1/keys",
            Some(json!({"name": "y"})),
        );
        if status == 201 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "writes never came back: {status}"
        );
        sleep(Duration::from_millis(200));
    }
}

fn readyz(stack: &Stack) -> u16 {
    let url = format!("{}/readyz", stack.key_service_url);
    client().get(url).send().expect("readyz").status().as_u16()
}

#[test]
fn a_postgresql_restart_under_load_loses_nothing_and_needs_no_key_service_restart() {
    let stack = Stack::builder().postgres().start();
    let key = create_key(&stack, json!({"name": "pg-fault"}));
    assert_eq!(
        until_synced(|| chat(&stack, Some(&key.secret))).status(),
        200
    );

    postgres("stop");
    // Calls go on, answered from the snapshot; their usage waits in the filter.
    for _ in 0..10 {
        assert_eq!(chat(&stack, Some(&key.secret)).status(), 200);
    }
    assert_eq!(readyz(&stack), 503, "not ready while the database is away");

    postgres("start");
    // Writes come back by themselves, with no restart of the key-service.
    let started = Instant::now();
    until_writes_work(&stack);
    eprintln!("writes back {:?} after the database", started.elapsed());
    assert_eq!(readyz(&stack), 200);
    // Every call is billed, once: the filter's held usage went in when it could.
    let rows = usage_rows(&stack, &key, 11);
    assert_eq!(rows.len(), 11, "{rows:?}");
}

/// A body beyond Envoy's own buffer limit while keygate holds it for its model: Envoy
/// answers 413 itself, and that answer has the contract's JSON shape too, not Envoy's
/// plain "Payload Too Large".
#[test]
fn envoys_own_413_is_the_contracts_json() {
    let stack = Stack::builder()
        .envoy_edit(
            "per_connection_buffer_limit_bytes: 10485760",
            "per_connection_buffer_limit_bytes: 1048576",
        )
        .envoy_edit(
            "\"max_body_bytes\": 8388608",
            "\"max_body_bytes\": 20000000",
        )
        .start();
    let key = create_key(&stack, json!({"name": "big", "models": ["gpt-4o-mini"]}));
    let big = json!({"model": "gpt-4o-mini", "input": "x".repeat(3 << 20)});
    let send = || {
        client()
            .post(format!("{}/v1/responses", stack.envoy_url))
            .bearer_auth(&key.secret)
            .json(&big)
            .send()
            .expect("big call")
    };
    let res = until_synced(send);
    assert_error(res, 413, "request_too_large");
}

/// Starts a request on a connection of its own with the headers and `sent` bytes of a
/// `length`-byte body, and leaves it open.
fn start_upload(stack: &Stack, secret: &str, length: usize, sent: usize) -> TcpStream {
    let addr = stack.envoy_url.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr).expect("connect to Envoy");
    conn.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {secret}\r\n\
         content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).expect("send the head");
    let body = format!(
        "{{\"model\":\"gpt-4o-mini\",\"input\":\"{}",
        "x".repeat(sent)
    );
    conn.write_all(&body.as_bytes()[..sent])
        .expect("send part of the body");
    conn
}

/// Bodies a VM holds while it decides are bounded: past `max_held_body_bytes`, a request
/// is refused with 503 `overloaded` at once instead of being buffered too.
#[test]
fn a_flood_of_held_bodies_is_bounded() {
    let stack = Stack::builder()
        .concurrency(1)
        .envoy_edit("\"max_body_bytes\": 8388608", "\"max_body_bytes\": 600000")
        .filter_setting("max_held_body_bytes", "1000000")
        .start();
    let key = create_key(&stack, json!({"name": "flood", "models": ["gpt-4o-mini"]}));
    assert_eq!(
        until_synced(|| chat(&stack, Some(&key.secret))).status(),
        200
    );
    let first = start_upload(&stack, &key.secret, 500_000, 400_000);
    let second = start_upload(&stack, &key.secret, 500_000, 400_000);
    // Envoy reads what was sent, and the filter counts it, before the third comes.
    sleep(Duration::from_millis(500));
    let mut third = start_upload(&stack, &key.secret, 500_000, 400_000);
    let mut answer = vec![0; 4096];
    let n = third.read(&mut answer).expect("an answer, at once");
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"overloaded\""), "{answer}");
    drop((first, second));
}

/// A small tmpfs of the test's own, unmounted when dropped: a disk it can fill.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Tmpfs {
        let path = std::env::temp_dir().join(format!("keygate-disk-{}", &random_token()[..12]));
        fs::create_dir_all(&path).expect("make the mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "this test fills a disk of its own: mounting a tmpfs needs root (CAP_SYS_ADMIN), \
             which the CI machine has"
        );
        Tmpfs { path }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Fills the disk: a file of zeros until not a byte more fits.
    fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let mut file = fs::File::create(&filler).expect("create the filler");
        let block = vec![0u8; 64 * 1024];
        for size in [block.len(), 1] {
            while file.write_all(&block[..size]).is_ok() {}
        }
        let _ = file.sync_all();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        let _ = fs::remove_dir(&self.path);
    }
}

/// The disk under the SQLite database fills up: writes fail and `/readyz` says so, the
/// calls go on from the snapshot; once space is freed, writes come back by themselves and
/// every call is billed once.
#[test]
fn a_full_disk_fails_writes_until_space_is_freed_and_loses_no_usage() {
    let disk = Tmpfs::mount(32 << 20);
    let stack = Stack::builder().sqlite_in(disk.path()).start();
    let key = create_key(&stack, json!({"name": "disk-fault"}));
    assert_eq!(
        until_synced(|| chat(&stack, Some(&key.secret))).status(),
        200
    );
    let mut calls = 1;

    let filler = disk.fill();
    // Writes fail as soon as the database must grow: usage comes in all the time.
    let started = Instant::now();
    while readyz(&stack) != 503 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "writes never failed on a full disk"
        );
        assert_eq!(chat(&stack, Some(&key.secret)).status(), 200);
        calls += 1;
        sleep(Duration::from_millis(100));
    }
    let url = format!("{}/readyz", stack.key_service_url);
    let why = client()
        .get(url)
        .send()
        .expect("readyz")
        .text()
        .expect("body");
    assert!(why.contains("database"), "{why}");
    for _ in 0..5 {
        assert_eq!(chat(&stack, Some(&key.secret)).status(), 200);
        calls += 1;
    }
    let (status, _) = admin(
        &stack,
        Method::POST,
        "/api/v1/keys",
        Some(json!({"name": "x"})),
    );
    assert!(status >= 500, "a write on a full disk: {status}");

    fs::remove_file(&filler).expect("free the disk");
    let started = Instant::now();
    until_writes_work(&stack);
    eprintln!(
        "writes back {:?} after the disk was freed",
        started.elapsed()
    );
    // `/readyz` keeps its write probe's answer for a second.
    while readyz(&stack) != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never ready again"
        );
        sleep(Duration::from_millis(200));
    }
    let rows = usage_rows(&stack, &key, calls);
    assert_eq!(rows.len(), calls, "{rows:?}");
}

/// Envoy's resident memory (`VmRSS`), in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read the status");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

/// A flood of big bodies that must be held until their model is known (it comes last, as
/// SDKs write it): Envoy's memory peaks under its documented budget (each worker holds
/// at most `max_held_body_bytes` of bodies) and is back near its idle figure once its
/// allocator gives the pages back (`memory_allocator_manager` in the shipped config),
/// which tcmalloc does only for pages it has not seen in use for a minute.
#[test]
fn a_flood_of_big_bodies_leaves_envoys_memory_where_it_was() {
    let stack = Stack::builder().concurrency(2).start();
    let envoy = stack.pid("envoy").expect("envoy's pid");
    let key = create_key(&stack, json!({"name": "big", "models": ["gpt-4o-mini"]}));
    assert_eq!(
        until_synced(|| chat(&stack, Some(&key.secret))).status(),
        200
    );
    let body = format!(
        "{{\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}],\"model\":\"gpt-4o-mini\"}}",
        "x".repeat(8_000_000)
    );
    let body = std::sync::Arc::new(body);
    // One big body first, so that what Envoy keeps for any traffic is in the idle figure.
    let send = |body: &str| {
        client()
            .post(format!("{}/v1/chat/completions", stack.envoy_url))
            .bearer_auth(&key.secret)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .map(|r| r.status().as_u16())
    };
    assert_eq!(send(&body).expect("one big call"), 200);
    sleep(Duration::from_secs(2));
    let idle = rss_mib(envoy);

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_mib(envoy));
                sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..20)
            .map(|_| scope.spawn(|| send(&body).unwrap_or(0)))
            .collect();
        calls.into_iter().map(|c| c.join().expect("call")).collect()
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    assert!(
        statuses.iter().all(|s| [200, 503].contains(s)),
        "{statuses:?}"
    );
    let passed = statuses.iter().filter(|&&s| s == 200).count();
    let ended = Instant::now();
    let mut after = rss_mib(envoy);
    while after > idle + 20.0 && ended.elapsed() < Duration::from_secs(90) {
        sleep(Duration::from_secs(1));
        after = rss_mib(envoy);
    }
    eprintln!(
        "Envoy RSS: idle {idle:.1} MiB, peak {peak:.1} MiB with 20 bodies of 8 MB ({passed} \
         passed, the rest 503 overloaded), {after:.1} MiB {:.0} s after",
        ended.elapsed().as_secs_f64()
    );
    // Two workers, each holding at most 64 MiB of bodies, and Envoy's own copies of what
    // is forwarded meanwhile.
    let budget = idle + 2.0 * 64.0 + 64.0;
    assert!(
        peak <= budget,
        "peak {peak:.1} MiB over the budget {budget:.1} MiB"
    );
    assert!(
        after <= idle + 20.0,
        "Envoy's memory stayed up: idle {idle:.1} MiB, 90 s after the flood {after:.1} MiB"
    );
}
