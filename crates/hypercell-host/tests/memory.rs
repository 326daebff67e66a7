//! Linear memories live in the reservation area. With no bounds checks in wasm code
//! the MMU enforces their exact end at every size; with explicit checks the code does,
//! while the tables map whole 2 MiB pages ahead. Either way growth keeps every byte in
//! place, and the host's page-table pool outlasts any pattern of growth.

mod common;

use common::{program, run, run_checked};
use hypercell_abi::Hypercall;
use hypercell_host::{BoundsChecks, CellConfig, CellExit};

const BOTH: [BoundsChecks; 2] = [BoundsChecks::GuardPages, BoundsChecks::Explicit];

fn config(memory_limit: u64) -> CellConfig {
    CellConfig {
        memory_limit,
        ..CellConfig::default()
    }
}

/// Grows the program's 4-page memory by `grow` pages, writes and reads back its last
/// byte, then runs `probe`, which must trap, in code compiled with `checks`.
fn trap_after_growth(grow: u32, probe: &str, checks: BoundsChecks) -> (Vec<u8>, String) {
    let last = (4 + grow) * 65536 - 1;
    let body = format!(
        r#"
        (drop (memory.grow (i32.const {grow})))
        (i32.store8 (i32.const {last}) (i32.const 42))
        (call $emit32 (i32.load8_u (i32.const {last})))
        {probe}"#
    );
    let outcome = run_checked(&program(&body), &config(64 << 20), b"", checks);
    match &outcome.report().exit {
        CellExit::Trapped(report) => (outcome.stdout.clone(), report.clone()),
        other => panic!("expected a trap after growing by {grow} ({checks:?}), got {other:?}"),
    }
}

#[test]
fn the_first_byte_past_the_end_traps_at_every_size() {
    // 4 pages (premapped), 5, 32 (exactly 2 MiB), 33, 64 and 129 pages. With explicit
    // checks the byte past the end is mapped (but for 32 and 64 pages): the code must
    // refuse it.
    for checks in BOTH {
        for grow in [0, 1, 28, 29, 60, 125] {
            let end = (4 + grow) * 65536;
            let probe = format!("(drop (i32.load8_u (i32.const {end})))");
            let (stdout, report) = trap_after_growth(grow, &probe, checks);
            assert_eq!(stdout, 42u32.to_le_bytes(), "the last byte is usable");
            assert!(report.contains("out of bounds memory access"), "{report}");
        }
    }
}

#[test]
fn an_access_straddling_the_end_traps() {
    let end = 33 * 65536;
    for checks in BOTH {
        let probe = format!("(drop (i64.load (i32.const {})))", end - 4);
        let (_, report) = trap_after_growth(29, &probe, checks);
        assert!(report.contains("out of bounds memory access"), "{report}");
    }
}

#[test]
fn a_static_offset_into_the_guard_region_traps() {
    for checks in BOTH {
        let probe = "(drop (i32.load offset=0x1000000 (i32.const 0)))";
        let (_, report) = trap_after_growth(0, probe, checks);
        assert!(report.contains("out of bounds memory access"), "{report}");
    }
}

#[test]
fn growth_in_odd_steps_keeps_every_byte_and_outlasts_the_table_pool() {
    // 520 growths of 33 pages each end inside a fresh 2 MiB page every time, which
    // takes a page table each: more than the host's pool holds, so it reclaims and
    // reuses tables. Each step fills its new pages with its own byte; every 4 KiB page
    // is checked at the end, which catches a page mapped twice or to the wrong place,
    // including through KVM's cached shadow of a reused table.
    let steps: u32 = 520;
    let step_bytes = 33 * 65536;
    let body = format!(
        r#"
        (local $i i32) (local $at i32)
        (loop $grow
          (if (i32.eq (memory.grow (i32.const 33)) (i32.const -1))
            (then (call $proc_exit (i32.const 1))))
          (memory.fill
            (i32.add (i32.const 262144) (i32.mul (local.get $i) (i32.const {step_bytes})))
            (i32.add (i32.rem_u (local.get $i) (i32.const 251)) (i32.const 1))
            (i32.const {step_bytes}))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $grow (i32.lt_u (local.get $i) (i32.const {steps}))))
        (local.set $at (i32.const 262144))
        (loop $check
          (local.set $i (i32.div_u (i32.sub (local.get $at) (i32.const 262144)) (i32.const {step_bytes})))
          (local.set $i (i32.add (i32.rem_u (local.get $i) (i32.const 251)) (i32.const 1)))
          (if (i32.ne (i32.load8_u (local.get $at)) (local.get $i))
            (then (call $proc_exit (i32.const 2))))
          (if (i32.ne (i32.load8_u offset=4095 (local.get $at)) (local.get $i))
            (then (call $proc_exit (i32.const 3))))
          (local.set $at (i32.add (local.get $at) (i32.const 4096)))
          (br_if $check (i32.lt_u (local.get $at) (i32.mul (memory.size) (i32.const 65536)))))
        (call $emit32 (memory.size))"#
    );
    let outcome = run(&program(&body), &config(1280 << 20), b"");
    let report = outcome.report();
    assert_eq!(report.exit, CellExit::Exited(0));
    assert_eq!(outcome.stdout, (4 + 33 * steps).to_le_bytes());
    assert_eq!(
        report.stats.hypercalls.get(Hypercall::MapMemory),
        u64::from(steps),
        "one exit per growth"
    );
}

#[test]
fn explicit_checks_grow_a_page_at_a_time_with_an_exit_per_2_mib() {
    // 124 growths of one page take the memory from 4 pages to 128 (8 MiB): with
    // guard pages each is an exit; with explicit checks the tables map to the end of
    // each 2 MiB page, so only growths into a new one leave the cell (3), and every
    // byte stays where it was written.
    let body = r#"
        (local $i i32)
        (loop $grow
          (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1))
            (then (call $proc_exit (i32.const 1))))
          (i32.store8 (i32.sub (i32.mul (memory.size) (i32.const 65536)) (i32.const 1))
            (memory.size))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $grow (i32.lt_u (local.get $i) (i32.const 124))))
        (local.set $i (i32.const 5))
        (loop $check
          (if (i32.ne
                (i32.load8_u (i32.sub (i32.mul (local.get $i) (i32.const 65536)) (i32.const 1)))
                (i32.and (local.get $i) (i32.const 255)))
            (then (call $proc_exit (i32.const 2))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $check (i32.le_u (local.get $i) (i32.const 128))))
        (call $emit32 (memory.size))"#;
    for (checks, exits) in [(BoundsChecks::GuardPages, 124), (BoundsChecks::Explicit, 3)] {
        let outcome = run_checked(&program(body), &config(64 << 20), b"", checks);
        let report = outcome.report();
        assert_eq!(report.exit, CellExit::Exited(0), "{checks:?}");
        assert_eq!(outcome.stdout, 128u32.to_le_bytes());
        assert_eq!(
            report.stats.hypercalls.get(Hypercall::MapMemory),
            exits,
            "{checks:?}"
        );
    }
}
