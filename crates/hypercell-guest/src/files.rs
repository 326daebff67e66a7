//! WASI calls on preopened directories and the files opened in them: one
//! [`Hypercall::File`] each, with wasm pointers checked against linear memory here
//! (an out-of-range one is `fault`, as under wasmtime) and passed as guest-physical
//! addresses, so the host moves data straight to and from wasm memory. The preopens'
//! names come from the boot information and are answered without an exit.

use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use alloc::vec::Vec;
use hypercell_abi::{BootInfo, FileOp, Hypercall, IoVec};

/// A WASI errno.
pub type Errno = i32;

const ERRNO_BADF: Errno = 8;

/// Preopen names: NUL-terminated, back to back, for descriptors 3, 4, ...
static PREOPENS: AtomicU64 = AtomicU64::new(0);
static PREOPENS_LEN: AtomicU64 = AtomicU64::new(0);
static PREOPEN_COUNT: AtomicU64 = AtomicU64::new(0);
/// Bit `i` is set while preopen `3 + i` is open (up to 64 preopens).
static PREOPENS_OPEN: AtomicU64 = AtomicU64::new(0);

pub fn init(boot: &BootInfo) {
    PREOPENS.store(boot.preopens_addr, Ordering::Relaxed);
    PREOPENS_LEN.store(boot.preopens_len, Ordering::Relaxed);
    PREOPEN_COUNT.store(boot.preopen_count, Ordering::Relaxed);
    let open = if boot.preopen_count >= 64 {
        u64::MAX
    } else {
        (1u64 << boot.preopen_count) - 1
    };
    PREOPENS_OPEN.store(open, Ordering::Relaxed);
}

/// The guest name of preopen `fd`, while it is open.
pub fn preopen_name(fd: u32) -> Option<&'static [u8]> {
    let index = fd.checked_sub(3)?;
    if u64::from(index) >= PREOPEN_COUNT.load(Ordering::Relaxed).min(64)
        || PREOPENS_OPEN.load(Ordering::Relaxed) & (1 << index) == 0
    {
        return None;
    }
    let len = PREOPENS_LEN.load(Ordering::Relaxed) as usize;
    // SAFETY: the host wrote `len` bytes of names at this address in a region reserved
    // for the cell's whole life that nothing writes afterwards.
    let block =
        unsafe { core::slice::from_raw_parts(PREOPENS.load(Ordering::Relaxed) as *const u8, len) };
    block.split(|&b| b == 0).nth(index as usize)
}

/// Performs a file call; returns its value or an errno.
pub fn call(op: FileOp, params: [u64; 8]) -> Result<u64, Errno> {
    let result = crate::hypercall::call(
        Hypercall::File,
        [op as u64, params.as_ptr() as u64, 0, 0, 0, 0],
    );
    if result < 0 {
        Err((-result) as Errno)
    } else {
        Ok(result as u64)
    }
}

/// Closes descriptor `fd` (3 or more).
pub fn close(fd: u32) -> Result<(), Errno> {
    call(FileOp::Close, [u64::from(fd), 0, 0, 0, 0, 0, 0, 0])?;
    if let Some(index) = fd.checked_sub(3).filter(|&i| i < 64) {
        PREOPENS_OPEN.fetch_and(!(1 << index), Ordering::Relaxed);
    }
    Ok(())
}

/// Moves descriptor `fd` onto `to` (both 3 or more).
pub fn renumber(fd: u32, to: u32) -> Result<(), Errno> {
    call(
        FileOp::Renumber,
        [u64::from(fd), u64::from(to), 0, 0, 0, 0, 0, 0],
    )?;
    // Neither number names the preopen it may have named before.
    for closed in [fd, to] {
        if let Some(index) = closed.checked_sub(3).filter(|&i| i < 64) {
            PREOPENS_OPEN.fetch_and(!(1 << index), Ordering::Relaxed);
        }
    }
    Ok(())
}

/// The linear memory a call works on: its guest-physical base and length, for turning
/// checked wasm pointers into addresses the host can use.
pub struct Linear {
    pub base: u64,
    pub len: usize,
}

impl Linear {
    /// The guest-physical address of `len` bytes at wasm pointer `ptr`.
    pub fn addr(&self, range: Range<usize>) -> u64 {
        debug_assert!(range.end <= self.len);
        self.base + range.start as u64
    }

    /// A hypercall iovec list for wasm iovec ranges.
    pub fn iovecs(&self, ranges: &[Range<usize>]) -> Vec<IoVec> {
        ranges
            .iter()
            .map(|r| IoVec {
                addr: self.addr(r.clone()),
                len: r.len() as u64,
            })
            .collect()
    }
}

/// `badf` for descriptors below 3, which are stdio and never files here.
pub fn file_fd(fd: i32) -> Result<u64, Errno> {
    if (fd as u32) < 3 {
        Err(ERRNO_BADF)
    } else {
        Ok(u64::from(fd as u32))
    }
}
