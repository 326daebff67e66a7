//! Property-based fuzzing of the host's request decoding: arbitrary requests, iovec
//! lists, buffers and output-buffer contents, at arbitrary addresses, straight into
//! `Services::handle` over real guest memory and a real VM (for memory growth). Every
//! call is drawn as often as the others: file calls (with parameter blocks of
//! descriptors, flags, paths and lengths, on a preopened scratch directory), memory
//! growth and reservation-area mappings among them.
//!
//! Properties: the host never panics, never touches memory outside the cell (every
//! access goes through bounds-checked accessors, and a wrong one would fault the test
//! process), answers every request with a result or a typed `HypercallError` of one
//! sentence, and resumes only valid requests.
//!
//! `HYPERCELL_FUZZ_CASES` sets the number of cases per property (default 3000, the
//! bounded run CI does).

use std::fs::File;
use std::os::fd::AsFd;

use hypercell_abi::hypercall::{MAX_IOVECS, RESULT_OFFSET};
use hypercell_abi::layout::RESERVATION_BASE;
use hypercell_abi::wasi::errno;
use hypercell_abi::{ABI_VERSION, Components, Hypercall, HypercallRequest, OutputBuffer};
use hypercell_host::fs::{FileTable, Preopen};
use hypercell_host::hypercall::{Completion, HypercallError, MemoryGrowth, Services};
use hypercell_host::stdio::{OUTPUT_CAPACITY, OutputMeter};
use hypercell_host::{CellControl, CellStdio, StopReason, TableVariants};
use hypercell_vmm::system::write_system_region;
use hypercell_vmm::{Bytes, GuestAddress, GuestMemory, ReservationTables, Vm};
use proptest::prelude::*;

const MEMORY: u64 = 16 << 20;
const OUTPUT: u64 = 4 << 20;

fn cases() -> u32 {
    std::env::var("HYPERCELL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

/// An address: usually inside the cell, sometimes at its edges, sometimes anywhere.
fn address() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0..MEMORY,
        2 => (0u64..64).prop_map(|d| MEMORY - d),
        1 => Just(OUTPUT),
        1 => any::<u64>(),
    ]
}

/// A length: small, near the cell's size, or anything.
fn length() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..4096, 1 => (MEMORY - 64)..(MEMORY + 64), 1 => any::<u64>()]
}

/// Where a case's file-call parameter block and path strings go.
const PARAMS: u64 = 0x68_0000;
const PATHS: u64 = 0x68_1000;

/// A path a file call may name: plain, nested, escaping, absolute or empty.
const PATH_STRINGS: [&[u8]; 6] = [b"a", b"sub/b", b"../out", b"/etc/passwd", b"", b"a/../a"];

#[derive(Debug, Clone)]
struct Case {
    request_at: u64,
    version: u32,
    number: u32,
    args: [u64; 6],
    iovecs: Vec<(u64, u64)>,
    output_header: (u64, u64),
    output_records: Vec<u8>,
    /// For a file call, the calls made one after another on the same files (the first
    /// may open what the next use).
    file_calls: Vec<(u64, [u64; 8])>,
    /// Whether growth goes into copies of the tables (see `TableVariants`).
    variants: bool,
}

/// Arguments for the memory calls: reservation-area addresses and cell addresses at
/// the same offset in their 2 MiB pages (as mappings must be), lengths in pages; now
/// and then anything.
fn memory_args() -> impl Strategy<Value = [u64; 6]> {
    let mapping =
        (0u64..8, 0u64..512, 2u64..8, 0u64..1024).prop_map(|(page, small, frame, pages)| {
            let offset = small << 12;
            (
                RESERVATION_BASE + (page << 21) + offset,
                pages << 12,
                (frame << 21) + offset,
            )
        });
    let one = prop_oneof![
        6 => mapping,
        1 => (any::<u64>(), any::<u64>(), any::<u64>()),
    ];
    (one.clone(), one).prop_map(|((a, b, c), (d, e, f))| [a, b, c, d, e, f])
}

/// The shape of each file call's parameters (see `FileOp`): `D` a descriptor, `L`
/// lookup flags, `P` a path and its length, `I` an iovec list and its count, `B` a
/// buffer and its length, `O` an out address, `N` a number, `F` flags, `R` rights,
/// `W` a seek whence.
const FILE_CALL_SHAPES: [&str; 25] = [
    "DI", "DIN", "DI", "DIN", "DNW", "D", "D", "D", "DO", "DN", "DO", "DBN", "DLPFRF", "DP", "DP",
    "DP", "DPDP", "DLPO", "PDP", "DPB", "DD", "DF", "DNNF", "DLPNNF", "DLPDP",
];

