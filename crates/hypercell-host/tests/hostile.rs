//! Hostile guests: raw x86-64 machine code, not wasm, attacking the hypercall ABI and
//! the CPU. Every case must end its own cell with a clear report; the host process
//! survives, and the next cell in the same process runs normally.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use hypercell_abi::ChannelHeader;
use hypercell_abi::channel::{CHANNEL_KICK, CHANNEL_POLL, CHANNEL_WAIT, MAX_POLLED_ENDS};
use hypercell_abi::hypercall::RESULT_OFFSET;
use hypercell_abi::layout::{HYPERCALL_PORT, IMAGE_BASE, RESERVATION_BASE, SYSTEM_BASE};
use hypercell_abi::wasi::errno;
use hypercell_abi::{ABI_VERSION, BootInfo, Hypercall, OutputBuffer};
use hypercell_host::hypercall::HypercallError;
use hypercell_host::{
    CellChannels, CellConfig, CellControl, CellError, CellExit, CellFailure, CellPayload,
    CellReport, CellStdio, ChannelEnd, StopReason,
};
use hypercell_vmm::GuestException;

const MEMORY: u64 = 32 << 20;
/// Free guest memory in the heap for iovec lists and data.
const LIST: u64 = 20 << 20;
const DATA: u64 = 24 << 20;

const RAX: u8 = 0;
const RCX: u8 = 1;
const RBX: u8 = 3;
const RSI: u8 = 6;
const RDI: u8 = 7;

/// A tiny assembler for the instructions the attacks need. Programs start with
/// `rbx` = the request block and `rsi` = the output buffer, read from the boot
/// information whose address the host passes in `rdi`.
struct Asm(Vec<u8>);

impl Asm {
    fn new() -> Self {
        let mut asm = Self(Vec::new());
        asm.load(
            RBX,
            RDI,
            std::mem::offset_of!(BootInfo, request_addr) as u32,
        );
        asm.load(RSI, RDI, std::mem::offset_of!(BootInfo, output_addr) as u32);
        asm
    }

    fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    /// `mov reg, [base + disp]`
    fn load(&mut self, reg: u8, base: u8, disp: u32) {
        self.0
            .extend_from_slice(&[0x48, 0x8b, 0x80 | reg << 3 | base]);
        self.0.extend_from_slice(&disp.to_le_bytes());
    }

