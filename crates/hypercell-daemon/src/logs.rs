//! A cell's stdout and stderr, kept in files under the cell's directory with a size cap
//! and one rotation, read whole or followed as they grow. A stream's bytes are
//! numbered from the first it ever wrote, so a follower keeps its place across a
//! rotation.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncReadExt;
use tokio::sync::watch;

/// Which output stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The program's stdout.
    Stdout,
    /// The program's stderr.
    Stderr,
}

impl Stream {
    fn file_name(self) -> &'static str {
        match self {
            Self::Stdout => "stdout.log",
            Self::Stderr => "stderr.log",
        }
    }
}

/// Where a stream stands: bytes ever written, and whether its writer is gone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogMark {
    /// Bytes the stream has ever written.
    pub written: u64,
    /// Whether nothing more will come (the cell ended and its pipe is drained).
    pub closed: bool,
}

struct LogFiles {
    /// The current file, while open: a parked cell's logs hold no descriptor.
    file: Option<File>,
    /// Stream offset of the current file's first byte.
    base: u64,
    /// Stream offset of the rotated file's first byte, if there is one.
    rotated_base: Option<u64>,
}

/// One stream of one cell.
pub struct StreamLog {
    path: PathBuf,
    cap: u64,
    files: Mutex<LogFiles>,
    mark: watch::Sender<LogMark>,
    /// Bytes past which the stream keeps nothing more (see [`Self::end_at`]).
    end: AtomicU64,
}

impl StreamLog {
    /// The log of `stream` in `dir`, keeping at most `cap` bytes in each of its two
    /// files; a log already there is taken up where it ends (a cell started again).
    pub fn open(dir: &Path, stream: Stream, cap: u64) -> std::io::Result<Self> {
        let path = dir.join(stream.file_name());
        let rotated = rotated_path(&path);
        let file = File::options()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)?;
        let current = file.metadata()?.len();
        let old = std::fs::metadata(&rotated).map(|m| m.len()).ok();
        let base = old.unwrap_or(0);
        Ok(Self {
            path,
            cap: cap.max(1),
            files: Mutex::new(LogFiles {
                file: Some(file),
                base,
                rotated_base: old.map(|_| 0),
            }),
            mark: watch::Sender::new(LogMark {
                written: base + current,
                closed: false,
            }),
            end: AtomicU64::new(u64::MAX),
        })
    }

    /// Keeps nothing the stream writes past its first `written` bytes: what a cell
    /// that moved to another daemon writes as it ends here, which it writes there.
    pub fn end_at(&self, written: u64) {
        self.end.store(written, Ordering::SeqCst);
    }

    /// Appends `bytes`, rotating first if they would take the file past its cap.
    pub fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let written = self.mark.borrow().written;
        let kept = self.end.load(Ordering::SeqCst).saturating_sub(written);
        let bytes = &bytes[..bytes.len().min(usize::try_from(kept).unwrap_or(usize::MAX))];
        if bytes.is_empty() {
            return Ok(());
        }
        if written - files.base + bytes.len() as u64 > self.cap && written > files.base {
            std::fs::rename(&self.path, rotated_path(&self.path))?;
            // The path was renamed away: this makes a new, empty file.
            files.file = None;
            files.rotated_base = Some(files.base);
            files.base = written;
        }
        let file = match &mut files.file {
            Some(file) => file,
            None => files.file.insert(
                File::options()
                    .create(true)
                    .append(true)
                    .read(true)
                    .open(&self.path)?,
            ),
        };
        file.write_all(bytes)?;
        self.mark
            .send_modify(|mark| mark.written += bytes.len() as u64);
        Ok(())
    }

    /// Closes the current file until the next append, so that an idle cell's log
    /// holds no descriptor.
    pub fn release(&self) {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).file = None;
    }

    /// Marks the stream as ended.
    pub fn close(&self) {
        self.mark.send_modify(|mark| mark.closed = true);
    }

    /// Where the stream stands.
    pub fn mark(&self) -> LogMark {
        *self.mark.borrow()
    }

    /// A receiver told of every append and of the end.
    pub fn watch(&self) -> watch::Receiver<LogMark> {
        self.mark.subscribe()
    }

    /// The oldest stream offset still kept.
    pub fn oldest(&self) -> u64 {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files.rotated_base.unwrap_or(files.base)
    }

    /// Up to `max` bytes from stream offset `from` (moved up to the oldest kept byte),
    /// and the offset after them.
    pub fn read_from(&self, from: u64, max: usize) -> std::io::Result<(Vec<u8>, u64)> {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let written = self.mark.borrow().written;
        let from = from.max(files.rotated_base.unwrap_or(files.base));
        if from >= written {
            return Ok((Vec::new(), written));
        }
        let (mut file, start, end) = if from < files.base {
            let base = files.rotated_base.unwrap_or(0);
            (
                File::open(rotated_path(&self.path))?,
                from - base,
                files.base,
            )
        } else {
            let file = match &files.file {
                Some(file) => file.try_clone()?,
                None => File::open(&self.path)?,
            };
            (file, from - files.base, written)
        };
        let len = ((end - from) as usize).min(max);
        let mut bytes = vec![0; len];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut bytes)?;
        Ok((bytes, from + len as u64))
    }
}

