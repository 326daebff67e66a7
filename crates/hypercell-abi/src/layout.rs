//! Fixed guest-physical addresses shared by the host's loader and the guest image.
//!
//! Guest-physical and guest-virtual addresses are identical: the host maps guest
//! memory one-to-one with 2 MiB pages.

/// Size of a large page, the granule of every mapping in a cell.
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;

/// Size of a small page (used only for tables inside the system region).
pub const PAGE_SIZE: u64 = 4 << 10;

/// Start of the supervisor-only system region: page tables, GDT, TSS, IDT, exception
/// stubs and the exception stack. The guest (CPL 3) can neither read nor write it.
/// The 2 MiB below it stay unmapped so that null-pointer accesses fault.
pub const SYSTEM_BASE: u64 = LARGE_PAGE_SIZE;

/// Where the guest ELF image is linked and loaded; user memory starts here.
pub const IMAGE_BASE: u64 = 2 * LARGE_PAGE_SIZE;

/// The I/O port that carries hypercalls: a 32-bit `out` of a request's address.
pub const HYPERCALL_PORT: u16 = 0x0c1e;

/// Exception vector `v` is reported by its CPL 0 stub as a one-byte `out` to port
/// `EXCEPTION_PORT_BASE + v`.
pub const EXCEPTION_PORT_BASE: u16 = 0xe0;

/// Number of exception vectors (0-31) that have reporting stubs.
pub const EXCEPTION_VECTORS: u16 = 32;

/// Largest guest memory a cell can have: hypercall addresses travel in 32 bits.
pub const MAX_MEMORY_SIZE: u64 = 4 << 30;
