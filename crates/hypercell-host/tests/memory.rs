//! Linear memories live in the reservation area with no bounds checks in wasm code:
//! the MMU enforces their exact end at every size, growth keeps every byte in place,
//! and the host's page-table pool outlasts any pattern of growth.

mod common;

use common::{program, run};
use hypercell_abi::Hypercall;
use hypercell_host::{CellConfig, CellExit};

fn config(memory_limit: u64) -> CellConfig {
    CellConfig {
        memory_limit,
        ..CellConfig::default()
    }
}

/// Grows the program's 4-page memory by `grow` pages, writes and reads back its last
/// byte, then runs `probe`, which must trap.
fn trap_after_growth(grow: u32, probe: &str) -> (Vec<u8>, String) {
    let last = (4 + grow) * 65536 - 1;
    let body = format!(
        r#"
        (drop (memory.grow (i32.const {grow})))
        (i32.store8 (i32.const {last}) (i32.const 42))
        (call $emit32 (i32.load8_u (i32.const {last})))
        {probe}"#
    );
    let outcome = run(&program(&body), &config(64 << 20), b"");
    match &outcome.report().exit {
        CellExit::Trapped(report) => (outcome.stdout.clone(), report.clone()),
        other => panic!("expected a trap after growing by {grow}, got {other:?}"),
    }
}

#[test]
fn the_first_byte_past_the_end_traps_at_every_size() {
    // 4 pages (premapped), 5, 32 (exactly 2 MiB), 33, 64 and 129 pages.
    for grow in [0, 1, 28, 29, 60, 125] {
        let end = (4 + grow) * 65536;
        let (stdout, report) =
            trap_after_growth(grow, &format!("(drop (i32.load8_u (i32.const {end})))"));
        assert_eq!(stdout, 42u32.to_le_bytes(), "the last byte is usable");
        assert!(report.contains("out of bounds memory access"), "{report}");
    }
}

#[test]
fn an_access_straddling_the_end_traps() {
    let end = 33 * 65536;
    let (_, report) = trap_after_growth(29, &format!("(drop (i64.load (i32.const {})))", end - 4));
    assert!(report.contains("out of bounds memory access"), "{report}");
}

#[test]
fn a_static_offset_into_the_guard_region_traps() {
    let (_, report) = trap_after_growth(0, "(drop (i32.load offset=0x1000000 (i32.const 0)))");
    assert!(report.contains("out of bounds memory access"), "{report}");
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
