//! Runs WAT programs in real cells with stdio captured in files.

// Every test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::OnceLock;

use hypercell_host::compile::CompileCache;
use hypercell_host::persist::{CellSnapshot, SnapshotFile, TemplatePoint};
use hypercell_host::{
    BoundsChecks, CellConfig, CellFailure, CellPayload, CellReport, CellStdio, CompiledModule,
    Compiler, create_template,
};

/// What a finished cell left behind.
pub struct Outcome {
    /// The cell's report, or why it failed.
    pub result: Result<CellReport, CellFailure>,
    /// Everything the program wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything the program wrote to stderr.
    pub stderr: Vec<u8>,
}

impl Outcome {
    /// The report of a cell that ran to its end; panics with the failure otherwise.
    pub fn report(&self) -> &CellReport {
        match &self.result {
            Ok(report) => report,
            Err(failure) => panic!("the cell failed: {}", failure.error),
        }
    }
}

fn compiler() -> &'static Compiler {
    compiler_for(BoundsChecks::GuardPages)
}

/// A compiler making code with `checks`, each with a cache of its own.
fn compiler_for(checks: BoundsChecks) -> &'static Compiler {
    static GUARD_PAGES: OnceLock<(Compiler, tempfile::TempDir)> = OnceLock::new();
    static EXPLICIT: OnceLock<(Compiler, tempfile::TempDir)> = OnceLock::new();
    let cell = match checks {
        BoundsChecks::GuardPages => &GUARD_PAGES,
        BoundsChecks::Explicit => &EXPLICIT,
    };
    &cell
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let cache = CompileCache::new(dir.path().to_path_buf());
            (Compiler::with_options(Some(cache), checks).unwrap(), dir)
        })
        .0
}

/// Compiles a WAT module for cells.
pub fn compile(wat: &str) -> CompiledModule {
    compile_checked(wat, BoundsChecks::GuardPages)
}

/// Compiles a WAT module for cells, its code keeping memory accesses in bounds as
/// `checks` says.
pub fn compile_checked(wat: &str, checks: BoundsChecks) -> CompiledModule {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("test.wat");
    std::fs::write(&path, wat).unwrap();
    compiler_for(checks).compile_file(&path).unwrap()
}

/// Compiles a module file for cells.
pub fn compile_file(path: &Path) -> CompiledModule {
    compiler().compile_file(path).unwrap()
}

/// Runs `wat`, compiled with `checks`, in a cell with `config`, feeding it `stdin`.
pub fn run_checked(wat: &str, config: &CellConfig, stdin: &[u8], checks: BoundsChecks) -> Outcome {
    run_compiled(&compile_checked(wat, checks), config, stdin)
}

/// Runs `wat` in a cell with `config`, feeding it `stdin`.
pub fn run(wat: &str, config: &CellConfig, stdin: &[u8]) -> Outcome {
    run_compiled(&compile(wat), config, stdin)
}

/// Runs a compiled module in a cell with `config`, feeding it `stdin`.
pub fn run_compiled(module: &CompiledModule, config: &CellConfig, stdin: &[u8]) -> Outcome {
    let mut input = tempfile::tempfile().unwrap();
    input.write_all(stdin).unwrap();
    input.seek(SeekFrom::Start(0)).unwrap();
    let mut stdout = tempfile::tempfile().unwrap();
    let mut stderr = tempfile::tempfile().unwrap();
    let stdio = CellStdio {
        stdin: input.as_fd(),
        stdout: stdout.as_fd(),
        stderr: stderr.as_fd(),
    };
    let payload = CellPayload::Wasm {
        module,
        cpu_features: compiler().cpu_features(),
    };
    let result = hypercell_host::run_cell(config, payload, stdio);
    let read_back = |file: &mut std::fs::File| {
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut bytes).unwrap();
        bytes
    };
    Outcome {
        result,
        stdout: read_back(&mut stdout),
        stderr: read_back(&mut stderr),
    }
}

