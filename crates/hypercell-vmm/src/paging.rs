//! The reservation area's page tables: linear memories made accessible piece by piece,
//! and guest-virtual addresses translated for the host.
//!
//! The guest reserves each linear memory (4 GiB and a guard region) in the reservation
//! area and asks the host to map what wasm may touch. Whole 2 MiB pages map with one
//! page-directory entry; the partial 2 MiB page at a memory's end maps with 4 KiB
//! entries, so an access one byte past the end faults exactly as wasm requires.
//!
//! Entries only ever go from absent to present (or from a page table to the 2 MiB page
//! that maps the same addresses), which needs no TLB flush. Table pages are never
//! reused while KVM may still shadow them: a shadow-paging KVM caches a table page's
//! entries by its address and does not see the host's writes. When the pool runs out,
//! [`ReservationTables::reclaim`] promotes every full page table to a 2 MiB entry and
//! frees the rest; the caller then makes KVM drop its shadow tables
//! ([`crate::Vm::drop_table_shadows`]) before the pages are reused.

use hypercell_abi::layout::{
    IMAGE_BASE, LARGE_PAGE_SIZE, PAGE_SIZE, RESERVATION_BASE, RESERVATION_SIZE, SYSTEM_BASE,
};
use vm_memory::{Bytes, GuestAddress};

use crate::GuestMemory;
use crate::state::TablesState;
use crate::system::{
    PTE_ACCESSED, PTE_DIRTY, PTE_LARGE, PTE_PRESENT, PTE_USER, PTE_WRITABLE, TABLE_POOL, pml4_index,
};

/// Bits of an entry that hold a 4 KiB-aligned physical address.
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Bits of a 2 MiB entry that hold its physical address.
const LARGE_ADDRESS_MASK: u64 = 0x000f_ffff_ffe0_0000;
/// Flags of every table and leaf entry in the reservation area. Accessed and dirty are
/// set up front so that KVM never writes them back into the host's tables.
const TABLE_FLAGS: u64 = PTE_PRESENT | PTE_WRITABLE | PTE_USER;
const LEAF_FLAGS: u64 = TABLE_FLAGS | PTE_ACCESSED | PTE_DIRTY;
const ENTRIES: u64 = 512;

