//! WASI preview1 for the program, served inside the cell where it can be.
//!
//! Arguments, the environment, clocks and random numbers never leave the cell. Stdio
//! goes through [`crate::stdio`], wherever `fd_renumber` has moved it; calls on other
//! descriptors go to the host's file table through [`crate::files`], which answers
//! `badf` for a number that is not open (or that holds stdio, for calls stdio does not
//! take), as wasmtime does. A call into a component the cell was not given answers
//! `notcapable` (the table in `hypercell_abi::wasi` says which each call needs).

use core::ops::Range;
use core::sync::atomic::{AtomicU32, Ordering};

use alloc::vec::Vec;
use hypercell_abi::wasi::WASI_PREVIEW1 as WASI;
use hypercell_abi::wasi::{filetype, rights};
use hypercell_abi::{BootInfo, Components, FileOp, Needs};
use wasmtime::{Caller, Extern, Linker};

use crate::files::{self, Linear};
use crate::runtime::GrowthLimiter;
use crate::{clock, random, stdio};

type Errno = i32;

/// WASI errno values used here, as this module's `i32`s.
mod errno {
    use hypercell_abi::wasi::errno as abi;

    pub const BADF: i32 = abi::BADF as i32;
    pub const INVAL: i32 = abi::INVAL as i32;
    pub const NAMETOOLONG: i32 = abi::NAMETOOLONG as i32;
    pub const NOSYS: i32 = abi::NOSYS as i32;
    pub const NOTCAPABLE: i32 = abi::NOTCAPABLE as i32;
    pub const NOTDIR: i32 = abi::NOTDIR as i32;
    pub const NOTSOCK: i32 = abi::NOTSOCK as i32;
    pub const NOTSUP: i32 = abi::NOTSUP as i32;
    pub const SPIPE: i32 = abi::SPIPE as i32;
}

/// Per-store state: the growth limiter and the boot-time argument and environment
/// blocks.
pub struct CellState {
    pub limiter: GrowthLimiter,
    args: StringBlock,
    env: StringBlock,
}

/// NUL-terminated strings back to back in guest memory, as the host laid them out.
struct StringBlock {
    bytes: &'static [u8],
    count: u32,
}

impl StringBlock {
    fn new(addr: u64, len: u64, count: u64) -> Self {
        let bytes = if len == 0 {
            &[][..]
        } else {
            // SAFETY: the host wrote `len` bytes at `addr` in a region reserved for the
            // cell's whole life that nothing writes afterwards.
            unsafe { core::slice::from_raw_parts(addr as *const u8, len as usize) }
        };
        Self {
            bytes,
            count: count as u32,
        }
    }

    fn sizes(&self, mem: &mut Mem<'_>, count_ptr: i32, size_ptr: i32) -> Result<(), Errno> {
        mem.write_u32(count_ptr, self.count)?;
        mem.write_u32(size_ptr, self.bytes.len() as u32)
    }

    fn get(&self, mem: &mut Mem<'_>, ptrs: i32, buf: i32) -> Result<(), Errno> {
        mem.get_mut(buf, self.bytes.len() as u32)?
            .copy_from_slice(self.bytes);
        let mut offset = 0u32;
        for (i, string) in self.bytes.split_inclusive(|&b| b == 0).enumerate() {
            mem.write_u32(
                ptrs.wrapping_add(4 * i as i32),
                (buf as u32).wrapping_add(offset),
            )?;
            offset += string.len() as u32;
        }
        Ok(())
    }
}

/// The components the cell is given, as [`BootInfo::components`] says.
static GRANTED: AtomicU32 = AtomicU32::new(0);

fn granted() -> Components {
    Components(GRANTED.load(Ordering::Relaxed))
}

/// What a call with these needs, whose first parameter is `first`, may do: `Ok`, or
/// `notcapable` when the cell lacks the component. Components no cell can be given
/// (sockets) are left to the call's own answer, as wasmtime's.
fn check(needs: Needs, first: i64) -> Result<(), Errno> {
    let needed = match needs {
        Needs::Nothing | Needs::Poll => return Ok(()),
        Needs::Component(component) => component,
        Needs::Descriptor if files::stream(first as i32).is_some() => Components::STDIO,
        Needs::Descriptor if files::channel_end(first as i32).is_some() => Components::CHANNELS,
        Needs::Descriptor | Needs::Directory if files::is_channels_directory(first as i32) => {
            Components::CHANNELS
        }
        Needs::Descriptor | Needs::Directory => Components::FS,
    };
    if needed.known() == Components::NONE || granted().contains(needed) {
        Ok(())
    } else {
        Err(errno::NOTCAPABLE)
    }
}

/// What the preview1 function `name` needs (every function this module defines is in
/// the table).
fn needs_of(name: &str) -> Needs {
    hypercell_abi::wasi::wasi_function(name).map_or(Needs::Nothing, |function| function.3)
}

impl CellState {
    pub fn new(boot: &BootInfo, limiter: GrowthLimiter) -> Self {
        GRANTED.store(boot.components, Ordering::Relaxed);
        Self {
            limiter,
            args: StringBlock::new(boot.args_addr, boot.args_len, boot.argc),
            env: StringBlock::new(boot.env_addr, boot.env_len, boot.envc),
        }
    }

