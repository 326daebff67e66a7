//! The host side of WASI's file calls: preopened directories and every descriptor a
//! program opens in them, in one table with the numbers of stdio (which the guest
//! serves), so that a snapshot of a cell can save and restore it in one place and
//! numbers are handed out as wasmtime hands them out.
//!
//! Path resolution is cap-std's: every path is resolved beneath a directory handle,
//! and `..`, absolute paths and symlinks that lead outside it (even one swapped in
//! during the call) fail, as under wasmtime. Data moves straight between files and the
//! guest's memory, one exit per call whatever its size.
//!
//! A cell granted named channels has one more preopen, `/channels`, which this table
//! holds without a host directory: opening a channel there takes a number here, and
//! the guest moves the channel's bytes itself (see [`crate::channel`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};

use std::os::fd::AsRawFd;

use cap_fs_ext::{
    DirExt, FollowSymlinks, OpenOptionsFollowExt, OpenOptionsMaybeDirExt, SystemTimeSpec,
};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, File, FileExt, Metadata, MetadataExt, OpenOptions};
use cap_std::time::SystemTime;
use hypercell_abi::FileOp;
use hypercell_abi::wasi::{errno, fdflags, filetype as kind, lookupflags, oflags, rights};
use hypercell_vmm::GuestMemory;

use crate::config::ConfigError;
use crate::guest_access::{in_bounds, read_guest_bytes, write_guest_bytes};
use crate::persist::{DescriptorState, FileTableState, PersistError};

/// A host directory a cell is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preopen {
    /// The directory on the host.
    pub host: PathBuf,
    /// The name the program sees it under.
    pub guest: String,
    /// Whether the program may only read in it.
    pub read_only: bool,
}

