//! Channels between cells: wasm programs joined stdout to stdin through shared
//! memory, in real cells. (Hostile guests writing a channel's header are in
//! `hostile.rs`; whole pipelines of C programs are `hypercell pipe`'s tests.)

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::time::Duration;

use hypercell_abi::wasi::errno;
use hypercell_host::persist::SnapshotError;
use hypercell_host::{
    CellChannels, CellConfig, CellControl, CellError, CellExit, CellFailure, CellPayload,
    CellReport, CellStdio, CompiledModule, StopReason, channel, run_joined_cell,
};

/// Writes `$count` copies of a 65,511-byte block whose byte `i` is `i % 251` (so the
/// stream's byte `k` is `k % 251`), in one write each, then exits 0; or exits with
/// the errno of the first write that fails. `$count` 0 writes forever.
fn writer(count: u32) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 2)
  (func (export "_start") (local $i i32) (local $e i32) (local $n i32)
    (loop $fill
      (i32.store8 (i32.add (i32.const 64) (local.get $i)) (i32.rem_u (local.get $i) (i32.const 251)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 65511))))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 65511))
    (loop $more
      (local.set $e (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (if (local.get $e) (then (call $exit (local.get $e))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br_if $more (i32.ne (local.get $n) (i32.const {count}))))
    (call $exit (i32.const 0))))"#
    )
}

/// Copies stdin to stdout in reads of 7,919 bytes (so that reads straddle the ring's
/// end), then exits 0, or with the errno of a call that fails.
const COPIER: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $e i32)
    (loop $more
      (i32.store (i32.const 0) (i32.const 64))
      (i32.store (i32.const 4) (i32.const 7919))
      (local.set $e (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
      (if (local.get $e) (then (call $exit (local.get $e))))
      (if (i32.eqz (i32.load (i32.const 8))) (then (call $exit (i32.const 0))))
      (i32.store (i32.const 4) (i32.load (i32.const 8)))
      (local.set $e (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
      (if (local.get $e) (then (call $exit (local.get $e))))
      (br $more))))"#;

/// Reads once, closes stdin, then spins until it is stopped.
const CLOSER: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 100))
    (drop (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (drop (call $close (i32.const 0)))
    (loop $spin (br $spin))))"#;

/// Spins without writing anything, until it is stopped.
const IDLE: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $spin (br $spin))))"#;

fn config() -> CellConfig {
    CellConfig {
        timeout: Some(Duration::from_secs(60)),
        ..CellConfig::default()
    }
}

type Ended = Result<CellReport, CellFailure>;

/// What a test does while the cells run: the writer's control, the reader's, and
/// whether the writer's cell has ended.
type Meddle<'a> = Box<dyn FnOnce(&CellControl, &CellControl, &dyn Fn() -> bool) + 'a>;

/// Runs `writer` and `reader` joined by a channel, each with its own control, while
/// `meddle` runs on this thread. Returns how each ended and what the reader wrote to
/// its stdout.
fn joined(writer: &str, reader: &str, meddle: Meddle<'_>) -> (Ended, Ended, Vec<u8>) {
    let writer = common::compile(writer);
    let reader = common::compile(reader);
    let (write_end, read_end) = channel().unwrap();
    let null = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap();
    let mut output = tempfile::tempfile().unwrap();
    let (writer_control, reader_control) = (CellControl::new(), CellControl::new());
    let (wrote, read) = std::thread::scope(|scope| {
        let writing = scope.spawn(|| {
            let stdio = CellStdio {
                stdin: null.as_fd(),
                stdout: null.as_fd(),
                stderr: null.as_fd(),
            };
            let channels = CellChannels {
                stdin: None,
                stdout: Some(&write_end),
                ..CellChannels::default()
            };
            run_joined_cell(
                &config(),
                payload(&writer),
                stdio,
                &writer_control,
                channels,
            )
        });
        let reading = scope.spawn(|| {
            let stdio = CellStdio {
                stdin: null.as_fd(),
                stdout: output.as_fd(),
                stderr: null.as_fd(),
            };
            let channels = CellChannels {
                stdin: Some(&read_end),
                stdout: None,
                ..CellChannels::default()
            };
            run_joined_cell(
                &config(),
                payload(&reader),
                stdio,
                &reader_control,
                channels,
            )
        });
        meddle(&writer_control, &reader_control, &|| writing.is_finished());
        (writing.join().unwrap(), reading.join().unwrap())
    });
    let mut bytes = Vec::new();
    output.seek(SeekFrom::Start(0)).unwrap();
    output.read_to_end(&mut bytes).unwrap();
    (wrote, read, bytes)
}

