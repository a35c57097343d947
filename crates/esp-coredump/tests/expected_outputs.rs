//! Acceptance tests: the report's facts against esp-coredump's
//! expected_output.txt for every case that ships one, and consistency of the
//! b64, raw and ELF-core inputs for every case.

mod common;

use esp_coredump::{
    analyse_with, parse_dump, Arch, CoreDump, CrashReport, ExceptionInfo, Firmware,
};

fn report_for(input: &[u8], fw: &Firmware) -> (CoreDump, CrashReport) {
    let dump = parse_dump(input).expect("dump parses");
    let report = analyse_with(&dump, fw).expect("report");
    (dump, report)
}

#[test]
fn reports_match_expected_outputs() {
    let Some(cases) = common::cases() else { return };
    let mut checked = 0;
    for case in &cases {
        let Some(text) = case.expected() else {
            println!(
                "{}: no expected_output.txt (held out), facts not compared",
                case.name
            );
            continue;
        };
        let exp = common::parse_expected(&text);
        let fw = Firmware::new(&case.firmware_elf()).expect("firmware");
        let (dump, r) = report_for(&case.b64(), &fw);
        let name = &case.name;

        assert_eq!(r.crashed_task_tcb, exp.crashed_tcb, "{name}: crashed tcb");
        assert_eq!(
            r.crashed_task_name, exp.crashed_name,
            "{name}: crashed name"
        );
        assert_eq!(r.panic_reason, exp.panic_reason, "{name}: panic reason");
        if let Some(p) = &exp.panic_reason {
            assert_eq!(&r.headline, p, "{name}: headline is the panic text");
        }
        if exp.isr.is_some() {
            assert_eq!(r.isr_context, exp.isr, "{name}: ISR flag");
        }
        if let Some((cause, cause_name)) = &exp.exccause {
            match &r.exception {
                Some(ExceptionInfo::Xtensa {
                    exccause,
                    cause_name: ours,
                    excvaddr,
                    ..
                }) => {
                    assert_eq!(exccause, cause, "{name}: exccause");
                    assert_eq!(
                        ours.as_deref(),
                        Some(cause_name.as_str()),
                        "{name}: cause name"
                    );
                    assert_eq!(Some(*excvaddr), exp.excvaddr, "{name}: excvaddr");
                    assert_eq!(r.faulting_address, exp.excvaddr, "{name}: faulting address");
                }
                other => panic!("{name}: expected Xtensa exception, got {other:?}"),
            }
        }
        if dump.arch == Arch::RiscV {
            assert!(
                matches!(r.exception, Some(ExceptionInfo::RiscV { .. })),
                "{name}: mcause recovered"
            );
        }

        // Registers of the crashed task.
        let crashed = r.crashed_task().expect("crashed task in report");
        let mut compared = 0;
        for (reg, val) in &exp.registers {
            if let Some(ours) = crashed.registers.iter().find(|x| &x.name == reg) {
                assert_eq!(ours.value, *val, "{name}: register {reg}");
                compared += 1;
            }
        }
        assert!(compared >= 17, "{name}: only {compared} registers compared");

        // Application functions of the crashed task's backtrace, in order.
        let want = common::expected_app_functions(&exp.backtrace);
        let got = common::our_app_functions(&crashed.backtrace);
        assert!(
            common::names_match(&want, &got),
            "{name}: backtrace functions\n expected {want:?}\n got      {got:?}"
        );
        // Frame PCs of application frames agree with gdb's.
        let exp_pcs: Vec<u32> = exp
            .backtrace
            .iter()
            .filter(|f| f.has_source)
            .filter_map(|f| f.pc)
            .collect();
        let our_pcs: Vec<u32> = crashed.backtrace.iter().map(|f| f.pc).collect();
        for pc in &exp_pcs {
            assert!(
                our_pcs.contains(pc),
                "{name}: frame pc 0x{pc:08x} missing from {our_pcs:x?}"
            );
        }

        // Task list: handles and names, in order.
        let ours: Vec<(u32, String)> = r
            .tasks
            .iter()
            .map(|t| (t.tcb, t.name.clone().unwrap_or_default()))
            .collect();
        assert_eq!(ours, exp.threads, "{name}: task list");
        // Task table (priority and stack usage) when the tool printed one.
        for (tcb, tname, prio, base, used, free) in &exp.table {
            let t = r
                .tasks
                .iter()
                .find(|t| t.tcb == *tcb)
                .expect("task in table");
            assert_eq!(
                t.name.as_deref(),
                Some(tname.as_str()),
                "{name}: table name"
            );
            assert_eq!(
                (t.priority, t.base_priority, t.stack_used, t.stack_free),
                (Some(*prio), Some(*base), Some(*used), Some(*free)),
                "{name}: table row for {tname}"
            );
        }
        // Every task's application frames (Xtensa: the windowed walk is exact).
        if dump.arch == Arch::Xtensa {
            for (i, bt) in exp.thread_backtraces.iter().enumerate() {
                let want = common::expected_app_functions(bt);
                let got = common::our_app_functions(&r.tasks[i].backtrace);
                assert!(
                    common::names_match(&want, &got),
                    "{name}: thread {} functions\n expected {want:?}\n got      {got:?}",
                    i + 1
                );
            }
        }
        let text = r.to_text();
        assert!(text.contains(&format!("0x{:x}", exp.crashed_tcb.unwrap_or(0))));
        println!("{name}: all compared facts match");
        checked += 1;
    }
    assert!(checked >= 5, "expected outputs compared: {checked}");
}

