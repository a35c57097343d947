//! DWARF call-frame information index over `.debug_frame` and `.eh_frame`:
//! FDEs parsed once and sorted by address, so each unwind step is a binary
//! search, then evaluation of the row for an address.

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, FrameDescriptionEntry, RegisterRule,
    UnwindContext, UnwindSection,
};

use crate::symbols::Reader;

/// The unwind rules for one address.
pub(crate) struct Rules {
    /// How to compute the CFA.
    pub cfa: CfaRule<usize>,
    /// Register rules that differ from "same value".
    pub regs: Vec<(u16, RegisterRule<usize>)>,
    /// The return-address column.
    pub ra_reg: u16,
}

enum Source {
    Debug,
    Eh,
}

struct Entry {
    start: u64,
    end: u64,
    fde: FrameDescriptionEntry<Reader>,
    source: Source,
}

/// Heap bytes per indexed FDE (for [`crate::Firmware::approx_bytes`]).
pub(crate) const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

/// Sorted FDEs of one firmware ELF.
pub(crate) struct CfiIndex {
    debug_frame: Option<DebugFrame<Reader>>,
    eh_frame: Option<EhFrame<Reader>>,
    eh_bases: BaseAddresses,
    entries: Vec<Entry>,
}

impl CfiIndex {
    /// Build the index from the section contents (`eh_frame` with its address).
    pub fn new(
        debug_frame: Option<Reader>,
        eh_frame: Option<(Reader, u64)>,
        text_addr: u64,
    ) -> Self {
        let mut entries = Vec::new();
        let debug_frame = debug_frame.map(|r| {
            let mut s = DebugFrame::from(r);
            s.set_address_size(4);
            s
        });
        let no_bases = BaseAddresses::default();
        if let Some(s) = &debug_frame {
            let mut it = s.entries(&no_bases);
            while let Ok(Some(e)) = it.next() {
                if let CieOrFde::Fde(p) = e {
                    if let Ok(fde) = p.parse(DebugFrame::cie_from_offset) {
                        entries.push(Entry {
                            start: fde.initial_address(),
                            end: fde.end_address(),
                            fde,
                            source: Source::Debug,
                        });
                    }
                }
            }
        }
        let mut eh_bases = BaseAddresses::default();
        let eh_frame = eh_frame.map(|(r, addr)| {
            eh_bases = BaseAddresses::default()
                .set_eh_frame(addr)
                .set_text(text_addr);
            let mut s = EhFrame::from(r);
            s.set_address_size(4);
            s
        });
        if let Some(s) = &eh_frame {
            let mut it = s.entries(&eh_bases);
            while let Ok(Some(e)) = it.next() {
                if let CieOrFde::Fde(p) = e {
                    if let Ok(fde) = p.parse(EhFrame::cie_from_offset) {
                        entries.push(Entry {
                            start: fde.initial_address(),
                            end: fde.end_address(),
                            fde,
                            source: Source::Eh,
                        });
                    }
                }
            }
        }
        // Among entries with one start, .debug_frame's last: `rules` reads backwards from the
        // last entry starting at or below the address, so it prefers them.
        entries.sort_by_key(|e| (e.start, matches!(e.source, Source::Debug)));
        CfiIndex {
            debug_frame,
            eh_frame,
            eh_bases,
            entries,
        }
    }

    /// Number of FDEs indexed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Unwind rules at `addr`, if any FDE covers it.
    pub fn rules(&self, ctx: &mut UnwindContext<usize>, addr: u64) -> Option<Rules> {
        let upto = self.entries.partition_point(|e| e.start <= addr);
        let lo = upto.saturating_sub(16);
        for e in self.entries[lo..upto].iter().rev() {
            if addr >= e.end {
                continue;
            }
            let ra_reg = e.fde.cie().return_address_register().0;
            let row = match (&e.source, &self.debug_frame, &self.eh_frame) {
                (Source::Debug, Some(s), _) => e
                    .fde
                    .unwind_info_for_address(s, &BaseAddresses::default(), ctx, addr)
                    .ok(),
                (Source::Eh, _, Some(s)) => e
                    .fde
                    .unwind_info_for_address(s, &self.eh_bases, ctx, addr)
                    .ok(),
                _ => None,
            };
            if let Some(row) = row {
                return Some(Rules {
                    cfa: row.cfa().clone(),
                    regs: row
                        .registers()
                        .map(|(r, rule)| (r.0, rule.clone()))
                        .collect(),
                    ra_reg,
                });
            }
        }
        None
    }
}
