//! `keygate-stream-bench`: what reading usage costs a response. Three stacks side by side,
//! Envoy (one worker) with keygate, with Envoy's native `sse_to_metadata` reading the
//! usage out of SSE events (the native floor for that), and without any filter, all in
//! front of the mock upstream; calls alternate between them (A B C A B C ...):
//!
//! - time to first byte of a streamed chat answer (the client's clock, from sending the
//!   request to the first body byte), median and 90th percentile of each;
//! - Envoy's CPU time (user + system, `/proc/PID/stat`) per plain chat answer of about
//!   1 MB, which keygate scans for its usage (sse_to_metadata reads only streams), and
//!   per streamed answer of 2,000 events, which both read: the difference to no filter
//!   is the filter's cost.

// A benchmark driver: a failed step is a failed run, said loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use keygate_e2e::api::{client, create_key, until_synced};
use keygate_e2e::stack::Stack;
use serde_json::json;

#[derive(Parser)]
#[command(about = "time to first byte and scanning CPU, with keygate and without a filter")]
struct Args {
    /// Streamed calls per configuration.
    #[arg(long, default_value_t = 300)]
    streams: usize,
    /// Calls with a 1 MB answer per configuration.
    #[arg(long, default_value_t = 200)]
    large: usize,
    #[arg(long, default_value = "bench/results/streams.md")]
    out: PathBuf,
}

const PAD: u64 = 1 << 20;
const LONG_EVENTS: u64 = 2000;

struct Side {
    name: &'static str,
    stack: Stack,
    secret: Option<String>,
    ttfb_us: Vec<f64>,
    cpu_ms: f64,
    stream_cpu_ms: f64,
}

/// `sse_to_metadata` taking the total tokens of OpenAI streams into dynamic metadata.
const SSE_TO_METADATA: &str = r#"                  - name: envoy.filters.http.sse_to_metadata
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.sse_to_metadata.v3.SseToMetadata
                      response_rules:
                        content_parser:
                          name: envoy.content_parsers.json
                          typed_config:
                            "@type": type.googleapis.com/envoy.extensions.content_parsers.json.v3.JsonContentParser
                            rules:
                              - rule:
                                  selectors: [{ key: usage }, { key: total_tokens }]
                                  on_present: { metadata_namespace: keygate, key: tokens, type: NUMBER }
"#;

