//! The official SDKs against the real stack: OpenAI (Python and Node), Anthropic and Google
//! Gen AI (Python) call Envoy the way applications do, and every call they make must be
//! billed exactly (the usage log against what the SDK itself reported), while every refusal
//! must surface as the SDK's own typed error.
//!
//! The scripts are `tests/sdk/*.py` (run with `.venv/bin/python`) and `tests/sdk/*.mjs`
//! (run with `node`); `make setup` installs the SDKs they import at the versions pinned in
//! `tests/sdk/requirements.txt` and `tests/sdk/package-lock.json`. Each prints one JSON
//! report (see `tests/sdk/common.py`). Nothing is skipped: a missing SDK fails the test.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use keygate_e2e::api::{admin, client, create_key, header, until_synced, upstream_requests};
use keygate_e2e::stack::{repo_root, Stack};
use reqwest::blocking::Response;
use reqwest::Method;
use serde_json::{json, Value};

/// Credits per 1,000,000 tokens: one credit a token in, two out, so a row's cost is
/// `input + 2 * output`.
const PRICE_IN: u64 = 1_000_000;
const PRICE_OUT: u64 = 2_000_000;
/// Every model the scripts call.
const MODELS: [&str; 4] = [
    "gpt-4o-mini",
    "text-embedding-3-small",
    "claude-sonnet-4-5",
    "gemini-2.5-flash",
];
/// What a restricted key may use: none of the models the refusal cases ask for.
const RESTRICTED_TO: [&str; 2] = ["gemini-1.5-pro", "gpt-4o-mini"];
/// How long one script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the usage of a call may take to reach the usage log.
const BILLING_TIMEOUT: Duration = Duration::from_secs(15);

fn sdk_dir() -> PathBuf {
    repo_root().join("tests").join("sdk")
}

/// `.venv/bin/python` with the Python SDKs importable; fails naming `make setup` otherwise.
fn python() -> PathBuf {
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `make setup` first (the SDK tests never skip)",
        python.display()
    );
    let out = Command::new(&python)
        .args(["-c", "import openai, anthropic, google.genai"])
        .output()
        .expect("run .venv/bin/python");
    assert!(
        out.status.success(),
        "the Python SDKs are not installed in .venv/: run `make setup` (the SDK tests never \
         skip)\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    python
}

/// `node`, with the OpenAI SDK in `tests/sdk/node_modules/`; fails naming `make setup`.
fn node() -> &'static str {
    let ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "node is not installed: run `make setup` (the SDK tests never skip)"
    );
    let sdk = sdk_dir().join("node_modules/openai/package.json");
    assert!(
        sdk.is_file(),
        "{} is missing: run `make setup` (the SDK tests never skip)",
        sdk.display()
    );
    "node"
}

/// A script started with the stack's URL and keys in its environment.
struct Script {
    name: &'static str,
    child: Child,
}

fn start(script: &'static str, env: &[(&str, &str)]) -> Script {
    let mut cmd = if script.ends_with(".mjs") {
        Command::new(node())
    } else {
        Command::new(python())
    };
    cmd.arg(script)
        .current_dir(sdk_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        cmd.env(name, value);
    }
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {script}: {e}"));
    Script {
        name: script,
        child,
    }
}

impl Script {
    /// Waits for the script and returns its JSON report, or what went wrong.
    fn report(mut self) -> Result<Value, String> {
        let deadline = Instant::now() + SCRIPT_TIMEOUT;
        while self.child.try_wait().expect("wait for script").is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!("{} ran longer than {SCRIPT_TIMEOUT:?}", self.name));
            }
            sleep(Duration::from_millis(50));
        }
        let out = self.child.wait_with_output().expect("script output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!(
                "{} failed with {}:\n{stdout}\n{stderr}",
                self.name, out.status
            ));
        }
        serde_json::from_str(stdout.trim()).map_err(|e| {
            format!(
                "{} printed no JSON report ({e}):\n{stdout}\n{stderr}",
                self.name
            )
        })
    }
}

/// A request the filter answers without billing anything (the model list), sent until
/// the key is known to the filter.
fn models_get(stack: &Stack, secret: &str) -> Response {
    client()
        .get(format!("{}/v1/models", stack.envoy_url))
        .bearer_auth(secret)
        .send()
        .expect("GET /v1/models")
}

fn usage_rows(stack: &Stack, key_id: &str) -> Vec<Value> {
    let (status, page) = admin(
        stack,
        Method::GET,
        &format!("/api/v1/usage?key_id={key_id}&per_page=100"),
        None,
    );
    assert_eq!(status, 200, "{page}");
    page["usage"].as_array().cloned().unwrap_or_default()
}

