//! Hypercell's guest runtime: a freestanding ELF that the host loads into a cell and
//! enters at CPL 3 in 64-bit mode, with `rdi` pointing at the [`BootInfo`].
//!
//! It runs wasmtime's runtime (no compiler) on the native code that Cranelift compiled
//! on the host, and serves WASI preview1 to the program: clocks, random numbers,
//! arguments and the environment without leaving the cell; stdio through buffered
//! hypercalls, or through channels shared with neighbouring cells.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;
extern crate hypercell_guest_mem;

mod channel;
mod clock;
mod files;
mod heap;
#[cfg(feature = "http")]
mod http;
mod hypercall;
mod platform;
mod random;
mod runtime;
mod stdio;
mod traps;
mod virtual_memory;
mod wasi;

use hypercell_abi::BootInfo;
use hypercell_abi::boot::BOOT_MAGIC;
use hypercell_abi::hypercall::FailureKind;
use hypercell_engine::BoundsChecks;

core::arch::global_asm!(
    ".section .text.entry, \"ax\"",
    ".globl _start",
    "_start:",
    "and rsp, -16",
    "call {main}",
    "ud2",
    main = sym guest_main,
);

/// Rust entry point, called by `_start` with the host's boot information.
extern "C" fn guest_main(boot_ptr: *mut BootInfo) -> ! {
    // SAFETY: the host placed a `BootInfo` at this address before the first
    // instruction; it is read once, by value.
    let boot = unsafe { boot_ptr.read_volatile() };
    if boot.magic != BOOT_MAGIC || boot.abi_version != hypercell_abi::ABI_VERSION {
        // Without a valid boot block there is no request block to report through;
        // an invalid-opcode fault is reported by the CPL 0 stubs instead.
        platform::halt();
    }
    hypercall::init(&boot);
    traps::init(boot_ptr);
    stdio::init(&boot);
    channel::init(&boot);
    files::init(&boot);
    clock::init(&boot);
    platform::init(&boot);
    heap::init(&boot);
    let Some(bounds_checks) = BoundsChecks::from_boot(boot.bounds_checks) else {
        platform::fail(
            FailureKind::Runtime,
            b"the host asked for a kind of bounds checks this runtime does not know",
        )
    };
    virtual_memory::init(&boot, bounds_checks);
    runtime::run(&boot, boot_ptr, bounds_checks)
}