    /// `mov reg, value`
    fn mov(mut self, reg: u8, value: u64) -> Self {
        self.0.extend_from_slice(&[0x48, 0xb8 + reg]);
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    /// `mov [base + disp], reg`
    fn store(mut self, base: u8, disp: u32, reg: u8) -> Self {
        self.0
            .extend_from_slice(&[0x48, 0x89, 0x80 | reg << 3 | base]);
        self.0.extend_from_slice(&disp.to_le_bytes());
        self
    }

    /// `mov qword [base + disp], value` through `rax`.
    fn put(self, base: u8, disp: u32, value: u64) -> Self {
        self.mov(RAX, value).store(base, disp, RAX)
    }

    /// Writes a request with a raw version and number into the request block.
    fn request_raw(self, version: u32, number: u32, args: [u64; 6]) -> Self {
        let mut asm = self.put(RBX, 0, u64::from(version) | u64::from(number) << 32);
        for (i, arg) in args.into_iter().enumerate() {
            asm = asm.put(RBX, 8 + 8 * i as u32, arg);
        }
        asm
    }

    fn request(self, call: Hypercall, args: [u64; 6]) -> Self {
        self.request_raw(ABI_VERSION, call as u32, args)
    }

    /// `mov eax, ebx; mov edx, HYPERCALL_PORT; out dx, eax`
    fn hypercall(self) -> Self {
        let [lo, hi] = HYPERCALL_PORT.to_le_bytes();
        self.raw(&[0x89, 0xd8, 0xba, lo, hi, 0, 0, 0xef])
    }

    /// A hypercall with `eax` = `addr` instead of the request block.
    fn hypercall_at(self, addr: u32) -> Self {
        let [a, b, c, d] = addr.to_le_bytes();
        let [lo, hi] = HYPERCALL_PORT.to_le_bytes();
        self.raw(&[0xb8, a, b, c, d, 0xba, lo, hi, 0, 0, 0xef])
    }

    fn call(self, call: Hypercall, args: [u64; 6]) -> Self {
        self.request(call, args).hypercall()
    }

    /// Exits with the last hypercall's result as the status.
    fn exit_with_result(mut self) -> Self {
        self.load(RAX, RBX, RESULT_OFFSET as u32);
        self.store(RBX, 8, RAX)
            .put(
                RBX,
                0,
                u64::from(ABI_VERSION) | (Hypercall::Exit as u64) << 32,
            )
            .hypercall()
    }

    fn exit(self, status: u64) -> Self {
        self.call(Hypercall::Exit, [status, 0, 0, 0, 0, 0])
    }

    fn code(self) -> Vec<u8> {
        self.0
    }
}

struct Outcome {
    result: Result<CellReport, CellFailure>,
    stdout: Vec<u8>,
}

fn run_with(code: &[u8], config: &CellConfig, stdin: &[u8]) -> Outcome {
    let mut input = tempfile::tempfile().unwrap();
    input.write_all(stdin).unwrap();
    input.seek(SeekFrom::Start(0)).unwrap();
    let mut stdout = tempfile::tempfile().unwrap();
    let stderr = tempfile::tempfile().unwrap();
    let stdio = CellStdio {
        stdin: input.as_fd(),
        stdout: stdout.as_fd(),
        stderr: stderr.as_fd(),
    };
    let result = hypercell_host::run_cell(config, CellPayload::MachineCode(code), stdio);
    let mut written = Vec::new();
    stdout.seek(SeekFrom::Start(0)).unwrap();
    stdout.read_to_end(&mut written).unwrap();
    // Whatever the last cell did, the next one in this process runs normally.
    let next = hypercell_host::run_cell(
        &self::config(),
        CellPayload::MachineCode(&Asm::new().exit(5).code()),
        CellStdio::inherit(),
    );
    assert_eq!(
        next.map(|r| r.exit).ok(),
        Some(CellExit::Exited(5)),
        "the next cell failed"
    );
    Outcome {
        result,
        stdout: written,
    }
}

fn config() -> CellConfig {
    CellConfig {
        memory_limit: MEMORY,
        timeout: Some(Duration::from_secs(10)),
        ..CellConfig::default()
    }
}

fn error_of(code: &[u8]) -> CellError {
    match run_with(code, &config(), b"").result {
        Ok(report) => panic!("the hostile cell ended normally: {:?}", report.exit),
        Err(failure) => {
            // Every report is one clear sentence.
            let message = failure.error.to_string();
            assert!(!message.is_empty() && !message.contains('\n'), "{message}");
            failure.error
        }
    }
}

fn abi_error(code: &[u8]) -> HypercallError {
    match error_of(code) {
        CellError::Hypercall(error) => error,
        other => panic!("expected an ABI violation, got: {other}"),
    }
}

fn fault(code: &[u8]) -> GuestException {
    match error_of(code) {
        CellError::Fault(exception) => exception,
        other => panic!("expected a fault, got: {other}"),
    }
}

fn out_of_bounds(error: HypercallError, expected: &str) {
    match error {
        HypercallError::OutOfBounds { what, .. } => assert_eq!(what, expected),
        other => panic!("expected {expected} out of bounds, got: {other}"),
    }
}

#[test]
fn a_benign_raw_guest_exits_with_its_status() {
    let outcome = run_with(&Asm::new().exit(42).code(), &config(), b"");
    assert_eq!(outcome.result.unwrap().exit, CellExit::Exited(42));
}

#[test]
fn unknown_hypercall_numbers_end_the_cell() {
    for number in [0, 16, 0x7fff_ffff, u32::MAX] {
        let code = Asm::new()
            .request_raw(ABI_VERSION, number, [0; 6])
            .hypercall()
            .code();
        assert_eq!(abi_error(&code), HypercallError::Unknown(number));
    }
}

#[test]
fn asking_for_a_next_request_outside_a_server_gets_none() {
    // A cell that no server reuses learns that no request comes, and carries on.
    let code = Asm::new()
        .call(Hypercall::NextRequest, [0; 6])
        .exit_with_result()
        .code();
    let outcome = run_with(&code, &config(), b"");
    assert_eq!(outcome.result.unwrap().exit, CellExit::Exited(0));
}

#[test]
fn another_abi_version_is_refused() {
    let code = Asm::new()
        .request_raw(ABI_VERSION + 1, Hypercall::Exit as u32, [0; 6])
        .hypercall()
        .code();
    assert_eq!(abi_error(&code), HypercallError::Version(ABI_VERSION + 1));
}

#[test]
fn requests_outside_memory_are_refused() {
    // Past the end, straddling the end, and in the last 32-bit address.
    for addr in [MEMORY as u32, MEMORY as u32 - 8, u32::MAX - 3] {
        out_of_bounds(abi_error(&Asm::new().hypercall_at(addr).code()), "request");
    }
}

#[test]
fn buffer_lists_outside_memory_are_refused() {
    for list in [MEMORY, u64::MAX - 7, 1 << 63] {
        let code = Asm::new()
            .call(Hypercall::Write, [1, list, 1, 0, 0, 0])
            .code();
        out_of_bounds(abi_error(&code), "buffer list");
    }
}

#[test]
fn buffers_past_the_end_or_with_overflowing_lengths_are_refused() {
    let list = LIST;
    for (addr, len) in [
        (MEMORY - 4, 100),
        (MEMORY, 1),
        (0x1000, u64::MAX),
        (u64::MAX, 2),
        (IMAGE_BASE, MEMORY),
    ] {
        let code = Asm::new()
            .mov(RCX, list)
            .mov(RAX, addr)
            .store(RCX, 0, RAX)
            .mov(RAX, len)
            .store(RCX, 8, RAX)
            .call(Hypercall::Write, [1, list, 1, 0, 0, 0])
            .code();
        match abi_error(&code) {
            HypercallError::OutOfBounds {
                what: "buffer",
                addr: a,
                len: l,
            } => {
                assert_eq!((a, l), (addr, len))
            }
            other => panic!("({addr:#x}, {len:#x}): {other}"),
        }
    }
}

#[test]
fn too_many_buffers_are_refused() {
    for count in [1025, u64::MAX] {
        let code = Asm::new()
            .call(Hypercall::Write, [1, IMAGE_BASE, count, 0, 0, 0])
            .code();
        assert_eq!(abi_error(&code), HypercallError::TooManyIovecs(count));
    }
}

#[test]
fn descriptors_are_checked_for_their_direction() {
    for (call, fd) in [
        (Hypercall::Write, 0),
        (Hypercall::Write, 3),
        (Hypercall::Read, 1),
        (Hypercall::Read, u64::MAX),
    ] {
        let code = Asm::new().call(call, [fd, IMAGE_BASE, 0, 0, 0, 0]).code();
        assert!(matches!(abi_error(&code), HypercallError::Descriptor { fd: f, .. } if f == fd));
    }
}

#[test]
fn reports_and_random_buffers_outside_memory_are_refused() {
    let trap = Asm::new()
        .call(Hypercall::Trap, [MEMORY - 2, 100, 0, 0, 0, 0])
        .code();
    out_of_bounds(abi_error(&trap), "report");
    let fail = Asm::new()
        .call(Hypercall::Fail, [u64::MAX, u64::MAX, 0, 0, 0, 0])
        .code();
    out_of_bounds(abi_error(&fail), "report");
    let random = Asm::new()
        .call(Hypercall::Random, [IMAGE_BASE, u64::MAX, 0, 0, 0, 0])
        .code();
    out_of_bounds(abi_error(&random), "random buffer");
}

#[test]
fn file_calls_are_checked_like_every_other_request() {
    // An unknown file call, and parameters outside memory, end the cell.
    let unknown = Asm::new()
        .call(Hypercall::File, [999, LIST, 0, 0, 0, 0])
        .code();
    assert_eq!(abi_error(&unknown), HypercallError::UnknownFileOp(999));
    let outside = Asm::new()
        .call(Hypercall::File, [1, MEMORY - 8, 0, 0, 0, 0])
        .code();
    out_of_bounds(abi_error(&outside), "structure");
    // A read from a descriptor that is not open is `badf` (8), and buffers outside
    // the cell are `fault` (21), returned to the guest, which carries on.
    let badf = Asm::new()
        .call(Hypercall::File, [1, LIST, 0, 0, 0, 0])
        .exit_with_result()
        .code();
    let outcome = run_with(&badf, &config(), b"");
    assert_eq!(outcome.result.unwrap().exit, CellExit::Exited(-8));
    // path_open in preopen 3 with a path that runs off the end of memory.
    let path = Asm::new()
        .mov(RCX, LIST)
        .put(RCX, 0, 3)
        .put(RCX, 8, 0)
        .put(RCX, 16, u64::MAX - 4)
        .put(RCX, 24, 100)
        .call(Hypercall::File, [13, LIST, 0, 0, 0, 0])
        .exit_with_result()
        .code();
    let dir = tempfile::tempdir().unwrap();
    let config = CellConfig {
        preopens: vec![hypercell_host::fs::Preopen {
            host: dir.path().to_path_buf(),
            guest: "data".into(),
            read_only: false,
        }],
        ..config()
    };
    let outcome = run_with(&path, &config, b"");
    assert_eq!(outcome.result.unwrap().exit, CellExit::Exited(-21));
}

#[test]
fn a_lying_output_buffer_is_refused() {
    let capacity = 1u64 << 20;
    // `used` past the capacity; a record longer than `used`; records for descriptors
    // that are not outputs.
    let cases: [(u64, u64); 4] = [(capacity + 1, 0), (16, 1 | 100 << 32), (8, 0), (8, 7)];
    for (used, record) in cases {
        let code = Asm::new()
            .put(RSI, size_of::<OutputBuffer>() as u32, record)
            .put(RSI, 0, used)
            .call(Hypercall::Flush, [0; 6])
            .code();
        assert!(
            matches!(abi_error(&code), HypercallError::OutputBuffer(_)),
            "used {used}"
        );
    }
}

#[test]
fn a_request_rewritten_during_its_call_changes_nothing() {
    // Read 64 bytes of stdin over the request block itself: the host already copied
    // the request, so it finishes the read it was asked for and reports 64.
    let list = LIST;
    let code = Asm::new()
        .mov(RCX, list)
        .store(RCX, 0, RBX)
        .put(RCX, 8, 64)
        .call(Hypercall::Read, [0, list, 1, 0, 0, 0])
        .exit_with_result()
        .code();
    let forged = [0xffu8; 64];
    let outcome = run_with(&code, &config(), &forged);
    assert_eq!(outcome.result.unwrap().exit, CellExit::Exited(64));
}

#[test]
fn an_endless_loop_is_stopped_by_the_time_limit() {
    let config = CellConfig {
        timeout: Some(Duration::from_millis(200)),
        ..config()
    };
    let started = Instant::now();
    let outcome = run_with(&Asm::new().raw(&[0xeb, 0xfe]).code(), &config, b"");
    assert!(matches!(
        outcome.result.err().unwrap().error,
        CellError::Timeout(_)
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn an_endless_sleep_is_stopped_by_the_time_limit() {
    let config = CellConfig {
        timeout: Some(Duration::from_millis(200)),
        ..config()
    };
    let code = Asm::new()
        .call(Hypercall::Sleep, [u64::MAX, 0, 0, 0, 0, 0])
        .code();
    let outcome = run_with(&code, &config, b"");
    assert!(matches!(
        outcome.result.err().unwrap().error,
        CellError::Timeout(_)
    ));
}

#[test]
fn an_output_flood_is_stopped_at_the_limit_and_what_fits_is_delivered() {
    // Write 1 MiB from the heap over and over.
    let list = LIST;
    let mut asm = Asm::new()
        .mov(RCX, list)
        .mov(RAX, DATA)
        .store(RCX, 0, RAX)
        .put(RCX, 8, 1 << 20)
        .request(Hypercall::Write, [1, list, 1, 0, 0, 0]);
    let loop_start = asm.0.len();
    asm = asm.hypercall();
    let back = -((asm.0.len() - loop_start + 2) as i8);
    let code = asm.raw(&[0xeb, back as u8]).code();
    let config = CellConfig {
        output_limit: Some(5 << 20),
        ..config()
    };
    let outcome = run_with(&code, &config, b"");
    let error = outcome.result.err().unwrap().error;
    assert!(matches!(error, CellError::OutputLimit(_)), "{error}");
    assert!(error.to_string().contains("5 MiB"), "{error}");
    assert_eq!(outcome.stdout.len(), 5 << 20);
}

#[test]
fn cpu_exceptions_are_reported_with_their_vector() {
    let cases: [(&str, Vec<u8>, u8, Option<u64>); 9] = [
        ("divide by zero", vec![0x31, 0xc9, 0xf7, 0xf1], 0, None),
        ("int1", vec![0xf1], 1, None),
        ("ud2", vec![0x0f, 0x0b], 6, None),
        // A non-canonical stack pointer, then a push.
        (
            "stack fault",
            [
                vec![0x48, 0xbc],
                (1u64 << 63).to_le_bytes().to_vec(),
                vec![0x50],
            ]
            .concat(),
            12,
            Some(0),
        ),
        // A non-canonical data address.
        (
            "general protection",
            [vec![0x48, 0xa1], (1u64 << 63).to_le_bytes().to_vec()].concat(),
            13,
            Some(0),
        ),
        (
            "null page",
            vec![0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0],
            14,
            Some(0b100),
        ),
        // x87 divide by zero with the exception unmasked.
        (
            "x87",
            vec![
                0xdb, 0xe3, 0x68, 0x7b, 0x03, 0, 0, 0xd9, 0x2c, 0x24, 0xd9, 0xe8, 0xd9, 0xee, 0xde,
                0xf9, 0x9b,
            ],
            16,
            None,
        ),
        // Set AC, then a misaligned load.
        (
            "alignment",
            vec![
                0x9c, 0x81, 0x0c, 0x24, 0, 0, 4, 0, 0x9d, 0x48, 0x8b, 0x44, 0x24, 0x01,
            ],
            17,
            Some(0),
        ),
        // SSE divide by zero with the exception unmasked.
        (
            "simd",
            vec![
                0x68, 0x80, 0x1d, 0, 0, 0x0f, 0xae, 0x14, 0x24, 0xb8, 0, 0, 0x80, 0x3f, 0x66, 0x0f,
                0x6e, 0xc0, 0x0f, 0x57, 0xc9, 0xf3, 0x0f, 0x5e, 0xc1,
            ],
            19,
            None,
        ),
    ];
    for (name, code, vector, error_code) in cases {
        let exception = fault(&Asm::new().raw(&code).code());
        assert_eq!(exception.vector, vector, "{name}: {exception}");
        if error_code.is_some() {
            assert_eq!(exception.error_code, error_code, "{name}: {exception}");
        }
    }
}

#[test]
fn software_interrupts_to_every_vector_are_contained() {
    // `int n` at CPL 3 through a DPL 0 (or absent) gate is a #GP naming the gate on
    // VT-x. PVM answers most with #UD, delivers int3 and int4 as #BP and #OF, and lets
    // a few fall through to the next instruction; the zero bytes after the code then
    // fault. Whatever the CPU does, the cell ends with a fault report.
    for vector in 0..=255u8 {
        let code = match vector {
            3 => vec![0xcc],
            _ => vec![0xcd, vector],
        };
        match error_of(&Asm::new().raw(&code).code()) {
            CellError::Fault(exception) => {
                assert!(exception.vector < 32, "int {vector}: {exception}")
            }
            other => panic!("int {vector}: {other}"),
        }
    }
}

#[test]
fn privileged_instructions_fault() {
    let cases: [(&str, &[u8]); 14] = [
        ("hlt", &[0xf4]),
        ("cli", &[0xfa]),
        ("sti", &[0xfb]),
        ("lgdt", &[0x0f, 0x01, 0x17]),
        ("lidt", &[0x0f, 0x01, 0x1f]),
        ("ltr", &[0x0f, 0x00, 0xd8]),
        ("mov cr3, rax", &[0x0f, 0x22, 0xd8]),
        ("mov rax, cr0", &[0x0f, 0x20, 0xc0]),
        ("wrmsr", &[0x0f, 0x30]),
        ("rdmsr", &[0x0f, 0x32]),
        ("invlpg", &[0x0f, 0x01, 0x38]),
        ("wbinvd", &[0x0f, 0x09]),
        ("out to another port", &[0xe6, 0x80]),
        ("in from another port", &[0xec]),
    ];
    for (name, code) in cases {
        let error = error_of(&Asm::new().raw(code).code());
        assert!(matches!(error, CellError::Fault(_)), "{name}: {error}");
    }
}

#[test]
fn system_call_instructions_and_odd_exits_are_contained() {
    // None of these may reach the host as anything but an error ending the cell.
    let cases: [(&str, &[u8]); 5] = [
        ("syscall", &[0x0f, 0x05]),
        ("sysenter", &[0x0f, 0x34]),
        ("vmcall", &[0x0f, 0x01, 0xc1]),
        ("swapgs", &[0x0f, 0x01, 0xf8]),
        (
            "in from the hypercall port",
            &[0x66, 0xba, 0x1e, 0x0c, 0xed],
        ),
    ];
    for (name, code) in cases {
        let error = error_of(&Asm::new().raw(code).code());
        assert!(
            matches!(
                error,
                CellError::Fault(_)
                    | CellError::UnexpectedExit(_)
                    | CellError::Emulation
                    | CellError::TripleFault
            ),
            "{name}: {error}"
        );
    }
}

#[test]
fn the_system_region_can_be_neither_written_nor_run() {
    let addr = (SYSTEM_BASE as u32).to_le_bytes();
    let write = fault(
        &Asm::new()
            .raw(&[0x48, 0x89, 0x04, 0x25, addr[0], addr[1], addr[2], addr[3]])
            .code(),
    );
    assert_eq!(
        (write.vector, write.cr2, write.error_code),
        (14, Some(SYSTEM_BASE), Some(0b111))
    );
    // jmp rax into the exception stubs
    let run = fault(
        &Asm::new()
            .mov(RAX, SYSTEM_BASE + 0x8000)
            .raw(&[0xff, 0xe0])
            .code(),
    );
    assert_eq!((run.vector, run.cr2), (14, Some(SYSTEM_BASE + 0x8000)));
    assert_eq!(
        run.error_code.map(|e| e & 0b101),
        Some(0b101),
        "a user access to a present page"
    );
}

#[test]
fn memory_past_the_cell_does_not_exist() {
    let beyond = fault(&Asm::new().mov(RCX, MEMORY).raw(&[0x48, 0x89, 0x01]).code()); // mov [rcx], rax
    assert_eq!((beyond.vector, beyond.cr2), (14, Some(MEMORY)));
}

#[test]
fn memory_is_mapped_on_request_and_only_inside_the_limit() {
    // A 256 MiB cell maps its boot region; an address past it is unmapped until the
    // guest asks for it, and memory past the limit is never granted.
    let config = CellConfig {
        memory_limit: 256 << 20,
        ..config()
    };
    let target = 200u64 << 20;
    let touch = Asm::new()
        .mov(RCX, target)
        .raw(&[0x48, 0x89, 0x01])
        .exit(0)
        .code();
    let outcome = run_with(&touch, &config, b"");
    let error = outcome.result.err().unwrap().error;
    assert!(
        matches!(error, CellError::Unmapped(addr) if addr == target),
        "{error}"
    );

    let grow_then_touch = Asm::new()
        .call(Hypercall::GrowMemory, [target + 8, 0, 0, 0, 0, 0])
        .mov(RCX, target)
        .raw(&[0x48, 0x89, 0x01])
        .exit_with_result()
        .code();
    let outcome = run_with(&grow_then_touch, &config, b"");
    let end = match outcome.result.unwrap().exit {
        CellExit::Exited(end) => end as u32 as u64,
        other => panic!("{other:?}"),
    };
    assert!(
        end > target && end <= 256 << 20 && end % (2 << 20) == 0,
        "mapped up to {end:#x}"
    );

    let too_much = Asm::new()
        .call(Hypercall::GrowMemory, [u64::MAX, 0, 0, 0, 0, 0])
        .exit_with_result()
        .code();
    let outcome = run_with(&too_much, &config, b"");
    assert_eq!(
        outcome.result.unwrap().exit,
        CellExit::Exited(-48),
        "ENOMEM"
    );
}

#[test]
fn a_stack_overflow_hits_the_guard_page() {
    // push rax forever
    let overflow = fault(&Asm::new().raw(&[0x50, 0xeb, 0xfd]).code());
    assert_eq!(overflow.vector, 14);
    assert!(
        overflow
            .cr2
            .is_some_and(|cr2| cr2 % (2 << 20) == (2 << 20) - 8),
        "{overflow}"
    );
}

#[test]
fn a_guest_that_faults_still_delivers_its_buffered_output() {
    // Put one record "hi\n" in the output buffer, then fault.
    let record = 1u64 | 3 << 32;
    let data = size_of::<OutputBuffer>() as u32;
    let code = Asm::new()
        .put(RSI, data, record)
        .put(RSI, data + 8, u64::from_le_bytes(*b"hi\n\0\0\0\0\0"))
        .put(RSI, 0, 11)
        .raw(&[0x0f, 0x0b])
        .code();
    let outcome = run_with(&code, &config(), b"");
    assert!(matches!(
        outcome.result.err().unwrap().error,
        CellError::Fault(_)
    ));
    assert_eq!(outcome.stdout, b"hi\n");
}

/// `mov [rdi + offset of field], value` for the boot block's trap fields.
fn register_trap_entry(asm: Asm, entry: u64, stack: u64) -> Asm {
    asm.mov(RAX, entry)
        .store(RDI, std::mem::offset_of!(BootInfo, trap_entry) as u32, RAX)
        .mov(RAX, stack)
        .store(RDI, std::mem::offset_of!(BootInfo, trap_stack) as u32, RAX)
}

/// Code that registers a trap entry at the end of the program, places an `Exit`
/// request at `DATA`, runs `fault`, and then whatever `handler` assembles at the entry.
/// Returns the code and the address of `fault`'s first byte.
fn with_trap_entry(fault: &[u8], handler: impl FnOnce(Asm) -> Asm) -> (Vec<u8>, u64) {
    // The entry's address is only known once the code before it is laid out: assemble
    // once to measure, then for real (the immediates have fixed widths).
    let body = |entry: u64| {
        register_trap_entry(Asm::new(), entry, DATA + (1 << 20))
            .mov(RCX, DATA)
            .put(
                RCX,
                0,
                u64::from(ABI_VERSION) | (Hypercall::Exit as u64) << 32,
            )
    };
    let before_fault = body(0).0.len() as u64;
    let entry = IMAGE_BASE + before_fault + fault.len() as u64;
    let code = handler(body(entry).raw(fault)).code();
    (code, IMAGE_BASE + before_fault)
}

#[test]
fn an_exception_reaches_the_registered_trap_entry_with_its_state() {
    // The entry exits with the faulting address it was given (`rdi`) as the status.
    let (code, ud2_at) = with_trap_entry(&[0x0f, 0x0b], |asm| {
        asm.mov(RCX, DATA)
            .store(RCX, 8, RDI)
            .hypercall_at(DATA as u32)
    });
    let outcome = run_with(&code, &config(), b"");
    assert_eq!(
        outcome.result.unwrap().exit,
        CellExit::Exited(ud2_at as u32 as i32)
    );
}

#[test]
fn an_exception_the_runtime_does_not_claim_is_reported_as_itself() {
    let (code, ud2_at) =
        with_trap_entry(&[0x0f, 0x0b], |asm| asm.call(Hypercall::Unhandled, [0; 6]));
    let exception = fault(&code);
    assert_eq!((exception.vector, exception.rip), (6, ud2_at));
}

#[test]
fn a_fault_while_handling_a_fault_ends_the_cell_with_the_first() {
    // The entry itself faults (a page fault at address 0): the report names the ud2.
    let (code, ud2_at) = with_trap_entry(&[0x0f, 0x0b], |asm| {
        asm.mov(RCX, 0).raw(&[0x48, 0x89, 0x01])
    });
    let exception = fault(&code);
    assert_eq!((exception.vector, exception.rip), (6, ud2_at));
}

#[test]
fn a_trap_entry_outside_user_memory_is_ignored() {
    for (entry, stack) in [
        (SYSTEM_BASE, DATA),
        (MEMORY, DATA),
        (DATA, SYSTEM_BASE),
        (DATA, MEMORY + 16),
    ] {
        let code = register_trap_entry(Asm::new(), entry, stack)
            .raw(&[0x0f, 0x0b])
            .code();
        assert_eq!(fault(&code).vector, 6, "entry {entry:#x}, stack {stack:#x}");
    }
}

#[test]
fn unhandled_without_an_exception_is_refused() {
    let code = Asm::new().call(Hypercall::Unhandled, [0; 6]).code();
    assert_eq!(abi_error(&code), HypercallError::NoException);
}

#[test]
fn reserved_memory_is_mapped_exactly_as_asked() {
    // Map 4 KiB of the reservation area onto DATA, write through it, read DATA back.
    let va = RESERVATION_BASE + (6 << 20);
    let code = Asm::new()
        .call(Hypercall::MapMemory, [va, 4096, DATA, 0, 0, 0])
        .mov(RCX, va)
        .put(RCX, 0xff8, 77)
        .mov(RCX, DATA)
        .raw(&[0x48, 0x8b, 0x81, 0xf8, 0x0f, 0, 0]) // mov rax, [rcx + 0xff8]
        .store(RBX, 8, RAX)
        .put(
            RBX,
            0,
            u64::from(ABI_VERSION) | (Hypercall::Exit as u64) << 32,
        )
        .hypercall()
        .code();
    assert_eq!(
        run_with(&code, &config(), b"").result.unwrap().exit,
        CellExit::Exited(77)
    );
    // One byte further is not mapped.
    let past = Asm::new()
        .call(Hypercall::MapMemory, [va, 4096, DATA, 0, 0, 0])
        .mov(RCX, va + 4096)
        .raw(&[0x48, 0x89, 0x01])
        .code();
    let exception = fault(&past);
    assert_eq!((exception.vector, exception.cr2), (14, Some(va + 4096)));
}

#[test]
fn mapping_requests_outside_the_rules_are_refused() {
    let va = RESERVATION_BASE;
    for args in [
        [DATA, 4096, DATA, 0, 0, 0],             // not in the reservation area
        [va, 4096, SYSTEM_BASE, 0, 0, 0],        // onto the system region
        [va + 4096, 4096, DATA, 0, 0, 0],        // offsets within 2 MiB differ
        [va, 100, DATA, 0, 0, 0],                // not page-sized
        [va, u64::MAX - 4095, DATA, 0, 0, 0],    // overflowing
        [va, 4096, DATA, va + 8192, 4096, DATA], // second range's offsets differ
    ] {
        let code = Asm::new().call(Hypercall::MapMemory, args).exit(0).code();
        assert!(
            matches!(abi_error(&code), HypercallError::Mapping(_)),
            "{args:x?}"
        );
    }
}

/// A wasm program that moves 64 KiB at a time with `call` (`fd_read` or `fd_write`) on
/// descriptor `fd` until a call fails, and exits with its errno; a read of nothing
/// (the end of input) exits 0.
fn channel_program(call: &str, fd: u32) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "{call}" (func $move (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 2)
  (func (export "_start") (local $e i32)
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 65536))
    (loop $more
      (local.set $e (call $move (i32.const {fd}) (i32.const 0) (i32.const 1) (i32.const 8)))
      (if (local.get $e) (then (call $exit (local.get $e))))
      (br_if $more (i32.load (i32.const 8))))
    (call $exit (i32.const 0))))"#
    )
}

