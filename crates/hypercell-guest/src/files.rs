//! WASI calls on preopened directories and the files opened in them: one
//! [`Hypercall::File`] each, with wasm pointers checked against linear memory here
//! (an out-of-range one is `fault`, as under wasmtime) and passed as guest-physical
//! addresses, so the host moves data straight to and from wasm memory. The preopens'
//! names come from the boot information and are answered without an exit.
//!
//! Descriptor numbers are the host's, stdio's included; this module only remembers
//! which numbers hold a stdio stream, a preopen or a named channel, so that calls on
//! those are routed without an exit.

use core::ops::Range;
use core::sync::atomic::{AtomicU64, Ordering};

use alloc::vec::Vec;
use hypercell_abi::channel::MAX_NAMED_CHANNELS;
use hypercell_abi::{BootInfo, FileOp, Hypercall, IoVec};

/// A WASI errno.
pub type Errno = i32;

/// Preopen names: NUL-terminated, back to back, for descriptors 3, 4, ...
static PREOPENS: AtomicU64 = AtomicU64::new(0);
static PREOPENS_LEN: AtomicU64 = AtomicU64::new(0);

/// Descriptors the guest answers for without the host: the three stdio streams
/// (slots 0 to 2: stdin, stdout, stderr), the preopens (slot `3 + i` for preopen
/// `i`, up to 64, for `fd_prestat_*`) and the named channels (slot
/// [`NAMED_SLOTS`]` + i` for named channel `i`).
const SLOTS: usize = NAMED_SLOTS + MAX_NAMED_CHANNELS;

/// The first named channel's slot.
const NAMED_SLOTS: usize = 3 + 64;

/// The slot of the `/channels` preopen, or [`CLOSED`] for a cell without named
/// channels.
static CHANNELS_DIRECTORY_SLOT: AtomicU64 = AtomicU64::new(CLOSED);

/// The descriptor number that holds each slot's stream or preopen, or [`CLOSED`].
/// Numbers move with `fd_renumber` and go with `fd_close`, as under wasmtime; the
/// host's table holds the same numbers, so that they are never handed out twice.
static HOLDERS: [AtomicU64; SLOTS] = [const { AtomicU64::new(CLOSED) }; SLOTS];

/// A slot no descriptor holds (no `u32` descriptor number equals it).
const CLOSED: u64 = u64::MAX;

pub fn init(boot: &BootInfo) {
    PREOPENS.store(boot.preopens_addr, Ordering::Relaxed);
    PREOPENS_LEN.store(boot.preopens_len, Ordering::Relaxed);
    let held = 3 + boot.preopen_count.min(64) as usize;
    for (slot, holder) in HOLDERS.iter().enumerate() {
        holder.store(
            if slot < held { slot as u64 } else { CLOSED },
            Ordering::Relaxed,
        );
    }
    // The host lays the `/channels` preopen last.
    let directory = if boot.named_channel_count > 0 && held > 3 {
        held as u64 - 1
    } else {
        CLOSED
    };
    CHANNELS_DIRECTORY_SLOT.store(directory, Ordering::Relaxed);
}

/// The slot descriptor `fd` holds, if any.
fn slot(fd: u32) -> Option<usize> {
    HOLDERS
        .iter()
        .position(|holder| holder.load(Ordering::Relaxed) == u64::from(fd))
}

/// The stdio stream (0, 1 or 2) descriptor `fd` holds, if any: asked on most calls,
/// so it looks at the three stream slots only.
pub fn stream(fd: i32) -> Option<u32> {
    HOLDERS[..3]
        .iter()
        .position(|holder| holder.load(Ordering::Relaxed) == u64::from(fd as u32))
        .map(|stream| stream as u32)
}

/// The channel end (see [`crate::channel`]) of the named channel descriptor `fd`
/// holds, if any.
pub fn channel_end(fd: i32) -> Option<usize> {
    HOLDERS[NAMED_SLOTS..]
        .iter()
        .position(|holder| holder.load(Ordering::Relaxed) == u64::from(fd as u32))
        .map(|named| 2 + named)
}

/// Whether descriptor `fd` holds the `/channels` preopen.
pub fn is_channels_directory(fd: i32) -> bool {
    let slot = CHANNELS_DIRECTORY_SLOT.load(Ordering::Relaxed);
    slot != CLOSED && HOLDERS[slot as usize].load(Ordering::Relaxed) == u64::from(fd as u32)
}

/// Opens named channel `path` under the `/channels` preopen `dir`: the new
/// descriptor.
pub fn open_channel(dir: u32, path: &[u8], open_flags: u64, rights: u64) -> Result<u32, Errno> {
    let named = crate::channel::open(path, open_flags, rights).map_err(|e| -e as Errno)?;
    let fd = call(
        FileOp::OpenChannel,
        [u64::from(dir), named as u64, 0, 0, 0, 0, 0, 0],
    )?;
    HOLDERS[NAMED_SLOTS + named].store(fd, Ordering::Relaxed);
    Ok(fd as u32)
}

/// The guest name of the preopen descriptor `fd` holds, if any.
pub fn preopen_name(fd: u32) -> Option<&'static [u8]> {
    let index = slot(fd)
        .filter(|&slot| slot < NAMED_SLOTS)?
        .checked_sub(3)?;
    let len = PREOPENS_LEN.load(Ordering::Relaxed) as usize;
    // SAFETY: the host wrote `len` bytes of names at this address in a region reserved
    // for the cell's whole life that nothing writes afterwards.
    let block =
        unsafe { core::slice::from_raw_parts(PREOPENS.load(Ordering::Relaxed) as *const u8, len) };
    block.split(|&b| b == 0).nth(index)
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

/// Closes descriptor `fd`, whatever it holds.
pub fn close(fd: u32) -> Result<(), Errno> {
    call(FileOp::Close, [u64::from(fd), 0, 0, 0, 0, 0, 0, 0])?;
    if let Some(slot) = slot(fd) {
        release(slot);
    }
    Ok(())
}

/// Marks `slot` as held by no descriptor; a stdio stream joined to a channel, or a
/// named channel, closes its end, as a process's last descriptor of a pipe does.
fn release(slot: usize) {
    HOLDERS[slot].store(CLOSED, Ordering::Relaxed);
    if slot < 2 {
        crate::channel::close(slot);
    } else if slot >= NAMED_SLOTS {
        crate::channel::close(2 + slot - NAMED_SLOTS);
    }
}

/// Moves descriptor `fd` onto `to`, which must be open and is closed first: a stdio
/// stream or preopen moves with its descriptor, as under wasmtime.
pub fn renumber(fd: u32, to: u32) -> Result<(), Errno> {
    call(
        FileOp::Renumber,
        [u64::from(fd), u64::from(to), 0, 0, 0, 0, 0, 0],
    )?;
    if fd != to {
        let moved = slot(fd);
        if let Some(replaced) = slot(to) {
            release(replaced);
        }
        if let Some(moved) = moved {
            HOLDERS[moved].store(u64::from(to), Ordering::Relaxed);
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
