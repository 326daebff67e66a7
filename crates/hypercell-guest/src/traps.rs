//! Wasm traps raised by the CPU: out-of-bounds accesses that hit unmapped memory,
//! `ud2` for explicit traps, division faults.
//!
//! Every exception enters a CPL 0 stub that reports it to the host; the host then
//! resumes the guest at [`on_exception`] on a stack of its own, with the faulting
//! state as arguments. wasmtime's handler (registered through `wasmtime_init_traps`)
//! decides: a wasm trap resumes the wasm entry point, which returns the trap as an
//! error; anything else comes back here and the host ends the cell with its report of
//! the original exception.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

use hypercell_abi::{BootInfo, Hypercall};

/// wasmtime's trap handler, as it registered it.
type TrapHandler =
    extern "C" fn(pc: usize, fp: usize, has_faulting_addr: bool, faulting_addr: usize);

static HANDLER: AtomicUsize = AtomicUsize::new(0);

const TRAP_STACK_SIZE: usize = 64 << 10;

/// The stack exceptions are handled on, apart from the one that faulted (which may be
/// the one that overflowed).
#[repr(C, align(16))]
struct TrapStack(UnsafeCell<[u8; TRAP_STACK_SIZE]>);

// SAFETY: only the CPU touches it, while running `on_exception`; Rust code never
// forms a reference to its contents.
unsafe impl Sync for TrapStack {}

static TRAP_STACK: TrapStack = TrapStack(UnsafeCell::new([0; TRAP_STACK_SIZE]));

/// Tells the host where to send exceptions, in the boot block it wrote.
pub fn init(boot: *mut BootInfo) {
    let stack_top = TRAP_STACK.0.get() as usize + TRAP_STACK_SIZE;
    // SAFETY: `boot` is the host's boot block, which stays reserved for the cell's
    // life; these two fields are the guest's to write.
    unsafe {
        core::ptr::addr_of_mut!((*boot).trap_stack).write_volatile(stack_top as u64);
        core::ptr::addr_of_mut!((*boot).trap_entry)
            .write_volatile(on_exception as *const () as u64);
    }
}

/// wasmtime's custom-platform hook: remembers its handler.
#[unsafe(no_mangle)]
extern "C" fn wasmtime_init_traps(handler: TrapHandler) -> i32 {
    HANDLER.store(handler as *const () as usize, Ordering::Relaxed);
    0
}

/// Where the host resumes the guest after an exception (see the module docs).
extern "C" fn on_exception(
    pc: usize,
    fp: usize,
    has_address: u64,
    address: usize,
    _vector: u64,
) -> ! {
    let handler = HANDLER.load(Ordering::Relaxed);
    if handler != 0 {
        // SAFETY: the value was stored from a `TrapHandler` by `wasmtime_init_traps`.
        let handler: TrapHandler = unsafe { core::mem::transmute(handler) };
        handler(pc, fp, has_address != 0, address);
    }
    crate::hypercall::call_final(Hypercall::Unhandled, [0; 6])
}