#[test]
fn inputs_give_same_facts() {
    let Some(cases) = common::cases() else { return };
    for case in &cases {
        let fw = Firmware::new(&case.firmware_elf()).expect("firmware");
        let (b64, rb) = report_for(&case.b64(), &fw);
        let (raw, rr) = report_for(&case.raw(), &fw);
        let (elf, re) = report_for(&case.core_elf(), &fw);
        let name = &case.name;
        assert_eq!(b64.tasks, raw.tasks, "{name}: b64 vs raw tasks");
        assert_eq!(b64.tasks, elf.tasks, "{name}: b64 vs ELF core tasks");
        for (a, b) in [(&b64, &raw), (&b64, &elf)] {
            assert_eq!(a.chip, b.chip, "{name}: chip");
            assert_eq!(a.crashed_tcb, b.crashed_tcb, "{name}: crashed");
            assert_eq!(a.isr_context, b.isr_context, "{name}: isr");
            assert_eq!(a.panic_details, b.panic_details, "{name}: panic");
            assert_eq!(
                a.app_elf_sha256_prefix, b.app_elf_sha256_prefix,
                "{name}: sha"
            );
            assert_eq!(a.xtensa_exception, b.xtensa_exception, "{name}: exception");
            assert_eq!(a.data_format, b.data_format, "{name}: data format");
        }
        assert_eq!(rb.tasks, rr.tasks, "{name}: report tasks b64 vs raw");
        assert_eq!(rb.tasks, re.tasks, "{name}: report tasks b64 vs ELF core");
        assert_eq!(
            rb.exception, re.exception,
            "{name}: exception b64 vs ELF core"
        );
        assert_eq!(rb.headline, re.headline, "{name}: headline");
    }
}

#[test]
fn build_check_flags_mismatched_elf() {
    let Some(cases) = common::cases() else { return };
    for case in &cases {
        let fw = Firmware::new(&case.firmware_elf()).expect("firmware");
        let (dump, r) = report_for(&case.b64(), &fw);
        let want = match &dump.app_elf_sha256_prefix {
            None => esp_coredump::BuildCheck::NotRecorded,
            Some(_) if case.name.contains("v2_0") => esp_coredump::BuildCheck::Mismatch,
            Some(_) => esp_coredump::BuildCheck::Match,
        };
        assert_eq!(r.build_check, want, "{}", case.name);
        if want == esp_coredump::BuildCheck::Mismatch {
            assert!(r.to_text().contains("does NOT match"), "{}", case.name);
            assert!(!r.warnings.is_empty());
            // Still symbolised: the crashed task has named frames.
            assert!(!common::our_app_functions(&r.crashed_task().unwrap().backtrace).is_empty());
        }
    }
}

#[test]
fn report_round_trips_through_json() {
    let Some(cases) = common::cases() else { return };
    let case = &cases[0];
    let fw = Firmware::new(&case.firmware_elf()).expect("firmware");
    let (_, r) = report_for(&case.b64(), &fw);
    let json = serde_json::to_string(&r).expect("serialise");
    let back: CrashReport = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(back, r);
}
