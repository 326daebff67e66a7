//! Restoring a cell from a snapshot, in-process: the time from asking for a new cell
//! from the snapshot to its first guest instruction, and to its end, over many restores,
//! beside booting the same program afresh. The snapshot is of a program blocked reading
//! stdin (printed `ready`, waiting for a line), so each restored cell reads its own stdin
//! and exits. It is restored two ways: from its file, loaded once, whose memory image
//! each cell maps copy-on-write, and from memory, which each cell copies. Then the same
//! again with VMs made ahead by a pool (`keep_vms_ready`), as a server would keep them.
//!
//! `cargo bench -p hypercell --bench restore` (`HYPERCELL_BENCH_RUNS` sets the count,
//! default 200). Prints a markdown table of p50 and p99.

#[path = "support/mod.rs"]
mod support;

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hypercell_host::persist::{CellSnapshot, SnapshotFile};
use hypercell_host::{
    CellConfig, CellControl, CellPayload, CellReport, CellStdio, CompiledModule, Compiler,
    keep_vms_ready, restore_cell, run_cell_with_control,
};
use support::{WAITER, count_from_env, percentile, stdin_with, stdio_over};

/// Takes the snapshot: runs the program until it waits for stdin.
fn take_snapshot(module: &CompiledModule, cpu_features: u32) -> CellSnapshot {
    let (reader, writer) = support::pipe();
    let null = File::options().write(true).open("/dev/null").unwrap();
    let control = CellControl::new();
    let (snapshot_sender, snapshot) = mpsc::channel();
    std::thread::scope(|scope| {
        let control_for_snapshot = control.clone();
        scope.spawn(move || {
            // Wait until the cell runs, then until it is blocked reading.
            while !control_for_snapshot.pause() {
                std::thread::sleep(Duration::from_millis(1));
            }
            control_for_snapshot.resume();
            let taken = loop {
                std::thread::sleep(Duration::from_millis(20));
                if let Ok(snapshot) = control_for_snapshot.snapshot() {
                    break snapshot;
                }
                control_for_snapshot.resume();
            };
            snapshot_sender.send(taken).unwrap();
            control_for_snapshot.stop(hypercell_host::StopReason::Signal(15));
        });
        let stdio = CellStdio {
            stdin: reader.as_fd(),
            stdout: null.as_fd(),
            stderr: null.as_fd(),
        };
        let payload = CellPayload::Wasm {
            module,
            cpu_features,
        };
        let _ = run_cell_with_control(&CellConfig::default(), payload, stdio, &control);
    });
    drop(writer);
    snapshot.recv().unwrap()
}

fn main() {
    let runs = count_from_env("HYPERCELL_BENCH_RUNS", 200);
    let work = tempfile::tempdir().unwrap();
    let compiler = Compiler::with_cache_dir(Some(work.path().join("cache"))).unwrap();
    let path = work.path().join("waiter.wat");
    std::fs::write(&path, WAITER).unwrap();
    let module = compiler.compile_file(&path).unwrap();
    let cpu_features = compiler.cpu_features();
    let snapshot = take_snapshot(&module, cpu_features);
    let snapshot_path = work.path().join("waiter.snap");
    SnapshotFile::new(
        &path,
        cpu_features,
        compiler.fingerprint(),
        &CellConfig::default(),
        snapshot.clone(),
    )
    .write_to(&snapshot_path)
    .unwrap();
    let mapped = SnapshotFile::read_from(&snapshot_path).unwrap().snapshot;
    let null = File::options().write(true).open("/dev/null").unwrap();
    let payload = CellPayload::Wasm {
        module: &module,
        cpu_features,
    };
    let config = CellConfig::default();
    let mut rows = Vec::new();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let record = |times: &mut (Vec<f64>, Vec<f64>), report: CellReport, started: Instant| {
        times
            .0
            .push(ms(report.stats.first_entry - report.stats.started));
        times.1.push(ms(started.elapsed()));
    };
    for pooled in [false, true] {
        if pooled {
            keep_vms_ready(4).wait_until_full(Duration::from_secs(10));
        }
        let mut restored = (Vec::new(), Vec::new());
        let mut copied = (Vec::new(), Vec::new());
        let mut booted = (Vec::new(), Vec::new());
        for _ in 0..runs {
            for (from, times) in [(&mapped, &mut restored), (&snapshot, &mut copied)] {
                let stdin = stdin_with(b"go\n");
                let started = Instant::now();
                let report = restore_cell(
                    &config,
                    payload,
                    from,
                    stdio_over(&stdin, &null),
                    &CellControl::new(),
                )
                .unwrap();
                record(times, report, started);
            }
            let stdin = stdin_with(b"go\n");
            let started = Instant::now();
            let report = run_cell_with_control(
                &config,
                payload,
                stdio_over(&stdin, &null),
                &CellControl::new(),
            )
            .unwrap();
            record(&mut booted, report, started);
        }
        let made = if pooled {
            "VM made ahead"
        } else {
            "VM made for it"
        };
        rows.push((format!("restored from its file, mapped; {made}"), restored));
        rows.push((format!("restored from memory, copied; {made}"), copied));
        rows.push((format!("booted afresh; {made}"), booted));
    }
    println!(
        "## Restore from a snapshot of {} KiB of saved pages, in-process ({runs} each, interleaved)\n",
        snapshot.memory.saved_len() / 1024
    );
    println!("| | to first instruction p50 (ms) | p99 (ms) | to exit p50 (ms) | p99 (ms) |");
    println!("|---|---:|---:|---:|---:|");
    for (name, (first, total)) in rows {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} | {:.3} |",
            percentile(first.clone(), 0.5),
            percentile(first, 0.99),
            percentile(total.clone(), 0.5),
            percentile(total, 0.99)
        );
    }
}
