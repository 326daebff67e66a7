//! WASI preview1 in real cells: every call the runtime serves, driven by WAT programs
//! that write their results to stdout as raw little-endian values.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{program, run};
use hypercell_abi::Hypercall;
use hypercell_host::{CellConfig, CellExit};

const ERRNO_BADF: u32 = 8;
const ERRNO_INVAL: u32 = 28;

fn config() -> CellConfig {
    CellConfig {
        memory_limit: 64 << 20,
        ..CellConfig::default()
    }
}

/// [`config`] with `dir` preopened as descriptor 3, named `guest`.
fn config_with_dir(dir: &std::path::Path, guest: &str) -> CellConfig {
    CellConfig {
        preopens: vec![hypercell_host::fs::Preopen {
            host: dir.to_path_buf(),
            guest: guest.into(),
            read_only: false,
        }],
        ..config()
    }
}

#[test]
fn args_are_served_inside_the_cell() {
    let wat = program(
        r#"
        (call $emit32 (call $args_sizes_get (i32.const 1024) (i32.const 1028)))
        (call $emit (i32.const 1024) (i32.const 8))
        (call $emit32 (call $args_get (i32.const 2048) (i32.const 4096)))
        (call $emit (i32.const 2048) (i32.const 12))
        (call $emit (i32.const 4096) (i32.load (i32.const 1028)))"#,
    );
    let config = CellConfig {
        args: vec!["prog".into(), "a".into(), "bc".into()],
        ..config()
    };
    let outcome = run(&wat, &config, b"");
    assert_eq!(outcome.report().exit, CellExit::Exited(0));
    let out = &outcome.stdout;
    assert_eq!(u32s(&out[..28]), [0, 3, 10, 0, 4096, 4101, 4103]);
    assert_eq!(&out[28..], b"prog\0a\0bc\0");
    assert_eq!(outcome.report().stats.exits, 1, "args need no exit");
}

#[test]
fn environment_is_served_inside_the_cell() {
    let wat = program(
        r#"
        (call $emit32 (call $environ_sizes_get (i32.const 1024) (i32.const 1028)))
        (call $emit (i32.const 1024) (i32.const 8))
        (call $emit32 (call $environ_get (i32.const 2048) (i32.const 4096)))
        (call $emit (i32.const 2048) (i32.const 8))
        (call $emit (i32.const 4096) (i32.load (i32.const 1028)))"#,
    );
    let config = CellConfig {
        env: vec![("A".into(), "1".into()), ("LONGER".into(), "x=y".into())],
        ..config()
    };
    let outcome = run(&wat, &config, b"");
    let out = &outcome.stdout;
    assert_eq!(u32s(&out[..24]), [0, 2, 15, 0, 4096, 4100]);
    assert_eq!(&out[24..], b"A=1\0LONGER=x=y\0");
}

#[test]
fn clocks_tick_inside_the_cell() {
    // For each clock id 0..=3: errno and value of clock_res_get, then of
    // clock_time_get twice.
    let mut body = String::new();
    for id in 0..=3 {
        body.push_str(&format!(
            r#"
            (call $emit32 (call $clock_res_get (i32.const {id}) (i32.const 1024)))
            (call $emit64 (i64.load (i32.const 1024)))
            (call $emit32 (call $clock_time_get (i32.const {id}) (i64.const 1) (i32.const 1024)))
            (call $emit64 (i64.load (i32.const 1024)))
            (call $emit32 (call $clock_time_get (i32.const {id}) (i64.const 1) (i32.const 1024)))
            (call $emit64 (i64.load (i32.const 1024)))"#
        ));
    }
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let outcome = run(&program(&body), &config(), b"");
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let out = &outcome.stdout;
    let record = |id: usize, i: usize| {
        let at = id * 36 + i * 12;
        (u32_at(out, at), u64_at(out, at + 4))
    };
    for id in 0..4 {
        let (res_errno, resolution) = record(id, 0);
        let (errno1, first) = record(id, 1);
        let (errno2, second) = record(id, 2);
        assert_eq!((res_errno, errno1, errno2), (0, 0, 0), "clock {id}");
        assert!(
            resolution > 0 && resolution < 1_000_000,
            "clock {id}: {resolution}"
        );
        assert!(second >= first, "clock {id} went backwards");
    }
    let (_, realtime) = record(0, 1);
    assert!(
        before <= realtime && realtime <= after,
        "realtime {realtime} not in [{before}, {after}]"
    );
    assert_eq!(outcome.report().stats.exits, 1, "clocks need no exit");
}

