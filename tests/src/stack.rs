//! The end-to-end harness: starts the real Envoy (from `.venv/`) with the built filter, the
//! key-service and the mock upstream on free loopback ports, waits until each is ready,
//! and stops them all when the `Stack` is dropped, including when a test panics.
//!
//! Nothing is skipped: a missing Envoy, filter or binary fails the test with the command
//! that builds it.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long any one process may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository root (the workspace that holds this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// A file the stack needs; fails with how to make it when it is absent.
fn required(path: PathBuf, how: &str) -> PathBuf {
    assert!(
        path.is_file(),
        "{} is missing: run `{how}` first (end-to-end tests never skip)",
        path.display()
    );
    path
}

pub fn envoy_bin() -> PathBuf {
    required(repo_root().join(".venv/bin/envoy"), "make setup")
}

/// The two builds of the filter: the same core, as a proxy-wasm module or as an Envoy
/// dynamic module. `make test` runs the end-to-end suite on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Wasm,
    Native,
}

/// The build the tests run against: `KEYGATE_E2E_FILTER=native` for the dynamic module,
/// Wasm otherwise.
pub fn filter_build() -> Build {
    match std::env::var("KEYGATE_E2E_FILTER").as_deref() {
        Ok("native") => Build::Native,
        Ok("wasm") | Err(_) => Build::Wasm,
        Ok(other) => panic!("KEYGATE_E2E_FILTER={other}: expected wasm or native"),
    }
}

/// The built native filter (`make build-native-filter`).
pub fn filter_native() -> PathBuf {
    required(
        target_dir().join("native/libkeygate_native.so"),
        "make build-native-filter",
    )
}

/// The native filter built with `panic-probe` (`make build-panic-probe`): tests only.
pub fn filter_panic_probe() -> PathBuf {
    required(
        target_dir().join("panic-probe/native/libkeygate_native.so"),
        "make build-panic-probe",
    )
}

impl Build {
    /// The prefix Envoy gives the filter's stats: proxy-wasm's, or the dynamic modules'.
    pub fn stat_prefix(self) -> &'static str {
        match self {
            Build::Wasm => "wasmcustom.",
            Build::Native => "dynamicmodulescustom.",
        }
    }
}

/// The built filter, or the one `KEYGATE_E2E_WASM` names (to watch a test fail on an
/// older build: `KEYGATE_E2E_WASM=/path/to/old/keygate.wasm cargo test ...`).
pub fn filter_wasm() -> PathBuf {
    if let Some(path) = std::env::var_os("KEYGATE_E2E_WASM") {
        return required(PathBuf::from(path), "a build of the filter");
    }
    required(
        target_dir().join("wasm32-wasip1/release/keygate.wasm"),
        "make build",
    )
}

/// The built key-service, or the one `KEYGATE_E2E_KEY_SERVICE` names (as for
/// `KEYGATE_E2E_WASM`).
fn key_service_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("KEYGATE_E2E_KEY_SERVICE") {
        return required(PathBuf::from(path), "a build of the key-service");
    }
    release_bin("key-service")
}

fn release_bin(name: &str) -> PathBuf {
    required(target_dir().join("release").join(name), "make build")
}

/// A random token of 32 hex digits for a test stack's admin and filter tokens.
pub fn random_token() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    (0..2)
        .map(|_| {
            let mut h = RandomState::new().build_hasher();
            h.write_u128(Instant::now().elapsed().as_nanos());
            format!("{:016x}", h.finish())
        })
        .collect()
}

