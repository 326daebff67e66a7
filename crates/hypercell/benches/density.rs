//! Memory per idle cell with many alive at once, on a program that prints `ready` and
//! then blocks reading stdin.
//!
//! - **Processes:** `CELLS` (default 200) processes of `hypercell run` booting the
//!   module, then of `hypercell run TEMPLATE` from a `start` template of it, then of
//!   `wasmtime run --allow-precompiled`. With all of them blocked, it reads every
//!   process's RSS and PSS (`/proc/PID/smaps_rollup`) and the drop in the system's
//!   available memory, which also counts kernel memory (KVM's page tables and vCPU
//!   state), then closes their stdin and lets them exit.
//! - **In one process:** `TEMPLATE_CELLS` (default 1000) cells from one template file,
//!   alive at once in this process. Ours is the growth of this process's anonymous
//!   memory (each cell's private copies of the pages it wrote, its page tables and its
//!   threads' stacks); the kernel's is the rest of the drop in available memory (the
//!   template's page cache, once, is in neither: it was read before).
//!
//! `cargo bench -p hypercell --bench density` (`HYPERCELL_BENCH_CELLS` and
//! `HYPERCELL_BENCH_TEMPLATE_CELLS` change the counts; `WASMTIME` picks the wasmtime
//! binary). Prints markdown tables.

#[path = "support/mod.rs"]
mod support;

use support::{
    WAITER as IDLE, available_kib, count_from_env, find_wasmtime, pipe, proc_kib, wasmtime_compile,
};

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use hypercell_host::persist::SnapshotFile;
use hypercell_host::{Cell, Compiler, OwnedStdio};
use std::process::{Child, Command, Stdio};

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
    let template = work.path().join("idle.template");
    let made = Command::new(hypercell)
        .env("XDG_CACHE_HOME", &cache)
        .args(["template", "create", "--at", "start", "-o"])
        .arg(&template)
        .arg(&wasm)
        .status()
        .unwrap();
    assert!(made.success());
    let hypercell_template = || {
        let mut command = support::hypercell_run(hypercell, &cache);
        command.arg(&template);
        command
    };

    in_one_process(
        count_from_env("HYPERCELL_BENCH_TEMPLATE_CELLS", 1000),
        &template,
        &cache,
    );
    let ours = measure(count, hypercell_run);
    let templated = measure(count, hypercell_template);
    let theirs = measure(count, wasmtime_run);
    println!("## Memory per idle program, {count} alive at once\n");
    println!(
        "| | RSS per process (MiB) | PSS per process (MiB) | system memory per process (MiB) |"
    );
    println!("|---|---:|---:|---:|");
    for (name, d) in [
        ("hypercell run MODULE (one cell each)", &ours),
        ("hypercell run TEMPLATE (one cell each)", &templated),
        ("wasmtime run", &theirs),
    ] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} |",
            d.rss_mib, d.pss_mib, d.system_mib
        );
    }
    for (name, d) in [("MODULE", &ours), ("TEMPLATE", &templated)] {
        println!(
            "\nRatios hypercell run {name}/wasmtime: RSS {:.2}x, PSS {:.2}x, system memory {:.2}x.",
            d.rss_mib / theirs.rss_mib,
            d.pss_mib / theirs.pss_mib,
            d.system_mib / theirs.system_mib
        );
    }
}

/// `count` cells from the template file at `template` alive at once in this process.
fn in_one_process(count: usize, template: &Path, cache: &Path) {
    raise_descriptor_limit();
    let file = SnapshotFile::read_from(template).unwrap();
    let compiler = Compiler::with_cache_dir(Some(cache.join("hypercell"))).unwrap();
    let module = Arc::new(compiler.compile_file(&file.module).unwrap());
    let config = file.config(None);
    let template = Arc::new(file.snapshot);
    let anonymous = || {
        proc_kib(
            &std::fs::read_to_string("/proc/self/smaps_rollup").unwrap(),
            "Anonymous:",
        )
    };
    let (system_before, ours_before) = (available_kib(), anonymous());
    let mut cells = Vec::with_capacity(count);
    for _ in 0..count {
        let (stdin, feed) = pipe();
        let (said, stdout) = pipe();
        let stdio = OwnedStdio {
            stdin: OwnedFd::from(stdin),
            stdout: OwnedFd::from(stdout),
            stderr: OwnedFd::from(File::options().write(true).open("/dev/null").unwrap()),
        };
        let cell = Cell::from_template(
            config.clone(),
            Arc::clone(&module),
            compiler.cpu_features(),
            stdio,
            Arc::clone(&template),
        );
        cells.push((cell, feed, BufReader::new(said)));
    }
    for (_, _, said) in &mut cells {
        let mut line = String::new();
        said.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
    }
    let system = system_before.saturating_sub(available_kib()) as f64;
    let ours = anonymous().saturating_sub(ours_before) as f64;
    for (cell, feed, _) in cells {
        drop(feed);
        cell.wait().unwrap();
    }
    let per = |kib: f64| kib / count as f64 / 1024.0;
    println!("## Memory per idle cell, {count} cells from one template in one process\n");
    println!("| system memory per cell (MiB) | ours (MiB) | the kernel's (MiB) |");
    println!("|---:|---:|---:|");
    println!(
        "| {:.3} | {:.3} | {:.3} |\n",
        per(system),
        per(ours),
        per(system - ours)
    );
}

/// Each cell holds a handful of descriptors (its VM, vCPU and stdio): lift the soft
/// limit to the hard one.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the one struct they are given.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}
