//! An independent DKIM verifier, so that a test of signed mail does not trust the signer
//! (AWS-LC): Ed25519 through ed25519-dalek, RSA through the `openssl` command.

use crate::smtp::ReceivedMail;

/// A signer's public key, as its DNS record would publish it.
pub enum PublicKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    /// The PEM file of an RSA public key.
    Rsa(std::path::PathBuf),
}

/// A new RSA-2048 key pair from `openssl` in `dir`: the private key in PKCS#8 PEM (what
/// `openssl genpkey` writes; `traditional` for PKCS#1, what `genrsa -traditional` writes) and
/// the public key.
pub fn rsa_key(dir: &std::path::Path, traditional: bool) -> (String, PublicKey) {
    let private = dir.join("dkim.pem");
    let public = dir.join("dkim.pub.pem");
    let mut genrsa = std::process::Command::new("openssl");
    genrsa.arg("genrsa");
    if traditional {
        genrsa.arg("-traditional");
    }
    let out = genrsa
        .arg("-out")
        .arg(&private)
        .arg("2048")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = std::process::Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        std::fs::read_to_string(&private).unwrap(),
        PublicKey::Rsa(public),
    )
}

/// Verifies an ed25519-sha256 or rsa-sha256 DKIM signature with relaxed/relaxed
/// canonicalization (RFC 6376 §3.4.2, §3.4.4, §3.7; RFC 8463), written out here so the tests
/// do not trust the signer.
pub fn verify(m: &ReceivedMail, key: &PublicKey) -> Result<(), String> {
    use base64::Engine;
    use ed25519_dalek::Verifier;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (head, body) = m.data.split_once("\r\n\r\n").ok_or("no body")?;
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            let last = fields.last_mut().ok_or("folded first line")?;
            last.1.push_str("\r\n");
            last.1.push_str(line);
        } else {
            let (n, v) = line.split_once(':').ok_or("bad header")?;
            fields.push((n.to_owned(), v.to_owned()));
        }
    }
    let relaxed = |name: &str, value: &str| {
        let v = value.replace("\r\n", "");
        format!(
            "{}:{}",
            name.to_ascii_lowercase(),
            v.split_whitespace().collect::<Vec<_>>().join(" ")
        )
    };
    let sig = fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("DKIM-Signature"))
        .ok_or("unsigned")?
        .1
        .clone();
    let tags: std::collections::HashMap<String, String> = sig
        .split(';')
        .filter_map(|t| t.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_owned(),
                v.split_whitespace().collect::<String>(),
            )
        })
        .collect();

    let mut lines: Vec<String> = body
        .split("\r\n")
        .map(|l| {
            let mut out = String::new();
            let mut space = false;
            for c in l.chars() {
                if c == ' ' || c == '\t' {
                    space = true;
                } else {
                    if space {
                        out.push(' ');
                    }
                    space = false;
                    out.push(c);
                }
            }
            out
        })
        .collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let canon_body = if lines.is_empty() {
        String::new()
    } else {
        lines.join("\r\n") + "\r\n"
    };
    if b64.encode(pexper_platform::crypto::sha256(canon_body.as_bytes())) != tags["bh"] {
        return Err("body hash differs".into());
    }

    // Each listed name takes the next instance of that header from the bottom up; a name
    // listed more often than it appears (over-signing) contributes nothing (RFC 6376 §5.4.2).
    let mut data = String::new();
    let mut taken: std::collections::HashMap<String, usize> = Default::default();
    for name in tags["h"].split(':') {
        let name = name.trim().to_ascii_lowercase();
        let nth = taken.entry(name.clone()).or_default();
        if let Some((n, v)) = fields
            .iter()
            .rev()
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(&name))
            .nth(*nth)
        {
            data.push_str(&relaxed(n, v));
            data.push_str("\r\n");
        }
        *nth += 1;
    }
    let without_b: Vec<String> = sig
        .split(';')
        .map(|t| match t.split_once('=') {
            Some((k, _)) if k.trim() == "b" => format!("{k}="),
            _ => t.to_owned(),
        })
        .collect();
    data.push_str(&relaxed("DKIM-Signature", &without_b.join(";")));
    let signature = b64.decode(&tags["b"]).map_err(|e| e.to_string())?;
    match key {
        PublicKey::Ed25519(key) => {
            if tags["a"] != "ed25519-sha256" {
                return Err(format!("a={} for an Ed25519 key", tags["a"]));
            }
            let signature =
                ed25519_dalek::Signature::from_slice(&signature).map_err(|e| e.to_string())?;
            key.verify(
                &pexper_platform::crypto::sha256(data.as_bytes()),
                &signature,
            )
            .map_err(|e| format!("signature does not verify: {e}"))
        }
        PublicKey::Rsa(public) => {
            if tags["a"] != "rsa-sha256" {
                return Err(format!("a={} for an RSA key", tags["a"]));
            }
            let dir = crate::tempdir::TempDir::new();
            let (signed, sig) = (dir.path().join("signed"), dir.path().join("sig"));
            std::fs::write(&signed, &data).unwrap();
            std::fs::write(&sig, &signature).unwrap();
            let out = std::process::Command::new("openssl")
                .args(["dgst", "-sha256", "-verify"])
                .arg(public)
                .arg("-signature")
                .arg(&sig)
                .arg(&signed)
                .output()
                .expect("openssl on PATH");
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "signature does not verify: {}",
                    String::from_utf8_lossy(&out.stdout)
                ))
            }
        }
    }
}

/// Verifies `m`'s DKIM signature with dkimpy (PyPI `dkimpy`, the verifier of many mail
/// servers), given the DNS TXT record its selector publishes: a second, unrelated reading of
/// the RFC. `Ok(false)` when dkimpy is not installed, unless `PEXPER_REQUIRE_DKIMPY` is set
/// (CI), where that fails; a forgery is rejected when this is not `Ok(true)`.
pub fn verify_with_dkimpy(m: &ReceivedMail, record: &str) -> Result<bool, String> {
    let installed = std::process::Command::new("python3")
        .args(["-c", "import dkim"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        assert!(
            std::env::var("PEXPER_REQUIRE_DKIMPY").is_err(),
            "PEXPER_REQUIRE_DKIMPY is set but dkimpy is not installed"
        );
        return Ok(false);
    }
    let dir = crate::tempdir::TempDir::new();
    let message = dir.path().join("message.eml");
    std::fs::write(&message, &m.data).unwrap();
    const SCRIPT: &str = "import dkim, os, sys
record = os.environ['DKIM_RECORD'].encode()
data = open(sys.argv[1], 'rb').read()
ok = dkim.verify(data, dnsfunc=lambda name, timeout=5: record)
sys.exit(0 if ok else 3)";
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(&message)
        .env("DKIM_RECORD", record)
        .output()
        .unwrap();
    // 3: it does not verify; anything else but success is the script failing, not a verdict.
    match out.status.code() {
        Some(0) => Ok(true),
        Some(3) => Err("dkimpy: the signature does not verify".to_owned()),
        _ => panic!("dkimpy failed: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// The DNS TXT record (`v=DKIM1; k=…; p=…`) that publishes `key`.
pub fn record(key: &PublicKey) -> String {
    use base64::Engine;
    match key {
        PublicKey::Ed25519(key) => format!(
            "v=DKIM1; k=ed25519; p={}",
            base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
        ),
        PublicKey::Rsa(pem) => {
            let pem = std::fs::read_to_string(pem).unwrap();
            let der: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            format!("v=DKIM1; k=rsa; p={der}")
        }
    }
}
