//! Pages, entries, and Espressif's rule for where an entry goes.
//!
//! [`ImageWriter`] fills a partition-sized buffer of `0xFF` (erased flash)
//! page by page, in the order and with the placement rule of
//! `esp-idf-nvs-partition-gen` 0.2.0 (`Page.write_varlen_data`,
//! `NVS.create_new_page`). It trusts its caller (`crate::provisioning_image`)
//! to have checked sizes, keys and value lengths; it does no validation of its
//! own except running out of pages. Every write goes through
//! [`ImageWriter::put`], which copies with a zipped iterator, so even a wrong
//! offset could not make it panic.

use crate::PAGE_SIZE;

/// Bytes in one entry (the page header and the bitmap are one entry each).
pub(crate) const ENTRY_SIZE: usize = 32;
/// Entries after the header and the bitmap: (4096 - 64) / 32.
pub(crate) const ENTRIES_PER_PAGE: usize = 126;
/// Where the entry-state bitmap starts in a page.
const BITMAP_OFFSET: usize = 32;
/// Where entry 0 starts in a page.
const FIRST_ENTRY_OFFSET: usize = 64;

/// Page state of the page being written to.
const PAGE_STATE_ACTIVE: u32 = 0xFFFF_FFFE;
/// Page state of a page the generator has moved on from.
const PAGE_STATE_FULL: u32 = 0xFFFF_FFFC;
/// Format version 2 (multi-page blobs); version 1 is 0xFF.
const PAGE_VERSION_2: u8 = 0xFE;

/// Item type of the namespace entry (a `u8` holding the namespace's index).
const ITEM_TYPE_U8: u8 = 0x01;
/// Item type of a NUL-terminated string.
const ITEM_TYPE_SZ: u8 = 0x21;
/// Chunk index of every entry that is not part of a multi-page blob.
const CHUNK_ANY: u8 = 0xFF;

/// The CRC-32 NVS uses everywhere: Python's `zlib.crc32(data, 0xFFFFFFFF)`,
/// the same as ESP-IDF's `esp_rom_crc32_le(0xFFFFFFFF, …)`. That is the
/// IEEE CRC-32 resumed from the value 0xFFFFFFFF rather than started from 0,
/// which is exactly what crc32fast's `new_with_initial` means.
pub(crate) fn nvs_crc32(parts: &[&[u8]]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(0xFFFF_FFFF);
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize()
}

/// The entry needs a new page and the partition has none left.
#[derive(Debug)]
pub(crate) struct OutOfPages;

/// Writes pages into a partition-sized image.
pub(crate) struct ImageWriter {
    image: Vec<u8>,
    /// Pages in the partition.
    page_count: usize,
    /// The page being written to.
    page: usize,
    /// Entries used in that page.
    used: usize,
}

impl ImageWriter {
    /// An erased partition of `partition_size` bytes (a multiple of
    /// [`PAGE_SIZE`], at least one page) with page 0 started.
    pub(crate) fn new(partition_size: usize) -> Self {
        let mut writer = ImageWriter {
            image: vec![0xFF; partition_size],
            page_count: partition_size / PAGE_SIZE,
            page: 0,
            used: 0,
        };
        writer.write_page_header();
        writer
    }

    /// The finished image. Pages that were never started stay `0xFF`: with
    /// `read_only=True` the generator writes neither empty pages nor the
    /// reserved page, and the Python service padded its output with `0xFF`.
    pub(crate) fn finish(self) -> Vec<u8> {
        self.image
    }

    /// Writes the namespace entry: namespace 0, type `u8`, the namespace's
    /// name as the key and its index as the value.
    ///
    /// Only called first, on the fresh page 0, so the generator's rule for
    /// primitives (a new page only when all 126 entries are used) never
    /// applies here.
    pub(crate) fn write_namespace(&mut self, name: &str, index: u8) {
        let mut entry = entry_header(0, ITEM_TYPE_U8, 1, name);
        entry[24] = index;
        seal_entry(&mut entry);
        self.append(&entry, &[], 1);
    }

    /// Writes a string entry: a header entry, then `value` and a NUL over as
    /// many further entries as they need, unused bytes left `0xFF`.
    ///
    /// Placement is Espressif's: if the entry (header plus data) would reach
    /// the end of the page, *including exactly filling it*, it goes to the
    /// next page. `Page.write_varlen_data` tests `entry_num + span >= 126`,
    /// so the last entry of a page is never used by a string (a runtime NVS
    /// library such as the `esp-nvs` crate does use it). The caller has made
    /// sure the span is below 126, so the entry always fits on a fresh page.
    pub(crate) fn write_string(
        &mut self,
        namespace_index: u8,
        key: &str,
        value: &str,
    ) -> Result<(), OutOfPages> {
        // The stored size counts the terminating NUL.
        let size = value.len().saturating_add(1);
        let data_entries = size.div_ceil(ENTRY_SIZE);
        let span = data_entries.saturating_add(1);
        if self.used.saturating_add(span) >= ENTRIES_PER_PAGE {
            self.start_next_page()?;
        }
        // span < 126 and size <= 4000, both checked by the caller.
        let mut entry = entry_header(namespace_index, ITEM_TYPE_SZ, span as u8, key);
        entry[24..26].copy_from_slice(&(size as u16).to_le_bytes());
        entry[26..28].copy_from_slice(&[0xFF, 0xFF]);
        let data_crc = nvs_crc32(&[value.as_bytes(), &[0]]);
        entry[28..32].copy_from_slice(&data_crc.to_le_bytes());
        seal_entry(&mut entry);
        let data_offset = self.entry_offset(self.used.saturating_add(1));
        self.append(&entry, value.as_bytes(), span);
        // The NUL follows the value; the rest of the last entry stays 0xFF.
        self.put(data_offset.saturating_add(value.len()), &[0]);
        Ok(())
    }

