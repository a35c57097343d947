//! Bounds-checked little-endian readers. Every read goes through `get`, so
//! a short or hostile input yields `None` instead of a panic.

/// `len` bytes at `offset`, or `None` when they are not all inside `bytes`.
pub(crate) fn slice_at(bytes: &[u8], offset: usize, len: usize) -> Option<&[u8]> {
    bytes.get(offset..offset.checked_add(len)?)
}

/// A fixed-size array copied from `offset`.
pub(crate) fn array_at<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    slice_at(bytes, offset, N).and_then(|s| <[u8; N]>::try_from(s).ok())
}

pub(crate) fn u8_at(bytes: &[u8], offset: usize) -> Option<u8> {
    bytes.get(offset).copied()
}

pub(crate) fn u16_at(bytes: &[u8], offset: usize) -> Option<u16> {
    array_at::<2>(bytes, offset).map(u16::from_le_bytes)
}

pub(crate) fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    array_at::<4>(bytes, offset).map(u32::from_le_bytes)
}

/// A C string field: the bytes up to the first NUL, or the whole field when
/// it has none (IDF cuts long strings to fill the field, see esp-formats.md).
pub(crate) fn c_string_field(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(end) => field.get(..end).unwrap_or(field),
        None => field,
    }
}

/// Lower-case hex of `bytes`, the form esptool prints digests in.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// serde helper: serialise a digest as a lower-case hex string.
#[cfg(feature = "serde")]
pub(crate) fn serialize_hex<S: serde::Serializer>(
    bytes: &[u8; 32],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&to_hex(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_return_none_past_the_end() {
        let b = [1, 2, 3, 4, 5];
        assert_eq!(u32_at(&b, 0), Some(0x0403_0201));
        assert_eq!(u32_at(&b, 2), None);
        assert_eq!(u16_at(&b, usize::MAX), None);
        assert_eq!(slice_at(&b, usize::MAX, 2), None);
        assert_eq!(u8_at(&b, 5), None);
    }

    #[test]
    fn c_string_field_stops_at_nul_or_field_end() {
        assert_eq!(c_string_field(b"abc\0def"), b"abc");
        assert_eq!(c_string_field(b"abcd"), b"abcd");
        assert_eq!(c_string_field(b"\0abc"), b"");
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(to_hex(&[0x00, 0xAB, 0x7f]), "00ab7f");
    }
}
