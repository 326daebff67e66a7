//! Fixed guest-physical addresses shared by the host's loader and the guest image.
//!
//! Below [`RESERVATION_BASE`], guest-physical and guest-virtual addresses are
//! identical: the host maps guest memory one-to-one with 2 MiB pages. Linear memories
//! live in the reservation area above it, mapped onto guest memory piece by piece.

/// Size of a large page, the granule of the one-to-one mapping.
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

/// Largest guest-physical memory a cell can have: room for a 4 GiB linear memory
/// (wasmtime's limit for 32-bit memories) and the runtime beside it. The host's
/// one-to-one map spends a page directory on each GiB. (Hypercall requests travel as
/// 32-bit addresses, so the request block itself stays in the first 4 GiB.)
pub const MAX_MEMORY_SIZE: u64 = 8 << 30;

/// Start of the reservation area: guest-virtual space above all guest memory where
/// the runtime reserves linear memories (4 GiB and a guard region each). Nothing there
/// is mapped until the guest asks for it ([`crate::Hypercall::MapMemory`]), so an access
/// past a memory's accessible end faults and wasm code needs no bounds checks.
pub const RESERVATION_BASE: u64 = 1 << 40;

/// Size of the reservation area: one page-map level-4 entry (512 GiB).
pub const RESERVATION_SIZE: u64 = 512 << 30;
