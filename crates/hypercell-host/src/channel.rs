//! Channels: a byte stream from one cell's stdout (or a named channel it writes) to
//! another's stdin (or a named channel it reads) through memory both cells map, so that data moves with no host copy and, while both sides keep
//! up, no exit (see [`hypercell_abi::channel`] for the protocol the guests follow).
//!
//! The host's part is small: it makes the shared memory (a memfd, mapped into each
//! cell's channel window), parks a cell that must block until its peer kicks it or
//! ends, and closes a cell's ends when it ends. It never interprets the ring's bytes
//! (a pipeline's checkpoint copies them whole), and of the header it only compares the
//! peer's index and closed flag with what the waiter saw, so nothing a hostile guest
//! writes there can mislead it.

use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hypercell_abi::ChannelHeader;
use hypercell_abi::channel::{CHANNEL_DATA_OFFSET, MAX_CHANNEL_CAPACITY};
use hypercell_abi::hypercall::RESULT_RESTART;
use hypercell_vmm::{GuestMemory, MemoryError};

use crate::control::CellControl;

/// Bytes of a channel's ring.
pub const CHANNEL_CAPACITY: u64 = MAX_CHANNEL_CAPACITY;

/// Which end of a channel: the writing cell's or the reading cell's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Writer = 0,
    Reader = 1,
}

impl Side {
    fn peer(self) -> Self {
        match self {
            Side::Writer => Side::Reader,
            Side::Reader => Side::Writer,
        }
    }
}

/// What both ends share: the memory and, host-side, each side's doorbell and whether
/// it is gone.
struct Shared {
    memory: OwnedFd,
    header: NonNull<ChannelHeader>,
    len: usize,
    /// Bumped to wake the side it belongs to; futex words.
    doorbells: [AtomicU32; 2],
    /// Set once a side's cell ended (or its end was dropped). The host's own record:
    /// the flags in the header are the guests' to read and anyone's to overwrite.
    closed: [AtomicBool; 2],
}

// SAFETY: the header pointer is the base of a shared mapping this value owns; it is
// only reached through atomics, which any thread may use.
unsafe impl Send for Shared {}
// SAFETY: as for `Send`.
unsafe impl Sync for Shared {}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `channel` with this length and nothing
        // refers to it once the last end is gone.
        unsafe { libc::munmap(self.header.as_ptr().cast(), self.len) };
    }
}

/// One end of a channel, for a cell's stdin or a named channel it reads (the reading
/// end), or its stdout or a named channel it writes (the writing end). Dropping it
/// closes it.
pub struct ChannelEnd {
    shared: Arc<Shared>,
    side: Side,
}

impl std::fmt::Debug for ChannelEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelEnd")
            .field("side", &self.side)
            .finish_non_exhaustive()
    }
}

/// A channel's memory, apart from its ends: holding it closes nothing.
pub struct ChannelMemory {
    shared: Arc<Shared>,
}

impl ChannelMemory {
    /// The channel's header and ring as they are now, to save with the cells it
    /// joins while both are paused (see [`channel_with`]).
    pub fn contents(&self) -> Vec<u8> {
        let mut contents = vec![0u8; self.shared.len];
        // SAFETY: the mapping is `len` bytes that live as long as `shared`; the copy
        // goes through raw pointers, so a byte a cell changes meanwhile changes only
        // what is saved.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.shared.header.as_ptr().cast::<u8>(),
                contents.as_mut_ptr(),
                self.shared.len,
            )
        };
        contents
    }
}

/// Bytes of a channel's memory: its header page and its ring.
pub const CHANNEL_LEN: usize = (CHANNEL_DATA_OFFSET + CHANNEL_CAPACITY) as usize;

/// Makes a channel holding `contents`, a channel's header and ring as
/// [`ChannelEnd::contents`] saved them: its writing end, then its reading end. The
/// contents are the guests' to judge, as any header is.
pub fn channel_with(contents: &[u8]) -> io::Result<(ChannelEnd, ChannelEnd)> {
    if contents.len() != CHANNEL_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "a channel's saved contents are {CHANNEL_LEN} bytes, not {}",
                contents.len()
            ),
        ));
    }
    let (writer, reader) = channel()?;
    // SAFETY: the mapping is CHANNEL_LEN bytes, fresh, and no cell maps it yet.
    unsafe {
        std::ptr::copy_nonoverlapping(
            contents.as_ptr(),
            writer.shared.header.as_ptr().cast::<u8>(),
            CHANNEL_LEN,
        )
    };
    Ok((writer, reader))
}