/// Where file calls find their iovec list, its buffer, and room for results.
const IOVECS: u64 = 0x69_0000;
const BUFFER: u64 = 0x69_1000;
const OUT: u64 = 0x69_8000;

/// One file call: its number and a parameter block of the right shape, with now and
/// then a parameter replaced by anything.
fn file_call() -> impl Strategy<Value = (u64, [u64; 8])> {
    (
        1u64..=25,
        proptest::array::uniform8((
            prop_oneof![4 => Just(3u64), 4 => 4u64..7, 1 => 0u64..3, 1 => 7u64..64],
            0usize..PATH_STRINGS.len(),
            0u64..4,
            prop_oneof![3 => 0u64..64, 1 => 0u64..0x10000],
            prop_oneof![3 => Just(u64::MAX), 1 => any::<u64>()],
            prop_oneof![12 => Just(None), 1 => address().prop_map(Some), 1 => any::<u64>().prop_map(Some)],
        )),
    )
        .prop_map(|(op, draws)| {
            let mut params = [0u64; 8];
            let mut at = 0;
            for (kind, (fd, path, small, number, rights, wild)) in
                FILE_CALL_SHAPES[op as usize - 1].chars().zip(draws)
            {
                let values: &[u64] = match kind {
                    'D' => &[fd],
                    'L' => &[small & 1],
                    'P' => &[
                        PATHS + 16 * path as u64,
                        PATH_STRINGS[path].len() as u64,
                    ],
                    'I' => &[IOVECS, small],
                    'B' => &[BUFFER, number],
                    'O' => &[OUT],
                    'W' => &[small],
                    'R' => &[rights],
                    _ => &[number],
                };
                for &value in values {
                    if at < params.len() {
                        params[at] = wild.unwrap_or(value);
                        at += 1;
                    }
                }
            }
            (op, params)
        })
}

fn case() -> impl Strategy<Value = Case> {
    case_calling(prop_oneof![13 => 1u32..=13, 1 => any::<u32>()])
}

/// A case whose call number comes from `number`.
fn case_calling(number: impl Strategy<Value = u32>) -> impl Strategy<Value = Case> {
    (
        prop_oneof![6 => 0x60_0000u64..0x60_1000, 1 => address()],
        prop_oneof![8 => Just(ABI_VERSION), 1 => any::<u32>()],
        number,
        (
            0u64..4,
            address(),
            prop_oneof![4 => 0u64..8, 1 => Just(MAX_IOVECS + 1), 1 => any::<u64>()],
        ),
        (address(), length(), length()),
        proptest::collection::vec((address(), length()), 0..8),
        // Mostly an empty output buffer, so that the request itself is decoded.
        (
            prop_oneof![6 => Just(0u64), 3 => 0u64..64, 1 => any::<u64>()],
            any::<u64>(),
        ),
        proptest::collection::vec(any::<u8>(), 0..64),
        (
            proptest::collection::vec(file_call(), 1..6),
            prop_oneof![12 => Just(None), 1 => any::<u64>().prop_map(Some)],
            memory_args(),
        ),
        // Growth into copies of the tables, as a partition reused from a template
        // grows, or in place.
        any::<bool>(),
    )
        .prop_map(
            |(
                request_at,
                version,
                number,
                (fd, list, count),
                (a3, a4, a5),
                iovecs,
                output_header,
                output_records,
                (mut file_calls, unknown_op, memory_args),
                variants,
            )| {
                if let Some(op) = unknown_op {
                    file_calls[0].0 = op;
                }
                let args = match Hypercall::from_number(number) {
                    // A file call names its operation and its parameter block.
                    Some(Hypercall::File) => [file_calls[0].0, PARAMS, count, a3, a4, a5],
                    Some(Hypercall::GrowMemory) => [a3, a4, a5, fd, list, count],
                    Some(Hypercall::MapMemory) => memory_args,
                    _ => [fd, list, count, a3, a4, a5],
                };
                Case {
                    request_at,
                    version,
                    number,
                    args,
                    iovecs,
                    output_header,
                    output_records,
                    file_calls,
                    variants,
                }
            },
        )
}

struct Fixture {
    memory: GuestMemory,
    vm: Vm,
    null: File,
    scratch: tempfile::TempDir,
}

/// The part of the cell mapped at first; growth maps more of it.
const BOOT_MAPPING: u64 = 8 << 20;