#[test]
fn random_get_fills_buffers_inside_the_cell() {
    let wat = program(
        r#"
        (call $emit32 (call $random_get (i32.const 1024) (i32.const 64)))
        (call $emit32 (call $random_get (i32.const 2048) (i32.const 64)))
        (call $emit (i32.const 1024) (i32.const 64))
        (call $emit (i32.const 2048) (i32.const 64))"#,
    );
    let outcome = run(&wat, &config(), b"");
    let out = &outcome.stdout;
    assert_eq!(u32s(&out[..8]), [0, 0]);
    let (first, second) = (&out[8..72], &out[72..136]);
    assert_ne!(first, second);
    assert!(first.iter().any(|&b| b != 0) && second.iter().any(|&b| b != 0));
    assert_eq!(out.len(), 136);
}

#[test]
fn fd_write_keeps_stdout_and_stderr_apart_and_rejects_other_descriptors() {
    let wat = program(
        r#"
        (i64.store (i32.const 1024) (i64.const 0x0a74756f))   ;; "out\n"
        (i64.store (i32.const 1032) (i64.const 0x0a727265))   ;; "err\n"
        (drop (call $write (i32.const 1) (i32.const 1024) (i32.const 4)))
        (drop (call $write (i32.const 2) (i32.const 1032) (i32.const 4)))
        (drop (call $write (i32.const 1) (i32.const 1024) (i32.const 4)))
        (call $emit32 (call $write (i32.const 0) (i32.const 1024) (i32.const 4)))
        (call $emit32 (call $write (i32.const 3) (i32.const 1024) (i32.const 4)))
        ;; two iovecs in one call, and the byte count it reports
        (i32.store (i32.const 1040) (i32.const 1024))
        (i32.store (i32.const 1044) (i32.const 3))
        (i32.store (i32.const 1048) (i32.const 1032))
        (i32.store (i32.const 1052) (i32.const 4))
        (call $emit32 (call $fd_write (i32.const 1) (i32.const 1040) (i32.const 2) (i32.const 1056)))
        (call $emit32 (i32.load (i32.const 1056)))"#,
    );
    let outcome = run(&wat, &config(), b"");
    let out = &outcome.stdout;
    assert_eq!(&out[..8], b"out\nout\n");
    assert_eq!(u32s(&out[8..16]), [ERRNO_BADF, ERRNO_BADF]);
    assert_eq!(&out[16..23], b"outerr\n");
    assert_eq!(u32s(&out[23..31]), [0, 7]);
    assert_eq!(outcome.stderr, b"err\n");
    // Stdio writes are buffered; only descriptor 3, which could be a file, asked the
    // host.
    let stats = &outcome.report().stats;
    assert_eq!(
        stats.hypercalls.get(Hypercall::Write),
        0,
        "small writes are buffered"
    );
    assert_eq!(stats.hypercalls.get(Hypercall::Flush), 0);
    assert_eq!(stats.exits, 1 + stats.hypercalls.get(Hypercall::File));
}

#[test]
fn fd_read_reads_stdin_to_its_end() {
    let wat = program(
        r#"
        (local $n i32)
        ;; read into two iovecs of 4 and 100 bytes, then again until 0
        (i32.store (i32.const 1024) (i32.const 2048))
        (i32.store (i32.const 1028) (i32.const 4))
        (i32.store (i32.const 1032) (i32.const 2052))
        (i32.store (i32.const 1036) (i32.const 100))
        (call $emit32 (call $fd_read (i32.const 0) (i32.const 1024) (i32.const 2) (i32.const 1040)))
        (local.set $n (i32.load (i32.const 1040)))
        (call $emit32 (local.get $n))
        (call $emit (i32.const 2048) (local.get $n))
        (call $emit32 (call $fd_read (i32.const 0) (i32.const 1024) (i32.const 2) (i32.const 1040)))
        (call $emit32 (i32.load (i32.const 1040)))
        (call $emit32 (call $fd_read (i32.const 1) (i32.const 1024) (i32.const 2) (i32.const 1040)))
        (call $emit32 (call $fd_read (i32.const 7) (i32.const 1024) (i32.const 2) (i32.const 1040)))"#,
    );
    let outcome = run(&wat, &config(), b"hello, cell");
    let out = &outcome.stdout;
    assert_eq!(u32s(&out[..8]), [0, 11]);
    assert_eq!(&out[8..19], b"hello, cell");
    assert_eq!(u32s(&out[19..]), [0, 0, ERRNO_BADF, ERRNO_BADF]);
}

