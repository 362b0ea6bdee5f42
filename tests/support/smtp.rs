//! A real SMTP server on loopback (RFC 5321's plain subset: EHLO, MAIL, RCPT, DATA, RSET,
//! NOOP, QUIT; RFC 2920's PIPELINING; and TLS, implicit or by STARTTLS, with a certificate
//! from a CA of its own) that keeps what it receives. Recipients can be made to fail,
//! permanently (550) or transiently (451), to test how the queue classifies delivery errors.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
    /// When the relay took it (the end of DATA).
    pub received_at: std::time::SystemTime,
    /// Whether it came over TLS.
    pub tls: bool,
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
    /// While set, the relay says `421` and hangs up after each message it accepts, as relays
    /// with a limit of messages per connection do.
    hang_up_after_each_message: std::sync::atomic::AtomicBool,
    /// Microseconds each reply waits before it is written: the round trip to a relay
    /// elsewhere on the network, for benchmarks.
    reply_delay_us: std::sync::atomic::AtomicU64,
    /// While set, DATA is answered 354 even when every recipient was refused, as some relays
    /// do (RFC 2920 §3.1 warns pipelining clients of them).
    accept_data_without_recipients: std::sync::atomic::AtomicBool,
    /// While set, EHLO does not offer PIPELINING: the client waits for each reply.
    no_pipelining: std::sync::atomic::AtomicBool,
    /// Transactions whose commands after MAIL came without waiting for its reply (RFC 2920).
    pipelined: std::sync::atomic::AtomicUsize,
    arrived: Notify,
}

#[derive(Clone)]
pub struct SmtpServer {
    port: u16,
    state: Arc<State>,
    tls: Option<Arc<TlsRelay>>,
}

/// How a relay secures its sessions.
#[derive(Clone)]
enum Security {
    Plain,
    /// Offers STARTTLS after the greeting.
    StartTls(TlsAcceptor),
    /// TLS from the first byte (port 465's way).
    Implicit(TlsAcceptor),
}

struct TlsRelay {
    implicit: bool,
    /// Holds `ca.crt`, the CA that signed the relay's certificate (for `localhost`).
    dir: crate::tempdir::TempDir,
}

impl SmtpServer {
    pub async fn start() -> Self {
        Self::serve(Security::Plain, None).await
    }