/// Makes a channel: its writing end, then its reading end.
pub fn channel() -> io::Result<(ChannelEnd, ChannelEnd)> {
    let len = CHANNEL_LEN;
    // SAFETY: the name is a NUL-terminated string; memfd_create only reads it.
    let fd = unsafe { libc::memfd_create(c"hypercell-channel".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create just made this descriptor and nothing else owns it.
    let memory = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate sizes the file the descriptor refers to; it reads no memory.
    if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh shared mapping of the whole file, placed by the kernel: it
    // overlaps nothing, and `Shared` unmaps it when the last end is dropped.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // Backing the ring now costs a few µs a page once; a guest's first touch of
    // memory the host has not backed costs about ten times that.
    // SAFETY: the range is the mapping just made; populating only faults its pages in.
    unsafe { libc::madvise(base, len, libc::MADV_POPULATE_WRITE) };
    let shared = Arc::new(Shared {
        memory,
        header: NonNull::new(base.cast()).expect("mmap does not return null"),
        len,
        doorbells: [AtomicU32::new(0), AtomicU32::new(0)],
        closed: [AtomicBool::new(false), AtomicBool::new(false)],
    });
    Ok((
        ChannelEnd {
            shared: Arc::clone(&shared),
            side: Side::Writer,
        },
        ChannelEnd {
            shared,
            side: Side::Reader,
        },
    ))
}

impl ChannelEnd {
    /// Whether this is the reading end.
    pub fn is_reader(&self) -> bool {
        self.side == Side::Reader
    }

    /// Bytes of the ring.
    pub fn capacity(&self) -> u64 {
        CHANNEL_CAPACITY
    }

    /// The channel's memory, to save what it holds (see [`ChannelMemory`]).
    pub fn memory(&self) -> ChannelMemory {
        ChannelMemory {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Maps the channel's header and ring into `memory` at guest-physical `window`.
    pub(crate) fn map_into(&self, memory: &GuestMemory, window: u64) -> Result<(), MemoryError> {
        memory.map_shared(window, self.shared.len as u64, self.shared.memory.as_fd())
    }

    fn word64(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: the offset is that of a u64 field of the header, which lies at the
        // start of the mapping (page-aligned, so the field is 8-aligned); the mapping
        // lives as long as `shared`, and guests reach it only as plain memory, which
        // atomics tolerate.
        unsafe { &*self.shared.header.as_ptr().cast::<u8>().add(offset).cast() }
    }

    fn word32(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: as in `word64`, for a u32 field.
        unsafe { &*self.shared.header.as_ptr().cast::<u8>().add(offset).cast() }
    }

    /// The index the peer moves: the writer's head for the reader, the reader's tail
    /// for the writer.
    fn peer_index(&self) -> u64 {
        let offset = match self.side {
            Side::Reader => std::mem::offset_of!(ChannelHeader, head),
            Side::Writer => std::mem::offset_of!(ChannelHeader, tail),
        };
        self.word64(offset).load(Ordering::SeqCst)
    }

    /// Whether the peer's program closed its end (or says so in the header).
    fn peer_said_closed(&self) -> bool {
        let flag = match self.side {
            Side::Reader => std::mem::offset_of!(ChannelHeader, writer_closed),
            Side::Writer => std::mem::offset_of!(ChannelHeader, reader_closed),
        };
        self.word32(flag).load(Ordering::SeqCst) != 0
    }

    /// Whether the peer's cell is gone.
    pub fn peer_closed(&self) -> bool {
        self.shared.closed[self.side.peer() as usize].load(Ordering::SeqCst)
    }

    /// On the cell's vCPU thread: blocks until the peer's index differs from
    /// `observed`, the peer closed its end or is gone, or the cell is being stopped (0
    /// for each), or a snapshot abandons the wait ([`RESULT_RESTART`]). A pause parks
    /// the wait.
    pub(crate) fn wait(&self, observed: u64, control: &CellControl) -> i64 {
        wait_any(&[(self, observed)], None, control)
    }

    /// Whether the peer's index differs from `observed`, or the peer closed its end
    /// or is gone.
    fn peer_moved(&self, observed: u64) -> bool {
        self.peer_closed() || self.peer_said_closed() || self.peer_index() != observed
    }

    /// Wakes the peer from a wait.
    pub(crate) fn kick(&self) {
        let doorbell = &self.shared.doorbells[self.side.peer() as usize];
        doorbell.fetch_add(1, Ordering::SeqCst);
        // SAFETY: as in `wait`; a wake reads nothing but the word's address.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                doorbell.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            )
        };
    }

    /// Closes this end, once its cell has ended: the peer reads what is left and
    /// then end of file (a reader), or gets `EPIPE` (a writer). Closing again does
    /// nothing.
    pub fn close(&self) {
        if self.shared.closed[self.side as usize].swap(true, Ordering::SeqCst) {
            return;
        }
        let flag = match self.side {
            Side::Writer => std::mem::offset_of!(ChannelHeader, writer_closed),
            Side::Reader => std::mem::offset_of!(ChannelHeader, reader_closed),
        };
        self.word32(flag).store(1, Ordering::SeqCst);
        self.kick();
    }
}

/// On a cell's vCPU thread, for `poll_oneoff`: blocks until the peer of any end of
/// `waits` moves from the index given with it (see [`ChannelEnd::wait`]), `timeout`
/// passes, or the cell is being stopped (0 for each), or a snapshot abandons the wait
/// ([`RESULT_RESTART`]). A pause parks the wait.
pub(crate) fn wait_any(
    waits: &[(&ChannelEnd, u64)],
    timeout: Option<Duration>,
    control: &CellControl,
) -> i64 {
    let deadline = timeout.and_then(|timeout| Instant::now().checked_add(timeout));
    loop {
        // Asked before each sleep, not only when a kick interrupts one: a kick that
        // lands while this thread is awake is not lost.
        if control.stop_requested().is_some() {
            return 0;
        }
        if control.park_in_call(true) {
            return RESULT_RESTART;
        }
        // The doorbells are read before the conditions: a kick after the check
        // changes one, and the wait then does not sleep.
        let rung: Vec<FutexWait> = waits
            .iter()
            .map(|(end, _)| {
                let doorbell = &end.shared.doorbells[end.side as usize];
                FutexWait {
                    value: u64::from(doorbell.load(Ordering::SeqCst)),
                    address: doorbell.as_ptr() as u64,
                    flags: FUTEX2_SIZE_U32 | FUTEX2_PRIVATE,
                    reserved: 0,
                }
            })
            .collect();
        if waits
            .iter()
            .any(|(end, observed)| end.peer_moved(*observed))
        {
            return 0;
        }
        let left = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return 0;
                }
                Some(left)
            }
            None => None,
        };
        // Woken, interrupted by a kick from the cell's supervisor (to stop, to
        // pause), or a doorbell had rung already: the loop looks again.
        futex_wait_any(&rung, left);
    }
}