#[test]
fn fdstat_and_prestat_describe_stdio_like_wasmtime() {
    let wat = program(
        r#"
        (call $emit32 (call $fd_fdstat_get (i32.const 0) (i32.const 1024)))
        (call $emit (i32.const 1024) (i32.const 24))
        (call $emit32 (call $fd_fdstat_get (i32.const 1) (i32.const 1024)))
        (call $emit (i32.const 1024) (i32.const 24))
        (call $emit32 (call $fd_fdstat_get (i32.const 9) (i32.const 1024)))
        (call $emit32 (call $fd_prestat_get (i32.const 3) (i32.const 1024)))
        (call $emit32 (call $sched_yield))"#,
    );
    let outcome = run(&wat, &config(), b"");
    let out = &outcome.stdout;
    // Files and pipes are `unknown` (0) with read or write rights, base and inheriting.
    assert_eq!(u32_at(out, 0), 0);
    assert_eq!(
        (out[4], u64_at(out, 12), u64_at(out, 20)),
        (0, 1 << 1, 1 << 1)
    );
    assert_eq!(u32_at(out, 28), 0);
    assert_eq!(
        (out[32], u64_at(out, 40), u64_at(out, 48)),
        (0, 1 << 6, 1 << 6)
    );
    assert_eq!(u32s(&out[56..]), [ERRNO_BADF, ERRNO_BADF, 0]);
}

#[test]
fn proc_exit_ends_the_program_with_its_status_and_keeps_its_output() {
    let wat = program(
        r#"
        (i64.store (i32.const 1024) (i64.const 0x0a657962))   ;; "bye\n"
        (drop (call $write (i32.const 1) (i32.const 1024) (i32.const 4)))
        (call $proc_exit (i32.const 42))
        unreachable"#,
    );
    let outcome = run(&wat, &config(), b"");
    assert_eq!(outcome.report().exit, CellExit::Exited(42));
    assert_eq!(outcome.stdout, b"bye\n");
}

/// Writes a `poll_oneoff` clock subscription at `at`.
fn clock_subscription(at: u32, userdata: u64, nanos: u64, flags: u16) -> String {
    format!(
        r#"
        (i64.store (i32.const {at}) (i64.const {userdata}))
        (i32.store8 (i32.const {}) (i32.const 0))
        (i32.store (i32.const {}) (i32.const 1))
        (i64.store (i32.const {}) (i64.const {nanos}))
        (i64.store (i32.const {}) (i64.const 0))
        (i32.store16 (i32.const {}) (i32.const {flags}))"#,
        at + 8,
        at + 16,
        at + 24,
        at + 32,
        at + 40
    )
}

#[test]
fn poll_oneoff_waits_for_the_earliest_clock() {
    let mut body = clock_subscription(1024, 7, 30_000_000, 0);
    body.push_str(&clock_subscription(1072, 8, 5_000_000_000, 0));
    body.push_str(
        r#"
        (call $emit32 (call $poll_oneoff (i32.const 1024) (i32.const 2048) (i32.const 2) (i32.const 1200)))
        (call $emit32 (i32.load (i32.const 1200)))
        (call $emit (i32.const 2048) (i32.const 32))
        ;; no subscriptions is invalid
        (call $emit32 (call $poll_oneoff (i32.const 1024) (i32.const 2048) (i32.const 0) (i32.const 1200)))"#,
    );
    let started = Instant::now();
    let outcome = run(&program(&body), &config(), b"");
    let elapsed = started.elapsed();
    let out = &outcome.stdout;
    assert_eq!(u32s(&out[..8]), [0, 1]);
    assert_eq!(u64_at(out, 8), 7, "the 30 ms subscription fires first");
    assert_eq!(
        u32::from(out[16]) | u32::from(out[17]) << 8,
        0,
        "event errno"
    );
    assert_eq!(out[18], 0, "a clock event");
    assert_eq!(u32_at(out, 40), ERRNO_INVAL);
    assert!(
        elapsed >= Duration::from_millis(30),
        "returned after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "waited for the later clock"
    );
}