    /// A relay that speaks TLS, from the first byte (`implicit`) or after STARTTLS, with a
    /// certificate for `localhost` signed by a CA of its own (`ca_file`).
    pub async fn start_tls(implicit: bool) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let dir = crate::tempdir::TempDir::new();
        std::fs::write(dir.path().join("ca.crt"), ca_cert.pem()).unwrap();
        let security = if implicit {
            Security::Implicit(acceptor)
        } else {
            Security::StartTls(acceptor)
        };
        Self::serve(security, Some(Arc::new(TlsRelay { implicit, dir }))).await
    }

    async fn serve(security: Security, tls: Option<Arc<TlsRelay>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::default());
        let accept_state = state.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let _ = socket.set_nodelay(true);
                tokio::spawn(session(socket, accept_state.clone(), security.clone()));
            }
        });
        Self { port, state, tls }
    }

    /// `PEXPER_SMTP_URL` for this relay: TLS ones by the name their certificate is for.
    pub fn url(&self) -> String {
        match self.tls.as_deref() {
            None => format!("smtp://127.0.0.1:{}", self.port),
            Some(TlsRelay { implicit: true, .. }) => format!("smtps://localhost:{}", self.port),
            Some(_) => format!("smtp://localhost:{}?tls=required", self.port),
        }
    }

    /// The CA certificate (PEM) of a TLS relay: `PEXPER_SMTP_CA_FILE`.
    pub fn ca_file(&self) -> Option<std::path::PathBuf> {
        self.tls.as_ref().map(|t| t.dir.path().join("ca.crt"))
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

    pub fn hang_up_after_each_message(&self, on: bool) {
        self.state
            .hang_up_after_each_message
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn accept_data_without_recipients(&self, on: bool) {
        self.state
            .accept_data_without_recipients
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether EHLO offers PIPELINING (it does unless told otherwise).
    pub fn offer_pipelining(&self, on: bool) {
        self.state
            .no_pipelining
            .store(!on, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many transactions the client pipelined: RCPT and DATA sent with MAIL.
    pub fn pipelined(&self) -> usize {
        self.state
            .pipelined
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Delays every reply by `delay`, as a relay one round trip of `delay` away would.
    pub fn delay_replies(&self, delay: Duration) {
        self.state.reply_delay_us.store(
            delay.as_micros() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
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

async fn session(socket: TcpStream, state: Arc<State>, security: Security) {
    while state.stalled.load(std::sync::atomic::Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match security {
        Security::Plain => {
            converse(socket, &state, Stage::Plain).await;
        }
        Security::Implicit(acceptor) => {
            if let Ok(tls) = acceptor.accept(socket).await {
                converse(tls, &state, Stage::Encrypted { greet: true }).await;
            }
        }
        Security::StartTls(acceptor) => {
            if let Some(socket) = converse(socket, &state, Stage::OffersStartTls).await
                && let Ok(tls) = acceptor.accept(socket).await
            {
                converse(tls, &state, Stage::Encrypted { greet: false }).await;
            }
        }
    }
}

/// Where a conversation stands with TLS.
#[derive(Clone, Copy, PartialEq)]
enum Stage {
    Plain,
    /// Plain, offering STARTTLS.
    OffersStartTls,
    /// Over TLS: from the start (so it greets), or after STARTTLS (the greeting was sent).
    Encrypted {
        greet: bool,
    },
}

/// One SMTP conversation over `stream`; returns the stream when the client asked to start
/// TLS (and was told to go ahead), `None` when the conversation ended.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    state: &State,
    stage: Stage,
) -> Option<S> {
    let mut stream = BufReader::new(stream);
    // The replies to commands a client pipelined (RFC 2920) go out together once the last of
    // them is read, as Postfix sends them: in one segment, where one each would leave the
    // later ones waiting for the client's delayed ACK.
    let mut unsent = String::new();
    let mut reply = async |w: &mut BufReader<S>, s: &str| {
        unsent.push_str(s);
        unsent.push_str("\r\n");
        if !w.buffer().is_empty() {
            return true;
        }
        let out = std::mem::take(&mut unsent);
        let delay = state
            .reply_delay_us
            .load(std::sync::atomic::Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        w.get_mut().write_all(out.as_bytes()).await.is_ok() && w.get_mut().flush().await.is_ok()
    };
    let tls = matches!(stage, Stage::Encrypted { .. });
    if stage != (Stage::Encrypted { greet: false })
        && !reply(&mut stream, "220 test-smtp ready").await
    {
        return None;
    }
    let mut from = String::new();
    let mut to = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
            return None;
        }
        let command = line.trim_end().to_owned();
        let upper = command.to_ascii_uppercase();
        let ok = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            let starttls = if stage == Stage::OffersStartTls {
                "250-STARTTLS\r\n"
            } else {
                ""
            };
            let pipelining = if state
                .no_pipelining
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                ""
            } else {
                "250-PIPELINING\r\n"
            };
            let extensions =
                format!("250-test-smtp\r\n{starttls}{pipelining}250-8BITMIME\r\n250 SMTPUTF8");
            reply(&mut stream, &extensions).await
        } else if upper == "STARTTLS" && stage == Stage::OffersStartTls {
            if !reply(&mut stream, "220 2.0.0 ready to start TLS").await {
                return None;
            }
            // Nothing is buffered: the client waits for that answer before its handshake.
            return Some(stream.into_inner());
        } else if upper.starts_with("MAIL FROM:") {
            if !stream.buffer().is_empty() {
                state
                    .pipelined
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            from = command[10..].trim().to_owned();
            to.clear();
            reply(&mut stream, "250 OK").await
        } else if upper.starts_with("RCPT TO:") {
            let rcpt = command[8..].trim().to_owned();
            let permanent = state.reject_permanently.lock().unwrap().clone();
            let transient = state.reject_transiently.lock().unwrap().clone();
            if permanent.is_some_and(|p| rcpt.contains(&p)) {
                reply(&mut stream, "550 5.1.1 mailbox unavailable").await
            } else if transient.is_some_and(|p| rcpt.contains(&p)) {
                reply(&mut stream, "451 4.3.0 try again later").await
            } else {
                to.push(rcpt);
                reply(&mut stream, "250 OK").await
            }
        } else if upper == "DATA"
            && to.is_empty()
            && !state
                .accept_data_without_recipients
                .load(std::sync::atomic::Ordering::SeqCst)
        {
            // RFC 2920 §3.1: a pipelining client sends DATA before it reads the RCPT replies.
            reply(&mut stream, "554 5.5.1 no valid recipients").await
        } else if upper == "DATA" {
            if !reply(&mut stream, "354 end with <CRLF>.<CRLF>").await {
                return None;
            }
            let mut data = String::new();
            loop {
                line.clear();
                if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return None;
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
                tls,
            });
            state.arrived.notify_waiters();
            if state
                .hang_up_after_each_message
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                let bye = "250 OK queued\r\n421 4.7.0 too many messages, closing";
                let _ = reply(&mut stream, bye).await;
                return None;
            }
            reply(&mut stream, "250 OK queued").await
        } else if upper == "RSET" || upper == "NOOP" {
            reply(&mut stream, "250 OK").await
        } else if upper == "QUIT" {
            let _ = reply(&mut stream, "221 bye").await;
            return None;
        } else {
            reply(&mut stream, "502 command not implemented").await
        };
        if !ok {
            return None;
        }
    }
}