    /// Writes `entry` at the next free entry of the current page (and `data`
    /// right after it), marks `span` entries as written in the bitmap and
    /// moves past them.
    fn append(&mut self, entry: &[u8; ENTRY_SIZE], data: &[u8], span: usize) {
        let offset = self.entry_offset(self.used);
        self.put(offset, entry);
        self.put(offset.saturating_add(ENTRY_SIZE), data);
        for _ in 0..span {
            self.mark_written(self.used);
            self.used = self.used.saturating_add(1);
        }
    }

    /// Sets entry `slot`'s two bitmap bits from `11` (empty) to `10`
    /// (written): entry `n` is bits `2n` and `2n+1` of the bitmap, least
    /// significant bit first.
    fn mark_written(&mut self, slot: usize) {
        let byte = self.page_offset() + BITMAP_OFFSET + slot / 4;
        if let Some(bits) = self.image.get_mut(byte) {
            *bits &= !(1u8 << ((slot % 4) * 2));
        }
    }

    /// Marks the current page `FULL` and starts the next one, as
    /// `NVS.create_new_page` does; fails when the partition has no more
    /// pages (`read_only=True`: every page may be used, none is reserved).
    fn start_next_page(&mut self) -> Result<(), OutOfPages> {
        let next = self.page.saturating_add(1);
        if next >= self.page_count {
            return Err(OutOfPages);
        }
        self.put(self.page_offset(), &PAGE_STATE_FULL.to_le_bytes());
        self.page = next;
        self.used = 0;
        self.write_page_header();
        Ok(())
    }

    /// The 32-byte page header: state `ACTIVE`, sequence number = page
    /// index, version 2, `0xFF` up to byte 28, then the CRC of bytes 4..28
    /// (so changing the state later does not change the CRC).
    fn write_page_header(&mut self) {
        let mut header = [0xFF_u8; ENTRY_SIZE];
        header[0..4].copy_from_slice(&PAGE_STATE_ACTIVE.to_le_bytes());
        // At most MAX_PARTITION_SIZE / PAGE_SIZE = 4096 pages.
        header[4..8].copy_from_slice(&(self.page as u32).to_le_bytes());
        header[8] = PAGE_VERSION_2;
        let crc = nvs_crc32(&[&header[4..28]]);
        header[28..32].copy_from_slice(&crc.to_le_bytes());
        self.put(self.page_offset(), &header);
    }

    fn page_offset(&self) -> usize {
        self.page.saturating_mul(PAGE_SIZE)
    }

    fn entry_offset(&self, slot: usize) -> usize {
        self.page_offset()
            .saturating_add(FIRST_ENTRY_OFFSET)
            .saturating_add(slot.saturating_mul(ENTRY_SIZE))
    }

    /// Copies `bytes` to `offset`, dropping whatever would fall outside the
    /// image (nothing does; this is what keeps the writer panic-free).
    fn put(&mut self, offset: usize, bytes: &[u8]) {
        for (dst, src) in self.image.iter_mut().skip(offset).zip(bytes) {
            *dst = *src;
        }
    }
}

/// An entry with everything but its type-specific data (bytes 24..32, left
/// `0xFF`) and its CRC: namespace index, type, span, chunk index `0xFF`, and
/// the key NUL-padded to 16 bytes. The key is at most 15 ASCII bytes.
fn entry_header(namespace_index: u8, item_type: u8, span: u8, key: &str) -> [u8; ENTRY_SIZE] {
    let mut entry = [0xFF_u8; ENTRY_SIZE];
    entry[0] = namespace_index;
    entry[1] = item_type;
    entry[2] = span;
    entry[3] = CHUNK_ANY;
    entry[8..24].fill(0);
    for (dst, src) in entry[8..23].iter_mut().zip(key.as_bytes()) {
        *dst = *src;
    }
    entry
}

/// Stores the entry's CRC at bytes 4..8: the CRC of bytes 0..4 followed by
/// bytes 8..32 (everything except the CRC itself).
fn seal_entry(entry: &mut [u8; ENTRY_SIZE]) {
    let crc = nvs_crc32(&[&entry[0..4], &entry[8..32]]);
    entry[4..8].copy_from_slice(&crc.to_le_bytes());
}
