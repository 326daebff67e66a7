//! Pausing, resuming and snapshotting a running cell from another thread: a paused cell
//! computes nothing, even when it was blocked reading stdin, hands over the output it
//! wrote, and goes on where it stopped; a stop reaches it while paused; a snapshot goes
//! on in a new cell exactly as the original did.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{compile, pipe, program};
use hypercell_host::persist::{CellSnapshot, PageRun, SavedPages};
use hypercell_host::{
    Cell, CellConfig, CellControl, CellError, CellExit, CellFailure, CellPayload, CellReport,
    CellStdio, CompiledModule, Compiler, OwnedStdio, StopReason, restore_cell,
    run_cell_with_control,
};
use std::sync::Arc;

/// Writes "?", then reads a byte of stdin into address 1024.
const PROMPT_AND_READ: &str = r#"
    (i32.store8 (i32.const 1024) (i32.const 63))
    (call $emit (i32.const 1024) (i32.const 1))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 1))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))"#;

/// Writes back the byte read.
const ECHO_BYTE: &str = "(call $emit (i32.const 1024) (i32.const 1))";

/// How long a test watches a paused cell for signs of life.
const WATCH: Duration = Duration::from_millis(200);
/// Longest a test waits for an event that should come at once.
const PATIENCE: Duration = Duration::from_secs(60);

/// A cell running `wat` on its own thread, with stdin and stdout as pipes the test holds.
struct Running {
    control: CellControl,
    stdin: Option<File>,
    stdout: File,
    done: mpsc::Receiver<Result<CellReport, CellFailure>>,
}

/// The tests measure this process's CPU time: they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn start(wat: &str) -> Running {
    start_compiled(compile(wat))
}

fn start_compiled(module: CompiledModule) -> Running {
    let cpu_features = Compiler::with_cache_dir(None).unwrap().cpu_features();
    let (stdin_read, stdin_write) = pipe();
    let (stdout_read, stdout_write) = pipe();
    let control = CellControl::new();
    let (sender, done) = mpsc::channel();
    let cell_control = control.clone();
    thread::spawn(move || {
        let stdio = CellStdio {
            stdin: stdin_read.as_fd(),
            stdout: stdout_write.as_fd(),
            stderr: stdout_write.as_fd(),
        };
        let config = CellConfig {
            timeout: Some(PATIENCE),
            ..CellConfig::default()
        };
        let payload = CellPayload::Wasm {
            module: &module,
            cpu_features,
        };
        let _ = sender.send(run_cell_with_control(
            &config,
            payload,
            stdio,
            &cell_control,
        ));
    });
    Running {
        control,
        stdin: Some(stdin_write),
        stdout: stdout_read,
        done,
    }
}

impl Running {
    /// Reads exactly `len` bytes of the program's output.
    fn read(&mut self, len: usize) -> Vec<u8> {
        let mut stdout = self.stdout.try_clone().unwrap();
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            let mut bytes = vec![0; len];
            stdout.read_exact(&mut bytes).unwrap();
            let _ = sender.send(bytes);
        });
        receiver.recv_timeout(PATIENCE).expect("the output arrives")
    }

    /// Everything the program writes until it ends.
    fn read_to_end(&mut self) -> Vec<u8> {
        let mut stdout = self.stdout.try_clone().unwrap();
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || {
            let mut bytes = Vec::new();
            stdout.read_to_end(&mut bytes).unwrap();
            let _ = sender.send(bytes);
        });
        receiver.recv_timeout(PATIENCE).expect("the output ends")
    }

    /// Waits for the cell to end.
    fn finish(self) -> Result<CellReport, CellFailure> {
        drop(self.stdin);
        self.done.recv_timeout(PATIENCE).expect("the cell ends")
    }
}

/// CPU time this process used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the plain struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Writes "s", then spins through 2^33 iterations of a counter and writes "e".
const SPIN: &str = r#"
    (local $i i64)
    (i32.store8 (i32.const 1024) (i32.const 115))
    (call $emit (i32.const 1024) (i32.const 1))
    (loop $again
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $again (i64.lt_u (local.get $i) (i64.const 8589934592))))
    (i32.store8 (i32.const 1024) (i32.const 101))
    (call $emit (i32.const 1024) (i32.const 1))"#;

