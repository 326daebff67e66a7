//! Buffered stdout/stderr and unbuffered stdin.
//!
//! Output goes into the shared output buffer as `(fd, len, bytes)` records, so the order
//! of stdout and stderr writes survives; the host drains the buffer at every exit (a
//! flush, a read, a sleep, exit, a trap, a fault or a timeout), so nothing written is
//! lost. A write larger than the buffer goes to the host in one hypercall straight from
//! wasm memory. Stdin is read ahead in the same way.

use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use alloc::vec::Vec;
use hypercell_abi::{BootInfo, Hypercall, IoVec, OUTPUT_RECORD_HEADER, OutputBuffer, StdioKind};

static OUTPUT: AtomicU64 = AtomicU64::new(0);
static KINDS: [AtomicU8; 3] = [AtomicU8::new(0), AtomicU8::new(0), AtomicU8::new(0)];
/// Offset of the last record in the buffer, and its fd, so that consecutive writes to
/// one stream extend a single record.
static LAST_RECORD: AtomicU64 = AtomicU64::new(u64::MAX);
static LAST_FD: AtomicU8 = AtomicU8::new(u8::MAX);

pub fn init(boot: &BootInfo) {
    OUTPUT.store(boot.output_addr, Ordering::Relaxed);
    INPUT_AT.store(boot.input_addr, Ordering::Relaxed);
    INPUT_END.store(boot.input_addr + boot.input_len, Ordering::Relaxed);
    for (kind, &raw) in KINDS.iter().zip(boot.stdio_kinds.iter()) {
        kind.store(raw, Ordering::Relaxed);
    }
    // A new identity comes with a new stdin: nothing read ahead of the old one is its.
    // SAFETY: the cell has one thread, and no read is under way while the identity is
    // read, so this is the only reference to the buffer.
    let input = unsafe { &mut *core::ptr::addr_of_mut!(INPUT) };
    input.start = 0;
    input.end = 0;
}

/// Whether stdio stream `stream` (0 stdin, 1 stdout, 2 stderr) is a terminal on the
/// host. Which descriptor holds a stream is [`crate::files`]' business.
pub fn is_terminal(stream: u32) -> bool {
    stream < 3 && KINDS[stream as usize].load(Ordering::Relaxed) == StdioKind::Terminal as u8
}

fn header() -> *mut OutputBuffer {
    OUTPUT.load(Ordering::Relaxed) as *mut OutputBuffer
}

fn data() -> *mut u8 {
    (OUTPUT.load(Ordering::Relaxed) + core::mem::size_of::<OutputBuffer>() as u64) as *mut u8
}

fn used() -> usize {
    // SAFETY: the host placed the output buffer header at this address at boot; the
    // host resets `used` during exits, so it is read afresh each time.
    unsafe { core::ptr::addr_of!((*header()).used).read_volatile() as usize }
}

fn capacity() -> usize {
    // SAFETY: as in `used`.
    unsafe { core::ptr::addr_of!((*header()).capacity).read_volatile() as usize }
}

fn append(fd: u32, bufs: &[&[u8]], total: usize) {
    let mut used = used();
    let data = data();
    let extend = used != 0
        && LAST_FD.load(Ordering::Relaxed) == fd as u8
        && LAST_RECORD.load(Ordering::Relaxed) as usize + OUTPUT_RECORD_HEADER <= used;
    // SAFETY: the caller checked that a header and `total` bytes fit in the buffer's
    // data area (`capacity` bytes at `data`), which only this module writes between
    // exits.
    unsafe {
        if extend {
            let record = data.add(LAST_RECORD.load(Ordering::Relaxed) as usize);
            let len_field = record.add(4).cast::<u32>();
            len_field.write_unaligned(len_field.read_unaligned() + total as u32);
        } else {
            let record = data.add(used);
            record.cast::<u32>().write_unaligned(fd);
            record.add(4).cast::<u32>().write_unaligned(total as u32);
            LAST_RECORD.store(used as u64, Ordering::Relaxed);
            LAST_FD.store(fd as u8, Ordering::Relaxed);
            used += OUTPUT_RECORD_HEADER;
        }
        for buf in bufs {
            core::ptr::copy_nonoverlapping(buf.as_ptr(), data.add(used), buf.len());
            used += buf.len();
        }
        core::ptr::addr_of_mut!((*header()).used).write_volatile(used as u64);
    }
}

