//! Hypercall request block and call numbers.

use crate::ABI_VERSION;

/// A hypercall request, written by the guest into its own memory. The guest then
/// executes `out HYPERCALL_PORT, eax` with the request's guest-physical address in
/// `eax`. The host copies the whole block out of guest memory before it looks at any
/// field, validates it, performs the call and writes `result` back in place.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HypercallRequest {
    /// Must equal [`ABI_VERSION`].
    pub abi_version: u32,
    /// One of the [`Hypercall`] numbers.
    pub number: u32,
    /// Arguments; their meaning depends on `number` (see [`Hypercall`]).
    pub args: [u64; 6],
    /// Written by the host: a non-negative value on success, or a negated WASI errno.
    pub result: i64,
}

impl HypercallRequest {
    /// Builds a request for `call` with `args` (unused arguments are zero).
    pub const fn new(call: Hypercall, args: [u64; 6]) -> Self {
        Self {
            abi_version: ABI_VERSION,
            number: call as u32,
            args,
            result: 0,
        }
    }
}

/// Byte offset of [`HypercallRequest::result`] inside the request block.
pub const RESULT_OFFSET: u64 = core::mem::offset_of!(HypercallRequest, result) as u64;

/// WASI's `nomem` errno, negated in a result when memory cannot grow.
pub const ERRNO_NOMEM: i64 = 48;

/// The result of a call the host abandoned before it did anything (a blocked read or
/// write, when a snapshot was asked for): the guest makes the same call again (a sleep:
/// for the time it has left).
pub const RESULT_RESTART: i64 = i64::MIN;

/// A scatter/gather element: `len` bytes at guest-physical address `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoVec {
    /// Guest-physical address of the first byte.
    pub addr: u64,
    /// Number of bytes.
    pub len: u64,
}

/// Most elements one `Write` or `Read` request may carry.
pub const MAX_IOVECS: u64 = 1024;

