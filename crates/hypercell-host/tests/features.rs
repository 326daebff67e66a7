//! The WebAssembly features `wasmtime run` enables by default work in cells.

mod common;

use common::run;
use hypercell_host::{CellConfig, CellExit};

/// Each module uses one feature in `_start` and exits with 0 when it computed the
/// expected value; a wrong value is a trap.
const FEATURES: &[(&str, &str)] = &[
    (
        "simd",
        r#"(module (func (export "_start")
            (if (i32.ne (i32x4.extract_lane 3 (i32x4.add (v128.const i32x4 1 2 3 4) (v128.const i32x4 1 2 3 4))) (i32.const 8))
              (then unreachable))))"#,
    ),
    (
        "relaxed simd",
        r#"(module (func (export "_start")
            (if (i32.ne (i32x4.extract_lane 1 (i32x4.relaxed_trunc_f32x4_s (v128.const f32x4 1 2 3 4))) (i32.const 2))
              (then unreachable))))"#,
    ),
    (
        "tail calls",
        r#"(module
            (func $count (param i32) (result i32)
              (if (result i32) (i32.eqz (local.get 0)) (then (i32.const 7))
                (else (return_call $count (i32.sub (local.get 0) (i32.const 1))))))
            (func (export "_start") (if (i32.ne (call $count (i32.const 1000000)) (i32.const 7)) (then unreachable))))"#,
    ),
    (
        "multi-memory",
        r#"(module (memory 1) (memory $second 1)
            (func (export "_start")
              (i32.store $second (i32.const 8) (i32.const 5))
              (if (i32.ne (i32.load (i32.const 8)) (i32.const 0)) (then unreachable))
              (if (i32.ne (i32.load $second (i32.const 8)) (i32.const 5)) (then unreachable))))"#,
    ),
    (
        "memory64",
        r#"(module (memory i64 1)
            (func (export "_start")
              (i64.store (i64.const 16) (i64.const 99))
              (if (i64.ne (i64.load (i64.const 16)) (i64.const 99)) (then unreachable))))"#,
    ),
    (
        "bulk memory",
        r#"(module (memory 1) (data $d "abc")
            (func (export "_start")
              (memory.init $d (i32.const 100) (i32.const 0) (i32.const 3))
              (memory.copy (i32.const 200) (i32.const 100) (i32.const 3))
              (if (i32.ne (i32.load8_u (i32.const 202)) (i32.const 99)) (then unreachable))))"#,
    ),
    (
        "multi-value and extended constants",
        r#"(module (global $g i32 (i32.add (i32.const 40) (i32.const 2)))
            (func $pair (result i32 i32) (global.get $g) (i32.const 1))
            (func (export "_start") (if (i32.ne (i32.sub (call $pair)) (i32.const 41)) (then unreachable))))"#,
    ),
    (
        "typed function references",
        r#"(module (type $t (func (result i32))) (func $seven (result i32) (i32.const 7)) (elem declare func $seven)
            (func (export "_start") (if (i32.ne (call_ref $t (ref.func $seven)) (i32.const 7)) (then unreachable))))"#,
    ),
    (
        "garbage collection",
        r#"(module (type $point (struct (field i32) (field i32)))
            (func (export "_start")
              (if (i32.ne (struct.get $point 1 (struct.new $point (i32.const 3) (i32.const 4))) (i32.const 4))
                (then unreachable))))"#,
    ),
    (
        "exceptions",
        r#"(module (tag $oops (param i32))
            (func (export "_start")
              (if (i32.ne (block $caught (result i32) (try_table (catch $oops $caught) (throw $oops (i32.const 9))) (i32.const 0))
                          (i32.const 9))
                (then unreachable))))"#,
    ),
    (
        "wide arithmetic",
        r#"(module (func (export "_start")
            (if (i64.ne (i64.add128 (i64.const -1) (i64.const 0) (i64.const 1) (i64.const 0)) (i64.const 1))
              (then unreachable))
            (drop)))"#,
    ),
];

#[test]
fn default_wasmtime_features_run_in_cells() {
    let config = CellConfig {
        memory_limit: 64 << 20,
        ..CellConfig::default()
    };
    for (feature, wat) in FEATURES {
        let outcome = run(wat, &config, b"");
        assert_eq!(outcome.report().exit, CellExit::Exited(0), "{feature}");
    }
}
