//! The one wasmtime configuration that both sides of a cell use.
//!
//! The host compiles modules with Cranelift and the guest runtime loads the result, so
//! every setting that shapes compiled code (tunables, wasm features, CPU features) must
//! be identical on both sides; both call [`configure`]. Linear-memory bounds are checked
//! explicitly because a cell has no signal-based trap handling.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

use hypercell_abi::CpuFeatures;
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

/// Applies the settings shared by the host compiler and the guest runtime.
///
/// Cells have no virtual-memory tricks: linear memories are plain heap allocations with
/// no reservation or guard pages, and every bounds check is explicit.
pub fn configure(config: &mut Config) {
    config
        .signals_based_traps(false)
        .memory_reservation(0)
        .memory_guard_size(0)
        .memory_reservation_for_growth(0)
        .guard_before_linear_memory(false)
        .memory_may_move(true)
        .memory_init_cow(false)
        .table_lazy_init(true)
        .native_unwind_info(false)
        .generate_address_map(true)
        // The wasmtime CLI turns this on by default; its runtime default here is off.
        .wasm_wide_arithmetic(true);
}