/// Reads stdin to its end (see [`channel_program`]).
fn channel_reader() -> String {
    channel_program("fd_read", 0)
}

/// Writes stdout until a write fails (see [`channel_program`]).
fn channel_writer() -> String {
    channel_program("fd_write", 1)
}

/// The channels of a cell holding `end` alone.
fn channels_of(end: &ChannelEnd) -> CellChannels<'_> {
    if end.is_reader() {
        CellChannels {
            stdin: Some(end),
            stdout: None,
            ..CellChannels::default()
        }
    } else {
        CellChannels {
            stdin: None,
            stdout: Some(end),
            ..CellChannels::default()
        }
    }
}

/// Runs raw `code` joined by a channel to the wasm program `peer`: the raw cell holds
/// the writing end when `raw_writes`, else the reading end. Once the peer has ended,
/// the raw cell is stopped if it still runs. Returns how the raw cell and the peer
/// ended.
fn joined_with_raw(code: &[u8], peer: &str, raw_writes: bool) -> (Ended, Ended) {
    joined_with_raw_as(code, &config(), peer, raw_writes)
}

/// How a cell ended.
type Ended = Result<CellReport, CellFailure>;

/// [`joined_with_raw`], the raw cell run with `raw_config`.
fn joined_with_raw_as(
    code: &[u8],
    raw_config: &CellConfig,
    peer: &str,
    raw_writes: bool,
) -> (Ended, Ended) {
    let module = common::compile(peer);
    let (writer, reader) = hypercell_host::channel().unwrap();
    let (raw_end, peer_end) = if raw_writes {
        (writer, reader)
    } else {
        (reader, writer)
    };
    let null = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap();
    let stdio = CellStdio {
        stdin: null.as_fd(),
        stdout: null.as_fd(),
        stderr: null.as_fd(),
    };
    let raw_control = CellControl::new();
    std::thread::scope(|scope| {
        let raw = scope.spawn(|| {
            hypercell_host::run_joined_cell(
                raw_config,
                CellPayload::MachineCode(code),
                stdio,
                &raw_control,
                channels_of(&raw_end),
            )
        });
        let payload = CellPayload::Wasm {
            module: &module,
            cpu_features: common::cpu_features(),
        };
        let peer = hypercell_host::run_joined_cell(
            &config(),
            payload,
            stdio,
            &CellControl::new(),
            channels_of(&peer_end),
        );
        raw_control.stop(StopReason::Signal(libc::SIGTERM));
        (raw.join().unwrap(), peer)
    })
}