#[test]
fn poll_oneoff_accepts_absolute_deadlines() {
    // Deadline: now (monotonic) + 20 ms.
    let mut body = String::from(
        r#"
        (drop (call $clock_time_get (i32.const 1) (i64.const 1) (i32.const 1200)))"#,
    );
    body.push_str(&clock_subscription(1024, 9, 0, 1));
    body.push_str(
        r#"
        (i64.store (i32.const 1048) (i64.add (i64.load (i32.const 1200)) (i64.const 20000000)))
        (call $emit32 (call $poll_oneoff (i32.const 1024) (i32.const 2048) (i32.const 1) (i32.const 1208)))
        (drop (call $clock_time_get (i32.const 1) (i64.const 1) (i32.const 1216)))
        (call $emit64 (i64.sub (i64.load (i32.const 1216)) (i64.load (i32.const 1200))))
        (call $emit64 (i64.load (i32.const 2048)))"#,
    );
    let outcome = run(&program(&body), &config(), b"");
    let out = &outcome.stdout;
    assert_eq!(u32_at(out, 0), 0);
    let waited = u64_at(out, 4);
    assert!(waited >= 20_000_000, "waited {waited} ns of 20 ms");
    assert_eq!(u64_at(out, 12), 9);
}

#[test]
fn large_writes_move_in_one_exit_each() {
    // 3 MiB of 'x' written in one fd_write: more than the output buffer holds.
    let wat = program(
        r#"
        (drop (memory.grow (i32.const 48)))
        (memory.fill (i32.const 65536) (i32.const 120) (i32.const 3145728))
        (drop (call $write (i32.const 1) (i32.const 65536) (i32.const 3145728)))"#,
    );
    let outcome = run(&wat, &config(), b"");
    assert_eq!(outcome.stdout.len(), 3 << 20);
    assert!(outcome.stdout.iter().all(|&b| b == b'x'));
    let stats = &outcome.report().stats;
    assert_eq!(
        stats.hypercalls.get(Hypercall::Write),
        1,
        "one exit moves 3 MiB"
    );
    assert_eq!(
        stats.hypercalls.get(Hypercall::MapMemory),
        1,
        "one exit maps the grown memory"
    );
    assert_eq!(stats.exits, 3, "the growth, the write and the exit");
}

#[test]
fn many_small_writes_are_batched() {
    // 100k writes of 10 bytes: 1 MB through a 1 MiB buffer.
    let wat = program(
        r#"
        (local $i i32)
        (i64.store (i32.const 1024) (i64.const 0x3837363534333231))
        (i32.store16 (i32.const 1032) (i32.const 0x0a39))
        (loop $again
          (drop (call $write (i32.const 1) (i32.const 1024) (i32.const 10)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $again (i32.lt_u (local.get $i) (i32.const 100000))))"#,
    );
    let outcome = run(&wat, &config(), b"");
    assert_eq!(outcome.stdout.len(), 1_000_000);
    assert!(outcome.stdout.chunks(10).all(|line| line == b"123456789\n"));
    let exits = outcome.report().stats.exits;
    assert!(exits <= 3, "{exits} exits for 1 MB of small writes");
}

/// Splits `bytes` into little-endian `u32`s.
pub fn u32s(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Reads a little-endian `u64` at `offset`.
pub fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
}

/// Reads a little-endian `u32` at `offset`.
pub fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
}

#[test]
fn small_reads_are_served_from_read_ahead() {
    // 20000 one-byte reads, echoed back with one write each: a handful of exits.
    let wat = program(
        r#"
        (local $n i32)
        (i32.store (i32.const 1024) (i32.const 2048))
        (i32.store (i32.const 1028) (i32.const 1))
        (loop $again
          (drop (call $fd_read (i32.const 0) (i32.const 1024) (i32.const 1) (i32.const 1040)))
          (if (i32.load (i32.const 1040)) (then
            (drop (call $write (i32.const 1) (i32.const 2048) (i32.const 1)))
            (local.set $n (i32.add (local.get $n) (i32.const 1)))
            (br $again))))"#,
    );
    let input: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let outcome = run(&wat, &config(), &input);
    assert_eq!(outcome.stdout, input);
    let stats = &outcome.report().stats;
    assert_eq!(
        stats.hypercalls.get(Hypercall::Read),
        2,
        "one fill and the end of input"
    );
}

