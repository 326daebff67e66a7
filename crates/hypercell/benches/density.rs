//! Memory per idle cell with many alive at once: `CELLS` (default 200) processes of
//! `hypercell run` and then of `wasmtime run --allow-precompiled`, each on a program that
//! prints `ready` and then blocks reading stdin. With all of them blocked, it reads
//! every process's RSS and PSS (`/proc/PID/smaps_rollup`) and the drop in the system's
//! available memory (which also counts kernel memory: KVM's page tables and vCPU
//! state), then closes their stdin and lets them exit.
//!
//! `cargo bench -p hypercell --bench density` (`HYPERCELL_BENCH_CELLS` changes the
//! count; `WASMTIME` picks the wasmtime binary). Prints a markdown table.

#[path = "support/mod.rs"]
mod support;

use support::{WAITER as IDLE, count_from_env, find_wasmtime, wasmtime_compile};

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// `Key:   1234 kB` from a /proc file, in KiB.
fn proc_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|line| line.starts_with(key))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
}

fn available_kib() -> u64 {
    proc_kib(
        &std::fs::read_to_string("/proc/meminfo").unwrap(),
        "MemAvailable:",
    )
}

struct Density {
    rss_mib: f64,
    pss_mib: f64,
    system_mib: f64,
}

/// Starts `count` idle processes from `command`, measures, and ends them.
fn measure(count: usize, command: impl Fn() -> Command) -> Density {
    let before = available_kib();
    let mut children: Vec<Child> = (0..count)
        .map(|_| {
            command()
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("start an idle program")
        })
        .collect();
    for child in &mut children {
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n");
    }
    let after = available_kib();
    let (mut rss, mut pss) = (0, 0);
    for child in &children {
        let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", child.id())).unwrap();
        rss += proc_kib(&rollup, "Rss:");
        pss += proc_kib(&rollup, "Pss:");
    }
    for mut child in children {
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }
    let per = |kib: u64| kib as f64 / count as f64 / 1024.0;
    Density {
        rss_mib: per(rss),
        pss_mib: per(pss),
        system_mib: per(before.saturating_sub(after)),
    }
}

fn main() {
    let count: usize = count_from_env("HYPERCELL_BENCH_CELLS", 200);
    let hypercell = Path::new(env!("CARGO_BIN_EXE_hypercell"));
    let wasmtime = find_wasmtime();
    let work = tempfile::tempdir().unwrap();
    let wasm = work.path().join("idle.wasm");
    std::fs::write(&wasm, wat::parse_str(IDLE).unwrap()).unwrap();
    let cwasm = work.path().join("idle.cwasm");
    wasmtime_compile(&wasmtime, &wasm, &cwasm);
    let cache = work.path().join("cache");
    let hypercell_run = || {
        let mut command = support::hypercell_run(hypercell, &cache);
        command.arg(&wasm);
        command
    };
    let wasmtime_run = || support::wasmtime_run(&wasmtime, &cwasm);
    // Fill the compile cache.
    measure(1, hypercell_run);

    let ours = measure(count, hypercell_run);
    let theirs = measure(count, wasmtime_run);
    println!("## Memory per idle program, {count} alive at once\n");
    println!(
        "| | RSS per process (MiB) | PSS per process (MiB) | system memory per process (MiB) |"
    );
    println!("|---|---:|---:|---:|");
    for (name, d) in [
        ("hypercell run (one cell each)", &ours),
        ("wasmtime run", &theirs),
    ] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} |",
            d.rss_mib, d.pss_mib, d.system_mib
        );
    }
    println!(
        "\nRatios hypercell/wasmtime: RSS {:.2}x, PSS {:.2}x, system memory {:.2}x.",
        ours.rss_mib / theirs.rss_mib,
        ours.pss_mib / theirs.pss_mib,
        ours.system_mib / theirs.system_mib
    );
}
