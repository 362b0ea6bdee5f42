//! Passwords as NIST SP 800-63B and OWASP advise: 12 to 128 characters of anything, NFKC
//! normalised, no composition rules, common and guessable ones refused by an offline estimate
//! (zxcvbn), stored as an argon2id PHC string.
//!
//! Hashing is deliberately expensive, so it runs on threads of its own, one per core, at a
//! lower priority than the rest of the server (`Hasher`): a flood of sign-ins uses the CPU
//! the other requests leave, waits its turn instead of stalling the async workers, and what
//! waits too long is told to come back (`Busy`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use tokio::sync::Semaphore;
use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

pub const MIN_CHARS: usize = 12;
pub const MAX_CHARS: usize = 128;
/// zxcvbn's score 3: "safely unguessable", about 10^8 guesses or more.
const MIN_SCORE: u8 = 3;

/// argon2id, m = 19 MiB, t = 2, p = 1: OWASP's first recommended setting. On this 2-core
/// machine one hash takes about 25 ms in a release build (`benches/accounts.rs` measures it);
/// raising any of the three rehashes each account at its next sign-in.
pub fn current_params() -> Params {
    Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters")
}

/// A password as typed, normalised (NFKC) so that the same characters typed on another
/// keyboard or system are the same password. Wiped from memory when dropped; never printed.
pub struct Password(Zeroizing<String>);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([redacted])")
    }
}

impl Password {
    /// A password given to sign in: normalised, but not judged (a password set under older
    /// rules must still work). Over-long ones, as typed or once normalised, are refused
    /// before any hashing.
    ///
    /// The length as typed is checked first, before anything is normalised: NFKC can make a
    /// character into as many as 18 (U+FDFA into 18 letters and spaces), so normalising a
    /// 1 MiB field before counting would build a string many megabytes long per request.
    /// 128 characters of at most 4 bytes each can grow to at most a few kilobytes.
    pub fn given(raw: &str) -> Option<Self> {
        if too_long_as_typed(raw) {
            return None;
        }
        let normalised: Zeroizing<String> = Zeroizing::new(raw.nfkc().collect());
        (normalised.chars().count() <= MAX_CHARS).then_some(Self(normalised))
    }

