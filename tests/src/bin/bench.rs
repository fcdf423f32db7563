//! `keygate-bench`: keygate in the real Envoy against its floors, in one run.
//!
//! For each key count, a key-service database is seeded once; then every variant
//! (no filter, a no-op Wasm filter, keygate, and any extra `name=path.wasm` filters) runs
//! in turn, round after round (A B C A B C ...), each in a fresh Envoy with one worker
//! pinned to CPU 0 and `wrk` pinned to CPU 1. Envoy answers itself (direct response), so
//! only Envoy and the filter are measured. Per variant and round: requests per second at
//! saturation (wrk), latency percentiles at a fixed moderate rate (`--rate`, open loop:
//! requests go out on schedule whatever earlier ones are doing, so a stall counts against
//! every request sent during it), Envoy's resident memory once loaded, and how long the snapshot
//! took to load. Medians and spreads go to a Markdown report. `--upstream` sends the
//! requests through to the mock upstream instead of a direct response.
//!
//! Peers, given the same keys: Envoy's native `api_key_auth`, a Lua filter doing the
//! table lookup, and `ext_authz` asking the key-service on every request; the report
//! gives keygate's added latency as a ratio to each one's. `--enforcement-tries N` also
//! times N disables from the API call to the first 401. `--host-calls` measures instead
//! bench/hostcall-filter making each kind of host call keygate makes, and prices each.
//! `--body-bytes N` sends every variant POSTs of an N-byte chat body instead, its model
//! last, and adds keygate with the key restricted to that model: it must read the body.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use clap::Parser;
use keygate_e2e::api::{admin, client, filter_stat, filter_stat_at, CHAT};
use keygate_e2e::seed::{secret_of, seed_keys};
use keygate_e2e::stack::{repo_root, Build, Stack};

#[derive(Parser)]
#[command(about = "Measure keygate in Envoy against no filter and a no-op Wasm filter")]
struct Args {
    /// Key counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,10000,1000000")]
    keys: Vec<usize>,
    /// Rounds of every variant, interleaved.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of each measured wrk run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Connections of the saturation run.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Extra filters to measure in keygate's place, as NAME=PATH.wasm.
    #[arg(long = "extra")]
    extra: Vec<String>,
    /// Envoy worker threads (each runs its own Wasm VM); all pinned to CPU 0.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Seed the databases again even if an earlier run left them.
    #[arg(long)]
    reseed: bool,
    /// Measure only these of the built-in variants (by name), comma-separated; extras are
    /// always measured.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also measure key churn: rotate this many keys (in batches of 10,000, over the
    /// largest key count) and report Envoy's memory growth per rotation.
    #[arg(long, default_value_t = 0)]
    churn: usize,
    /// How many times to time a `disable` from the API call to the first 401 (0: not
    /// measured), over the smallest non-zero key count.
    #[arg(long, default_value_t = 0)]
    enforcement_tries: usize,
    /// Requests per second of the latency run (open loop, from CPU 1).
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Route to the mock upstream instead of answering in Envoy (direct response).
    #[arg(long)]
    upstream: bool,
    /// Key counts at which only keygate's memory and initial load are measured (one round,
    /// no load generator), comma-separated.
    #[arg(long, value_delimiter = ',')]
    memory_keys: Vec<usize>,
    /// Measure instead what each kind of host call keygate makes costs: bench/hostcall-filter
    /// making one kind 20 times per request, against making none.
    #[arg(long)]
    host_calls: bool,
    /// Send POSTs of a chat body this many bytes long (0: GETs with no body) to every
    /// variant, and measure keygate, and each extra, with the key restricted to the body's
    /// model: the filter must read the whole body to find it.
    #[arg(long, default_value_t = 0)]
    body_bytes: usize,
    /// Where the Markdown report goes.
    #[arg(long, default_value = "bench/results/filter.md")]
    out: PathBuf,
}

