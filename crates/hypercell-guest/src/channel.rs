//! Stdin and stdout joined to channels, and named channels: rings in memory shared
//! with the neighbouring cells (see `hypercell_abi::channel`). Bytes move with a copy
//! in and a copy out and no exit; a side that must block spins first, since an exit
//! costs far more than the wait for a neighbour that is keeping up.
//!
//! The ends are numbered as the host numbers them: 0 stdin, 1 stdout, 2 + `i` named
//! channel `i`.
//!
//! The peer may be hostile: this side keeps its own index and the capacity in private
//! memory, reads only the peer's index and flags from the header, copies only within
//! the ring, and reports a peer index that makes no sense as a broken channel (`EIO`).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use hypercell_abi::channel::{
    CHANNEL_DATA_OFFSET, CHANNEL_KICK, CHANNEL_POLL, CHANNEL_WAIT, CHANNEL_WINDOW_SIZE,
    MAX_NAMED_CHANNELS,
};
use hypercell_abi::wasi::{errno, oflags, rights};
use hypercell_abi::{BootInfo, ChannelHeader, Hypercall, NamedChannel};

/// How long a side spins for its neighbour before it waits through the host. A wait
/// costs two exits (the wait and its kick), at tens of µs each; the neighbours of a
/// busy pipeline are held up by the host's scheduler for 1-5 ms at times, and a 1 ms
/// spin left four to seven times as many waits as this one.
const SPIN_NS: u64 = 3_000_000;

/// One end of a channel.
struct End {
    /// The shared header; 0 when the cell lacks this end.
    header: AtomicU64,
    /// 1 for a writing end, 0 for a reading end.
    writer: AtomicU32,
    /// This side's index (the reader's tail, the writer's head), kept here rather than
    /// read back from shared memory.
    index: AtomicU64,
    /// Set once the program closed its end.
    closed: AtomicU32,
}

/// Stdin's and stdout's ends, then the named channels'.
pub const ENDS_LEN: usize = 2 + MAX_NAMED_CHANNELS;

static ENDS: [End; ENDS_LEN] = [const {
    End {
        header: AtomicU64::new(0),
        writer: AtomicU32::new(0),
        index: AtomicU64::new(0),
        closed: AtomicU32::new(0),
    }
}; ENDS_LEN];
static CAPACITY: AtomicU64 = AtomicU64::new(0);

/// The named channels' table in the identity region, and how many it holds.
static NAMED: AtomicU64 = AtomicU64::new(0);
static NAMED_COUNT: AtomicU64 = AtomicU64::new(0);

/// Named channels opened since boot: a channel opens once, and closes for good.
static OPENED: AtomicU32 = AtomicU32::new(0);

pub fn init(boot: &BootInfo) {
    // A capacity no host gives (not a power of two, or past the window): the
    // channels stay off.
    let capacity = boot.channel_capacity;
    let usable =
        capacity.is_power_of_two() && CHANNEL_DATA_OFFSET + capacity <= CHANNEL_WINDOW_SIZE;
    CAPACITY.store(if usable { capacity } else { 0 }, Ordering::Relaxed);
    let count = if usable {
        (boot.named_channel_count as usize).min(MAX_NAMED_CHANNELS)
    } else {
        0
    };
    NAMED.store(boot.named_channels_addr, Ordering::Relaxed);
    NAMED_COUNT.store(count as u64, Ordering::Relaxed);
    OPENED.store(0, Ordering::Relaxed);
    for (index, end) in ENDS.iter().enumerate() {
        let (header, writer) = match index {
            0 => (boot.stdin_channel, false),
            1 => (boot.stdout_channel, true),
            _ => named(index - 2).map_or((0, false), |named| (named.header, named.writer != 0)),
        };
        end.header
            .store(if usable { header } else { 0 }, Ordering::Relaxed);
        end.writer.store(u32::from(writer), Ordering::Relaxed);
        end.index.store(0, Ordering::Relaxed);
        end.closed.store(0, Ordering::Relaxed);
    }
}