    /// A new password, judged: long enough, not too long, and not guessable — from common
    /// passwords, keyboard patterns, dates, or the person's own address (`context`).
    ///
    /// zxcvbn's estimate takes milliseconds for a long password: a server calls this through
    /// `Hasher::hash_new`, on the hashing threads, never on an async worker.
    pub fn new(raw: &str, context: &[&str]) -> Result<Self, Weak> {
        let password = Self::given(raw).ok_or(Weak::TooLong)?;
        // Counted as typed (what `/openapi.json` states) and once normalised: NFKC turns
        // some characters into two ("´" is a space and a combining accent).
        if raw.chars().count() < MIN_CHARS || password.0.chars().count() < MIN_CHARS {
            return Err(Weak::TooShort);
        }
        let mut inputs = vec!["pexper", "pexper.com"];
        inputs.extend_from_slice(context);
        let estimate = zxcvbn::zxcvbn(&password.0, &inputs);
        if u8::from(estimate.score()) < MIN_SCORE {
            let advice = estimate
                .feedback()
                .map(|f| {
                    f.warning()
                        .map(|w| w.to_string())
                        .into_iter()
                        .chain(f.suggestions().iter().map(|s| s.to_string()))
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "Add another word or two.".to_owned());
            return Err(Weak::Guessable(advice));
        }
        Ok(password)
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Over 128 characters as typed: the byte length first (no character has more than 4
/// bytes), so a huge field is refused without even counting it.
pub fn too_long_as_typed(raw: &str) -> bool {
    raw.len() > MAX_CHARS * 4 || raw.chars().count() > MAX_CHARS
}

/// Why a new password is refused. The message never contains the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Weak {
    #[error("a password needs at least 12 characters; a few words make a good one")]
    TooShort,
    #[error("a password can have at most 128 characters")]
    TooLong,
    #[error("this password is too easy to guess. {0}")]
    Guessable(String),
}

/// The hashing pool's answer when it has been busy for too long.
#[derive(Debug, thiserror::Error)]
#[error("password hashing is busy")]
pub struct Busy;

type Work = Box<dyn FnOnce() + Send>;

/// Hashes and checks passwords on its own low-priority threads, a bounded number at a time.
#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// Work for the hashing threads; they end when the last `Hasher` clone is dropped.
    work: Arc<std::sync::Mutex<std::sync::mpsc::Sender<Work>>>,
    /// How long a request waits for a permit before it is told to come back.
    wait: Duration,
    /// A hash of nothing anyone knows, checked when there is no account: an unknown address
    /// costs the same time as a known one with a wrong password.
    dummy: Arc<str>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("available", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

fn argon2() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, current_params())
}

fn hash_now(password: &Password) -> anyhow::Result<String> {
    let hash: PasswordHash = argon2()
        .hash_password(password.bytes())
        .map_err(|e| anyhow::anyhow!("failed to hash a password: {e}"))?;
    Ok(hash.to_string())
}

/// Lowers the calling thread to about nice `nice` (1..=19).
fn lower_priority(nice: u8) -> Result<(), String> {
    // The crate maps level 0..=99 onto nice 19..=-20 as `39 * (1 - level / 99) - 20`, rounding
    // down: the level just at or below the exact one lands on `nice` (10 is level 22).
    let level = (99.0 * (1.0 - (f64::from(nice) + 20.0) / 39.0)).floor() as u8;
    let level = thread_priority::ThreadPriorityValue::try_from(level).map_err(|e| e.to_string())?;
    thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Crossplatform(
        level,
    ))
    .map_err(|e| e.to_string())
}

/// What checking a password against a stored hash found.
#[derive(Debug, PartialEq, Eq)]
pub enum Checked {
    Wrong,
    /// Right, and hashed with today's parameters.
    Right,
    /// Right, but hashed with other parameters: here is a new hash to store.
    RightRehashed(String),
}

fn check_now(password: &Password, phc: &str) -> anyhow::Result<Checked> {
    let parsed =
        PasswordHash::new(phc).map_err(|e| anyhow::anyhow!("a stored hash does not parse: {e}"))?;
    if argon2().verify_password(password.bytes(), phc).is_err() {
        return Ok(Checked::Wrong);
    }
    let want = current_params();
    let current = parsed.algorithm.as_str() == argon2::ARGON2ID_IDENT.as_str()
        && Params::try_from(&parsed).is_ok_and(|p| {
            (p.m_cost(), p.t_cost(), p.p_cost()) == (want.m_cost(), want.t_cost(), want.p_cost())
        });
    Ok(if current {
        Checked::Right
    } else {
        Checked::RightRehashed(hash_now(password)?)
    })
}

impl Hasher {
    /// `threads` hashing threads (the number of cores suits: each hash is one core's work) at
    /// nice value `nice`; a request waits at most `wait` for its turn.
    pub fn new(threads: usize, nice: u8, wait: Duration) -> anyhow::Result<Self> {
        let threads = threads.max(1);
        let (sender, receiver) = std::sync::mpsc::channel::<Work>();
        let receiver = Arc::new(std::sync::Mutex::new(receiver));
        for i in 0..threads {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || {
                    if nice > 0
                        && let Err(e) = lower_priority(nice)
                    {
                        tracing::warn!(error = %e, "password hashing runs at normal priority");
                    }
                    loop {
                        let next = receiver.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(work) = next else { return };
                        // A panic loses that one answer (its caller hears so), not the thread.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
                    }
                })
                .context("failed to start a password-hashing thread")?;
        }
        let nobody = Password(Zeroizing::new(pexper_platform::crypto::random_token()));
        Ok(Self {
            permits: Arc::new(Semaphore::new(threads)),
            work: Arc::new(std::sync::Mutex::new(sender)),
            wait,
            dummy: hash_now(&nobody)?.into(),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> Result<anyhow::Result<T>, Busy> {
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| Busy)?
            .map_err(|_| Busy)?;
        let (done, outcome) = tokio::sync::oneshot::channel();
        let job: Work = Box::new(move || {
            let _permit = permit;
            let _ = done.send(work());
        });
        self.work
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(job)
            .map_err(|_| Busy)?;
        // A panic in the work drops `done` unsent, and its permit with it.
        Ok(outcome
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("password hashing failed abruptly"))))
    }

    /// Judges a new password (`Password::new`) and hashes it if it is good enough, both on the
    /// hashing threads: the strength estimate is CPU work like the hash.
    pub async fn hash_new(
        &self,
        raw: Zeroizing<String>,
        context: Vec<String>,
    ) -> Result<anyhow::Result<Result<String, Weak>>, Busy> {
        // Over-long is known without the pool: a megabyte-long field must not wait in line.
        if too_long_as_typed(&raw) {
            return Ok(Ok(Err(Weak::TooLong)));
        }
        self.run(move || {
            let context: Vec<&str> = context.iter().map(String::as_str).collect();
            match Password::new(&raw, &context) {
                Ok(password) => hash_now(&password).map(Ok),
                Err(weak) => Ok(Err(weak)),
            }
        })
        .await
    }