/// Why a saved descriptor table could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A preopened directory cannot be opened.
    #[error(transparent)]
    Preopen(#[from] PreopenError),
    /// A saved descriptor cannot be opened again.
    #[error(transparent)]
    Descriptor(#[from] PersistError),
}

/// Where the kernel says the file or directory behind `raw` is now.
fn host_path(fd: u32, raw: i32) -> Result<PathBuf, PersistError> {
    std::fs::read_link(format!("/proc/self/fd/{raw}"))
        .map_err(|source| PersistError::Inspect { fd, source })
}

/// Errors setting up a cell's preopened directories.
#[derive(Debug, thiserror::Error)]
pub enum PreopenError {
    /// The host directory cannot be opened.
    #[error(
        "cannot open directory `{path}` for --dir: {source}; check that it exists and is readable"
    )]
    Open {
        /// The host path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// The `fdflags` wasmtime refuses: it has no synchronous-write modes.
const SYNC_FLAGS: u64 = fdflags::DSYNC | fdflags::RSYNC | fdflags::SYNC;

/// The result of a file call: a value, or a WASI errno.
type FileResult = Result<u64, u16>;

/// An open descriptor.
enum Descriptor {
    /// A stdio stream, which the guest serves: the table only holds its number, so
    /// that numbers stay unique when programs close and renumber stdio.
    Stream,
    Dir {
        dir: Dir,
        /// The guest name, for preopens.
        preopen: Option<String>,
        read_only: bool,
        /// The preopen it lives under (its own index, for a preopen).
        root: usize,
    },
    File {
        file: File,
        /// The preopen it lives under.
        root: usize,
        readable: bool,
        writable: bool,
        /// Every write goes to the end. Kept here rather than as the host's
        /// `O_APPEND`, as wasmtime does, so that it combines with `O_TRUNC` and
        /// leaves `fd_pwrite` free to keep the offset.
        append: bool,
        /// Reported back only: file reads and writes never block for long.
        nonblock: bool,
    },
    /// The `/channels` preopen: the names of the cell's named channels, in order, and
    /// whether the cell writes each.
    ChannelDirectory { channels: Vec<(String, bool)> },
    /// A named channel the program opened, which the guest serves.
    Channel { writer: bool },
}

/// A cell's descriptors: stdio's numbers, its preopened directories, and every file
/// and directory it opens.
#[derive(Default)]
pub struct FileTable {
    descriptors: BTreeMap<u32, Descriptor>,
    /// Numbers freed by `fd_close` and `fd_renumber`, handed out again highest first,
    /// so that programs see wasmtime's numbers.
    free: BTreeSet<u32>,
    /// Each preopen's directory and guest name, kept even when the program closes its
    /// descriptor: saving finds every file's path under its preopen through them.
    roots: Vec<(Dir, String)>,
}

/// Maps a host I/O error to the WASI errno wasmtime would give.
pub(crate) fn errno_of(error: &io::Error) -> u16 {
    match error.raw_os_error() {
        Some(libc::EPERM) => errno::PERM,
        Some(libc::ENOENT) => errno::NOENT,
        Some(libc::EBADF) => errno::BADF,
        Some(libc::EACCES) => errno::ACCES,
        Some(libc::EEXIST) => errno::EXIST,
        Some(libc::EXDEV) => errno::XDEV,
        Some(libc::ENOTDIR) => errno::NOTDIR,
        Some(libc::EISDIR) => errno::ISDIR,
        Some(libc::EINVAL) => errno::INVAL,
        Some(libc::EFBIG) => errno::FBIG,
        Some(libc::ENOSPC) => errno::NOSPC,
        Some(libc::ESPIPE) => errno::SPIPE,
        Some(libc::EROFS) => errno::ROFS,
        Some(libc::EMLINK) => errno::MLINK,
        Some(libc::ENAMETOOLONG) => errno::NAMETOOLONG,
        Some(libc::ENOTEMPTY) => errno::NOTEMPTY,
        Some(libc::ELOOP) => errno::LOOP,
        Some(libc::EAGAIN) => errno::AGAIN,
        Some(libc::EOPNOTSUPP) => errno::NOTSUP,
        Some(libc::EPIPE) => errno::PIPE,
        Some(_) => errno::IO,
        // cap-std's refusal of a path that leads outside its directory.
        None if error.kind() == io::ErrorKind::PermissionDenied => errno::PERM,
        None => errno::IO,
    }
}

fn io_err(error: io::Error) -> u16 {
    errno_of(&error)
}

fn filetype(metadata: &Metadata) -> u8 {
    let file_type = metadata.file_type();
    if file_type.is_dir() {
        kind::DIRECTORY
    } else if file_type.is_file() {
        kind::REGULAR_FILE
    } else if file_type.is_symlink() {
        kind::SYMBOLIC_LINK
    } else {
        use cap_std::fs::FileTypeExt;
        if file_type.is_block_device() {
            kind::BLOCK_DEVICE
        } else if file_type.is_char_device() {
            kind::CHARACTER_DEVICE
        } else if file_type.is_socket() {
            kind::SOCKET_STREAM
        } else {
            kind::UNKNOWN
        }
    }
}

/// A WASI `filestat`, 64 bytes.
fn filestat(metadata: &Metadata) -> [u8; 64] {
    let ns = |secs: i64, nanos: i64| {
        (secs as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(nanos as u64)
    };
    let mut out = [0u8; 64];
    out[0..8].copy_from_slice(&metadata.dev().to_le_bytes());
    out[8..16].copy_from_slice(&metadata.ino().to_le_bytes());
    out[16] = filetype(metadata);
    out[24..32].copy_from_slice(&metadata.nlink().to_le_bytes());
    out[32..40].copy_from_slice(&metadata.len().to_le_bytes());
    out[40..48].copy_from_slice(&ns(metadata.atime(), metadata.atime_nsec()).to_le_bytes());
    out[48..56].copy_from_slice(&ns(metadata.mtime(), metadata.mtime_nsec()).to_le_bytes());
    out[56..64].copy_from_slice(&ns(metadata.ctime(), metadata.ctime_nsec()).to_le_bytes());
    out
}

/// Reads `len` bytes of guest memory at `addr`; `fault` if it is not all in the cell.
fn read_guest(memory: &GuestMemory, addr: u64, len: u64) -> Result<Vec<u8>, u16> {
    if len > 1 << 20 {
        return Err(errno::FAULT);
    }
    let mut bytes = vec![0u8; len as usize];
    if read_guest_bytes(memory, addr, &mut bytes) {
        Ok(bytes)
    } else {
        Err(errno::FAULT)
    }
}

fn write_guest(memory: &GuestMemory, addr: u64, bytes: &[u8]) -> Result<(), u16> {
    if write_guest_bytes(memory, addr, bytes) {
        Ok(())
    } else {
        Err(errno::FAULT)
    }
}

/// A path argument: UTF-8 not required, NUL refused.
fn guest_path(memory: &GuestMemory, addr: u64, len: u64) -> Result<PathBuf, u16> {
    let bytes = read_guest(memory, addr, len)?;
    if bytes.contains(&0) {
        return Err(errno::INVAL);
    }
    Ok(PathBuf::from(OsStr::from_bytes(&bytes)))
}

/// The (address, length) pairs of a hypercall iovec list, bounds-checked.
fn iovecs(memory: &GuestMemory, list: u64, count: u64) -> Result<Vec<(u64, u64)>, u16> {
    if count > hypercell_abi::hypercall::MAX_IOVECS {
        return Err(errno::INVAL);
    }
    let raw = read_guest(memory, list, count * 16)?;
    raw.chunks_exact(16)
        .map(|iovec| {
            let addr = u64::from_le_bytes(iovec[..8].try_into().expect("8 bytes"));
            let len = u64::from_le_bytes(iovec[8..].try_into().expect("8 bytes"));
            if in_bounds(memory, addr, len) {
                Ok((addr, len))
            } else {
                Err(errno::FAULT)
            }
        })
        .collect()
}

impl FileTable {
    /// Holds descriptors 0 to 2 for stdio and opens the preopened directories as
    /// descriptors 3, 4, ...
    pub fn with_preopens(preopens: &[Preopen]) -> Result<Self, PreopenError> {
        let mut table = Self::default();
        for fd in 0..3 {
            table.descriptors.insert(fd, Descriptor::Stream);
        }
        for (i, preopen) in preopens.iter().enumerate() {
            let dir =
                Dir::open_ambient_dir(&preopen.host, ambient_authority()).map_err(|source| {
                    PreopenError::Open {
                        path: preopen.host.clone(),
                        source,
                    }
                })?;
            let kept = dir.try_clone().map_err(|source| PreopenError::Open {
                path: preopen.host.clone(),
                source,
            })?;
            table.roots.push((kept, preopen.guest.clone()));
            table.descriptors.insert(
                3 + i as u32,
                Descriptor::Dir {
                    dir,
                    preopen: Some(preopen.guest.clone()),
                    read_only: preopen.read_only,
                    root: i,
                },
            );
        }
        Ok(table)
    }

    /// Adds the `/channels` preopen for `channels` (each name and whether the cell
    /// writes it), after the other preopens.
    pub fn add_channels_directory(&mut self, channels: Vec<(String, bool)>) {
        let fd = self
            .descriptors
            .last_key_value()
            .map_or(0, |(&last, _)| last + 1);
        self.descriptors
            .insert(fd, Descriptor::ChannelDirectory { channels });
    }

    /// Opens named channel `index` under the channels directory `dir`.
    fn open_channel(&mut self, dir: u64, index: u64) -> FileResult {
        let Descriptor::ChannelDirectory { channels } = self.descriptor(dir)? else {
            return Err(errno::BADF);
        };
        let writer = usize::try_from(index)
            .ok()
            .and_then(|index| channels.get(index))
            .ok_or(errno::NOENT)?
            .1;
        self.insert(Descriptor::Channel { writer }).map(u64::from)
    }

    /// Adds a descriptor under the number wasmtime would give it: the highest freed
    /// one, else one past the highest in use.
    fn insert(&mut self, descriptor: Descriptor) -> Result<u32, u16> {
        let fd = match self.free.pop_last() {
            Some(fd) => fd,
            None => match self.descriptors.last_key_value() {
                Some((&last, _)) => last.checked_add(1).ok_or(errno::NFILE)?,
                None => 0,
            },
        };
        self.descriptors.insert(fd, descriptor);
        Ok(fd)
    }

    /// Takes descriptor `fd` out of the table, freeing its number.
    fn remove(&mut self, fd: u32) -> Option<Descriptor> {
        let removed = self.descriptors.remove(&fd)?;
        self.free.insert(fd);
        Some(removed)
    }

    /// The directory `fd` names, and whether it is read-only; `badf` for anything
    /// else, as under wasmtime.
    fn dir(&self, fd: u64) -> Result<(&Dir, bool), u16> {
        match u32::try_from(fd)
            .ok()
            .and_then(|fd| self.descriptors.get(&fd))
        {
            Some(Descriptor::Dir { dir, read_only, .. }) => Ok((dir, *read_only)),
            _ => Err(errno::BADF),
        }
    }

    fn writable_dir(&self, fd: u64) -> Result<&Dir, u16> {
        match self.dir(fd)? {
            (_, true) => Err(errno::PERM),
            (dir, false) => Ok(dir),
        }
    }

    fn descriptor(&mut self, fd: u64) -> Result<&mut Descriptor, u16> {
        u32::try_from(fd)
            .ok()
            .and_then(|fd| self.descriptors.get_mut(&fd))
            .ok_or(errno::BADF)
    }

    /// Serves one file call; `params` hold its arguments with guest-physical addresses
    /// (see [`FileOp`]). Returns its value, or a WASI errno.
    pub fn call(&mut self, memory: &GuestMemory, op: FileOp, p: [u64; 8]) -> FileResult {
        match op {
            FileOp::Read | FileOp::Pread => self.read(memory, p, op == FileOp::Pread),
            FileOp::Write | FileOp::Pwrite => self.write(memory, p, op == FileOp::Pwrite),
            FileOp::Seek => self.seek(p[0], p[1] as i64, p[2]),
            FileOp::OpenChannel => self.open_channel(p[0], p[1]),
            // Programs may close preopens and stdio too, as under wasmtime.
            FileOp::Close => u32::try_from(p[0])
                .ok()
                .and_then(|fd| self.remove(fd))
                .map(|_| 0)
                .ok_or(errno::BADF),
            FileOp::Sync | FileOp::Datasync => match self.descriptor(p[0])? {
                Descriptor::File { file, .. } => {
                    let synced = if op == FileOp::Sync {
                        file.sync_all()
                    } else {
                        file.sync_data()
                    };
                    synced.map(|()| 0).map_err(io_err)
                }
                _ => Err(errno::BADF),
            },
            FileOp::FilestatGet => {
                let metadata = match self.descriptor(p[0])? {
                    Descriptor::File { file, .. } => file.metadata(),
                    Descriptor::Dir { dir, .. } => dir.dir_metadata(),
                    Descriptor::Stream => return Err(errno::BADF),
                    // Only the type, as for stdio.
                    Descriptor::ChannelDirectory { .. } | Descriptor::Channel { .. } => {
                        let mut stat = [0u8; 64];
                        stat[16] = match self.descriptor(p[0])? {
                            Descriptor::Channel { .. } => kind::UNKNOWN,
                            _ => kind::DIRECTORY,
                        };
                        return write_guest(memory, p[1], &stat).map(|()| 0);
                    }
                }
                .map_err(io_err)?;
                write_guest(memory, p[1], &filestat(&metadata)).map(|()| 0)
            }
            // A file opened without write access answers the host's `inval`, as
            // under wasmtime.
            FileOp::FilestatSetSize => match self.descriptor(p[0])? {
                Descriptor::File { file, .. } => file.set_len(p[1]).map(|()| 0).map_err(io_err),
                _ => Err(errno::BADF),
            },
            FileOp::Renumber => self.renumber(p[0], p[1]),
            FileOp::SetFlags => match self.descriptor(p[0])? {
                Descriptor::File {
                    append, nonblock, ..
                } => {
                    if p[1] & SYNC_FLAGS != 0 {
                        return Err(errno::INVAL);
                    }
                    *append = p[1] & fdflags::APPEND != 0;
                    *nonblock = p[1] & fdflags::NONBLOCK != 0;
                    Ok(0)
                }
                _ => Err(errno::BADF),
            },
            FileOp::SetTimes => {
                let times = timespecs(p[1], p[2], p[3])?;
                let fd = match self.descriptor(p[0])? {
                    Descriptor::File { file, .. } => file.as_raw_fd(),
                    Descriptor::Dir { dir, .. } => dir.as_raw_fd(),
                    _ => return Err(errno::BADF),
                };
                // SAFETY: `fd` is a descriptor this table owns, open for the call, and
                // `times` is the two timespecs futimens reads.
                let rc = unsafe { libc::futimens(fd, times.as_ptr()) };
                if rc == 0 {
                    Ok(0)
                } else {
                    Err(io_err(io::Error::last_os_error()))
                }
            }
            FileOp::PathSetTimes => {
                let path = guest_path(memory, p[2], p[3])?;
                let (atime, mtime) = time_specs(p[4], p[5], p[6])?;
                let dir = self.writable_dir(p[0])?;
                if p[1] & lookupflags::SYMLINK_FOLLOW != 0 {
                    dir.set_times(path, atime, mtime)
                } else {
                    dir.set_symlink_times(path, atime, mtime)
                }
                .map(|()| 0)
                .map_err(io_err)
            }
            FileOp::Link => {
                let from = guest_path(memory, p[2], p[3])?;
                let to = guest_path(memory, p[5], p[6])?;
                let source = self.writable_dir(p[0])?;
                let target = self.writable_dir(p[4])?;
                // wasmtime links the entry itself and refuses to follow a symlink.
                if p[1] & lookupflags::SYMLINK_FOLLOW != 0 {
                    return Err(errno::INVAL);
                }
                source
                    .hard_link(from, target, to)
                    .map(|()| 0)
                    .map_err(io_err)
            }
            FileOp::FdstatGet => self.fdstat(memory, p[0], p[1]),
            FileOp::Readdir => self.readdir(memory, p[0], p[1], p[2], p[3]),
            FileOp::PathOpen => self.open(memory, p),
            FileOp::CreateDirectory | FileOp::RemoveDirectory | FileOp::UnlinkFile => {
                let path = guest_path(memory, p[1], p[2])?;
                let dir = self.writable_dir(p[0])?;
                match op {
                    FileOp::CreateDirectory => dir.create_dir(path),
                    FileOp::RemoveDirectory => dir.remove_dir(path),
                    _ => dir.remove_file(path),
                }
                .map(|()| 0)
                .map_err(io_err)
            }
            FileOp::Rename => {
                let from = guest_path(memory, p[1], p[2])?;
                let to = guest_path(memory, p[4], p[5])?;
                let source = self.writable_dir(p[0])?;
                let target = self.writable_dir(p[3])?;
                source.rename(from, target, to).map(|()| 0).map_err(io_err)
            }
            FileOp::PathFilestatGet => {
                let path = guest_path(memory, p[2], p[3])?;
                let (dir, _) = self.dir(p[0])?;
                let metadata = if p[1] & lookupflags::SYMLINK_FOLLOW != 0 {
                    dir.metadata(path)
                } else {
                    dir.symlink_metadata(path)
                }
                .map_err(io_err)?;
                write_guest(memory, p[4], &filestat(&metadata)).map(|()| 0)
            }
            FileOp::Symlink => {
                let target = guest_path(memory, p[0], p[1])?;
                let link = guest_path(memory, p[3], p[4])?;
                let dir = self.writable_dir(p[2])?;
                // Targets are stored as given; cap-std refuses to follow one that leads
                // outside, whenever it is used.
                dir.symlink(target, link).map(|()| 0).map_err(io_err)
            }
            FileOp::Readlink => {
                let path = guest_path(memory, p[1], p[2])?;
                let (dir, _) = self.dir(p[0])?;
                let target = dir.read_link_contents(path).map_err(io_err)?;
                let bytes = target.as_os_str().as_bytes();
                let n = bytes.len().min(p[4] as usize);
                write_guest(memory, p[3], &bytes[..n]).map(|()| n as u64)
            }
        }
    }

    /// Moves descriptor `from` onto `to`, closing what `to` held; both must be open,
    /// as under wasmtime.
    fn renumber(&mut self, from: u64, to: u64) -> FileResult {
        let (Ok(from), Ok(to)) = (u32::try_from(from), u32::try_from(to)) else {
            return Err(errno::BADF);
        };
        if !self.descriptors.contains_key(&to) || !self.descriptors.contains_key(&from) {
            return Err(errno::BADF);
        }
        if from != to {
            let moved = self.remove(from).ok_or(errno::BADF)?;
            self.free.remove(&to);
            self.descriptors.insert(to, moved);
        }
        Ok(0)
    }

    fn read(&mut self, memory: &GuestMemory, p: [u64; 8], positioned: bool) -> FileResult {
        let buffers = iovecs(memory, p[1], p[2])?;
        let Descriptor::File { file, readable, .. } = self.descriptor(p[0])? else {
            return Err(errno::BADF);
        };
        if !*readable {
            return Err(errno::BADF);
        }
        let mut offset = p[3];
        let mut total = 0u64;
        for (addr, len) in buffers {
            let mut data = vec![0u8; len as usize];
            let n = if positioned {
                file.read_at(&mut data, offset)
            } else {
                file.read(&mut data)
            }
            .map_err(io_err)?;
            write_guest(memory, addr, &data[..n])?;
            total += n as u64;
            offset += n as u64;
            if n < len as usize {
                break;
            }
        }
        Ok(total)
    }

    fn write(&mut self, memory: &GuestMemory, p: [u64; 8], positioned: bool) -> FileResult {
        let buffers = iovecs(memory, p[1], p[2])?;
        let Descriptor::File {
            file,
            writable,
            append,
            ..
        } = self.descriptor(p[0])?
        else {
            return Err(errno::BADF);
        };
        if !*writable {
            return Err(errno::BADF);
        }
        let mut offset = p[3];
        let mut total = 0u64;
        for (addr, len) in buffers {
            let mut data = vec![0u8; len as usize];
            if !read_guest_bytes(memory, addr, &mut data) {
                return Err(errno::FAULT);
            }
            if *append {
                append_all(file, &data, positioned).map_err(io_err)?;
            } else if positioned {
                file.write_all_at(&data, offset).map_err(io_err)?;
            } else {
                file.write_all(&data).map_err(io_err)?;
            }
            total += len;
            offset += len;
        }
        Ok(total)
    }

    fn seek(&mut self, fd: u64, offset: i64, whence: u64) -> FileResult {
        let file = match self.descriptor(fd)? {
            Descriptor::File { file, .. } => file,
            Descriptor::Channel { .. } => return Err(errno::SPIPE),
            _ => return Err(errno::BADF),
        };
        let position = match whence {
            0 => SeekFrom::Start(u64::try_from(offset).map_err(|_| errno::INVAL)?),
            1 => SeekFrom::Current(offset),
            2 => SeekFrom::End(offset),
            _ => return Err(errno::INVAL),
        };
        file.seek(position).map_err(io_err)
    }

    /// Writes an `fdstat` with the rights wasmtime reports: fixed sets for
    /// directories, and for files every right but reading or writing when the file
    /// was not opened for it.
    fn fdstat(&mut self, memory: &GuestMemory, fd: u64, out: u64) -> FileResult {
        let (filetype, flags, base, inheriting) = match self.descriptor(fd)? {
            Descriptor::Stream => return Err(errno::BADF),
            Descriptor::ChannelDirectory { .. } => (
                kind::DIRECTORY,
                0,
                rights::PATH_OPEN | rights::FD_READDIR,
                rights::FD_READ | rights::FD_WRITE,
            ),
            // As a pipe on stdio.
            Descriptor::Channel { writer } => {
                let rights = if *writer {
                    rights::FD_WRITE
                } else {
                    rights::FD_READ
                };
                (kind::UNKNOWN, 0, rights, rights)
            }
            Descriptor::Dir {
                preopen: Some(_), ..
            } => (
                kind::DIRECTORY,
                0,
                rights::PREOPEN_BASE,
                rights::PREOPEN_INHERITING,
            ),
            Descriptor::Dir { .. } => (kind::DIRECTORY, 0, rights::DIRECTORY, rights::DIRECTORY),
            Descriptor::File {
                file,
                readable,
                writable,
                append,
                nonblock,
                ..
            } => {
                let mut flags = 0;
                if *append {
                    flags |= fdflags::APPEND;
                }
                if *nonblock {
                    flags |= fdflags::NONBLOCK;
                }
                let mut base = rights::ALL;
                if !*readable {
                    base &= !(rights::FD_READ | rights::FD_READDIR);
                }
                if !*writable {
                    base &= !rights::FD_WRITE;
                }
                let metadata = file.metadata().map_err(io_err)?;
                (filetype(&metadata), flags, base, base)
            }
        };
        let mut stat = [0u8; 24];
        stat[0] = filetype;
        stat[2..4].copy_from_slice(&(flags as u16).to_le_bytes());
        stat[8..16].copy_from_slice(&base.to_le_bytes());
        stat[16..24].copy_from_slice(&inheriting.to_le_bytes());
        write_guest(memory, out, &stat).map(|()| 0)
    }

    /// Writes `dirent`s from `cookie` on into the buffer; returns the bytes used (the
    /// buffer's size when an entry was cut short, as WASI asks).
    fn readdir(
        &mut self,
        memory: &GuestMemory,
        fd: u64,
        buf: u64,
        len: u64,
        cookie: u64,
    ) -> FileResult {
        if !in_bounds(memory, buf, len) {
            return Err(errno::FAULT);
        }
        let entries = self.entries(fd)?;
        let mut out = Vec::new();
        for (index, (name, ino, filetype)) in entries.iter().enumerate().skip(cookie as usize) {
            let mut dirent = [0u8; 24];
            dirent[0..8].copy_from_slice(&(index as u64 + 1).to_le_bytes());
            dirent[8..16].copy_from_slice(&ino.to_le_bytes());
            dirent[16..20].copy_from_slice(&(name.len() as u32).to_le_bytes());
            dirent[20] = *filetype;
            out.extend_from_slice(&dirent);
            out.extend_from_slice(name);
            if out.len() as u64 >= len {
                break;
            }
        }
        out.truncate(len as usize);
        write_guest(memory, buf, &out).map(|()| out.len() as u64)
    }

    /// The entries of directory `fd`: each name, inode and file type, `.` and `..`
    /// first.
    fn entries(&mut self, fd: u64) -> Result<Vec<(Vec<u8>, u64, u8)>, u16> {
        if let Descriptor::ChannelDirectory { channels } = self.descriptor(fd)? {
            let names = channels
                .iter()
                .enumerate()
                .map(|(i, (name, _))| (name.as_bytes().to_vec(), i as u64 + 1, kind::UNKNOWN));
            return Ok([
                (b".".to_vec(), 0, kind::DIRECTORY),
                (b"..".to_vec(), 0, kind::DIRECTORY),
            ]
            .into_iter()
            .chain(names)
            .collect());
        }
        let (dir, _) = self.dir(fd)?;
        let own = dir.dir_metadata().map_err(io_err)?;
        let mut entries: Vec<(Vec<u8>, u64, u8)> = vec![
            (b".".to_vec(), own.ino(), kind::DIRECTORY),
            (b"..".to_vec(), 0, kind::DIRECTORY),
        ];
        for entry in dir.entries().map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let file_type = entry.file_type().map_err(io_err)?;
            let filetype = if file_type.is_dir() {
                kind::DIRECTORY
            } else if file_type.is_file() {
                kind::REGULAR_FILE
            } else if file_type.is_symlink() {
                kind::SYMBOLIC_LINK
            } else {
                kind::UNKNOWN
            };
            entries.push((entry.file_name().as_bytes().to_vec(), entry.ino(), filetype));
        }
        Ok(entries)
    }

    /// `path_open`, with wasmtime's rules: a file is opened for reading unless only
    /// writing is asked, for writing when asked or when created or truncated, and a
    /// directory never for writing.
    fn open(&mut self, memory: &GuestMemory, p: [u64; 8]) -> FileResult {
        let [
            dirfd,
            lookup,
            path_addr,
            path_len,
            open_flags,
            base,
            flags,
            _,
        ] = p;
        let path = guest_path(memory, path_addr, path_len)?;
        let (dir, read_only, root) = match u32::try_from(dirfd)
            .ok()
            .and_then(|fd| self.descriptors.get(&fd))
        {
            Some(Descriptor::Dir {
                dir,
                read_only,
                root,
                ..
            }) => (dir, *read_only, *root),
            Some(Descriptor::File { .. }) => return Err(errno::NOTDIR),
            // Only the directory itself opens here (to list it); the guest opens the
            // channels in it.
            Some(Descriptor::ChannelDirectory { channels }) if path == Path::new(".") => {
                let channels = channels.clone();
                return self
                    .insert(Descriptor::ChannelDirectory { channels })
                    .map(u64::from);
            }
            Some(Descriptor::ChannelDirectory { .. }) => return Err(errno::NOENT),
            _ => return Err(errno::BADF),
        };
        if flags & SYNC_FLAGS != 0 {
            return Err(errno::NOTSUP);
        }
        let wants_dir = open_flags & oflags::DIRECTORY != 0;
        // Creating a directory is path_create_directory's job, and truncating one
        // means nothing; refuse before touching anything, as wasmtime does.
        if wants_dir && open_flags & (oflags::CREAT | oflags::EXCL | oflags::TRUNC) != 0 {
            return Err(errno::INVAL);
        }
        let write_right = base & rights::FD_WRITE != 0;
        let readable = base & rights::FD_READ != 0 || !write_right;
        let changes = open_flags & (oflags::CREAT | oflags::TRUNC) != 0;
        let writable = write_right || changes;
        if read_only && writable {
            return Err(errno::PERM);
        }
        let mut options = OpenOptions::new();
        options.read(readable).write(writable);
        if open_flags & oflags::CREAT != 0 {
            if open_flags & oflags::EXCL != 0 {
                options.create_new(true);
            } else {
                options.create(true);
            }
        }
        options.truncate(open_flags & oflags::TRUNC != 0);
        options.follow(if lookup & lookupflags::SYMLINK_FOLLOW != 0 {
            FollowSymlinks::Yes
        } else {
            FollowSymlinks::No
        });
        options.maybe_dir(true);
        let opened = dir.open_with(&path, &options).map_err(io_err)?;
        let is_dir = opened.metadata().map_err(io_err)?.is_dir();
        let descriptor = if is_dir {
            if write_right {
                return Err(errno::ISDIR);
            }
            Descriptor::Dir {
                dir: Dir::from_std_file(opened.into_std()),
                preopen: None,
                read_only,
                root,
            }
        } else {
            if wants_dir {
                return Err(errno::NOTDIR);
            }
            Descriptor::File {
                file: opened,
                root,
                readable,
                writable,
                append: flags & fdflags::APPEND != 0,
                nonblock: flags & fdflags::NONBLOCK != 0,
            }
        };
        self.insert(descriptor).map(u64::from)
    }

    /// The table's saved state: each descriptor by its preopen and its path there now
    /// (asked of the kernel, so files renamed since they were opened are found), its
    /// open mode and offset.
    pub fn save(&self) -> Result<FileTableState, PersistError> {
        let roots: Vec<PathBuf> = self
            .roots
            .iter()
            .enumerate()
            .map(|(index, (dir, _))| host_path(3 + index as u32, dir.as_raw_fd()))
            .collect::<Result<_, _>>()?;
        let unnamed = |fd: u32, root: usize| PersistError::Unnamed {
            fd,
            preopen: self.roots[root].1.clone(),
        };
        let under_root = |fd: u32, root: usize, raw: i32| -> Result<PathBuf, PersistError> {
            host_path(fd, raw)?
                .strip_prefix(&roots[root])
                .map(Path::to_path_buf)
                .map_err(|_| unnamed(fd, root))
        };
        let mut descriptors = Vec::with_capacity(self.descriptors.len());
        for (&fd, descriptor) in &self.descriptors {
            let state = match descriptor {
                Descriptor::Stream => DescriptorState::Stream,
                Descriptor::ChannelDirectory { .. } | Descriptor::Channel { .. } => {
                    return Err(PersistError::Channel { fd });
                }
                Descriptor::Dir {
                    preopen: Some(_),
                    root,
                    ..
                } => DescriptorState::Preopen { index: *root },
                Descriptor::Dir { dir, root, .. } => DescriptorState::Dir {
                    root: *root,
                    path: under_root(fd, *root, dir.as_raw_fd())?,
                },
                Descriptor::File {
                    file,
                    root,
                    readable,
                    writable,
                    append,
                    nonblock,
                } => {
                    let inspect = |source| PersistError::Inspect { fd, source };
                    if file.metadata().map_err(inspect)?.nlink() == 0 {
                        return Err(unnamed(fd, *root));
                    }
                    // SAFETY: lseek on a descriptor this table owns; SEEK_CUR with 0
                    // only reads the offset.
                    let offset = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_CUR) };
                    if offset < 0 {
                        return Err(inspect(io::Error::last_os_error()));
                    }
                    DescriptorState::File {
                        root: *root,
                        path: under_root(fd, *root, file.as_raw_fd())?,
                        readable: *readable,
                        writable: *writable,
                        append: *append,
                        nonblock: *nonblock,
                        offset: offset as u64,
                    }
                }
            };
            descriptors.push((fd, state));
        }
        Ok(FileTableState {
            descriptors,
            free: self.free.iter().copied().collect(),
        })
    }

    /// Opens `preopens` and the descriptors of `state` beneath them again, each at its
    /// saved number, mode and offset.
    pub fn restore(state: &FileTableState, preopens: &[Preopen]) -> Result<Self, RestoreError> {
        let opened = Self::with_preopens(preopens)?;
        let mut table = Self {
            descriptors: BTreeMap::new(),
            free: state.free.iter().copied().collect(),
            roots: opened.roots,
        };
        let root_dir = |roots: &[(Dir, String)], fd: u32, index: usize| match roots.get(index) {
            Some((dir, _)) => Ok((dir.try_clone(), preopens[index].read_only)),
            None => Err(PersistError::MissingPreopen {
                fd,
                index,
                count: preopens.len(),
            }),
        };
        for (fd, saved) in &state.descriptors {
            let fd = *fd;
            let reopen = |path: &Path| {
                let path = path.to_path_buf();
                move |source| PersistError::Reopen { fd, path, source }
            };
            let descriptor = match saved {
                DescriptorState::Stream => Descriptor::Stream,
                DescriptorState::Preopen { index } => {
                    let (dir, read_only) = root_dir(&table.roots, fd, *index)?;
                    Descriptor::Dir {
                        dir: dir.map_err(reopen(Path::new(".")))?,
                        preopen: Some(preopens[*index].guest.clone()),
                        read_only,
                        root: *index,
                    }
                }
                DescriptorState::Dir { root, path } => {
                    let (dir, read_only) = root_dir(&table.roots, fd, *root)?;
                    let dir = dir.map_err(reopen(path))?;
                    Descriptor::Dir {
                        dir: dir.open_dir(path).map_err(reopen(path))?,
                        preopen: None,
                        read_only,
                        root: *root,
                    }
                }
                DescriptorState::File {
                    root,
                    path,
                    readable,
                    writable,
                    append,
                    nonblock,
                    offset,
                } => {
                    let (dir, _) = root_dir(&table.roots, fd, *root)?;
                    let dir = dir.map_err(reopen(path))?;
                    let mut options = OpenOptions::new();
                    options.read(*readable).write(*writable);
                    let mut file = dir.open_with(path, &options).map_err(reopen(path))?;
                    file.seek(SeekFrom::Start(*offset)).map_err(reopen(path))?;
                    Descriptor::File {
                        file,
                        root: *root,
                        readable: *readable,
                        writable: *writable,
                        append: *append,
                        nonblock: *nonblock,
                    }
                }
            };
            table.descriptors.insert(fd, descriptor);
        }
        Ok(table)
    }

    /// The preopened directories' names by descriptor, for the guest to answer
    /// `fd_prestat_*` without an exit.
    pub fn preopen_names(&self) -> Vec<(u32, String)> {
        self.descriptors
            .iter()
            .filter_map(|(&fd, d)| match d {
                Descriptor::Dir {
                    preopen: Some(name),
                    ..
                } => Some((fd, name.clone())),
                _ => None,
            })
            .collect()
    }
}

