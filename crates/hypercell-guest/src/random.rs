//! `random_get`: `rdrand` inside the cell, or one hypercall where the CPU lacks it.

use core::arch::asm;

use hypercell_abi::{CpuFeatures, Hypercall};

fn rdrand() -> Option<u64> {
    for _ in 0..16 {
        let value: u64;
        let ok: u8;
        // SAFETY: only called when the host reported RDRAND; the instruction writes a
        // register and the carry flag and touches no memory.
        unsafe {
            asm!("rdrand {v}", "setc {ok}", v = out(reg) value, ok = out(reg_byte) ok,
                 options(nomem, nostack));
        }
        if ok != 0 {
            return Some(value);
        }
    }
    None
}

/// Fills `buf` with cryptographically secure random bytes.
pub fn fill(buf: &mut [u8]) {
    if crate::platform::has_feature(CpuFeatures::RDRAND)
        && buf.chunks_mut(8).all(|chunk| {
            rdrand()
                .map(|value| chunk.copy_from_slice(&value.to_le_bytes()[..chunk.len()]))
                .is_some()
        })
    {
        return;
    }
    crate::hypercall::call(
        Hypercall::Random,
        [buf.as_mut_ptr() as u64, buf.len() as u64, 0, 0, 0, 0],
    );
}
