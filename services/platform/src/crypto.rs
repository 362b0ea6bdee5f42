//! Envelope encryption of personal data, and the blind index used to find it.
//!
//! * The **master key** (one or more versions, from `PEXPER_MASTER_KEY`) never encrypts data.
//!   Purpose keys are derived from it with HMAC-SHA256 as a PRF over a fixed label, so a leak of
//!   one derived key does not reveal the others.
//! * Each person has a random 256-bit **data key**, stored only wrapped (AES-256-GCM) under the
//!   key-wrapping key of one master version. Erasing a person deletes the wrapped key, and every
//!   ciphertext made with it, wherever a copy survives, becomes unreadable (crypto-shredding).
//! * Every **sealed value** carries the id of its data key and is bound by associated data to
//!   its table, column and row, so a ciphertext copied to another row or column fails to open.
//! * The **blind index** is HMAC-SHA256 of a normalised value under its own key, for equality
//!   lookups without storing the value.
//! * The blind-index and token keys are **lookup keys**: what they make is kept (indexes in
//!   rows, MACs in links already mailed), so they must not change when the master key does.
//!   They are derived once, from the master version current at the deployment's first start,
//!   and then stored wrapped like data keys (`keys::keyring`). Rotating the master key re-wraps
//!   them and changes no index and no link.
//! * The **records key** is stored the same way, and seals what must outlive a person's
//!   erasure but is no one's to read in clear: purchase records, kept 10 years for tax law.
//!   It is a data key whose id is `RECORDS_KEY_ID`, so a sealed record names it as a person's
//!   sealed value names theirs.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::Sha256;
use uuid::Uuid;

type HmacSha256 = Hmac<Sha256>;

/// AES-256 and HMAC-SHA256 keys.
const KEY_LEN: usize = 32;
/// AES-GCM's 96-bit nonce and 128-bit tag.
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// A sealed value names its data key by id: a UUID's bytes.
const KEY_ID_LEN: usize = 16;
/// HMAC-SHA256 output.
const MAC_LEN: usize = 32;
/// First byte of every sealed value; a new layout gets a new number.
const SEALED_FORMAT_V1: u8 = 1;
/// `[format][key id][nonce]` before the ciphertext.
const SEALED_HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
/// Prefix of every purpose a key is derived for: a new derivation scheme gets a new one.
const DERIVATION_PREFIX: &[u8] = b"pexper/v1/";
/// Random bytes in a token (256 bits), and their length in unpadded base64url.
const TOKEN_BYTES: usize = 32;
const TOKEN_LEN: usize = 43;

/// The id a sealed record names as its key (`Keyring::records_key`): no person's id, which are
/// UUIDv7s, can be it.
pub const RECORDS_KEY_ID: Uuid = Uuid::from_u128(0x7265_636f_7264_7300_0000_0000_0000_0001);

/// Failures that must never reveal which byte was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("ciphertext is malformed")]
    Malformed,
    #[error("ciphertext was sealed with another data key")]
    WrongKey,
    #[error("ciphertext failed authentication (tampered, or bound to another field)")]
    Authentication,
    #[error("master key version {0} is not configured")]
    UnknownMasterVersion(i32),
}

/// A 32-byte secret whose `Debug` is `[redacted]` and that is zeroed on drop.
pub type SecretKey = SecretBox<[u8; KEY_LEN]>;

fn secret_key(bytes: [u8; KEY_LEN]) -> SecretKey {
    SecretBox::new(Box::new(bytes))
}

fn random_key() -> SecretKey {
    let mut bytes = [0u8; KEY_LEN];
    rand::fill(&mut bytes);
    secret_key(bytes)
}

/// Derives a purpose key: HMAC-SHA256(master, "pexper/v1/" || purpose).
///
/// HMAC is a PRF keyed by the uniformly random master key, which is all a KDF needs here (it is
/// HKDF-Expand's first block).
fn derive(master: &SecretKey, purpose: &str) -> SecretKey {
    let mut mac = HmacSha256::new_from_slice(master.expose_secret()).expect("HMAC takes any key");
    mac.update(DERIVATION_PREFIX);
    mac.update(purpose.as_bytes());
    secret_key(mac.finalize().into_bytes().into())
}

/// HMAC-SHA256 under `key` over `parts`, each length-prefixed so ("ab","c") and ("a","bc")
/// never collide; ready to finalize or to verify.
fn keyed_mac(key: &SecretKey, parts: &[&[u8]]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key.expose_secret()).expect("HMAC takes any key");
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac
}

