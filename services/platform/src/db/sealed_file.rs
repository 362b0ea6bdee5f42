//! Backups sealed as they are written: a backup holds every person's wrapped data key and every
//! purchase record, so it is no less sensitive than the database, and it is copied to places
//! the database never goes (another disk, object storage, an operator's laptop).
//!
//! The file is a header and a run of sealed chunks:
//!
//! ```text
//! "PEXPER-BACKUP-1\n" | backup id (16) | master version (i32 BE) | wrapped key length (u16 BE)
//! | wrapped key | { chunk length (u32 BE) | chunk sealed under the backup key }*
//! ```
//!
//! The backup key is random, made for this file, and stored in it wrapped under the master
//! key (as a person's data key is): without `PEXPER_MASTER_KEY` the file is noise. Each chunk
//! is sealed with the existing AEAD (`DataKey::seal`), bound to the backup (the key's id), to
//! its position (the row) and to whether it is the last one (the column), so chunks cannot be
//! reordered, swapped between backups, or cut off at the end without the file failing to open.

use std::io::{Read, Write};

use anyhow::{Context, bail, ensure};
use uuid::Uuid;

use crate::crypto::{DataKey, Field, Keyring, WrappedKey};

/// The first bytes of a sealed backup.
pub const MAGIC: &[u8; 16] = b"PEXPER-BACKUP-1\n";
/// Plaintext per chunk.
const CHUNK: usize = 64 * 1024;
/// No sealed chunk is longer than a chunk and the seal's overhead; anything longer is refused
/// before it is read.
const MAX_SEALED_CHUNK: usize = CHUNK + 1024;

/// Whether `head` (a file's first bytes) is a sealed backup.
pub fn is_sealed(head: &[u8]) -> bool {
    head.starts_with(MAGIC)
}

fn chunk_field(index: u64, last: bool) -> Field<'static> {
    Field {
        table: "backup",
        column: if last { "last chunk" } else { "chunk" },
        row: Uuid::from_u128(u128::from(index)),
    }
}

/// Reads until `buf` is full or the input ends; how many bytes were read.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Seals everything `input` gives into `output`. Returns the plaintext's length.
pub fn seal(
    keyring: &Keyring,
    mut input: impl Read,
    mut output: impl Write,
) -> anyhow::Result<u64> {
    let id = Uuid::new_v4();
    let (key, wrapped) = keyring.new_data_key(id);
    output.write_all(MAGIC)?;
    output.write_all(id.as_bytes())?;
    output.write_all(&wrapped.master_version.to_be_bytes())?;
    let wrapped_len = u16::try_from(wrapped.bytes.len()).context("wrapped key too long")?;
    output.write_all(&wrapped_len.to_be_bytes())?;
    output.write_all(&wrapped.bytes)?;

    let mut total = 0u64;
    let mut pending = vec![0u8; CHUNK];
    let mut pending_len = fill(&mut input, &mut pending).context("failed to read the dump")?;
    let mut next = vec![0u8; CHUNK];
    for index in 0u64.. {
        // A chunk is the last one when nothing follows it (it may be empty).
        let next_len = if pending_len == CHUNK {
            fill(&mut input, &mut next).context("failed to read the dump")?
        } else {
            0
        };
        let last = next_len == 0;
        let sealed = key.seal(chunk_field(index, last), &pending[..pending_len]);
        output.write_all(&(sealed.len() as u32).to_be_bytes())?;
        output.write_all(&sealed)?;
        total += pending_len as u64;
        if last {
            break;
        }
        std::mem::swap(&mut pending, &mut next);
        pending_len = next_len;
    }
    output.flush()?;
    Ok(total)
}