/// Cuts the log of `stream` in `dir` back to its first `written` bytes, as a cell
/// restored from a checkpoint taken there writes the rest again. Call it before the
/// log is opened.
pub fn truncate(dir: &Path, stream: Stream, written: u64) -> std::io::Result<()> {
    let path = dir.join(stream.file_name());
    let rotated = rotated_path(&path);
    let current = std::fs::metadata(&path).map_or(0, |m| m.len());
    let old = std::fs::metadata(&rotated).map(|m| m.len()).ok();
    let base = old.unwrap_or(0);
    if written >= base + current {
        return Ok(());
    }
    if written >= base {
        return File::options()
            .write(true)
            .open(&path)?
            .set_len(written - base);
    }
    // The cut falls in the rotated file: it becomes the current one.
    File::options()
        .write(true)
        .open(&rotated)?
        .set_len(written)?;
    std::fs::rename(&rotated, &path)
}

fn rotated_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Copies what the cell writes into the read end `pipe` to `log` until the cell's end
/// closes it; then marks the log closed, unless `keep_open` says the cell goes on
/// (it was parked, and a new pipe will follow).
pub async fn capture(
    pipe: OwnedFd,
    log: std::sync::Arc<StreamLog>,
    keep_open: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    copy_out(pipe, &log).await;
    if !keep_open.load(std::sync::atomic::Ordering::SeqCst) {
        log.close();
    }
}

async fn copy_out(pipe: OwnedFd, log: &StreamLog) {
    let receiver = match tokio::net::unix::pipe::Receiver::from_owned_fd(pipe) {
        Ok(receiver) => receiver,
        Err(error) => {
            tracing::warn!("cannot read a cell's output pipe: {error}");
            return;
        }
    };
    let mut receiver = receiver;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match receiver.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => {
                if let Err(error) = log.append(&chunk[..n]) {
                    tracing::warn!("cannot keep a cell's output: {error}");
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::warn!("reading a cell's output failed: {error}");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_ended_at_an_offset_keeps_nothing_past_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = StreamLog::open(dir.path(), Stream::Stdout, 1 << 20).unwrap();
        log.append(b"0123").unwrap();
        log.end_at(6);
        log.append(b"4567").unwrap();
        log.append(b"89").unwrap();
        assert_eq!(log.mark().written, 6);
        assert_eq!(log.read_from(0, 100).unwrap(), (b"012345".to_vec(), 6));
    }

    #[test]
    fn a_log_rotates_at_its_cap_and_keeps_its_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let log = StreamLog::open(dir.path(), Stream::Stdout, 10).unwrap();
        log.append(b"0123456").unwrap();
        log.append(b"789abc").unwrap();
        log.append(b"defghij").unwrap();
        // Written: 20 bytes; the current file holds "defghij" (13..20), the rotated one
        // "789abc" (7..13); "0123456" is gone.
        assert_eq!(log.mark().written, 20);
        assert_eq!(log.oldest(), 7);
        assert_eq!(log.read_from(0, 100).unwrap(), (b"789abc".to_vec(), 13));
        assert_eq!(log.read_from(13, 100).unwrap(), (b"defghij".to_vec(), 20));
        assert_eq!(log.read_from(15, 3).unwrap(), (b"fgh".to_vec(), 18));
        assert_eq!(log.read_from(20, 3).unwrap(), (Vec::new(), 20));
        // Released, it reads and appends as before, opening its file again.
        log.release();
        assert_eq!(log.read_from(13, 100).unwrap(), (b"defghij".to_vec(), 20));
        log.append(b"").unwrap();
        assert_eq!(log.read_from(15, 3).unwrap(), (b"fgh".to_vec(), 18));
        drop(log);
        let again = StreamLog::open(dir.path(), Stream::Stdout, 10).unwrap();
        assert_eq!(again.mark().written, 13, "taken up where the files end");
        assert_eq!(again.read_from(0, 100).unwrap(), (b"789abc".to_vec(), 6));
        drop(again);
        // Cut back within the current file, then into the rotated one.
        truncate(dir.path(), Stream::Stdout, 9).unwrap();
        let cut = StreamLog::open(dir.path(), Stream::Stdout, 10).unwrap();
        assert_eq!(cut.read_from(0, 100).unwrap(), (b"789abc".to_vec(), 6));
        assert_eq!(cut.read_from(6, 100).unwrap(), (b"def".to_vec(), 9));
        drop(cut);
        truncate(dir.path(), Stream::Stdout, 4).unwrap();
        let cut = StreamLog::open(dir.path(), Stream::Stdout, 10).unwrap();
        assert_eq!(cut.mark().written, 4);
        assert_eq!(cut.read_from(0, 100).unwrap(), (b"789a".to_vec(), 4));
        truncate(dir.path(), Stream::Stdout, 100).unwrap();
        assert_eq!(cut.mark().written, 4, "nothing past the end to cut");
    }
}
