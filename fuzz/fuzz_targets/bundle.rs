//! Fuzz target: the firmware bundle validator (`iotsupport::firmware::bundle::validate`, SPEC §7)
//! on an arbitrary request body. It must never panic, hang or run out of memory, and a bundle it
//! accepts must be consistent with the ZIP it came from.
//!
//! The body goes into a spooled file, as the upload handler hands it over (one anonymous temporary
//! file per process, rewritten for each input), with the service's default limit of 64 MiB.
//!
//! Before that, the CRC-32 of every stored (uncompressed) entry is recomputed and written into its
//! central directory and local headers. Without this almost every mutation of an entry's content
//! stops at the ZIP reader's CRC check, and `version.json`'s parser, the ESP image parser and the
//! coherence checks behind it are never reached. Mutations of the ZIP structure itself still get
//! through unchanged. Seed it with small bundles of stored entries (scripts/fuzz_seeds.py).
//!
//! Run with `cargo +nightly fuzz run bundle` from `fuzz/`, or `scripts/fuzz.sh`.
#![no_main]

use std::cell::RefCell;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

use iotsupport::firmware::bundle::{self, BundleError, Coherence, Content};
use libfuzzer_sys::fuzz_target;

/// The model code the bundles are for: entries `fuzz.bin`, `fuzz.elf`, `fuzz.map`.
const CODE: &str = "fuzz";

/// `MAX_FIRMWARE_BYTES`' default, the per-entry limit the upload passes.
const LIMIT: u64 = 64 * 1024 * 1024;

thread_local! {
    static SPOOL: RefCell<Option<File>> = const { RefCell::new(None) };
}

/// A handle on the per-process spool file holding `body`, positioned at its end (as the upload
/// leaves it after writing the body).
fn spool(body: &[u8]) -> File {
    SPOOL.with(|cell| {
        let mut slot = cell.borrow_mut();
        let file = slot.get_or_insert_with(|| tempfile::tempfile().expect("a temporary file"));
        file.set_len(0).expect("truncate the spool");
        file.seek(SeekFrom::Start(0)).expect("rewind the spool");
        file.write_all(body).expect("write the spool");
        file.try_clone().expect("duplicate the spool handle")
    })
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(u16::from_le_bytes(
        b.get(at..at + 2)?.try_into().ok()?,
    )))
}

fn u32_at(b: &[u8], at: usize) -> Option<usize> {
    usize::try_from(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?)).ok()
}

/// Recomputes the CRC-32 of every stored entry listed in the central directory (found through
/// the last end-of-central-directory record) and writes it into the entry's central and local
/// headers. Anything that does not add up is left alone.
fn fix_stored_crcs(zip: &mut [u8]) {
    let Some(eocd) = zip.windows(4).rposition(|w| w == b"PK\x05\x06") else {
        return;
    };
    let (Some(count), Some(mut at)) = (u16_at(zip, eocd + 10), u32_at(zip, eocd + 16)) else {
        return;
    };
    for _ in 0..count {
        if zip.get(at..at + 4) != Some(b"PK\x01\x02") {
            return;
        }
        let (Some(method), Some(size), Some(name), Some(extra), Some(comment), Some(local)) = (
            u16_at(zip, at + 10),
            u32_at(zip, at + 20),
            u16_at(zip, at + 28),
            u16_at(zip, at + 30),
            u16_at(zip, at + 32),
            u32_at(zip, at + 42),
        ) else {
            return;
        };
        if method == 0 && zip.get(local..local + 4) == Some(b"PK\x03\x04") {
            if let (Some(local_name), Some(local_extra)) =
                (u16_at(zip, local + 26), u16_at(zip, local + 28))
            {
                let start = local + 30 + local_name + local_extra;
                if let Some(data) = zip.get(start..start.saturating_add(size)) {
                    let crc = crc32fast::hash(data).to_le_bytes();
                    zip[at + 16..at + 20].copy_from_slice(&crc);
                    zip[local + 14..local + 18].copy_from_slice(&crc);
                }
            }
        }
        at += 46 + name + extra + comment;
    }
}

fuzz_target!(|data: &[u8]| {
    let mut body = data.to_vec();
    fix_stored_crcs(&mut body);
    match bundle::validate(spool(&body), CODE, LIMIT, Coherence::Required) {
        Ok((bundle, notes)) => {
            assert!(notes.is_empty(), "the required checks only refuse");
            assert_eq!(bundle.artifacts.len(), 5);
            assert!(!bundle.version.as_str().is_empty());
            for entry in &bundle.artifacts {
                let len = match &entry.content {
                    Content::Memory(bytes) => bytes.len() as u64,
                    Content::File(file) => {
                        let mut file = file.try_clone().expect("duplicate an entry file");
                        file.seek(SeekFrom::Start(0)).expect("rewind an entry file");
                        let mut all = Vec::new();
                        file.read_to_end(&mut all).expect("read an entry file");
                        all.len() as u64
                    }
                };
                assert_eq!(entry.size, len, "{:?}", entry.artifact);
                assert!(entry.size <= LIMIT);
            }
            let _ = bundle.row();
        }
        Err(BundleError::Invalid(message) | BundleError::TooLarge(message)) => {
            assert!(!message.is_empty());
        }
        Err(BundleError::Io(e)) => panic!("spool I/O failed: {e}"),
    }
});