/// Opens a sealed backup from `input` into `output`, failing at the first chunk that does not
/// open, or if the file ends before its last chunk or goes on after it. Returns the
/// plaintext's length. Write to `std::io::sink()` to check a file without using it.
pub fn open(
    keyring: &Keyring,
    mut input: impl Read,
    mut output: impl Write,
) -> anyhow::Result<u64> {
    let key = read_header(keyring, &mut input)?;
    let mut total = 0u64;
    let mut sealed = Vec::with_capacity(MAX_SEALED_CHUNK);
    for index in 0u64.. {
        let mut len = [0u8; 4];
        ensure!(
            fill(&mut input, &mut len)? == 4,
            "the backup is cut short: it ends before its last part"
        );
        let len = u32::from_be_bytes(len) as usize;
        ensure!(
            len <= MAX_SEALED_CHUNK,
            "the backup is damaged (a part is too long)"
        );
        sealed.resize(len, 0);
        ensure!(
            fill(&mut input, &mut sealed)? == len,
            "the backup is cut short: it ends inside a part"
        );
        // Not the last chunk, or the last: one of the two opens, or the file was changed.
        let (plain, last) = match key.open(chunk_field(index, false), &sealed) {
            Ok(plain) => (plain, false),
            Err(_) => match key.open(chunk_field(index, true), &sealed) {
                Ok(plain) => (plain, true),
                Err(_) => bail!(
                    "the backup does not open: part {index} was changed, moved or is from another file"
                ),
            },
        };
        output
            .write_all(&plain)
            .context("failed to pass the backup on")?;
        total += plain.len() as u64;
        if last {
            let mut extra = [0u8; 1];
            ensure!(
                fill(&mut input, &mut extra)? == 0,
                "the backup is damaged: something follows its last part"
            );
            break;
        }
    }
    output.flush()?;
    Ok(total)
}

fn read_header(keyring: &Keyring, input: &mut impl Read) -> anyhow::Result<DataKey> {
    let mut head = [0u8; 16 + 16 + 4 + 2];
    ensure!(
        fill(input, &mut head)? == head.len() && is_sealed(&head),
        "not a sealed pexper backup"
    );
    let id = Uuid::from_slice(&head[16..32])?;
    let master_version = i32::from_be_bytes(head[32..36].try_into()?);
    let len = u16::from_be_bytes(head[36..38].try_into()?) as usize;
    let mut bytes = vec![0u8; len];
    ensure!(fill(input, &mut bytes)? == len, "the backup is cut short");
    keyring
        .open_data_key(
            id,
            &WrappedKey {
                master_version,
                bytes,
            },
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "the backup's key does not open ({e}): it was sealed under master key version \
                 {master_version}; PEXPER_MASTER_KEY must list that version"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKeys;

    fn new_keyring() -> Keyring {
        Keyring::new(&MasterKeys::parse(&MasterKeys::generate_encoded().into()).expect("a key"))
    }

    fn sealed(keyring: &Keyring, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        seal(keyring, plain, &mut out).expect("sealed");
        out
    }

    #[test]
    fn what_is_sealed_opens_the_same_at_every_length_around_a_chunk() {
        let keyring = new_keyring();
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let file = sealed(&keyring, &plain);
            assert!(is_sealed(&file));
            assert!(
                !file
                    .windows(64)
                    .any(|w| plain.windows(64).next() == Some(w)),
                "no plaintext in the file"
            );
            let mut out = Vec::new();
            assert_eq!(open(&keyring, &file[..], &mut out).ok(), Some(len as u64));
            assert_eq!(out, plain, "length {len}");
        }
    }

    #[test]
    fn a_changed_cut_reordered_or_extended_file_does_not_open() {
        let keyring = new_keyring();
        let plain = vec![7u8; 2 * CHUNK + 10];
        let file = sealed(&keyring, &plain);
        let header = 16 + 16 + 4 + 2 + u16::from_be_bytes([file[36], file[37]]) as usize;
        let part = 4 + u32::from_be_bytes(file[header..header + 4].try_into().expect("four bytes"))
            as usize;
        let fails = |bytes: &[u8], why: &str| {
            assert!(open(&keyring, bytes, std::io::sink()).is_err(), "{why}");
        };
        let mut flipped = file.clone();
        flipped[header + 100] ^= 1;
        fails(&flipped, "a flipped bit");
        fails(&file[..file.len() - 1], "the last byte cut");
        fails(
            &file[..header + 2 * part],
            "the last part cut off at a boundary",
        );
        let mut swapped = file[..header].to_vec();
        swapped.extend_from_slice(&file[header + part..header + 2 * part]);
        swapped.extend_from_slice(&file[header..header + part]);
        swapped.extend_from_slice(&file[header + 2 * part..]);
        fails(&swapped, "two parts swapped");
        let mut extended = file.clone();
        extended.extend_from_slice(&file[header..header + part]);
        fails(&extended, "a part added after the last");
        let other = new_keyring();
        assert!(
            open(&other, &file[..], std::io::sink()).is_err(),
            "another master key"
        );
        let mut spliced = sealed(&keyring, &plain);
        spliced[header..header + part].copy_from_slice(&file[header..header + part]);
        fails(&spliced, "a part from another backup");
    }
}
