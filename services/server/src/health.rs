//! `pexper-server healthcheck`: one HTTP/1.0 request to our own `/readyz`, over a plain socket
//! with short timeouts. Slim images have neither curl nor a shell with `/dev/tcp`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

const TIMEOUT: Duration = Duration::from_secs(3);

/// Asks the server listening on `bind` (an unspecified address means this host) whether it
/// is ready.
pub fn check(bind: SocketAddr) -> anyhow::Result<()> {
    let mut target = bind;
    if bind.ip().is_unspecified() {
        target.set_ip(match bind.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT)
        .with_context(|| format!("nothing answers on {target}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).context("no answer from /readyz")?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    let status = status_line.split_whitespace().nth(1).unwrap_or("none");
    if status != "200" {
        bail!("/readyz answered {status}");
    }
    Ok(())
}
