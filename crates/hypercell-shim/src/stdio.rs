//! A container's stdio: the FIFOs containerd made for it (`ctr` and the kubelet read
//! and write their other ends), opened so that the cell reads and writes them.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use hypercell_host::CellStdio;

/// The descriptors a container's cell uses as stdin, stdout and stderr.
#[derive(Debug)]
pub struct ContainerStdio {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl ContainerStdio {
    /// Opens the FIFOs at `stdin`, `stdout` and `stderr`; an empty path is
    /// `/dev/null`.
    pub fn open(stdin: &str, stdout: &str, stderr: &str) -> io::Result<Self> {
        Ok(Self {
            stdin: open_input(stdin)?,
            stdout: open_output(stdout)?,
            stderr: open_output(stderr)?,
        })
    }

    /// Stdio wired to `/dev/null`.
    pub fn null() -> io::Result<Self> {
        Self::open("", "", "")
    }

    /// The descriptors, as a cell takes them.
    pub fn cell_stdio(&self) -> CellStdio<'_> {
        CellStdio {
            stdin: self.stdin.as_fd(),
            stdout: self.stdout.as_fd(),
            stderr: self.stderr.as_fd(),
        }
    }

    /// The stderr descriptor, for the shim's own messages about the program.
    pub fn stderr(&self) -> File {
        File::from(
            self.stderr
                .try_clone()
                .unwrap_or_else(|_| open_null(libc::O_WRONLY).expect("/dev/null opens")),
        )
    }

    /// Closes stdin, as `ctr task` and the CRI's `CloseIO` ask: the program reads
    /// end of file.
    pub fn close_stdin(&mut self) -> io::Result<()> {
        self.stdin = open_null(libc::O_RDONLY)?;
        Ok(())
    }
}

fn open_null(flags: libc::c_int) -> io::Result<OwnedFd> {
    open_path(Path::new("/dev/null"), flags)
}

fn open_path(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let name = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `name` is a NUL-terminated path that lives across the call; open has no
    // other precondition, and the descriptor it returns is ours alone.
    let fd = unsafe { libc::open(name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The write end of the FIFO at `path`. Its reader (`ctr`, containerd's log copier)
/// opens it before asking for the task, so a non-blocking open finds it. The shim
/// never holds a read end itself: once the reader goes, the program's writes fail
/// with EPIPE rather than fill the FIFO and block.
fn open_output(path: &str) -> io::Result<OwnedFd> {
    if path.is_empty() {
        return open_null(libc::O_WRONLY);
    }
    let path = Path::new(path);
    let fd = open_path(path, libc::O_WRONLY | libc::O_NONBLOCK).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::ENXIO) => "nothing reads it".to_string(),
            _ => e.to_string(),
        };
        io::Error::new(e.kind(), format!("cannot open `{}`: {why}", path.display()))
    })?;
    set_blocking(&fd)?;
    Ok(fd)
}

/// The read end of a pipe fed from the FIFO at `path` by a thread of its own: opening a
/// FIFO's read end waits for a writer, which may come only once the task starts, and a
/// non-blocking open would read end of file until it does.
fn open_input(path: &str) -> io::Result<OwnedFd> {
    if path.is_empty() {
        return open_null(libc::O_RDONLY);
    }
    let (read, write) = hypercell_host::stdio::pipe()?;
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut pipe = File::from(write);
            if let Ok(fifo) = open_path(Path::new(&path), libc::O_RDONLY) {
                // A program that stops reading closes the pipe; the copy then ends.
                let _ = io::copy(&mut File::from(fifo), &mut pipe);
            }
        })?;
    Ok(read)
}

fn set_blocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: F_GETFL and F_SETFL read and set the status flags of a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;

    fn fifo(dir: &Path, name: &str) -> String {
        let path = dir.join(name);
        let name = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        path.display().to_string()
    }

    #[test]
    fn output_reaches_its_reader_and_a_fifo_nobody_reads_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = fifo(dir.path(), "out");
        let unread = fifo(dir.path(), "unread");
        let mut out_reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&out)
            .unwrap();
        let error = ContainerStdio::open("", &out, &unread).unwrap_err();
        assert!(error.to_string().contains("nothing reads it"), "{error}");
        let stdio = ContainerStdio::open("", &out, "").unwrap();
        File::from(stdio.stdout.try_clone().unwrap())
            .write_all(b"out")
            .unwrap();
        drop(stdio);
        let mut text = String::new();
        out_reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "out");
    }

    #[test]
    fn a_reader_that_goes_gives_the_writer_epipe() {
        let dir = tempfile::tempdir().unwrap();
        let out = fifo(dir.path(), "out");
        let out_reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&out)
            .unwrap();
        let stdio = ContainerStdio::open("", &out, "").unwrap();
        drop(out_reader);
        let error = File::from(stdio.stdout.try_clone().unwrap())
            .write_all(b"out")
            .unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn input_waits_for_a_writer_then_ends_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let input = fifo(dir.path(), "in");
        let stdio = ContainerStdio::open(&input, "", "").unwrap();
        let mut writer = File::options().write(true).open(&input).unwrap();
        writer.write_all(b"line\n").unwrap();
        drop(writer);
        let mut text = String::new();
        File::from(stdio.stdin.try_clone().unwrap())
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "line\n");
    }
}
