//! Virtual memory for wasmtime's custom platform.
//!
//! Accessible allocations (code, tables) come from the heap. A reservation (a linear
//! memory's 4 GiB and guard region) takes guest-virtual space in the reservation area,
//! where nothing is mapped; making part of it accessible takes whole 2 MiB pages of
//! guest-physical memory from the heap and asks the host to map exactly the accessible
//! bytes onto them, so that wasm code can leave bounds checks to the MMU. A linear
//! memory's pages stay where they are as it grows: nothing is copied.
//!
//! The host maps the module's first linear memory at its initial size before boot
//! ([`BootInfo::premapped_memory`]), at the start of the area; the first reservation
//! of a linear memory's size takes it, and making its initial size accessible then
//! needs no exit.
//!
//! With [`BoundsChecks::Explicit`] the compiled code compares each access with the
//! memory's size, so the tables may map more than the size: each mapping then runs to
//! the end of its 2 MiB page (the host's premapping too), and growing within pages
//! already backed needs no exit.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

use alloc::vec::Vec;
use hypercell_abi::layout::{LARGE_PAGE_SIZE, PAGE_SIZE, RESERVATION_BASE, RESERVATION_SIZE};
use hypercell_abi::{BootInfo, Hypercall};
use hypercell_engine::BoundsChecks;

/// What the custom-platform functions return on failure (wasmtime reports it as an OS
/// error code).
const FAILED: i32 = 12;

const LARGE: usize = LARGE_PAGE_SIZE as usize;

/// One reservation: its guest-virtual range and the 2 MiB guest-physical page behind
/// each of its 2 MiB pieces made accessible so far.
struct Reservation {
    base: usize,
    len: usize,
    backing: Vec<Option<usize>>,
    /// Bytes from `base` mapped so far without a gap: by the host before boot, then
    /// by each growth that continues them.
    mapped: usize,
}

struct ReservationArea {
    next: usize,
    reservations: Vec<Reservation>,
    /// The host's premapped memory, until a reservation takes it: its mapped bytes
    /// and the guest-physical start of its 2 MiB pages.
    premapped: Option<(usize, usize)>,
    /// How the code checks bounds, which says how far each mapping runs
    /// ([`BoundsChecks::mapped_end`]).
    bounds_checks: BoundsChecks,
}

struct Area(UnsafeCell<ReservationArea>);

// SAFETY: the cell has one thread and wasmtime never calls these functions from an
// exception handler, so the area is never accessed concurrently or re-entrantly.
unsafe impl Sync for Area {}

static AREA: Area = Area(UnsafeCell::new(ReservationArea {
    next: RESERVATION_BASE as usize,
    reservations: Vec::new(),
    premapped: None,
    bounds_checks: BoundsChecks::GuardPages,
}));

/// Bytes wasmtime reserves for one linear memory.
const MEMORY_RESERVATION: usize = hypercell_engine::MEMORY_RESERVATION_SIZE as usize;

/// Takes note of how the code checks bounds and of the memory the host mapped before
/// boot.
pub fn init(boot: &BootInfo, bounds_checks: BoundsChecks) {
    let area = area();
    area.bounds_checks = bounds_checks;
    if boot.premapped_memory == 0 {
        return;
    }
    let mapped = bounds_checks.mapped_end(boot.premapped_memory) as usize;
    area.premapped = Some((mapped, boot.premapped_backing as usize));
    // Other reservations start past the premapped memory's.
    area.next = RESERVATION_BASE as usize + MEMORY_RESERVATION + LARGE;
}

fn area() -> &'static mut ReservationArea {
    // SAFETY: see `Area`'s Sync; each caller uses the reference only for the duration
    // of one platform call.
    unsafe { &mut *AREA.0.get() }
}

fn in_reservation_area(ptr: usize) -> bool {
    (RESERVATION_BASE as usize..(RESERVATION_BASE + RESERVATION_SIZE) as usize).contains(&ptr)
}