/// Raw code that loads the header of its channel on `stream` into `rcx`, writes
/// `value` at `offset` in it, kicks its peer, and spins until it is stopped.
fn corrupt_channel(stream: u64, offset: usize, value: u64) -> Vec<u8> {
    let mut asm = Asm::new();
    let field = if stream == 0 {
        std::mem::offset_of!(BootInfo, stdin_channel)
    } else {
        std::mem::offset_of!(BootInfo, stdout_channel)
    };
    asm.load(RCX, RDI, field as u32);
    asm.mov(RAX, value)
        .store(RCX, offset as u32, RAX)
        .call(Hypercall::Channel, [CHANNEL_KICK, stream, 0, 0, 0, 0])
        // jmp $
        .raw(&[0xeb, 0xfe])
        .code()
}

fn stopped_by_the_test(raw: Ended) {
    match raw {
        Err(failure) => assert!(
            matches!(failure.error, CellError::Stopped(libc::SIGTERM)),
            "{}",
            failure.error
        ),
        Ok(report) => panic!("the raw cell ended by itself: {:?}", report.exit),
    }
}

/// Each of `values` written into `field` of the raw cell's end of a channel gives the
/// wasm program at the other end `EIO`.
fn nonsense_index_breaks_the_channel(field: usize, values: [u64; 3], raw_writes: bool) {
    let (stream, peer) = match raw_writes {
        true => (1, channel_reader()),
        false => (0, channel_writer()),
    };
    for value in values {
        let code = corrupt_channel(stream, field, value);
        let (raw, peer) = joined_with_raw(&code, &peer, raw_writes);
        assert_eq!(
            peer.unwrap().exit,
            CellExit::Exited(i32::from(errno::IO)),
            "{value:#x}"
        );
        stopped_by_the_test(raw);
    }
}