/// Named channel `i`'s record, if the cell has it.
fn named(i: usize) -> Option<&'static NamedChannel> {
    if i >= NAMED_COUNT.load(Ordering::Relaxed) as usize {
        return None;
    }
    let table = NAMED.load(Ordering::Relaxed) as *const NamedChannel;
    // SAFETY: the host wrote `named_channel_count` records, 8-aligned, at this address
    // in the identity region, which stays mapped and which nothing writes afterwards.
    Some(unsafe { &*table.add(i) })
}

/// Whether stdio stream `stream` is joined to a channel.
pub fn joined(stream: u32) -> bool {
    stream < 2 && ENDS[stream as usize].header.load(Ordering::Relaxed) != 0
}

/// Opens named channel `name` (a path under `/channels`), with `path_open`'s open
/// flags and the rights asked: the index of its named channel, which the caller gives
/// a descriptor. A channel opens once: its end closes with the descriptor.
pub fn open(name: &[u8], open_flags: u64, asked: u64) -> Result<usize, i64> {
    let name = name.strip_prefix(b"./").unwrap_or(name);
    let count = NAMED_COUNT.load(Ordering::Relaxed) as usize;
    let Some(i) = (0..count).find(|&i| named(i).and_then(NamedChannel::name) == Some(name)) else {
        return Err(-i64::from(if open_flags & oflags::CREAT != 0 {
            errno::NOTCAPABLE
        } else {
            errno::NOENT
        }));
    };
    if open_flags & oflags::DIRECTORY != 0 {
        return Err(-i64::from(errno::NOTDIR));
    }
    if open_flags & (oflags::CREAT | oflags::EXCL) == oflags::CREAT | oflags::EXCL {
        return Err(-i64::from(errno::EXIST));
    }
    let wanted = if ENDS[2 + i].writer.load(Ordering::Relaxed) != 0 {
        rights::FD_WRITE
    } else {
        rights::FD_READ
    };
    if asked & wanted == 0 {
        return Err(-i64::from(errno::ACCES));
    }
    if OPENED.fetch_or(1 << i, Ordering::Relaxed) & (1 << i) != 0 {
        return Err(-i64::from(errno::BUSY));
    }
    Ok(i)
}

/// Whether end `end` is one the program reads.
pub fn is_reader(end: usize) -> bool {
    end < ENDS_LEN && ENDS[end].writer.load(Ordering::Relaxed) == 0
}

fn header(end: usize) -> *mut ChannelHeader {
    ENDS[end].header.load(Ordering::Relaxed) as *mut ChannelHeader
}

fn data(end: usize) -> *mut u8 {
    (ENDS[end].header.load(Ordering::Relaxed) + CHANNEL_DATA_OFFSET) as *mut u8
}

/// A word of the shared header, as an atomic.
macro_rules! shared {
    ($end:expr, $field:ident, $ty:ty) => {
        // SAFETY: the host mapped the channel's header at this address for the cell's
        // whole life; its fields are naturally aligned, and another cell writes them
        // only as plain memory, which atomic accesses tolerate.
        unsafe { &*(core::ptr::addr_of_mut!((*header($end)).$field) as *const $ty) }
    };
}

/// Asks the host to wake the peer of end `end` if it said it waits (its flag is
/// cleared here, so that one wait costs one kick).
fn wake_peer(peer_waiting: &AtomicU32, end: usize) {
    if peer_waiting.swap(0, Ordering::SeqCst) != 0 {
        crate::hypercall::call(Hypercall::Channel, [CHANNEL_KICK, end as u64, 0, 0, 0, 0]);
    }
}

/// Waits until the peer's index leaves `observed` or the peer closes: spins a while,
/// then raises `waiting` and waits through the host.
fn block(
    at_end: usize,
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
            [CHANNEL_WAIT, at_end as u64, observed, 0, 0, 0],
        );
        if result < 0 {
            waiting.store(0, Ordering::SeqCst);
            return Err(result);
        }
    }
    waiting.store(0, Ordering::SeqCst);
    Ok(())
}

