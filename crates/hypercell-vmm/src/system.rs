//! The x86-64 structures the host owns: page tables, GDT, TSS, IDT and the exception
//! stubs. They live in the supervisor-only system region, so the guest (CPL 3) can
//! neither read nor change them.
//!
//! Every guest exception enters a CPL 0 stub that only executes
//! `out EXCEPTION_PORT_BASE + vector, al`; the host reads the vector from the port, the
//! error code and faulting RIP from the exception frame, and CR2 from the vCPU.

use hypercell_abi::layout::{
    EXCEPTION_PORT_BASE, EXCEPTION_VECTORS, HYPERCALL_PORT, LARGE_PAGE_SIZE, MAX_MEMORY_SIZE,
    PAGE_SIZE, RESERVATION_BASE, SYSTEM_BASE,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use crate::GuestMemory;

const PML4_OFFSET: u64 = 0;
/// Guest-physical address of the page-map level-4 table the host writes at boot.
pub const TABLES_ROOT: u64 = SYSTEM_BASE + PML4_OFFSET;
const PDPT_OFFSET: u64 = PAGE_SIZE;
const PD_OFFSET: u64 = 2 * PAGE_SIZE;
/// Page directories: one per GiB of guest memory, up to the largest memory.
const PD_COUNT: u64 = MAX_MEMORY_SIZE >> 30;
const GDT_OFFSET: u64 = PD_OFFSET + PD_COUNT * PAGE_SIZE;
const TSS_OFFSET: u64 = GDT_OFFSET + PAGE_SIZE;
const IDT_OFFSET: u64 = TSS_OFFSET + PAGE_SIZE;
const STUBS_OFFSET: u64 = IDT_OFFSET + PAGE_SIZE;
const STUB_SIZE: u64 = 16;
/// The page-directory-pointer table of the reservation area.
pub(crate) const RESERVATION_PDPT_OFFSET: u64 = STUBS_OFFSET + PAGE_SIZE;
/// Pages for the reservation area's page directories and page tables, handed out as
/// linear memories grow; the last two pages of the region hold the exception stack.
pub(crate) const TABLE_POOL: std::ops::Range<u64> =
    RESERVATION_PDPT_OFFSET + PAGE_SIZE..LARGE_PAGE_SIZE - 2 * PAGE_SIZE;

pub(crate) const PTE_PRESENT: u64 = 1 << 0;
pub(crate) const PTE_WRITABLE: u64 = 1 << 1;
pub(crate) const PTE_USER: u64 = 1 << 2;
pub(crate) const PTE_ACCESSED: u64 = 1 << 5;
pub(crate) const PTE_DIRTY: u64 = 1 << 6;
pub(crate) const PTE_LARGE: u64 = 1 << 7;

/// GDT selectors.
pub const KERNEL_CODE_SELECTOR: u16 = 0x08;
/// User data and stack segment selector (RPL 3).
pub const USER_DATA_SELECTOR: u16 = 0x18 | 3;
/// User code segment selector (RPL 3).
pub const USER_CODE_SELECTOR: u16 = 0x20 | 3;
/// Task state segment selector.
pub const TSS_SELECTOR: u16 = 0x28;
/// Size of the 64-bit TSS without its I/O permission bitmap.
const TSS_SIZE: u64 = 0x68;
/// Bytes of I/O permission bitmap: one bit per port below 4096; ports at and above
/// it lie past the TSS limit, which the CPU treats as denied.
const IO_BITMAP_SIZE: u64 = 4096 / 8;
/// Limit of the TSS: the task state, the I/O bitmap and its terminating all-ones byte.
pub const TSS_LIMIT: u32 = (TSS_SIZE + IO_BITMAP_SIZE) as u32;

/// Where the host put each structure, for the vCPU's special registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemTables {
    /// Page-map level-4 table (CR3).
    pub cr3: u64,
    /// GDT base.
    pub gdt_base: u64,
    /// GDT limit.
    pub gdt_limit: u16,
    /// IDT base.
    pub idt_base: u64,
    /// IDT limit.
    pub idt_limit: u16,
    /// TSS base.
    pub tss_base: u64,
}