fn heap_layout(size: usize) -> Option<Layout> {
    Layout::from_size_align(size.max(1), PAGE_SIZE as usize).ok()
}

impl ReservationArea {
    fn reserve(&mut self, size: usize) -> Option<usize> {
        if size == MEMORY_RESERVATION
            && let Some((premapped, backing)) = self.premapped.take()
        {
            let base = RESERVATION_BASE as usize;
            self.reservations.push(Reservation {
                base,
                len: size,
                backing: (0..premapped.div_ceil(LARGE))
                    .map(|page| Some(backing + page * LARGE))
                    .collect(),
                mapped: premapped,
            });
            return Some(base);
        }
        let base = self.next;
        let len = size.checked_next_multiple_of(LARGE)?;
        let end = base.checked_add(len)?;
        if end > (RESERVATION_BASE + RESERVATION_SIZE) as usize {
            return None;
        }
        // The next reservation starts one 2 MiB page later: an unmapped gap, so that
        // even a wrong guard size could not run from one memory into the next.
        self.next = end + LARGE;
        self.reservations.push(Reservation {
            base,
            len,
            backing: Vec::new(),
            mapped: 0,
        });
        Some(base)
    }

    fn find(&mut self, ptr: usize, len: usize) -> Option<&mut Reservation> {
        self.reservations.iter_mut().find(|r| {
            ptr >= r.base
                && ptr
                    .checked_add(len)
                    .is_some_and(|end| end <= r.base + r.len)
        })
    }
}

impl Reservation {
    /// Makes `ptr..ptr + len` accessible: backs its 2 MiB pieces that have no physical
    /// page yet (with consecutive pages, so one request usually maps it all) and has
    /// the host map each physically contiguous run, on as far as `bounds_checks` let
    /// the mapping run.
    fn make_accessible(&mut self, ptr: usize, len: usize, bounds_checks: BoundsChecks) -> bool {
        if ptr + len <= self.base + self.mapped {
            return true;
        }
        // What is mapped already needs no second mapping.
        let (ptr, len) = if ptr < self.base + self.mapped {
            let mapped_end = self.base + self.mapped;
            (mapped_end, ptr + len - mapped_end)
        } else {
            (ptr, len)
        };
        let first = (ptr - self.base) / LARGE;
        let last = (ptr + len - 1 - self.base) / LARGE;
        if self.backing.len() <= last {
            self.backing.resize(last + 1, None);
        }
        let missing = self.backing[first..=last]
            .iter()
            .filter(|b| b.is_none())
            .count();
        if missing > 0 {
            let Some(mut page) = crate::heap::take_large_pages(missing) else {
                return false;
            };
            for backing in self.backing[first..=last]
                .iter_mut()
                .filter(|b| b.is_none())
            {
                *backing = Some(page);
                page += LARGE;
            }
        }
        let physical = |addr: usize| {
            let offset = addr - self.base;
            self.backing[offset / LARGE].map(|page| page + offset % LARGE)
        };
        let end = (bounds_checks.mapped_end((ptr + len) as u64) as usize).min(self.base + self.len);
        let mut runs: Vec<[u64; 3]> = Vec::new();
        let mut run_start = ptr;
        while run_start < end {
            let Some(run_physical) = physical(run_start) else {
                return false;
            };
            let mut run_end = (run_start / LARGE + 1) * LARGE;
            while run_end < end && physical(run_end) == Some(run_physical + (run_end - run_start)) {
                run_end += LARGE;
            }
            let run_end = run_end.min(end);
            runs.push([
                run_start as u64,
                (run_end - run_start) as u64,
                run_physical as u64,
            ]);
            run_start = run_end;
        }
        let mapped = runs.chunks(2).all(|pair| {
            let [va, len, pa] = pair[0];
            let [va2, len2, pa2] = pair.get(1).copied().unwrap_or([0; 3]);
            let ready = crate::hypercall::call(Hypercall::MapMemory, [va, len, pa, va2, len2, pa2]);
            if ready >= 0 {
                crate::heap::ready_up_to(ready as usize);
            }
            ready >= 0
        });
        if mapped && ptr == self.base + self.mapped {
            self.mapped = end - self.base;
        }
        mapped
    }
}