/// WASI `fstflags`.
const FST_ATIM: u64 = 1;
const FST_ATIM_NOW: u64 = 2;
const FST_MTIM: u64 = 4;
const FST_MTIM_NOW: u64 = 8;

/// One time of a set-times call: `Some(Some(ns))` to set, `Some(None)` for now, `None`
/// to leave; `inval` when both set and now are asked.
fn time_choice(ns: u64, flags: u64, set: u64, now: u64) -> Result<Option<Option<u64>>, u16> {
    match (flags & set != 0, flags & now != 0) {
        (true, true) => Err(errno::INVAL),
        (true, false) => Ok(Some(Some(ns))),
        (false, true) => Ok(Some(None)),
        (false, false) => Ok(None),
    }
}

/// The two timespecs of `futimens` for a set-times call.
fn timespecs(atime: u64, mtime: u64, flags: u64) -> Result<[libc::timespec; 2], u16> {
    let spec = |choice: Option<Option<u64>>| match choice {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(None) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(Some(ns)) => libc::timespec {
            tv_sec: (ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (ns % 1_000_000_000) as libc::c_long,
        },
    };
    Ok([
        spec(time_choice(atime, flags, FST_ATIM, FST_ATIM_NOW)?),
        spec(time_choice(mtime, flags, FST_MTIM, FST_MTIM_NOW)?),
    ])
}

/// The two times of a path set-times call, as cap-fs-ext takes them.
fn time_specs(
    atime: u64,
    mtime: u64,
    flags: u64,
) -> Result<(Option<SystemTimeSpec>, Option<SystemTimeSpec>), u16> {
    let spec = |choice: Option<Option<u64>>| {
        choice.map(|time| match time {
            None => SystemTimeSpec::SymbolicNow,
            Some(ns) => SystemTimeSpec::Absolute(SystemTime::from_std(
                std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns),
            )),
        })
    };
    Ok((
        spec(time_choice(atime, flags, FST_ATIM, FST_ATIM_NOW)?),
        spec(time_choice(mtime, flags, FST_MTIM, FST_MTIM_NOW)?),
    ))
}

