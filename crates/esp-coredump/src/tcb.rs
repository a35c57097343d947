//! FreeRTOS TCB layout: member offsets read from the firmware's DWARF
//! (`tskTaskControlBlock`), with IDF 5.x defaults, and per-task TCB facts.

use gimli::{AttributeValue, Reader as _};

use crate::bytes::u32_at;
use crate::dump::CoreDump;
use crate::symbols::{Firmware, Reader};

const TCB_NAME: &[u8] = b"tskTaskControlBlock";

/// Offsets of the TCB members the report uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcbLayout {
    /// pxTopOfStack.
    pub top_of_stack: Option<u32>,
    /// uxPriority.
    pub priority: Option<u32>,
    /// pxStack.
    pub stack: Option<u32>,
    /// pcTaskName.
    pub name: Option<u32>,
    /// pxEndOfStack.
    pub end_of_stack: Option<u32>,
    /// uxBasePriority.
    pub base_priority: Option<u32>,
}

/// Facts read from one TCB.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcbInfo {
    /// uxPriority.
    pub priority: Option<u32>,
    /// uxBasePriority.
    pub base_priority: Option<u32>,
    /// |pxEndOfStack - pxTopOfStack|.
    pub stack_used: Option<u32>,
    /// |pxStack - pxTopOfStack|.
    pub stack_free: Option<u32>,
}

impl TcbLayout {
    /// The layout of this firmware (read from its DWARF when it was loaded; missing members
    /// stay None).
    pub fn from_firmware(fw: &Firmware) -> TcbLayout {
        fw.tcb_layout().clone()
    }

    /// Read member offsets from DWARF; missing members stay None.
    pub(crate) fn from_dwarf(dwarf: &gimli::Dwarf<Reader>) -> TcbLayout {
        let mut layout = TcbLayout::default();
        // The definition is a file-scope type of FreeRTOS's tasks.c: look at the top-level
        // entries of each unit first, skipping every subtree (fast); only if that finds nothing,
        // walk every entry of every unit.
        if !matches!(find_top_level(dwarf, &mut layout), Ok(true)) {
            layout = TcbLayout::default();
            let _ = find_layout(dwarf, &mut layout);
        }
        layout
    }

    /// Read the TCB facts of a task.
    pub fn read(&self, dump: &CoreDump, tcb: u32) -> TcbInfo {
        let field = |off: Option<u32>| -> Option<u32> {
            let a = tcb.checked_add(off?)?;
            dump.read(a, 4).and_then(|b| u32_at(b, 0))
        };
        let top = field(self.top_of_stack);
        let stack = field(self.stack);
        let end = field(self.end_of_stack);
        TcbInfo {
            priority: field(self.priority),
            base_priority: field(self.base_priority),
            stack_used: top.zip(end).map(|(t, e)| t.abs_diff(e)),
            stack_free: top.zip(stack).map(|(t, s)| t.abs_diff(s)),
        }
    }
}

/// The TCB among the top-level entries of the units (the children of each unit's root, with
/// their subtrees skipped). Returns whether it was found.
fn find_top_level(
    dwarf: &gimli::Dwarf<Reader>,
    layout: &mut TcbLayout,
) -> Result<bool, gimli::Error> {
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut tree = unit.entries_tree(None)?;
        let root = tree.root()?;
        let mut children = root.children();
        while let Some(child) = children.next()? {
            let entry = child.entry();
            if !is_tcb_definition(dwarf, &unit, entry) {
                continue;
            }
            let mut members = child.children();
            while let Some(member) = members.next()? {
                let entry = member.entry();
                if entry.tag() == gimli::DW_TAG_member {
                    set_member(dwarf, &unit, entry, layout);
                }
            }
            return Ok(true);
        }
    }
    Ok(false)
}

/// A complete definition (not a declaration) of `struct tskTaskControlBlock`.
fn is_tcb_definition(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    entry: &gimli::DebuggingInformationEntry<Reader>,
) -> bool {
    entry.tag() == gimli::DW_TAG_structure_type
        && entry.has_children()
        && entry.attr(gimli::DW_AT_declaration).is_none()
        && entry
            .attr_value(gimli::DW_AT_name)
            .and_then(|v| dwarf.attr_string(unit, v).ok())
            .is_some_and(|s| s.to_slice().is_ok_and(|b| *b == *TCB_NAME))
}

