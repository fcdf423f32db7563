//! A real browser for the console's tests: Debian's Chromium, headless, driven through
//! ChromeDriver (WebDriver) by fantoccini. Like the rest of the harness it never skips:
//! a missing Chromium or ChromeDriver fails the test with the command that installs it.
//!
//! The tests are synchronous (the API helpers use blocking reqwest); the browser runs on
//! its own Tokio runtime and each step is `browser.run(async { ... })`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::stack::{random_token, Proc};

/// How long a step waits for the page to show what it expects.
const PATIENCE: Duration = Duration::from_secs(10);

fn installed(path: &str) -> PathBuf {
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{} is missing: run `make setup` (it installs Debian's chromium and chromium-driver); \
         browser tests never skip",
        path.display()
    );
    path
}

pub struct Browser {
    runtime: tokio::runtime::Runtime,
    pub client: Client,
    _driver: Proc,
    profile: PathBuf,
}

impl Browser {
    /// Starts ChromeDriver on a free loopback port and a headless Chromium session with a
    /// fresh profile and a desktop-sized window.
    pub fn start() -> Browser {
        let chromium = installed("/usr/bin/chromium");
        let chromedriver = installed("/usr/bin/chromedriver");
        let profile = std::env::temp_dir().join(format!("keygate-browser-{}", random_token()));
        std::fs::create_dir_all(&profile).expect("browser profile directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut command = Command::new(chromedriver);
        command.arg(format!("--port={port}"));
        let mut driver = Proc::spawn("chromedriver", command, &profile);
        driver.wait_for_line("ChromeDriver was started successfully");

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.join("chromium").display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = runtime
            .block_on(
                ClientBuilder::new(connector)
                    .capabilities(capabilities)
                    .connect(&format!("http://127.0.0.1:{port}")),
            )
            .expect("a Chromium session from ChromeDriver");
        Browser {
            runtime,
            client,
            _driver: driver,
            profile,
        }
    }

    /// Runs one async step against the browser.
    pub fn run<T>(&self, step: impl Future<Output = T>) -> T {
        self.runtime.block_on(step)
    }

    /// Lets pages of the current origin read and write the clipboard without asking, as a user
    /// who clicked "allow" would (the WebDriver permissions extension).
    pub fn allow_clipboard(&self) {
        for name in ["clipboard-read", "clipboard-write"] {
            let answer = self.run(self.client.issue_cmd(SetPermission(name)));
            answer.unwrap_or_else(|e| panic!("grant {name}: {e}"));
        }
    }

    /// Saves a PNG of the window to `target/console/NAME.png` and returns its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.run(self.client.screenshot()).expect("screenshot");
        let dir = crate::stack::repo_root().join("target/console");
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    pub fn profile(&self) -> &Path {
        &self.profile
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let client = self.client.clone();
        let _ = self.runtime.block_on(client.close());
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// `POST /session/{id}/permissions` (W3C Permissions, supported by ChromeDriver).
#[derive(Debug)]
struct SetPermission(&'static str);

impl WebDriverCompatibleCommand for SetPermission {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/permissions",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _url: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({"descriptor": {"name": self.0}, "state": "granted"});
        (http::Method::POST, Some(body.to_string()))
    }
}

/// Polls until `css` matches an element whose text contains `text`; returns that element.
pub async fn until_text(client: &Client, css: &str, text: &str) -> Element {
    let deadline = Instant::now() + PATIENCE;
    let mut last = String::new();
    loop {
        if let Ok(elements) = client.find_all(Locator::Css(css)).await {
            for element in elements {
                if let Ok(seen) = element.text().await {
                    if seen.contains(text) {
                        return element;
                    }
                    last = seen;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no {css} showed {text:?} within {PATIENCE:?}; the last one showed {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until `css` matches a displayed element and returns it.
pub async fn until_shown(client: &Client, css: &str) -> Element {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await {
            if element.is_displayed().await.unwrap_or(false) {
                return element;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{css} was not shown within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until no element matches `css` or none is displayed.
pub async fn until_gone(client: &Client, css: &str) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut shown = false;
        for element in client.find_all(Locator::Css(css)).await.unwrap_or_default() {
            shown |= element.is_displayed().await.unwrap_or(false);
        }
        if !shown {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{css} was still shown after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks the element that `css` matches once it is shown.
pub async fn click(client: &Client, css: &str) {
    until_shown(client, css)
        .await
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Replaces the text of the input that `css` matches.
pub async fn fill(client: &Client, css: &str, text: &str) {
    let input = until_shown(client, css).await;
    input
        .clear()
        .await
        .unwrap_or_else(|e| panic!("clear {css}: {e}"));
    input
        .send_keys(text)
        .await
        .unwrap_or_else(|e| panic!("type into {css}: {e}"));
}

/// Runs a script in the page and returns what it returns.
pub async fn script(client: &Client, js: &str) -> Value {
    client
        .execute(js, vec![])
        .await
        .unwrap_or_else(|e| panic!("script {js}: {e}"))
}