/// What one row bills, as `model input/cached/output status`.
fn billed(model: &str, input: u64, output: u64) -> String {
    format!("{model} {input}/0/{output} 200")
}

fn row_line(row: &Value) -> String {
    format!(
        "{} {}/{}/{} {}",
        row["model"].as_str().unwrap_or("?"),
        row["input_tokens"],
        row["cached_input_tokens"],
        row["output_tokens"],
        row["status"]
    )
}

/// The stack with prices set and the keys every case needs, all known to the filter.
struct Fixture {
    stack: Stack,
    unknown: String,
    exhausted: (String, String),
    restricted: (String, String),
}

fn fixture() -> Fixture {
    let stack = Stack::start();
    for model in MODELS {
        let (status, body) = admin(
            &stack,
            Method::PUT,
            &format!("/api/v1/models/{model}"),
            Some(json!({"input": PRICE_IN, "output": PRICE_OUT})),
        );
        assert!(status == 200 || status == 201, "price {model}: {body}");
    }
    // Well formed (its checksum holds) but never issued.
    let unknown =
        keygate_core::keys::secret::from_random("0123456789abcdefghijklmnopqrstuvwxyzABCDEF")
            .unwrap();
    let exhausted = create_key(
        &stack,
        json!({"name": "sdk-exhausted", "unlimited_quota": false, "quota": 0}),
    );
    let restricted = create_key(
        &stack,
        json!({"name": "sdk-restricted", "models": RESTRICTED_TO}),
    );
    Fixture {
        stack,
        unknown,
        exhausted: (exhausted.id, exhausted.secret),
        restricted: (restricted.id, restricted.secret),
    }
}

/// A limited key for one script (so its usage rows are its own), known to the filter.
fn script_key(stack: &Stack, name: &str) -> (String, String) {
    let key = create_key(
        stack,
        json!({"name": name, "unlimited_quota": false, "quota": 1_000_000}),
    );
    (key.id, key.secret)
}

/// One exception a refusal case must raise: (class, HTTP status, keygate's `code`).
type Refusal = (&'static str, u64, &'static str);

