//! Guest memory: one anonymous mapping, 2 MiB aligned and advised for transparent huge
//! pages, so the guest's 2 MiB pages are backed by host huge pages and first touches
//! are cheap. Pages are faulted in lazily; untouched memory costs nothing.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use hypercell_abi::layout::{LARGE_PAGE_SIZE, MAX_MEMORY_SIZE, PAGE_SIZE as PAGE};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use vm_memory::bitmap::{Bitmap, NewBitmap, RefSlice, WithBitmapSlice};

use crate::page_bitmap::set_pages;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestRegionMmap, MmapRegion};

/// A cell's memory as vm-memory sees it: while a migration asks, every write the host
/// makes through it is marked (see [`GuestMemory::track_host_writes`]).
pub type GuestMemoryMap = vm_memory::GuestMemoryMmap<HostWrites>;

/// The 4 KiB pages of a cell's memory the host wrote through vm-memory, a bit each,
/// while tracking is on. Off, as it is for a cell that never migrates, it is a flag:
/// no bitmap is made, and a write costs one load.
#[derive(Debug, Default)]
pub struct HostWrites {
    len: usize,
    on: AtomicBool,
    words: OnceLock<Box<[AtomicU64]>>,
    /// The end of the highest write, tracked or not.
    end: AtomicU64,
}

impl HostWrites {
    fn words(&self) -> &[AtomicU64] {
        self.words.get_or_init(|| {
            let count = self.len.div_ceil(PAGE as usize * 64);
            (0..count).map(|_| AtomicU64::new(0)).collect()
        })
    }
}

impl NewBitmap for HostWrites {
    fn with_len(len: usize) -> Self {
        Self {
            len,
            ..Self::default()
        }
    }
}

impl<'a> WithBitmapSlice<'a> for HostWrites {
    type S = RefSlice<'a, Self>;
}

impl Bitmap for HostWrites {
    fn mark_dirty(&self, offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        self.end.fetch_max((offset + len) as u64, Ordering::AcqRel);
        if !self.on.load(Ordering::Acquire) {
            return;
        }
        let words = self.words();
        let first = offset / PAGE as usize;
        let last = (offset + len - 1) / PAGE as usize;
        for page in first..=last {
            if let Some(word) = words.get(page / 64) {
                word.fetch_or(1 << (page % 64), Ordering::AcqRel);
            }
        }
    }

    fn dirty_at(&self, offset: usize) -> bool {
        let page = offset / PAGE as usize;
        self.on.load(Ordering::Acquire)
            && self
                .words()
                .get(page / 64)
                .is_some_and(|word| word.load(Ordering::Acquire) & (1 << (page % 64)) != 0)
    }

    fn slice_at(&self, offset: usize) -> RefSlice<'_, Self> {
        RefSlice::new(self, offset)
    }
}

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The cell's memory size of {0} bytes is not a multiple of 2 MiB between
    /// [`MIN_MEMORY_SIZE`] and [`MAX_MEMORY_SIZE`].
    #[error("a cell's memory must be a multiple of 2 MiB between 8 MiB and 8 GiB, not {0} bytes")]
    InvalidSize(u64),
    /// A file could not be mapped into guest memory.
    #[error("could not map a file into guest memory at {addr:#x} ({len} bytes): {source}")]
    FileMapping {
        /// Guest-physical address.
        addr: u64,
        /// Length.
        len: u64,
        /// The OS error.
        source: io::Error,
    },
    /// mmap of the guest memory failed.
    #[error("could not reserve {size} bytes of host memory for the cell: {source}")]
    Mmap {
        /// Requested size.
        size: u64,
        /// The OS error.
        source: io::Error,
    },
    /// vm-memory rejected the mapping.
    #[error("could not describe the cell's memory: {0}")]
    Region(String),
}

/// Smallest guest memory that holds the system region, the runtime and a heap.
pub const MIN_MEMORY_SIZE: u64 = 8 << 20;

/// The memory of one cell, mapped at guest-physical address 0.
pub struct GuestMemory {
    mmap: GuestMemoryMap,
    host: NonNull<u8>,
    size: u64,
    /// Guest-physical address of the page-map level-4 table the vCPU runs on (its
    /// CR3), through which the host finds the reservation area's tables.
    tables_root: AtomicU64,
}