/// One child process with its log file; killed on drop.
pub(crate) struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(name: &'static str, mut cmd: Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // If the test process dies without unwinding, take the child with it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name, child, log }
    }

    pub(crate) fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for `prefix <address>` in the process's output and returns the address.
    pub(crate) fn wait_for_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(addr) = self
                .log_text()
                .lines()
                .find_map(|l| l.strip_prefix(prefix).map(|a| a.trim().to_string()))
            {
                return addr;
            }
            self.assert_alive();
            assert!(
                Instant::now() < deadline,
                "{} did not print {prefix:?} in time; its log:\n{}",
                self.name,
                self.log_text()
            );
            sleep(Duration::from_millis(20));
        }
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early with {status}; its log:\n{}",
                self.name,
                self.log_text()
            );
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A key-service on its own, on the database at `database_url` (for the key-service's
/// benchmark); stopped on drop.
pub struct KeyService {
    process: Proc,
    pub url: String,
    pub admin_token: String,
    pub filter_token: String,
}

impl KeyService {
    pub fn start(database_url: &str) -> KeyService {
        Self::start_with(database_url, &[("RUST_LOG", "warn")])
    }

    /// Starts it with these environment variables as well (`KEYGATE_*` configuration).
    pub fn start_with(database_url: &str, env: &[(&str, &str)]) -> KeyService {
        let dir = std::env::temp_dir().join(format!("keygate-service-{}", random_token()));
        fs::create_dir_all(&dir).expect("create service dir");
        let admin_token = random_token();
        let filter_token = random_token();
        let mut cmd = key_service_command("127.0.0.1:0", database_url, &admin_token, &filter_token);
        cmd.envs(env.iter().copied());
        let mut proc_ = Proc::spawn("key-service", cmd, &dir);
        let addr = proc_.wait_for_line("key-service listening on");
        KeyService {
            process: proc_,
            url: format!("http://{addr}"),
            admin_token,
            filter_token,
        }
    }

    /// Everything the key-service has written so far (for assertions on its log).
    pub fn log(&self) -> String {
        self.process.log_text()
    }
}

impl Drop for KeyService {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- key-service log ----\n{}", tail(&self.log(), 60));
        }
    }
}

/// A fresh, empty database on the PostgreSQL server that `KEYGATE_TEST_POSTGRES` names
/// (tests run under `.ci/postgres.sh`, which starts one); fails, never skips, without it.
pub fn postgres_database_url() -> String {
    assert!(
        std::env::var_os("KEYGATE_TEST_POSTGRES").is_some(),
        "this test needs PostgreSQL: run it under .ci/postgres.sh (make test-e2e does)"
    );
    let dir = std::env::temp_dir();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let database = runtime
        .block_on(key_service::store::test_database(&dir))
        .expect("create a PostgreSQL test database");
    match database {
        key_service::config::Database::Postgres { url } => url,
        other => panic!("expected a PostgreSQL database, got {other:?}"),
    }
}

/// Options for a stack; the defaults are the shipped configuration.
pub struct StackBuilder {
    /// Token Envoy hands the filter; `None` = the key-service's real filter token.
    envoy_filter_token: Option<String>,
    concurrency: u32,
    /// Extra `"field": value` entries for the filter's JSON configuration.
    filter_settings: Vec<(String, String)>,
    /// Another Wasm filter in keygate's place (`None`: the built keygate), or no filter
    /// at all (`Some(None)`): the benchmark's baselines.
    filter: Option<Option<PathBuf>>,
    /// The build of keygate to run (`None`: `filter_build()`).
    build: Option<Build>,
    /// Another dynamic module in the native build's place (the benchmark's floor).
    native_module: Option<PathBuf>,
    /// Envoy answers every request itself instead of routing to the mock upstream.
    direct_response: bool,
    /// A key-service database to start from (copied), instead of an empty one.
    database: Option<PathBuf>,
    /// Envoy runs `envoy/multi-provider.yaml` with every provider at the mock upstream.
    multi_provider: bool,
    /// HTTP filter entries (YAML, indented as `http_filters` items) in keygate's place:
    /// the benchmark's peers. `{FILTER_TOKEN}` in them becomes the filter token.
    http_filters: Option<String>,
    /// The key-service's database URL, instead of SQLite in the stack's directory.
    database_url: Option<String>,
    /// Text replacements in Envoy's configuration, each made once.
    envoy_edits: Vec<(String, String)>,
    /// Extra environment of the key-service.
    key_service_env: Vec<(String, String)>,
    /// Extra environment of Envoy (and so of the filter in it).
    envoy_env: Vec<(String, String)>,
    /// A second key-service replica on the same database, behind Envoy's cluster too.
    key_service_pair: bool,
}