fn hmac(key: &SecretKey, parts: &[&[u8]]) -> [u8; MAC_LEN] {
    keyed_mac(key, parts).finalize().into_bytes().into()
}

/// The versions of the master key this process knows, and which one is current.
///
/// Written as `PEXPER_MASTER_KEY=<base64>` (version 1) or `2:<base64>,1:<base64>`: the first
/// entry is current (new data keys are wrapped under it); the others are kept only to unwrap
/// data keys that `pexper-admin keys rotate` has not yet re-wrapped.
pub struct MasterKeys {
    current: i32,
    keys: BTreeMap<i32, SecretKey>,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKeys")
            .field("current", &self.current)
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl MasterKeys {
    pub fn parse(spec: &SecretString) -> anyhow::Result<Self> {
        let mut keys = BTreeMap::new();
        let mut current = None;
        for entry in spec.expose_secret().split([',', '\n']).map(str::trim) {
            if entry.is_empty() {
                continue;
            }
            let (version, encoded) = match entry.split_once(':') {
                Some((v, k)) => (
                    v.parse::<i32>()
                        .ok()
                        .filter(|v| *v > 0)
                        .context("PEXPER_MASTER_KEY: a version must be a positive number")?,
                    k,
                ),
                None => (1, entry),
            };
            let bytes = BASE64
                .decode(encoded)
                .ok()
                .and_then(|b| <[u8; KEY_LEN]>::try_from(b).ok())
                .context("PEXPER_MASTER_KEY must be base64 of exactly 32 bytes")?;
            if keys.insert(version, secret_key(bytes)).is_some() {
                bail!("PEXPER_MASTER_KEY lists version {version} twice");
            }
            current.get_or_insert(version);
        }
        let current = current.context("PEXPER_MASTER_KEY is empty")?;
        Ok(Self { current, keys })
    }

    /// A fresh random key, encoded as `PEXPER_MASTER_KEY` expects.
    pub fn generate_encoded() -> String {
        BASE64.encode(random_key().expose_secret())
    }

    pub fn current_version(&self) -> i32 {
        self.current
    }

    pub fn versions(&self) -> impl Iterator<Item = i32> + '_ {
        self.keys.keys().copied()
    }
}

/// The key-wrapping key of every configured master version, and the deployment's lookup keys.
pub struct Keyring {
    current: i32,
    wrap: BTreeMap<i32, SecretKey>,
    lookup: LookupKeys,
}

/// Keys whose outputs are kept, so that they outlive any one master version.
struct LookupKeys {
    blind_index: SecretKey,
    token: SecretKey,
    audit_trail: SecretKey,
    records: SecretKey,
}

/// Which lookup key: also its derivation label and its name in the `lookup_key` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupPurpose {
    BlindIndex,
    Token,
    AuditTrail,
    Records,
}