#[derive(Clone)]
enum Filter {
    None,
    Wasm(PathBuf),
    /// The built keygate, with these `(field, JSON value)` settings.
    Keygate(Vec<(&'static str, &'static str)>),
    /// The built keygate with these settings, with RPM and TPM limits on the default group
    /// (so on every key) set too high to refuse anything: every request goes through the
    /// rate windows (and, with credit leases, this Envoy's shares of the limits).
    KeygateLimited(Vec<(&'static str, &'static str)>),
    /// Another way of checking the same keys, with the same Envoy around it.
    Peer(Peer),
    /// bench/hostcall-filter making this host call `HOST_CALL_REPEAT` times per request.
    HostCall(&'static str),
    /// The built keygate (or the build at this path in its place, with its configuration)
    /// with the key restricted to `BODY_MODEL`: it decides only once it read the body.
    ModelFromBody(Option<PathBuf>),
    /// The built keygate with these settings, the key given a quota far above what the
    /// run can spend and `BODY_MODEL` a price: every request reads its body, reserves its
    /// estimate and settles (with credit leases, from this Envoy's lease).
    KeygateQuota(Vec<(&'static str, &'static str)>),
    /// As `KeygateQuota` with credit leases, and the key also capped on `BODY_MODEL` (far
    /// above the run's spend): each request reserves in the cap's ledger too.
    KeygateModelCap,
    /// The built keygate as an Envoy dynamic module (`libkeygate_native.so`).
    Native,
    /// Another dynamic module in keygate's place.
    NativeModule(PathBuf),
    /// keygate native built with `bench-floor` (at this path): it syncs keys as keygate
    /// does, but on a request only reads the key, hashes it and finds it.
    NativeFloor(PathBuf),
}

/// The model of `--body-bytes` bodies, the only one the key may then call.
const BODY_MODEL: &str = "gpt-4o-mini";

/// The request body of `--body-bytes`, and a wrk script that sends it.
struct ChatBody {
    /// Made once and never freed: reqwest sends a `&'static` body without copying it.
    json: &'static str,
    script: PathBuf,
}

impl ChatBody {
    /// A chat request `size` bytes long with `model` last, as the OpenAI SDKs write it: a
    /// filter looking for the model reads everything before it.
    fn new(size: usize, model: &str, dir: &Path) -> ChatBody {
        let (head, tail) = (
            r#"{"messages":[{"role":"user","content":""#,
            format!(r#""}}],"model":"{model}"}}"#),
        );
        let filler = size
            .checked_sub(head.len() + tail.len())
            .expect("--body-bytes too small for a chat body");
        let json = format!("{head}{}{tail}", "x".repeat(filler));
        let body = dir.join(format!("chat-{size}.json"));
        fs::write(&body, &json).expect("write the body");
        // wrk sends the body of wrk.body (read from the file: a Lua literal of megabytes
        // is slow to load) with every request.
        let script = dir.join(format!("chat-{size}.lua"));
        fs::write(
            &script,
            format!(
                "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
                 local f = assert(io.open(\"{}\", \"rb\"))\nwrk.body = f:read(\"*a\")\nf:close()\n",
                body.display()
            ),
        )
        .expect("write the wrk script");
        ChatBody {
            json: json.leak(),
            script,
        }
    }
}

/// Calls per request of bench/hostcall-filter.
const HOST_CALL_REPEAT: f64 = keygate_hostcall_filter::REPEAT as f64;

/// The usual alternatives to keygate, each given the same keys (`secret_of(0..count)`).
#[derive(Clone, Copy, PartialEq)]
enum Peer {
    /// Envoy's native `envoy.filters.http.api_key_auth`, keys inline in its config.
    ApiKeyAuth,
    /// A Lua filter looking the bearer token up in a table of the keys.
    Lua,
    /// `ext_authz` asking the key-service's `/filter/v1/check` on every request.
    ExtAuthz,
}

impl Peer {
    /// Peers whose config lists every key inline are measured up to this many keys (a
    /// LuaJIT function holds at most 65,536 constants, so a bigger Lua table fails to load).
    const INLINE_KEYS_MAX: usize = 10_000;

    /// The `http_filters` entries that stand in keygate's place.
    fn filters(self, count: usize) -> String {
        let indent = "                  ";
        match self {
            Peer::ApiKeyAuth => {
                let mut yaml = format!(
                    "{indent}- name: envoy.filters.http.api_key_auth\n{indent}  typed_config:\n\
                     {indent}    \"@type\": type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth\n\
                     {indent}    key_sources: [{{ header: x-api-key }}]\n{indent}    credentials:\n"
                );
                for i in 0..count {
                    let _ = writeln!(yaml, "{indent}      - {{ key: \"{}\", client: \"key_{i:0>16}\" }}", secret_of(i));
                }
                yaml
            }
            Peer::Lua => {
                let code = format!("{indent}        ");
                let mut yaml = format!(
                    "{indent}- name: envoy.filters.http.lua\n{indent}  typed_config:\n\
                     {indent}    \"@type\": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua\n\
                     {indent}    default_source_code:\n{indent}      inline_string: |\n{code}local keys = {{\n"
                );
                for i in 0..count {
                    let _ = writeln!(yaml, "{code}  [\"{}\"] = \"key_{i:0>16}\",", secret_of(i));
                }
                for line in [
                    "}",
                    "function envoy_on_request(request)",
                    "  local headers = request:headers()",
                    "  local auth = headers:get(\"authorization\")",
                    "  local id = auth and keys[string.match(auth, \"^Bearer (.+)$\") or \"\"]",
                    "  if not id then",
                    "    request:respond({[\":status\"] = \"401\", [\"content-type\"] = \"application/json\"},",
                    "      '{\"error\":{\"code\":\"invalid_api_key\",\"type\":\"invalid_request_error\"}}')",
                    "    return",
                    "  end",
                    "  headers:remove(\"authorization\")",
                    "  headers:add(\"x-keygate-key-id\", id)",
                    "end",
                ] {
                    let _ = writeln!(yaml, "{code}{line}");
                }
                yaml
            }
            Peer::ExtAuthz => format!(
                "{indent}- name: envoy.filters.http.ext_authz\n{indent}  typed_config:\n\
                 {indent}    \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz\n\
                 {indent}    transport_api_version: V3\n\
                 {indent}    http_service:\n\
                 {indent}      server_uri: {{ uri: \"http://key-service\", cluster: key_service, timeout: 2s }}\n\
                 {indent}      path_prefix: /filter/v1/check\n\
                 {indent}      authorization_request:\n\
                 {indent}        headers_to_add: [{{ key: x-keygate-token, value: \"{{FILTER_TOKEN}}\" }}]\n\
                 {indent}      authorization_response:\n\
                 {indent}        allowed_upstream_headers: {{ patterns: [{{ prefix: x-keygate- }}] }}\n"
            ),
        }
    }

    /// The header that carries the key to this peer.
    fn auth_header(self, secret: &str) -> String {
        match self {
            Peer::ApiKeyAuth => format!("x-api-key: {secret}"),
            _ => format!("Authorization: Bearer {secret}"),
        }
    }
}

#[derive(Clone)]
struct Variant {
    name: String,
    filter: Filter,
}

impl Variant {
    /// Peers check real keys (none: nothing to compare); those with every key inline in
    /// their config stop at `Peer::INLINE_KEYS_MAX`.
    fn measured_with(&self, count: usize) -> bool {
        match self.filter {
            // Its cost is the key-service's round trip, measured at the peers' key count.
            Filter::Peer(Peer::ExtAuthz) => count > 0 && count <= Peer::INLINE_KEYS_MAX,
            Filter::Peer(_) => count > 0 && count <= Peer::INLINE_KEYS_MAX,
            // keygate's variants show their cost at the peers' key count.
            Filter::KeygateLimited(_) => count > 0 && count <= Peer::INLINE_KEYS_MAX,
            Filter::Keygate(ref settings) if !settings.is_empty() => {
                count > 0 && count <= Peer::INLINE_KEYS_MAX
            }
            // It needs a key to restrict.
            Filter::ModelFromBody(_) => count > 0,
            Filter::KeygateQuota(_) | Filter::KeygateModelCap => {
                count > 0 && count <= Peer::INLINE_KEYS_MAX
            }
            _ => true,
        }
    }
}

#[derive(Default, Clone)]
struct Sample {
    rps: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    rss_mb: f64,
    load_s: Option<f64>,
}

fn main() {
    let args = Args::parse();
    let root = repo_root();
    let noop = root.join("target/wasm32-wasip1/release/keygate_noop_filter.wasm");
    let mut variants = vec![
        Variant {
            name: "no filter".into(),
            filter: Filter::None,
        },
        Variant {
            name: "no-op wasm".into(),
            filter: Filter::Wasm(noop),
        },
        Variant {
            name: "keygate".into(),
            filter: Filter::Keygate(vec![]),
        },
        Variant {
            name: "no-op native".into(),
            filter: Filter::NativeModule(root.join("target/release/libkeygate_noop_native.so")),
        },
        Variant {
            name: "keygate native".into(),
            filter: Filter::Native,
        },
        Variant {
            name: "keygate native floor".into(),
            filter: Filter::NativeFloor(
                root.join("target/bench-floor/native/libkeygate_native.so"),
            ),
        },
        Variant {
            name: "keygate, key-id header only".into(),
            filter: Filter::Keygate(vec![(
                "identity_headers",
                r#"{"key_name": null, "group": null, "account": null}"#,
            )]),
        },
        Variant {
            // (No comma in the name: --only splits at commas.)
            name: "keygate with RPM and TPM limits".into(),
            filter: Filter::KeygateLimited(vec![]),
        },
        Variant {
            name: "keygate with RPM and TPM limits without leases".into(),
            filter: Filter::KeygateLimited(vec![("credit_lease_ttl_ms", "0")]),
        },
        Variant {
            name: "envoy api_key_auth".into(),
            filter: Filter::Peer(Peer::ApiKeyAuth),
        },
        Variant {
            name: "lua table lookup".into(),
            filter: Filter::Peer(Peer::Lua),
        },
        Variant {
            name: "ext_authz to key-service".into(),
            filter: Filter::Peer(Peer::ExtAuthz),
        },
    ];
    if args.body_bytes > 0 {
        variants.push(Variant {
            // (No comma in the name: --only splits at commas.)
            name: format!("keygate: model read from a {}-byte body", args.body_bytes),
            filter: Filter::ModelFromBody(None),
        });
        variants.push(Variant {
            name: "keygate: quota from credit leases".into(),
            filter: Filter::KeygateQuota(vec![]),
        });
        variants.push(Variant {
            name: "keygate: quota without leases".into(),
            filter: Filter::KeygateQuota(vec![("credit_lease_ttl_ms", "0")]),
        });
        variants.push(Variant {
            name: "keygate: quota and a model cap".into(),
            filter: Filter::KeygateModelCap,
        });
    }
    if !args.only.is_empty() {
        variants.retain(|v| args.only.contains(&v.name));
    }
    if args.host_calls {
        variants = keygate_hostcall_filter::CALLS
            .iter()
            .map(|call| Variant {
                name: format!("host call: {call}"),
                filter: Filter::HostCall(call),
            })
            .collect();
    }
    for extra in &args.extra {
        let (name, path) = extra.split_once('=').expect("--extra NAME=PATH.wasm");
        // With bodies, an extra is another keygate build, measured as keygate is.
        let path = PathBuf::from(path);
        variants.push(Variant {
            name: name.into(),
            filter: if args.body_bytes > 0 {
                Filter::ModelFromBody(Some(path))
            } else {
                Filter::Wasm(path)
            },
        });
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let work = std::env::temp_dir().join("keygate-bench");
    fs::create_dir_all(&work).expect("bench dir");
    let body = (args.body_bytes > 0).then(|| ChatBody::new(args.body_bytes, BODY_MODEL, &work));
    let mut report = String::new();
    // Medians per key count and variant, for bench/report.py's plots.
    let mut results = Vec::new();
    let _ = writeln!(
        report,
        "# keygate filter benchmark\n\n`{}`, {} rounds, {} s per run, Envoy {} worker(s) on \
         CPU 0, wrk and the latency run on CPU 1, {}. req/s: wrk at saturation; latency: \
         {} requests/s, open loop, timed by the client from before each send (its own cost \
         is in every configuration's figure alike: compare the added column). Medians, \
         (min-max) over rounds.\n",
        std::env::args().collect::<Vec<_>>().join(" "),
        args.rounds,
        args.duration,
        args.workers,
        if args.upstream {
            "through to the mock upstream"
        } else {
            "direct response"
        },
        args.rate
    );
    if body.is_some() {
        let _ = writeln!(
            report,
            "Every variant is sent `POST {CHAT}` with a {}-byte JSON chat body whose \
             \"model\" ({BODY_MODEL}) comes last; in the model-read variants the key may call \
             only that model, so the filter reads the whole body before it lets the request on. \
             {}\n",
            args.body_bytes,
            if args.upstream {
                ""
            } else {
                "Envoy's buffer filter before the direct response (in every variant) has Envoy \
                 read the whole body too, as it would to send it upstream."
            }
        );
    }
    let seeded = |count: usize| {
        let db = work.join(format!("keys-{count}.db"));
        // Seeding a million keys takes minutes: a database seeded by an earlier run (of
        // the same schema) is reused.
        let done = db.with_extension(format!("db.{}", env!("CARGO_PKG_VERSION")));
        if !done.exists() || args.reseed {
            let started = Instant::now();
            runtime.block_on(seed_keys(&db, count));
            fs::write(&done, "").expect("seed marker");
            eprintln!(
                "seeded {count} keys in {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
        db
    };
    for &count in &args.keys {
        let db = seeded(count);
        let secret = (count > 0).then(|| secret_of(0));
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
        for round in 0..args.rounds {
            for (i, variant) in variants.iter().enumerate() {
                if !variant.measured_with(count) {
                    continue;
                }
                let sample = measure(
                    variant,
                    &db,
                    count,
                    secret.as_deref(),
                    body.as_ref(),
                    &args,
                    true,
                );
                eprintln!(
                    "{count} keys, round {round}, {}: {:.0} rps, p50 {:.0} us, p99 {:.0} us, \
                     rss {:.1} MB, load {:?}",
                    variant.name,
                    sample.rps,
                    sample.p50_us,
                    sample.p99_us,
                    sample.rss_mb,
                    sample.load_s
                );
                samples[i].push(sample);
            }
        }
        if args.rounds > 0 {
            write_table(&mut report, count, &variants, &samples);
            for (variant, samples) in variants.iter().zip(&samples) {
                if samples.is_empty() {
                    continue;
                }
                let stat = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect()).0;
                results.push(serde_json::json!({
                    "keys": count,
                    "variant": variant.name,
                    "rps": stat(|s| s.rps),
                    "p50_us": stat(|s| s.p50_us),
                    "p90_us": stat(|s| s.p90_us),
                    "p99_us": stat(|s| s.p99_us),
                    "rss_mb": stat(|s| s.rss_mb),
                    "load_s": median(samples.iter().filter_map(|s| s.load_s).collect()).0,
                }));
            }
        }
    }
    if !args.memory_keys.is_empty() {
        let _ = writeln!(
            report,
            "## Memory and initial load (keygate only, one round, no load)\n\n\
             | keys | Envoy RSS MB | load s |\n|---|---|---|"
        );
        for &count in &args.memory_keys {
            let keygate = Variant {
                name: "keygate".into(),
                filter: Filter::Keygate(vec![]),
            };
            let sample = measure(&keygate, &seeded(count), count, None, None, &args, false);
            let load = sample.load_s.map_or("-".into(), |s| format!("{s:.2}"));
            let _ = writeln!(report, "| {count} | {:.1} | {load} |", sample.rss_mb);
            results.push(serde_json::json!({
                "keys": count, "variant": "keygate", "rss_mb": sample.rss_mb,
                "load_s": sample.load_s, "rps": null, "p50_us": null, "p90_us": null,
                "p99_us": null,
            }));
        }
        let _ = writeln!(report);
    }
    if args.enforcement_tries > 0 {
        let count = args
            .keys
            .iter()
            .copied()
            .filter(|&n| n > 0)
            .min()
            .unwrap_or(10_000);
        let db = work.join(format!("keys-{count}.db"));
        enforcement(&db, count, args.enforcement_tries, &mut report);
    }
    if args.churn > 0 {
        let count = args.keys.iter().copied().max().unwrap_or(0).max(1);
        let db = work.join(format!("keys-{count}.db"));
        churn(&runtime, &db, count, args.churn, &mut report);
    }
    if let Some(dir) = args.out.parent() {
        fs::create_dir_all(dir).expect("report dir");
    }
    fs::write(&args.out, &report).expect("write report");
    let json = serde_json::to_string_pretty(&results).expect("results as JSON");
    fs::write(args.out.with_extension("json"), json).expect("write results");
    println!("{report}");
}

/// One run of `variant` in a fresh stack, sending `body` if any; `load` false measures only
/// memory and the initial load.
fn measure(
    variant: &Variant,
    db: &Path,
    count: usize,
    secret: Option<&str>,
    body: Option<&ChatBody>,
    args: &Args,
    load: bool,
) -> Sample {
    let builder = Stack::builder().concurrency(args.workers).database(db);
    let builder = if args.upstream {
        builder
    } else {
        builder.direct_response()
    };
    // A direct response goes out as soon as the router has the headers: Envoy then skips
    // the body and closes the connection, so without a filter that reads the body each
    // request would be a new connection with nothing read. Envoy's buffer filter has the
    // router wait for the whole body, in every variant alike.
    let builder = match body {
        Some(_) if !args.upstream => {
            let indent = "                  ";
            builder.envoy_edit(
                "- name: envoy.filters.http.router",
                &format!(
                    "- name: envoy.filters.http.buffer\n{indent}  typed_config:\n\
                     {indent}    \"@type\": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer\n\
                     {indent}    max_request_bytes: 10485760\n{indent}- name: envoy.filters.http.router"
                ),
            )
        }
        _ => builder,
    };
    let builder = match &variant.filter {
        Filter::None => builder.filter(None),
        Filter::Wasm(path) => builder.filter(Some(path.clone())),
        Filter::Keygate(settings)
        | Filter::KeygateQuota(settings)
        | Filter::KeygateLimited(settings) => settings
            .iter()
            .fold(builder, |b, (field, value)| b.filter_setting(field, value)),
        Filter::Peer(peer) => builder.http_filters(peer.filters(count)),
        Filter::HostCall(call) => builder
            .filter(Some(repo_root().join(
                "target/wasm32-wasip1/release/keygate_hostcall_filter.wasm",
            )))
            .filter_setting("host_call", &format!("{call:?}")),
        Filter::ModelFromBody(None) | Filter::KeygateModelCap => builder,
        Filter::ModelFromBody(Some(path)) => builder.filter(Some(path.clone())),
        Filter::Native => builder.build(Build::Native),
        Filter::NativeModule(path) | Filter::NativeFloor(path) => {
            builder.native_module(path.clone())
        }
    };
    let started = Instant::now();
    let stack = builder.start();
    let envoy = stack.pid("envoy").expect("envoy pid");
    pin(envoy, "0");
    // CPU 0 is Envoy's alone: the key-service (serving the initial load, or every request
    // of ext_authz) shares wrk's CPU.
    pin(stack.pid("key-service").expect("key-service pid"), "1");
    let keygate_like = matches!(
        variant.filter,
        Filter::Keygate(_)
            | Filter::KeygateLimited(_)
            | Filter::ModelFromBody(_)
            | Filter::KeygateQuota(_)
            | Filter::KeygateModelCap
            | Filter::Native
            | Filter::NativeFloor(_)
    );
    let mut load_s = None;
    if keygate_like && count > 0 {
        wait_for(&stack, "keygate.keys_loaded", count as u64);
        load_s = Some(load_seconds(&stack.log("envoy")).unwrap_or(started.elapsed().as_secs_f64()));
    }
    if !load {
        return Sample {
            rss_mb: rss_kb(envoy) as f64 / 1024.0,
            load_s,
            ..Sample::default()
        };
    }
    if args.upstream {
        // The mock upstream answers every request: it shares the load generator's CPU,
        // leaving CPU 0 to Envoy alone.
        pin(stack.pid("mock-upstream").expect("mock-upstream pid"), "1");
    }
    if let Filter::KeygateLimited(_) = variant.filter {
        set_default_group_limits(&stack, true);
    }
    let url = match body {
        Some(_) => format!("{}{CHAT}", stack.envoy_url),
        None => format!("{}/healthz", stack.envoy_url),
    };
    let auth = match variant.filter {
        Filter::Peer(peer) => peer.auth_header(secret.unwrap_or("sk-none")),
        _ => format!("Authorization: Bearer {}", secret.unwrap_or("sk-none")),
    };
    let checks = !matches!(
        variant.filter,
        Filter::None | Filter::Wasm(_) | Filter::HostCall(_) | Filter::NativeModule(_)
    );
    if let (Filter::ModelFromBody(_), Some(secret)) = (&variant.filter, secret) {
        restrict_to_body_model(&stack, &url, secret);
    }
    if let Filter::KeygateQuota(_) | Filter::KeygateModelCap = variant.filter {
        set_key_quota(&stack, true);
        if let Filter::KeygateModelCap = variant.filter {
            set_model_cap(&stack, true);
        }
        // The change is pushed to Envoy within milliseconds; a VM reads prices on its
        // tick (1 s). (A bench, not a test: nothing here asserts a time.)
        sleep(Duration::from_millis(1_500));
    }
    if checks && count > 0 {
        let (name, value) = auth.split_once(": ").expect("header");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let request = match body {
                Some(body) => client()
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.json),
                None => client().get(&url),
            };
            let res = request.header(name, value).send();
            let status = res.as_ref().map(|r| r.status().as_u16()).ok();
            assert_eq!(status, Some(200), "{}: the key is refused", variant.name);
            // The limited variant waits for its limits to reach the filter.
            let limited = res
                .ok()
                .is_some_and(|r| r.headers().contains_key("x-ratelimit-limit-requests"));
            if limited || !matches!(variant.filter, Filter::KeygateLimited(_)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the group's limits never reached the filter"
            );
            sleep(Duration::from_millis(100));
        }
    }
    // Warm up, then saturate, then a fixed moderate rate for latency.
    // With no keys, keygate refuses every request (401): that path is measured then.
    let refused_ok = count == 0;
    // (An extra filter may still be loading its keys: the warm-up takes any answer.)
    let script = body.map(|b| b.script.as_path());
    wrk(&url, &auth, script, 8, 1, true);
    let saturated = wrk(
        &url,
        &auth,
        script,
        args.connections,
        args.duration,
        refused_ok,
    );
    let paced = fixed_rate(&url, &auth, body, args.rate, args.duration, refused_ok);
    if let Filter::KeygateLimited(_) = variant.filter {
        // The database is shared with the other variants' runs.
        set_default_group_limits(&stack, false);
    }
    if let Filter::KeygateQuota(_) | Filter::KeygateModelCap = variant.filter {
        set_key_quota(&stack, false);
    }
    if let Filter::KeygateModelCap = variant.filter {
        set_model_cap(&stack, false);
    }
    Sample {
        rps: saturated.rps,
        p50_us: paced.p50_us,
        p90_us: paced.p90_us,
        p99_us: paced.p99_us,
        rss_mb: rss_kb(envoy) as f64 / 1024.0,
        load_s,
    }
}

/// Restricts seeded key 0 (whose secret is `secret`) to `BODY_MODEL`, in this stack's copy
/// of the database, and waits until the filter refuses it another model: from then on it
/// reads each body for its model.
fn restrict_to_body_model(stack: &Stack, url: &str, secret: &str) {
    let (status, body) = admin(
        stack,
        reqwest::Method::PATCH,
        "/api/v1/keys/key_0000000000000000",
        Some(serde_json::json!({ "models": [BODY_MODEL] })),
    );
    assert_eq!(status, 200, "restrict the key: {body}");
    let other = serde_json::json!({"messages": [], "model": "not-allowed"});
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let res = client().post(url).bearer_auth(secret).json(&other).send();
        if res.is_ok_and(|r| r.status().as_u16() == 403) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the key's model restriction never reached the filter"
        );
        sleep(Duration::from_millis(100));
    }
}

/// Gives seeded key 0 a quota far above anything the run can spend and prices
/// `BODY_MODEL` (or makes the key unlimited again).
fn set_key_quota(stack: &Stack, on: bool) {
    let (status, body) = admin(
        stack,
        reqwest::Method::PUT,
        &format!("/api/v1/models/{BODY_MODEL}"),
        Some(serde_json::json!({"input": 1_000_000, "output": 1_000_000})),
    );
    assert!(status == 200 || status == 201, "price: {status} {body}");
    let quota = if on {
        serde_json::json!({"unlimited_quota": false, "quota": 1_000_000_000_000_000_u64})
    } else {
        serde_json::json!({"unlimited_quota": true})
    };
    let (status, body) = admin(
        stack,
        reqwest::Method::PATCH,
        "/api/v1/keys/key_0000000000000000",
        Some(quota),
    );
    assert_eq!(status, 200, "quota: {body}");
}

/// Caps seeded key 0 on `BODY_MODEL` far above what the run can spend (or takes the cap
/// away).
fn set_model_cap(stack: &Stack, on: bool) {
    let caps = match on {
        true => serde_json::json!({ BODY_MODEL: {"budget": 1_000_000_000_000_000_u64} }),
        false => serde_json::json!({}),
    };
    let (status, body) = admin(
        stack,
        reqwest::Method::PATCH,
        "/api/v1/keys/key_0000000000000000",
        Some(serde_json::json!({ "model_caps": caps })),
    );
    assert_eq!(status, 200, "model cap: {body}");
}

/// Sets the default group's RPM and TPM far above anything the run can reach, or takes
/// them off.
fn set_default_group_limits(stack: &Stack, on: bool) {
    let limit = |n: u64| on.then_some(n);
    let (status, body) = admin(
        stack,
        reqwest::Method::PUT,
        "/api/v1/groups/default",
        Some(serde_json::json!({"models": ["*"], "ratio": 1.0,
            "rpm": limit(1_000_000_000), "tpm": limit(1_000_000_000_000)})),
    );
    assert!(
        status == 200 || status == 201,
        "default group limits: {status} {body}"
    );
}

/// Rotates `rotations` keys through the store of a running stack and reports how Envoy's
/// memory grows: shared data cannot delete, so each rotation leaves an emptied entry.
fn churn(
    runtime: &tokio::runtime::Runtime,
    db: &Path,
    count: usize,
    rotations: usize,
    report: &mut String,
) {
    let stack = Stack::builder().concurrency(1).database(db).start();
    let envoy = stack.pid("envoy").expect("envoy pid");
    wait_for(&stack, "keygate.keys_loaded", count as u64);
    sleep(Duration::from_secs(2));
    let before = rss_kb(envoy);
    let store = runtime
        .block_on(key_service::Store::open_sqlite(&stack.database_path()))
        .expect("open the stack's database");
    let mut done = 0;
    while done < rotations {
        let batch = 10_000.min(rotations - done);
        runtime.block_on(async {
            for n in done..done + batch {
                let id = format!("key_{:0>16}", n % count);
                let secret = secret_of(10_000_000 + n);
                let hash = keygate_core::keys::secret::hash_hex(&keygate_core::keys::secret::hash(
                    &secret,
                ));
                let rotated = store.rotate_key(&id, &hash, "sk-churn", 0, None).await;
                assert_eq!(rotated.ok(), Some(true), "rotate {id}");
            }
        });
        done += batch;
        wait_for(&stack, "keygate.revoked_entries", done as u64);
    }
    sleep(Duration::from_secs(2));
    let after = rss_kb(envoy);
    let per = (after.saturating_sub(before) * 1024) as f64 / rotations as f64;
    eprintln!("churn: {rotations} rotations over {count} keys: {before} kB -> {after} kB");
    let _ = writeln!(
        report,
        "## Key churn\n\n{rotations} rotations over {count} keys (batches of 10,000, each \
         synced before the next): Envoy RSS {:.1} MB -> {:.1} MB, **{per:.0} bytes per \
         rotation** (an emptied shared-data entry stays; the syncing VM's memory for the \
         deltas is included).\n",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
}

/// Times `tries` disables, each from the API call's start to the first request refused
/// with 401 (requests sent back to back), in a stack with the default 1 s sync interval.
fn enforcement(db: &Path, count: usize, tries: usize, report: &mut String) {
    assert!(tries < count, "--enforcement-tries needs that many keys");
    let mut stack = Stack::builder()
        .concurrency(1)
        .direct_response()
        .database(db)
        .start();
    // A fleet of two Envoys on one key-service: a key is refused when both refuse it.
    let (second_url, second_admin) = stack.add_envoy();
    wait_for(&stack, "keygate.keys_loaded", count as u64);
    let deadline = Instant::now() + Duration::from_secs(180);
    while filter_stat_at(&second_admin, "keygate.keys_loaded") != Some(count as u64) {
        assert!(
            Instant::now() < deadline,
            "the second Envoy never loaded the keys"
        );
        sleep(Duration::from_millis(20));
    }
    let urls = [stack.envoy_url.clone(), second_url].map(|envoy| format!("{envoy}/healthz"));
    // The status both Envoys answer, or 0 while they differ.
    let status = |secret: &str| {
        let [first, second] = urls.each_ref().map(|url| {
            client()
                .get(url)
                .bearer_auth(secret)
                .send()
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        });
        if first == second {
            first
        } else {
            0
        }
    };
    let mut delays_ms = Vec::new();
    for n in 0..tries {
        let secret = secret_of(n);
        assert_eq!(status(&secret), 200, "key {n} before its disable");
        // Start at a random point of the sync interval, as a real change would.
        sleep(Duration::from_millis((n as u64 * 379) % 1000));
        let started = Instant::now();
        let (code, body) = admin(
            &stack,
            reqwest::Method::PATCH,
            &format!("/api/v1/keys/key_{n:0>16}"),
            Some(serde_json::json!({"enabled": false})),
        );
        assert_eq!(code, 200, "disable: {body}");
        while status(&secret) != 401 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "key {n} never refused"
            );
        }
        delays_ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    delays_ms.sort_by(f64::total_cmp);
    let at = |q: f64| delays_ms[((delays_ms.len() - 1) as f64 * q).round() as usize];
    let _ = writeln!(
        report,
        "## Enforcement delay

`disable` through the API to a 401 at both of two Envoys on one key-service, {tries} \
         tries over {count} keys, changes pushed (`sync_wait_ms` 25000; polls every 1000 ms \
         only as the fallback): p50 **{:.1} ms**, p99 **{:.1} ms**, min {:.1} ms, max {:.1} ms.\n",
        at(0.5),
        at(0.99),
        delays_ms[0],
        delays_ms[delays_ms.len() - 1]
    );
}

fn wait_for(stack: &Stack, stat: &str, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while filter_stat(stack, stat) != Some(value) {
        assert!(Instant::now() < deadline, "{stat} never reached {value}");
        sleep(Duration::from_millis(20));
    }
}

/// Seconds from the VM taking the sync lease to the full snapshot being published, from
/// the timestamps of the filter's two log lines (`[YYYY-MM-DD HH:MM:SS.mmm]...`).
fn load_seconds(log: &str) -> Option<f64> {
    let at = |needle: &str| -> Option<f64> {
        let line = log.lines().find(|l| l.contains(needle))?;
        let time = line.get(12..24)?; // HH:MM:SS.mmm
        let mut parts = time.split(':');
        let (h, m, s): (f64, f64, f64) = (
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
            parts.next()?.parse().ok()?,
        );
        Some(h * 3600.0 + m * 60.0 + s)
    };
    Some(at("loaded into shared data")? - at("now syncs the key snapshot")?)
}

/// Pins every thread of a process to the given CPUs.
fn pin(pid: u32, cpus: &str) {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .expect("taskset");
    assert!(status.status.success(), "taskset failed");
}

fn rss_kb(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

struct Wrk {
    rps: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
}

fn wrk(
    url: &str,
    auth: &str,
    script: Option<&Path>,
    connections: usize,
    seconds: u64,
    refused_ok: bool,
) -> Wrk {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1", "wrk", "-t1", "--latency"]);
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    let out = cmd
        .args(["-c", &connections.to_string()])
        .args(["-d", &format!("{seconds}s"), "-H", auth, url])
        .output()
        .expect("run wrk (apt install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        refused_ok || !text.contains("Non-2xx"),
        "requests failed during the run:\n{text}"
    );
    let percentile = |p: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(str::trim))
            .map(parse_duration_us)
            .unwrap_or(f64::NAN)
    };
    Wrk {
        rps: text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN),
        p50_us: percentile("50%"),
        p90_us: percentile("90%"),
        p99_us: percentile("99%"),
    }
}