impl StackBuilder {
    /// Gives the filter a different token than the key-service expects.
    pub fn envoy_filter_token(mut self, token: &str) -> Self {
        self.envoy_filter_token = Some(token.to_string());
        self
    }

    /// Sets one field of the filter's configuration that `envoy/envoy.yaml` leaves at its
    /// default (`value` is JSON).
    pub fn filter_setting(mut self, field: &str, value: &str) -> Self {
        self.filter_settings
            .push((field.to_string(), value.to_string()));
        self
    }

    /// Envoy worker threads (and so Wasm VMs); 2 by default.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// Runs `wasm` in keygate's place (same configuration), or, with `None`, no Wasm
    /// filter at all.
    pub fn filter(mut self, wasm: Option<PathBuf>) -> Self {
        self.filter = Some(wasm);
        self
    }

    /// Runs this build of keygate, whichever `KEYGATE_E2E_FILTER` names (the benchmark
    /// measures both).
    pub fn build(mut self, build: Build) -> Self {
        self.build = Some(build);
        self
    }

    /// Runs another dynamic module where the native build would be, with its
    /// configuration.
    pub fn native_module(mut self, path: PathBuf) -> Self {
        self.build = Some(Build::Native);
        self.native_module = Some(path);
        self
    }

    /// Has Envoy answer 200 itself after the filters, so only Envoy and the filter are
    /// measured, not the upstream.
    pub fn direct_response(mut self) -> Self {
        self.direct_response = true;
        self
    }

    /// Puts these `http_filters` entries where keygate's is (see the field).
    pub fn http_filters(mut self, yaml: String) -> Self {
        self.http_filters = Some(yaml);
        self
    }

    /// Runs the shipped `envoy/multi-provider.yaml` instead of `envoy/envoy.yaml`, with
    /// each provider's address pointed at the mock upstream over plain HTTP and the
    /// provider credentials of [`PROVIDER_CREDENTIALS`] in its SDS files.
    pub fn multi_provider(mut self) -> Self {
        self.multi_provider = true;
        self
    }

    /// Starts the key-service on a copy of this SQLite database.
    pub fn database(mut self, path: &Path) -> Self {
        self.database = Some(path.to_path_buf());
        self
    }

    /// Keeps the key-service's SQLite database in `dir` (a small disk a test fills, say).
    pub fn sqlite_in(mut self, dir: &Path) -> Self {
        self.database_url = Some(format!("sqlite://{}/keygate.db", dir.display()));
        self
    }

    /// Runs two key-service replicas on the same database (PostgreSQL, see `postgres`),
    /// both endpoints of Envoy's `key_service` cluster; the second is `key-service2`.
    pub fn key_service_pair(mut self) -> Self {
        self.key_service_pair = true;
        self
    }

    /// Sets an environment variable of the key-service (`KEYGATE_*` configuration).
    pub fn key_service_env(mut self, name: &str, value: &str) -> Self {
        self.key_service_env
            .push((name.to_string(), value.to_string()));
        self
    }

    /// Sets an environment variable of Envoy.
    pub fn envoy_env(mut self, name: &str, value: &str) -> Self {
        self.envoy_env.push((name.to_string(), value.to_string()));
        self
    }

    /// Replaces `from` (which must occur once) with `to` in Envoy's configuration.
    pub fn envoy_edit(mut self, from: &str, to: &str) -> Self {
        self.envoy_edits.push((from.to_string(), to.to_string()));
        self
    }

    /// Runs the key-service on a fresh database of the PostgreSQL server that
    /// `KEYGATE_TEST_POSTGRES` names (`make test-e2e` runs under `.ci/postgres.sh`, which
    /// starts one); fails, never skips, without it.
    pub fn postgres(mut self) -> Self {
        self.database_url = Some(postgres_database_url());
        self
    }

    pub fn start(self) -> Stack {
        Stack::start_with(self)
    }
}