#[test]
fn a_writer_that_sets_its_head_to_nonsense_gives_its_reader_an_error() {
    let head = std::mem::offset_of!(ChannelHeader, head);
    nonsense_index_breaks_the_channel(head, [u64::MAX, 1 << 40, (1 << 20) + 1], true);
}

#[test]
fn a_writer_that_claims_a_full_ring_gives_its_reader_ring_bytes_only() {
    // A head exactly a ring ahead is a full ring of whatever lies there: the reader
    // takes it, then waits for more, and reads the end once the writer is gone.
    let code = corrupt_channel(1, std::mem::offset_of!(ChannelHeader, head), 1 << 20);
    let briefly = CellConfig {
        timeout: Some(Duration::from_millis(500)),
        ..config()
    };
    let (raw, peer) = joined_with_raw_as(&code, &briefly, &channel_reader(), true);
    assert!(matches!(raw.unwrap_err().error, CellError::Timeout(_)));
    assert_eq!(peer.unwrap().exit, CellExit::Exited(0));
}

#[test]
fn a_reader_that_sets_its_tail_to_nonsense_gives_its_writer_an_error() {
    // Tails ahead of anything written. (A tail a little behind is a reader that
    // reads nothing: its writer fills the ring and waits, as for any stalled reader.)
    let tail = std::mem::offset_of!(ChannelHeader, tail);
    nonsense_index_breaks_the_channel(tail, [1 << 40, u64::MAX / 2, 1 << 63], false);
}

