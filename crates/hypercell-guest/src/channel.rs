//! Stdin and stdout joined to channels: rings in memory shared with the neighbouring
//! cells (see `hypercell_abi::channel`). Bytes move with a copy in and a copy out and
//! no exit; a side that must block spins first, since an exit costs far more than the
//! wait for a neighbour that is keeping up.
//!
//! The peer may be hostile: this side keeps its own index and the capacity in private
//! memory, reads only the peer's index and flags from the header, copies only within
//! the ring, and reports a peer index that makes no sense as a broken channel (`EIO`).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use hypercell_abi::channel::{
    CHANNEL_DATA_OFFSET, CHANNEL_KICK, CHANNEL_WAIT, CHANNEL_WINDOW_SIZE,
};
use hypercell_abi::wasi::errno;
use hypercell_abi::{BootInfo, ChannelHeader, Hypercall};

/// How long a side spins for its neighbour before it waits through the host. A wait
/// costs two exits (the wait and its kick), at tens of µs each; the neighbours of a
/// busy pipeline are held up by the host's scheduler for 1-5 ms at times, and a 1 ms
/// spin left four to seven times as many waits as this one.
const SPIN_NS: u64 = 3_000_000;

/// One end of a channel: stream 0 (stdin, the reading end) or 1 (stdout, the writing
/// end).
struct End {
    /// The shared header; 0 when the stream is not a channel.
    header: AtomicU64,
    /// This side's index (the reader's tail, the writer's head), kept here rather than
    /// read back from shared memory.
    index: AtomicU64,
    /// Set once the program closed its end.
    closed: AtomicU32,
}

static ENDS: [End; 2] = [const {
    End {
        header: AtomicU64::new(0),
        index: AtomicU64::new(0),
        closed: AtomicU32::new(0),
    }
}; 2];
static CAPACITY: AtomicU64 = AtomicU64::new(0);

pub fn init(boot: &BootInfo) {
    // A capacity no host gives (not a power of two, or past the window): the
    // channels stay off.
    let capacity = boot.channel_capacity;
    let usable =
        capacity.is_power_of_two() && CHANNEL_DATA_OFFSET + capacity <= CHANNEL_WINDOW_SIZE;
    CAPACITY.store(if usable { capacity } else { 0 }, Ordering::Relaxed);
    for (end, header) in ENDS.iter().zip([boot.stdin_channel, boot.stdout_channel]) {
        end.header
            .store(if usable { header } else { 0 }, Ordering::Relaxed);
        end.index.store(0, Ordering::Relaxed);
        end.closed.store(0, Ordering::Relaxed);
    }
}

/// Whether stdio stream `stream` is joined to a channel.
pub fn joined(stream: u32) -> bool {
    stream < 2 && ENDS[stream as usize].header.load(Ordering::Relaxed) != 0
}

fn header(stream: usize) -> *mut ChannelHeader {
    ENDS[stream].header.load(Ordering::Relaxed) as *mut ChannelHeader
}

fn data(stream: usize) -> *mut u8 {
    (ENDS[stream].header.load(Ordering::Relaxed) + CHANNEL_DATA_OFFSET) as *mut u8
}

/// A word of the shared header, as an atomic.
macro_rules! shared {
    ($stream:expr, $field:ident, $ty:ty) => {
        // SAFETY: the host mapped the channel's header at this address for the cell's
        // whole life; its fields are naturally aligned, and another cell writes them
        // only as plain memory, which atomic accesses tolerate.
        unsafe { &*(core::ptr::addr_of_mut!((*header($stream)).$field) as *const $ty) }
    };
}

/// Asks the host to wake the peer of stream `stream` if it said it waits (its flag
/// is cleared here, so that one wait costs one kick).
fn wake_peer(peer_waiting: &AtomicU32, stream: usize) {
    if peer_waiting.swap(0, Ordering::SeqCst) != 0 {
        crate::hypercall::call(
            Hypercall::Channel,
            [CHANNEL_KICK, stream as u64, 0, 0, 0, 0],
        );
    }
}