/// A running Envoy + key-service + mock upstream, each on its own loopback port.
pub struct Stack {
    /// `http://127.0.0.1:PORT` of Envoy's listener: where clients send LLM requests.
    pub envoy_url: String,
    pub envoy_admin_url: String,
    pub key_service_url: String,
    pub upstream_url: String,
    pub admin_token: String,
    pub filter_token: String,
    /// The second key-service replica (`key_service_pair`).
    pub second_key_service_url: Option<String>,
    /// The build of keygate this stack runs.
    pub build: Build,
    // Dropped in reverse order of start: Envoy first.
    procs: Vec<Proc>,
    dir: PathBuf,
    database_url: String,
    /// How Envoy and the key-service were started, to start them again.
    concurrency: u32,
    envoy_token: String,
    key_service_env: Vec<(String, String)>,
    envoy_env: Vec<(String, String)>,
}

impl Stack {
    pub fn builder() -> StackBuilder {
        StackBuilder {
            envoy_filter_token: None,
            concurrency: 2,
            filter_settings: Vec::new(),
            filter: None,
            build: None,
            native_module: None,
            direct_response: false,
            database: None,
            multi_provider: false,
            http_filters: None,
            database_url: None,
            envoy_edits: Vec::new(),
            key_service_env: Vec::new(),
            envoy_env: Vec::new(),
            key_service_pair: false,
        }
    }

    pub fn start() -> Stack {
        Self::builder().start()
    }

    fn start_with(options: StackBuilder) -> Stack {
        // Before anything starts: no Envoy, no stack.
        envoy_bin();
        let wasm = match &options.filter {
            Some(Some(path)) => required(path.clone(), "make build"),
            _ => filter_wasm(),
        };
        // The built keygate runs as the build under test; another Wasm filter (an older
        // build, a benchmark's baseline) stays what it is.
        let build = options.build.unwrap_or_else(filter_build);
        let native = (options.filter.is_none() && build == Build::Native).then(|| {
            match &options.native_module {
                Some(path) => required(path.clone(), "make build"),
                None => filter_native(),
            }
        });
        let dir = std::env::temp_dir().join(format!("keygate-e2e-{}", random_token()));
        fs::create_dir_all(&dir).expect("create stack dir");
        if let Some(db) = &options.database {
            fs::copy(db, dir.join("keygate.db")).expect("copy the database");
        }
        let mut procs = Vec::new();

        let mut cmd = Command::new(release_bin("mock-upstream"));
        cmd.args(["--listen", "127.0.0.1:0"]);
        procs.push(Proc::spawn("mock-upstream", cmd, &dir));
        let upstream = procs[0].wait_for_line("mock-upstream listening on");

        let admin_token = random_token();
        let filter_token = random_token();
        let database_url = options
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}/keygate.db", dir.display()));
        let mut cmd =
            key_service_command("127.0.0.1:0", &database_url, &admin_token, &filter_token);
        cmd.envs(options.key_service_env.iter().cloned());
        procs.push(Proc::spawn("key-service", cmd, &dir));
        let key_service = procs[1].wait_for_line("key-service listening on");
        let second_key_service = options.key_service_pair.then(|| {
            let mut cmd =
                key_service_command("127.0.0.1:0", &database_url, &admin_token, &filter_token);
            cmd.envs(options.key_service_env.iter().cloned());
            let mut proc = Proc::spawn("key-service2", cmd, &dir);
            let addr = proc.wait_for_line("key-service listening on");
            procs.push(proc);
            addr
        });