/// Errors mapping or translating reservation-area addresses.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PagingError {
    /// The guest asked for a mapping the rules forbid.
    #[error(
        "cannot map {len:#x} bytes at guest-virtual {va:#x} onto guest-physical {pa:#x}: ranges must be 4 KiB-aligned, lie in the reservation area and in user memory, and share their offset within 2 MiB"
    )]
    BadMapping {
        /// Guest-virtual start.
        va: u64,
        /// Guest-physical start.
        pa: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Every table page is in use (see [`ReservationTables::reclaim`]).
    #[error("the cell's page-table pool is exhausted")]
    PoolExhausted,
    /// A guest address the host was asked to use is not mapped.
    #[error("guest address range {addr:#x}+{len:#x} is not mapped")]
    Unmapped {
        /// Guest-virtual start.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The tables could not be read or written.
    #[error("the cell's page tables are out of guest memory")]
    Memory,
}

/// The host's bookkeeping for the reservation area's tables.
#[derive(Debug)]
pub struct ReservationTables {
    /// Next never-used pool page (guest-physical).
    next: u64,
    /// Pool pages freed by [`Self::reclaim`], usable once KVM dropped its shadows.
    free: Vec<u64>,
}

impl Default for ReservationTables {
    fn default() -> Self {
        Self {
            next: SYSTEM_BASE + TABLE_POOL.start,
            free: Vec::new(),
        }
    }
}

fn read_entry(memory: &GuestMemory, addr: u64) -> Result<u64, PagingError> {
    memory
        .mem()
        .read_obj(GuestAddress(addr))
        .map_err(|_| PagingError::Memory)
}

fn write_entry(memory: &GuestMemory, addr: u64, entry: u64) -> Result<(), PagingError> {
    memory
        .mem()
        .write_obj(entry, GuestAddress(addr))
        .map_err(|_| PagingError::Memory)
}

/// Guest-physical address of the reservation area's page-directory-pointer table,
/// under the tables the vCPU runs on.
fn reservation_pdpt(memory: &GuestMemory) -> Result<u64, PagingError> {
    let pml4e = read_entry(
        memory,
        memory.tables_root() + pml4_index(RESERVATION_BASE) * 8,
    )?;
    if pml4e & PTE_PRESENT == 0 {
        return Err(PagingError::Memory);
    }
    Ok(pml4e & ADDRESS_MASK)
}

/// Guest-physical address of the page-directory-pointer entry for `va`.
fn pdpt_entry(memory: &GuestMemory, va: u64) -> Result<u64, PagingError> {
    Ok(reservation_pdpt(memory)? + ((va >> 30) & (ENTRIES - 1)) * 8)
}

/// Writes `entries` as the table page at `addr`.
fn write_table(memory: &GuestMemory, addr: u64, entries: &[u64; 512]) -> Result<(), PagingError> {
    let bytes: Vec<u8> = entries
        .iter()
        .flat_map(|entry| entry.to_le_bytes())
        .collect();
    memory
        .mem()
        .write_slice(&bytes, GuestAddress(addr))
        .map_err(|_| PagingError::Memory)
}

/// The 512 entries of the table page at `addr`.
fn read_table(memory: &GuestMemory, addr: u64) -> Result<[u64; 512], PagingError> {
    let mut bytes = [0u8; PAGE_SIZE as usize];
    memory
        .mem()
        .read_slice(&mut bytes, GuestAddress(addr))
        .map_err(|_| PagingError::Memory)?;
    Ok(std::array::from_fn(|i| {
        u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
    }))
}

fn in_reservation_area(va: u64, len: u64) -> bool {
    va >= RESERVATION_BASE
        && va
            .checked_add(len)
            .is_some_and(|end| end <= RESERVATION_BASE + RESERVATION_SIZE)
}

impl ReservationTables {
    /// The bookkeeping to save with the memory that holds the tables.
    pub fn state(&self) -> TablesState {
        TablesState {
            next: self.next,
            free: self.free.clone(),
        }
    }

    /// Bookkeeping saved by [`Self::state`]; `None` when it names pages outside the
    /// table pool (the saved state is not to be trusted).
    pub fn from_state(state: &TablesState) -> Option<Self> {
        let pool = SYSTEM_BASE + TABLE_POOL.start..=SYSTEM_BASE + TABLE_POOL.end;
        let page = |addr: u64| pool.contains(&addr) && addr.is_multiple_of(PAGE_SIZE);
        let valid = page(state.next)
            && state
                .free
                .iter()
                .all(|&free| page(free) && free < state.next);
        valid.then(|| Self {
            next: state.next,
            free: state.free.clone(),
        })
    }

    /// Maps guest-virtual `va..va + len` onto guest-physical `pa..pa + len`.
    pub fn map(
        &mut self,
        memory: &GuestMemory,
        va: u64,
        pa: u64,
        len: u64,
    ) -> Result<(), PagingError> {
        let aligned = [va, pa, len].iter().all(|v| v.is_multiple_of(PAGE_SIZE));
        let in_memory =
            pa >= IMAGE_BASE && pa.checked_add(len).is_some_and(|end| end <= memory.size());
        if len == 0
            || !aligned
            || !in_memory
            || !in_reservation_area(va, len)
            || va % LARGE_PAGE_SIZE != pa % LARGE_PAGE_SIZE
        {
            return Err(PagingError::BadMapping { va, pa, len });
        }
        let end = va + len;
        let mut at = va;
        while at < end {
            let chunk = at & !(LARGE_PAGE_SIZE - 1);
            let chunk_end = (chunk + LARGE_PAGE_SIZE).min(end);
            let pd = self.table(memory, pdpt_entry(memory, at)?)?;
            let pde_addr = pd + ((at >> 21) & (ENTRIES - 1)) * 8;
            let physical = pa + (at - va);
            if at == chunk && chunk_end == chunk + LARGE_PAGE_SIZE {
                write_entry(memory, pde_addr, physical | LEAF_FLAGS | PTE_LARGE)?;
            } else if read_entry(memory, pde_addr)? & PTE_LARGE == 0 {
                let pt = self.table(memory, pde_addr)?;
                let mut page = at;
                while page < chunk_end {
                    let pte_addr = pt + ((page >> 12) & (ENTRIES - 1)) * 8;
                    write_entry(memory, pte_addr, (pa + (page - va)) | LEAF_FLAGS)?;
                    page += PAGE_SIZE;
                }
            }
            at = chunk_end;
        }
        Ok(())
    }

    /// The table that the entry at `entry_addr` points to, made from a pool page if
    /// the entry is empty.
    fn table(&mut self, memory: &GuestMemory, entry_addr: u64) -> Result<u64, PagingError> {
        let entry = read_entry(memory, entry_addr)?;
        if entry & PTE_PRESENT != 0 {
            return Ok(entry & ADDRESS_MASK);
        }
        let page = self.allocate()?;
        memory
            .mem()
            .write_slice(&[0u8; PAGE_SIZE as usize], GuestAddress(page))
            .map_err(|_| PagingError::Memory)?;
        write_entry(memory, entry_addr, page | TABLE_FLAGS)?;
        Ok(page)
    }

    /// A pool page for a table.
    fn allocate(&mut self) -> Result<u64, PagingError> {
        match self.free.pop() {
            Some(page) => Ok(page),
            None if self.next < SYSTEM_BASE + TABLE_POOL.end => {
                self.next += PAGE_SIZE;
                Ok(self.next - PAGE_SIZE)
            }
            None => Err(PagingError::PoolExhausted),
        }
    }

    /// Pool pages never handed out yet.
    pub fn never_used(&self) -> u64 {
        (SYSTEM_BASE + TABLE_POOL.end).saturating_sub(self.next) / PAGE_SIZE
    }

    /// Copies the page-map level-4 table at `from` and the reservation area's tables
    /// under it into pool pages, and returns the copy's address for the vCPU's CR3
    /// (and [`GuestMemory::set_tables_root`]). A reused partition runs each cell on a
    /// fresh copy, in pages no run used since KVM last dropped its shadows of the
    /// pool: what a run's growth writes into its tables then never meets a shadow
    /// KVM made of another run's, and the template's tables, never written, need no
    /// shadows dropped to be had again. The one-to-one map's tables are shared, not
    /// copied, and KVM's shadows of them stay.
    pub fn fresh_copy(&mut self, memory: &GuestMemory, from: u64) -> Result<u64, PagingError> {
        // Every entry of the copy is marked accessed, so that KVM never writes into it
        // and an unchanged copy can be told by its contents.
        let mut pml4 = read_table(memory, from)?;
        for entry in pml4.iter_mut().filter(|entry| **entry & PTE_PRESENT != 0) {
            *entry |= PTE_ACCESSED;
        }
        let root = self.allocate()?;
        let slot = pml4_index(RESERVATION_BASE) as usize;
        if pml4[slot] & PTE_PRESENT != 0 {
            let mut pdpt = read_table(memory, pml4[slot] & ADDRESS_MASK)?;
            let pdpt_page = self.allocate()?;
            for pdpte in pdpt.iter_mut().filter(|e| **e & PTE_PRESENT != 0) {
                let mut pd = read_table(memory, *pdpte & ADDRESS_MASK)?;
                let pd_page = self.allocate()?;
                for pde in pd.iter_mut().filter(|e| **e & PTE_PRESENT != 0) {
                    if *pde & PTE_LARGE == 0 {
                        let pt = read_table(memory, *pde & ADDRESS_MASK)?;
                        let pt_page = self.allocate()?;
                        write_table(memory, pt_page, &pt)?;
                        *pde = pt_page | (*pde & !ADDRESS_MASK);
                    }
                    *pde |= PTE_ACCESSED;
                }
                write_table(memory, pd_page, &pd)?;
                *pdpte = pd_page | (*pdpte & !ADDRESS_MASK) | PTE_ACCESSED;
            }
            write_table(memory, pdpt_page, &pdpt)?;
            pml4[slot] = pdpt_page | (pml4[slot] & !ADDRESS_MASK);
        }
        write_table(memory, root, &pml4)?;
        Ok(root)
    }

    /// Replaces every page table whose 512 entries map one aligned 2 MiB page with a
    /// 2 MiB entry, and frees every pool page no entry points to. Returns how many
    /// pages are free. The caller must make KVM drop its shadow tables before mapping
    /// again, since freed pages are reused.
    pub fn reclaim(&mut self, memory: &GuestMemory) -> Result<usize, PagingError> {
        // The tables the vCPU runs on may themselves be pool pages.
        let mut used = vec![memory.tables_root(), reservation_pdpt(memory)?];
        for pdpt_index in 0..ENTRIES {
            let pdpte = read_entry(memory, pdpt_entry(memory, pdpt_index << 30)?)?;
            if pdpte & PTE_PRESENT == 0 {
                continue;
            }
            let pd = pdpte & ADDRESS_MASK;
            used.push(pd);
            for pd_index in 0..ENTRIES {
                let pde_addr = pd + pd_index * 8;
                let pde = read_entry(memory, pde_addr)?;
                if pde & PTE_PRESENT == 0 || pde & PTE_LARGE != 0 {
                    continue;
                }
                let pt = pde & ADDRESS_MASK;
                match whole_large_page(memory, pt)? {
                    Some(physical) => {
                        write_entry(memory, pde_addr, physical | LEAF_FLAGS | PTE_LARGE)?
                    }
                    None => used.push(pt),
                }
            }
        }
        let pool = (SYSTEM_BASE + TABLE_POOL.start..self.next).step_by(PAGE_SIZE as usize);
        self.free = pool.filter(|page| !used.contains(page)).collect();
        Ok(self.free.len() + ((SYSTEM_BASE + TABLE_POOL.end - self.next) / PAGE_SIZE) as usize)
    }
}

/// The guest-physical pages of the table pool, where the reservation area's tables,
/// their copies and their growth are made.
pub fn table_pool() -> std::ops::Range<u64> {
    SYSTEM_BASE + TABLE_POOL.start..SYSTEM_BASE + TABLE_POOL.end
}

/// Whether a vCPU may run on the page-map level-4 table at `root`: the one the host
/// writes at boot, or a copy of it in the table pool.
pub fn is_tables_root(root: u64) -> bool {
    root == crate::system::TABLES_ROOT
        || (table_pool().contains(&root) && root.is_multiple_of(PAGE_SIZE))
}

/// The 2 MiB page a page table maps in full, if it does.
fn whole_large_page(memory: &GuestMemory, pt: u64) -> Result<Option<u64>, PagingError> {
    let first = read_entry(memory, pt)?;
    let base = first & ADDRESS_MASK;
    if first & PTE_PRESENT == 0 || !base.is_multiple_of(LARGE_PAGE_SIZE) {
        return Ok(None);
    }
    for index in 1..ENTRIES {
        let entry = read_entry(memory, pt + index * 8)?;
        if entry & PTE_PRESENT == 0 || entry & ADDRESS_MASK != base + index * PAGE_SIZE {
            return Ok(None);
        }
    }
    Ok(Some(base))
}

/// The guest-physical pieces behind guest-virtual `addr..addr + len`, in order, with
/// neighbours merged: the range itself below the reservation area (where addresses
/// are one-to-one), the page tables' answer above it.
pub fn translate(
    memory: &GuestMemory,
    addr: u64,
    len: u64,
) -> Result<Vec<(GuestAddress, u64)>, PagingError> {
    let unmapped = PagingError::Unmapped { addr, len };
    if addr
        .checked_add(len)
        .is_some_and(|end| end <= memory.size())
    {
        return Ok(vec![(GuestAddress(addr), len)]);
    }
    if !in_reservation_area(addr, len) {
        return Err(unmapped);
    }
    let mut pieces: Vec<(GuestAddress, u64)> = Vec::new();
    let mut at = addr;
    let end = addr + len;
    while at < end {
        let pdpte = read_entry(memory, pdpt_entry(memory, at)?)?;
        if pdpte & PTE_PRESENT == 0 {
            return Err(unmapped);
        }
        let pde = read_entry(
            memory,
            (pdpte & ADDRESS_MASK) + ((at >> 21) & (ENTRIES - 1)) * 8,
        )?;
        if pde & PTE_PRESENT == 0 {
            return Err(unmapped);
        }
        let (physical, size) = if pde & PTE_LARGE != 0 {
            let offset = at & (LARGE_PAGE_SIZE - 1);
            (
                (pde & LARGE_ADDRESS_MASK) + offset,
                LARGE_PAGE_SIZE - offset,
            )
        } else {
            let pte = read_entry(
                memory,
                (pde & ADDRESS_MASK) + ((at >> 12) & (ENTRIES - 1)) * 8,
            )?;
            if pte & PTE_PRESENT == 0 {
                return Err(unmapped);
            }
            let offset = at & (PAGE_SIZE - 1);
            ((pte & ADDRESS_MASK) + offset, PAGE_SIZE - offset)
        };
        let size = size.min(end - at);
        match pieces.last_mut() {
            Some((last, last_len)) if last.0 + *last_len == physical => *last_len += size,
            _ => pieces.push((GuestAddress(physical), size)),
        }
        at += size;
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::write_system_region;

    const VA: u64 = RESERVATION_BASE;

    fn cell_memory() -> GuestMemory {
        let memory = GuestMemory::new(64 << 20).unwrap();
        write_system_region(&memory, &[]).unwrap();
        memory
    }

    #[test]
    fn whole_large_pages_map_with_one_entry_and_the_rest_with_small_ones() {
        let memory = cell_memory();
        let mut tables = ReservationTables::default();
        let pa = 8 << 20;
        tables
            .map(&memory, VA, pa, LARGE_PAGE_SIZE + 64 * 1024)
            .unwrap();
        assert_eq!(
            translate(&memory, VA + 4096, LARGE_PAGE_SIZE).unwrap(),
            vec![(GuestAddress(pa + 4096), LARGE_PAGE_SIZE)]
        );
        assert!(translate(&memory, VA + LARGE_PAGE_SIZE + 60 * 1024, 4097).is_err());
        assert!(translate(&memory, VA + 3 * LARGE_PAGE_SIZE, 1).is_err());
        assert_eq!(
            translate(&memory, 8 << 20, 16).unwrap(),
            vec![(GuestAddress(8 << 20), 16)],
            "low addresses are one-to-one"
        );
    }

    #[test]
    fn growth_promotes_the_partial_page_and_reclaim_frees_its_table() {
        let memory = cell_memory();
        let mut tables = ReservationTables::default();
        let pa = 8 << 20;
        let step = 640 * 1024;
        let mut mapped = 0;
        while mapped < 3 * LARGE_PAGE_SIZE {
            tables.map(&memory, VA + mapped, pa + mapped, step).unwrap();
            mapped += step;
        }
        let pieces = translate(&memory, VA, mapped).unwrap();
        assert_eq!(pieces, vec![(GuestAddress(pa), mapped)]);
        let before = tables.free.len();
        let free = tables.reclaim(&memory).unwrap();
        assert!(tables.free.len() > before, "full page tables were freed");
        assert!(free > tables.free.len());
        assert_eq!(translate(&memory, VA, mapped).unwrap(), pieces);
    }

    #[test]
    fn mappings_outside_the_rules_are_refused() {
        let memory = cell_memory();
        let mut tables = ReservationTables::default();
        let pa = 8 << 20;
        for (va, pa, len) in [
            (VA, pa, 0),
            (VA + 1, pa + 1, 4096),
            (VA, pa + 4096, 4096),
            (VA - 4096, pa, 8192),
            (VA, SYSTEM_BASE, 4096),
            (VA, 62 << 20, 4 << 20),
            (
                RESERVATION_BASE + RESERVATION_SIZE - 4096,
                pa + (2 << 20) - 4096,
                8192,
            ),
        ] {
            assert!(
                matches!(
                    tables.map(&memory, va, pa, len),
                    Err(PagingError::BadMapping { .. })
                ),
                "{va:#x} {pa:#x} {len:#x}"
            );
        }
    }

    #[test]
    fn an_exhausted_pool_is_reported() {
        let memory = GuestMemory::new(2 << 30).unwrap();
        write_system_region(&memory, &[]).unwrap();
        let mut tables = ReservationTables::default();
        let result = (0..).try_for_each(|i: u64| {
            let va = VA + i * 2 * LARGE_PAGE_SIZE;
            tables.map(
                &memory,
                va,
                IMAGE_BASE + (i % 8) * LARGE_PAGE_SIZE,
                PAGE_SIZE,
            )
        });
        assert_eq!(result, Err(PagingError::PoolExhausted));
    }
}