/// wasmtime's page size: the granule of its protection changes.
#[unsafe(no_mangle)]
extern "C" fn wasmtime_page_size() -> usize {
    PAGE_SIZE as usize
}

/// Allocates `size` bytes: a reservation when `prot_flags` is 0, zeroed heap memory
/// otherwise.
#[unsafe(no_mangle)]
extern "C" fn wasmtime_mmap_new(size: usize, prot_flags: u32, ret: &mut *mut u8) -> i32 {
    let ptr = if prot_flags == 0 {
        area()
            .reserve(size)
            .map_or(core::ptr::null_mut(), |base| base as *mut u8)
    } else {
        match heap_layout(size) {
            // SAFETY: the layout has a non-zero size.
            Some(layout) => unsafe { crate::heap::ALLOCATOR.alloc_zeroed(layout) },
            None => core::ptr::null_mut(),
        }
    };
    if ptr.is_null() {
        return FAILED;
    }
    *ret = ptr;
    0
}

/// Replaces a mapping with fresh zeroed memory. Only heap memory can be reset this way:
/// reservation pages are never taken back from the host's tables.
#[unsafe(no_mangle)]
extern "C" fn wasmtime_mmap_remap(addr: *mut u8, size: usize, prot_flags: u32) -> i32 {
    if in_reservation_area(addr as usize) || prot_flags == 0 {
        return FAILED;
    }
    // SAFETY: wasmtime passes a range of a mapping it allocated with
    // `wasmtime_mmap_new` and still owns.
    unsafe { core::ptr::write_bytes(addr, 0, size) };
    0
}

/// Releases a mapping. A reservation's guest-virtual space and pages are not reused:
/// they would need the host's tables and KVM's shadow of them rewritten.
#[unsafe(no_mangle)]
extern "C" fn wasmtime_munmap(ptr: *mut u8, size: usize) -> i32 {
    let addr = ptr as usize;
    if in_reservation_area(addr) {
        area().reservations.retain(|r| r.base != addr);
        return 0;
    }
    let Some(layout) = heap_layout(size) else {
        return FAILED;
    };
    // SAFETY: `ptr` came from `wasmtime_mmap_new` with this size, so from the heap with
    // this layout.
    unsafe { crate::heap::ALLOCATOR.dealloc(ptr, layout) };
    0
}

/// Changes protections. Heap memory is mapped read-write-execute with 2 MiB pages, so
/// there is nothing to change; in a reservation, read-write makes the range accessible
/// and taking access away is refused (wasmtime only does so to reuse memory).
#[unsafe(no_mangle)]
extern "C" fn wasmtime_mprotect(ptr: *mut u8, size: usize, prot_flags: u32) -> i32 {
    let addr = ptr as usize;
    if !in_reservation_area(addr) {
        return 0;
    }
    if size == 0 {
        return 0;
    }
    let area = area();
    let bounds_checks = area.bounds_checks;
    let Some(reservation) = area.find(addr, size) else {
        return FAILED;
    };
    if prot_flags == 0 || !reservation.make_accessible(addr, size, bounds_checks) {
        return FAILED;
    }
    0
}

/// Copy-on-write memory images need a file or shared pages to map from; cells copy
/// data segments instead, which this answers by returning no image.
#[unsafe(no_mangle)]
extern "C" fn wasmtime_memory_image_new(_ptr: *const u8, _len: usize, ret: &mut *mut u8) -> i32 {
    *ret = core::ptr::null_mut();
    0
}

/// Never called: no image is ever created.
#[unsafe(no_mangle)]
extern "C" fn wasmtime_memory_image_map_at(_image: *mut u8, _addr: *mut u8, _len: usize) -> i32 {
    FAILED
}

/// Never called: no image is ever created.
#[unsafe(no_mangle)]
extern "C" fn wasmtime_memory_image_free(_image: *mut u8) {}