        let config = dir.join("envoy.yaml");
        let mut text = if options.multi_provider {
            multi_provider_config(&wasm, &upstream, &key_service, &dir)
        } else {
            envoy_config(&wasm, &upstream, &key_service)
        };
        if let Some(native) = &native {
            text = to_native(&text, native);
        }
        for (field, value) in &options.filter_settings {
            text = with_filter_setting(&text, field, value);
        }
        if options.filter == Some(None) {
            text = without_filter(&text, "");
        }
        if let Some(filters) = &options.http_filters {
            text = without_filter(&text, &filters.replace("{FILTER_TOKEN}", &filter_token));
        }
        for (from, to) in &options.envoy_edits {
            text = replace_once(&text, from, to);
        }
        if let Some(second) = &second_key_service {
            let port = |addr: &str| addr.rsplit(':').next().unwrap_or_default().to_string();
            let first = format!(
                "socket_address: {{ address: 127.0.0.1, port_value: {} }}",
                port(&key_service)
            );
            let both = format!(
                "{first}\n              - endpoint:\n                  address:\n                    \
                 socket_address: {{ address: 127.0.0.1, port_value: {} }}",
                port(second)
            );
            text = replace_once(&text, &first, &both);
        }
        if options.direct_response {
            text = replace_once(
                &text,
                "route: { cluster: upstream, timeout: 300s }",
                "direct_response: { status: 200, body: { inline_string: \"ok\" } }",
            );
        }
        fs::write(&config, text).expect("write config");
        let envoy_token = options
            .envoy_filter_token
            .clone()
            .unwrap_or_else(|| filter_token.clone());
        let (proc, envoy_admin_url, listener) = start_envoy(
            "envoy",
            &dir,
            options.concurrency,
            &envoy_token,
            &options.envoy_env,
        );
        procs.push(proc);