struct Expected {
    script: &'static str,
    refusals: [(&'static str, Refusal); 3],
}

const EXPECTED: [Expected; 4] = [
    Expected {
        script: "openai_calls.py",
        refusals: [
            (
                "unknown_key",
                ("openai.AuthenticationError", 401, "invalid_api_key"),
            ),
            (
                "quota_used_up",
                ("openai.RateLimitError", 429, "insufficient_quota"),
            ),
            (
                "model_not_allowed",
                ("openai.PermissionDeniedError", 403, "model_not_allowed"),
            ),
        ],
    },
    Expected {
        script: "anthropic_calls.py",
        refusals: [
            (
                "unknown_key",
                ("anthropic.AuthenticationError", 401, "invalid_api_key"),
            ),
            (
                "quota_used_up",
                ("anthropic.RateLimitError", 429, "insufficient_quota"),
            ),
            (
                "model_not_allowed",
                ("anthropic.PermissionDeniedError", 403, "model_not_allowed"),
            ),
        ],
    },
    Expected {
        script: "genai_calls.py",
        refusals: [
            (
                "unknown_key",
                ("google.genai.errors.ClientError", 401, "invalid_api_key"),
            ),
            (
                "quota_used_up",
                ("google.genai.errors.ClientError", 429, "insufficient_quota"),
            ),
            (
                "model_not_allowed",
                ("google.genai.errors.ClientError", 403, "model_not_allowed"),
            ),
        ],
    },
    Expected {
        script: "openai_calls.mjs",
        refusals: [
            (
                "unknown_key",
                ("openai.AuthenticationError", 401, "invalid_api_key"),
            ),
            (
                "quota_used_up",
                ("openai.RateLimitError", 429, "insufficient_quota"),
            ),
            (
                "model_not_allowed",
                ("openai.PermissionDeniedError", 403, "model_not_allowed"),
            ),
        ],
    },
];

/// The calls each script must have made successfully, by name.
fn expected_calls(script: &str) -> &'static [&'static str] {
    match script {
        "openai_calls.py" => &[
            "chat",
            "chat_stream_without_stream_options",
            "chat_stream_with_include_usage",
            "responses",
            "responses_stream",
            "embeddings",
        ],
        "anthropic_calls.py" => &["messages", "messages_stream"],
        "genai_calls.py" => &["generate_content", "generate_content_stream"],
        "openai_calls.mjs" => &[
            "chat",
            "chat_stream_without_stream_options",
            "chat_stream_with_include_usage",
        ],
        _ => &[],
    }
}

/// Checks one script's report: no failures, the SDK saw the usage the mock reports, each
/// stream came through as the SDK asked for it, every refusal was the SDK's typed error.
/// Returns the rows the usage log must hold for the script's key.
fn check_report(expected: &Expected, report: &Value, problems: &mut Vec<String>) -> Vec<String> {
    let script = expected.script;
    for failure in report["failures"].as_array().into_iter().flatten() {
        problems.push(format!("{script}: {} failed: {}", failure["name"], failure));
    }
    let calls = report["calls"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = calls.iter().filter_map(|c| c["name"].as_str()).collect();
    for want in expected_calls(script) {
        if !names.contains(want) {
            problems.push(format!("{script}: no successful `{want}` call"));
        }
    }
    let mut rows = Vec::new();
    for c in &calls {
        let name = c["name"].as_str().unwrap_or("?");
        let model = c["model"].as_str().unwrap_or("?");
        let expect = &c["expect"];
        let (input, output) = (
            expect["input"].as_u64().unwrap_or(0),
            expect["output"].as_u64().unwrap_or(0),
        );
        if name == "chat_stream_without_stream_options" {
            // keygate added include_usage and must have taken out all it added.
            if c["chunks_with_usage"] != 0 || c["chunks_without_choices"] != 0 {
                problems.push(format!(
                    "{script}: {name}: the SDK saw usage it did not ask for: {c}"
                ));
            }
            if c["finish_reasons"] != json!(["stop"]) {
                problems.push(format!("{script}: {name}: finish reasons: {c}"));
            }
        } else if c["usage"] != *expect {
            problems.push(format!(
                "{script}: {name}: the SDK saw usage {} where the mock reports {expect}",
                c["usage"]
            ));
        }
        if name == "chat_stream_with_include_usage" && c["chunks_with_usage"] != 1 {
            problems.push(format!("{script}: {name}: usage chunks: {c}"));
        }
        if output > 0 {
            let text: Vec<String> = (1..=output).map(|i| format!("w{i}")).collect();
            if c["text"] != json!(text.join(" ")) {
                problems.push(format!("{script}: {name}: text {} ", c["text"]));
            }
        }
        // Whatever the SDK saw, keygate must bill what the upstream reported.
        rows.push(billed(model, input, output));
    }
    let refusals = report["refusals"].as_array().cloned().unwrap_or_default();
    for (case, (class, status, code)) in expected.refusals {
        match refusals.iter().find(|r| r["name"] == case) {
            None => problems.push(format!("{script}: {case}: no refusal reported")),
            Some(r) => {
                if r["type"] != class || r["status"] != status || r["code"] != code {
                    problems.push(format!(
                        "{script}: {case}: want {class} {status} {code}, got {} {} {} ({})",
                        r["type"], r["status"], r["code"], r["message"]
                    ));
                }
            }
        }
    }
    rows
}

#[test]
fn official_sdks_are_billed_exactly_and_refusals_are_their_typed_errors() {
    let started = Instant::now();
    // Fail at once, naming `make setup`, if an SDK is missing.
    python();
    node();
    let f = fixture();
    let stack = &f.stack;
    let keys: Vec<(String, String)> = EXPECTED
        .iter()
        .map(|e| script_key(stack, &format!("sdk-{}", e.script.replace('.', "-"))))
        .collect();
    for (_, secret) in keys.iter().chain([&f.exhausted, &f.restricted]) {
        until_synced(|| models_get(stack, secret));
    }

    let scripts: Vec<Script> = EXPECTED
        .iter()
        .zip(&keys)
        .map(|(e, (_, secret))| {
            start(
                e.script,
                &[
                    ("KEYGATE_URL", &stack.envoy_url),
                    ("KEYGATE_KEY", secret),
                    ("KEYGATE_UNKNOWN_KEY", &f.unknown),
                    ("KEYGATE_EXHAUSTED_KEY", &f.exhausted.1),
                    ("KEYGATE_RESTRICTED_KEY", &f.restricted.1),
                ],
            )
        })
        .collect();
    let mut problems = Vec::new();
    let reports: Vec<Value> = scripts
        .into_iter()
        .map(|s| {
            s.report().unwrap_or_else(|e| {
                problems.push(e);
                Value::Null
            })
        })
        .collect();
    let scripts_done = started.elapsed();

    let mut want_rows: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((expected, report), (key_id, _)) in EXPECTED.iter().zip(&reports).zip(&keys) {
        eprintln!("{}: {}", expected.script, report["facts"]);
        let mut rows = check_report(expected, report, &mut problems);
        rows.sort();
        want_rows.insert(key_id, rows);
    }

    // The models list of an unrestricted key is the upstream's, untouched and unbilled.
    let listed = &reports[0]["facts"]["models"];
    let mut upstream_models: Vec<&str> = keygate_e2e::upstream::MODELS
        .iter()
        .map(|(id, _)| *id)
        .collect();
    upstream_models.sort_unstable();
    if *listed != json!(upstream_models) {
        problems.push(format!(
            "openai_calls.py: client.models.list() gave {listed}"
        ));
    }
    // The Google Gen AI SDK's own default version prefix reached the upstream.
    let version = reports[2]["facts"]["api_version"].as_str().unwrap_or("?");
    let seen = upstream_requests(stack);
    for action in ["generateContent", "streamGenerateContent?alt=sse"] {
        let path = format!("/{version}/models/gemini-2.5-flash:{action}");
        if !seen.iter().any(|r| r["path"] == path) {
            problems.push(format!("genai_calls.py: no upstream request to {path}"));
        }
    }
    // No credential went upstream, whichever header or parameter the SDK put it in.
    for r in &seen {
        let path = r["path"].as_str().unwrap_or_default();
        let leaked = ["authorization", "x-api-key", "x-goog-api-key", "api-key"]
            .into_iter()
            .find(|h| header(r, h).is_some());
        if leaked.is_some() || path.contains("key=") {
            problems.push(format!(
                "a credential reached the upstream: {leaked:?} {path}"
            ));
        }
    }

    // Every call billed once, exactly: wait for the reports, then once more to see that
    // nothing else arrives.
    let deadline = Instant::now() + BILLING_TIMEOUT;
    while Instant::now() < deadline
        && want_rows
            .iter()
            .any(|(id, want)| usage_rows(stack, id).len() < want.len())
    {
        sleep(Duration::from_millis(200));
    }
    sleep(Duration::from_millis(1500));
    for ((expected, (key_id, _)), report) in EXPECTED.iter().zip(&keys).zip(&reports) {
        let rows = usage_rows(stack, key_id);
        let mut got: Vec<String> = rows.iter().map(row_line).collect();
        got.sort();
        let want = &want_rows[key_id.as_str()];
        if &got != want {
            problems.push(format!(
                "{}: the usage log holds {got:?} where the SDK's calls ({} of them) were \
                 {want:?}",
                expected.script,
                report["calls"].as_array().map_or(0, Vec::len)
            ));
        }
        let mut total = 0;
        for row in &rows {
            let (input, output) = (
                row["input_tokens"].as_u64().unwrap_or(0),
                row["output_tokens"].as_u64().unwrap_or(0),
            );
            let cost = (input * PRICE_IN + output * PRICE_OUT).div_ceil(1_000_000);
            total += cost;
            if row["cost"] != cost || row["estimated"] == true {
                problems.push(format!("{}: row billed wrong: {row}", expected.script));
            }
        }
        let (_, key) = admin(stack, Method::GET, &format!("/api/v1/keys/{key_id}"), None);
        if key["used_quota"] != total {
            problems.push(format!(
                "{}: used_quota {} where its rows cost {total}",
                expected.script, key["used_quota"]
            ));
        }
    }
    // Refused requests are not billed.
    for (id, name) in [
        (&f.exhausted.0, "exhausted"),
        (&f.restricted.0, "restricted"),
    ] {
        let rows = usage_rows(stack, id);
        if !rows.is_empty() {
            problems.push(format!("the {name} key was billed for refusals: {rows:?}"));
        }
    }
    eprintln!(
        "scripts ran in {scripts_done:?}, the whole case in {:?}",
        started.elapsed()
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

/// The contract: `GET /v1/models` with a model-restricted key answers 200 with only the
/// models the key may use, so `client.models.list()` works for such keys too.
#[test]
fn models_list_with_a_restricted_key_shows_only_its_models() {
    python();
    let stack = Stack::start();
    let key = create_key(
        &stack,
        json!({"name": "sdk-models-restricted", "models": ["gpt-4o-mini", "gemini-2.5-flash"]}),
    );
    until_synced(|| models_get(&stack, &key.secret));
    let report = start(
        "openai_models.py",
        &[
            ("KEYGATE_URL", &stack.envoy_url),
            ("KEYGATE_KEY", &key.secret),
        ],
    )
    .report()
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        report["failures"],
        json!([]),
        "client.models.list() with a restricted key failed"
    );
    assert_eq!(
        report["facts"]["models"],
        json!(["gemini-2.5-flash", "gpt-4o-mini"])
    );
}