impl LookupPurpose {
    pub const ALL: [Self; 4] = [
        Self::BlindIndex,
        Self::Token,
        Self::AuditTrail,
        Self::Records,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BlindIndex => "blind-index",
            Self::Token => "token-signing",
            Self::AuditTrail => "audit-trail",
            Self::Records => "records",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

/// A blind index value (HMAC-SHA256 output).
pub type BlindIndex = [u8; MAC_LEN];

impl Keyring {
    /// A keyring whose lookup keys are derived from the current master version: what a new
    /// deployment starts with. A running deployment's are loaded by `keys::keyring`.
    pub fn new(master: &MasterKeys) -> Self {
        let current = &master.keys[&master.current];
        Self {
            current: master.current,
            wrap: master
                .keys
                .iter()
                .map(|(v, key)| (*v, derive(key, "data-key-wrap")))
                .collect(),
            lookup: LookupKeys {
                blind_index: derive(current, LookupPurpose::BlindIndex.as_str()),
                token: derive(current, LookupPurpose::Token.as_str()),
                audit_trail: derive(current, LookupPurpose::AuditTrail.as_str()),
                records: derive(current, LookupPurpose::Records.as_str()),
            },
        }
    }

    /// This keyring with the deployment's stored lookup keys in place of the derived ones.
    /// Every purpose must be present and wrapped under a configured version.
    pub fn with_lookup_keys(
        mut self,
        stored: &[(LookupPurpose, WrappedKey)],
    ) -> Result<Self, CryptoError> {
        for purpose in LookupPurpose::ALL {
            let (_, wrapped) = stored
                .iter()
                .find(|(p, _)| *p == purpose)
                .ok_or(CryptoError::Malformed)?;
            let key = open_raw(
                self.wrapping(wrapped.master_version)?,
                &lookup_aad(purpose),
                &wrapped.bytes,
            )?;
            let key = secret_key(key.try_into().map_err(|_| CryptoError::Malformed)?);
            match purpose {
                LookupPurpose::BlindIndex => self.lookup.blind_index = key,
                LookupPurpose::Token => self.lookup.token = key,
                LookupPurpose::AuditTrail => self.lookup.audit_trail = key,
                LookupPurpose::Records => self.lookup.records = key,
            }
        }
        Ok(self)
    }

    /// The lookup keys wrapped under the current master version, to store.
    pub fn wrap_lookup_keys(&self) -> Vec<(LookupPurpose, WrappedKey)> {
        LookupPurpose::ALL
            .into_iter()
            .map(|purpose| {
                let key = match purpose {
                    LookupPurpose::BlindIndex => &self.lookup.blind_index,
                    LookupPurpose::Token => &self.lookup.token,
                    LookupPurpose::AuditTrail => &self.lookup.audit_trail,
                    LookupPurpose::Records => &self.lookup.records,
                };
                let bytes = seal_raw(
                    self.current_wrapping(),
                    &lookup_aad(purpose),
                    key.expose_secret(),
                );
                (
                    purpose,
                    WrappedKey {
                        master_version: self.current,
                        bytes,
                    },
                )
            })
            .collect()
    }

    pub fn current_version(&self) -> i32 {
        self.current
    }

    /// Every master version this keyring can unwrap under.
    pub fn versions(&self) -> Vec<i32> {
        self.wrap.keys().copied().collect()
    }

    fn wrapping(&self, v: i32) -> Result<&SecretKey, CryptoError> {
        self.wrap
            .get(&v)
            .ok_or(CryptoError::UnknownMasterVersion(v))
    }

    fn current_wrapping(&self) -> &SecretKey {
        &self.wrap[&self.current]
    }

    /// A new random data key for one person, with its wrapped form to store.
    pub fn new_data_key(&self, id: Uuid) -> (DataKey, WrappedKey) {
        let key = DataKey {
            id,
            key: random_key(),
        };
        let wrapped = self.wrap_data_key(&key);
        (key, wrapped)
    }

    /// Wraps a data key under the current master version.
    pub fn wrap_data_key(&self, key: &DataKey) -> WrappedKey {
        let sealed = seal_raw(
            self.current_wrapping(),
            &wrap_aad(key.id),
            key.key.expose_secret(),
        );
        WrappedKey {
            master_version: self.current,
            bytes: sealed,
        }
    }

    /// Opens a stored data key (under whichever configured master version wrapped it).
    pub fn open_data_key(&self, id: Uuid, wrapped: &WrappedKey) -> Result<DataKey, CryptoError> {
        let wrap = self.wrapping(wrapped.master_version)?;
        let bytes = open_raw(wrap, &wrap_aad(id), &wrapped.bytes)?;
        let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|_| CryptoError::Malformed)?;
        Ok(DataKey {
            id,
            key: secret_key(bytes),
        })
    }

    /// The blind index of `value`. `domain` separates indexes of different kinds of value
    /// (`"email"`, `"suppression"`, …).
    pub fn blind_index(&self, domain: &str, value: &str) -> BlindIndex {
        hmac(
            &self.lookup.blind_index,
            &[domain.as_bytes(), value.as_bytes()],
        )
    }

    /// A MAC for the audit trail's chain and its recorded head (`pexper-privacy`'s `audit`):
    /// keyed, so someone who can write to the database cannot recompute it.
    pub fn audit_mac(&self, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        hmac(&self.lookup.audit_trail, parts)
    }

    /// The key purchase records are sealed under: the deployment's, not a person's, so
    /// erasing the buyer leaves the record readable to us for as long as the law says to keep
    /// it, and to no one who has only the database.
    pub fn records_key(&self) -> DataKey {
        DataKey {
            id: RECORDS_KEY_ID,
            key: secret_key(*self.lookup.records.expose_secret()),
        }
    }

    /// A MAC for a self-verifying token (unsubscribe links and the like).
    pub fn sign_token(&self, domain: &str, message: &[u8]) -> [u8; MAC_LEN] {
        hmac(&self.lookup.token, &[domain.as_bytes(), message])
    }

    /// Checks a token MAC in constant time.
    pub fn verify_token(&self, domain: &str, message: &[u8], tag: &[u8]) -> bool {
        keyed_mac(&self.lookup.token, &[domain.as_bytes(), message])
            .verify_slice(tag)
            .is_ok()
    }

    /// Checks a token MAC cut to its first `tag.len()` bytes (at least 8), in constant time:
    /// for tags that must be short, such as one in an email address's local part.
    pub fn verify_token_prefix(&self, domain: &str, message: &[u8], tag: &[u8]) -> bool {
        tag.len() >= 8
            && keyed_mac(&self.lookup.token, &[domain.as_bytes(), message])
                .verify_truncated_left(tag)
                .is_ok()
    }
}

fn wrap_aad(id: Uuid) -> Vec<u8> {
    [b"pexper/data-key/".as_slice(), id.as_bytes()].concat()
}

fn lookup_aad(purpose: LookupPurpose) -> Vec<u8> {
    [
        b"pexper/lookup-key/".as_slice(),
        purpose.as_str().as_bytes(),
    ]
    .concat()
}

/// A data key as stored: sealed under one master version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    pub master_version: i32,
    pub bytes: Vec<u8>,
}