/// For `poll_oneoff`: `None` when a read of reading end `end` (a write of a writing
/// end) would not block: there are bytes (room), the peer is gone, the program closed
/// the end, or the channel is broken (the call then reports it). Otherwise the peer's
/// index now, which a wait watches.
pub fn pending(end: usize) -> Option<u64> {
    let this = &ENDS[end];
    if this.closed.load(Ordering::Relaxed) != 0 {
        return None;
    }
    let capacity = CAPACITY.load(Ordering::Relaxed);
    let ours = this.index.load(Ordering::Relaxed);
    if this.writer.load(Ordering::Relaxed) == 0 {
        let written = shared!(end, head, AtomicU64).load(Ordering::Acquire);
        let closed = shared!(end, writer_closed, AtomicU32).load(Ordering::SeqCst) != 0;
        (written == ours && !closed).then_some(written)
    } else {
        let read = shared!(end, tail, AtomicU64).load(Ordering::Acquire);
        let closed = shared!(end, reader_closed, AtomicU32).load(Ordering::SeqCst) != 0;
        (ours.wrapping_sub(read) == capacity && !closed).then_some(read)
    }
}

/// For `poll_oneoff`: waits until some end of `ends` is no longer [`pending`], or
/// `timeout_ns` passes (`u64::MAX` for never). Spins first, then raises each end's
/// waiting flag and waits through the host.
pub fn wait_any(ends: &[usize], timeout_ns: u64) -> Result<(), i64> {
    let started = crate::clock::elapsed_ns();
    let spin_until = started.saturating_add(SPIN_NS.min(timeout_ns));
    let any_ready = || ends.iter().any(|&end| pending(end).is_none());
    while crate::clock::elapsed_ns() < spin_until {
        if any_ready() {
            return Ok(());
        }
        core::hint::spin_loop();
    }
    let waiting = |end: usize| {
        if is_reader(end) {
            shared!(end, reader_waiting, AtomicU32)
        } else {
            shared!(end, writer_waiting, AtomicU32)
        }
    };
    for &end in ends {
        waiting(end).store(1, Ordering::SeqCst);
    }
    fence(Ordering::SeqCst);
    let mut list = alloc::vec::Vec::with_capacity(ends.len() * 2);
    let mut blocked = true;
    for &end in ends {
        match pending(end) {
            Some(observed) => list.extend_from_slice(&[end as u64, observed]),
            None => blocked = false,
        }
    }
    let mut result = 0;
    if blocked {
        let left = timeout_ns.saturating_sub(crate::clock::elapsed_ns() - started);
        if left > 0 {
            result = crate::hypercall::call(
                Hypercall::Channel,
                [
                    CHANNEL_POLL,
                    list.as_ptr() as u64,
                    (list.len() / 2) as u64,
                    if timeout_ns == u64::MAX {
                        u64::MAX
                    } else {
                        left
                    },
                    0,
                    0,
                ],
            );
        }
    }
    for &end in ends {
        waiting(end).store(0, Ordering::SeqCst);
    }
    if result < 0 { Err(result) } else { Ok(()) }
}

fn broken() -> i64 {
    -i64::from(errno::IO)
}

/// Reads from reading end `at_end` into `bufs`: the bytes read, at least one unless
/// the writer is gone and the ring empty (end of file), or an errno.
pub fn read(at_end: usize, bufs: &mut [&mut [u8]]) -> Result<usize, i64> {
    let wanted: usize = bufs.iter().map(|b| b.len()).sum();
    let end = &ENDS[at_end];
    if end.writer.load(Ordering::Relaxed) != 0 {
        return Err(-i64::from(errno::BADF));
    }
    if wanted == 0 || end.closed.load(Ordering::Relaxed) != 0 {
        return Ok(0);
    }
    let capacity = CAPACITY.load(Ordering::Relaxed);
    let head = shared!(at_end, head, AtomicU64);
    let tail = shared!(at_end, tail, AtomicU64);
    let writer_closed = shared!(at_end, writer_closed, AtomicU32);
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
                copy_out(at_end, at, capacity, &mut buf[..n]);
                at = at.wrapping_add(n as u64);
                left -= n;
            }
            end.index.store(at, Ordering::Relaxed);
            tail.store(at, Ordering::SeqCst);
            wake_peer(shared!(at_end, writer_waiting, AtomicU32), at_end);
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
            at_end,
            written,
            head,
            writer_closed,
            shared!(at_end, reader_waiting, AtomicU32),
        )?;
    }
}