fn main() {
    let args = Args::parse();
    let with = Stack::builder().concurrency(1).start();
    let key = create_key(&with, json!({"name": "stream-bench"}));
    until_synced(|| {
        client()
            .get(format!("{}/v1/models", with.envoy_url))
            .bearer_auth(&key.secret)
            .send()
            .unwrap()
    });
    let native = Stack::builder()
        .concurrency(1)
        .http_filters(SSE_TO_METADATA.to_string())
        .start();
    let without = Stack::builder().concurrency(1).filter(None).start();
    let mut sides = [
        Side {
            name: "keygate",
            stack: with,
            secret: Some(key.secret),
            ttfb_us: Vec::new(),
            cpu_ms: 0.0,
            stream_cpu_ms: 0.0,
        },
        Side {
            name: "sse_to_metadata (native)",
            stack: native,
            secret: None,
            ttfb_us: Vec::new(),
            cpu_ms: 0.0,
            stream_cpu_ms: 0.0,
        },
        Side {
            name: "no filter",
            stack: without,
            secret: None,
            ttfb_us: Vec::new(),
            cpu_ms: 0.0,
            stream_cpu_ms: 0.0,
        },
    ];
    let http = client();
    let call = |side: &Side, body: serde_json::Value, pad: u64| {
        let mut req = http
            .post(format!("{}/v1/chat/completions", side.stack.envoy_url))
            .header("x-mock-pad-bytes", pad.to_string())
            .json(&body);
        if let Some(secret) = &side.secret {
            req = req.bearer_auth(secret);
        }
        req
    };

    // Time to first byte of a stream: 20 words, 5 ms apart; the first is sent at once.
    let stream = json!({"model": "gpt-4o-mini", "max_tokens": 20, "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "first byte please"}]});
    for _ in 0..args.streams {
        for side in &mut sides {
            let req = call(side, stream.clone(), 0).header("x-mock-chunk-delay-ms", "5");
            let started = Instant::now();
            let mut res = req.send().unwrap();
            assert_eq!(res.status(), 200, "{}", side.name);
            let mut byte = [0u8; 1];
            res.read_exact(&mut byte).unwrap();
            side.ttfb_us.push(started.elapsed().as_secs_f64() * 1e6);
            let mut rest = Vec::new();
            res.read_to_end(&mut rest).unwrap();
        }
    }

    // Envoy's CPU per plain answer of about 1 MB.
    let large = json!({"model": "gpt-4o-mini", "max_tokens": 10,
        "messages": [{"role": "user", "content": "a large answer"}]});
    for side in &mut sides {
        let pid = side.stack.pid("envoy").unwrap();
        let before = cpu_ms(pid);
        for _ in 0..args.large {
            let res = call(side, large.clone(), PAD).send().unwrap();
            assert_eq!(res.status(), 200, "{}", side.name);
            let body = res.bytes().unwrap();
            assert!(body.len() as u64 > PAD);
        }
        side.cpu_ms = (cpu_ms(pid) - before) / args.large as f64;
    }

    // Envoy's CPU per streamed answer of 2,000 events, its usage in the last one.
    let long = json!({"model": "gpt-4o-mini", "max_tokens": LONG_EVENTS, "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "a long stream"}]});
    for side in &mut sides {
        let pid = side.stack.pid("envoy").unwrap();
        let before = cpu_ms(pid);
        for _ in 0..args.large {
            let res = call(side, long.clone(), 0).send().unwrap();
            assert_eq!(res.status(), 200, "{}", side.name);
            let body = res.text().unwrap();
            assert!(
                body.matches("data: ").count() > LONG_EVENTS as usize,
                "a long stream"
            );
        }
        side.stream_cpu_ms = (cpu_ms(pid) - before) / args.large as f64;
    }

    let mut report = String::new();
    let _ = writeln!(
        report,
        "# Streams: time to first byte and scanning CPU\n\n\
         `target/release/keygate-stream-bench --streams {} --large {}` (from `make bench`). \
         Envoy with one worker, with keygate, with Envoy's native sse_to_metadata taking \
         `usage.total_tokens` out of SSE events, and without any filter, in front of the \
         mock upstream on loopback; calls alternate between them. Time to first byte: the \
         client's, from sending a streamed chat call to its first body byte. CPU: Envoy's \
         user + system time over {} plain chat answers of {} bytes and more (sse_to_metadata \
         parses only SSE bodies), and over as many streamed answers of {} events, per \
         answer.\n",
        args.streams, args.large, args.large, PAD, LONG_EVENTS
    );
    let _ = writeln!(
        report,
        "| configuration | TTFB p50 | TTFB p90 | Envoy CPU per 1 MB answer | \
         Envoy CPU per {LONG_EVENTS}-event stream |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|");
    let mut p50s = Vec::new();
    for side in &mut sides {
        side.ttfb_us.sort_by(f64::total_cmp);
        let at = |q: f64| side.ttfb_us[((side.ttfb_us.len() - 1) as f64 * q) as usize];
        let (p50, p90) = (at(0.5), at(0.9));
        p50s.push(p50);
        let _ = writeln!(
            report,
            "| {} | {:.0} us | {:.0} us | {:.2} ms | {:.2} ms |",
            side.name, p50, p90, side.cpu_ms, side.stream_cpu_ms
        );
    }
    let (keygate, native, none) = (&sides[0], &sides[1], &sides[2]);
    let _ = writeln!(
        report,
        "\nkeygate adds {:.0} us to the median time to first byte ({:.0} us for \
         sse_to_metadata), {:.2} ms of Envoy CPU to a 1 MB answer, and {:.2} ms to a \
         {LONG_EVENTS}-event stream ({:.2} ms for sse_to_metadata, which also reads every \
         event: keygate costs {:.1}x the native floor there).",
        p50s[0] - p50s[2],
        p50s[1] - p50s[2],
        keygate.cpu_ms - none.cpu_ms,
        keygate.stream_cpu_ms - none.stream_cpu_ms,
        native.stream_cpu_ms - none.stream_cpu_ms,
        (keygate.stream_cpu_ms - none.stream_cpu_ms) / (native.stream_cpu_ms - none.stream_cpu_ms)
    );
    print!("{report}");
    if let Some(dir) = args.out.parent() {
        fs::create_dir_all(dir).unwrap();
    }
    fs::write(&args.out, report).unwrap();
}

/// A process's CPU time so far (user + system), in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let hz = 100.0; // USER_HZ on Linux
    ticks * 1000.0 / hz
}
