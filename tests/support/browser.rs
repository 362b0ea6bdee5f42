//! A real headless Chromium, driven over WebDriver (chromedriver) with plain HTTP: enough to
//! open a page, click a button, read text and take a screenshot.
//!
//! Without Chromium the browser tests skip with a note, unless `PEXPER_REQUIRE_BROWSER=1`
//! (CI sets it, and installs `chromium` and `chromium-driver`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// WebDriver's codes for keys that type no character (`Browser::press`).
pub mod keys {
    pub const TAB: &str = "\u{E004}";
    pub const ENTER: &str = "\u{E007}";
}

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: reqwest::Client,
    _profile: crate::tempdir::TempDir,
}

fn find(names: &[&str]) -> Option<PathBuf> {
    names.iter().map(PathBuf::from).find(|p| p.exists())
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session, or `None` (with a note) when they
    /// are not installed and not required.
    pub async fn start() -> Option<Self> {
        let chromium = find(&[
            "/usr/bin/chromium",
            "/usr/bin/chromium-browser",
            "/usr/bin/google-chrome",
        ]);
        let driver = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            assert!(
                std::env::var("PEXPER_REQUIRE_BROWSER").is_err(),
                "PEXPER_REQUIRE_BROWSER is set but chromium/chromedriver are not installed"
            );
            eprintln!("skipped: install chromium and chromium-driver to run the browser tests");
            return None;
        };
        // Port 0: chromedriver binds a free port itself and says which, so no other test can
        // take the port between our choosing it and its binding it.
        let mut child = Command::new(driver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let stdout = child.stdout.take().expect("piped");
        let port = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::task::spawn_blocking(move || {
                use std::io::BufRead;
                let mut lines = std::io::BufReader::new(stdout).lines();
                let port = lines.by_ref().map_while(Result::ok).find_map(|line| {
                    line.split("started successfully on port ")
                        .nth(1)
                        .and_then(|rest| rest.trim_end_matches('.').trim().parse::<u16>().ok())
                });
                // Keep reading what it prints later, so a full pipe never blocks it.
                std::thread::spawn(move || lines.for_each(drop));
                port
            }),
        )
        .await;
        // A chromedriver that never says (or ends first) fails the test, and is killed: its
        // pipe closes, and the reading thread ends with it.
        let Ok(Ok(Some(port))) = port else {
            child.kill().ok();
            panic!("chromedriver did not say which port it listens on within 30 s");
        };
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        crate::eventually(Duration::from_secs(20), "chromedriver", || {
            let (client, url) = (client.clone(), format!("{base}/status"));
            async move {
                let v: Value = client.get(&url).send().await.ok()?.json().await.ok()?;
                v["value"]["ready"].as_bool().filter(|r| *r).map(drop)
            }
        })
        .await;
        let profile = crate::tempdir::TempDir::new();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=900,700",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let res: Value = client
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = res["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {res}"))
            .to_owned();
        let browser = Self {
            driver: child,
            base,
            session,
            client,
            _profile: profile,
        };
        // A click that submits a form returns before the next page loads: element lookups wait
        // for up to 10 s instead of failing at once.
        browser
            .call(
                reqwest::Method::POST,
                "/timeouts",
                Some(json!({"implicit": 10_000})),
            )
            .await;
        Some(browser)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body)
            .await
            .unwrap_or_else(|v| panic!("WebDriver {path}: {v}"))
    }

    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Value> {
        let url = format!("{}/session/{}{}", self.base, self.session, path);
        let mut req = self.client.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        if v["value"]["error"].is_null() {
            Ok(v["value"].clone())
        } else {
            Err(v)
        }
    }

    /// Waits (up to 10 s) until the element `css` says `want`: after a click that submits a
    /// form, the old page can still be there, or go away while it is read.
    pub async fn wait_for_text(&self, css: &str, want: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut seen = String::new();
        while std::time::Instant::now() < deadline {
            let found = self
                .try_call(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Ok(element) = found
                && let Some(id) = element[ELEMENT].as_str()
                && let Ok(text) = self
                    .try_call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
                    .await
            {
                seen = text.as_str().unwrap_or_default().to_owned();
                if seen.contains(want) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{css} never said {want:?}; last: {seen:?}");
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_owned()
    }

    pub async fn text(&self, css: &str) -> String {
        let id = self.element(css).await;
        self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Types `text` into the input `css`.
    pub async fn fill(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Runs `js` (a function body; `return` gives the value back) in the page.
    pub async fn script(&self, js: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": js, "args": [] })),
        )
        .await
    }

    /// Runs `js` with `args` (as `arguments`) in the page.
    pub async fn script_with(&self, js: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": js, "args": args })),
        )
        .await
    }

    /// Runs `js`, which ends by calling `arguments[arguments.length - 1]` with its value (for
    /// a promise: `….then(done)`), with a script timeout of a minute.
    pub async fn script_async(&self, js: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/timeouts",
            Some(json!({"script": 60_000})),
        )
        .await;
        self.call(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({ "script": js, "args": args })),
        )
        .await
    }

    /// A Chrome DevTools Protocol command (chromedriver passes it on), e.g. emulating a
    /// colour scheme.
    pub async fn cdp(&self, command: &str, params: Value) -> Value {
        let url = format!("{}/session/{}/goog/cdp/execute", self.base, self.session);
        let v: Value = self
            .client
            .post(url)
            .json(&json!({ "cmd": command, "params": params }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(v["value"]["error"].is_null(), "CDP {command}: {v}");
        v["value"].clone()
    }

    /// Presses keys as a keyboard would, one after another, on whatever has the focus:
    /// characters, or WebDriver's key codes (`keys::TAB`, `keys::ENTER`).
    pub async fn press(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|c| {
                [
                    json!({"type": "keyDown", "value": c.to_string()}),
                    json!({"type": "keyUp", "value": c.to_string()}),
                ]
            })
            .collect();
        self.call(
            reqwest::Method::POST,
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        )
        .await;
    }

    /// The address of the page shown.
    pub async fn current_url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Saves a PNG screenshot of the page and returns its size in bytes.
    pub async fn screenshot(&self, path: &Path) -> usize {
        use base64::Engine;
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &png).unwrap();
        png.len()
    }
}

impl Browser {
    /// Chromium's profile directory: every Chromium process of this browser names it.
    pub fn profile(&self) -> PathBuf {
        self._profile.path().to_owned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session makes chromedriver quit Chromium and wait for it. Killing
        // chromedriver alone would leave Chromium running, orphaned, after the tests.
        let _ = end_session(&self.base, &self.session);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `DELETE /session/{id}`, blocking: `drop` cannot await. Returns once the whole answer is
/// in: chromedriver says `Connection: close` but keeps the connection open, so reading to its
/// end would wait out the read timeout (20 s per browser test, once).
fn end_session(base: &str, session: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        answer.extend_from_slice(&chunk[..n]);
        if answer_is_whole(&answer) {
            return Ok(());
        }
    }
}

/// Whether `answer` holds an HTTP response's head and all of the body its `Content-Length`
/// announces.
fn answer_is_whole(answer: &[u8]) -> bool {
    let Some(head_end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok());
    length.is_some_and(|n| answer.len() >= head_end + 4 + n)
}

/// The processes whose command line mentions `path` (Linux: from `/proc`).
pub fn processes_naming(path: &Path) -> Vec<u32> {
    let needle = path.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}