/// Writes the page tables and descriptor tables for `memory` into its system region.
///
/// Guest memory is identity-mapped with 2 MiB pages: the first 2 MiB are left unmapped
/// (null dereferences fault), as are the 2 MiB pages at the addresses in `guards`; the
/// system region is supervisor-only, and the rest is user read-write-execute.
pub fn write_system_region(
    memory: &GuestMemory,
    guards: &[u64],
) -> Result<SystemTables, GuestMemoryError> {
    // A few KiB of tables in a 2 MiB region: small pages spare zeroing a huge page.
    memory.use_small_pages(SYSTEM_BASE..SYSTEM_BASE + LARGE_PAGE_SIZE);
    let mem = memory.mem();
    let base = SYSTEM_BASE;
    let pdpt = base + PDPT_OFFSET;
    mem.write_obj(
        pdpt | PTE_PRESENT | PTE_WRITABLE | PTE_USER,
        GuestAddress(base + PML4_OFFSET),
    )?;
    // The reservation area starts empty: its tables are filled as memories grow.
    mem.write_obj(
        (base + RESERVATION_PDPT_OFFSET) | PTE_PRESENT | PTE_WRITABLE | PTE_USER,
        GuestAddress(base + PML4_OFFSET + pml4_index(RESERVATION_BASE) * 8),
    )?;
    for gib in 0..PD_COUNT {
        let pd = base + PD_OFFSET + gib * PAGE_SIZE;
        mem.write_obj(
            pd | PTE_PRESENT | PTE_WRITABLE | PTE_USER,
            GuestAddress(pdpt + gib * 8),
        )?;
    }
    let pages = memory.size() / LARGE_PAGE_SIZE;
    // Only the directories the memory reaches are written; the rest stay zero.
    let mut entries = vec![0u64; pages.next_multiple_of(512) as usize];
    for (page, entry) in entries.iter_mut().enumerate().take(pages as usize).skip(1) {
        let addr = page as u64 * LARGE_PAGE_SIZE;
        if guards.contains(&addr) {
            continue;
        }
        let user = if addr == SYSTEM_BASE { 0 } else { PTE_USER };
        *entry = addr | PTE_PRESENT | PTE_WRITABLE | PTE_LARGE | user;
    }
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(base + PD_OFFSET))?;

    let tss = base + TSS_OFFSET;
    let gdt: [u64; 7] = [
        0,
        0x00af_9a00_0000_ffff, // kernel code: present, DPL 0, 64-bit
        0x00cf_9200_0000_ffff, // kernel data
        0x00cf_f200_0000_ffff, // user data: DPL 3
        0x00af_fa00_0000_ffff, // user code: DPL 3, 64-bit
        tss_descriptor_low(tss),
        tss >> 32,
    ];
    let gdt_bytes: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&gdt_bytes, GuestAddress(base + GDT_OFFSET))?;

    // TSS: RSP0 (offset 4) is the exception stack, at the top of the system region.
    // The guest runs with IOPL 0 (PVM drops a host-set IOPL anyway), so CPL 3 `in`
    // and `out` are checked against the I/O permission bitmap, which grants the
    // four bytes of the hypercall port and nothing else.
    mem.write_obj(base + LARGE_PAGE_SIZE - 64, GuestAddress(tss + 4))?;
    mem.write_obj(TSS_SIZE as u16, GuestAddress(tss + 102))?;
    let mut io_bitmap = vec![0xffu8; (IO_BITMAP_SIZE + 1) as usize];
    for port in HYPERCALL_PORT..HYPERCALL_PORT + 4 {
        io_bitmap[usize::from(port / 8)] &= !(1 << (port % 8));
    }
    mem.write_slice(&io_bitmap, GuestAddress(tss + TSS_SIZE))?;

    let mut idt = vec![0u8; 256 * 16];
    for vector in 0..EXCEPTION_VECTORS {
        let stub = base + STUBS_OFFSET + u64::from(vector) * STUB_SIZE;
        let port = (EXCEPTION_PORT_BASE + vector) as u8;
        // out imm8, al; hlt; jmp back to hlt (never reached: the host ends the cell).
        mem.write_slice(&[0xe6, port, 0xf4, 0xeb, 0xfd], GuestAddress(stub))?;
        let gate = &mut idt[usize::from(vector) * 16..][..16];
        gate[0..2].copy_from_slice(&(stub as u16).to_le_bytes());
        gate[2..4].copy_from_slice(&KERNEL_CODE_SELECTOR.to_le_bytes());
        gate[5] = 0x8e; // present, DPL 0, 64-bit interrupt gate
        gate[6..8].copy_from_slice(&((stub >> 16) as u16).to_le_bytes());
        gate[8..12].copy_from_slice(&((stub >> 32) as u32).to_le_bytes());
    }
    mem.write_slice(&idt, GuestAddress(base + IDT_OFFSET))?;

    Ok(SystemTables {
        cr3: base + PML4_OFFSET,
        gdt_base: base + GDT_OFFSET,
        gdt_limit: (gdt.len() * 8 - 1) as u16,
        idt_base: base + IDT_OFFSET,
        idt_limit: (idt.len() - 1) as u16,
        tss_base: tss,
    })
}

/// The page-map level-4 entry that covers `addr`.
pub(crate) fn pml4_index(addr: u64) -> u64 {
    (addr >> 39) & 511
}

/// Low 8 bytes of a 64-bit available-TSS descriptor for `base`.
fn tss_descriptor_low(base: u64) -> u64 {
    let limit = u64::from(TSS_LIMIT);
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40) // present, DPL 0, type 9 (available 64-bit TSS)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tables_map_user_memory_and_protect_the_system_region() {
        let memory = GuestMemory::new(16 << 20).unwrap();
        let tables = write_system_region(&memory, &[6 * LARGE_PAGE_SIZE]).unwrap();
        let mem = memory.mem();
        let pd = SYSTEM_BASE + PD_OFFSET;
        let entry = |page: u64| mem.read_obj::<u64>(GuestAddress(pd + page * 8)).unwrap();
        assert_eq!(entry(0), 0, "the null page stays unmapped");
        assert_eq!(
            entry(1) & PTE_USER,
            0,
            "the system region is supervisor-only"
        );
        assert_eq!(entry(2), IMAGE_BASE_ENTRY);
        assert_eq!(entry(6), 0, "guard pages stay unmapped");
        assert_eq!(entry(7) & PTE_PRESENT, PTE_PRESENT);
        assert_eq!(entry(8), 0, "nothing past the end of memory is mapped");
        assert_eq!(tables.cr3, SYSTEM_BASE);
    }

    const IMAGE_BASE_ENTRY: u64 = (2 * LARGE_PAGE_SIZE) | 0x87;
}
