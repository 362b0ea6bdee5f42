//! A loopback HTTP stub that records every request, shared by the desktop's test modules.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use pexper_desktop::store::Dirs;
use pexper_wire::license::{PublicKey, SigningKey};
use serde_json::{Value, json};

/// The key the stub publishes as the server's licence key.
pub fn licence_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

pub const PLANTED_KEY: &str = "sk-planted-DO-NOT-LEAK-0123456789abcdef";

/// A request the stub received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A loopback HTTP server that records requests and answers by path.
pub struct Stub {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// What the stub serves at `/v1/analytics/schema`: the server's own document, from the same
/// code, so the client is tested against the allow-list it will really meet.
pub fn schema() -> Value {
    pexper_wire::analytics::document(90)
}

impl Stub {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) = (
                        parts.next().unwrap_or("").to_owned(),
                        parts.next().unwrap_or("").to_owned(),
                    );
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                        }
                    }
                    let length = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let reply = if path.starts_with("/v1/analytics/schema") {
                        schema().to_string()
                    } else if path == "/v1/licenses/public-key" {
                        serde_json::to_string(&PublicKey::new(&licence_key().verifying_key()))
                            .unwrap()
                    } else if path.ends_with("/chat/completions") {
                        json!({"choices": [{"message": {"content": "hello from a local model"}}]})
                            .to_string()
                    } else {
                        "{}".to_owned()
                    };
                    let status = if path == "/v1/analytics/events" {
                        "202 Accepted"
                    } else {
                        "200 OK"
                    };
                    log.lock().unwrap().push(Seen {
                        method,
                        path,
                        headers,
                        body,
                    });
                    let mut stream = stream;
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                        reply.len()
                    );
                });
            }
        });
        Self { url, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A test's own data folder under the temporary directory, removed with all it holds when
/// the test ends (passed or failed).
pub struct TempRoot(PathBuf);

impl std::ops::Deref for TempRoot {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempRoot {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn dirs() -> (Dirs, TempRoot) {
    let root = TempRoot(
        std::env::temp_dir().join(format!("pexper-desktop-{}", uuid::Uuid::new_v4().simple())),
    );
    (Dirs::new(Some(&root)).unwrap(), root)
}

/// Every regular file under `root`, recursively (sockets and the like are left out).
pub fn all_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(all_files(&path));
        } else if path.is_file() {
            out.push(path);
        }
    }
    out
}

/// Fails if `needle` appears in any file under `root`.
pub fn assert_nowhere_under(root: &Path, needle: &str) {
    for file in all_files(root) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "found in {}",
            file.display()
        );
    }
}