/// Marks the buffer as being changed (or no longer), so that the host, which may stop
/// the guest anywhere to take its output, leaves a half-written record alone.
fn set_writing(writing: bool) {
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    // SAFETY: the header lies at the address the host gave at boot; only this thread
    // writes the flag.
    unsafe { core::ptr::addr_of_mut!((*header()).writing).write_volatile(u32::from(writing)) };
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// Writes the buffered output to the host now.
pub fn flush() {
    if used() != 0 {
        crate::hypercall::call(Hypercall::Flush, [0; 6]);
    }
}

/// Takes the errno of the last failed delivery of buffered output to `fd` (1 or 2),
/// if any.
fn take_error(fd: u32) -> Option<i64> {
    // SAFETY: the header lies at the address the host gave at boot; the host writes
    // the error slots only during exits, so this thread alone touches them now.
    unsafe {
        let slot = core::ptr::addr_of_mut!((*header()).errors[fd as usize - 1]);
        let errno = slot.read_volatile();
        if errno == 0 {
            return None;
        }
        slot.write_volatile(0);
        Some(-i64::from(errno))
    }
}

/// Writes `bufs` to stdout (1) or stderr (2); returns the bytes written or an errno.
/// Buffered output that the host could not deliver (a closed pipe, a full disk) fails
/// the next write to the same descriptor with the host's error, as a failed flush
/// does in a C library.
pub fn write(fd: u32, bufs: &[&[u8]]) -> Result<usize, i64> {
    if crate::channel::joined(fd) {
        return crate::channel::write(fd as usize, bufs);
    }
    set_writing(true);
    let written = write_buffered(fd, bufs);
    set_writing(false);
    written
}

fn write_buffered(fd: u32, bufs: &[&[u8]]) -> Result<usize, i64> {
    if let Some(errno) = take_error(fd) {
        return Err(errno);
    }
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let room = capacity().saturating_sub(OUTPUT_RECORD_HEADER);
    if total > room / 2 {
        // Large writes skip the buffer: one exit moves them all, straight from wasm
        // memory (guest-physical addresses equal guest-virtual ones).
        let iovecs: Vec<IoVec> = bufs
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| IoVec {
                addr: b.as_ptr() as u64,
                len: b.len() as u64,
            })
            .collect();
        let n = crate::hypercall::call(
            Hypercall::Write,
            [
                u64::from(fd),
                iovecs.as_ptr() as u64,
                iovecs.len() as u64,
                0,
                0,
                0,
            ],
        );
        return if n < 0 { Err(n) } else { Ok(n as usize) };
    }
    if used() + OUTPUT_RECORD_HEADER + total > capacity() {
        flush();
        if let Some(errno) = take_error(fd) {
            return Err(errno);
        }
    }
    append(fd, bufs, total);
    if is_terminal(fd) && bufs.iter().any(|b| b.contains(&b'\n')) {
        flush();
    }
    Ok(total)
}

/// The unread part of stdin laid in memory by the host (see `BootInfo::input_addr`):
/// from `INPUT_AT` to `INPUT_END`; both 0 when stdin comes from the host.
static INPUT_AT: AtomicU64 = AtomicU64::new(0);
static INPUT_END: AtomicU64 = AtomicU64::new(0);