/// Records the offset of one TCB member the report uses.
fn set_member(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    entry: &gimli::DebuggingInformationEntry<Reader>,
    layout: &mut TcbLayout,
) {
    let name = entry
        .attr_value(gimli::DW_AT_name)
        .and_then(|v| dwarf.attr_string(unit, v).ok())
        .and_then(|s| s.to_string_lossy().ok().map(|c| c.into_owned()));
    let off = match entry.attr_value(gimli::DW_AT_data_member_location) {
        Some(AttributeValue::Udata(v)) => Some(v as u32),
        Some(AttributeValue::Data1(v)) => Some(v as u32),
        Some(AttributeValue::Data2(v)) => Some(v as u32),
        Some(AttributeValue::Data4(v)) => Some(v),
        Some(AttributeValue::Sdata(v)) => u32::try_from(v).ok(),
        _ => None,
    };
    match name.as_deref() {
        Some("pxTopOfStack") => layout.top_of_stack = off,
        Some("uxPriority") => layout.priority = off,
        Some("pxStack") => layout.stack = off,
        Some("pcTaskName") => layout.name = off,
        Some("pxEndOfStack") => layout.end_of_stack = off,
        Some("uxBasePriority") => layout.base_priority = off,
        _ => {}
    }
}

/// The TCB anywhere in the units (a depth-first walk of every entry): the fallback when no unit
/// has it at the top level.
fn find_layout(dwarf: &gimli::Dwarf<Reader>, layout: &mut TcbLayout) -> Result<(), gimli::Error> {
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut cursor = unit.entries();
        let mut in_tcb = false;
        let mut tcb_depth = 0isize;
        while let Some(entry) = cursor.next_dfs()? {
            let depth = entry.depth();
            if in_tcb && depth <= tcb_depth {
                return Ok(());
            }
            if !in_tcb {
                if is_tcb_definition(dwarf, &unit, entry) {
                    in_tcb = true;
                    tcb_depth = depth;
                }
                continue;
            }
            if entry.tag() == gimli::DW_TAG_member && depth == tcb_depth + 1 {
                set_member(dwarf, &unit, entry, layout);
            }
        }
        if in_tcb {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use gimli::{EndianArcSlice, RunTimeEndian};
    use object::{Object, ObjectSection};

    use super::*;

    fn firmware_elves() -> Vec<PathBuf> {
        let dir = match std::env::var_os("IOTSUPPORT_TESTDATA") {
            Some(d) => PathBuf::from(d),
            None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/esp"),
        };
        let mut elves = Vec::new();
        for case in std::fs::read_dir(dir.join("coredump"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for file in std::fs::read_dir(case.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = file.file_name().to_string_lossy().into_owned();
                if name.ends_with(".elf") && !name.ends_with(".core.elf") {
                    elves.push(file.path());
                }
            }
        }
        elves.sort();
        elves
    }

    /// The fast search (top-level entries) finds the same layout as the walk of every entry.
    #[test]
    fn the_top_level_search_agrees_with_the_full_walk() {
        let elves = firmware_elves();
        if elves.is_empty() {
            println!("SKIP: ESP testdata not found");
            return;
        }
        for path in elves {
            let bytes = std::fs::read(&path).expect("read ELF");
            let obj = object::File::parse(&*bytes).expect("ELF");
            let dwarf = gimli::Dwarf::load(|id| -> Result<Reader, ()> {
                let data = obj
                    .section_by_name(id.name())
                    .and_then(|s| s.uncompressed_data().ok())
                    .map(|d| d.into_owned())
                    .unwrap_or_default();
                Ok(EndianArcSlice::new(Arc::from(data), RunTimeEndian::Little))
            })
            .expect("DWARF");
            let mut fast = TcbLayout::default();
            assert!(find_top_level(&dwarf, &mut fast).expect("walk"), "{path:?}");
            let mut full = TcbLayout::default();
            find_layout(&dwarf, &mut full).expect("walk");
            assert_eq!(fast, full, "{path:?}");
            assert!(fast.name.is_some() && fast.priority.is_some(), "{path:?}");
        }
    }
}