    /// Takes the arguments and environment of `boot`, for a cell started from a
    /// template, whose host wrote its own.
    pub fn reidentify(&mut self, boot: &BootInfo) {
        GRANTED.store(boot.components, Ordering::Relaxed);
        self.args = StringBlock::new(boot.args_addr, boot.args_len, boot.argc);
        self.env = StringBlock::new(boot.env_addr, boot.env_len, boot.envc);
    }
}

/// The program's linear memory, with wasmtime's rules for WASI pointers: one outside
/// the memory or misaligned for its type ends the program.
struct Mem<'a>(&'a mut [u8]);

impl Mem<'_> {
    /// The memory's guest-physical placement, for file calls.
    fn linear(&self) -> Linear {
        Linear {
            base: self.0.as_ptr() as u64,
            len: self.0.len(),
        }
    }

    /// The guest-physical address of `len` bytes at `ptr`, checked.
    fn addr(&self, ptr: i32, len: u32) -> Result<u64, Errno> {
        let range = self.range(ptr, len)?;
        Ok(self.linear().addr(range))
    }

    /// The guest-physical address of a `len`-byte structure at `ptr`, checked for
    /// bounds and for the structure's alignment.
    fn addr_aligned(&self, ptr: i32, len: u32, align: u32) -> Result<u64, Errno> {
        let addr = self.addr(ptr, len)?;
        aligned(ptr, align)?;
        Ok(addr)
    }

    fn range(&self, ptr: i32, len: u32) -> Result<Range<usize>, Errno> {
        let start = ptr as u32 as usize;
        let end = start.checked_add(len as usize).ok_or(OUT_OF_BOUNDS)?;
        if end > self.0.len() {
            return Err(OUT_OF_BOUNDS);
        }
        Ok(start..end)
    }

    fn get(&self, ptr: i32, len: u32) -> Result<&[u8], Errno> {
        let range = self.range(ptr, len)?;
        Ok(&self.0[range])
    }

    fn get_mut(&mut self, ptr: i32, len: u32) -> Result<&mut [u8], Errno> {
        let range = self.range(ptr, len)?;
        Ok(&mut self.0[range])
    }

    fn read<const N: usize>(&self, ptr: i32) -> Result<[u8; N], Errno> {
        Ok(self.get(ptr, N as u32)?.try_into().expect("length checked"))
    }

    fn read_u32(&self, ptr: i32) -> Result<u32, Errno> {
        let bytes = self.read(ptr)?;
        aligned(ptr, 4)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn write(&mut self, ptr: i32, bytes: &[u8]) -> Result<(), Errno> {
        self.get_mut(ptr, bytes.len() as u32)?
            .copy_from_slice(bytes);
        Ok(())
    }

    /// Writes a structure that must be aligned to `align`.
    fn write_aligned(&mut self, ptr: i32, bytes: &[u8], align: u32) -> Result<(), Errno> {
        // Bounds first, then alignment, in wasmtime's order.
        let range = self.range(ptr, bytes.len() as u32)?;
        aligned(ptr, align)?;
        self.0[range].copy_from_slice(bytes);
        Ok(())
    }

    fn write_u32(&mut self, ptr: i32, value: u32) -> Result<(), Errno> {
        self.write_aligned(ptr, &value.to_le_bytes(), 4)
    }

    fn write_u64(&mut self, ptr: i32, value: u64) -> Result<(), Errno> {
        self.write_aligned(ptr, &value.to_le_bytes(), 8)
    }

    /// The ranges of a WASI iovec array (`{ buf: u32, len: u32 }` elements).
    fn iovecs(&self, iovs: i32, count: i32) -> Result<Vec<Range<usize>>, Errno> {
        (0..count as u32)
            .map(|i| {
                let at = iovs.wrapping_add((8 * i) as i32);
                self.range(
                    self.read_u32(at)? as i32,
                    self.read_u32(at.wrapping_add(4))?,
                )
            })
            .collect()
    }
}

/// A pointer or buffer that runs outside linear memory. wasmtime ends the program for
/// one rather than answering `fault`, so [`with_mem`] does too.
const OUT_OF_BOUNDS: Errno = -1;

/// A pointer not aligned to its WASI type, as the negated alignment (2, 4 or 8); ends
/// the program like [`OUT_OF_BOUNDS`].
fn aligned(ptr: i32, align: u32) -> Result<(), Errno> {
    if (ptr as u32).is_multiple_of(align) {
        Ok(())
    } else {
        Err(-(align as Errno))
    }
}

/// Runs `f` over the caller's exported memory and state; turns its result into an
/// errno. A module without an exported `memory`, or a misaligned pointer, ends the
/// program, as under wasmtime.
fn with_mem(
    caller: &mut Caller<'_, CellState>,
    f: impl FnOnce(&mut Mem<'_>, &mut CellState) -> Result<(), Errno>,
) -> wasmtime::Result<i32> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        wasmtime::bail!("the module calls WASI but exports no memory named `memory`");
    };
    let (data, state) = memory.data_and_store_mut(caller);
    match f(&mut Mem(data), state) {
        Ok(()) => Ok(0),
        Err(OUT_OF_BOUNDS) => wasmtime::bail!("pointer out of bounds"),
        Err(align) if align < 0 => wasmtime::bail!("pointer not aligned to {}", -align),
        Err(errno) => Ok(errno),
    }
}

