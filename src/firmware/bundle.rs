//! Validating a firmware bundle (SPEC §7): a ZIP with exactly `{code}.bin`, `{code}.elf`,
//! `{code}.map`, `sdkconfig` and `version.json` at its root.
//!
//! [`validate`] runs the checks in the order SPEC §7 lists them, each failing with its exact
//! message, then the coherence checks (the ELF's SHA-256 is the one embedded in the image, and
//! `version.json` names the image's version). It is blocking code (the `zip` crate reads through
//! `std::io`); callers run it on a blocking thread.
//!
//! Hostile archives: duplicate names, names with a path (`../x`, `dir/x`), encrypted entries and
//! overlapping entries are refused before anything is decompressed. Every entry's declared size is
//! checked against the limit first (413), and while decompressing no entry may produce more bytes
//! than it declared, so a ZIP bomb stops at the limit instead of filling memory or disk. Entries
//! larger than [`MEMORY_THRESHOLD`] are spooled to an anonymous temporary file.

use std::io::{BufReader, Read, Seek, SeekFrom, Write};

use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::fleet::FirmwareVersion;
use crate::layout::Artifact;

/// Entries up to this size are kept in memory; larger ones go to a temporary file.
pub const MEMORY_THRESHOLD: u64 = 8 * 1024 * 1024;

/// `version.json` is read into memory to be parsed; it is never more than a few hundred bytes.
const MAX_VERSION_JSON: u64 = 1024 * 1024;

/// How many names an error message lists before it says "and N more".
const MAX_LISTED_NAMES: usize = 20;

/// Fields `version.json` must have (SPEC §7 check 7), sorted.
const REQUIRED_VERSION_FIELDS: [&str; 3] = ["firmware_version", "git_commit", "idf_version"];

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A 400 with this message.
    #[error("{0}")]
    Invalid(String),
    /// A 413 with this message (an entry larger than the limit).
    #[error("{0}")]
    TooLarge(String),
    /// Reading the spooled body or writing a temporary file failed: our problem, not the client's.
    #[error("firmware bundle I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

fn invalid(message: impl Into<String>) -> BundleError {
    BundleError::Invalid(message.into())
}

fn invalid_zip(reason: impl std::fmt::Display) -> BundleError {
    BundleError::Invalid(format!("Invalid firmware ZIP: {reason}"))
}

/// The bytes of one extracted entry.
#[derive(Debug)]
pub enum Content {
    Memory(Bytes),
    /// An anonymous temporary file (deleted when dropped), positioned anywhere.
    File(std::fs::File),
}

/// One of the five artifacts, extracted.
#[derive(Debug)]
pub struct Entry {
    pub artifact: Artifact,
    pub size: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    pub content: Content,
    /// Where in the body its bytes came from.
    pub origin: ZipOrigin,
}

/// Where an entry's bytes are in the body and how they decompress: two readers that agree on
/// all of it (the same local header, the same compressed bytes, method, sizes and CRC) produce
/// the same content from the same body (`crate::firmware::early` relies on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZipOrigin {
    /// Offset of the entry's local header from the start of the body.
    pub header_start: u64,
    pub compressed_size: u64,
    pub size: u64,
    pub crc32: u32,
    pub method: zip::CompressionMethod,
}

impl Entry {
    /// What the row records of this artifact.
    pub fn facts(&self) -> ArtifactFacts {
        ArtifactFacts {
            artifact: self.artifact,
            size: self.size,
            sha256: self.sha256.clone(),
        }
    }
}

/// An artifact's size and SHA-256, without its content (which may be on its way to the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactFacts {
    pub artifact: Artifact,
    pub size: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
}

/// A request body as received: in memory when small, else in an anonymous temporary file.
#[derive(Debug)]
pub enum Spool {
    Memory(Bytes),
    File(std::fs::File),
}

/// What [`validate_each`] hands out as soon as it is known good, in this order: the image (with
/// the version and facts its descriptor gives), then the ELF (once it is known to be the image's),
/// `version.json` (once it names the image's version), the map and `sdkconfig`.
#[derive(Debug)]
pub enum Validated {
    Image {
        version: FirmwareVersion,
        app: AppFacts,
        bin: Entry,
    },
    Artifact(Entry),
}

