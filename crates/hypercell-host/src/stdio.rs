//! The host end of a cell's stdio: which descriptors it uses, and draining the guest's
//! output buffer into them.

use std::io;
use std::mem::offset_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use hypercell_abi::{OUTPUT_RECORD_HEADER, OutputBuffer, StdioKind};
use hypercell_vmm::HostWrites;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::control::CellControl;
use crate::fs::errno_of;
use crate::guest_access::read_array;
use crate::hypercall::HypercallError;
use hypercell_vmm::GuestMemory;

/// Bytes of output the guest buffers between exits.
pub const OUTPUT_CAPACITY: u64 = 1 << 20;

/// A pipe to connect a cell's stdio to: its read end, then its write end, neither
/// inherited by programs the process starts.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just made by pipe2 and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The host descriptors a cell reads and writes as its stdin, stdout and stderr.
#[derive(Clone, Copy, Debug)]
pub struct CellStdio<'a> {
    /// The program's stdin.
    pub stdin: BorrowedFd<'a>,
    /// The program's stdout.
    pub stdout: BorrowedFd<'a>,
    /// The program's stderr.
    pub stderr: BorrowedFd<'a>,
}

impl CellStdio<'static> {
    /// This process's own stdin, stdout and stderr.
    pub fn inherit() -> Self {
        // SAFETY: descriptors 0, 1 and 2 belong to the process for its whole life; a
        // cell only reads and writes them and never closes them.
        unsafe {
            Self {
                stdin: BorrowedFd::borrow_raw(0),
                stdout: BorrowedFd::borrow_raw(1),
                stderr: BorrowedFd::borrow_raw(2),
            }
        }
    }
}

impl<'a> CellStdio<'a> {
    /// The descriptor for guest stdio number `fd` (0, 1 or 2).
    pub fn fd(&self, fd: u64) -> Option<BorrowedFd<'a>> {
        match fd {
            0 => Some(self.stdin),
            1 => Some(self.stdout),
            2 => Some(self.stderr),
            _ => None,
        }
    }

    /// What each descriptor is connected to, for the guest's `fd_fdstat_get`.
    pub fn kinds(&self) -> [u8; 3] {
        [self.stdin, self.stdout, self.stderr].map(|fd| kind(fd) as u8)
    }
}

fn kind(fd: BorrowedFd<'_>) -> StdioKind {
    // SAFETY: isatty and fstat only inspect a descriptor the caller borrows, and
    // `stat` is a plain struct that fstat fills in.
    unsafe {
        if libc::isatty(fd.as_raw_fd()) == 1 {
            return StdioKind::Terminal;
        }
        let mut stat: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut stat) == 0
            && stat.st_mode & libc::S_IFMT == libc::S_IFREG
        {
            return StdioKind::File;
        }
    }
    StdioKind::Other
}

/// Counts the bytes a cell writes to stdout and stderr against its output limit.
#[derive(Clone, Copy, Debug, Default)]
pub struct OutputMeter {
    written: u64,
    limit: Option<u64>,
    exceeded: bool,
}

impl OutputMeter {
    /// Counts from zero again, for a server's next request.
    pub fn restart(&mut self) {
        self.written = 0;
        self.exceeded = false;
    }

    /// A meter for `limit` bytes (`None`: unlimited).
    pub fn new(limit: Option<u64>) -> Self {
        Self {
            written: 0,
            limit,
            exceeded: false,
        }
    }

    /// A meter for `limit` that has already counted `written` bytes.
    pub fn resumed(limit: Option<u64>, written: u64) -> Self {
        Self {
            written,
            limit,
            exceeded: limit.is_some_and(|limit| written > limit),
        }
    }

    /// Bytes delivered so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Records a write of `len` bytes; returns how many of them fit under the limit.
    pub fn admit(&mut self, len: u64) -> u64 {
        let room = self.limit.map_or(u64::MAX, |limit| limit - self.written);
        if len > room {
            self.exceeded = true;
        }
        let admitted = len.min(room);
        self.written += admitted;
        admitted
    }

    /// Whether a write went past the limit.
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }
}