/// The file type of host descriptor `fd` (`badf` if it is not an open file or
/// directory): one exit.
fn host_filetype(fd: i32) -> Result<u8, Errno> {
    let mut fdstat = [0u8; 24];
    let params = [
        fd as u32 as u64,
        fdstat.as_mut_ptr() as u64,
        0,
        0,
        0,
        0,
        0,
        0,
    ];
    files::call(FileOp::FdstatGet, params)?;
    Ok(fdstat[0])
}

/// `answer` for a call on any open descriptor, `badf` for one that is not open: for
/// calls that no descriptor of a cell supports (sockets).
fn answer_if_open(fd: i32, answer: Errno) -> Result<(), Errno> {
    if files::stream(fd).is_none() {
        host_filetype(fd)?;
    }
    Err(answer)
}

/// A call that a stdio stream refuses with `errno` (or, for stdin, `stdin_errno`).
fn stream_refuses(stream: u32, stdin_errno: Errno, errno: Errno) -> Result<(), Errno> {
    Err(if stream == 0 { stdin_errno } else { errno })
}

/// `fd_read`, `fd_write`, `fd_pread` and `fd_pwrite` on a file: one exit.
fn file_transfer(
    mem: &mut Mem<'_>,
    op: FileOp,
    fd: i32,
    iovs: i32,
    count: i32,
    offset: u64,
    out: i32,
) -> Result<(), Errno> {
    let fd = u64::from(fd as u32);
    let ranges = mem.iovecs(iovs, count)?;
    let list = mem.linear().iovecs(&ranges);
    let moved = files::call(
        op,
        [
            fd,
            list.as_ptr() as u64,
            list.len() as u64,
            offset,
            0,
            0,
            0,
            0,
        ],
    )?;
    mem.write_u32(out, moved as u32)
}

fn fd_write(mem: &mut Mem<'_>, fd: i32, iovs: i32, count: i32, out: i32) -> Result<(), Errno> {
    let channel = files::channel_end(fd);
    let stream = files::stream(fd);
    if stream.is_none() && channel.is_none() {
        return file_transfer(mem, FileOp::Write, fd, iovs, count, 0, out);
    }
    if stream == Some(0) {
        return Err(errno::BADF);
    }
    let ranges = mem.iovecs(iovs, count)?;
    let bufs: Vec<&[u8]> = ranges.iter().map(|r| &mem.0[r.clone()]).collect();
    let written = match (channel, stream) {
        (Some(end), _) => crate::channel::write(end, &bufs),
        (None, Some(stream)) => stdio::write(stream, &bufs),
        (None, None) => unreachable!("files are written above"),
    }
    .map_err(|e| -e as Errno)?;
    mem.write_u32(out, written as u32)
}

fn fd_read(mem: &mut Mem<'_>, fd: i32, iovs: i32, count: i32, out: i32) -> Result<(), Errno> {
    let channel = files::channel_end(fd);
    let stream = files::stream(fd);
    if stream.is_none() && channel.is_none() {
        return file_transfer(mem, FileOp::Read, fd, iovs, count, 0, out);
    }
    if stream.is_some_and(|stream| stream != 0) {
        return Err(errno::BADF);
    }
    let read_into = |bufs: &mut [&mut [u8]]| match channel {
        Some(end) => crate::channel::read(end, bufs),
        None => stdio::read(bufs),
    };
    let ranges = mem.iovecs(iovs, count)?;
    // Borrow each iovec's bytes mutably at once: split the memory in address order,
    // then hand the buffers over in the program's order, which decides where the
    // bytes go. Overlapping iovecs, which no real program passes, get a read into the
    // first one only.
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i].start);
    let disjoint = order
        .windows(2)
        .all(|w| ranges[w[0]].end <= ranges[w[1]].start);
    let read = if disjoint {
        let mut slots: Vec<Option<&mut [u8]>> = ranges.iter().map(|_| None).collect();
        let mut rest: &mut [u8] = mem.0;
        let mut offset = 0;
        for &i in &order {
            let (_, tail) = core::mem::take(&mut rest).split_at_mut(ranges[i].start - offset);
            let (buf, tail) = tail.split_at_mut(ranges[i].len());
            slots[i] = Some(buf);
            rest = tail;
            offset = ranges[i].end;
        }
        let mut bufs: Vec<&mut [u8]> = slots.into_iter().flatten().collect();
        read_into(&mut bufs)
    } else {
        read_into(&mut [&mut mem.0[ranges[0].clone()]])
    }
    .map_err(|e| -e as Errno)?;
    mem.write_u32(out, read as u32)
}

/// The file type wasmtime reports for a stdio stream: a character device for a
/// terminal, else unknown (a pipe or a file alike).
fn stream_filetype(stream: u32) -> u8 {
    if stdio::is_terminal(stream) {
        filetype::CHARACTER_DEVICE
    } else {
        filetype::UNKNOWN
    }
}