/// How long [`validate_each`] spent hashing entries (SHA-256), part of its whole time, and what
/// [`Coherence::Reported`] let through.
#[derive(Debug, Clone, Default)]
pub struct Validation {
    pub hashing: std::time::Duration,
    /// The coherence checks that failed, when they only report (see [`Coherence`]).
    pub notes: Vec<String>,
}

/// What the checks SPEC §7 adds beyond the Python service do: the `.elf` is the one the image
/// was built from, `version.json` names the image's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coherence {
    /// A mismatch refuses the bundle (uploads).
    Required,
    /// A mismatch is noted and the bundle kept (`migrate-to-s3`: the Python service stored such
    /// bundles, and they are the only copy of those builds).
    Reported,
}

/// What the image says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppFacts {
    pub project_name: String,
    pub idf_version: String,
    pub build_date: String,
    pub build_time: String,
    pub app_elf_sha256: String,
    pub secure_version: u32,
    pub chip: String,
}

/// A bundle that passed every check.
#[derive(Debug)]
pub struct Bundle {
    pub version: FirmwareVersion,
    /// In [`Artifact::ALL`] order.
    pub artifacts: Vec<Entry>,
    pub app: AppFacts,
}

impl Bundle {
    /// The `firmware_versions` row this bundle is recorded as: sizes and hashes in
    /// [`Artifact::ALL`] order, and the app descriptor facts.
    pub fn row(&self) -> crate::db::firmware_versions::NewFirmwareVersion<'_> {
        row(
            &self.version,
            &self.app,
            self.artifacts
                .iter()
                .map(|e| (e.artifact, e.size, e.sha256.as_str())),
        )
    }

    /// The bundle without its contents.
    pub fn facts(&self) -> BundleFacts {
        BundleFacts {
            version: self.version.clone(),
            app: self.app.clone(),
            artifacts: self.artifacts.iter().map(Entry::facts).collect(),
        }
    }
}

/// A validated bundle whose contents went their own way (to the store): what its row records.
#[derive(Debug, Clone)]
pub struct BundleFacts {
    pub version: FirmwareVersion,
    pub app: AppFacts,
    pub artifacts: Vec<ArtifactFacts>,
}

impl BundleFacts {
    /// As [`Bundle::row`].
    pub fn row(&self) -> crate::db::firmware_versions::NewFirmwareVersion<'_> {
        row(
            &self.version,
            &self.app,
            self.artifacts
                .iter()
                .map(|e| (e.artifact, e.size, e.sha256.as_str())),
        )
    }
}

fn row<'a>(
    version: &'a FirmwareVersion,
    app: &'a AppFacts,
    artifacts: impl Iterator<Item = (Artifact, u64, &'a str)> + Clone,
) -> crate::db::firmware_versions::NewFirmwareVersion<'a> {
    let artifacts = Artifact::ALL.map(|wanted| {
        artifacts
            .clone()
            .find(|(artifact, _, _)| *artifact == wanted)
            .map(|(_, size, sha256)| (i64::try_from(size).unwrap_or(i64::MAX), sha256))
            .unwrap_or((0, ""))
    });
    crate::db::firmware_versions::NewFirmwareVersion {
        version: version.as_str(),
        artifacts,
        project_name: &app.project_name,
        idf_version: &app.idf_version,
        build_date: &app.build_date,
        build_time: &app.build_time,
        app_elf_sha256: &app.app_elf_sha256,
        secure_version: i64::from(app.secure_version),
        chip: &app.chip,
    }
}

/// The entry names of a bundle for model `code`, with the artifact each becomes.
fn expected_entries(code: &str) -> [(String, Artifact); 5] {
    Artifact::ALL.map(|artifact| (artifact.bundle_entry(code), artifact))
}