    /// Checks `password` against `stored`, or against the dummy when there is no account, so
    /// that both take one hash's time.
    pub async fn check(
        &self,
        password: Password,
        stored: Option<String>,
    ) -> Result<anyhow::Result<Checked>, Busy> {
        let dummy = self.dummy.clone();
        self.run(move || match stored {
            Some(phc) => check_now(&password, &phc),
            None => check_now(&password, &dummy).map(|_| Checked::Wrong),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_common_and_personal_passwords_are_refused_with_advice() {
        assert_eq!(
            Password::new("Tr0ub4dor&3", &[]).map(|_| ()),
            Err(Weak::TooShort)
        );
        assert!(matches!(
            Password::new("password1234", &[]),
            Err(Weak::Guessable(_))
        ));
        assert!(matches!(
            Password::new("qwertyuiopasdf", &[]),
            Err(Weak::Guessable(_))
        ));
        assert!(matches!(
            Password::new(
                "ada.lovelace1815",
                &["ada.lovelace1815@example.com", "ada.lovelace1815"]
            ),
            Err(Weak::Guessable(_))
        ));
        assert_eq!(
            Password::new(&"correct horse battery ".repeat(6), &[]).map(|_| ()),
            Err(Weak::TooLong)
        );
        let Err(Weak::Guessable(advice)) = Password::new("password1234", &[]) else {
            unreachable!("refused above");
        };
        assert!(!advice.contains("password1234"), "{advice}");
    }

    #[test]
    fn a_passphrase_of_any_characters_is_taken_without_composition_rules() {
        assert!(Password::new("correct horse battery staple", &[]).is_ok());
        assert!(Password::new("東京の夜は静かで長い雨の音がする", &[]).is_ok());
        // 128 characters exactly, of one long sentence.
        let long: String = "a quiet river bends past seven old mills ".repeat(4)[..128].to_owned();
        assert!(Password::new(&long, &[]).is_ok());
    }

    #[test]
    fn the_length_counts_the_characters_as_typed_and_as_normalised() {
        // Eleven characters as typed, twelve once NFKC splits "´" (the fuzzer's find).
        let typed = "ce\u{f5}\u{a9}\u{b4}\u{1c}\u{8168a}U\u{d5}\u{f8}\u{99}";
        assert_eq!(typed.chars().count(), 11);
        assert_eq!(Password::new(typed, &[]).map(|_| ()), Err(Weak::TooShort));
        // And the other way: twelve as typed, eleven once "o" and its accent are one.
        let composed = "bright lo\u{308}ve";
        assert_eq!(composed.chars().count(), 12);
        assert_eq!(
            Password::new(composed, &[]).map(|_| ()),
            Err(Weak::TooShort)
        );
    }

    #[test]
    fn a_field_that_grows_under_normalisation_is_refused_before_it_is_normalised() {
        // U+FDFA is one character that NFKC makes 18: 128 of them are 128 as typed and
        // 2,304 once normalised; 129 are refused as typed, however long the field.
        assert!(Password::given(&"\u{fdfa}".repeat(128)).is_none());
        assert!(Password::given(&"\u{fdfa}".repeat(129)).is_none());
        let megabyte = "\u{fdfa}".repeat(1 << 18);
        assert!(Password::given(&megabyte).is_none());
        assert_eq!(
            Password::new(&megabyte, &[]).map(|_| ()),
            Err(Weak::TooLong)
        );
        assert!(too_long_as_typed(&megabyte));
        assert!(!too_long_as_typed(&"\u{fdfa}".repeat(128)));
    }

    #[test]
    fn the_same_characters_typed_differently_are_the_same_password() {
        // "ﬁ" (a ligature) and "Å" as one code point or as A + ring: NFKC makes them one.
        let a = Password::given("ﬁne \u{212B}ngstr\u{f6}m days").expect("short enough");
        let b = Password::given("fine \u{c5}ngstro\u{308}m days").expect("short enough");
        assert_eq!(a.bytes(), b.bytes());
    }

    #[test]
    fn the_debug_form_never_shows_the_password() {
        let p = Password::given("correct horse battery staple").expect("short enough");
        assert_eq!(format!("{p:?}"), "Password([redacted])");
    }

    /// The nice value of the calling thread, from `/proc` (Linux).
    fn own_nice() -> anyhow::Result<i64> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // Field 19 of stat(5); the fields after the command name start at field 3.
        Ok(fields.get(16).context("a nice field")?.parse()?)
    }

    #[tokio::test]
    async fn hashing_runs_on_threads_of_the_configured_lower_priority() {
        for nice in [0u8, 1, 5, 10, 19] {
            let hasher = Hasher::new(1, nice, Duration::from_secs(5)).expect("starts");
            let seen = hasher
                .run(own_nice)
                .await
                .expect("not busy")
                .expect("reads /proc");
            assert_eq!(seen, i64::from(nice), "the hashing thread's nice value");
        }
        assert_eq!(
            own_nice().expect("reads /proc"),
            0,
            "the caller is untouched"
        );
    }

    #[test]
    fn a_hash_checks_its_password_only_and_old_parameters_are_rehashed() {
        let right = || Password::given("correct horse battery staple").expect("short enough");
        let phc = hash_now(&right()).expect("hashes");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert_eq!(check_now(&right(), &phc).expect("checks"), Checked::Right);
        let wrong = Password::given("correct horse battery stapler").expect("short enough");
        assert_eq!(check_now(&wrong, &phc).expect("checks"), Checked::Wrong);

        let old = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, None).expect("valid"),
        )
        .hash_password(right().bytes())
        .expect("hashes")
        .to_string();
        let Checked::RightRehashed(new) = check_now(&right(), &old).expect("checks") else {
            panic!("an old hash must be replaced");
        };
        assert!(new.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{new}");
        assert_eq!(check_now(&right(), &new).expect("checks"), Checked::Right);
    }
}