fn fd_fdstat_get(mem: &mut Mem<'_>, fd: i32, out: i32) -> Result<(), Errno> {
    let Some(stream) = files::stream(fd) else {
        let out = mem.addr_aligned(out, 24, 8)?;
        return files::call(
            FileOp::FdstatGet,
            [u64::from(fd as u32), out, 0, 0, 0, 0, 0, 0],
        )
        .map(|_| ());
    };
    let rights = if stream == 0 {
        rights::FD_READ
    } else {
        rights::FD_WRITE
    };
    let mut stat = [0u8; 24];
    stat[0] = stream_filetype(stream);
    // Base and inheriting rights are the same, as wasmtime reports them for stdio.
    stat[8..16].copy_from_slice(&rights.to_le_bytes());
    stat[16..24].copy_from_slice(&rights.to_le_bytes());
    mem.write_aligned(out, &stat, 8)
}

/// `fd_filestat_get`. For stdio, wasmtime reports only the file type, with every
/// other field 0, whatever the stream is on the host.
fn fd_filestat_get(mem: &mut Mem<'_>, fd: i32, out: i32) -> Result<(), Errno> {
    let Some(stream) = files::stream(fd) else {
        let out = mem.addr_aligned(out, 64, 8)?;
        return files::call(
            FileOp::FilestatGet,
            [u64::from(fd as u32), out, 0, 0, 0, 0, 0, 0],
        )
        .map(|_| ());
    };
    let mut stat = [0u8; 64];
    stat[16] = stream_filetype(stream);
    mem.write_aligned(out, &stat, 8)
}

/// Refuses a clock id that is not one of WASI's four, as wasmtime does.
fn check_clock(id: i32) -> wasmtime::Result<()> {
    if clock::now(id as u32).is_none() {
        wasmtime::bail!("invalid enum value Clockid");
    }
    Ok(())
}

fn clock_time_get(mem: &mut Mem<'_>, id: i32, out: i32) -> Result<(), Errno> {
    let now = clock::now(id as u32).ok_or(errno::INVAL)?;
    mem.write_u64(out, now)
}

fn clock_res_get(mem: &mut Mem<'_>, id: i32, out: i32) -> Result<(), Errno> {
    let resolution = clock::resolution(id as u32).ok_or(errno::INVAL)?;
    mem.write_u64(out, resolution)
}

fn random_get(mem: &mut Mem<'_>, buf: i32, len: i32) -> Result<(), Errno> {
    random::fill(mem.get_mut(buf, len as u32)?);
    Ok(())
}

const SUBSCRIPTION_SIZE: i32 = 48;
const EVENT_SIZE: i32 = 32;
const EVENTTYPE_CLOCK: u8 = 0;
const EVENTTYPE_FD_READ: u8 = 1;
const EVENTTYPE_FD_WRITE: u8 = 2;
const SUBCLOCKFLAG_ABSTIME: u16 = 1;

/// One `poll_oneoff` event, before it is written out.
struct Event {
    userdata: u64,
    error: Errno,
    kind: u8,
}

