//! Determinism: each compute kernel, snapshotted at random points while it runs (and
//! once while it waits for stdin), goes on from every snapshot, written to a file and
//! loaded back, to the same output and the same final linear memory, bit for bit, as
//! a run that was never interrupted. n-body's snapshots hold live vector registers.

#[path = "support/binary.rs"]
mod binary;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use binary::*;
use hypercell_host::persist::{CellSnapshot, SnapshotFile};
use hypercell_host::{Cell, CellConfig, CellExit, CompiledModule, Compiler, OwnedStdio};

/// The kernels, each made small enough to run in about a tenth of a second.
const KERNELS: [(&str, &str); 5] = [
    ("hash", "-DROUNDS=60000000ULL"),
    ("nbody", "-DSTEPS=500000"),
    ("matmul", "-DSIZE=256"),
    ("sort", "-DCOUNT=400000"),
    ("sha256", "-DMIB=8u"),
];

/// Random snapshot points per kernel, besides the one taken while it waits for stdin.
const POINTS: usize = 6;

/// Compiles kernel `name` with `define` and the driver that hashes memory at the end.
fn kernel(name: &str, define: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let object = scratch().join(format!("{name}-kernel.o"));
    let wasm = scratch().join(format!("{name}-determinism.wasm"));
    let clang = |args: &[&std::ffi::OsStr]| {
        let status = Command::new("clang")
            .args(["--target=wasm32-wasi", "-O2"])
            .args(args)
            .status()
            .expect("clang is needed for the C tests: run .ci/run");
        assert!(status.success(), "clang failed on {name}");
    };
    let source = root.join(format!("benches/kernels/{name}.c"));
    clang(&[
        "-c".as_ref(),
        "-Dmain=kernel_main".as_ref(),
        define.as_ref(),
        source.as_os_str(),
        "-o".as_ref(),
        object.as_os_str(),
    ]);
    let driver = root.join("tests/programs/kernel_driver.c");
    clang(&[
        driver.as_os_str(),
        object.as_os_str(),
        "-o".as_ref(),
        wasm.as_os_str(),
    ]);
    wasm
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two new descriptors into the array, which are then owned here.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

/// A cell's stdin writer and a receiver of its whole stdout, read on a thread.
struct Wires {
    stdin: std::fs::File,
    stdout: mpsc::Receiver<Vec<u8>>,
    ready: mpsc::Receiver<()>,
}

fn wire() -> (OwnedStdio, Wires) {
    let (stdin, feed) = pipe();
    let (mut said, stdout) = pipe();
    let (ready_sender, ready) = mpsc::channel();
    let (sender, output) = mpsc::channel();
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match said.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
            }
            if all.starts_with(b"ready\n") {
                let _ = ready_sender.send(());
            }
        }
        let _ = sender.send(all);
    });
    let null = std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .unwrap();
    let stdio = OwnedStdio {
        stdin: OwnedFd::from(stdin),
        stdout: OwnedFd::from(stdout),
        stderr: OwnedFd::from(null),
    };
    (
        stdio,
        Wires {
            stdin: feed,
            stdout: output,
            ready,
        },
    )
}

/// A small xorshift generator: the test prints its seed, so a failure can be replayed
/// with `HYPERCELL_TEST_SEED`.
struct Points(u64);

impl Points {
    fn next_below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound.max(1)
    }
}