/// One futex of a `futex_waitv` call, as the kernel lays it out.
#[repr(C)]
struct FutexWait {
    value: u64,
    address: u64,
    flags: u32,
    reserved: u32,
}

const FUTEX2_SIZE_U32: u32 = 0x02;
const FUTEX2_PRIVATE: u32 = 128;

/// Sleeps until any of `futexes` is woken or no longer holds its value, `left`
/// passes, or a signal interrupts.
fn futex_wait_any(futexes: &[FutexWait], left: Option<Duration>) {
    // The kernel takes an absolute time; a timeout too long to represent is none.
    let until = left.and_then(|left| {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec into `now`.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let nanos = now.tv_nsec as u64 + u64::from(left.subsec_nanos());
        let secs = (now.tv_sec as u64)
            .checked_add(left.as_secs())?
            .checked_add(nanos / 1_000_000_000)?;
        Some(libc::timespec {
            tv_sec: libc::time_t::try_from(secs).ok()?,
            tv_nsec: (nanos % 1_000_000_000) as libc::c_long,
        })
    });
    let until_ptr = until
        .as_ref()
        .map_or(std::ptr::null(), |until| until as *const libc::timespec);
    // SAFETY: `futexes` is a live array of `len` futex_waitv records whose addresses
    // are aligned u32 doorbells that the ends keep alive for the call; the kernel only
    // reads them and the optional timeout.
    unsafe {
        libc::syscall(
            libc::SYS_futex_waitv,
            futexes.as_ptr(),
            futexes.len() as libc::c_uint,
            0 as libc::c_uint,
            until_ptr,
            libc::CLOCK_MONOTONIC,
        )
    };
}

impl Drop for ChannelEnd {
    fn drop(&mut self) {
        self.close();
    }
}

/// A named channel's end that a cell is granted: the program opens it as
/// `/channels/NAME` (see [`hypercell_abi::channel`]).
#[derive(Debug)]
pub struct NamedChannelEnd {
    /// The name, which [`hypercell_abi::channel::is_channel_name`] accepts.
    pub name: String,
    /// The end: the cell reads the channel through a reading end, writes it through a
    /// writing end.
    pub end: ChannelEnd,
}

/// The channels a cell is joined to: its stdin, its stdout and its named channels.
#[derive(Clone, Copy, Debug, Default)]
pub struct CellChannels<'a> {
    /// The reading end of the channel that is the cell's stdin.
    pub stdin: Option<&'a ChannelEnd>,
    /// The writing end of the channel that is the cell's stdout.
    pub stdout: Option<&'a ChannelEnd>,
    /// The named channels the cell is granted, in the order the guest numbers them.
    pub named: &'a [NamedChannelEnd],
}

impl<'a> CellChannels<'a> {
    /// Whether the cell has any channel.
    pub fn any(&self) -> bool {
        self.stdin.is_some() || self.stdout.is_some() || !self.named.is_empty()
    }

