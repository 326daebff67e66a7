//! The one wasmtime configuration that both sides of a cell use.
//!
//! The host compiles modules with Cranelift and the guest runtime loads the result, so
//! every setting that shapes compiled code (tunables, wasm features, CPU features) must
//! be identical on both sides; both call [`configure`].
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

use hypercell_abi::CpuFeatures;
use hypercell_abi::layout::LARGE_PAGE_SIZE;
use wasmtime::Config;

/// CPU features that compiled code may use, paired with Cranelift's flag for each.
pub const CRANELIFT_CPU_FLAGS: &[(u32, &str)] = &[
    (CpuFeatures::SSE3, "has_sse3"),
    (CpuFeatures::SSSE3, "has_ssse3"),
    (CpuFeatures::SSE41, "has_sse41"),
    (CpuFeatures::SSE42, "has_sse42"),
    (CpuFeatures::POPCNT, "has_popcnt"),
    (CpuFeatures::BMI1, "has_bmi1"),
    (CpuFeatures::BMI2, "has_bmi2"),
    (CpuFeatures::LZCNT, "has_lzcnt"),
    (CpuFeatures::AVX, "has_avx"),
    (CpuFeatures::AVX2, "has_avx2"),
    (CpuFeatures::FMA, "has_fma"),
];

/// Guest-virtual space reserved for each linear memory: a 32-bit index never leaves it.
pub const MEMORY_RESERVATION: u64 = 4 << 30;

/// Unmapped space after each reservation: covers the static offset of a load or store.
pub const MEMORY_GUARD_SIZE: u64 = 32 << 20;

/// Unmapped space after a GC heap's reservation. It differs from
/// [`MEMORY_GUARD_SIZE`] so that the guest tells the two kinds of reservation apart by
/// size alone.
pub const GC_HEAP_GUARD_SIZE: u64 = 64 << 20;

/// Bytes wasmtime reserves for one linear memory.
pub const MEMORY_RESERVATION_SIZE: u64 = MEMORY_RESERVATION + MEMORY_GUARD_SIZE;

/// How compiled code keeps a linear memory's accesses inside its current size.
///
/// Code compiled one way runs only on an engine configured the same way: the host
/// tells the guest runtime which in [`hypercell_abi::BootInfo::bounds_checks`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BoundsChecks {
    /// No checks in the code: a 32-bit memory's index never leaves its reservation,
    /// only its current size is mapped, and an access past it faults in the guard
    /// region or the unmapped rest. Fastest code; each growth changes the page tables,
    /// an exit to the host.
    #[default]
    GuardPages,
    /// Each access is compared with the memory's current size in the code (wasmtime's
    /// `signals-based-traps=n`), and a trap is a call into the runtime rather than a
    /// fault. The page tables may then map more than the size: the runtime maps whole
    /// 2 MiB pages ahead, so most growths need no exit. For short runs that grow, such
    /// as a server's requests.
    Explicit,
}

impl BoundsChecks {
    /// The value of [`hypercell_abi::BootInfo::bounds_checks`] for this choice.
    pub fn to_boot(self) -> u64 {
        match self {
            Self::GuardPages => hypercell_abi::BOUNDS_CHECKS_GUARD_PAGES,
            Self::Explicit => hypercell_abi::BOUNDS_CHECKS_EXPLICIT,
        }
    }

    /// Its name: `guard-pages` or `explicit`.
    pub fn name(self) -> &'static str {
        match self {
            Self::GuardPages => "guard-pages",
            Self::Explicit => "explicit",
        }
    }

    /// How far the page tables map a linear memory whose accessible bytes end at `end`
    /// (an address or an offset from a 2 MiB boundary): exactly there with guard
    /// pages, which must stop the next byte; on to the end of its 2 MiB page with
    /// explicit checks, so that it grows there without an exit. The host's premapping
    /// and the runtime's growth both follow it.
    pub fn mapped_end(self, end: u64) -> u64 {
        match self {
            Self::GuardPages => end,
            Self::Explicit => end.next_multiple_of(LARGE_PAGE_SIZE),
        }
    }

    /// The choice [`hypercell_abi::BootInfo::bounds_checks`] names, if it names one.
    pub fn from_boot(value: u64) -> Option<Self> {
        match value {
            hypercell_abi::BOUNDS_CHECKS_GUARD_PAGES => Some(Self::GuardPages),
            hypercell_abi::BOUNDS_CHECKS_EXPLICIT => Some(Self::Explicit),
            _ => None,
        }
    }
}

/// Applies the settings shared by the host compiler and the guest runtime.
///
/// Linear memories are 4 GiB reservations with a guard region after them in the
/// cell's reservation area, mapped as they grow, and they never move. With
/// [`BoundsChecks::GuardPages`], 32-bit memories need no bounds checks: an access past
/// the end faults and the host hands the fault to the runtime as a trap. Data segments
/// are copied in (no copy-on-write images).
pub fn configure(config: &mut Config, checks: BoundsChecks) {
    config
        .signals_based_traps(checks == BoundsChecks::GuardPages)
        .memory_reservation(MEMORY_RESERVATION)
        .memory_guard_size(MEMORY_GUARD_SIZE)
        .memory_reservation_for_growth(0)
        .guard_before_linear_memory(false)
        .memory_may_move(false)
        .memory_init_cow(false)
        .gc_heap_reservation(MEMORY_RESERVATION)
        .gc_heap_guard_size(GC_HEAP_GUARD_SIZE)
        .gc_heap_reservation_for_growth(0)
        .gc_heap_may_move(false)
        .table_lazy_init(true)
        .native_unwind_info(false)
        .generate_address_map(true)
        // The wasmtime CLI turns this on by default; its runtime default here is off.
        .wasm_wide_arithmetic(true);
}