/// Where a sealed value lives. Part of the associated data, so a value only opens in its place.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    pub table: &'a str,
    pub column: &'a str,
    pub row: Uuid,
}

impl Field<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(64);
        for part in [
            self.table.as_bytes(),
            self.column.as_bytes(),
            self.row.as_bytes(),
        ] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part);
        }
        aad
    }
}

/// One person's data key, unwrapped in memory only for as long as it is needed.
pub struct DataKey {
    id: Uuid,
    key: SecretKey,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Seals `plaintext` for `field`: `[format][key id][nonce][ciphertext+tag]`.
    pub fn seal(&self, field: Field<'_>, plaintext: &[u8]) -> Vec<u8> {
        let mut aad = self.id.as_bytes().to_vec();
        aad.extend(field.aad());
        let body = seal_raw(&self.key, &aad, plaintext);
        let mut out = Vec::with_capacity(1 + KEY_ID_LEN + body.len());
        out.push(SEALED_FORMAT_V1);
        out.extend_from_slice(self.id.as_bytes());
        out.extend(body);
        out
    }

    pub fn open(&self, field: Field<'_>, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < SEALED_HEADER_LEN + TAG_LEN || sealed[0] != SEALED_FORMAT_V1 {
            return Err(CryptoError::Malformed);
        }
        if Some(self.id) != sealed_key_id(sealed) {
            return Err(CryptoError::WrongKey);
        }
        let mut aad = self.id.as_bytes().to_vec();
        aad.extend(field.aad());
        open_raw(&self.key, &aad, &sealed[1 + KEY_ID_LEN..])
    }

    pub fn open_string(&self, field: Field<'_>, sealed: &[u8]) -> Result<String, CryptoError> {
        String::from_utf8(self.open(field, sealed)?).map_err(|_| CryptoError::Malformed)
    }
}

/// The id of the data key a sealed value needs, read from its header.
pub fn sealed_key_id(sealed: &[u8]) -> Option<Uuid> {
    let id = sealed.get(1..1 + KEY_ID_LEN)?;
    Uuid::from_slice(id).ok()
}

/// AES-256-GCM with a random 96-bit nonce: `[nonce][ciphertext+tag]`. Random nonces are safe
/// here: a person's data key seals a handful of values in its life, a backup's key one per
/// 64 KiB, and the records key one per payment event (a purchase's record is sealed again at
/// each), all far below the 2^32 messages per key that random nonces allow.
fn seal_raw(key: &SecretKey, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new_from_slice(key.expose_secret()).expect("32-byte key");
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce);
    let ciphertext = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    [nonce.as_slice(), &ciphertext].concat()
}

fn open_raw(key: &SecretKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Malformed);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Malformed)?;
    let cipher = Aes256Gcm::new_from_slice(key.expose_secret()).expect("32-byte key");
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Authentication)
}

/// Lowercase hex, for short log-safe prefixes and digests.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256, for hashing single-use tokens at rest (they are random, so no key is needed).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(bytes).into()
}