#[test]
fn a_paused_cell_computes_nothing_until_it_is_resumed() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut cell = start(&program(SPIN));
    assert_eq!(cell.read(1), b"s");
    assert!(cell.control.pause(), "the running cell parks");
    assert!(cell.control.is_paused());
    let before = cpu_time();
    thread::sleep(WATCH);
    let used = cpu_time() - before;
    assert!(
        used < WATCH / 4,
        "a paused cell used {used:?} of CPU in {WATCH:?}"
    );
    // Stopped rather than left to finish its 2^33 iterations: the stop reaches the
    // paused cell and ends it.
    assert!(cell.control.stop(StopReason::Signal(15)));
    match cell.finish() {
        Err(CellFailure {
            error: CellError::Stopped(15),
            ..
        }) => {}
        other => panic!("expected a stop, got {other:?}"),
    }
}

#[test]
fn a_resumed_cell_goes_on_where_it_stopped() {
    // A short spin: the cell is paused in it, resumed, and finishes its output.
    let short = SPIN.replace("8589934592", "200000000");
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut cell = start(&program(&short));
    assert_eq!(cell.read(1), b"s");
    assert!(cell.control.pause());
    cell.control.resume();
    assert_eq!(cell.read(1), b"e");
    assert_eq!(cell.finish().unwrap().exit, CellExit::Exited(0));
}

#[test]
fn a_cell_blocked_reading_stdin_pauses_and_reads_only_once_resumed() {
    // Writes "?", reads a byte and writes it back.
    let echo = program(&format!("{PROMPT_AND_READ}{ECHO_BYTE}"));
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut cell = start(&echo);
    assert_eq!(cell.read(1), b"?");
    assert!(cell.control.pause(), "a cell blocked in a read parks");
    cell.stdin.as_mut().unwrap().write_all(b"x").unwrap();
    // The byte may be read while paused, but the program does not run to echo it.
    let mut stdout = cell.stdout.try_clone().unwrap();
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut byte = [0u8; 1];
        let _ = stdout.read_exact(&mut byte).map(|()| sender.send(byte));
    });
    assert!(
        receiver.recv_timeout(WATCH).is_err(),
        "a paused cell echoed its input"
    );
    cell.control.resume();
    assert_eq!(receiver.recv_timeout(PATIENCE).unwrap(), *b"x");
    assert_eq!(cell.finish().unwrap().exit, CellExit::Exited(0));
}

/// Computes with live floating-point state, writing the counter every 2^20 iterations
/// and the result at the end.
const COMPUTE: &str = r#"
    (local $i i64)
    (local $x f64)
    (local.set $x (f64.const 1))
    (loop $again
      (local.set $x (f64.add (f64.mul (local.get $x) (f64.const 1.0000001)) (f64.const 0.5)))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (if (i64.eqz (i64.and (local.get $i) (i64.const 1048575)))
        (then (call $emit64 (local.get $i))))
      (br_if $again (i64.lt_u (local.get $i) (i64.const 268435456))))
    (call $emit64 (i64.reinterpret_f64 (local.get $x)))"#;

/// Runs `module` from `snapshot` in a new cell; returns its output.
fn restore(module: &CompiledModule, snapshot: &CellSnapshot) -> Vec<u8> {
    restore_with_stdin(module, snapshot, b"")
}