/// Waits until the peer's index leaves `observed` or the peer closes: spins a while,
/// then raises `waiting` and waits through the host.
fn block(
    stream: usize,
    observed: u64,
    peer_index: &AtomicU64,
    peer_closed: &AtomicU32,
    waiting: &AtomicU32,
) -> Result<(), i64> {
    let moved =
        || peer_index.load(Ordering::SeqCst) != observed || peer_closed.load(Ordering::SeqCst) != 0;
    let end = crate::clock::elapsed_ns().saturating_add(SPIN_NS);
    while crate::clock::elapsed_ns() < end {
        if moved() {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    waiting.store(1, Ordering::SeqCst);
    fence(Ordering::SeqCst);
    if !moved() {
        let result = crate::hypercall::call(
            Hypercall::Channel,
            [CHANNEL_WAIT, stream as u64, observed, 0, 0, 0],
        );
        if result < 0 {
            waiting.store(0, Ordering::SeqCst);
            return Err(result);
        }
    }
    waiting.store(0, Ordering::SeqCst);
    Ok(())
}

fn broken() -> i64 {
    -i64::from(errno::IO)
}

/// Reads from the stdin channel into `bufs`: the bytes read, at least one unless
/// the writer is gone and the ring empty (end of file), or an errno.
pub fn read(bufs: &mut [&mut [u8]]) -> Result<usize, i64> {
    let wanted: usize = bufs.iter().map(|b| b.len()).sum();
    let end = &ENDS[0];
    if wanted == 0 || end.closed.load(Ordering::Relaxed) != 0 {
        return Ok(0);
    }
    let capacity = CAPACITY.load(Ordering::Relaxed);
    let head = shared!(0, head, AtomicU64);
    let tail = shared!(0, tail, AtomicU64);
    let writer_closed = shared!(0, writer_closed, AtomicU32);
    loop {
        let ours = end.index.load(Ordering::Relaxed);
        let written = head.load(Ordering::Acquire);
        let available = written.wrapping_sub(ours);
        if available > capacity {
            return Err(broken());
        }
        if available > 0 {
            let mut at = ours;
            let mut left = available.min(wanted as u64) as usize;
            for buf in bufs.iter_mut() {
                let n = buf.len().min(left);
                copy_out(at, capacity, &mut buf[..n]);
                at = at.wrapping_add(n as u64);
                left -= n;
            }
            end.index.store(at, Ordering::Relaxed);
            tail.store(at, Ordering::SeqCst);
            wake_peer(shared!(0, writer_waiting, AtomicU32), 0);
            return Ok(at.wrapping_sub(ours) as usize);
        }
        if writer_closed.load(Ordering::SeqCst) != 0 {
            // What the writer wrote before it closed is visible by now.
            if head.load(Ordering::SeqCst) == written {
                return Ok(0);
            }
            continue;
        }
        block(
            0,
            written,
            head,
            writer_closed,
            shared!(0, reader_waiting, AtomicU32),
        )?;
    }
}

/// Writes all of `bufs` to the stdout channel, waiting for room as it must: the bytes
/// written, or `EPIPE` once the reader is gone (after any bytes, the count so far).
pub fn write(bufs: &[&[u8]]) -> Result<usize, i64> {
    let end = &ENDS[1];
    if end.closed.load(Ordering::Relaxed) != 0 {
        return Err(-i64::from(errno::BADF));
    }
    let capacity = CAPACITY.load(Ordering::Relaxed);
    let head = shared!(1, head, AtomicU64);
    let tail = shared!(1, tail, AtomicU64);
    let reader_closed = shared!(1, reader_closed, AtomicU32);
    let mut done = 0;
    for buf in bufs {
        let mut from = 0;
        while from < buf.len() {
            if reader_closed.load(Ordering::SeqCst) != 0 {
                return if done > 0 {
                    Ok(done)
                } else {
                    Err(-i64::from(errno::PIPE))
                };
            }
            let ours = end.index.load(Ordering::Relaxed);
            let read = tail.load(Ordering::Acquire);
            let used = ours.wrapping_sub(read);
            if used > capacity {
                return Err(broken());
            }
            let room = (capacity - used) as usize;
            if room == 0 {
                block(
                    1,
                    read,
                    tail,
                    reader_closed,
                    shared!(1, writer_waiting, AtomicU32),
                )?;
                continue;
            }
            let n = room.min(buf.len() - from);
            copy_in(ours, capacity, &buf[from..from + n]);
            let at = ours.wrapping_add(n as u64);
            end.index.store(at, Ordering::Relaxed);
            head.store(at, Ordering::SeqCst);
            wake_peer(shared!(1, reader_waiting, AtomicU32), 1);
            from += n;
            done += n;
        }
    }
    Ok(done)
}

/// Closes the program's end of stream `stream`: the peer reads end of file (or gets
/// `EPIPE`) as when the cell ends.
pub fn close(stream: u32) {
    if !joined(stream) {
        return;
    }
    let stream = stream as usize;
    ENDS[stream].closed.store(1, Ordering::Relaxed);
    if stream == 0 {
        shared!(0, reader_closed, AtomicU32).store(1, Ordering::SeqCst);
        wake_peer(shared!(0, writer_waiting, AtomicU32), 0);
    } else {
        shared!(1, writer_closed, AtomicU32).store(1, Ordering::SeqCst);
        wake_peer(shared!(1, reader_waiting, AtomicU32), 1);
    }
}

/// Copies ring bytes from index `at` into `out`, wrapping at the ring's end.
fn copy_out(at: u64, capacity: u64, out: &mut [u8]) {
    let offset = (at & (capacity - 1)) as usize;
    let first = out.len().min(capacity as usize - offset);
    let ring = data(0);
    // SAFETY: both pieces lie inside the ring (`offset + first <= capacity`, and the
    // rest, at most `capacity` bytes, from its start), which the host mapped for the
    // cell's whole life; the writer does not touch these bytes until the tail passes
    // them, and a hostile writer that does changes only their values.
    unsafe {
        core::ptr::copy_nonoverlapping(ring.add(offset), out.as_mut_ptr(), first);
        core::ptr::copy_nonoverlapping(ring, out.as_mut_ptr().add(first), out.len() - first);
    }
}

/// Copies `bytes` into the ring at index `at`, wrapping at the ring's end.
fn copy_in(at: u64, capacity: u64, bytes: &[u8]) {
    let offset = (at & (capacity - 1)) as usize;
    let first = bytes.len().min(capacity as usize - offset);
    let ring = data(1);
    // SAFETY: as in `copy_out`: both pieces lie inside the ring, which the reader does
    // not read until the head passes them.
    unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), ring.add(offset), first);
        core::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), ring, bytes.len() - first);
    }
}