/// Latency at `rate` requests per second for `seconds`, open loop: request `i` is sent at
/// `i / rate` s whatever the answers to earlier ones are doing, each on its own (the
/// pool opens connections as needed), so none waits behind another (no coordinated
/// omission). Runs on its own single-threaded runtime, pinned to CPU 1.
fn fixed_rate(
    url: &str,
    auth: &str,
    body: Option<&ChatBody>,
    rate: u32,
    seconds: u64,
    refused_ok: bool,
) -> Wrk {
    pin_self("1");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (name, value) = auth.split_once(": ").expect("header");
    let client = reqwest::Client::new();
    let total = u64::from(rate) * seconds;
    let mut micros: Vec<u64> = runtime.block_on(async {
        let started = tokio::time::Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..total {
            let due = started + Duration::from_secs_f64(i as f64 / f64::from(rate));
            tokio::time::sleep_until(due).await;
            // Timed from its actual start: the timer's 1 ms granularity is the
            // generator's lateness, not Envoy's. No request waits for another's answer,
            // so a stall still shows in every request sent during it.
            let sent = tokio::time::Instant::now();
            let request = match body {
                Some(body) => client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.json),
                None => client.get(url),
            };
            let request = request.header(name, value).send();
            calls.spawn(async move {
                let status = request.await.map(|r| r.status().as_u16()).unwrap_or(0);
                (status, sent.elapsed().as_micros() as u64)
            });
        }
        let mut micros = Vec::with_capacity(total as usize);
        while let Some(done) = calls.join_next().await {
            let (status, us) = done.expect("request task");
            assert!(
                status == 200 || (refused_ok && status == 401),
                "a paced request got {status}"
            );
            micros.push(us);
        }
        micros
    });
    micros.sort_unstable();
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize] as f64;
    Wrk {
        rps: f64::from(rate),
        p50_us: at(0.50),
        p90_us: at(0.90),
        p99_us: at(0.99),
    }
}

