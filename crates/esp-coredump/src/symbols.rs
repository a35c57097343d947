//! Firmware ELF access: DWARF symbolisation (function, file, line, inlined
//! frames) with addr2line, ELF symbol-table fallback, executable ranges,
//! code bytes, call-frame information sections and the ELF's SHA-256.

use std::sync::Arc;

use gimli::{EndianArcSlice, RunTimeEndian};
use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::DumpError;
use crate::header::hex;

/// The reader type used for all DWARF data (owned, shareable across threads).
pub(crate) type Reader = EndianArcSlice<RunTimeEndian>;

/// One symbolised (possibly inlined) function at an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SymbolInfo {
    /// Function name, when known.
    pub function: Option<String>,
    /// Source file, when DWARF line info covers the address.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
    /// True for a function inlined into the next entry.
    pub inlined: bool,
}

/// An executable or loadable section of the firmware.
#[derive(Debug, Clone)]
struct Section {
    addr: u64,
    data: Vec<u8>,
    exec: bool,
}

/// Symbolisation and code access for one firmware ELF.
pub struct Firmware {
    ctx: Option<addr2line::Context<Reader>>,
    /// (start, size, name) of sized function symbols, sorted by start.
    functions: Vec<(u64, u64, String)>,
    sections: Vec<Section>,
    /// Call-frame information index.
    pub(crate) cfi: crate::cfi::CfiIndex,
    /// DWARF sections for type lookups.
    pub(crate) dwarf: Option<Arc<gimli::Dwarf<Reader>>>,
    sha256: [u8; 32],
}

impl std::fmt::Debug for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firmware")
            .field("sha256", &hex(&self.sha256))
            .field("functions", &self.functions.len())
            .field("fdes", &self.cfi.len())
            .finish()
    }
}

impl Firmware {
    /// Load a firmware ELF (symbols, DWARF, CFI, code sections).
    pub fn new(elf: &[u8]) -> Result<Firmware, DumpError> {
        let sha256: [u8; 32] = Sha256::digest(elf).into();
        let obj = object::File::parse(elf)
            .map_err(|e| DumpError::InvalidElf(format!("cannot parse firmware ELF: {e}")))?;
        let endian = if obj.is_little_endian() {
            RunTimeEndian::Little
        } else {
            RunTimeEndian::Big
        };
        let load = |name: &str| -> Option<Reader> {
            let sec = obj.section_by_name(name)?;
            let data = sec.uncompressed_data().ok()?;
            Some(EndianArcSlice::new(Arc::from(&*data), endian))
        };
        let dwarf = gimli::Dwarf::load(|id| -> Result<Reader, ()> {
            Ok(load(id.name()).unwrap_or_else(|| EndianArcSlice::new(Arc::from(&[][..]), endian)))
        })
        .ok();
        let dwarf = dwarf.map(Arc::new);
        let ctx = dwarf
            .as_ref()
            .and_then(|d| addr2line::Context::from_arc_dwarf(Arc::clone(d)).ok());
        let mut functions: Vec<(u64, u64, String)> = obj
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0 && s.address() != 0)
            .filter_map(|s| Some((s.address(), s.size(), s.name().ok()?.to_string())))
            .collect();
        functions.sort();
        let mut sections = Vec::new();
        let mut text_addr = 0;
        for s in obj.sections() {
            let exec = s.kind() == SectionKind::Text;
            if s.address() == 0 || !(exec || s.kind() == SectionKind::ReadOnlyData) {
                continue;
            }
            if s.name().ok() == Some(".text") || (exec && text_addr == 0) {
                text_addr = s.address();
            }
            if let Ok(data) = s.data() {
                sections.push(Section {
                    addr: s.address(),
                    data: data.to_vec(),
                    exec,
                });
            }
        }
        let eh_frame = obj.section_by_name(".eh_frame").and_then(|s| {
            let data = s.uncompressed_data().ok()?;
            Some((EndianArcSlice::new(Arc::from(&*data), endian), s.address()))
        });
        Ok(Firmware {
            ctx,
            functions,
            sections,
            cfi: crate::cfi::CfiIndex::new(load(".debug_frame"), eh_frame, text_addr),
            dwarf,
            sha256,
        })
    }

    /// Lower-case hex SHA-256 of the ELF file bytes.
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }

    /// True when `addr` lies in an executable section of the firmware.
    pub fn is_code(&self, addr: u32) -> bool {
        let a = addr as u64;
        self.sections
            .iter()
            .any(|s| s.exec && a >= s.addr && a < s.addr + s.data.len() as u64)
    }

    /// Read firmware bytes (code or rodata) at `addr`.
    pub fn read(&self, addr: u32, len: usize) -> Option<&[u8]> {
        let a = addr as u64;
        let s = self
            .sections
            .iter()
            .find(|s| a >= s.addr && a < s.addr + s.data.len() as u64)?;
        let off = (a - s.addr) as usize;
        s.data.get(off..off.checked_add(len)?)
    }

    /// Symbol-table function containing `addr`.
    pub fn symbol_for(&self, addr: u32) -> Option<&str> {
        let a = addr as u64;
        let i = self.functions.partition_point(|f| f.0 <= a);
        self.functions[..i]
            .iter()
            .rev()
            .take(8)
            .find(|f| a < f.0 + f.1)
            .map(|f| f.2.as_str())
    }

    /// Symbolise `addr`: innermost inlined function first, then its callers
    /// up to the real (non-inlined) function. Empty when nothing is known.
    pub fn symbolize(&self, addr: u32) -> Vec<SymbolInfo> {
        let mut out = Vec::new();
        if let Some(ctx) = &self.ctx {
            if let Ok(mut frames) = ctx.find_frames(addr as u64).skip_all_loads() {
                while let Ok(Some(f)) = frames.next() {
                    let function = f
                        .function
                        .as_ref()
                        .and_then(|n| n.demangle().ok().map(|c| c.into_owned()));
                    let (file, line) = match &f.location {
                        Some(l) => (l.file.map(|s| s.to_string()), l.line),
                        None => (None, None),
                    };
                    out.push(SymbolInfo {
                        function,
                        file,
                        line,
                        inlined: true,
                    });
                    if out.len() > 32 {
                        break;
                    }
                }
            }
        }
        if let Some(last) = out.last_mut() {
            last.inlined = false;
        }
        let sym = self.symbol_for(addr).map(str::to_string);
        match out.last_mut() {
            Some(last) if last.function.is_none() => last.function = sym,
            None if sym.is_some() => out.push(SymbolInfo {
                function: sym,
                file: None,
                line: None,
                inlined: false,
            }),
            _ => {}
        }
        out
    }
}
