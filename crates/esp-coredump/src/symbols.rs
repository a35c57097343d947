//! Firmware ELF access: DWARF symbolisation (function, file, line, inlined
//! frames) with addr2line, ELF symbol-table fallback, executable ranges,
//! code bytes, call-frame information sections, the FreeRTOS TCB layout and
//! the ELF's SHA-256.
//!
//! A [`Firmware`] is the "firmware context" half of an analysis: load it once
//! per ELF ([`Firmware::new`], the expensive part) and analyse any number of
//! dumps of that build against it ([`crate::analyse_with`]), from several
//! threads at once: it is `Send + Sync`. addr2line's context is not `Sync`
//! (it parses units lazily through `OnceCell`s), so it sits behind a mutex
//! that is held only while one address is looked up.

use std::sync::{Arc, Mutex};

use gimli::{EndianArcSlice, RunTimeEndian};
use object::{Object, ObjectSection, ObjectSymbol, SectionKind, SymbolKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::DumpError;
use crate::header::hex;
use crate::tcb::TcbLayout;

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

/// [`Firmware::approx_bytes`] as a percentage of the bytes copied at load: covers addr2line's
/// lazily parsed units, line tables and function lists.
pub const LAZY_FACTOR_PERCENT: usize = 250;

/// An executable or loadable section of the firmware.
#[derive(Debug, Clone)]
struct Section {
    addr: u64,
    data: Vec<u8>,
    exec: bool,
}

/// Symbolisation and code access for one firmware ELF.
pub struct Firmware {
    /// Locked for each lookup: addr2line's context is `Send` but not `Sync`.
    ctx: Option<Mutex<addr2line::Context<Reader>>>,
    /// (start, size, name) of sized function symbols, sorted by start.
    functions: Vec<(u64, u64, String)>,
    sections: Vec<Section>,
    /// Call-frame information index.
    pub(crate) cfi: crate::cfi::CfiIndex,
    /// FreeRTOS TCB member offsets, read from the DWARF once at load.
    tcb: TcbLayout,
    /// Bytes of the section copies held (DWARF, CFI, code and rodata), for [`Self::approx_bytes`].
    loaded_bytes: usize,
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
        let loaded = std::cell::Cell::new(0usize);
        let load = |name: &str| -> Option<Reader> {
            let sec = obj.section_by_name(name)?;
            let data = sec.uncompressed_data().ok()?;
            loaded.set(loaded.get() + data.len());
            Some(EndianArcSlice::new(Arc::from(&*data), endian))
        };
        let dwarf = gimli::Dwarf::load(|id| -> Result<Reader, ()> {
            Ok(load(id.name()).unwrap_or_else(|| EndianArcSlice::new(Arc::from(&[][..]), endian)))
        })
        .ok();
        let dwarf = dwarf.map(Arc::new);
        let tcb = dwarf
            .as_deref()
            .map(TcbLayout::from_dwarf)
            .unwrap_or_default();
        let ctx = dwarf
            .as_ref()
            .and_then(|d| addr2line::Context::from_arc_dwarf(Arc::clone(d)).ok())
            .map(Mutex::new);
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
                loaded.set(loaded.get() + data.len());
                sections.push(Section {
                    addr: s.address(),
                    data: data.to_vec(),
                    exec,
                });
            }
        }
        let eh_frame = obj.section_by_name(".eh_frame").and_then(|s| {
            let data = s.uncompressed_data().ok()?;
            loaded.set(loaded.get() + data.len());
            Some((EndianArcSlice::new(Arc::from(&*data), endian), s.address()))
        });
        let cfi = crate::cfi::CfiIndex::new(load(".debug_frame"), eh_frame, text_addr);
        let names: usize = functions.iter().map(|f| f.2.len()).sum();
        let loaded_bytes = loaded.get()
            + names
            + functions.len() * std::mem::size_of::<(u64, u64, String)>()
            + cfi.len() * crate::cfi::ENTRY_BYTES;
        Ok(Firmware {
            ctx,
            functions,
            sections,
            cfi,
            tcb,
            loaded_bytes,
            sha256,
        })
    }

    /// The FreeRTOS TCB member offsets of this build (from its DWARF; members the DWARF does
    /// not describe are `None`).
    pub fn tcb_layout(&self) -> &TcbLayout {
        &self.tcb
    }

    /// An estimate of the memory this firmware holds, in bytes, for cache budgets: the section
    /// copies, symbol and CFI tables made at load, plus what symbolisation parses lazily as dumps
    /// are analysed. The lazy part is bounded by the DWARF it parses; it is counted as
    /// [`LAZY_FACTOR_PERCENT`] % of the bytes loaded, measured with a counting allocator on the real test
    /// firmware (`benches/parse.rs` prints the measured heap next to this estimate).
    pub fn approx_bytes(&self) -> usize {
        self.loaded_bytes.saturating_mul(LAZY_FACTOR_PERCENT) / 100
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
            // A panic while the lock was held cannot leave the context half-updated in a way a
            // lookup could observe (its cells are filled whole or not at all).
            let ctx = ctx.lock().unwrap_or_else(|e| e.into_inner());
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