fn seed() -> u64 {
    std::env::var("HYPERCELL_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        })
}

/// Runs `module` from the start to its end, uninterrupted: its output and run time.
fn uninterrupted(module: &Arc<CompiledModule>, cpu_features: u32) -> (Vec<u8>, Duration) {
    let (stdio, mut wires) = wire();
    let cell = Cell::start(
        CellConfig::default(),
        Arc::clone(module),
        cpu_features,
        stdio,
    );
    wires.ready.recv().unwrap();
    let started = Instant::now();
    wires.stdin.write_all(b"go\n").unwrap();
    let report = cell.wait().unwrap_or_else(|f| panic!("{}", f.error));
    let took = started.elapsed();
    assert_eq!(report.exit, CellExit::Exited(0));
    (wires.stdout.recv().unwrap(), took)
}

/// Whether any of XMM0-15 in `snapshot`'s XSAVE region is not zero.
fn vector_registers_live(snapshot: &CellSnapshot) -> bool {
    // The legacy XSAVE area holds XMM0-15 at bytes 160..416: 32-bit words 40..104.
    snapshot.vcpu.xsave[40..104].iter().any(|&word| word != 0)
}

#[test]
fn kernels_restored_from_random_points_end_bit_for_bit_as_uninterrupted_runs() {
    let seed = seed();
    println!("seed {seed} (HYPERCELL_TEST_SEED={seed} replays the points)");
    let mut points = Points(seed);
    let compiler = Compiler::with_cache_dir(Some(scratch().join("determinism-cache"))).unwrap();
    let cpu_features = compiler.cpu_features();
    let snapshots = tempfile::tempdir().unwrap();
    for (name, define) in KERNELS {
        let path = kernel(name, define);
        let module = Arc::new(compiler.compile_file(&path).unwrap());
        let (expected, took) = uninterrupted(&module, cpu_features);
        let text = String::from_utf8_lossy(&expected).into_owned();
        assert!(text.contains("memory "), "{name}: {text}");

        // The same run again, snapshotted as it waits for stdin and then at random
        // points while it computes.
        let (stdio, mut wires) = wire();
        let cell = Cell::start(
            CellConfig::default(),
            Arc::clone(&module),
            cpu_features,
            stdio,
        );
        wires.ready.recv().unwrap();
        let mut taken = vec![cell.snapshot().expect("a cell waiting for stdin")];
        cell.resume();
        wires.stdin.write_all(b"go\n").unwrap();
        // Every point falls in the first half of the run, however the random draws
        // add up: the cell is still computing at each.
        let span = took.as_micros() as u64;
        for _ in 0..POINTS {
            let gap = points.next_below(span / (2 * POINTS as u64));
            std::thread::sleep(Duration::from_micros(gap));
            match cell.snapshot() {
                Ok(snapshot) => taken.push(snapshot),
                Err(_) => break,
            }
            cell.resume();
        }
        let report = cell.wait().unwrap_or_else(|f| panic!("{}", f.error));
        assert_eq!(report.exit, CellExit::Exited(0));
        assert_eq!(
            wires.stdout.recv().unwrap(),
            expected,
            "{name}: the snapshotted run itself ends as the uninterrupted one"
        );
        assert!(taken.len() > 2, "{name}: only {} snapshots", taken.len());
        if name == "nbody" {
            assert!(
                taken[1..].iter().any(vector_registers_live),
                "n-body's snapshots hold live vector registers"
            );
        }

        for (index, snapshot) in taken.into_iter().enumerate() {
            let delivered = snapshot.services.output_written as usize;
            let file = snapshots.path().join(format!("{name}-{index}.snap"));
            SnapshotFile::new(
                &path,
                cpu_features,
                compiler.fingerprint(),
                &CellConfig::default(),
                snapshot,
            )
            .write_to(&file)
            .unwrap();
            let loaded = SnapshotFile::read_from(&file).unwrap().snapshot;
            let (stdio, mut wires) = wire();
            wires.stdin.write_all(b"go\n").unwrap();
            let cell = Cell::restore(
                CellConfig::default(),
                Arc::clone(&module),
                cpu_features,
                stdio,
                loaded,
                false,
            );
            let report = cell.wait().unwrap_or_else(|f| {
                panic!("{name} from snapshot {index} (seed {seed}): {}", f.error)
            });
            assert_eq!(report.exit, CellExit::Exited(0));
            let rest = wires.stdout.recv().unwrap();
            assert_eq!(
                String::from_utf8_lossy(&rest),
                String::from_utf8_lossy(&expected[delivered..]),
                "{name} from snapshot {index}, {delivered} bytes delivered before it (seed {seed})"
            );
        }
        std::fs::remove_file(&path).unwrap();
    }
}