fn list_names(mut names: Vec<String>) -> String {
    names.sort();
    let more = names.len().saturating_sub(MAX_LISTED_NAMES);
    names.truncate(MAX_LISTED_NAMES);
    let mut text = names.join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// A name as shown in a message: printable, bounded.
fn shown(name: &str) -> String {
    let short: String = name.chars().take(100).collect();
    if short.chars().any(char::is_control) {
        format!("{short:?}")
    } else {
        short
    }
}

/// Validates the bundle in `spool` (the whole request body) for the model `code`. Entries may
/// be at most `max_entry_bytes` uncompressed. Also returns the notes of [`Coherence::Reported`].
pub fn validate(
    spool: std::fs::File,
    code: &str,
    max_entry_bytes: u64,
    coherence: Coherence,
) -> Result<(Bundle, Vec<String>), BundleError> {
    let mut image = None;
    let mut others = Vec::new();
    let validation = validate_spool(
        Spool::File(spool),
        code,
        max_entry_bytes,
        coherence,
        &mut |validated| {
            match validated {
                Validated::Image { version, app, bin } => image = Some((version, app, bin)),
                Validated::Artifact(entry) => others.push(entry),
            }
            Ok(())
        },
    )?;
    let Some((version, app, bin)) = image else {
        return Err(invalid_zip("no image"));
    };
    let mut artifacts = vec![bin];
    artifacts.extend(others);
    artifacts.sort_by_key(|e| Artifact::ALL.iter().position(|a| *a == e.artifact));
    let bundle = Bundle {
        version,
        artifacts,
        app,
    };
    Ok((bundle, validation.notes))
}

/// Validates the bundle in `spool` for the model `code` (checks in SPEC order, as [`validate`])
/// and hands each artifact to `emit` as soon as every check that concerns it has passed (see
/// [`Validated`]), so the caller can store it while the rest is still being checked. An error
/// from `emit` stops the validation and is returned. When this returns an error, what was
/// emitted must not be kept.
pub fn validate_each(
    spool: Spool,
    code: &str,
    max_entry_bytes: u64,
    emit: &mut dyn FnMut(Validated) -> Result<(), BundleError>,
) -> Result<Validation, BundleError> {
    validate_spool(spool, code, max_entry_bytes, Coherence::Required, emit)
}

fn validate_spool(
    spool: Spool,
    code: &str,
    max_entry_bytes: u64,
    coherence: Coherence,
    emit: &mut dyn FnMut(Validated) -> Result<(), BundleError>,
) -> Result<Validation, BundleError> {
    match spool {
        Spool::Memory(bytes) => validate_reader(
            std::io::Cursor::new(bytes),
            code,
            max_entry_bytes,
            coherence,
            emit,
        ),
        Spool::File(file) => {
            validate_reader(BufReader::new(file), code, max_entry_bytes, coherence, emit)
        }
    }
}

fn validate_reader<R: Read + Seek>(
    mut spool: R,
    code: &str,
    max_entry_bytes: u64,
    coherence: Coherence,
    emit: &mut dyn FnMut(Validated) -> Result<(), BundleError>,
) -> Result<Validation, BundleError> {
    let mut hashing = std::time::Duration::ZERO;
    // 1. empty body
    let len = spool.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Err(invalid("No firmware content provided"));
    }
    // 2. not a ZIP
    spool.seek(SeekFrom::Start(0))?;
    let mut magic = [0u8; 4];
    let got = read_up_to(&mut spool, &mut magic)?;
    if got < 4 || magic != *b"PK\x03\x04" {
        return Err(invalid("Firmware must be uploaded as a ZIP bundle"));
    }
    spool.seek(SeekFrom::Start(0))?;

    // 3. unreadable ZIP, and archives we refuse to open further.
    refuse_huge_directory(&mut spool, len)?;
    spool.seek(SeekFrom::Start(0))?;
    let mut archive = zip::ZipArchive::new(spool).map_err(invalid_zip)?;
    if archive.has_duplicate_names() {
        return Err(invalid_zip("duplicate entry names"));
    }
    let mut names = Vec::with_capacity(archive.len());
    for index in 0..archive.len() {
        let entry = archive.by_index_data(index).map_err(invalid_zip)?;
        let name = entry.name().map_err(invalid_zip)?.into_owned();
        if name.contains('/') || name.contains('\\') || name.contains("..") {
            return Err(invalid_zip(format!(
                "entry names must not contain a path: {}",
                shown(&name)
            )));
        }
        if entry.encrypted() {
            return Err(invalid_zip(format!(
                "{} is encrypted; encrypted entries are not accepted",
                shown(&name)
            )));
        }
        names.push((name, entry.size()));
    }
    if archive.has_overlapping_entries().map_err(invalid_zip)? {
        return Err(invalid_zip("entries overlap (not a well-formed archive)"));
    }

    // 4. missing entries, 5. unexpected entries.
    let expected = expected_entries(code);
    let missing: Vec<String> = expected
        .iter()
        .filter(|(name, _)| !names.iter().any(|(n, _)| n == name))
        .map(|(name, _)| name.clone())
        .collect();
    if !missing.is_empty() {
        return Err(invalid_zip(format!("missing {}", list_names(missing))));
    }
    let unexpected: Vec<String> = names
        .iter()
        .filter(|(n, _)| !expected.iter().any(|(name, _)| name == n))
        .map(|(n, _)| shown(n))
        .collect();
    if !unexpected.is_empty() {
        return Err(invalid_zip(format!(
            "unexpected files: {}",
            list_names(unexpected)
        )));
    }
    // The limit on each entry, by its declared size, before anything is decompressed.
    for (name, size) in &names {
        if *size > max_entry_bytes {
            return Err(BundleError::TooLarge(format!(
                "Invalid firmware ZIP: {name} is {size} bytes uncompressed, more than the limit of {max_entry_bytes} bytes (MAX_FIRMWARE_BYTES)"
            )));
        }
    }

    let mut extract = |entry: &str, object: Artifact, limit: u64, hash: bool| {
        extract_entry(&mut archive, entry, object, limit, hash, &mut hashing)
    };

    // 6. version.json is a JSON object, 7. with the required fields.
    let version_json = extract(
        &expected[4].0,
        Artifact::VersionJson,
        MAX_VERSION_JSON,
        true,
    )?;
    let manifest = parse_version_json(memory_bytes(&version_json))?;

    // 8. the .bin is an ESP application image.
    // Hashed below, in the same pass as the image's appended SHA-256.
    let mut bin = extract(&expected[0].0, Artifact::Bin, max_entry_bytes, false)?;
    let image_bytes = match &bin.content {
        Content::Memory(bytes) => bytes.clone(),
        Content::File(_) => read_all(&bin)?,
    };
    let mut whole = None;
    let mut image_hashing = std::time::Duration::ZERO;
    let image = esp_image::parse_app_image_with(&image_bytes, &mut |covered| {
        let started = std::time::Instant::now();
        let mut hasher = Sha256::new();
        hasher.update(covered);
        let digest = hasher.clone().finalize().into();
        if let Some(rest) = image_bytes.get(covered.len()..) {
            hasher.update(rest);
            whole = Some(hasher.finalize());
        }
        image_hashing += started.elapsed();
        digest
    })
    .map_err(|e| invalid(e.to_string()))?;
    let whole = whole.unwrap_or_else(|| {
        let started = std::time::Instant::now();
        let digest = Sha256::digest(&image_bytes);
        image_hashing += started.elapsed();
        digest
    });
    bin.sha256 = hex::encode(whole);
    if !image.checksum_valid {
        return Err(invalid(format!(
            "Invalid firmware: checksum mismatch (stored 0x{:02X}, calculated 0x{:02X})",
            image.checksum.stored, image.checksum.calculated
        )));
    }
    if image.sha256_valid == Some(false) {
        return Err(invalid(
            "Invalid firmware: the appended SHA-256 does not match the image",
        ));
    }
    let desc = &image.app_desc;

    // 9. the version is a safe key component.
    let version = FirmwareVersion::parse(&desc.version).map_err(invalid)?;

    let embedded = desc.app_elf_sha256_hex();
    let image_version = desc.version.clone();
    let app = AppFacts {
        project_name: desc.project_name.clone(),
        idf_version: desc.idf_ver.clone(),
        build_date: desc.date.clone(),
        build_time: desc.time.clone(),
        app_elf_sha256: embedded.clone(),
        secure_version: desc.secure_version,
        chip: image
            .chip()
            .map(|c| c.name().to_string())
            .unwrap_or_default(),
    };
    drop(image);
    drop(image_bytes);
    emit(Validated::Image { version, app, bin })?;

    // Coherence: the ELF is the one the image was made from, version.json describes this image.
    let mut notes = Vec::new();
    let mut incoherent = |reason: String| match coherence {
        Coherence::Required => Err(invalid_zip(reason)),
        Coherence::Reported => {
            notes.push(reason);
            Ok(())
        }
    };
    let elf = extract(&expected[1].0, Artifact::Elf, max_entry_bytes, true)?;
    if elf.sha256 != embedded {
        incoherent(format!(
            "{code}.elf does not belong to {code}.bin: its SHA-256 is {} but the image was built from an ELF with SHA-256 {embedded}",
            elf.sha256
        ))?;
    }
    emit(Validated::Artifact(elf))?;
    let declared = manifest
        .get("firmware_version")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| manifest["firmware_version"].to_string());
    if declared != image_version {
        incoherent(format!(
            "version.json firmware_version {declared:?} does not match the image version {image_version:?}"
        ))?;
    }
    emit(Validated::Artifact(version_json))?;

    let map = extract(&expected[2].0, Artifact::Map, max_entry_bytes, true)?;
    emit(Validated::Artifact(map))?;
    let sdkconfig = extract(&expected[3].0, Artifact::Sdkconfig, max_entry_bytes, true)?;
    emit(Validated::Artifact(sdkconfig))?;
    Ok(Validation {
        hashing: hashing + image_hashing,
        notes,
    })
}