/// Hypercall numbers. Arguments are listed as `args[0]`, `args[1]`, ...
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hypercall {
    /// Drain the output buffer (see [`crate::OutputBuffer`]) to the host's stdout and
    /// stderr. No arguments; result 0.
    Flush = 1,
    /// Write to host stdio. `fd` (1 or 2), guest address of an [`IoVec`] array, element
    /// count. The host drains the output buffer first. Result: bytes written.
    Write = 2,
    /// Read from host stdin. `fd` (0), guest address of an [`IoVec`] array, element
    /// count. Result: bytes read (0 at end of input).
    Read = 3,
    /// The program finished: exit status. The host drains the output buffer. Never
    /// returns.
    Exit = 4,
    /// The program trapped: guest address and length of a UTF-8 report (the trap and
    /// its wasm backtrace). The host drains the output buffer. Never returns.
    Trap = 5,
    /// The runtime could not run the program: guest address and length of a UTF-8
    /// message, and a [`FailureKind`]. Never returns.
    Fail = 6,
    /// Block for `nanoseconds`. Result 0, or [`RESULT_RESTART`] when the host abandoned
    /// the sleep for a snapshot: the guest asks again for the time it has left.
    Sleep = 7,
    /// Fill `len` bytes at a guest address with random bytes (for CPUs without
    /// `rdrand`). Result 0.
    Random = 8,
    /// Make guest memory up to `end` (a guest-physical address) ready: mapped into the
    /// VM and backed by host memory. The host readies at least that much, in 2 MiB
    /// steps, and returns the new end of ready memory, or a negated `ENOMEM` when `end`
    /// lies past the cell's memory limit.
    GrowMemory = 9,
    /// A WASI file call on a descriptor of a preopened directory or a file opened in
    /// one: a [`FileOp`] and the guest address of its parameters, eight `u64`s laid
    /// out as [`FileOp`] documents (pointers as guest-physical addresses). The host
    /// copies the parameters first. Result: the call's value, or a negated WASI errno.
    File = 10,
    /// Make parts of a linear-memory reservation accessible: map the guest-virtual
    /// range at `va` of `len` bytes onto guest-physical memory at `pa`, and likewise a
    /// second range (`va2`, `len2`, `pa2`; `len2` 0 for none), so that a memory growing
    /// out of a partly used 2 MiB page into fresh ones takes one call. Addresses and
    /// lengths are 4 KiB multiples, the ranges lie in the reservation area (see
    /// [`crate::layout::RESERVATION_BASE`]), and each `va` shares its offset within a
    /// 2 MiB page with its `pa`, so that whole 2 MiB pages map with one entry. The host
    /// readies the physical memory as [`Hypercall::GrowMemory`] does and returns the
    /// new end of ready memory, or a negated `ENOMEM`.
    MapMemory = 11,
    /// The runtime's trap entry found that the exception it was sent for is not a wasm
    /// trap: the host ends the cell and reports that exception. Never returns.
    Unhandled = 12,
    /// The runtime instantiated the module (and, for [`crate::boot::TEMPLATE_STOP_INIT`],
    /// ran the initialisation export) and is about to run it. Made only when
    /// [`crate::BootInfo::template_stop`] is set: the host takes a template of the cell
    /// here. When the call returns in a cell started from a `start` template, the guest
    /// reads its identity again (arguments, environment, preopens, stdio kinds), which
    /// the host rewrote; from an `init` template it keeps the identity the export saw.
    /// No arguments; result 0.
    Ready = 13,
    /// A server's cell answered its request (the response is in its output, which the
    /// host drains first) and can take another ([`crate::BootInfo::reuse`]). Result 1:
    /// the host rewrote the identity (arguments, environment, stdin) with the next
    /// request, which the guest reads again; result 0: no request comes, and the guest
    /// ends its program with status 0 (asked again, the host answers 0 again, and the
    /// cell's time limit runs on). No arguments.
    NextRequest = 14,
    /// An operation on one of the cell's channels (see [`crate::channel`]): the
    /// operation ([`crate::channel::CHANNEL_WAIT`] or [`crate::channel::CHANNEL_KICK`]),
    /// the end (0 for the stdin channel, 1 for the stdout channel, 2 + `i` for named
    /// channel `i`) and, for a wait, the peer's index as the guest last saw it. A wait returns 0 once the peer's
    /// index differs from it, the peer closed its end or is gone, or the cell is being
    /// stopped; [`RESULT_RESTART`] when a snapshot abandoned it. A kick wakes the peer
    /// and returns 0. An end the cell lacks gets `EBADF`, another operation `EINVAL`,
    /// and a stdio end of a cell without the `stdio` component `NOTCAPABLE`.
    Channel = 15,
}

/// The file calls of [`Hypercall::File`], with their parameters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileOp {
    /// `fd, iovec list, count`: bytes read.
    Read = 1,
    /// `fd, iovec list, count, offset`: bytes read.
    Pread = 2,
    /// `fd, iovec list, count`: bytes written.
    Write = 3,
    /// `fd, iovec list, count, offset`: bytes written.
    Pwrite = 4,
    /// `fd, offset (i64), whence`: the new offset.
    Seek = 5,
    /// `fd`.
    Close = 6,
    /// `fd`.
    Sync = 7,
    /// `fd`.
    Datasync = 8,
    /// `fd, filestat out (64 bytes)`.
    FilestatGet = 9,
    /// `fd, size`.
    FilestatSetSize = 10,
    /// `fd, fdstat out (24 bytes)`.
    FdstatGet = 11,
    /// `fd, buffer, length, cookie`: bytes used.
    Readdir = 12,
    /// `dir fd, lookup flags, path, path length, oflags, base rights, fdflags`: the new
    /// descriptor.
    PathOpen = 13,
    /// `dir fd, path, path length`.
    CreateDirectory = 14,
    /// `dir fd, path, path length`.
    RemoveDirectory = 15,
    /// `dir fd, path, path length`.
    UnlinkFile = 16,
    /// `dir fd, path, path length, new dir fd, new path, new path length`.
    Rename = 17,
    /// `dir fd, lookup flags, path, path length, filestat out (64 bytes)`.
    PathFilestatGet = 18,
    /// `target, target length, dir fd, link path, link path length`.
    Symlink = 19,
    /// `dir fd, path, path length, buffer, buffer length`: bytes written.
    Readlink = 20,
    /// `fd, to`: `fd` takes the place of `to`, which must be open.
    Renumber = 21,
    /// `fd, fdflags`.
    SetFlags = 22,
    /// `fd, atime, mtime, fst_flags`.
    SetTimes = 23,
    /// `dir fd, lookup flags, path, path length, atime, mtime, fst_flags`.
    PathSetTimes = 24,
    /// `dir fd, lookup flags, path, path length, new dir fd, new path, new path length`.
    Link = 25,
    /// `channels directory fd, named channel index`: a new descriptor for that
    /// channel's end, which the guest serves (see [`crate::channel`]).
    OpenChannel = 26,
}