/// Runs `module` from `snapshot` in a new cell reading `input`; returns its output.
fn restore_with_stdin(module: &CompiledModule, snapshot: &CellSnapshot, input: &[u8]) -> Vec<u8> {
    let cpu_features = Compiler::with_cache_dir(None).unwrap().cpu_features();
    let mut stdin = tempfile::tempfile().unwrap();
    stdin.write_all(input).unwrap();
    std::io::Seek::rewind(&mut stdin).unwrap();
    let mut stdout = tempfile::tempfile().unwrap();
    let stdio = CellStdio {
        stdin: stdin.as_fd(),
        stdout: stdout.as_fd(),
        stderr: stdout.as_fd(),
    };
    let payload = CellPayload::Wasm {
        module,
        cpu_features,
    };
    let config = CellConfig {
        timeout: Some(PATIENCE),
        ..CellConfig::default()
    };
    let report = restore_cell(&config, payload, snapshot, stdio, &CellControl::new()).unwrap();
    assert_eq!(report.exit, CellExit::Exited(0));
    std::io::Seek::rewind(&mut stdout).unwrap();
    let mut output = Vec::new();
    stdout.read_to_end(&mut output).unwrap();
    output
}

#[test]
fn snapshots_taken_as_the_cell_runs_each_go_on_to_the_same_end() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let wat = program(COMPUTE);
    let mut cell = start_compiled(compile(&wat));
    let mut snapshots = Vec::new();
    // Snapshots at several points: after each of the first records.
    for _ in 0..4 {
        cell.read(8);
        snapshots.push(cell.control.snapshot().unwrap());
        cell.control.resume();
    }
    let rest = cell.read_to_end();
    assert_eq!(cell.finish().unwrap().exit, CellExit::Exited(0));
    let whole: Vec<u8> = [vec![0u8; 0], rest].concat();
    let module = compile(&wat);
    for snapshot in &snapshots {
        let delivered = snapshot.services.output_written as usize;
        assert!(delivered >= 8 && delivered.is_multiple_of(8), "{delivered}");
        let after = restore(&module, snapshot);
        assert_eq!(after.len() + delivered, 8 * 257, "no byte lost or repeated");
        // The records after the snapshot point, and the final result bit for bit.
        assert_eq!(
            after,
            expected_tail(&whole, delivered),
            "from byte {delivered}"
        );
    }
}

/// The original run's output from byte `from` on, given the part of it read after
/// the first four records.
fn expected_tail(after_four: &[u8], from: usize) -> Vec<u8> {
    let counters: Vec<u8> = (1..=256u64)
        .flat_map(|record| (record << 20).to_le_bytes())
        .collect();
    let result = &after_four[after_four.len() - 8..];
    [&counters[from..], result].concat()
}

#[test]
fn a_snapshot_of_a_cell_blocked_reading_stdin_reads_again_in_the_new_cell() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let echo = program(&format!("{PROMPT_AND_READ}{ECHO_BYTE}"));
    let module = compile(&echo);
    let mut cell = start_compiled(compile(&echo));
    assert_eq!(cell.read(1), b"?");
    // The blocked read is abandoned for the snapshot and made again afterwards, by the
    // original cell and by the restored one alike.
    let snapshot = cell.control.snapshot().unwrap();
    assert_eq!(snapshot.services.output_written, 1);
    cell.control.resume();
    cell.stdin.as_mut().unwrap().write_all(b"y").unwrap();
    assert_eq!(cell.read(1), b"y");
    assert_eq!(cell.finish().unwrap().exit, CellExit::Exited(0));
    assert_eq!(restore_with_stdin(&module, &snapshot, b"z"), b"z");
}

#[test]
fn a_restored_cell_keeps_realtime_current() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Writes "?", waits for a byte of stdin, then writes the realtime clock.
    let clock = program(&format!(
        "{PROMPT_AND_READ}{}",
        r#"(drop (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 1040)))
            (call $emit64 (i64.load (i32.const 1040)))"#
    ));
    let module = compile(&clock);
    let mut cell = start_compiled(compile(&clock));
    assert_eq!(cell.read(1), b"?");
    let snapshot = cell.control.snapshot().unwrap();
    cell.control.stop(StopReason::Signal(15));
    let _ = cell.finish();
    // Time passes between the snapshot and the restore, as it does between processes.
    thread::sleep(WATCH);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let output = restore_with_stdin(&module, &snapshot, b"x");
    let realtime = u64::from_le_bytes(output[..8].try_into().unwrap());
    // Coarse clock ticks aside, the guest's realtime is not behind the host's.
    assert!(
        realtime + 10_000_000 >= before,
        "the restored cell's realtime is {} ms behind",
        (before - realtime) / 1_000_000
    );
}