/// Whether `s` could be a token from `random_token` (43 base64url characters), so that anything
/// else is refused before a lookup, and a token echoed into a link needs no escaping.
pub fn is_token_shaped(s: &str) -> bool {
    s.len() == TOKEN_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A random URL-safe token with 256 bits of entropy.
pub fn random_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::fill(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn master(spec: &str) -> MasterKeys {
        MasterKeys::parse(&SecretString::from(spec.to_owned())).expect("valid spec")
    }

    fn keyring() -> Keyring {
        Keyring::new(&master(&MasterKeys::generate_encoded()))
    }

    fn field(row: Uuid) -> Field<'static> {
        Field {
            table: "person",
            column: "email",
            row,
        }
    }

    proptest! {
        #[test]
        fn sealed_values_open_to_the_same_bytes(plaintext in proptest::collection::vec(any::<u8>(), 0..512)) {
            let ring = keyring();
            let (key, _) = ring.new_data_key(Uuid::new_v4());
            let row = Uuid::new_v4();
            let sealed = key.seal(field(row), &plaintext);
            prop_assert_eq!(key.open(field(row), &sealed).expect("opens"), plaintext);
        }

        #[test]
        fn any_flipped_bit_fails_to_open(plaintext in proptest::collection::vec(any::<u8>(), 1..64), bit in any::<proptest::sample::Index>()) {
            let ring = keyring();
            let (key, _) = ring.new_data_key(Uuid::new_v4());
            let row = Uuid::new_v4();
            let mut sealed = key.seal(field(row), &plaintext);
            let i = bit.index(sealed.len() * 8);
            sealed[i / 8] ^= 1 << (i % 8);
            prop_assert!(key.open(field(row), &sealed).is_err());
        }

        #[test]
        fn a_value_copied_to_another_row_or_column_fails_to_open(plaintext in proptest::collection::vec(any::<u8>(), 0..64)) {
            let ring = keyring();
            let (key, _) = ring.new_data_key(Uuid::new_v4());
            let row = Uuid::new_v4();
            let sealed = key.seal(field(row), &plaintext);
            prop_assert_eq!(key.open(field(Uuid::new_v4()), &sealed), Err(CryptoError::Authentication));
            let other_column = Field { column: "name", ..field(row) };
            prop_assert_eq!(key.open(other_column, &sealed), Err(CryptoError::Authentication));
            let other_table = Field { table: "purchase", ..field(row) };
            prop_assert_eq!(key.open(other_table, &sealed), Err(CryptoError::Authentication));
        }

        #[test]
        fn rotation_rewraps_data_keys_without_changing_them(plaintext in proptest::collection::vec(any::<u8>(), 0..64)) {
            let old = MasterKeys::generate_encoded();
            let new = MasterKeys::generate_encoded();
            let before = Keyring::new(&master(&old));
            let id = Uuid::new_v4();
            let (key, wrapped_v1) = before.new_data_key(id);
            let row = Uuid::new_v4();
            let sealed = key.seal(field(row), &plaintext);

            let during = Keyring::new(&master(&format!("2:{new},1:{old}")));
            let unwrapped = during.open_data_key(id, &wrapped_v1).expect("old version still configured");
            let wrapped_v2 = during.wrap_data_key(&unwrapped);
            prop_assert_eq!(wrapped_v2.master_version, 2);

            let after = Keyring::new(&master(&format!("2:{new}")));
            prop_assert_eq!(after.open_data_key(id, &wrapped_v1).err(), Some(CryptoError::UnknownMasterVersion(1)));
            let key_after = after.open_data_key(id, &wrapped_v2).expect("rewrapped key opens");
            prop_assert_eq!(key_after.open(field(row), &sealed).expect("data still opens"), plaintext);
        }
    }

    #[test]
    fn two_seals_of_the_same_value_differ_in_nonce_and_ciphertext() {
        // A nonce used twice under one GCM key gives away the XOR of the two plaintexts and
        // the authentication key: every seal draws its own.
        let ring = keyring();
        let (key, _) = ring.new_data_key(Uuid::new_v4());
        let row = Uuid::new_v4();
        let header = 1 + KEY_ID_LEN; // the format byte and the key id
        let seals: Vec<Vec<u8>> = (0..1000)
            .map(|_| key.seal(field(row), b"ada@example.com"))
            .collect();
        let nonces: std::collections::HashSet<&[u8]> = seals
            .iter()
            .map(|s| &s[header..header + NONCE_LEN])
            .collect();
        assert_eq!(nonces.len(), seals.len(), "a nonce came twice");
        let whole: std::collections::HashSet<&Vec<u8>> = seals.iter().collect();
        assert_eq!(whole.len(), seals.len());
        for sealed in &seals[..3] {
            assert_eq!(
                key.open(field(row), sealed).expect("opens"),
                b"ada@example.com"
            );
        }
    }

    #[test]
    fn a_wrapped_key_only_unwraps_for_its_own_id() {
        let ring = keyring();
        let (_, wrapped) = ring.new_data_key(Uuid::new_v4());
        assert_eq!(
            ring.open_data_key(Uuid::new_v4(), &wrapped).err(),
            Some(CryptoError::Authentication)
        );
    }

    #[test]
    fn another_persons_key_is_refused_by_the_header() {
        let ring = keyring();
        let (alice, _) = ring.new_data_key(Uuid::new_v4());
        let (bob, _) = ring.new_data_key(Uuid::new_v4());
        let row = Uuid::new_v4();
        let sealed = alice.seal(field(row), b"alice@example.com");
        assert_eq!(sealed_key_id(&sealed), Some(alice.id()));
        assert_eq!(bob.open(field(row), &sealed), Err(CryptoError::WrongKey));
    }

    #[test]
    fn blind_indexes_are_keyed_and_domain_separated() {
        let a = keyring();
        let b = keyring();
        assert_eq!(
            a.blind_index("email", "x@y.z"),
            a.blind_index("email", "x@y.z")
        );
        assert_ne!(
            a.blind_index("email", "x@y.z"),
            b.blind_index("email", "x@y.z")
        );
        assert_ne!(
            a.blind_index("email", "x@y.z"),
            a.blind_index("suppression", "x@y.z")
        );
    }

    #[test]
    fn token_macs_verify_only_unchanged() {
        let ring = keyring();
        let tag = ring.sign_token("unsubscribe", b"person-1");
        assert!(ring.verify_token("unsubscribe", b"person-1", &tag));
        assert!(!ring.verify_token("unsubscribe", b"person-2", &tag));
        assert!(!ring.verify_token("confirm", b"person-1", &tag));
        assert!(!keyring().verify_token("unsubscribe", b"person-1", &tag));
    }

    #[test]
    fn lookup_keys_outlive_the_master_version_they_were_made_under() {
        let old = MasterKeys::generate_encoded();
        let new = MasterKeys::generate_encoded();
        let before = Keyring::new(&master(&old));
        let index = before.blind_index("email", "x@y.z");
        let tag = before.sign_token("unsubscribe", b"person-1");

        // Rotation: both versions configured, the stored keys re-wrapped under the new one.
        let during = Keyring::new(&master(&format!("2:{new},1:{old}")))
            .with_lookup_keys(&before.wrap_lookup_keys())
            .expect("old version still configured");
        let rewrapped = during.wrap_lookup_keys();
        assert!(rewrapped.iter().all(|(_, w)| w.master_version == 2));

        let only_new = || Keyring::new(&master(&format!("2:{new}")));
        assert_ne!(
            only_new().blind_index("email", "x@y.z"),
            index,
            "a fresh derivation differs"
        );
        assert_eq!(
            only_new()
                .with_lookup_keys(&before.wrap_lookup_keys())
                .err(),
            Some(CryptoError::UnknownMasterVersion(1))
        );
        let after = only_new()
            .with_lookup_keys(&rewrapped)
            .expect("re-wrapped keys open");
        assert_eq!(after.blind_index("email", "x@y.z"), index);
        assert!(after.verify_token("unsubscribe", b"person-1", &tag));
    }

    #[test]
    fn master_key_specs_are_parsed_strictly() {
        let k = MasterKeys::generate_encoded();
        assert_eq!(master(&k).current_version(), 1);
        let two = master(&format!("3:{k}, 1:{}", MasterKeys::generate_encoded()));
        assert_eq!(two.current_version(), 3);
        assert_eq!(two.versions().collect::<Vec<_>>(), vec![1, 3]);
        for bad in ["", "short", "0:AAAA", &format!("1:{k},1:{k}")] {
            assert!(
                MasterKeys::parse(&SecretString::from(bad.to_owned())).is_err(),
                "{bad}"
            );
        }
        assert!(!format!("{:?}", master(&k)).contains(&k));
    }
}