/// Writes all of `bufs` to writing end `at_end`, waiting for room as it must: the
/// bytes written, or `EPIPE` once the reader is gone (after any bytes, the count so
/// far).
pub fn write(at_end: usize, bufs: &[&[u8]]) -> Result<usize, i64> {
    let end = &ENDS[at_end];
    if end.closed.load(Ordering::Relaxed) != 0 || end.writer.load(Ordering::Relaxed) == 0 {
        return Err(-i64::from(errno::BADF));
    }
    let capacity = CAPACITY.load(Ordering::Relaxed);
    let head = shared!(at_end, head, AtomicU64);
    let tail = shared!(at_end, tail, AtomicU64);
    let reader_closed = shared!(at_end, reader_closed, AtomicU32);
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
                    at_end,
                    read,
                    tail,
                    reader_closed,
                    shared!(at_end, writer_waiting, AtomicU32),
                )?;
                continue;
            }
            let n = room.min(buf.len() - from);
            copy_in(at_end, ours, capacity, &buf[from..from + n]);
            let at = ours.wrapping_add(n as u64);
            end.index.store(at, Ordering::Relaxed);
            head.store(at, Ordering::SeqCst);
            wake_peer(shared!(at_end, reader_waiting, AtomicU32), at_end);
            from += n;
            done += n;
        }
    }
    Ok(done)
}

/// Closes the program's end `end`: the peer reads end of file (or gets `EPIPE`) as
/// when the cell ends.
pub fn close(end: usize) {
    if end >= ENDS_LEN || ENDS[end].header.load(Ordering::Relaxed) == 0 {
        return;
    }
    ENDS[end].closed.store(1, Ordering::Relaxed);
    if ENDS[end].writer.load(Ordering::Relaxed) == 0 {
        shared!(end, reader_closed, AtomicU32).store(1, Ordering::SeqCst);
        wake_peer(shared!(end, writer_waiting, AtomicU32), end);
    } else {
        shared!(end, writer_closed, AtomicU32).store(1, Ordering::SeqCst);
        wake_peer(shared!(end, reader_waiting, AtomicU32), end);
    }
}

/// Copies ring bytes of end `end` from index `at` into `out`, wrapping at the ring's
/// end.
fn copy_out(end: usize, at: u64, capacity: u64, out: &mut [u8]) {
    let offset = (at & (capacity - 1)) as usize;
    let first = out.len().min(capacity as usize - offset);
    let ring = data(end);
    // SAFETY: both pieces lie inside the ring (`offset + first <= capacity`, and the
    // rest, at most `capacity` bytes, from its start), which the host mapped for the
    // cell's whole life; the writer does not touch these bytes until the tail passes
    // them, and a hostile writer that does changes only their values.
    unsafe {
        core::ptr::copy_nonoverlapping(ring.add(offset), out.as_mut_ptr(), first);
        core::ptr::copy_nonoverlapping(ring, out.as_mut_ptr().add(first), out.len() - first);
    }
}

/// Copies `bytes` into the ring of end `end` at index `at`, wrapping at the ring's
/// end.
fn copy_in(end: usize, at: u64, capacity: u64, bytes: &[u8]) {
    let offset = (at & (capacity - 1)) as usize;
    let first = bytes.len().min(capacity as usize - offset);
    let ring = data(end);
    // SAFETY: as in `copy_out`: both pieces lie inside the ring, which the reader does
    // not read until the head passes them.
    unsafe {
        core::ptr::copy_nonoverlapping(bytes.as_ptr(), ring.add(offset), first);
        core::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), ring, bytes.len() - first);
    }
}
