//! FreeRTOS TCB layout: member offsets read from the firmware's DWARF
//! (`tskTaskControlBlock`), with IDF 5.x defaults, and per-task TCB facts.

use gimli::{AttributeValue, Reader as _};

use crate::bytes::u32_at;
use crate::dump::CoreDump;
use crate::symbols::Firmware;

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
    /// Read member offsets from the firmware DWARF; missing members stay None.
    pub fn from_firmware(fw: &Firmware) -> TcbLayout {
        let mut layout = TcbLayout::default();
        if let Some(dwarf) = &fw.dwarf {
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

fn find_layout(
    dwarf: &gimli::Dwarf<crate::symbols::Reader>,
    layout: &mut TcbLayout,
) -> Result<(), gimli::Error> {
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
            let name = match entry.attr_value(gimli::DW_AT_name) {
                Some(v) => dwarf
                    .attr_string(&unit, v)
                    .ok()
                    .and_then(|s| s.to_string_lossy().ok().map(|c| c.into_owned())),
                None => None,
            };
            if !in_tcb {
                if entry.tag() == gimli::DW_TAG_structure_type
                    && name.as_deref() == Some("tskTaskControlBlock")
                    && entry.attr(gimli::DW_AT_declaration).is_none()
                    && entry.has_children()
                {
                    in_tcb = true;
                    tcb_depth = depth;
                }
                continue;
            }
            if entry.tag() != gimli::DW_TAG_member || depth != tcb_depth + 1 {
                continue;
            }
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
        if in_tcb {
            return Ok(());
        }
    }
    Ok(())
}