/// `poll_oneoff`: stdio and files are always ready (stdin blocks in `fd_read`);
/// channels (named ones, and stdio joined to one) are ready when a read or write would
/// not block. Clock subscriptions wait, in the cell when short, else through one sleep
/// hypercall; a wait for channels spins, then waits through the host on all of them.
fn poll_oneoff(
    mem: &mut Mem<'_>,
    subs: i32,
    events: i32,
    count: i32,
    out: i32,
) -> Result<(), Errno> {
    if count <= 0 {
        return Err(errno::INVAL);
    }
    let mut ready = Vec::new();
    // (userdata, nanoseconds from now until the deadline)
    let mut timers = Vec::new();
    // (userdata, kind, channel end)
    let mut channels = Vec::new();
    for i in 0..count {
        let at = subs.wrapping_add(i.wrapping_mul(SUBSCRIPTION_SIZE));
        let sub: [u8; 48] = mem.read(at)?;
        aligned(at, 8)?;
        let userdata = u64::from_le_bytes(sub[0..8].try_into().expect("8 bytes"));
        let kind = sub[8];
        let word = u32::from_le_bytes(sub[16..20].try_into().expect("4 bytes"));
        match kind {
            EVENTTYPE_CLOCK => {
                check(Needs::Component(Components::CLOCKS), 0)?;
                let timeout = u64::from_le_bytes(sub[24..32].try_into().expect("8 bytes"));
                let flags = u16::from_le_bytes(sub[40..42].try_into().expect("2 bytes"));
                match clock::now(word) {
                    None => ready.push(Event {
                        userdata,
                        error: errno::INVAL,
                        kind,
                    }),
                    Some(now) if flags & SUBCLOCKFLAG_ABSTIME != 0 => {
                        timers.push((userdata, timeout.saturating_sub(now)))
                    }
                    Some(_) => timers.push((userdata, timeout)),
                }
            }
            EVENTTYPE_FD_READ | EVENTTYPE_FD_WRITE => {
                if let Err(error) = check(Needs::Descriptor, i64::from(word as i32)) {
                    ready.push(Event {
                        userdata,
                        error,
                        kind,
                    });
                    continue;
                }
                let wants_read = kind == EVENTTYPE_FD_READ;
                let end = files::channel_end(word as i32).or_else(|| {
                    files::stream(word as i32)
                        .filter(|&stream| stream < 2 && crate::channel::joined(stream))
                        .map(|stream| stream as usize)
                });
                if let Some(end) = end {
                    if crate::channel::is_reader(end) == wants_read {
                        channels.push((userdata, kind, end));
                    } else {
                        ready.push(Event {
                            userdata,
                            error: errno::BADF,
                            kind,
                        });
                    }
                    continue;
                }
                let Some(stream) = files::stream(word as i32) else {
                    // Files are always ready, reported as wasmtime does (one byte). A
                    // descriptor that is not open fails the whole call, as under
                    // wasmtime.
                    host_filetype(word as i32)?;
                    ready.push(Event {
                        userdata,
                        error: 0,
                        kind,
                    });
                    continue;
                };
                let error = if (stream == 0) == wants_read {
                    0
                } else {
                    errno::BADF
                };
                ready.push(Event {
                    userdata,
                    error,
                    kind,
                });
            }
            _ => return Err(errno::INVAL),
        }
    }
    let started = clock::elapsed_ns();
    let mut ends: Vec<usize> = channels.iter().map(|&(_, _, end)| end).collect();
    ends.sort_unstable();
    ends.dedup();
    while !channels.is_empty() {
        ready.extend(
            channels
                .iter()
                .filter(|&&(_, _, end)| crate::channel::pending(end).is_none())
                .map(|&(userdata, kind, _)| Event {
                    userdata,
                    error: 0,
                    kind,
                }),
        );
        let waited = clock::elapsed_ns() - started;
        let due = timers.iter().map(|&(_, ns)| ns).min();
        if !ready.is_empty() || due.is_some_and(|due| due <= waited) {
            ready.extend(
                timers
                    .iter()
                    .filter(|&&(_, ns)| ns <= waited)
                    .map(|&(userdata, _)| Event {
                        userdata,
                        error: 0,
                        kind: EVENTTYPE_CLOCK,
                    }),
            );
            break;
        }
        stdio::flush();
        let timeout = due.map_or(u64::MAX, |due| due - waited);
        crate::channel::wait_any(&ends, timeout).map_err(|e| -e as Errno)?;
    }
    if ready.is_empty() {
        let wait = timers.iter().map(|&(_, ns)| ns).min().unwrap_or(0);
        stdio::flush();
        clock::sleep(wait);
        ready.extend(
            timers
                .iter()
                .filter(|&&(_, ns)| ns <= wait)
                .map(|&(userdata, _)| Event {
                    userdata,
                    error: 0,
                    kind: EVENTTYPE_CLOCK,
                }),
        );
    }
    for (i, event) in ready.iter().enumerate() {
        let mut bytes = [0u8; EVENT_SIZE as usize];
        bytes[0..8].copy_from_slice(&event.userdata.to_le_bytes());
        bytes[8..10].copy_from_slice(&(event.error as u16).to_le_bytes());
        bytes[10] = event.kind;
        if event.kind != EVENTTYPE_CLOCK && event.error == 0 {
            bytes[16..24].copy_from_slice(&1u64.to_le_bytes());
        }
        mem.write_aligned(events.wrapping_add(i as i32 * EVENT_SIZE), &bytes, 8)?;
    }
    mem.write_u32(out, ready.len() as u32)
}

/// Defines a WASI function whose body sees the memory (`mem`), the state and the
/// parameters.
macro_rules! wasi {
    ($linker:ident, $name:literal, |$mem:ident, $state:ident $(, $p:ident: $t:ty)*| $body:expr) => {
        let needs = needs_of($name);
        $linker.func_wrap(WASI, $name, move |mut caller: Caller<'_, CellState>, $($p: $t),*| {
            if let Err(errno) = check(needs, first_param!($($p),*)) {
                return Ok(errno);
            }
            with_mem(&mut caller, |$mem, $state| {
                let _ = &$state;
                $body
            })
        })?;
    };
}

/// Defines a WASI function that touches no memory and answers from its parameters.
macro_rules! wasi_errno {
    ($linker:ident, $name:literal, |$($p:ident: $t:ty),*| $body:expr) => {
        let needs = needs_of($name);
        $linker.func_wrap(WASI, $name, move |$($p: $t),*| -> i32 {
            // A closure, so that the body may `return` early.
            let body = || -> Result<(), Errno> {
                check(needs, first_param!($($p),*))?;
                $body
            };
            body().err().unwrap_or(0)
        })?;
    };
}

/// The first of a call's parameters, widened (0 for none): the descriptor, for the
/// calls on one.
macro_rules! first_param {
    () => {
        0i64
    };
    ($first:ident $(, $rest:ident)*) => {
        $first as i64
    };
}