fn memory_bytes(artifact: &Entry) -> &[u8] {
    match &artifact.content {
        Content::Memory(bytes) => bytes,
        Content::File(_) => &[],
    }
}

fn parse_version_json(bytes: &[u8]) -> Result<Value, BundleError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| invalid_zip(format!("version.json is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(invalid_zip(
            "version.json is not valid JSON: expected a JSON object",
        ));
    }
    let missing: Vec<String> = REQUIRED_VERSION_FIELDS
        .iter()
        .filter(|field| value.get(**field).is_none_or(Value::is_null))
        .map(|field| field.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(invalid_zip(format!(
            "version.json missing fields: {}",
            missing.join(", ")
        )));
    }
    Ok(value)
}

/// Reads until `buf` is full or `reader` ends; how many bytes it read.
/// The most entries a bundle's central directory may declare (a bundle has five; more are
/// named in the "unexpected files" error up to this).
const MAX_ENTRIES: u64 = 1000;
/// The largest central directory a bundle may declare (five entries take a few hundred bytes).
const MAX_DIRECTORY_BYTES: u64 = 1024 * 1024;

/// Refuses an archive whose end-of-central-directory record declares more than [`MAX_ENTRIES`]
/// entries or a central directory over [`MAX_DIRECTORY_BYTES`], before the zip crate reads the
/// directory into memory: a 64 MiB body can declare over a million tiny entries, a few hundred
/// bytes of memory each. Every candidate record in the archive's tail is checked (the zip crate
/// settles on one of them), with its ZIP64 record where it points to one. Hand-written: the zip
/// crate has no such limit.
fn refuse_huge_directory<R: Read + Seek>(spool: &mut R, len: u64) -> Result<(), BundleError> {
    const EOCD: [u8; 4] = *b"PK\x05\x06";
    const EOCD_LEN: usize = 22;
    // The record is at most a 64 KiB comment away from the end; the zip crate looks a little
    // further (it tolerates bytes after the comment), so this looks further still.
    let tail_len = len.min(66 * 1024);
    let tail_start = len - tail_len;
    spool.seek(SeekFrom::Start(tail_start))?;
    let mut tail = vec![0u8; usize::try_from(tail_len).unwrap_or(0)];
    let got = read_up_to(spool, &mut tail)?;
    tail.truncate(got);
    let too_big = |entries: u64, bytes: u64| {
        if entries > MAX_ENTRIES {
            Err(invalid_zip(format!(
                "the archive declares {entries} entries; a bundle has five"
            )))
        } else if bytes > MAX_DIRECTORY_BYTES {
            Err(invalid_zip(format!(
                "the archive's central directory is {bytes} bytes; a bundle's takes a few hundred"
            )))
        } else {
            Ok(())
        }
    };
    let le16 = |b: &[u8], at: usize| b.get(at..at + 2).map(|x| u16::from_le_bytes([x[0], x[1]]));
    let le32 = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
    };
    let le64 = |b: &[u8], at: usize| {
        b.get(at..at + 8).map(|x| {
            let mut a = [0u8; 8];
            a.copy_from_slice(x);
            u64::from_le_bytes(a)
        })
    };
    let mut found = false;
    for at in (0..tail.len().saturating_sub(EOCD_LEN - 1)).rev() {
        if !tail[at..].starts_with(&EOCD) {
            continue;
        }
        let field16 = |offset| le16(&tail, at + offset);
        let (Some(disk), Some(cd_disk), Some(on_disk), Some(entries), Some(bytes)) = (
            field16(4),
            field16(6),
            field16(8),
            field16(10),
            le32(&tail, at + 12),
        ) else {
            continue;
        };
        let (Some(offset), Some(comment)) = (le32(&tail, at + 16), field16(20)) else {
            continue;
        };
        // The comment within the file, as the zip crate requires (else it is not a record).
        if usize::from(comment) > tail.len() - at - EOCD_LEN {
            continue;
        }
        // ZIP64 when a count or offset is saturated and a locator sits right before the record,
        // as the zip crate decides; it then reads the counts from the ZIP64 record and looks at
        // none of this record's other fields, so neither may this check skip it for them.
        let may_be_zip64 = entries == u16::MAX || bytes == u32::MAX || offset == u32::MAX;
        let locator = at
            .checked_sub(20)
            .filter(|l| may_be_zip64 && tail[*l..].starts_with(b"PK\x06\x07"));
        let Some(l) = locator else {
            // Otherwise only a record the crate would take (one disk): the same four bytes
            // inside an entry's data near the end are not a reason to refuse.
            if disk != 0 || cd_disk != 0 || on_disk != entries {
                continue;
            }
            found = true;
            too_big(u64::from(entries), u64::from(bytes))?;
            continue;
        };
        found = true;
        let locator_at = tail_start + l as u64;
        let (Some(record_disk), Some(record_at)) = (le32(&tail, l + 4), le64(&tail, l + 8)) else {
            return Err(invalid_zip("the archive's ZIP64 end record is missing"));
        };
        let mut record = [0u8; 56];
        let readable = record_at.saturating_add(56) <= locator_at;
        if readable {
            spool.seek(SeekFrom::Start(record_at))?;
        }
        let complete = readable && read_up_to(spool, &mut record)? == 56;
        let field32 = |offset| le32(&record, offset);
        let field64 = |offset| le64(&record, offset);
        // Every check the zip crate makes of the record the locator names. Were one of them to
        // fail, the crate would look for another ZIP64 record between the two (one this check
        // never saw), so a record it would not take is refused here.
        let counts = match (
            field32(16),
            field32(20),
            field64(24),
            field64(32),
            field64(40),
            field64(48),
        ) {
            (Some(0), Some(cd_disk64), Some(on_disk64), Some(total), Some(size), Some(start))
                if complete
                    && record.starts_with(b"PK\x06\x06")
                    && cd_disk64 == record_disk
                    && on_disk64 == total
                    && field64(4).and_then(|n| n.checked_add(12))
                        == Some(locator_at - record_at)
                    && total.saturating_mul(46).saturating_add(start) <= record_at =>
            {
                Some((total, size))
            }
            _ => None,
        };
        match counts {
            Some((entries, bytes)) => too_big(entries, bytes)?,
            None => {
                return Err(invalid_zip(
                    "the archive's ZIP64 end record is inconsistent",
                ))
            }
        }
    }
    if !found {
        return Err(invalid_zip("no end-of-central-directory record"));
    }
    Ok(())
}

