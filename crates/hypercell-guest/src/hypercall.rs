//! The guest side of the hypercall ABI: one `out` per request.

use core::arch::asm;
use core::sync::atomic::{AtomicPtr, Ordering};

use hypercell_abi::hypercall::RESULT_RESTART;
use hypercell_abi::layout::HYPERCALL_PORT;
use hypercell_abi::{BootInfo, Hypercall, HypercallRequest};

static REQUEST: AtomicPtr<HypercallRequest> = AtomicPtr::new(core::ptr::null_mut());

pub fn init(boot: &BootInfo) {
    REQUEST.store(
        boot.request_addr as *mut HypercallRequest,
        Ordering::Relaxed,
    );
}

/// Performs `call` and returns the host's result (negative: a WASI errno). A call the
/// host abandoned before doing anything (to take a snapshot) is made again.
pub fn call(call: Hypercall, args: [u64; 6]) -> i64 {
    loop {
        let result = call_once(call, args);
        if result != RESULT_RESTART {
            return result;
        }
    }
}

/// Performs `call` once: [`RESULT_RESTART`] when the host abandoned it, for a caller
/// that makes it again with other arguments (a sleep, with the time left).
pub fn call_once(call: Hypercall, args: [u64; 6]) -> i64 {
    let request = REQUEST.load(Ordering::Relaxed);
    // SAFETY: the host reserved the request block for this purpose in user memory and
    // the guest is single-threaded, so nothing else aliases it. The `out` exits to the
    // host, which reads the block and writes `result` before the vCPU resumes; the asm
    // block is not `nomem`, so the compiler keeps the accesses on either side of it.
    unsafe {
        request.write_volatile(HypercallRequest::new(call, args));
        asm!("out dx, eax", in("dx") HYPERCALL_PORT, in("eax") request as u32,
             options(nostack, preserves_flags));
        core::ptr::addr_of!((*request).result).read_volatile()
    }
}

/// Performs a call the host never returns from.
pub fn call_final(call: Hypercall, args: [u64; 6]) -> ! {
    self::call(call, args);
    // The host ends the cell on these calls; reaching here means it resumed a cell it
    // should not have, and halting reports that as a fault.
    crate::platform::halt()
}