/// Reads from stdin laid in memory, if it is: the bytes copied (0 at its end).
fn read_laid(bufs: &mut [&mut [u8]]) -> Option<usize> {
    let mut at = INPUT_AT.load(Ordering::Relaxed);
    if at == 0 {
        return None;
    }
    let end = INPUT_END.load(Ordering::Relaxed);
    let mut copied = 0;
    for buf in bufs.iter_mut() {
        let n = buf.len().min((end - at) as usize);
        // SAFETY: the host laid `input_len` bytes at `input_addr` in the identity
        // region, which stays mapped and which nothing else writes; `at..at + n` lies
        // inside them.
        let laid = unsafe { core::slice::from_raw_parts(at as *const u8, n) };
        buf[..n].copy_from_slice(laid);
        at += n as u64;
        copied += n;
    }
    INPUT_AT.store(at, Ordering::Relaxed);
    Some(copied)
}

/// Bytes of stdin read ahead, so that small reads cost no exit.
const INPUT_CAPACITY: usize = 1 << 20;

/// Stdin read ahead of the program: `data[start..end]` is unread.
struct InputBuffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

/// The read-ahead buffer; the cell has one thread, which alone touches it.
static mut INPUT: InputBuffer = InputBuffer {
    data: Vec::new(),
    start: 0,
    end: 0,
};

fn host_read(iovecs: &[IoVec]) -> Result<usize, i64> {
    let n = crate::hypercall::call(
        Hypercall::Read,
        [0, iovecs.as_ptr() as u64, iovecs.len() as u64, 0, 0, 0],
    );
    if n < 0 { Err(n) } else { Ok(n as usize) }
}

/// Reads from stdin into `bufs`; returns the bytes read (0 at the end of input) or an
/// errno. Small reads are served from a read-ahead buffer that one host read fills
/// with whatever is available, up to 1 MiB; large reads go straight into `bufs`. As
/// with a native read, fewer bytes than asked may come back. The host drains pending
/// output before it reads, so prompts appear before input is awaited.
pub fn read(bufs: &mut [&mut [u8]]) -> Result<usize, i64> {
    if crate::channel::joined(0) {
        return crate::channel::read(0, bufs);
    }
    if let Some(copied) = read_laid(bufs) {
        return Ok(copied);
    }
    // SAFETY: the cell has one thread and this function does not re-enter itself, so
    // this is the only reference to the buffer.
    let input = unsafe { &mut *core::ptr::addr_of_mut!(INPUT) };
    let wanted: usize = bufs.iter().map(|b| b.len()).sum();
    if input.start == input.end && wanted >= INPUT_CAPACITY / 2 {
        let iovecs: Vec<IoVec> = bufs
            .iter_mut()
            .filter(|b| !b.is_empty())
            .map(|b| IoVec {
                addr: b.as_mut_ptr() as u64,
                len: b.len() as u64,
            })
            .collect();
        return host_read(&iovecs);
    }
    if input.start == input.end && wanted > 0 {
        // Not zeroed: the host writes the bytes that are then read, and a cell touches
        // only the pages its input reaches (zeroing would copy 1 MiB of a template's
        // memory into every cell).
        input.data.clear();
        input.data.reserve_exact(INPUT_CAPACITY);
        let iovec = [IoVec {
            addr: input.data.as_mut_ptr() as u64,
            len: INPUT_CAPACITY as u64,
        }];
        input.start = 0;
        input.end = 0;
        let read = host_read(&iovec)?.min(INPUT_CAPACITY);
        // SAFETY: the host wrote `read` bytes at the start of the buffer's capacity,
        // as a read system call would.
        unsafe { input.data.set_len(read) };
        input.end = read;
    }
    let mut copied = 0;
    for buf in bufs.iter_mut() {
        let n = buf.len().min(input.end - input.start);
        buf[..n].copy_from_slice(&input.data[input.start..input.start + n]);
        input.start += n;
        copied += n;
    }
    Ok(copied)
}

/// Ends the program with `code`; the host writes out any buffered output.
pub fn exit(code: u32) -> ! {
    crate::clock::mark(crate::clock::Phase::Finished);
    crate::hypercall::call_final(
        Hypercall::Exit,
        [u64::from(code), crate::runtime::denied_growth(), 0, 0, 0, 0],
    )
}
