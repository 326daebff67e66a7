//! A partition put back to its template in place runs each cell as fresh as a new one:
//! one reusable cell runs many cells from a template that write memory, grow it, trap,
//! and run past their time limit, and each finds only the template's state.

mod common;

use std::io::{Read, Seek, Write};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use common::{PATTERN_FUNCTIONS, compile_checked, first_read_template, template_file};
use hypercell_host::{
    BoundsChecks, CellConfig, CellControl, CellError, CellExit, CellStdio, Compiler, ReusableCell,
};

/// Fills 128 KiB with 0x5a and reads an 8-byte id from stdin (where the template
/// stops). Then it checks that the 128 KiB still hold 0x5a (else exit 3) and that the
/// memory has its initial 4 pages (else exit 5), fills the 128 KiB with the id, and by
/// the id's low bits: grows memory by 40 pages and more (by the id's next six bits,
/// so that two runs in a row grow alike) and then by one, and checks that the page at
/// 43 is zero (else exit 6) before writing the id there (or, every other time, only
/// reading it);
/// writes `w` to stdout; loads from where
/// the grown memory's last page was, which must trap, since a cell whose memory did not
/// grow must not reach it, even with a partition where an earlier cell's did; traps; or
/// spins forever. Otherwise it exits 0.
fn writer() -> String {
    format!(
        r#"
(module
{PATTERN_FUNCTIONS}  (func (export "_start")
    (local $id i64)
    (local $last i32)
    (call $fill (i64.const 0x5a5a5a5a5a5a5a5a))
    (local.set $id (call $read8))
    (if (i32.eqz (call $holds (i64.const 0x5a5a5a5a5a5a5a5a)))
      (then (call $proc_exit (i32.const 3))))
    (if (i32.ne (memory.size) (i32.const 4))
      (then (call $proc_exit (i32.const 5))))
    (call $fill (local.get $id))
    (if (i64.lt_u (i64.and (local.get $id) (i64.const 3)) (i64.const 2))
      (then
        (drop (memory.grow (i32.add (i32.const 40)
          (i32.wrap_i64 (i64.and (i64.shr_u (local.get $id) (i64.const 2)) (i64.const 63))))))
        (drop (memory.grow (i32.const 1)))
        (local.set $last (i32.mul (i32.const 43) (i32.const 65536)))
        (if (i64.ne (i64.load (local.get $last)) (i64.const 0))
          (then (call $proc_exit (i32.const 6))))
        (if (i64.eqz (i64.and (local.get $id) (i64.const 4)))
          (then (i64.store (local.get $last) (local.get $id))))))
    (i32.store (i32.const 40) (i32.const 32))
    (i32.store (i32.const 44) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 40) (i32.const 1) (i32.const 48)))
    (if (i64.eq (i64.and (local.get $id) (i64.const 3)) (i64.const 2))
      (then (drop (i64.load (i32.mul (i32.const 43) (i32.const 65536))))))
    (if (i64.eq (i64.and (local.get $id) (i64.const 7)) (i64.const 5))
      (then unreachable))
    (if (i64.eq (i64.and (local.get $id) (i64.const 15)) (i64.const 7))
      (then (loop $forever (br $forever))))
    (call $proc_exit (i32.const 0))))
"#
    )
}

#[test]
fn a_reused_partition_runs_every_cell_from_the_template_alone() {
    let dropped = run_in_one_partition(BoundsChecks::GuardPages);
    assert!(
        dropped >= 2,
        "the table pool was used up and used again: {dropped}"
    );
}

/// The same with bounds checks in the code, where the tables map whole 2 MiB pages
/// ahead of the memory's size: the byte past the end of a memory that did not grow
/// still traps, though an earlier cell's growth mapped it in the same partition.
#[test]
fn a_reused_partition_with_explicit_bounds_checks_keeps_cells_apart_too() {
    run_in_one_partition(BoundsChecks::Explicit);
}

/// Runs 240 cells of the writer, compiled with `checks`, one after another in one
/// partition, checking each; returns how many resets dropped KVM's shadows of the
/// table pool to use it again.
fn run_in_one_partition(checks: BoundsChecks) -> u32 {
    let module = Arc::new(compile_checked(&writer(), checks));
    let cpu_features = Compiler::with_cache_dir(None).unwrap().cpu_features();
    let null = std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let config = CellConfig {
        timeout: Some(Duration::from_millis(200)),
        ..CellConfig::default()
    };
    let made = first_read_template(&module, &config);

    let in_memory = Arc::new(made.clone());
    let refused = ReusableCell::new(in_memory, Arc::clone(&module), cpu_features)
        .err()
        .expect("a template held only in memory cannot be gone back to");
    assert!(matches!(refused, CellError::Reset(_)), "{refused}");

    let dir = tempfile::tempdir().unwrap();
    let template = Arc::new(template_file(
        made,
        &config,
        &dir.path().join("writer.snap"),
    ));
    let mut cell = ReusableCell::new(template, Arc::clone(&module), cpu_features).unwrap();

    let (mut grew, mut dropped) = (0, 0);
    // Enough runs that the copies of the page tables they grow into use the table
    // pool up, and KVM's shadows of it are dropped for it to be used again.
    for run in 1..=240u64 {
        let id = 0x7e00_0000_0000_0000u64 | run;
        let mut stdin = tempfile::tempfile().unwrap();
        stdin.write_all(&id.to_le_bytes()).unwrap();
        stdin.rewind().unwrap();
        let mut stdout = tempfile::tempfile().unwrap();
        let stdio = CellStdio {
            stdin: stdin.as_fd(),
            stdout: stdout.as_fd(),
            stderr: null.as_fd(),
        };
        let result = cell.run(&config, stdio, &CellControl::new());
        match (id & 7, id & 15, result) {
            (2 | 6, _, Ok(report)) => assert!(
                matches!(report.exit, CellExit::Trapped(_)),
                "run {run} reached memory it had not grown: {:?}",
                report.exit
            ),
            (5, _, Ok(report)) => assert!(
                matches!(report.exit, CellExit::Trapped(_)),
                "run {run}: {:?}",
                report.exit
            ),
            (_, 7, Err(failure)) => assert!(
                matches!(failure.error, CellError::Timeout(_)),
                "run {run}: {}",
                failure.error
            ),
            (_, _, Ok(report)) => {
                assert_eq!(report.exit, CellExit::Exited(0), "run {run}")
            }
            (_, _, Err(failure)) => panic!("run {run} failed: {}", failure.error),
        }
        let mut said = Vec::new();
        stdout.rewind().unwrap();
        stdout.read_to_end(&mut said).unwrap();
        assert_eq!(said, b"w", "run {run} wrote its own output only");

        let reset = cell.reset().unwrap();
        assert!(reset.pages >= 32, "run {run} wrote its 128 KiB: {reset:?}");
        // Its growth went into copies of the page tables: the runs after it that
        // reach past the template's memory trap (above), so none ran on them.
        if id & 3 < 2 {
            grew += 1;
        }
        dropped += u32::from(reset.system);
        let again = cell.reset().unwrap();
        dropped += u32::from(again.system);
        assert!(reset.kept > 0 && reset.kept <= reset.pages, "{reset:?}");
        assert!(reset.tables > 0, "{reset:?}");
        assert_eq!(
            again.pages, reset.kept,
            "nothing but the pages kept is left after run {run}: {reset:?} then {again:?}"
        );
    }
    assert_eq!(grew, 120);
    dropped
}