/// Writes all of `data` at the end of `file`, in one atomic append per piece as
/// `O_APPEND` would (Linux's `RWF_APPEND`); moves the file's offset past it unless
/// `positioned` (`fd_pwrite`, whose offset an append ignores).
fn append_all(file: &File, mut data: &[u8], positioned: bool) -> io::Result<()> {
    // -1 asks pwritev2 to use and update the file offset, as a plain write does.
    let offset = if positioned { 0 } else { -1 };
    while !data.is_empty() {
        let iovec = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: `iovec` describes `data`, which outlives the call, and the kernel
        // only reads it; the descriptor is one this table owns.
        let written =
            unsafe { libc::pwritev2(file.as_raw_fd(), &iovec, 1, offset, libc::RWF_APPEND) };
        match written {
            n if n > 0 => data = &data[n as usize..],
            0 => return Err(io::ErrorKind::WriteZero.into()),
            _ => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
    Ok(())
}

/// Parses `HOST[::GUEST]` as `wasmtime run --dir` does: the guest name defaults to the
/// host path.
pub fn parse_dir(spec: &str, read_only: bool) -> Result<Preopen, ConfigError> {
    let (host, guest) = match spec.split_once("::") {
        Some((_, guest)) if guest.contains("::") => {
            return Err(ConfigError::DirSpec(spec.to_string()));
        }
        Some((host, guest)) => (host, guest),
        None => (spec, spec),
    };
    Ok(Preopen {
        host: Path::new(host).to_path_buf(),
        guest: guest.to_string(),
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    const PATH_AT: u64 = 0x10_0000;

    /// Opens `path` under descriptor `dir` through the file call a guest makes.
    fn open(table: &mut FileTable, memory: &GuestMemory, dir: u64, path: &str, oflags: u64) -> u64 {
        memory
            .mem()
            .write_slice(path.as_bytes(), GuestAddress(PATH_AT))
            .unwrap();
        let base = rights::FD_READ | rights::FD_SEEK;
        let params = [dir, 0, PATH_AT, path.len() as u64, oflags, base, 0, 0];
        table.call(memory, FileOp::PathOpen, params).unwrap()
    }

    fn contents_from_offset(table: &mut FileTable, fd: u32) -> String {
        let Some(Descriptor::File { file, .. }) = table.descriptors.get_mut(&fd) else {
            panic!("descriptor {fd} is not a file");
        };
        let mut rest = String::new();
        file.read_to_string(&mut rest).unwrap();
        rest
    }

    #[test]
    fn descriptors_are_saved_by_path_and_offset_and_open_again() {
        let memory = GuestMemory::new(16 << 20).unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("dir")).unwrap();
        std::fs::write(root.path().join("dir/f.txt"), "0123456789").unwrap();
        let preopens = [Preopen {
            host: root.path().to_path_buf(),
            guest: "/data".into(),
            read_only: false,
        }];
        let mut table = FileTable::with_preopens(&preopens).unwrap();
        let file = open(&mut table, &memory, 3, "dir/f.txt", 0);
        let dir = open(&mut table, &memory, 3, "dir", oflags::DIRECTORY);
        assert_eq!((file, dir), (4, 5));
        assert_eq!(
            table.call(&memory, FileOp::Seek, [file, 3, 0, 0, 0, 0, 0, 0]),
            Ok(3)
        );
        // The preopen's own number goes, and the file moves on the host: both are
        // still found.
        assert_eq!(
            table.call(&memory, FileOp::Close, [3, 0, 0, 0, 0, 0, 0, 0]),
            Ok(0)
        );
        std::fs::rename(root.path().join("dir/f.txt"), root.path().join("dir/g.txt")).unwrap();

        let state = table.save().unwrap();
        assert_eq!(state.free, vec![3]);
        assert_eq!(
            state.descriptors,
            vec![
                (0, DescriptorState::Stream),
                (1, DescriptorState::Stream),
                (2, DescriptorState::Stream),
                (
                    4,
                    DescriptorState::File {
                        root: 0,
                        path: "dir/g.txt".into(),
                        readable: true,
                        writable: false,
                        append: false,
                        nonblock: false,
                        offset: 3,
                    }
                ),
                (
                    5,
                    DescriptorState::Dir {
                        root: 0,
                        path: "dir".into(),
                    }
                ),
            ]
        );
        let mut restored = FileTable::restore(&state, &preopens).unwrap();
        assert_eq!(restored.save().unwrap(), state);
        assert_eq!(contents_from_offset(&mut restored, 4), "3456789");
        assert_eq!(
            restored.call(&memory, FileOp::Close, [3, 0, 0, 0, 0, 0, 0, 0]),
            Err(errno::BADF),
            "a closed number stays closed"
        );
        // The next descriptor opened takes the freed number, as it would have.
        assert_eq!(open(&mut restored, &memory, 5, "g.txt", 0), 3);
    }

    #[test]
    fn what_cannot_be_saved_or_restored_is_named() {
        let memory = GuestMemory::new(16 << 20).unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("gone"), "x").unwrap();
        let preopens = [Preopen {
            host: root.path().to_path_buf(),
            guest: "/data".into(),
            read_only: false,
        }];
        let mut table = FileTable::with_preopens(&preopens).unwrap();
        open(&mut table, &memory, 3, "gone", 0);
        let state = table.save().unwrap();
        std::fs::remove_file(root.path().join("gone")).unwrap();
        let error = table.save().unwrap_err().to_string();
        assert!(
            error.contains("descriptor 4") && error.contains("/data"),
            "{error}"
        );
        let error = FileTable::restore(&state, &preopens)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("`gone`") && error.contains("descriptor 4"),
            "{error}"
        );
        let error = FileTable::restore(&state, &[]).err().unwrap().to_string();
        assert!(error.contains("preopened directory number 0"), "{error}");
    }
}
