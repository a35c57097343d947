//! Bounds-checked little-endian readers over byte slices (never panic).

/// Read a little-endian u32 at `off`, or `None` when out of bounds.
pub(crate) fn u32_at(buf: &[u8], off: usize) -> Option<u32> {
    let end = off.checked_add(4)?;
    let b = buf.get(off..end)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Read a little-endian u16 at `off`, or `None` when out of bounds.
pub(crate) fn u16_at(buf: &[u8], off: usize) -> Option<u16> {
    let end = off.checked_add(2)?;
    let b = buf.get(off..end)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

/// Slice `len` bytes at `off`, or `None` when out of bounds.
pub(crate) fn slice_at(buf: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    buf.get(off..off.checked_add(len)?)
}

/// Read all complete little-endian words of a buffer.
pub(crate) fn words(buf: &[u8]) -> Vec<u32> {
    buf.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Round up to a multiple of 4 (saturating).
pub(crate) fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// A C string: bytes up to the first NUL, decoded lossily.
pub(crate) fn c_string(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}