    /// The end for stdio stream `stream` (0 stdin, 1 stdout).
    pub fn stdio(&self, stream: u64) -> Option<&'a ChannelEnd> {
        match stream {
            0 => self.stdin,
            1 => self.stdout,
            _ => None,
        }
    }

    /// The end the guest numbers `index`: 0 stdin, 1 stdout, 2 + `i` named channel
    /// `i`.
    pub fn end(&self, index: u64) -> Option<&'a ChannelEnd> {
        match index {
            0 | 1 => self.stdio(index),
            _ => {
                let named = usize::try_from(index - 2).ok()?;
                self.named.get(named).map(|named| &named.end)
            }
        }
    }

    /// Every end, stdio's first.
    pub fn ends(&self) -> impl Iterator<Item = &'a ChannelEnd> + 'a {
        let named = self.named;
        [self.stdin, self.stdout]
            .into_iter()
            .flatten()
            .chain(named.iter().map(|named| &named.end))
    }
}

/// The channel ends a cell owns for its run (see [`crate::Cell::start_joined`]).
#[derive(Debug, Default)]
pub struct OwnedChannels {
    /// The reading end of the channel that is the cell's stdin.
    pub stdin: Option<ChannelEnd>,
    /// The writing end of the channel that is the cell's stdout.
    pub stdout: Option<ChannelEnd>,
    /// The named channels the cell is granted.
    pub named: Vec<NamedChannelEnd>,
}

impl OwnedChannels {
    /// The ends, borrowed for a run.
    pub fn borrowed(&self) -> CellChannels<'_> {
        CellChannels {
            stdin: self.stdin.as_ref(),
            stdout: self.stdout.as_ref(),
            named: &self.named,
        }
    }

    /// Whether it holds no end.
    pub fn is_empty(&self) -> bool {
        !self.borrowed().any()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_an_end_wakes_and_tells_its_peer() {
        let (writer, reader) = channel().unwrap();
        assert!(reader.is_reader() && !writer.is_reader());
        let control = CellControl::new();
        std::thread::scope(|scope| {
            let waiting = scope.spawn(|| reader.wait(0, &control));
            writer.close();
            assert_eq!(waiting.join().unwrap(), 0);
        });
        assert!(reader.peer_closed());
        assert_eq!(
            reader
                .word32(std::mem::offset_of!(ChannelHeader, writer_closed))
                .load(Ordering::SeqCst),
            1
        );
        assert!(!writer.peer_closed());
        drop(reader);
        assert!(writer.peer_closed());
    }

    #[test]
    fn a_channel_made_with_saved_contents_holds_them() {
        let (writer, _reader) = channel().unwrap();
        writer
            .word64(std::mem::offset_of!(ChannelHeader, head))
            .store(77, Ordering::SeqCst);
        let saved = writer.memory().contents();
        assert_eq!(saved.len(), CHANNEL_LEN);
        let (again, reader) = channel_with(&saved).unwrap();
        assert_eq!(again.memory().contents(), saved);
        assert_eq!(reader.peer_index(), 77);
        assert!(channel_with(&saved[1..]).is_err());
    }

    #[test]
    fn a_wait_on_several_ends_wakes_for_any_of_them_or_its_timeout() {
        let (quiet_writer, quiet) = channel().unwrap();
        let (writer, reader) = channel().unwrap();
        let control = CellControl::new();
        let waits = [(&quiet, 0), (&reader, 0)];
        let started = Instant::now();
        assert_eq!(
            wait_any(&waits, Some(Duration::from_millis(20)), &control),
            0
        );
        assert!(started.elapsed() >= Duration::from_millis(20));
        std::thread::scope(|scope| {
            let waiting = scope.spawn(|| wait_any(&waits, None, &control));
            writer
                .word64(std::mem::offset_of!(ChannelHeader, head))
                .store(1, Ordering::SeqCst);
            writer.kick();
            assert_eq!(waiting.join().unwrap(), 0);
        });
        assert!(reader.peer_moved(0) && !quiet.peer_moved(0));
        drop(quiet_writer);
        assert!(quiet.peer_moved(0));
    }

    #[test]
    fn a_wait_ends_when_the_peer_moves_and_is_kicked() {
        let (writer, reader) = channel().unwrap();
        let control = CellControl::new();
        std::thread::scope(|scope| {
            let waiting = scope.spawn(|| writer.wait(0, &control));
            reader
                .word64(std::mem::offset_of!(ChannelHeader, tail))
                .store(4096, Ordering::SeqCst);
            reader.kick();
            assert_eq!(waiting.join().unwrap(), 0);
        });
        // A wait on an index the peer has already left returns at once.
        assert_eq!(writer.wait(0, &control), 0);
    }
}