        Stack {
            envoy_url: format!("http://{listener}"),
            envoy_admin_url,
            key_service_url: format!("http://{key_service}"),
            upstream_url: format!("http://{upstream}"),
            admin_token,
            filter_token,
            second_key_service_url: second_key_service.map(|addr| format!("http://{addr}")),
            build,
            procs,
            dir,
            database_url,
            concurrency: options.concurrency,
            envoy_token,
            key_service_env: options.key_service_env,
            envoy_env: options.envoy_env,
        }
    }

    /// Kills Envoy and starts a new one with the same configuration: a new process, with
    /// no shared data and no snapshot (its listener gets a new port).
    pub fn restart_envoy(&mut self) {
        self.kill("envoy");
        let (proc, admin_url, listener) = start_envoy(
            "envoy",
            &self.dir,
            self.concurrency,
            &self.envoy_token,
            &self.envoy_env,
        );
        self.procs.push(proc);
        self.envoy_admin_url = admin_url;
        self.envoy_url = format!("http://{listener}");
    }

    /// Starts a second Envoy with the same configuration and key-service (a fleet of
    /// two): its listener's URL and its admin URL. Its process is named `envoy2`.
    pub fn add_envoy(&mut self) -> (String, String) {
        let (proc, admin_url, listener) = start_envoy(
            "envoy2",
            &self.dir,
            self.concurrency,
            &self.envoy_token,
            &self.envoy_env,
        );
        self.procs.push(proc);
        (format!("http://{listener}"), admin_url)
    }

    /// Stops one process of the stack (`"key-service"`, `"mock-upstream"` or `"envoy"`),
    /// to see how the others cope without it.
    pub fn kill(&mut self, name: &str) {
        let before = self.procs.len();
        self.procs.retain(|p| p.name != name);
        assert_eq!(before - self.procs.len(), 1, "no process named {name}");
    }

    /// Starts the key-service again (after `kill`), on the same address and database.
    pub fn restart_key_service(&mut self) {
        assert!(
            self.procs.iter().all(|p| p.name != "key-service"),
            "kill the key-service first"
        );
        let addr = self
            .key_service_url
            .trim_start_matches("http://")
            .to_string();
        let mut cmd = key_service_command(
            &addr,
            &self.database_url,
            &self.admin_token,
            &self.filter_token,
        );
        cmd.envs(self.key_service_env.iter().cloned());
        // Its log file starts over.
        let mut proc = Proc::spawn("key-service", cmd, &self.dir);
        proc.wait_for_line("key-service listening on");
        // Envoy is stopped first on drop: keep it last.
        let at = self.procs.len().saturating_sub(1);
        self.procs.insert(at, proc);
    }

    /// The key-service's SQLite database (to change it behind the API's back, as the
    /// benchmark does to rotate many keys fast).
    pub fn database_path(&self) -> PathBuf {
        self.dir.join("keygate.db")
    }

    /// The process id of one process of the stack (to read its memory use).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.child.id())
    }

    /// Everything a process of this stack has written so far (for assertions on logs).
    pub fn log(&self, name: &str) -> String {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(Proc::log_text)
            .unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        while let Some(proc) = self.procs.pop() {
            if std::thread::panicking() {
                eprintln!(
                    "---- {} log ----\n{}",
                    proc.name,
                    tail(&proc.log_text(), 60)
                );
            }
            drop(proc);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn key_service_command(
    listen: &str,
    database_url: &str,
    admin_token: &str,
    filter_token: &str,
) -> Command {
    let mut cmd = Command::new(key_service_bin());
    cmd.args(["--listen", listen])
        .env("KEYGATE_DATABASE_URL", database_url)
        .env("KEYGATE_ADMIN_TOKEN", admin_token)
        .env("KEYGATE_FILTER_TOKEN", filter_token)
        .env("RUST_LOG", "info");
    cmd
}

/// The shipped `envoy/envoy.yaml` with only the ports and the filter's path changed, so
/// the tests run the configuration users run.
pub fn envoy_config(wasm: &Path, upstream: &str, key_service: &str) -> String {
    let shipped =
        fs::read_to_string(repo_root().join("envoy/envoy.yaml")).expect("read envoy/envoy.yaml");
    let port = |addr: &str| addr.rsplit(':').next().unwrap_or_default().to_string();
    let replacements = [
        (
            "port_value: 10000 }".to_string(),
            "port_value: 0 }".to_string(),
        ),
        (
            "port_value: 9901 }".to_string(),
            "port_value: 0 }".to_string(),
        ),
        (
            "port_value: 8082 }".to_string(),
            format!("port_value: {} }}", port(upstream)),
        ),
        (
            "port_value: 8081 }".to_string(),
            format!("port_value: {} }}", port(key_service)),
        ),
        (
            "filename: target/wasm32-wasip1/release/keygate.wasm".to_string(),
            format!("filename: {}", wasm.display()),
        ),
    ];
    let mut config = shipped;
    for (from, to) in replacements {
        assert_eq!(
            config.matches(&from).count(),
            1,
            "envoy/envoy.yaml should contain {from:?} exactly once"
        );
        config = config.replace(&from, &to);
    }
    config
}

/// The provider credentials a multi-provider stack's Envoy injects, by SDS secret name.
pub const PROVIDER_CREDENTIALS: [(&str, &str); 3] = [
    ("openai", "Bearer upstream-openai-credential"),
    ("anthropic", "upstream-anthropic-credential"),
    ("gemini", "upstream-gemini-credential"),
];

/// `envoy/multi-provider.yaml` made runnable here: free ports, the built filter, every
/// provider at the mock upstream over plain HTTP (the TLS blocks removed), and SDS files
/// with [`PROVIDER_CREDENTIALS`] in `dir/secrets/`. Each edit must match exactly, so a
/// change to the shipped file that the test no longer exercises fails loudly.
pub fn multi_provider_config(wasm: &Path, upstream: &str, key_service: &str, dir: &Path) -> String {
    let shipped = fs::read_to_string(repo_root().join("envoy/multi-provider.yaml"))
        .expect("read envoy/multi-provider.yaml");
    let secrets = dir.join("secrets");
    fs::create_dir_all(&secrets).expect("secrets directory");
    for (name, credential) in PROVIDER_CREDENTIALS {
        let sds = format!(
            "resources:\n  - \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n    \
             name: {name}\n    generic_secret: {{ secret: {{ inline_string: \"{credential}\" }} }}\n"
        );
        fs::write(secrets.join(format!("{name}.yaml")), sds).expect("write an SDS file");
    }
    let (mock_host, mock_port) = upstream.rsplit_once(':').expect("mock address");
    let port = |addr: &str| addr.rsplit(':').next().unwrap_or_default().to_string();
    let mut config = shipped;
    for (from, to) in [
        ("port_value: 10000 }", "port_value: 0 }".to_string()),
        ("port_value: 9901 }", "port_value: 0 }".to_string()),
        (
            "port_value: 8081 }",
            format!("port_value: {} }}", port(key_service)),
        ),
        (
            "filename: target/wasm32-wasip1/release/keygate.wasm",
            format!("filename: {}", wasm.display()),
        ),
    ] {
        config = replace_once(&config, from, &to);
    }
    for provider in [
        "api.openai.com",
        "api.anthropic.com",
        "generativelanguage.googleapis.com",
    ] {
        config = replace_once(
            &config,
            &format!("address: {provider}, port_value: 443"),
            &format!("address: {mock_host}, port_value: {mock_port}"),
        );
    }
    config = config.replace("/etc/keygate/secrets/", &format!("{}/", secrets.display()));
    // HTTP/2 is chosen by ALPN, which needs TLS; the mock speaks HTTP/1.1.
    let alpn = "auto_config: { http2_protocol_options: {} }";
    assert_eq!(
        config.matches(alpn).count(),
        3,
        "{alpn:?} in each provider cluster"
    );
    config = config.replace(alpn, "explicit_http_config: { http_protocol_options: {} }");
    // Each cluster's `transport_socket:` block, up to the next line indented no deeper.
    let mut out = String::new();
    let mut skipping = None;
    let mut removed = 0;
    for line in config.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(depth) = skipping {
            if line.trim().is_empty() || indent > depth {
                continue;
            }
            skipping = None;
        }
        if line.trim_start() == "transport_socket:" {
            skipping = Some(indent);
            removed += 1;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert_eq!(
        removed, 3,
        "envoy/multi-provider.yaml should have three TLS clusters"
    );
    out
}

/// Adds one field, which the shipped configuration does not set, to the filter's JSON
/// configuration in an Envoy config derived from `envoy/envoy.yaml`.
fn with_filter_setting(config: &str, field: &str, value: &str) -> String {
    let anchor = "\"key_service_cluster\":";
    assert_eq!(
        config.matches(anchor).count(),
        1,
        "filter configuration not found"
    );
    config.replace(anchor, &format!("\"{field}\": {value}, {anchor}"))
}

fn replace_once(config: &str, from: &str, to: &str) -> String {
    assert_eq!(config.matches(from).count(), 1, "{from:?} not found once");
    config.replace(from, to)
}

/// A configuration with keygate as an Envoy dynamic module (`module`) where it has the
/// Wasm filter, with the same filter configuration: what `envoy/native.yaml` is to
/// `envoy/envoy.yaml`.
pub fn to_native(config: &str, module: &Path) -> String {
    let wasm_type = "\"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
    let lines: Vec<&str> = config.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == wasm_type)
        .expect("the Wasm filter's typed_config");
    let indent = lines[at].len() - lines[at].trim_start().len();
    let deeper = |l: &&&str| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent;
    let end = at + 1 + lines[at + 1..].iter().take_while(deeper).count();
    // The filter's JSON: the lines under `value: |`.
    let value = lines[at..end]
        .iter()
        .position(|l| l.trim() == "value: |")
        .expect("the filter's configuration")
        + at;
    let value_indent = lines[value].len() - lines[value].trim_start().len();
    let json: Vec<&str> = lines[value + 1..end]
        .iter()
        .take_while(|l| l.len() - l.trim_start().len() > value_indent)
        .copied()
        .collect();
    let pad = " ".repeat(indent);
    let mut out: Vec<String> = lines[..at].iter().map(|l| l.to_string()).collect();
    for line in [
        "\"@type\": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
        "dynamic_module_config:",
    ] {
        out.push(format!("{pad}{line}"));
    }
    out.push(format!(
        "{pad}  module: {{ local: {{ filename: {} }} }}",
        module.display()
    ));
    for line in [
        "  do_not_close: true",
        "filter_name: keygate",
        "filter_config:",
        "  \"@type\": type.googleapis.com/google.protobuf.StringValue",
        "  value: |",
    ] {
        out.push(format!("{pad}{line}"));
    }
    let json_pad = " ".repeat(indent + 4);
    let json_indent = json
        .iter()
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    for line in json {
        out.push(format!("{json_pad}{}", &line[json_indent..]));
    }
    out.extend(lines[end..].iter().map(|l| l.to_string()));
    // Prometheus names as the Wasm build's (see `NATIVE_RUNTIME`).
    out.extend(NATIVE_RUNTIME.lines().map(str::to_string));
    let mut text = out.join("\n");
    if config.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// What a native configuration adds at its end: Envoy 1.40 keeps a dynamic module's stat
/// namespace in `/stats/prometheus` (`envoy_dynamicmodulescustom_keygate_...`) unless
/// this runtime flag says to strip it, as Envoy always does Wasm's; with it, both builds'
/// stats have the same Prometheus names (`keygate_...`).
const NATIVE_RUNTIME: &str = "
layered_runtime:
  layers:
    - name: static
      static_layer:
        envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix: true";

/// The configuration with `instead` in place of the keygate filter (everything from its entry in
/// `http_filters` up to the router's).
fn without_filter(config: &str, instead: &str) -> String {
    let start = config
        .find("                  - name: keygate\n")
        .expect("keygate filter entry");
    let end = config
        .find("                  - name: envoy.filters.http.router")
        .expect("router entry");
    format!("{}{instead}{}", &config[..start], &config[end..])
}

/// Starts Envoy on `dir/envoy.yaml`; returns it, its admin URL and its listener's address.
fn start_envoy(
    name: &'static str,
    dir: &Path,
    concurrency: u32,
    token: &str,
    env: &[(String, String)],
) -> (Proc, String, String) {
    let admin_path = dir.join(format!("{name}-admin-address"));
    // A restart must not read the address of the Envoy before it.
    let _ = fs::remove_file(&admin_path);
    let mut cmd = Command::new(envoy_bin());
    cmd.arg("-c")
        .arg(dir.join("envoy.yaml"))
        .arg("--admin-address-path")
        .arg(&admin_path)
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--disable-hot-restart", "--log-level", "info"])
        .env("KEYGATE_FILTER_TOKEN", token)
        .envs(env.iter().cloned());
    let mut proc = Proc::spawn(name, cmd, dir);
    let admin = wait_for_file(&admin_path, &mut proc);
    let admin_url = format!("http://{admin}");
    let listener = wait_for_listener(&admin_url, &mut proc);
    (proc, admin_url, listener)
}

fn wait_for_file(path: &Path, proc: &mut Proc) -> String {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(text) = fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return text.trim().to_string();
            }
        }
        proc.assert_alive();
        assert!(
            Instant::now() < deadline,
            "envoy wrote no admin address:\n{}",
            proc.log_text()
        );
        sleep(Duration::from_millis(20));
    }
}

