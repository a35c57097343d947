//! A minimal reader of ESP-IDF NVS partition images (format version 2), written from the layout in
//! `../shared/docs/original-rotation-provisioning-mqtt.md` §2.2, for tests: it reads back the
//! string entries the way the firmware would, so a test can see what a device gets from a package.

const PAGE: usize = 4096;
const ENTRY: usize = 32;
const ENTRIES_PER_PAGE: usize = 126;
const TYPE_U8: u8 = 0x01;
const TYPE_SZ: u8 = 0x21;

/// Every string entry as `(namespace, key, value)`, in page order.
pub fn strings(image: &[u8]) -> Vec<(String, String, String)> {
    let mut namespaces: Vec<(u8, String)> = Vec::new();
    let mut out = Vec::new();
    for page in image.chunks(PAGE) {
        if page.len() < PAGE || page[..4] == [0xFF; 4] {
            continue; // erased page
        }
        let bitmap = &page[32..64];
        let written = |i: usize| (bitmap[i / 4] >> ((i % 4) * 2)) & 0b11 == 0b10;
        let mut i = 0;
        while i < ENTRIES_PER_PAGE {
            if !written(i) {
                i += 1;
                continue;
            }
            let e = &page[64 + i * ENTRY..64 + (i + 1) * ENTRY];
            let (ns, kind, span) = (e[0], e[1], e[2].max(1) as usize);
            let key_end = e[8..24].iter().position(|&b| b == 0).unwrap_or(16);
            let key = String::from_utf8_lossy(&e[8..8 + key_end]).into_owned();
            match kind {
                TYPE_U8 if ns == 0 => namespaces.push((e[24], key)),
                TYPE_SZ => {
                    let len = u16::from_le_bytes([e[24], e[25]]) as usize;
                    let start = 64 + (i + 1) * ENTRY;
                    let bytes = &page[start..start + len.saturating_sub(1)];
                    let namespace = namespaces
                        .iter()
                        .find(|(index, _)| *index == ns)
                        .map(|(_, name)| name.clone())
                        .unwrap_or_default();
                    out.push((namespace, key, String::from_utf8_lossy(bytes).into_owned()));
                }
                _ => {}
            }
            i += span;
        }
    }
    out
}