/// Defines every preview1 function (the table in `hypercell_abi::wasi`).
pub fn add_to_linker(linker: &mut Linker<CellState>) -> wasmtime::Result<()> {
    wasi!(linker, "args_get", |mem, state, argv: i32, buf: i32| state
        .args
        .get(mem, argv, buf));
    wasi!(
        linker,
        "args_sizes_get",
        |mem, state, argc: i32, size: i32| state.args.sizes(mem, argc, size)
    );
    wasi!(linker, "environ_get", |mem, state, envp: i32, buf: i32| {
        state.env.get(mem, envp, buf)
    });
    wasi!(
        linker,
        "environ_sizes_get",
        |mem, state, count: i32, size: i32| state.env.sizes(mem, count, size)
    );
    // An unknown clock id ends the program under wasmtime (its enum validation), so
    // it does here too.
    linker.func_wrap(
        WASI,
        "clock_res_get",
        |mut caller: Caller<'_, CellState>, id: i32, out: i32| {
            if let Err(errno) = check(Needs::Component(Components::CLOCKS), 0) {
                return Ok(errno);
            }
            check_clock(id)?;
            with_mem(&mut caller, |mem, _| clock_res_get(mem, id, out))
        },
    )?;
    linker.func_wrap(
        WASI,
        "clock_time_get",
        |mut caller: Caller<'_, CellState>, id: i32, _precision: i64, out: i32| {
            if let Err(errno) = check(Needs::Component(Components::CLOCKS), 0) {
                return Ok(errno);
            }
            check_clock(id)?;
            with_mem(&mut caller, |mem, _| clock_time_get(mem, id, out))
        },
    )?;
    wasi!(linker, "random_get", |mem, state, buf: i32, len: i32| {
        random_get(mem, buf, len)
    });
    wasi!(
        linker,
        "fd_write",
        |mem, state, fd: i32, iovs: i32, n: i32, out: i32| fd_write(mem, fd, iovs, n, out)
    );
    wasi!(linker, "fd_read", |mem,
                              state,
                              fd: i32,
                              iovs: i32,
                              n: i32,
                              out: i32| {
        fd_read(mem, fd, iovs, n, out)
    });
    wasi!(linker, "fd_fdstat_get", |mem, state, fd: i32, out: i32| {
        fd_fdstat_get(mem, fd, out)
    });
    // Preopens are answered from the boot information, without an exit.
    wasi!(linker, "fd_prestat_get", |mem, state, fd: i32, out: i32| {
        let name = files::preopen_name(fd as u32).ok_or(errno::BADF)?;
        let mut prestat = [0u8; 8];
        prestat[4..8].copy_from_slice(&(name.len() as u32).to_le_bytes());
        mem.write_aligned(out, &prestat, 4)
    });
    wasi!(
        linker,
        "fd_prestat_dir_name",
        |mem, state, fd: i32, path: i32, len: i32| {
            // wasmtime answers `notdir` for an open descriptor that is no preopen.
            let Some(name) = files::preopen_name(fd as u32) else {
                return answer_if_open(fd, errno::NOTDIR);
            };
            if (len as u32 as usize) < name.len() {
                return Err(errno::NAMETOOLONG);
            }
            mem.write(path, name)
        }
    );
    wasi!(
        linker,
        "poll_oneoff",
        |mem, state, subs: i32, events: i32, n: i32, out: i32| {
            poll_oneoff(mem, subs, events, n, out)
        }
    );
    linker.func_wrap(WASI, "proc_exit", |code: i32| -> wasmtime::Result<()> {
        // Statuses from 126 up mean "not run" or "killed by a signal" to a shell;
        // wasmtime refuses them, and so do cells.
        if !(0..126).contains(&code) {
            wasmtime::bail!("exit with invalid exit status outside of [0..126)");
        }
        stdio::exit(code as u32)
    })?;
    wasi_errno!(linker, "proc_raise", |_sig: i32| Err(errno::NOSYS));
    // One vCPU and no other threads: there is nothing to yield to.
    linker.func_wrap(WASI, "sched_yield", || -> i32 { 0 })?;
    wasi_errno!(linker, "fd_close", |fd: i32| files::close(fd as u32));

    // Files and directories: one exit each. Stdio streams answer as wasmtime's do;
    // the calls they do not take reach the host, which answers `badf` for them.
    wasi!(
        linker,
        "fd_pread",
        |mem, state, fd: i32, iovs: i32, n: i32, offset: i64, out: i32| {
            if let Some(stream) = files::stream(fd) {
                return stream_refuses(stream, errno::SPIPE, errno::BADF);
            }
            if files::channel_end(fd).is_some() {
                return Err(errno::SPIPE);
            }
            file_transfer(mem, FileOp::Pread, fd, iovs, n, offset as u64, out)
        }
    );
    wasi!(
        linker,
        "fd_pwrite",
        |mem, state, fd: i32, iovs: i32, n: i32, offset: i64, out: i32| {
            if let Some(stream) = files::stream(fd) {
                return stream_refuses(stream, errno::BADF, errno::SPIPE);
            }
            if files::channel_end(fd).is_some() {
                return Err(errno::SPIPE);
            }
            file_transfer(mem, FileOp::Pwrite, fd, iovs, n, offset as u64, out)
        }
    );
    // An invalid `whence` is a trap under wasmtime (its enum validation), not an errno.
    linker.func_wrap(
        WASI,
        "fd_seek",
        |mut caller: Caller<'_, CellState>, fd: i32, offset: i64, whence: i32, out: i32| {
            if !(0..=2).contains(&whence) {
                wasmtime::bail!("invalid enum value Whence");
            }
            if let Err(errno) = check(Needs::Descriptor, fd.into()) {
                return Ok(errno);
            }
            with_mem(&mut caller, |mem, _| {
                if files::stream(fd).is_some() {
                    return Err(errno::SPIPE);
                }
                let params = [
                    fd as u32 as u64,
                    offset as u64,
                    whence as u64,
                    0,
                    0,
                    0,
                    0,
                    0,
                ];
                let at = files::call(FileOp::Seek, params)?;
                mem.write_u64(out, at)
            })
        },
    )?;
    wasi!(linker, "fd_tell", |mem, state, fd: i32, out: i32| {
        if files::stream(fd).is_some() {
            return Err(errno::SPIPE);
        }
        let at = files::call(FileOp::Seek, [fd as u32 as u64, 0, 1, 0, 0, 0, 0, 0])?;
        mem.write_u64(out, at)
    });
    wasi_errno!(linker, "fd_sync", |fd: i32| {
        files::call(FileOp::Sync, [fd as u32 as u64, 0, 0, 0, 0, 0, 0, 0]).map(|_| ())
    });
    wasi_errno!(linker, "fd_datasync", |fd: i32| {
        files::call(FileOp::Datasync, [fd as u32 as u64, 0, 0, 0, 0, 0, 0, 0]).map(|_| ())
    });
    wasi!(
        linker,
        "fd_filestat_get",
        |mem, state, fd: i32, out: i32| fd_filestat_get(mem, fd, out)
    );
    wasi_errno!(linker, "fd_filestat_set_size", |fd: i32, size: i64| {
        files::call(
            FileOp::FilestatSetSize,
            [fd as u32 as u64, size as u64, 0, 0, 0, 0, 0, 0],
        )
        .map(|_| ())
    });
    wasi!(
        linker,
        "fd_readdir",
        |mem, state, fd: i32, buf: i32, len: i32, cookie: i64, out: i32| {
            let addr = mem.addr(buf, len as u32)?;
            let used = files::call(
                FileOp::Readdir,
                [
                    fd as u32 as u64,
                    addr,
                    len as u32 as u64,
                    cookie as u64,
                    0,
                    0,
                    0,
                    0,
                ],
            )?;
            mem.write_u32(out, used as u32)
        }
    );
    // Hints and calls wasmtime itself does not support on files; only files take
    // them at all.
    wasi_errno!(linker, "fd_advise", |fd: i32, _o: i64, _l: i64, _a: i32| {
        files::call(FileOp::Seek, [fd as u32 as u64, 0, 1, 0, 0, 0, 0, 0]).map(|_| ())
    });
    wasi_errno!(linker, "fd_allocate", |fd: i32, _o: i64, _l: i64| {
        if host_filetype(fd)? == filetype::DIRECTORY {
            return Err(errno::BADF);
        }
        Err(errno::NOTSUP)
    });
    wasi_errno!(linker, "fd_fdstat_set_flags", |fd: i32, flags: i32| {
        files::call(
            FileOp::SetFlags,
            [fd as u32 as u64, flags as u16 as u64, 0, 0, 0, 0, 0, 0],
        )
        .map(|_| ())
    });
    wasi_errno!(
        linker,
        "fd_fdstat_set_rights",
        |fd: i32, _b: i64, _i: i64| {
            // wasmtime answers `badf` for stdio here, and `notsup` for files and
            // directories.
            host_filetype(fd)?;
            Err(errno::NOTSUP)
        }
    );
    wasi_errno!(
        linker,
        "fd_filestat_set_times",
        |fd: i32, atim: i64, mtim: i64, flags: i32| {
            let params = [
                fd as u32 as u64,
                atim as u64,
                mtim as u64,
                flags as u16 as u64,
                0,
                0,
                0,
                0,
            ];
            files::call(FileOp::SetTimes, params).map(|_| ())
        }
    );
    wasi_errno!(linker, "fd_renumber", |fd: i32, to: i32| {
        files::renumber(fd as u32, to as u32)
    });

    // Paths, always beneath a directory descriptor.
    wasi!(
        linker,
        "path_open",
        |mem,
         state,
         fd: i32,
         dirflags: i32,
         path: i32,
         len: i32,
         oflags: i32,
         rights: i64,
         _inheriting: i64,
         fdflags: i32,
         out: i32| {
            let name = mem.get_mut(path, len as u32)?;
            // The directory itself ("."), opened to list it, is the host's.
            if files::is_channels_directory(fd) && name != b"." {
                let opened =
                    files::open_channel(fd as u32, name, oflags as u32 as u64, rights as u64)?;
                return mem.write_u32(out, opened);
            }
            let path = mem.addr(path, len as u32)?;
            let opened = files::call(
                FileOp::PathOpen,
                [
                    u64::from(fd as u32),
                    dirflags as u32 as u64,
                    path,
                    len as u32 as u64,
                    oflags as u32 as u64,
                    rights as u64,
                    fdflags as u32 as u64,
                    0,
                ],
            )?;
            mem.write_u32(out, opened as u32)
        }
    );
    for (name, op) in [
        ("path_create_directory", FileOp::CreateDirectory),
        ("path_remove_directory", FileOp::RemoveDirectory),
        ("path_unlink_file", FileOp::UnlinkFile),
    ] {
        linker.func_wrap(
            WASI,
            name,
            move |mut caller: Caller<'_, CellState>, fd: i32, path: i32, len: i32| {
                if let Err(errno) = check(Needs::Component(Components::FS), 0) {
                    return Ok(errno);
                }
                with_mem(&mut caller, |mem, _| {
                    let path = mem.addr(path, len as u32)?;
                    files::call(
                        op,
                        [u64::from(fd as u32), path, len as u32 as u64, 0, 0, 0, 0, 0],
                    )
                    .map(|_| ())
                })
            },
        )?;
    }
    wasi!(
        linker,
        "path_rename",
        |mem, state, fd: i32, path: i32, len: i32, new_fd: i32, new_path: i32, new_len: i32| {
            let from = mem.addr(path, len as u32)?;
            let to = mem.addr(new_path, new_len as u32)?;
            files::call(
                FileOp::Rename,
                [
                    u64::from(fd as u32),
                    from,
                    len as u32 as u64,
                    u64::from(new_fd as u32),
                    to,
                    new_len as u32 as u64,
                    0,
                    0,
                ],
            )
            .map(|_| ())
        }
    );
    wasi!(
        linker,
        "path_filestat_get",
        |mem, state, fd: i32, flags: i32, path: i32, len: i32, out: i32| {
            let path = mem.addr(path, len as u32)?;
            let out = mem.addr_aligned(out, 64, 8)?;
            files::call(
                FileOp::PathFilestatGet,
                [
                    u64::from(fd as u32),
                    flags as u32 as u64,
                    path,
                    len as u32 as u64,
                    out,
                    0,
                    0,
                    0,
                ],
            )
            .map(|_| ())
        }
    );
    wasi!(
        linker,
        "path_symlink",
        |mem, state, target: i32, target_len: i32, fd: i32, path: i32, len: i32| {
            let target = mem.addr(target, target_len as u32)?;
            let path = mem.addr(path, len as u32)?;
            files::call(
                FileOp::Symlink,
                [
                    target,
                    target_len as u32 as u64,
                    u64::from(fd as u32),
                    path,
                    len as u32 as u64,
                    0,
                    0,
                    0,
                ],
            )
            .map(|_| ())
        }
    );
    wasi!(
        linker,
        "path_readlink",
        |mem, state, fd: i32, path: i32, len: i32, buf: i32, buf_len: i32, out: i32| {
            let path = mem.addr(path, len as u32)?;
            let buf = mem.addr(buf, buf_len as u32)?;
            let used = files::call(
                FileOp::Readlink,
                [
                    u64::from(fd as u32),
                    path,
                    len as u32 as u64,
                    buf,
                    buf_len as u32 as u64,
                    0,
                    0,
                    0,
                ],
            )?;
            mem.write_u32(out, used as u32)
        }
    );
    wasi!(
        linker,
        "path_filestat_set_times",
        |mem, state, fd: i32, flags: i32, path: i32, len: i32, atim: i64, mtim: i64, fst: i32| {
            let path = mem.addr(path, len as u32)?;
            let params = [
                u64::from(fd as u32),
                flags as u32 as u64,
                path,
                len as u32 as u64,
                atim as u64,
                mtim as u64,
                fst as u16 as u64,
                0,
            ];
            files::call(FileOp::PathSetTimes, params).map(|_| ())
        }
    );
    wasi!(
        linker,
        "path_link",
        |mem,
         state,
         fd: i32,
         flags: i32,
         path: i32,
         len: i32,
         new_fd: i32,
         new_path: i32,
         new_len: i32| {
            let from = mem.addr(path, len as u32)?;
            let to = mem.addr(new_path, new_len as u32)?;
            let params = [
                u64::from(fd as u32),
                flags as u32 as u64,
                from,
                len as u32 as u64,
                u64::from(new_fd as u32),
                to,
                new_len as u32 as u64,
                0,
            ];
            files::call(FileOp::Link, params).map(|_| ())
        }
    );

    // No sockets are granted to a cell.
    wasi_errno!(linker, "sock_accept", |fd: i32, _f: i32, _out: i32| {
        answer_if_open(fd, errno::NOTSOCK)
    });
    wasi_errno!(
        linker,
        "sock_recv",
        |fd: i32, _i: i32, _n: i32, _f: i32, _o: i32, _of: i32| answer_if_open(fd, errno::NOTSOCK)
    );
    wasi_errno!(
        linker,
        "sock_send",
        |fd: i32, _i: i32, _n: i32, _f: i32, _o: i32| answer_if_open(fd, errno::NOTSOCK)
    );
    wasi_errno!(linker, "sock_shutdown", |fd: i32, _h: i32| answer_if_open(
        fd,
        errno::NOTSOCK
    ));
    Ok(())
}
