//! Reaching guest buffers by the addresses the guest uses.
//!
//! Structures the runtime builds for a hypercall (requests, iovec lists, the output
//! buffer) live in the one-to-one part of guest memory. Buffers of wasm memory live in
//! the reservation area, so their guest-virtual addresses go through the cell's page
//! tables ([`hypercell_vmm::paging::translate`]); a buffer may span several physical
//! pieces.

use hypercell_abi::layout::{RESERVATION_BASE, RESERVATION_SIZE};
use hypercell_vmm::GuestMemory;
use hypercell_vmm::paging::translate;
use vm_memory::{Bytes, GuestAddress};

use crate::hypercall::HypercallError;

/// Copies `N` bytes of guest memory at guest-physical `addr`.
pub(crate) fn read_array<const N: usize>(
    memory: &GuestMemory,
    addr: GuestAddress,
) -> Result<[u8; N], HypercallError> {
    let mut bytes = [0u8; N];
    memory
        .mem()
        .read_slice(&mut bytes, addr)
        .map_err(|_| HypercallError::OutOfBounds {
            what: "structure",
            addr: addr.0,
            len: N as u64,
        })?;
    Ok(bytes)
}

/// The guest-physical pieces of `len` bytes at guest address `addr`, or `None` when
/// any of it is outside the cell's memory or unmapped.
pub(crate) fn pieces(
    memory: &GuestMemory,
    addr: u64,
    len: u64,
) -> Option<Vec<(GuestAddress, u64)>> {
    if len == 0 {
        let reservations = RESERVATION_BASE..RESERVATION_BASE + RESERVATION_SIZE;
        return (addr <= memory.size() || reservations.contains(&addr)).then(Vec::new);
    }
    // No buffer is larger than the cell's memory, even where the guest mapped the same
    // memory many times over: the host may copy a buffer whole.
    if len > memory.size() {
        return None;
    }
    translate(memory, addr, len).ok()
}

/// Whether all `len` bytes at guest address `addr` can be reached.
pub(crate) fn in_bounds(memory: &GuestMemory, addr: u64, len: u64) -> bool {
    pieces(memory, addr, len).is_some()
}

/// Calls `copy` with each physical piece of `len` bytes at guest address `addr` and
/// the matching range of the caller's buffer; false if unreachable or a copy failed.
fn each_piece(
    memory: &GuestMemory,
    addr: u64,
    len: usize,
    mut copy: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
) -> bool {
    let Some(pieces) = pieces(memory, addr, len as u64) else {
        return false;
    };
    let mut at = 0;
    pieces.into_iter().all(|(physical, piece)| {
        let range = at..at + piece as usize;
        at = range.end;
        copy(physical, range)
    })
}

/// Copies guest memory at guest address `addr` into `bytes`; false if unreachable.
pub(crate) fn read_guest_bytes(memory: &GuestMemory, addr: u64, bytes: &mut [u8]) -> bool {
    each_piece(memory, addr, bytes.len(), |physical, range| {
        memory.mem().read_slice(&mut bytes[range], physical).is_ok()
    })
}

/// Copies `bytes` into guest memory at guest address `addr`; false if unreachable.
pub(crate) fn write_guest_bytes(memory: &GuestMemory, addr: u64, bytes: &[u8]) -> bool {
    each_piece(memory, addr, bytes.len(), |physical, range| {
        memory.mem().write_slice(&bytes[range], physical).is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hypercell_vmm::ReservationTables;
    use hypercell_vmm::system::write_system_region;

    #[test]
    fn buffers_in_the_reservation_area_are_reached_through_the_page_tables() {
        let memory = GuestMemory::new(32 << 20).unwrap();
        write_system_region(&memory, &[]).unwrap();
        let mut tables = ReservationTables::default();
        let va = RESERVATION_BASE + (2 << 20) - 4096;
        // Two pieces: the last 4 KiB of one physical 2 MiB page, the start of another.
        tables.map(&memory, va, (8 << 20) - 4096, 4096).unwrap();
        tables.map(&memory, va + 4096, 16 << 20, 4096).unwrap();
        assert!(write_guest_bytes(&memory, va + 4090, b"across!"));
        let mut back = [0u8; 7];
        assert!(read_guest_bytes(&memory, va + 4090, &mut back));
        assert_eq!(&back, b"across!");
        assert_eq!(
            memory.mem().read_obj::<u8>(GuestAddress(16 << 20)).unwrap(),
            b'!'
        );
        assert!(!in_bounds(&memory, va + 4096, 4097), "past the mapping");
        assert!(!in_bounds(&memory, 32 << 20, 1), "past memory");
        for at in 0..20 {
            let page = RESERVATION_BASE + (64 << 20) + (at << 21);
            tables.map(&memory, page, 8 << 20, 2 << 20).unwrap();
        }
        assert!(
            !in_bounds(&memory, RESERVATION_BASE + (64 << 20), 40 << 20),
            "one page mapped twenty times is no bigger buffer than the memory"
        );
        assert!(in_bounds(&memory, 32 << 20, 0));
    }
}