impl Fixture {
    fn new() -> Self {
        let memory = GuestMemory::new(MEMORY).unwrap();
        write_system_region(&memory, &[]).unwrap();
        let vm = Vm::new().unwrap();
        vm.map_boot_memory(&memory, BOOT_MAPPING).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        std::fs::create_dir(scratch.path().join("sub")).unwrap();
        std::fs::write(scratch.path().join("a"), b"contents").unwrap();
        Self {
            memory,
            vm,
            null: File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
                .unwrap(),
            scratch,
        }
    }

    fn handle(&self, case: &Case, components: Components) -> Result<Completion, HypercallError> {
        let mem = self.memory.mem();
        // The guest's side: a request, an iovec list where `args[1]` points (when
        // that is inside memory), and an output buffer.
        let request = HypercallRequest {
            abi_version: case.version,
            number: case.number,
            args: case.args,
            result: 0,
        };
        let mut bytes = [0u8; 64];
        bytes[0..4].copy_from_slice(&request.abi_version.to_le_bytes());
        bytes[4..8].copy_from_slice(&request.number.to_le_bytes());
        for (i, arg) in request.args.iter().enumerate() {
            bytes[8 + 8 * i..16 + 8 * i].copy_from_slice(&arg.to_le_bytes());
        }
        let _ = mem.write_slice(&bytes, GuestAddress(case.request_at));
        for (i, (addr, len)) in case.iovecs.iter().enumerate() {
            let at = case.args[1].wrapping_add(16 * i as u64);
            let _ = mem.write_obj(*addr, GuestAddress(at));
            let _ = mem.write_obj(*len, GuestAddress(at.wrapping_add(8)));
        }
        let _ = mem.write_obj(case.output_header.0, GuestAddress(OUTPUT));
        let _ = mem.write_obj(OUTPUT_CAPACITY, GuestAddress(OUTPUT + 8));
        let _ = mem.write_slice(
            &case.output_records,
            GuestAddress(OUTPUT + size_of::<OutputBuffer>() as u64),
        );
        for (i, path) in PATH_STRINGS.iter().enumerate() {
            let _ = mem.write_slice(path, GuestAddress(PATHS + 16 * i as u64));
        }
        for i in 0..3u64 {
            let _ = mem.write_obj(BUFFER + 64 * i, GuestAddress(IOVECS + 16 * i));
            let _ = mem.write_obj(64u64, GuestAddress(IOVECS + 16 * i + 8));
        }
        let _ = mem.write_slice(&[b'w'; 192], GuestAddress(BUFFER));

        // Any sleep the guest asks for ends at once: the cell is being stopped.
        let control = CellControl::new();
        if case.number == Hypercall::Sleep as u32 {
            control.stop(StopReason::Timeout);
        }
        let mut services = Services {
            stdio: CellStdio {
                stdin: self.null.as_fd(),
                stdout: self.null.as_fd(),
                stderr: self.null.as_fd(),
            },
            output: GuestAddress(OUTPUT),
            control,
            denied_growth: 0,
            meter: OutputMeter::new(Some(1 << 30)),
            growth: Some(MemoryGrowth {
                vm: &self.vm,
                mapped: BOOT_MAPPING,
                ready: BOOT_MAPPING,
                end: MEMORY,
                next_slot: hypercell_vmm::FIRST_GROWTH_SLOT,
                boot_mapping: BOOT_MAPPING,
                tables: ReservationTables::default(),
                linear_memory: 0,
                populate_from: 0,
                variants: case.variants.then(TableVariants::default),
                switch_to: None,
            }),
            files: FileTable::with_preopens(&[Preopen {
                host: self.scratch.path().to_path_buf(),
                guest: "/".into(),
                read_only: false,
            }])
            .unwrap(),
            template_stop: None,
            channels: Default::default(),
            requests: None,
            components,
        };
        if case.number != Hypercall::File as u32 {
            return services.handle(&self.memory, GuestAddress(case.request_at));
        }
        let mut outcome = Ok(Completion::Resume);
        for (i, (op, params)) in case.file_calls.iter().enumerate() {
            if i > 0 {
                if !matches!(outcome, Ok(Completion::Resume)) {
                    break;
                }
                // The next call of the sequence, in the same request block.
                let _ = mem.write_obj(*op, GuestAddress(case.request_at.wrapping_add(8)));
            }
            for (j, param) in params.iter().enumerate() {
                let _ = mem.write_obj(*param, GuestAddress(PARAMS + 8 * j as u64));
            }
            outcome = services.handle(&self.memory, GuestAddress(case.request_at));
        }
        outcome
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_request_gets_a_result_or_a_typed_error(case in case()) {
        let fixture = Fixture::new();
        match fixture.handle(&case, Components::ALL) {
            Ok(Completion::Resume) => {
                // A resumed request was valid: a known call of this ABI version, at an
                // address inside the cell, with its result written back.
                prop_assert_eq!(case.version, ABI_VERSION);
                prop_assert!(Hypercall::from_number(case.number).is_some());
                prop_assert!(case.request_at.checked_add(64).is_some_and(|end| end <= MEMORY));
            }
            Ok(_) => {}
            Err(error) => {
                let message = error.to_string();
                prop_assert!(!message.is_empty() && !message.contains('\n'), "{}", message);
                if case.version != ABI_VERSION && case.request_at.checked_add(64).is_some_and(|end| end <= MEMORY) {
                    prop_assert!(matches!(error, HypercallError::Version(_) | HypercallError::OutputBuffer(_) | HypercallError::OutOfBounds { .. }), "{}", error);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever a guest without the `fs` and `stdio` components asks of files and
    /// stdio, the host answers `notcapable` and touches nothing.
    #[test]
    fn a_cell_without_files_or_stdio_gets_notcapable_from_the_host(
        case in case_calling(prop_oneof![
            Just(Hypercall::File as u32),
            Just(Hypercall::Read as u32),
            Just(Hypercall::Write as u32),
        ])
    ) {
        let fixture = Fixture::new();
        let listing = || {
            let mut names: Vec<_> = std::fs::read_dir(fixture.scratch.path())
                .unwrap()
                .map(|entry| entry.unwrap().file_name())
                .collect();
            names.sort();
            names
        };
        let before = listing();
        let outcome = fixture.handle(&case, Components::NONE);
        if let Ok(Completion::Resume) = outcome {
            let result: i64 = fixture
                .memory
                .mem()
                .read_obj(GuestAddress(case.request_at + RESULT_OFFSET))
                .unwrap();
            prop_assert_eq!(result, -i64::from(errno::NOTCAPABLE));
        }
        prop_assert_eq!(listing(), before);
    }
}

/// The generator is no use unless requests get past decoding: of the cases drawn for
/// each of these calls, some must succeed (file calls one at a time, so that the result
/// in the request block is that call's).
#[test]
fn the_generator_reaches_file_growth_and_mapping_calls() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    for call in [Hypercall::File, Hypercall::GrowMemory, Hypercall::MapMemory] {
        let strategy = case_calling(Just(call as u32));
        let mut succeeded = 0;
        for _ in 0..300 {
            let mut case = strategy.new_tree(&mut runner).unwrap().current();
            case.file_calls.truncate(1);
            let fixture = Fixture::new();
            if let Ok(Completion::Resume) = fixture.handle(&case, Components::ALL) {
                let result: i64 = fixture
                    .memory
                    .mem()
                    .read_obj(GuestAddress(case.request_at + 56))
                    .unwrap();
                succeeded += usize::from(result >= 0);
            }
        }
        assert!(
            succeeded >= 10,
            "{call:?} succeeded {succeeded} times in 300"
        );
    }
}

#[test]
fn decoding_regressions() {
    // Shapes that must be refused without touching the host: a list count that would
    // overflow `16 * count`, an iovec whose end wraps, and a request at the last
    // addressable byte.
    let fixture = Fixture::new();
    let base = Case {
        request_at: 0x60_0000,
        version: ABI_VERSION,
        number: Hypercall::Write as u32,
        args: [1, 0x70_0000, 1, 0, 0, 0],
        iovecs: vec![(0x1000, u64::MAX - 0x800)],
        output_header: (0, 0),
        output_records: Vec::new(),
        file_calls: vec![(1, [0; 8])],
        variants: false,
    };
    assert!(matches!(
        fixture.handle(&base, Components::ALL),
        Err(HypercallError::OutOfBounds { what: "buffer", .. })
    ));
    let huge_count = Case {
        args: [1, 0x70_0000, u64::MAX / 8, 0, 0, 0],
        ..base.clone()
    };
    assert!(matches!(
        fixture.handle(&huge_count, Components::ALL),
        Err(HypercallError::TooManyIovecs(_))
    ));
    let at_end = Case {
        request_at: u64::MAX,
        ..base
    };
    assert!(matches!(
        fixture.handle(&at_end, Components::ALL),
        Err(HypercallError::OutOfBounds {
            what: "request",
            ..
        })
    ));
}
