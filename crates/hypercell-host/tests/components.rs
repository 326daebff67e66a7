//! Components per cell: a call into a component the cell was not given answers
//! `notcapable`, and only those; strict checking names the import a cell could not
//! serve; directories need `fs`.

mod common;

use std::path::Path;

use common::{program, run};
use hypercell_host::compile::check_components;
use hypercell_host::config::{Components, component_names};
use hypercell_host::fs::Preopen;
use hypercell_host::{CellConfig, CellError, CellExit, CompileError};

/// Exits with a bit set for each call that answered `notcapable` (76): 1 arguments,
/// 2 environment, 4 clocks (a read, and a sleep through `poll_oneoff`), 8 random,
/// 16 a file descriptor, 32 stdout. Descriptor 3 is no preopen: with `fs` it is `badf`.
const PROBE: &str = r#"
    (local $mask i32)
    (if (i32.eq (call $args_sizes_get (i32.const 1024) (i32.const 1028)) (i32.const 76))
      (then (local.set $mask (i32.or (local.get $mask) (i32.const 1)))))
    (if (i32.eq (call $environ_sizes_get (i32.const 1024) (i32.const 1028)) (i32.const 76))
      (then (local.set $mask (i32.or (local.get $mask) (i32.const 2)))))
    ;; A relative clock subscription of 1 ns at 2048.
    (i64.store (i32.const 2048) (i64.const 7))
    (i32.store8 (i32.const 2056) (i32.const 0))
    (i32.store (i32.const 2064) (i32.const 1))
    (i64.store (i32.const 2072) (i64.const 1))
    (i64.store (i32.const 2080) (i64.const 0))
    (i32.store16 (i32.const 2088) (i32.const 0))
    (if (i32.and
          (i32.eq (call $clock_time_get (i32.const 1) (i64.const 0) (i32.const 1032)) (i32.const 76))
          (i32.eq (call $poll_oneoff (i32.const 2048) (i32.const 3072) (i32.const 1) (i32.const 1040)) (i32.const 76)))
      (then (local.set $mask (i32.or (local.get $mask) (i32.const 4)))))
    (if (i32.eq (call $random_get (i32.const 1048) (i32.const 8)) (i32.const 76))
      (then (local.set $mask (i32.or (local.get $mask) (i32.const 8)))))
    (if (i32.eq (call $fd_fdstat_get (i32.const 3) (i32.const 1056)) (i32.const 76))
      (then (local.set $mask (i32.or (local.get $mask) (i32.const 16)))))
    (i32.store8 (i32.const 1100) (i32.const 33))
    (if (i32.eq (call $write (i32.const 1) (i32.const 1100) (i32.const 1)) (i32.const 76))
      (then (local.set $mask (i32.or (local.get $mask) (i32.const 32)))))
    (call $proc_exit (local.get $mask))"#;

/// The bit `PROBE` sets for a component.
fn bit(component: Components) -> i32 {
    [
        Components::ARGS,
        Components::ENV,
        Components::CLOCKS,
        Components::RANDOM,
        Components::FS,
        Components::STDIO,
    ]
    .iter()
    .position(|&c| c == component)
    .map_or(0, |at| 1 << at)
}

fn probe(components: Components) -> (i32, Vec<u8>) {
    let config = CellConfig {
        components,
        ..CellConfig::default()
    };
    let outcome = run(&program(PROBE), &config, b"");
    let CellExit::Exited(mask) = outcome.report().exit else {
        panic!("{:?}", outcome.report().exit);
    };
    (mask, outcome.stdout)
}

#[test]
fn each_missing_component_answers_notcapable_and_only_it() {
    assert_eq!(probe(Components::ALL), (0, b"!".to_vec()));
    assert_eq!(probe(Components::NONE).0, 63);
    for (name, component) in Components::NAMES {
        let without = Components(Components::ALL.0 & !component.0);
        let (mask, stdout) = probe(without);
        assert_eq!(mask, bit(component), "without {name}");
        let wrote = component != Components::STDIO;
        assert_eq!(stdout == b"!", wrote, "without {name}: {stdout:?}");
    }
}

#[test]
fn directories_need_the_fs_component() {
    let dir = tempfile::tempdir().unwrap();
    let config = CellConfig {
        components: Components::STDIO,
        preopens: vec![Preopen {
            host: dir.path().to_path_buf(),
            guest: "/data".into(),
            read_only: false,
        }],
        ..CellConfig::default()
    };
    let outcome = run(&program("(call $proc_exit (i32.const 0))"), &config, b"");
    let failure = outcome.result.expect_err("refused");
    assert!(
        matches!(failure.error, CellError::FsNotGiven),
        "{}",
        failure.error
    );
    assert_eq!(
        failure.error.to_string(),
        "directories are granted to the cell, but not the `fs` component that serves them"
    );
}

#[test]
fn strict_checking_names_the_import_no_component_given_serves() {
    let path = Path::new("probe.wat");
    let probe = program(PROBE);
    let check = |components| check_components(path, probe.as_bytes(), components);
    assert!(check(Components::ALL).is_ok());
    match check(Components(Components::ALL.0 & !Components::RANDOM.0)) {
        Err(CompileError::Ungranted { name, needs, .. }) => {
            assert_eq!(
                (name.as_str(), needs.as_str()),
                ("random_get", "the `random` component")
            );
        }
        other => panic!("{other:?}"),
    }
    // A descriptor call is of use with stdio, files or named channels.
    let files_only = Components::ALL.0 & !Components::STDIO.0;
    assert!(check(Components(files_only)).is_ok());
    let error = check(
        Components::ARGS
            .union(Components::ENV)
            .union(Components::CLOCKS)
            .union(Components::RANDOM),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "`probe.wat` imports `wasi_snapshot_preview1::fd_write`, which needs the `stdio`, `fs` or `channels` component, and the cell is not given it"
    );
    let sockets = r#"(module (import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32))))"#;
    let error = check_components(path, sockets.as_bytes(), Components::ALL).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("which Hypercell does not offer yet"),
        "{error}"
    );
    assert_eq!(
        component_names(Components::STDIO.union(Components::FS)),
        "stdio,fs"
    );
}