/// Waits until Envoy reports itself live and returns its listener's bound address.
fn wait_for_listener(admin_url: &str, proc: &mut Proc) -> String {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(addr) = http_get(&format!("{admin_url}/ready"))
            .filter(|body| body.trim() == "LIVE")
            .and_then(|_| http_get(&format!("{admin_url}/listeners?format=json")))
            .and_then(|json| listener_address(&json))
        {
            return addr;
        }
        proc.assert_alive();
        assert!(
            Instant::now() < deadline,
            "envoy did not become ready:\n{}",
            proc.log_text()
        );
        sleep(Duration::from_millis(50));
    }
}

fn listener_address(json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let socket = &v["listener_statuses"][0]["local_address"]["socket_address"];
    Some(format!(
        "{}:{}",
        socket["address"].as_str()?,
        socket["port_value"].as_u64()?
    ))
}

/// A GET for readiness probes: the body of a 200, or `None`.
fn http_get(url: &str) -> Option<String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    let res = client.get(url).send().ok()?;
    res.status().is_success().then(|| res.text().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped `envoy/native.yaml` is `envoy/envoy.yaml` with the filter as a dynamic
    /// module (comments aside): what the native suite runs is what users run.
    #[test]
    fn native_yaml_is_envoy_yaml_with_the_native_filter() {
        let read = |name: &str| fs::read_to_string(repo_root().join("envoy").join(name)).unwrap();
        let without_comments = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .map(str::to_string)
                .collect()
        };
        let converted = to_native(
            &read("envoy.yaml"),
            Path::new("target/native/libkeygate_native.so"),
        );
        assert_eq!(
            without_comments(&converted),
            without_comments(&read("native.yaml"))
        );
    }
}
