//! The guest heap: dlmalloc over the region the host reserved, grown like `sbrk`.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use dlmalloc::Dlmalloc;
use hypercell_abi::layout::LARGE_PAGE_SIZE;
use hypercell_abi::{BootInfo, Hypercall};

/// Hands out the heap region front to back; memory is never returned to it. The
/// host maps only part of the heap at boot (`end`); past it, up to `limit`, memory is
/// mapped on request, one hypercall per growth.
struct HeapRegion {
    next: AtomicUsize,
    end: AtomicUsize,
    limit: AtomicUsize,
}

static EXHAUSTED: AtomicBool = AtomicBool::new(false);

impl HeapRegion {
    /// Asks the host to map memory up to at least `needed`; true when it did.
    fn grow(&self, needed: usize) -> bool {
        if needed > self.limit.load(Ordering::Relaxed) {
            return false;
        }
        let end = crate::hypercall::call(Hypercall::GrowMemory, [needed as u64, 0, 0, 0, 0, 0]);
        if end < needed as i64 {
            return false;
        }
        self.end.store(end as usize, Ordering::Relaxed);
        true
    }
}

// SAFETY: `alloc` hands out disjoint, never-reused ranges of the heap region, which the
// host maps as ordinary zeroed user memory before they are handed out; every other
// method refuses to give memory back, which dlmalloc handles.
unsafe impl dlmalloc::Allocator for HeapRegion {
    fn alloc(&self, size: usize) -> (*mut u8, usize, u32) {
        let start = self.next.load(Ordering::Relaxed);
        match start.checked_add(size) {
            Some(end) if end <= self.end.load(Ordering::Relaxed) || self.grow(end) => {
                self.next.store(end, Ordering::Relaxed);
                (start as *mut u8, size, 0)
            }
            _ => {
                EXHAUSTED.store(true, Ordering::Relaxed);
                (core::ptr::null_mut(), 0, 0)
            }
        }
    }

    fn remap(&self, _ptr: *mut u8, _old: usize, _new: usize, _can_move: bool) -> *mut u8 {
        core::ptr::null_mut()
    }

    fn free_part(&self, _ptr: *mut u8, _old: usize, _new: usize) -> bool {
        false
    }

    fn free(&self, _ptr: *mut u8, _size: usize) -> bool {
        false
    }

    fn can_release_part(&self, _flags: u32) -> bool {
        false
    }

    fn allocates_zeros(&self) -> bool {
        true
    }

    fn page_size(&self) -> usize {
        4096
    }
}

pub(crate) struct GuestAllocator(UnsafeCell<Dlmalloc<HeapRegion>>);

// SAFETY: a cell has one vCPU and the guest never receives interrupts, so the allocator
// is never entered concurrently or re-entrantly.
unsafe impl Sync for GuestAllocator {}

#[global_allocator]
pub(crate) static ALLOCATOR: GuestAllocator =
    GuestAllocator(UnsafeCell::new(Dlmalloc::new_with_allocator(HeapRegion {
        next: AtomicUsize::new(0),
        end: AtomicUsize::new(0),
        limit: AtomicUsize::new(0),
    })));

/// The heap region under the allocator.
fn region() -> &'static HeapRegion {
    // SAFETY: the allocator is only entered on this single thread (see
    // `GuestAllocator`'s Sync), and these fields are atomics read and written between
    // its calls, never during one.
    unsafe { (*ALLOCATOR.0.get()).allocator() }
}

/// Takes `count` whole 2 MiB pages of guest-physical memory from the heap region, for
/// backing linear memory; they are made ready when they are mapped.
pub fn take_large_pages(count: usize) -> Option<usize> {
    let region = region();
    let start = region
        .next
        .load(Ordering::Relaxed)
        .next_multiple_of(LARGE_PAGE_SIZE as usize);
    let end = start.checked_add(count.checked_mul(LARGE_PAGE_SIZE as usize)?)?;
    if end > region.limit.load(Ordering::Relaxed) {
        EXHAUSTED.store(true, Ordering::Relaxed);
        return None;
    }
    region.next.store(end, Ordering::Relaxed);
    Some(start)
}

/// Records that the host made memory ready up to `end`.
pub fn ready_up_to(end: usize) {
    region().end.fetch_max(end, Ordering::Relaxed);
}

pub fn init(boot: &BootInfo) {
    let region = region();
    region
        .next
        .store(boot.heap_start as usize, Ordering::Relaxed);
    region.end.store(boot.heap_end as usize, Ordering::Relaxed);
    region
        .limit
        .store(boot.memory_size as usize, Ordering::Relaxed);
}

/// Whether an allocation has failed for lack of heap.
pub fn exhausted() -> bool {
    EXHAUSTED.load(Ordering::Relaxed)
}

// SAFETY: each method forwards to dlmalloc with the layout it was given; exclusive
// access holds as argued for `GuestAllocator`'s Sync.
unsafe impl GlobalAlloc for GuestAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl comment.
        unsafe { (*self.0.get()).malloc(layout.size(), layout.align()) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl comment.
        unsafe { (*self.0.get()).calloc(layout.size(), layout.align()) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { (*self.0.get()).free(ptr, layout.size(), layout.align()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { (*self.0.get()).realloc(ptr, layout.size(), layout.align(), new_size) }
    }
}