#[test]
fn reads_fill_iovecs_in_the_programs_order() {
    // The first iovec lies above the second in memory.
    let wat = program(
        r#"
        (i32.store (i32.const 1024) (i32.const 3000))
        (i32.store (i32.const 1028) (i32.const 3))
        (i32.store (i32.const 1032) (i32.const 2000))
        (i32.store (i32.const 1036) (i32.const 4))
        (drop (call $fd_read (i32.const 0) (i32.const 1024) (i32.const 2) (i32.const 1040)))
        (call $emit (i32.const 3000) (i32.const 3))
        (call $emit (i32.const 2000) (i32.const 4))"#,
    );
    let outcome = run(&wat, &config(), b"abcdefg");
    assert_eq!(outcome.stdout, b"abcdefg");
}

#[test]
fn sockets_answer_like_wasmtime() {
    // sock_accept, sock_recv, sock_send and sock_shutdown on stdout, a preopened
    // directory and a closed descriptor. wasmtime answers `notsock` (57) for every open
    // descriptor and `badf` (8) otherwise.
    let mut calls = String::new();
    for fd in [1, 3, 9] {
        calls.push_str(&format!(
            "(call $emit32 (call $accept (i32.const {fd}) (i32.const 0) (i32.const 1024)))
             (call $emit32 (call $recv (i32.const {fd}) (i32.const 1024) (i32.const 0) (i32.const 0) (i32.const 1028) (i32.const 1032)))
             (call $emit32 (call $send (i32.const {fd}) (i32.const 1024) (i32.const 0) (i32.const 0) (i32.const 1028)))
             (call $emit32 (call $shutdown (i32.const {fd}) (i32.const 2)))"
        ));
    }
    let wat = program(&calls).replace(
        "(memory (export \"memory\") 4)",
        r#"(import "wasi_snapshot_preview1" "sock_accept" (func $accept (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_recv" (func $recv (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_send" (func $send (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "sock_shutdown" (func $shutdown (param i32 i32) (result i32)))
  (memory (export "memory") 4)"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_dir(dir.path(), "data");
    let outcome = run(&wat, &config, b"");
    assert_eq!(
        u32s(&outcome.stdout),
        [57, 57, 57, 57, 57, 57, 57, 57, 8, 8, 8, 8]
    );
}

#[test]
fn poll_oneoff_on_files_matches_wasmtime() {
    // Preopen 3 holds f.txt; subscription: fd_read on it (userdata 11). Then the same
    // with a closed descriptor (9) added, which fails the whole call with badf.
    let open = r#"
        (i64.store (i32.const 100) (i64.const 0x7478742e66))   ;; "f.txt"
        (drop (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 5)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 200)))
        (i64.store (i32.const 1024) (i64.const 11))
        (i32.store8 (i32.const 1032) (i32.const 1))
        (i32.store (i32.const 1040) (i32.load (i32.const 200)))
        (i64.store (i32.const 1072) (i64.const 33))
        (i32.store8 (i32.const 1080) (i32.const 1))
        (i32.store (i32.const 1088) (i32.const 9))
        (call $emit32 (call $poll_oneoff (i32.const 1024) (i32.const 3000) (i32.const 1) (i32.const 2004)))
        (call $emit32 (i32.load (i32.const 2004)))
        (call $emit (i32.const 3000) (i32.const 32))
        (call $emit32 (call $poll_oneoff (i32.const 1024) (i32.const 3000) (i32.const 2) (i32.const 2004)))"#;
    let wat = program(open).replace(
        "(memory (export \"memory\") 4)",
        r#"(import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 4)"#,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.txt"), "0123456789").unwrap();
    let config = config_with_dir(dir.path(), "pd");
    let out = run(&wat, &config, b"").stdout;
    assert_eq!(u32s(&out[..8]), [0, 1], "one event");
    assert_eq!(u64_at(&out, 8), 11, "userdata");
    assert_eq!(
        (out[16], out[17], out[18]),
        (0, 0, 1),
        "no error, an fd_read event"
    );
    assert_eq!(u64_at(&out, 24), 1, "one byte ready, as wasmtime reports");
    assert_eq!(
        u32_at(&out, 40),
        ERRNO_BADF,
        "a closed descriptor fails the call"
    );
}

