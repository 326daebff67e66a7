//! Property-based fuzzing of the host's request decoding: arbitrary requests, iovec
//! lists, buffers and output-buffer contents, at arbitrary addresses, straight into
//! `Services::handle` over real guest memory (no VM needed: the host only ever sees
//! guest memory and the request address).
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

use hypercell_abi::hypercall::MAX_IOVECS;
use hypercell_abi::{ABI_VERSION, Hypercall, HypercallRequest};
use hypercell_host::hypercall::{Completion, HypercallError, Services};
use hypercell_host::stdio::{OUTPUT_CAPACITY, OutputMeter};
use hypercell_host::{CellControl, CellStdio, StopReason};
use hypercell_vmm::{Bytes, GuestAddress, GuestMemory};
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

#[derive(Debug, Clone)]
struct Case {
    request_at: u64,
    version: u32,
    number: u32,
    args: [u64; 6],
    iovecs: Vec<(u64, u64)>,
    output_header: (u64, u64),
    output_records: Vec<u8>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop_oneof![6 => 0x60_0000u64..0x60_1000, 1 => address()],
        prop_oneof![8 => Just(ABI_VERSION), 1 => any::<u32>()],
        prop_oneof![8 => 1u32..=8, 1 => any::<u32>()],
        (
            0u64..4,
            address(),
            prop_oneof![4 => 0u64..8, 1 => Just(MAX_IOVECS + 1), 1 => any::<u64>()],
        ),
        (address(), length(), length()),
        proptest::collection::vec((address(), length()), 0..8),
        (prop_oneof![3 => 0u64..64, 1 => any::<u64>()], any::<u64>()),
        proptest::collection::vec(any::<u8>(), 0..64),
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
            )| Case {
                request_at,
                version,
                number,
                args: [fd, list, count, a3, a4, a5],
                iovecs,
                output_header,
                output_records,
            },
        )
}

struct Fixture {
    memory: GuestMemory,
    null: File,
}

impl Fixture {
    fn new() -> Self {
        Self {
            memory: GuestMemory::new(MEMORY).unwrap(),
            null: File::options()
                .read(true)
                .write(true)
                .open("/dev/null")
                .unwrap(),
        }
    }

    fn handle(&self, case: &Case) -> Result<Completion, HypercallError> {
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
        let _ = mem.write_slice(&case.output_records, GuestAddress(OUTPUT + 16));

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
            growth: None,
            counts: Default::default(),
            files: Default::default(),
        };
        services.handle(&self.memory, GuestAddress(case.request_at))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_request_gets_a_result_or_a_typed_error(case in case()) {
        let fixture = Fixture::new();
        match fixture.handle(&case) {
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
    };
    assert!(matches!(
        fixture.handle(&base),
        Err(HypercallError::OutOfBounds { what: "buffer", .. })
    ));
    let huge_count = Case {
        args: [1, 0x70_0000, u64::MAX / 8, 0, 0, 0],
        ..base.clone()
    };
    assert!(matches!(
        fixture.handle(&huge_count),
        Err(HypercallError::TooManyIovecs(_))
    ));
    let at_end = Case {
        request_at: u64::MAX,
        ..base
    };
    assert!(matches!(
        fixture.handle(&at_end),
        Err(HypercallError::OutOfBounds {
            what: "request",
            ..
        })
    ));
}