/// Returns once the cell under `control` runs its vCPU (a pause asked for earlier
/// would hold it before its first instruction).
fn started(control: &CellControl) {
    while control.activity().cpu_time.is_none() {
        std::thread::yield_now();
    }
}

fn payload(module: &CompiledModule) -> CellPayload<'_> {
    CellPayload::Wasm {
        module,
        cpu_features: common::cpu_features(),
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|k| (k % 251) as u8).collect()
}

#[test]
fn bytes_cross_a_channel_exactly_in_order() {
    let (wrote, read, bytes) = joined(&writer(128), COPIER, Box::new(|_, _, _| {}));
    assert_eq!(wrote.unwrap().exit, CellExit::Exited(0));
    let report = read.unwrap();
    assert_eq!(report.exit, CellExit::Exited(0));
    assert_eq!(bytes.len(), 128 * 65511);
    assert!(bytes == pattern(bytes.len()), "the bytes differ");
}

#[test]
fn a_reader_that_closes_stdin_gives_its_writer_epipe_while_it_runs() {
    let meddle: Meddle<'_> = Box::new(|_, reader, writer_ended| {
        // The writer ends on its own, of the reader's close, while the reader spins.
        while !writer_ended() {
            std::thread::yield_now();
        }
        assert!(
            reader.stop(StopReason::Signal(libc::SIGTERM)),
            "the reader had ended"
        );
    });
    let (wrote, read, _) = joined(&writer(0), CLOSER, meddle);
    assert_eq!(
        wrote.unwrap().exit,
        CellExit::Exited(i32::from(errno::PIPE))
    );
    assert!(matches!(
        read.unwrap_err().error,
        CellError::Stopped(libc::SIGTERM)
    ));
}

#[test]
fn a_paused_reader_holds_its_writer_back_and_loses_nothing() {
    let meddle: Meddle<'_> = Box::new(|writer, reader, _| {
        started(writer);
        started(reader);
        let mut pauses = 0;
        while reader.pause() {
            pauses += 1;
            // A snapshot of one end of a channel would split it.
            assert!(matches!(reader.snapshot(), Err(SnapshotError::Joined)));
            if writer.pause() {
                assert!(matches!(writer.snapshot(), Err(SnapshotError::Joined)));
                writer.resume();
            }
            reader.resume();
            if pauses == 20 {
                break;
            }
        }
        assert!(pauses > 0, "the reader ended before it could be paused");
    });
    let (wrote, read, bytes) = joined(&writer(256), COPIER, meddle);
    assert_eq!(wrote.unwrap().exit, CellExit::Exited(0));
    assert_eq!(read.unwrap().exit, CellExit::Exited(0));
    assert_eq!(bytes.len(), 256 * 65511);
    assert!(bytes == pattern(bytes.len()), "the bytes differ");
}

#[test]
fn a_stop_reaches_a_cell_waiting_on_its_channel() {
    let meddle: Meddle<'_> = Box::new(|writer, reader, _| {
        started(writer);
        // The reader finds nothing and waits in the host; the stop still ends it.
        while reader
            .activity()
            .hypercalls
            .get(hypercell_abi::Hypercall::Channel)
            == 0
        {
            std::thread::yield_now();
        }
        assert!(reader.stop(StopReason::Signal(libc::SIGINT)));
        assert!(writer.stop(StopReason::Timeout));
    });
    let (wrote, read, bytes) = joined(IDLE, COPIER, meddle);
    assert!(matches!(
        read.unwrap_err().error,
        CellError::Stopped(libc::SIGINT)
    ));
    assert!(matches!(wrote.unwrap_err().error, CellError::Timeout(_)));
    assert!(bytes.is_empty());
}