/// Stdio for a [`Cell`]: no input, output to a file the test can read afterwards.
fn owned_stdio(stdout: &File) -> OwnedStdio {
    OwnedStdio {
        stdin: File::open("/dev/null").unwrap().into(),
        stdout: stdout.try_clone().unwrap().into(),
        stderr: File::options()
            .write(true)
            .open("/dev/null")
            .unwrap()
            .into(),
    }
}

#[test]
fn cell_objects_run_side_by_side_and_are_paused_killed_restored_or_dropped() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cpu_features = Compiler::with_cache_dir(None).unwrap().cpu_features();
    let long = Arc::new(compile(&program(SPIN)));
    let short = Arc::new(compile(&program(COMPUTE)));
    let config = CellConfig {
        timeout: Some(PATIENCE),
        ..CellConfig::default()
    };
    let spin_out = tempfile::tempfile().unwrap();
    let spinner = Cell::start(
        config.clone(),
        long.clone(),
        cpu_features,
        owned_stdio(&spin_out),
    );
    let compute_out = tempfile::tempfile().unwrap();
    let computer = Cell::start(
        config.clone(),
        short.clone(),
        cpu_features,
        owned_stdio(&compute_out),
    );
    let dropped = Cell::start(
        config.clone(),
        long.clone(),
        cpu_features,
        owned_stdio(&tempfile::tempfile().unwrap()),
    );
    assert!(spinner.pause());
    let snapshot = computer.snapshot().unwrap();
    computer.resume();
    assert_eq!(computer.wait().unwrap().exit, CellExit::Exited(0));
    // The snapshot runs on as a new cell object to the same result, restored paused
    // first: it waits, parked, until resumed.
    let restored_out = tempfile::tempfile().unwrap();
    let restored = Cell::restore(
        config,
        short,
        cpu_features,
        owned_stdio(&restored_out),
        snapshot.clone(),
        true,
    );
    assert!(restored.pause(), "the restored cell parks before it runs");
    restored.resume();
    assert_eq!(restored.wait().unwrap().exit, CellExit::Exited(0));
    let read = |mut file: &File| {
        let mut bytes = Vec::new();
        std::io::Seek::rewind(&mut file).unwrap();
        file.read_to_end(&mut bytes).unwrap();
        bytes
    };
    let whole = read(&compute_out);
    let delivered = snapshot.services.output_written as usize;
    assert_eq!(read(&restored_out), whole[delivered..]);
    spinner.kill();
    match spinner.wait() {
        Err(CellFailure {
            error: CellError::Stopped(9),
            ..
        }) => {}
        other => panic!("expected a killed cell, got {other:?}"),
    }
    // Dropping a running cell stops it and waits for it.
    drop(dropped);
}