pub(super) fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn read_all(artifact: &Entry) -> Result<Bytes, BundleError> {
    match &artifact.content {
        Content::Memory(bytes) => Ok(bytes.clone()),
        Content::File(file) => {
            let mut file = file.try_clone()?;
            file.seek(SeekFrom::Start(0))?;
            let mut out = Vec::with_capacity(usize::try_from(artifact.size).unwrap_or(0));
            file.read_to_end(&mut out)?;
            Ok(out.into())
        }
    }
}

enum Sink {
    Memory(Vec<u8>),
    File(std::io::BufWriter<std::fs::File>),
}

/// Decompresses one entry, hashing it when `hash` (else its `sha256` is left empty for the
/// caller), into memory or a temporary file. The entry may not yield more bytes than it
/// declared (nor more than `limit`), and must yield exactly as many.
fn extract_entry<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    entry_name: &str,
    artifact: Artifact,
    limit: u64,
    hash: bool,
    hashing: &mut std::time::Duration,
) -> Result<Entry, BundleError> {
    let mut entry = archive.by_name(entry_name).map_err(invalid_zip)?;
    let declared = entry.size();
    // `header_start` counts from the start of the body, also when the archive is preceded by
    // other data (the zip crate adds that offset).
    let origin = ZipOrigin {
        header_start: entry.header_start(),
        compressed_size: entry.compressed_size(),
        size: declared,
        crc32: entry.crc32(),
        method: entry.compression(),
    };
    if declared > limit {
        // version.json has a fixed limit of its own, which no setting raises.
        let setting = match artifact {
            Artifact::VersionJson => "for version.json",
            _ => "(MAX_FIRMWARE_BYTES)",
        };
        return Err(BundleError::TooLarge(format!(
            "Invalid firmware ZIP: {entry_name} is {declared} bytes uncompressed, more than the limit of {limit} bytes {setting}"
        )));
    }
    let mut sink = if declared <= MEMORY_THRESHOLD {
        Sink::Memory(Vec::with_capacity(usize::try_from(declared).unwrap_or(0)))
    } else {
        Sink::File(std::io::BufWriter::new(tempfile::tempfile()?))
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(invalid_zip(format!("cannot read {entry_name}: {e}"))),
        };
        total += n as u64;
        if total > declared {
            return Err(invalid_zip(format!(
                "{entry_name} is larger than its declared size of {declared} bytes"
            )));
        }
        let chunk = &buf[..n];
        if hash {
            let started = std::time::Instant::now();
            hasher.update(chunk);
            *hashing += started.elapsed();
        }
        match &mut sink {
            Sink::Memory(v) => v.extend_from_slice(chunk),
            Sink::File(w) => w.write_all(chunk)?,
        }
    }
    if total != declared {
        return Err(invalid_zip(format!(
            "{entry_name} is {total} bytes, not the declared {declared}"
        )));
    }
    let content = match sink {
        Sink::Memory(v) => Content::Memory(v.into()),
        Sink::File(w) => Content::File(w.into_inner().map_err(|e| e.into_error())?),
    };
    Ok(Entry {
        artifact,
        size: total,
        sha256: if hash {
            hex::encode(hasher.finalize())
        } else {
            String::new()
        },
        content,
        origin,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn spool(bytes: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn message(result: Result<(Bundle, Vec<String>), BundleError>) -> String {
        match result {
            Err(BundleError::Invalid(m)) => m,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn the_first_checks_need_no_zip_reader() {
        assert_eq!(
            message(validate(spool(b""), "m", 1024, Coherence::Required)),
            "No firmware content provided"
        );
        for not_zip in [&b"\xE9\x03"[..], b"PK", b"{\"a\": 1}"] {
            assert_eq!(
                message(validate(spool(not_zip), "m", 1024, Coherence::Required)),
                "Firmware must be uploaded as a ZIP bundle"
            );
        }
        assert!(message(validate(
            spool(b"PK\x03\x04junk"),
            "m",
            1024,
            Coherence::Required
        ))
        .starts_with("Invalid firmware ZIP: "));
    }

    /// An end-of-central-directory record: `entries` on this disk and in all, the directory's
    /// size and offset, and a comment of `comment` bytes.
    fn eocd(disk: u16, entries: u16, size: u32, offset: u32, comment: u16) -> Vec<u8> {
        let mut r = b"PK\x05\x06".to_vec();
        for v in [disk, disk, entries, entries] {
            r.extend_from_slice(&v.to_le_bytes());
        }
        r.extend_from_slice(&size.to_le_bytes());
        r.extend_from_slice(&offset.to_le_bytes());
        r.extend_from_slice(&comment.to_le_bytes());
        r.extend(std::iter::repeat_n(b' ', usize::from(comment)));
        r
    }

    fn guard(bytes: &[u8]) -> Result<(), String> {
        refuse_huge_directory(&mut std::io::Cursor::new(bytes), bytes.len() as u64)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_directory_guard_reads_the_end_records_the_zip_crate_would() {
        let five = eocd(0, 5, 300, 1000, 0);
        assert_eq!(guard(&[vec![0u8; 64], five.clone()].concat()), Ok(()));
        // The same four bytes inside data, not a record one disk could hold: not a reason.
        let noise = [b"PK\x05\x06".as_slice(), &[1, 0, 2, 0, 9, 9, 7, 7]].concat();
        assert_eq!(guard(&[noise.clone(), five.clone()].concat()), Ok(()));
        assert!(guard(&noise)
            .unwrap_err()
            .contains("no end-of-central-directory record"));
        // Many entries, with a full-length comment and bytes after it (the zip crate accepts
        // those too).
        let many = [eocd(0, 2000, 300, 1000, u16::MAX), vec![0u8; 3]].concat();
        assert!(guard(&many).unwrap_err().contains("declares 2000 entries"));
        // Saturated without a locator before it: the zip crate reads it as it is.
        let saturated = eocd(0, u16::MAX, 300, u32::MAX, 0);
        assert!(guard(&saturated)
            .unwrap_err()
            .contains("declares 65535 entries"));
        // With a locator whose record is not there: refused rather than searched for.
        let saturated = eocd(0, 5, 300, u32::MAX, 0);
        let decoy = [vec![0u8; 100], locator(0), saturated].concat();
        assert!(guard(&decoy)
            .unwrap_err()
            .contains("ZIP64 end record is inconsistent"));
    }

    /// A ZIP64 end-of-central-directory locator pointing to a record at `record_at`.
    fn locator(record_at: u64) -> Vec<u8> {
        [
            b"PK\x06\x07".as_slice(),
            &[0; 4],
            &record_at.to_le_bytes(),
            &[1, 0, 0, 0],
        ]
        .concat()
    }

    /// A ZIP64 end-of-central-directory record: on disk `disk`, `entries` in all, the directory
    /// at offset 0.
    fn zip64_record(disk: u32, entries: u64) -> Vec<u8> {
        let mut r = b"PK\x06\x06".to_vec();
        r.extend_from_slice(&44u64.to_le_bytes());
        r.extend_from_slice(&[45, 0, 45, 0]);
        r.extend_from_slice(&disk.to_le_bytes());
        r.extend_from_slice(&0u32.to_le_bytes());
        for v in [entries, entries, 46 * entries, 0] {
            r.extend_from_slice(&v.to_le_bytes());
        }
        r
    }

    #[test]
    fn a_zip64_directory_behind_a_record_the_guard_would_skip_is_refused() {
        // The last record names no disk's count (0 of 65535 on this disk): the zip crate reads
        // it as ZIP64 all the same, from the record its locator names, and an earlier record
        // that declares five entries is not the one it uses.
        let mut last = b"PK\x05\x06".to_vec();
        for v in [0u16, 0, 0, u16::MAX] {
            last.extend_from_slice(&v.to_le_bytes());
        }
        last.extend_from_slice(&u32::MAX.to_le_bytes());
        last.extend_from_slice(&u32::MAX.to_le_bytes());
        last.extend_from_slice(&0u16.to_le_bytes());
        // The directory those entries would take lies before the record, as the crate checks.
        let entries = 2000;
        let pad = vec![0u8; 46 * 2000 + 10];
        let decoy = eocd(0, 5, 300, 1000, 0);
        let record_at = (pad.len() + decoy.len()) as u64;
        let archive = |record: Vec<u8>| {
            [
                pad.clone(),
                decoy.clone(),
                record,
                locator(record_at),
                last.clone(),
            ]
            .concat()
        };
        assert!(guard(&archive(zip64_record(0, entries)))
            .unwrap_err()
            .contains("declares 2000 entries"));
        assert_eq!(guard(&archive(zip64_record(0, 5))), Ok(()));
        // A record the crate would not take (another disk) is refused: the crate would search
        // for another one that this check never saw.
        assert!(guard(&archive(zip64_record(1, 5)))
            .unwrap_err()
            .contains("ZIP64 end record is inconsistent"));
    }

    #[test]
    fn name_lists_are_sorted_and_bounded() {
        assert_eq!(list_names(vec!["b".into(), "a".into()]), "a, b");
        let many: Vec<String> = (0..25).map(|i| format!("f{i:02}")).collect();
        let text = list_names(many);
        assert!(text.starts_with("f00, f01"), "{text}");
        assert!(text.ends_with("f19 and 5 more"), "{text}");
        assert_eq!(shown("a\nb"), "\"a\\nb\"");
    }

    #[test]
    fn version_json_must_be_an_object_with_the_three_fields() {
        let err = |bytes: &[u8]| match parse_version_json(bytes) {
            Err(BundleError::Invalid(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(err(b"nope").starts_with("Invalid firmware ZIP: version.json is not valid JSON: "));
        assert_eq!(
            err(b"\"text\""),
            "Invalid firmware ZIP: version.json is not valid JSON: expected a JSON object"
        );
        assert_eq!(
            err(br#"{"idf_version": "v5", "git_commit": null}"#),
            "Invalid firmware ZIP: version.json missing fields: firmware_version, git_commit"
        );
        assert!(parse_version_json(
            br#"{"idf_version": "v5", "git_commit": "abc", "firmware_version": "1"}"#
        )
        .is_ok());
    }
}
