//! Reset in place: a finished cell's partition put back to its template for the next
//! run, against starting a new cell from the template, by the pages the run dirtied.
//! The template is a program that wrote 8 MiB of its memory and waits for a count on
//! stdin; each run writes one byte to that many of those pages and exits, and the
//! partition is then reset (its written pages and its vCPU state put back). The pages
//! a reset puts back include the runtime's own (stack, request page, output).
//!
//! `cargo bench -p hypercell --bench reset` (`HYPERCELL_BENCH_RUNS` sets the runs per
//! row, default 200). Prints a markdown table of p50 and p99.

#[path = "support/mod.rs"]
mod support;

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hypercell_host::persist::{SnapshotFile, TemplatePoint};
use hypercell_host::{
    CellConfig, CellControl, CellExit, CellPayload, Compiler, ReusableCell, create_template,
    keep_vms_ready, start_from_template,
};
use support::{count_from_env, percentile, stdin_with, stdio_over};

/// Writes 128 pages of 64 KiB (8 MiB), reads an 8-byte count from stdin (where the
/// template stops), then writes one byte to each of that many 4 KiB pages, spread over
/// the 8 MiB, and exits.
const DIRTIER: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 130)
  (func (export "_start")
    (local $at i32)
    (local $n i32)
    (local.set $at (i32.const 131072))
    (loop $fill
      (i32.store8 (local.get $at) (i32.const 1))
      (local.set $at (i32.add (local.get $at) (i32.const 4096)))
      (br_if $fill (i32.lt_u (local.get $at) (i32.const 8519680))))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 8))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (local.set $n (i32.load (i32.const 16)))
    (local.set $at (i32.const 131072))
    (block $done
      (loop $dirty
        (br_if $done (i32.eqz (local.get $n)))
        (i32.store8 (local.get $at) (i32.const 2))
        (local.set $at (i32.add (local.get $at) (i32.const 8192)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $dirty)))
    (call $proc_exit (i32.const 0))))
"#;

fn main() {
    let runs = count_from_env("HYPERCELL_BENCH_RUNS", 200);
    let work = tempfile::tempdir().unwrap();
    let compiler = Compiler::with_cache_dir(Some(work.path().join("cache"))).unwrap();
    let path = work.path().join("dirtier.wat");
    std::fs::write(&path, DIRTIER).unwrap();
    let module = Arc::new(compiler.compile_file(&path).unwrap());
    let cpu_features = compiler.cpu_features();
    let null = File::options().write(true).open("/dev/null").unwrap();
    let (waiting, _keep_open) = support::pipe();
    let config = CellConfig::default();
    let payload = CellPayload::Wasm {
        module: &module,
        cpu_features,
    };
    let template = create_template(
        &config,
        payload,
        stdio_over(&waiting, &null),
        TemplatePoint::FirstRead,
    )
    .expect("the template is made");
    let template_path = work.path().join("dirtier.snap");
    SnapshotFile::new(
        &path,
        cpu_features,
        compiler.fingerprint(),
        &config,
        template,
    )
    .write_to(&template_path)
    .unwrap();
    let template = Arc::new(SnapshotFile::read_from(&template_path).unwrap().snapshot);
    keep_vms_ready(4).wait_until_full(Duration::from_secs(10));

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "Reset in place against a new cell from the template (VM made ahead), {runs} runs per row\n"
    );
    println!(
        "| pages the program wrote | pages reset (p50) | reset p50 (ms) | p99 (ms) | new cell to first instruction p50 (ms) | p99 (ms) | reset / new |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for written in [0u64, 16, 48, 256, 1000] {
        let mut cell =
            ReusableCell::new(Arc::clone(&template), Arc::clone(&module), cpu_features).unwrap();
        let (mut resets, mut pages, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let stdin = stdin_with(&written.to_le_bytes());
            let report = cell
                .run(&config, stdio_over(&stdin, &null), &CellControl::new())
                .expect("the run ends");
            assert_eq!(report.exit, CellExit::Exited(0));
            let started = Instant::now();
            let reset = cell.reset().expect("the partition is put back");
            resets.push(ms(started.elapsed()));
            pages.push(reset.pages as f64);

            let stdin = stdin_with(&written.to_le_bytes());
            let report = start_from_template(
                &config,
                payload,
                &template,
                stdio_over(&stdin, &null),
                &CellControl::new(),
            )
            .expect("the new cell ends");
            fresh.push(ms(report.stats.first_entry - report.stats.started));
        }
        let reset_p50 = percentile(resets.clone(), 0.5);
        let fresh_p50 = percentile(fresh.clone(), 0.5);
        println!(
            "| {written} | {:.0} | {reset_p50:.3} | {:.3} | {fresh_p50:.3} | {:.3} | {:.2}x |",
            percentile(pages, 0.5),
            percentile(resets, 0.99),
            percentile(fresh, 0.99),
            reset_p50 / fresh_p50,
        );
    }
}