#[test]
fn fdstat_set_rights_answers_like_wasmtime() {
    // On stdout, a preopened directory and a closed descriptor, wasmtime answers
    // `badf`, `notsup` and `badf`.
    let wat = program(
        r#"
        (call $emit32 (call $set_rights (i32.const 1) (i64.const 0) (i64.const 0)))
        (call $emit32 (call $set_rights (i32.const 3) (i64.const 0) (i64.const 0)))
        (call $emit32 (call $set_rights (i32.const 9) (i64.const 0) (i64.const 0)))"#,
    )
    .replace(
        "(memory (export \"memory\") 4)",
        r#"(import "wasi_snapshot_preview1" "fd_fdstat_set_rights" (func $set_rights (param i32 i64 i64) (result i32)))
  (memory (export "memory") 4)"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_dir(dir.path(), "data");
    assert_eq!(
        u32s(&run(&wat, &config, b"").stdout),
        [ERRNO_BADF, 58, ERRNO_BADF]
    );
}

#[test]
fn stdio_streams_move_with_fd_renumber_as_under_wasmtime() {
    // Preopen 3 holds f.txt and g.txt. Stdout's file status first; then stdin moves
    // onto f.txt's descriptor and is read there; g.txt gets the number stdin left
    // (wasmtime hands out the highest freed number); stdout moves onto it and writes
    // there, buffered like any stdio write.
    let body = r#"
        (call $emit32 (call $filestat (i32.const 1) (i32.const 512)))
        (call $emit (i32.const 512) (i32.const 64))
        (i64.store (i32.const 100) (i64.const 0x7478742e66))   ;; "f.txt"
        (i64.store (i32.const 108) (i64.const 0x7478742e67))   ;; "g.txt"
        (drop (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 5)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 200)))
        (call $emit32 (call $renumber (i32.const 0) (i32.load (i32.const 200))))
        (i32.store (i32.const 1024) (i32.const 2048))
        (i32.store (i32.const 1028) (i32.const 16))
        (call $emit32 (call $fd_read (i32.load (i32.const 200)) (i32.const 1024) (i32.const 1) (i32.const 1040)))
        (call $emit32 (i32.load (i32.const 1040)))
        (call $emit (i32.const 2048) (i32.load (i32.const 1040)))
        (call $emit32 (call $fd_read (i32.const 0) (i32.const 1024) (i32.const 1) (i32.const 1040)))
        (call $emit32 (call $filestat (i32.load (i32.const 200)) (i32.const 512)))
        (call $emit32 (call $path_open (i32.const 3) (i32.const 0) (i32.const 108) (i32.const 5)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 204)))
        (call $emit32 (i32.load (i32.const 204)))
        ;; From here on, fd 1 is closed: emits fail and show nowhere.
        (drop (call $renumber (i32.const 1) (i32.load (i32.const 204))))
        (i64.store (i32.const 300) (i64.const 0x0a6465766f6d))   ;; "moved\n"
        (drop (call $write (i32.load (i32.const 204)) (i32.const 300) (i32.const 6)))
        (call $emit32 (i32.const 99))"#;
    let wat = program(body).replace(
        "(memory (export \"memory\") 4)",
        r#"(import "wasi_snapshot_preview1" "path_open" (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_renumber" (func $renumber (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_filestat_get" (func $filestat (param i32 i32) (result i32)))
  (memory (export "memory") 4)"#,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.txt"), "file").unwrap();
    std::fs::write(dir.path().join("g.txt"), "file").unwrap();
    let outcome = run(&wat, &config_with_dir(dir.path(), "pd"), b"input");
    let out = &outcome.stdout;
    // fd_filestat_get on stdout succeeds with every field 0 but the file type,
    // `unknown` for a pipe (GCC's cc1 stops on an error here).
    assert_eq!(u32_at(out, 0), 0);
    assert_eq!(&out[4..68], &[0u8; 64][..]);
    assert_eq!(u32s(&out[68..76]), [0, 0], "renumbered stdin, read from it");
    assert_eq!(u32_at(out, 76), 5);
    assert_eq!(&out[80..85], b"input");
    assert_eq!(
        u32s(&out[85..101]),
        [ERRNO_BADF, 0, 0, 0],
        "fd 0 closed; the moved stream's status; g.txt opened as fd 0"
    );
    assert_eq!(&out[101..], b"moved\n", "stdout moved onto fd 0");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("g.txt")).unwrap(),
        "file",
        "the file that stdout replaced was closed, not written"
    );
    assert_eq!(outcome.report().stats.hypercalls.get(Hypercall::Write), 0);
}