#[test]
fn a_reader_that_says_it_closed_gives_its_writer_epipe() {
    let code = corrupt_channel(0, std::mem::offset_of!(ChannelHeader, reader_closed), 1);
    let (raw, peer) = joined_with_raw(&code, &channel_writer(), false);
    assert_eq!(peer.unwrap().exit, CellExit::Exited(i32::from(errno::PIPE)));
    stopped_by_the_test(raw);
}

#[test]
fn channel_calls_outside_the_rules_are_refused() {
    let bad = |args: [u64; 6]| {
        Asm::new()
            .call(Hypercall::Channel, args)
            .exit_with_result()
            .code()
    };
    let badf = CellExit::Exited(-i32::from(errno::BADF));
    // A cell without channels.
    let outcome = run_with(&bad([CHANNEL_WAIT, 0, 0, 0, 0, 0]), &config(), b"");
    assert_eq!(outcome.result.unwrap().exit, badf);
    // A stream that is not a channel, an unknown operation, and stdio calls on a
    // stream that is one.
    let cases = [
        (bad([CHANNEL_KICK, 0, 0, 0, 0, 0]), badf.clone()),
        (bad([CHANNEL_WAIT, 2, 0, 0, 0, 0]), badf.clone()),
        (bad([CHANNEL_KICK, u64::MAX, 0, 0, 0, 0]), badf.clone()),
        (
            bad([99, 1, 0, 0, 0, 0]),
            CellExit::Exited(-i32::from(errno::INVAL)),
        ),
        // A poll of no ends, or of more than a poll takes, before any list is read.
        (
            bad([CHANNEL_POLL, 0, 0, 0, 0, 0]),
            CellExit::Exited(-i32::from(errno::INVAL)),
        ),
        (
            bad([CHANNEL_POLL, 0, MAX_POLLED_ENDS + 1, 0, 0, 0]),
            CellExit::Exited(-i32::from(errno::INVAL)),
        ),
        (
            Asm::new()
                .put(RBX, 256, 0x1000)
                .put(RBX, 264, 16)
                .call(Hypercall::Write, [1, 0, 0, 0, 0, 0])
                .exit_with_result()
                .code(),
            badf.clone(),
        ),
    ];
    for (code, expected) in cases {
        let (raw, peer) = joined_with_raw(&code, &channel_reader(), true);
        assert_eq!(raw.unwrap().exit, expected);
        // The raw writer ended without writing: its reader reads the end.
        assert_eq!(peer.unwrap().exit, CellExit::Exited(0));
    }
}