/// Pins the calling thread (the latency run's) to the given CPUs.
fn pin_self(cpus: &str) {
    let tid = unsafe { libc::gettid() };
    let status = Command::new("taskset")
        .args(["-p", "-c", cpus, &tid.to_string()])
        .output()
        .expect("taskset");
    assert!(status.status.success(), "taskset failed");
}

fn parse_duration_us(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (value, unit) = text.split_at(split);
    let value: f64 = value.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => value,
        "ms" => value * 1e3,
        "s" => value * 1e6,
        _ => f64::NAN,
    }
}

/// What one host call costs: the time per request it adds over the filter making none,
/// divided by the calls made per request.
fn write_host_calls(report: &mut String, variants: &[Variant], rps: &dyn Fn(&str) -> f64) {
    if !variants
        .iter()
        .any(|v| matches!(v.filter, Filter::HostCall(_)))
    {
        return;
    }
    let base_us = 1e6 / rps("host call: none");
    let _ = writeln!(
        report,
        "Each host call's price: (1 / its req/s - 1 / the req/s of none) / {HOST_CALL_REPEAT} \
         calls, from the medians above ({base_us:.1} us per request with none; negative = \
         within noise).\n\n| host call | us per call |\n|---|---|"
    );
    for v in variants {
        if let Filter::HostCall(call) = v.filter {
            if call == "none" {
                continue;
            }
            let per_call = (1e6 / rps(&v.name) - base_us) / HOST_CALL_REPEAT;
            let _ = writeln!(report, "| {call} | {per_call:.2} |");
        }
    }
    let _ = writeln!(report);
}