/// Snapshots are input from outside: a real one with bytes changed anywhere (its
/// registers, page tables, bookkeeping, memory) either is refused with one sentence or
/// runs as a cell that ends, by exiting, trapping, faulting or its time limit; the host
/// goes on either way.
#[test]
fn changed_snapshots_are_refused_or_end_their_own_cell() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let wat = program(COMPUTE);
    let module = compile(&wat);
    let mut cell = start_compiled(compile(&wat));
    cell.read(8);
    let snapshot = cell.control.snapshot().unwrap();
    cell.control.stop(StopReason::Signal(15));
    let _ = cell.finish();
    let bytes = postcard::to_allocvec(&snapshot).unwrap();
    let cpu_features = Compiler::with_cache_dir(None).unwrap().cpu_features();
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap();
    let config = CellConfig {
        timeout: Some(Duration::from_millis(200)),
        ..CellConfig::default()
    };
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut refused, mut ran) = (0, 0);
    for _ in 0..60 {
        // Half the cases change bytes of the state (its registers, page-table
        // bookkeeping, descriptors); the others change its memory or one of the fields
        // a restore must check.
        let hostile = if next() % 2 == 0 {
            let mut changed = bytes.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % changed.len() as u64) as usize;
                changed[at] = next() as u8;
            }
            match postcard::from_bytes::<CellSnapshot>(&changed) {
                Ok(mut hostile) => {
                    hostile.memory.pages = snapshot.memory.pages.clone();
                    hostile
                }
                Err(_) => {
                    refused += 1;
                    continue;
                }
            }
        } else {
            let mut hostile = snapshot.clone();
            let value = next();
            match value % 7 {
                0 => hostile.services.growth.mapped = next(),
                1 => hostile.services.growth.tables.next = next(),
                2 => hostile.memory.runs[0].addr = next(),
                3 => hostile.vcpu.xsave.truncate((next() % 1024) as usize),
                4 => hostile.memory.size = next(),
                5 => hostile.memory.runs.push(PageRun {
                    addr: next() & !0xfff,
                    len: (next() % 64 + 1) * 4096,
                }),
                _ => {
                    let SavedPages::InMemory(pages) = &mut hostile.memory.pages else {
                        unreachable!("a snapshot taken in this process holds its pages")
                    };
                    for _ in 0..1 + next() % 64 {
                        let at = (next() % pages.len() as u64) as usize;
                        pages[at] = next() as u8;
                    }
                }
            }
            hostile
        };
        let stdio = CellStdio {
            stdin: null.as_fd(),
            stdout: null.as_fd(),
            stderr: null.as_fd(),
        };
        let payload = CellPayload::Wasm {
            module: &module,
            cpu_features,
        };
        match restore_cell(&config, payload, &hostile, stdio, &CellControl::new()) {
            Ok(_) => ran += 1,
            Err(failure) => {
                let message = failure.error.to_string();
                assert!(!message.contains('\n'), "{message}");
                if matches!(failure.error, CellError::Snapshot(_)) {
                    refused += 1;
                } else {
                    ran += 1;
                }
            }
        }
    }
    assert!(refused > 0 && ran > 0, "refused {refused}, ran {ran}");
}

/// Writes "s", sleeps 400 ms through `poll_oneoff` on the monotonic clock, writes "d".
const SLEEP_THEN_SAY: &str = r#"
    (i32.store8 (i32.const 1024) (i32.const 115))
    (call $emit (i32.const 1024) (i32.const 1))
    (i64.store (i32.const 2048) (i64.const 7))
    (i32.store8 (i32.const 2056) (i32.const 0))
    (i32.store (i32.const 2064) (i32.const 1))
    (i64.store (i32.const 2072) (i64.const 400000000))
    (i64.store (i32.const 2080) (i64.const 0))
    (i32.store16 (i32.const 2088) (i32.const 0))
    (drop (call $poll_oneoff (i32.const 2048) (i32.const 2112) (i32.const 1) (i32.const 2176)))
    (i32.store8 (i32.const 1024) (i32.const 100))
    (call $emit (i32.const 1024) (i32.const 1))"#;

#[test]
fn a_sleeping_cell_is_snapshotted_and_sleeps_out_its_time_in_both_cells() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let sleeper = program(SLEEP_THEN_SAY);
    let mut cell = start_compiled(compile(&sleeper));
    assert_eq!(cell.read(1), b"s");
    let asleep = std::time::Instant::now();
    // Snapshots through the sleep: the sleep is abandoned for each and asked for again
    // for the time left, so none is refused and the sleep ends on time.
    let mut snapshots = Vec::new();
    for _ in 0..5 {
        snapshots.push(
            cell.control
                .snapshot()
                .expect("a sleeping cell is snapshotted"),
        );
        cell.control.resume();
        thread::sleep(Duration::from_millis(40));
    }
    assert_eq!(cell.read(1), b"d");
    assert!(
        asleep.elapsed() >= Duration::from_millis(380),
        "the snapshots did not cut the sleep short: {:?}",
        asleep.elapsed()
    );
    assert_eq!(cell.finish().unwrap().exit, CellExit::Exited(0));
    // A cell restored from the last snapshot sleeps what was left by its clock, which
    // moved on by the time since, and goes on.
    let module = compile(&sleeper);
    assert_eq!(restore(&module, snapshots.last().unwrap()), b"d");
}