/// Writes every record in the guest's output buffer to its descriptor and empties the
/// buffer. The buffer is guest memory: its header and records are validated like any
/// other guest input. A record that cannot be delivered (a closed pipe, a full disk) is
/// dropped, and its WASI errno is left in the header for the guest to report to the
/// program, as wasmtime reports the failed write.
pub fn drain_output(
    memory: &GuestMemory,
    output: GuestAddress,
    capacity: u64,
    stdio: &CellStdio<'_>,
    meter: &mut OutputMeter,
    control: &CellControl,
) -> Result<u64, HypercallError> {
    let mem = memory.mem();
    let header: [u8; size_of::<OutputBuffer>()] = read_array(memory, output)?;
    let used = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
    if used == 0 {
        return Ok(0);
    }
    if used > capacity {
        return Err(HypercallError::OutputBuffer(format!(
            "{used} bytes used of a {capacity}-byte buffer"
        )));
    }
    let data = output.unchecked_add(size_of::<OutputBuffer>() as u64);
    let mut offset = 0u64;
    let mut result = Ok(0);
    while offset < used {
        if used - offset < OUTPUT_RECORD_HEADER as u64 {
            result = Err(HypercallError::OutputBuffer("a truncated record".into()));
            break;
        }
        let record: [u8; OUTPUT_RECORD_HEADER] = read_array(memory, data.unchecked_add(offset))?;
        let fd = u32::from_le_bytes(record[..4].try_into().expect("4 bytes"));
        let len = u64::from(u32::from_le_bytes(record[4..].try_into().expect("4 bytes")));
        offset += OUTPUT_RECORD_HEADER as u64;
        let Some(target) = stdio.fd(u64::from(fd)).filter(|_| fd != 0) else {
            result = Err(HypercallError::OutputBuffer(format!(
                "a record for descriptor {fd}"
            )));
            break;
        };
        if len > used - offset {
            result = Err(HypercallError::OutputBuffer(
                "a record past the used bytes".into(),
            ));
            break;
        }
        let admitted = meter.admit(len) as usize;
        let written = write_guest_to(
            memory,
            data.unchecked_add(offset),
            admitted,
            target,
            control,
        );
        if let Ok(written) = written {
            control.count_delivered(u64::from(fd), written);
        }
        if let Err(error) = written {
            tracing::debug!("writing cell output to descriptor {fd} failed: {error}");
            let slot = offset_of!(OutputBuffer, errors) as u64 + 4 * u64::from(fd - 1);
            mem.write_obj(u32::from(errno_of(&error)), output.unchecked_add(slot))
                .map_err(|_| HypercallError::OutOfBounds {
                    what: "output buffer",
                    addr: output.0,
                    len: size_of::<OutputBuffer>() as u64,
                })?;
        }
        offset += len;
        result = Ok(offset);
    }
    mem.write_obj(0u64, output)
        .map_err(|_| HypercallError::OutOfBounds {
            what: "output buffer",
            addr: output.0,
            len: 8,
        })?;
    result
}

/// Writes `len` bytes of guest memory at `addr` to `fd`, whole. A signal interrupts it
/// only when the cell is being stopped: then, or on any other failure, the error comes
/// back and what was written so far stays written. A pause parks it until resumed.
pub(crate) fn write_guest_to(
    memory: &GuestMemory,
    addr: GuestAddress,
    len: usize,
    fd: BorrowedFd<'_>,
    control: &CellControl,
) -> io::Result<usize> {
    let slice = guest_slice(memory, addr, len)?;
    let guard = slice.ptr_guard();
    let mut done = 0;
    while done < len {
        // SAFETY: the slice covers `len` bytes of the cell's mapped memory, which lives
        // while `memory` is borrowed; write only reads them.
        let n = unsafe { libc::write(fd.as_raw_fd(), guard.as_ptr().add(done).cast(), len - done) };
        match n {
            n if n > 0 => done += n as usize,
            0 => return Err(io::Error::from_raw_os_error(libc::EIO)),
            _ => retry_after(io::Error::last_os_error(), control, done == 0)?,
        }
    }
    Ok(done)
}

/// The `len` bytes of guest memory at `addr`, for a system call to read or write.
fn guest_slice(
    memory: &GuestMemory,
    addr: GuestAddress,
    len: usize,
) -> io::Result<vm_memory::VolatileSlice<'_, vm_memory::bitmap::BS<'_, HostWrites>>> {
    memory
        .mem()
        .get_slice(addr, len)
        .map_err(|_| io::Error::from_raw_os_error(libc::EFAULT))
}

/// Reads at most `len` bytes from `fd` into guest memory at `addr`; 0 at the end of
/// input. A signal interrupts it only when the cell is being stopped.
pub(crate) fn read_guest_from(
    memory: &GuestMemory,
    addr: GuestAddress,
    len: usize,
    fd: BorrowedFd<'_>,
    control: &CellControl,
) -> io::Result<usize> {
    let slice = guest_slice(memory, addr, len)?;
    let guard = slice.ptr_guard_mut();
    control.wait_for_input(true);
    let read = loop {
        // SAFETY: the slice covers `len` bytes of the cell's mapped memory, which lives
        // while `memory` is borrowed. The guest is not running while its vCPU thread
        // serves this call; a buffer the guest placed in a channel window may be
        // written by the neighbouring cell meanwhile, which changes only the bytes
        // read there, as a write by another process to shared memory would.
        let n = unsafe { libc::read(fd.as_raw_fd(), guard.as_ptr().cast(), len) };
        if n >= 0 {
            // Written behind vm-memory's back: marked here, so a migration sends it.
            slice.bitmap().mark_dirty(0, n as usize);
            break Ok(n as usize);
        }
        if let Err(error) = retry_after(io::Error::last_os_error(), control, true) {
            break Err(error);
        }
    };
    control.wait_for_input(false);
    read
}

/// After a read or write of stdio failed with `error`: `Ok` to make it again (a kick
/// that only asked for output, or a pause now over), else the error to give up with:
/// any failure but a signal, a stop, or a snapshot that abandons a `restartable` call.
fn retry_after(error: io::Error, control: &CellControl, restartable: bool) -> io::Result<()> {
    if error.kind() != io::ErrorKind::Interrupted || control.stop_requested().is_some() {
        return Err(error);
    }
    if control.park_in_call(restartable) {
        return Err(io::ErrorKind::Interrupted.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meter_admits_up_to_its_limit() {
        let mut meter = OutputMeter::new(Some(10));
        assert_eq!((meter.admit(4), meter.exceeded()), (4, false));
        assert_eq!((meter.admit(6), meter.exceeded()), (6, false));
        assert_eq!((meter.admit(1), meter.exceeded()), (0, true));
        let mut unlimited = OutputMeter::new(None);
        assert_eq!(unlimited.admit(u64::MAX), u64::MAX);
        assert!(!unlimited.exceeded());
    }
}