fn median(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    (values[n / 2], values[0], values[n - 1])
}

fn write_table(report: &mut String, count: usize, variants: &[Variant], samples: &[Vec<Sample>]) {
    let stat = |i: usize, f: fn(&Sample) -> f64| median(samples[i].iter().map(f).collect());
    let named = |name: &str, f: fn(&Sample) -> f64| {
        variants
            .iter()
            .position(|v| v.name == name)
            .map_or(f64::NAN, |i| stat(i, f).0)
    };
    let floor_rps = named("no filter", |s| s.rps);
    let noop_rps = named("no-op wasm", |s| s.rps);
    let floor_p50 = named("no filter", |s| s.p50_us);
    let floor_p99 = named("no filter", |s| s.p99_us);
    let _ = writeln!(
        report,
        "## {count} keys{}\n\n| variant | req/s (saturated) | vs no filter | vs no-op wasm | \
         p50 us | p90 us | p99 us | added p50 / p99 us | Envoy RSS MB | load s |\n\
         |---|---|---|---|---|---|---|---|---|---|",
        if count == 0 {
            " (keygate refuses every request: the 401 path)"
        } else {
            ""
        }
    );
    for (i, v) in variants.iter().enumerate() {
        if samples[i].is_empty() {
            continue;
        }
        let rps = stat(i, |s| s.rps);
        let (p50, p90, p99) = (
            stat(i, |s| s.p50_us),
            stat(i, |s| s.p90_us),
            stat(i, |s| s.p99_us),
        );
        let rss = stat(i, |s| s.rss_mb);
        let load = median(samples[i].iter().filter_map(|s| s.load_s).collect());
        // A baseline this run did not measure shows as "-".
        let or_dash = |value: f64, text: String| if value.is_nan() { "-".into() } else { text };
        let ratio = |base: f64| or_dash(rps.0 / base, format!("{:.2}x", rps.0 / base));
        let _ = writeln!(
            report,
            "| {} | {:.0} ({:.0}-{:.0}) | {} | {} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {} |",
            v.name,
            rps.0,
            rps.1,
            rps.2,
            ratio(floor_rps),
            ratio(noop_rps),
            p50.0,
            p90.0,
            p99.0,
            or_dash(
                floor_p50,
                format!("{:.0} / {:.0}", p50.0 - floor_p50, p99.0 - floor_p99)
            ),
            rss.0,
            if load.0.is_nan() {
                "-".to_string()
            } else {
                format!("{:.2} ({:.2}-{:.2})", load.0, load.1, load.2)
            },
        );
    }
    let _ = writeln!(report);
    write_host_calls(report, variants, &|name| named(name, |s| s.rps));
    // keygate against each peer: the latency each adds to Envoy alone, as a ratio.
    let added = |name: &str| named(name, |s| s.p50_us) - floor_p50;
    let keygate = added("keygate");
    let peers: Vec<_> = variants
        .iter()
        .zip(samples)
        .filter(|(v, s)| matches!(v.filter, Filter::Peer(_)) && !s.is_empty())
        .collect();
    if !peers.is_empty() && keygate.is_finite() {
        let _ = writeln!(
            report,
            "keygate adds {keygate:.0} us at p50 over no filter; as a ratio to what each peer \
             adds (below 1: keygate adds less):\n\n| peer | peer adds p50 us | keygate / peer | \
             peer req/s / keygate req/s |\n|---|---|---|---|"
        );
        for (v, _) in peers {
            let peer = added(&v.name);
            // A peer that measured no slower than no filter adds nothing to divide by.
            let ratio = if peer <= 0.0 {
                "- (the peer is within noise of no filter)".to_string()
            } else if keygate <= 0.0 {
                "- (keygate is within noise of no filter)".to_string()
            } else {
                format!("{:.2}", keygate / peer)
            };
            let _ = writeln!(
                report,
                "| {} | {peer:.0} | {ratio} | {:.2} |",
                v.name,
                named(&v.name, |s| s.rps) / named("keygate", |s| s.rps)
            );
        }
        let _ = writeln!(report);
    }
}