// SAFETY: the raw pointer is only the base of a mapping this value owns; every access
// through it goes through vm-memory's volatile, bounds-checked accessors.
unsafe impl Send for GuestMemory {}
// SAFETY: through `&self` the pointer is only read as an address (for KVM slots and
// madvise/mincore, which the kernel serialises); the bytes are reached through
// vm-memory's volatile accessors, which are themselves safe to share, so a
// supervising thread may read the memory while the vCPU thread runs.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Reserves `size` bytes of guest memory.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        if !(MIN_MEMORY_SIZE..=MAX_MEMORY_SIZE).contains(&size)
            || !size.is_multiple_of(LARGE_PAGE_SIZE)
        {
            return Err(MemoryError::InvalidSize(size));
        }
        let host =
            map_aligned(size as usize).map_err(|source| MemoryError::Mmap { size, source })?;
        // SAFETY: `host` is a fresh private anonymous read-write mapping of `size` bytes
        // that this value owns and unmaps in `Drop`, after the region is dropped.
        let region = unsafe {
            MmapRegion::build_raw(
                host.as_ptr(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            )
        }
        .map_err(|e| MemoryError::Region(e.to_string()));
        let region = match region {
            Ok(region) => region,
            Err(e) => {
                // SAFETY: the mapping was created above and nothing refers to it.
                unsafe { libc::munmap(host.as_ptr().cast(), size as usize) };
                return Err(e);
            }
        };
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| MemoryError::Region("the region wraps the address space".into()))?;
        let mmap = GuestMemoryMap::from_regions(vec![region])
            .map_err(|e| MemoryError::Region(e.to_string()))?;
        Ok(Self {
            mmap,
            host,
            size,
            tables_root: AtomicU64::new(crate::system::TABLES_ROOT),
        })
    }

    /// Guest-physical address of the page-map level-4 table the cell's vCPU runs on.
    pub fn tables_root(&self) -> u64 {
        self.tables_root.load(Ordering::Relaxed)
    }

    /// Takes note that the cell's vCPU runs on the page-map level-4 table at `root`
    /// (see [`crate::paging::ReservationTables::fresh_copy`]).
    pub fn set_tables_root(&self, root: u64) {
        self.tables_root.store(root, Ordering::Relaxed);
    }

    /// The memory as vm-memory's bounds-checked view.
    pub fn mem(&self) -> &GuestMemoryMap {
        &self.mmap
    }

    /// The bitmaps of the memory's regions; its one region starts at guest-physical 0,
    /// so a bitmap's offsets are guest-physical addresses.
    fn host_writes(&self) -> impl Iterator<Item = &HostWrites> {
        self.mmap.iter().map(|region| MmapRegion::bitmap(region))
    }

    /// Marks (or stops marking) the pages the host writes through [`Self::mem`] from
    /// now on, for [`Self::take_host_written`]: KVM's dirty log misses them, and a
    /// migration must send them too. Turning it on forgets what was marked before.
    pub fn track_host_writes(&self, on: bool) {
        for writes in self.host_writes() {
            if on {
                for word in writes.words() {
                    word.store(0, Ordering::Release);
                }
            }
            writes.on.store(on, Ordering::Release);
        }
    }

    /// The guest-physical pages the host wrote through [`Self::mem`] since this was
    /// last asked (or tracking began), sorted.
    pub fn take_host_written(&self) -> Vec<u64> {
        self.host_writes()
            .filter(|writes| writes.on.load(Ordering::Acquire))
            .flat_map(|writes| {
                let words = writes
                    .words()
                    .iter()
                    .map(|word| word.swap(0, Ordering::AcqRel));
                set_pages(words, 0)
            })
            .collect()
    }

    /// The end of the highest write the host ever made through [`Self::mem`] (raw
    /// writes mark theirs too), tracked or not: a bound on where the host wrote.
    pub fn host_written_end(&self) -> u64 {
        self.host_writes()
            .map(|writes| writes.end.load(Ordering::Acquire))
            .max()
            .unwrap_or(0)
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host virtual address of guest-physical address 0 (for KVM's memory slot).
    pub fn host_address(&self) -> u64 {
        self.host.as_ptr() as u64
    }

    /// Backs guest-physical `range` with small host pages: for regions the host writes
    /// a few KiB of and the guest rarely reads, where zeroing a fresh 2 MiB page on
    /// first touch would cost more than it saves.
    pub fn use_small_pages(&self, range: std::ops::Range<u64>) {
        let _ = self.advise(range, libc::MADV_NOHUGEPAGE);
    }

    /// Backs guest-physical `range` with host memory now rather than on first touch.
    /// Advice only: where the kernel cannot, memory is still backed on first touch.
    pub fn populate(&self, range: std::ops::Range<u64>) {
        let _ = self.advise(range, libc::MADV_POPULATE_WRITE);
    }

    fn advise(&self, range: std::ops::Range<u64>, advice: libc::c_int) -> io::Result<()> {
        let end = range.end.min(self.size);
        if range.start >= end {
            return Ok(());
        }
        // SAFETY: the range lies inside this value's own read-write mapping; the
        // advice changes only how the kernel backs it (populating faults pages in,
        // zeroed, as a first write would).
        let rc = unsafe {
            libc::madvise(
                self.host.as_ptr().add(range.start as usize).cast(),
                (end - range.start) as usize,
                advice,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Backs `len` bytes of guest-physical memory at `addr` (4 KiB-aligned) with a
    /// private, copy-on-write mapping of `file` from `offset` (4 KiB-aligned), instead
    /// of copying: cells running the same file share its page-cache pages until they
    /// write, and pages nobody touches are never read. Bytes past the end of the file
    /// in the last page read as zero.
    pub fn map_file(
        &self,
        addr: u64,
        len: u64,
        file: BorrowedFd<'_>,
        offset: u64,
    ) -> Result<(), MemoryError> {
        self.map_fd(addr, len, file, offset, libc::MAP_PRIVATE)
    }

    /// Backs `len` bytes of guest-physical memory at `addr` (4 KiB-aligned) with a
    /// shared mapping of `file` from its start: what the guest writes there reaches the
    /// file, and every other mapping of it, at once (a channel between two cells).
    pub fn map_shared(&self, addr: u64, len: u64, file: BorrowedFd<'_>) -> Result<(), MemoryError> {
        self.map_fd(addr, len, file, 0, libc::MAP_SHARED)
    }

    fn map_fd(
        &self,
        addr: u64,
        len: u64,
        file: BorrowedFd<'_>,
        offset: u64,
        sharing: libc::c_int,
    ) -> Result<(), MemoryError> {
        let page = 4096;
        let end = addr.checked_add(len.next_multiple_of(page));
        if !addr.is_multiple_of(page)
            || !offset.is_multiple_of(page)
            || end.is_none_or(|end| end > self.size)
        {
            return Err(MemoryError::FileMapping {
                addr,
                len,
                source: io::Error::from_raw_os_error(libc::EINVAL),
            });
        }
        let length = len.next_multiple_of(page) as usize;
        // SAFETY: the target range was checked to lie inside this value's own mapping,
        // which MAP_FIXED replaces in place: no memory outside it is affected, and the
        // range stays mapped (now by the file) for as long as this value lives. A
        // private mapping cannot change the file; a shared one changes only the file
        // the caller chose to share.
        let mapped = unsafe {
            libc::mmap(
                self.host.as_ptr().add(addr as usize).cast(),
                length,
                libc::PROT_READ | libc::PROT_WRITE,
                sharing | libc::MAP_FIXED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(MemoryError::FileMapping {
                addr,
                len,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// The ranges of guest memory, within `range`, that hold pages of the cell's own:
    /// written since they were mapped, by the guest or the host, rather than still the
    /// page of the file mapped there (see [`Self::map_file`]) or never-written zeros.
    /// One `PAGEMAP_SCAN` of this process's page tables (Linux 6.7): its cost grows
    /// with the pages the cell has touched, not with its size.
    pub fn written_ranges(
        &self,
        range: std::ops::Range<u64>,
    ) -> io::Result<Vec<std::ops::Range<u64>>> {
        let end = range.end.min(self.size);
        if range.start >= end {
            return Ok(Vec::new());
        }
        let base = self.host.as_ptr() as u64;
        let mut found: Vec<std::ops::Range<u64>> = Vec::new();
        let mut regions = [PageRegion::default(); 64];
        let mut at = base + range.start;
        while at < base + end {
            let mut scan = PageScan {
                size: size_of::<PageScan>() as u64,
                start: at,
                end: base + end,
                vec: regions.as_mut_ptr() as u64,
                vec_len: regions.len() as u64,
                // A page is the cell's own when it is neither a file's page nor the
                // shared zero page, and it is present or swapped out.
                category_inverted: PAGE_IS_FILE | PAGE_IS_PFNZERO,
                category_mask: PAGE_IS_FILE | PAGE_IS_PFNZERO,
                category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                ..PageScan::default()
            };
            let pagemap = pagemap()?;
            // SAFETY: PAGEMAP_SCAN reads `scan` and writes at most `vec_len` regions
            // into `regions`, which outlives the call; it only reads this process's
            // page tables for addresses inside this value's own mapping.
            let count = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut scan) };
            if count < 0 {
                return Err(io::Error::last_os_error());
            }
            for region in &regions[..count as usize] {
                let start = region.start - base;
                let end = region.end - base;
                match found.last_mut() {
                    Some(last) if last.end == start => last.end = end,
                    _ => found.push(start..end),
                }
            }
            if scan.walk_end <= at {
                break;
            }
            at = scan.walk_end;
        }
        Ok(found)
    }

    /// Drops the cell's own pages in guest-physical `range` (4 KiB-aligned): where a
    /// file is mapped they read as the file again, elsewhere as zeros. KVM is told, so
    /// the guest sees the change at its next access.
    pub fn discard(&self, range: std::ops::Range<u64>) -> io::Result<()> {
        self.advise(range, libc::MADV_DONTNEED)
    }

    /// [`Self::discard`] for many ranges with one `process_madvise` where the kernel
    /// takes it (Linux 6.13), which flushes the TLB once for all of them.
    pub fn discard_all(&self, ranges: &[std::ops::Range<u64>]) -> io::Result<()> {
        let iov: Vec<libc::iovec> = ranges
            .iter()
            .filter(|range| range.start < range.end && range.end <= self.size)
            .map(|range| libc::iovec {
                // SAFETY: the range was checked to lie inside this value's own mapping.
                iov_base: unsafe { self.host.as_ptr().add(range.start as usize) }.cast(),
                iov_len: (range.end - range.start) as usize,
            })
            .collect();
        let whole: usize = iov.iter().map(|v| v.iov_len).sum();
        let done = own_pidfd().and_then(|pidfd| {
            // SAFETY: every iovec names a range inside this value's own mapping; the
            // advice only drops the process's private pages there, as `discard` does.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_process_madvise,
                    pidfd,
                    iov.as_ptr(),
                    iov.len(),
                    libc::MADV_DONTNEED,
                    0,
                )
            };
            (n >= 0).then_some(n as usize)
        });
        if done != Some(whole) {
            for range in ranges {
                self.discard(range.clone())?;
            }
        }
        Ok(())
    }

    /// Bytes of guest memory in `range` that the host has actually backed (touched by
    /// host or guest). Cost grows with the range: pass only what is mapped.
    pub fn resident_bytes(&self, range: std::ops::Range<u64>) -> u64 {
        let pages = self.resident_pages(range);
        pages.iter().filter(|&&resident| resident).count() as u64 * 4096
    }

    /// For each 4 KiB page from the one holding `range.start` to `range.end`, whether
    /// the host has backed it: one `mincore` for the whole range. Empty when the kernel
    /// cannot say.
    pub fn resident_pages(&self, range: std::ops::Range<u64>) -> Vec<bool> {
        let page = 4096u64;
        let start = range.start / page * page;
        let end = range.end.min(self.size);
        if start >= end {
            return Vec::new();
        }
        let len = (end - start) as usize;
        let mut residency = vec![0u8; len.div_ceil(page as usize)];
        // SAFETY: the range lies inside this value's own mapping and starts on a page;
        // `residency` has one byte per page of it, as mincore requires.
        let rc = unsafe {
            libc::mincore(
                self.host.as_ptr().add(start as usize).cast(),
                len,
                residency.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Vec::new();
        }
        residency.iter().map(|&b| b & 1 != 0).collect()
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `map_aligned` with this size and is owned
        // by this value; vm-memory does not unmap raw regions it did not create.
        unsafe { libc::munmap(self.host.as_ptr().cast(), self.size as usize) };
    }
}

/// `PAGEMAP_SCAN`'s argument (`struct pm_scan_arg`, linux/fs.h).
#[repr(C)]
#[derive(Default)]
struct PageScan {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// One range `PAGEMAP_SCAN` found (`struct page_region`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
/// The `PAGEMAP_SCAN` ioctl of `/proc/self/pagemap`: it only reads this process's own
/// page tables, so a confined vCPU thread may make it, to list a cell's written pages.
pub const PAGEMAP_SCAN: libc::c_ulong = 0xc060_6610;
const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// A pidfd of this process, opened once; `None` where the kernel has none.
fn own_pidfd() -> Option<libc::c_int> {
    static PIDFD: std::sync::OnceLock<Option<std::os::fd::OwnedFd>> = std::sync::OnceLock::new();
    PIDFD
        .get_or_init(|| {
            // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
            // SAFETY: a non-negative result is a new descriptor owned by nobody else.
            (fd >= 0).then(|| unsafe {
                <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as libc::c_int)
            })
        })
        .as_ref()
        .map(|fd| fd.as_raw_fd())
}

/// This process's `/proc/self/pagemap`, opened once.
fn pagemap() -> io::Result<&'static std::fs::File> {
    static PAGEMAP: std::sync::OnceLock<Result<std::fs::File, i32>> = std::sync::OnceLock::new();
    PAGEMAP
        .get_or_init(|| {
            std::fs::File::open("/proc/self/pagemap")
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
        })
        .as_ref()
        .map_err(|&errno| io::Error::from_raw_os_error(errno))
}

/// Maps `size` bytes of anonymous memory aligned to 2 MiB and advises huge pages.
fn map_aligned(size: usize) -> io::Result<NonNull<u8>> {
    let align = LARGE_PAGE_SIZE as usize;
    let reserve = size + align;
    // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing; no
    // existing memory is affected.
    let raw = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserve,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if raw == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = raw as usize;
    let aligned = start.next_multiple_of(align);
    let head = aligned - start;
    let tail = reserve - head - size;
    // SAFETY: the head and tail trimmed here lie inside the mapping made above and
    // outside the aligned range that is kept.
    unsafe {
        if head > 0 {
            libc::munmap(raw, head);
        }
        if tail > 0 {
            libc::munmap((aligned + size) as *mut libc::c_void, tail);
        }
        // Advice only: without transparent huge pages the memory still works.
        libc::madvise(aligned as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
    }
    Ok(NonNull::new(aligned as *mut u8).expect("mmap never returns null on success"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn the_highest_host_write_is_known_tracked_or_not() {
        let memory = GuestMemory::new(16 << 20).unwrap();
        assert_eq!(memory.host_written_end(), 0);
        memory.mem().write_obj(1u64, GuestAddress(8 << 20)).unwrap();
        assert_eq!(memory.host_written_end(), (8 << 20) + 8);
        memory.mem().write_obj(1u32, GuestAddress(4 << 20)).unwrap();
        assert_eq!(memory.host_written_end(), (8 << 20) + 8, "a lower write");
        memory.track_host_writes(true);
        memory
            .mem()
            .write_slice(&[1; 100], GuestAddress(12 << 20))
            .unwrap();
        assert_eq!(memory.host_written_end(), (12 << 20) + 100);
    }

    #[test]
    fn memory_is_aligned_zeroed_and_bounded() {
        let memory = GuestMemory::new(16 << 20).unwrap();
        assert_eq!(memory.host_address() % LARGE_PAGE_SIZE, 0);
        let value: u64 = memory.mem().read_obj(GuestAddress(8 << 20)).unwrap();
        assert_eq!(value, 0);
        memory
            .mem()
            .write_obj(7u64, GuestAddress((16 << 20) - 8))
            .unwrap();
        assert!(
            memory
                .mem()
                .write_obj(7u64, GuestAddress((16 << 20) - 4))
                .is_err()
        );
        assert!(memory.resident_bytes(0..16 << 20) >= 4096);
        assert_eq!(memory.resident_bytes(0..0), 0);
        memory.populate(8 << 20..12 << 20);
        assert!(memory.resident_bytes(0..16 << 20) >= (4 << 20) + 4096);
        assert_eq!(memory.resident_bytes(8 << 20..10 << 20), 2 << 20);
    }

    #[test]
    fn a_file_backs_guest_memory_privately() {
        let memory = GuestMemory::new(16 << 20).unwrap();
        let mut file = tempfile::tempfile().unwrap();
        let mut contents = vec![0u8; 4096];
        contents.extend_from_slice(b"artifact");
        std::io::Write::write_all(&mut file, &contents).unwrap();
        memory
            .map_file(8 << 20, 8, std::os::fd::AsFd::as_fd(&file), 4096)
            .unwrap();
        let mut bytes = [0u8; 9];
        memory
            .mem()
            .read_slice(&mut bytes, GuestAddress(8 << 20))
            .unwrap();
        assert_eq!(&bytes, b"artifact\0", "past the file's end reads as zero");
        memory
            .mem()
            .write_slice(b"changed", GuestAddress(8 << 20))
            .unwrap();
        let mut on_disk = Vec::new();
        std::io::Seek::rewind(&mut file).unwrap();
        std::io::Read::read_to_end(&mut file, &mut on_disk).unwrap();
        assert_eq!(&on_disk[4096..], b"artifact", "the file never changes");
        let fd = std::os::fd::AsFd::as_fd(&file);
        assert!(
            memory.map_file(8 << 20, 8, fd, 100).is_err(),
            "unaligned offset"
        );
        assert!(
            memory.map_file(16 << 20, 1, fd, 0).is_err(),
            "past the memory"
        );
    }

    #[test]
    fn written_pages_are_found_and_discarded_back_to_the_file_or_zero() {
        let memory = GuestMemory::new(16 << 20).unwrap();
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &vec![7u8; 1 << 20]).unwrap();
        memory
            .map_file(4 << 20, 1 << 20, std::os::fd::AsFd::as_fd(&file), 0)
            .unwrap();
        let mem = memory.mem();
        // Read only: nothing of the cell's own.
        for page in [4 << 20, (4 << 20) + 4096, 9 << 20] {
            let _: u8 = mem.read_obj(GuestAddress(page)).unwrap();
        }
        assert_eq!(memory.written_ranges(0..16 << 20).unwrap(), vec![]);
        mem.write_obj(1u8, GuestAddress((4 << 20) + 8192)).unwrap();
        mem.write_obj(1u8, GuestAddress((4 << 20) + 12288)).unwrap();
        mem.write_obj(1u8, GuestAddress(12 << 20)).unwrap();
        let written = memory.written_ranges(0..16 << 20).unwrap();
        assert_eq!(written[0], (4 << 20) + 8192..(4 << 20) + 16384);
        assert!(written[1].contains(&(12 << 20)), "{written:x?}");
        assert_eq!(written.len(), 2);
        for range in written {
            memory.discard(range).unwrap();
        }
        assert_eq!(memory.written_ranges(0..16 << 20).unwrap(), vec![]);
        let back: u8 = mem.read_obj(GuestAddress((4 << 20) + 8192)).unwrap();
        let zero: u8 = mem.read_obj(GuestAddress(12 << 20)).unwrap();
        assert_eq!((back, zero), (7, 0));
    }

    #[test]
    fn bad_sizes_are_refused() {
        for size in [0, 4 << 20, (16 << 20) + 4096, MAX_MEMORY_SIZE + (2 << 20)] {
            assert!(matches!(
                GuestMemory::new(size),
                Err(MemoryError::InvalidSize(_))
            ));
        }
    }
}
