//! A real SMTP server on loopback (RFC 5321's plain subset: EHLO, MAIL, RCPT, DATA, RSET,
//! NOOP, QUIT) that keeps what it receives. Recipients can be made to fail, permanently (550)
//! or transiently (451), to test how the queue classifies delivery errors.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
    /// When the relay took it (the end of DATA).
    pub received_at: std::time::SystemTime,
}

impl ReceivedMail {
    /// The value of a header (first occurrence, unfolded).
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = value.as_mut() {
                if line.starts_with([' ', '\t']) {
                    // Unfolding removes the line break, not the white space (RFC 5322 2.2.3).
                    v.push_str(line);
                    continue;
                }
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case(name)
            {
                value = Some(v.trim().to_owned());
            }
        }
        value
    }
}

impl ReceivedMail {
    /// The first link in the text body that starts with `prefix`.
    pub fn link(&self, prefix: &str) -> String {
        let text = self.part("text/plain").expect("a text part");
        let start = text
            .find(prefix)
            .unwrap_or_else(|| panic!("{prefix} in {text}"));
        text[start..].split_whitespace().next().unwrap().to_owned()
    }

    /// The decoded body of the part with this content type (`text/plain`, `text/html`).
    pub fn part(&self, content_type: &str) -> Option<String> {
        use base64::Engine;
        let start = self.data.find(&format!("Content-Type: {content_type}"))?;
        let part = &self.data[start..];
        let (head, rest) = part.split_once("\r\n\r\n")?;
        let boundary = self.data.split("boundary=\"").nth(1)?.split('"').next()?;
        let body = rest.split(&format!("\r\n--{boundary}")).next()?;
        let encoding = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Transfer-Encoding: "))
            .unwrap_or("7bit")
            .trim();
        Some(match encoding {
            "base64" => String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(body.replace("\r\n", ""))
                    .ok()?,
            )
            .ok()?,
            "quoted-printable" => decode_quoted_printable(body),
            _ => body.to_owned(),
        })
    }
}

fn decode_quoted_printable(s: &str) -> String {
    let s = s.replace("=\r\n", "");
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Default)]
struct State {
    mail: Mutex<Vec<ReceivedMail>>,
    /// Recipients containing this text get `550` (permanent).
    reject_permanently: Mutex<Option<String>>,
    /// Recipients containing this text get `451` (transient).
    reject_transiently: Mutex<Option<String>>,
    /// While set, a new connection gets no greeting: the sender waits, nothing is sent.
    stalled: std::sync::atomic::AtomicBool,
    arrived: Notify,
}

#[derive(Clone)]
pub struct SmtpServer {
    port: u16,
    state: Arc<State>,
}

impl SmtpServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let accept_state = state.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(session(socket, accept_state.clone()));
            }
        });
        Self { port, state }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn reject_permanently(&self, pattern: &str) {
        *self.state.reject_permanently.lock().unwrap() = Some(pattern.to_owned());
    }

    pub fn reject_transiently(&self, pattern: Option<&str>) {
        *self.state.reject_transiently.lock().unwrap() = pattern.map(str::to_owned);
    }

    /// A relay that accepts connections and then says nothing (overloaded, or half down).
    pub fn stall(&self, stalled: bool) {
        self.state
            .stalled
            .store(stalled, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<ReceivedMail> {
        self.state.mail.lock().unwrap().clone()
    }

    /// How many messages have arrived (without copying them).
    pub fn count(&self) -> usize {
        self.state.mail.lock().unwrap().len()
    }

    /// When the first message to each recipient arrived, by bare address (no `<>`).
    pub fn arrivals(&self) -> std::collections::HashMap<String, std::time::SystemTime> {
        let mut first = std::collections::HashMap::new();
        for mail in self.state.mail.lock().unwrap().iter() {
            for to in &mail.to {
                first
                    .entry(to.trim_matches(['<', '>']).to_owned())
                    .or_insert(mail.received_at);
            }
        }
        first
    }

    /// Waits until at least `n` messages have arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.state.arrived.notified();
            let mail = self.received();
            if mail.len() >= n {
                return mail;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("expected {n} emails, got {}", self.received().len());
            }
        }
    }
}

async fn session(socket: tokio::net::TcpStream, state: Arc<State>) {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read);
    let reply = async |w: &mut tokio::net::tcp::OwnedWriteHalf, s: &str| {
        w.write_all(format!("{s}\r\n").as_bytes()).await.is_ok()
    };
    while state.stalled.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !reply(&mut write, "220 test-smtp ready").await {
        return;
    }
    let mut from = String::new();
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let command = line.trim_end().to_owned();
        let upper = command.to_ascii_uppercase();
        let ok = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            reply(&mut write, "250-test-smtp\r\n250-8BITMIME\r\n250 SMTPUTF8").await
        } else if upper.starts_with("MAIL FROM:") {
            from = command[10..].trim().to_owned();
            to.clear();
            reply(&mut write, "250 OK").await
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = command[8..].trim().to_owned();
            let permanent = state.reject_permanently.lock().unwrap().clone();
            let transient = state.reject_transiently.lock().unwrap().clone();
            if permanent.is_some_and(|p| rcpt.contains(&p)) {
                reply(&mut write, "550 5.1.1 mailbox unavailable").await
            } else if transient.is_some_and(|p| rcpt.contains(&p)) {
                reply(&mut write, "451 4.3.0 try again later").await
            } else {
                to.push(rcpt);
                reply(&mut write, "250 OK").await
            }
        } else if upper == "DATA" {
            if !reply(&mut write, "354 end with <CRLF>.<CRLF>").await {
                return;
            }
            let mut data = String::new();
            loop {
                line.clear();
                if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == ".\r\n" {
                    break;
                }
                // Undo dot-stuffing.
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
            }
            state.mail.lock().unwrap().push(ReceivedMail {
                from: from.clone(),
                to: std::mem::take(&mut to),
                data,
                received_at: std::time::SystemTime::now(),
            });
            state.arrived.notify_waiters();
            reply(&mut write, "250 OK queued").await
        } else if upper == "RSET" || upper == "NOOP" {
            reply(&mut write, "250 OK").await
        } else if upper == "QUIT" {
            let _ = reply(&mut write, "221 bye").await;
            return;
        } else {
            reply(&mut write, "502 command not implemented").await
        };
        if !ok {
            return;
        }
    }
}