/// A module importing the WASI calls the tests use, with helpers around a `_start`
/// whose body is `body`.
///
/// Memory map: 0..16 scratch for iovecs, 16..32 `$emit` scratch, 1024.. free for tests.
/// `$emit(ptr, len)` writes memory to stdout; `$emit32`/`$emit64` write a value's
/// little-endian bytes.
pub fn program(body: &str) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_res_get" (func $clock_res_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fd_fdstat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "sched_yield" (func $sched_yield (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 4)
  (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
  (func $emit (param $ptr i32) (param $len i32)
    (drop (call $write (i32.const 1) (local.get $ptr) (local.get $len))))
  (func $emit32 (param $v i32)
    (i32.store (i32.const 16) (local.get $v))
    (call $emit (i32.const 16) (i32.const 4)))
  (func $emit64 (param $v i64)
    (i64.store (i32.const 16) (local.get $v))
    (call $emit (i32.const 16) (i32.const 8)))
  (func (export "_start") {body}))"#
    )
}

/// A pipe: its read end and its write end.
pub fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two new descriptors into the array, which are then owned here.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and nothing else owns them.
    let [read, write] =
        fds.map(|fd| unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    (std::fs::File::from(read), std::fs::File::from(write))
}

/// The imports, memory and functions of the programs that fill memory with patterns
/// (`tests/isolation.rs`, `tests/reuse.rs`): 4 pages of memory and `w` at 32;
/// `$read8` reads 8 bytes of stdin; `$fill` writes a value over the 128 KiB from
/// 64 KiB; `$holds` says whether they all hold it.
pub const PATTERN_FUNCTIONS: &str = r#"
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 4)
  (data (i32.const 32) "w")
  (func $read8 (result i64)
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 8))
    (i64.store (i32.const 16) (i64.const 0))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i64.load (i32.const 16)))
  (func $fill (param $v i64)
    (local $at i32)
    (local.set $at (i32.const 65536))
    (loop $next
      (i64.store (local.get $at) (local.get $v))
      (local.set $at (i32.add (local.get $at) (i32.const 8)))
      (br_if $next (i32.lt_u (local.get $at) (i32.const 196608)))))
  (func $holds (param $v i64) (result i32)
    (local $at i32)
    (local.set $at (i32.const 65536))
    (loop $next
      (if (i64.ne (i64.load (local.get $at)) (local.get $v))
        (then (return (i32.const 0))))
      (local.set $at (i32.add (local.get $at) (i32.const 8)))
      (br_if $next (i32.lt_u (local.get $at) (i32.const 196608))))
    (i32.const 1))
"#;

/// A `first-read` template of `module` made with `config`, written to `path` and read
/// back, so that cells from it map the file's memory as cells of a template file do.
pub fn first_read_template_file(
    module: &CompiledModule,
    config: &CellConfig,
    path: &Path,
) -> CellSnapshot {
    template_file(first_read_template(module, config), config, path)
}

/// `template`, made with `config`, written to `path` and read back.
pub fn template_file(template: CellSnapshot, config: &CellConfig, path: &Path) -> CellSnapshot {
    let cpu_features = compiler().cpu_features();
    SnapshotFile::new(Path::new("test.wat"), cpu_features, "", config, template)
        .write_to(path)
        .unwrap();
    SnapshotFile::read_from(path).unwrap().snapshot
}

/// A `first-read` template of `module` made with `config`, held in memory.
pub fn first_read_template(module: &CompiledModule, config: &CellConfig) -> CellSnapshot {
    let cpu_features = compiler().cpu_features();
    let null = std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let (template_stdin, _keep_open) = pipe();
    create_template(
        config,
        CellPayload::Wasm {
            module,
            cpu_features,
        },
        CellStdio {
            stdin: template_stdin.as_fd(),
            stdout: null.as_fd(),
            stderr: null.as_fd(),
        },
        TemplatePoint::FirstRead,
    )
    .unwrap()
}

/// The CPU features cells' code is compiled for here.
pub fn cpu_features() -> u32 {
    compiler().cpu_features()
}