impl FileOp {
    /// Decodes a file call number, or `None` for an unknown one.
    pub const fn from_number(number: u64) -> Option<Self> {
        Some(match number {
            1 => Self::Read,
            2 => Self::Pread,
            3 => Self::Write,
            4 => Self::Pwrite,
            5 => Self::Seek,
            6 => Self::Close,
            7 => Self::Sync,
            8 => Self::Datasync,
            9 => Self::FilestatGet,
            10 => Self::FilestatSetSize,
            11 => Self::FdstatGet,
            12 => Self::Readdir,
            13 => Self::PathOpen,
            14 => Self::CreateDirectory,
            15 => Self::RemoveDirectory,
            16 => Self::UnlinkFile,
            17 => Self::Rename,
            18 => Self::PathFilestatGet,
            19 => Self::Symlink,
            20 => Self::Readlink,
            21 => Self::Renumber,
            22 => Self::SetFlags,
            23 => Self::SetTimes,
            24 => Self::PathSetTimes,
            25 => Self::Link,
            26 => Self::OpenChannel,
            _ => return None,
        })
    }
}

impl Hypercall {
    /// Decodes a hypercall number, or `None` for an unknown one.
    pub const fn from_number(number: u32) -> Option<Self> {
        Some(match number {
            1 => Self::Flush,
            2 => Self::Write,
            3 => Self::Read,
            4 => Self::Exit,
            5 => Self::Trap,
            6 => Self::Fail,
            7 => Self::Sleep,
            8 => Self::Random,
            9 => Self::GrowMemory,
            10 => Self::File,
            11 => Self::MapMemory,
            12 => Self::Unhandled,
            13 => Self::Ready,
            14 => Self::NextRequest,
            15 => Self::Channel,
            _ => return None,
        })
    }
}

/// Why the runtime gave up on a program, carried by [`Hypercall::Fail`].
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The runtime itself failed (a bug or an incompatible artifact).
    Runtime = 0,
    /// Instantiation failed (a missing import, a failing start function, ...).
    Instantiate = 1,
    /// The guest heap is exhausted: the cell's memory limit is too small.
    OutOfMemory = 2,
    /// A WASI call refused its arguments and ended the program, as wasmtime's
    /// argument checks do (an invalid enum value, a missing memory export).
    CallError = 3,
}

impl FailureKind {
    /// Decodes a failure kind; unknown values are treated as runtime failures.
    pub const fn from_raw(raw: u64) -> Self {
        match raw {
            1 => Self::Instantiate,
            2 => Self::OutOfMemory,
            3 => Self::CallError,
            _ => Self::Runtime,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for call in [
            Hypercall::Flush,
            Hypercall::Write,
            Hypercall::Read,
            Hypercall::Exit,
            Hypercall::Trap,
            Hypercall::Fail,
            Hypercall::Sleep,
            Hypercall::Random,
            Hypercall::GrowMemory,
            Hypercall::File,
            Hypercall::MapMemory,
            Hypercall::Unhandled,
            Hypercall::Ready,
            Hypercall::NextRequest,
            Hypercall::Channel,
        ] {
            assert_eq!(Hypercall::from_number(call as u32), Some(call));
        }
        assert_eq!(Hypercall::from_number(0), None);
        assert_eq!(Hypercall::from_number(16), None);
        for number in 1..=26 {
            assert_eq!(
                FileOp::from_number(number).map(|op| op as u64),
                Some(number)
            );
        }
        assert_eq!(FileOp::from_number(27), None);
    }

    #[test]
    fn request_layout_is_stable() {
        assert_eq!(core::mem::size_of::<HypercallRequest>(), 64);
        assert_eq!(RESULT_OFFSET, 56);
    }
}
