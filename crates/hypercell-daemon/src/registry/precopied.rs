//! The memory of an arriving cell that comes ahead of its state, a pre-copy's: each
//! page written into a file where guest-physical address A lies at A, later ones over
//! earlier ones, which the cell then maps privately as it would a snapshot file.
//!
//! Pages are received and opened straight into buffers on the arrival's thread, and
//! written into the file by a thread of its own meanwhile: the two halves of the work
//! run side by side rather than one after the other.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use hypercell_host::abi::layout::{MAX_MEMORY_SIZE, PAGE_SIZE};
use hypercell_host::persist::{MemoryImage, PageRun, SavedPages};

use super::arrive::Refusal;
use crate::migration::wire::Wire;

/// Most bytes of pages a source may send ahead of a cell's state: its largest memory,
/// sent over four times.
const MAX_PRECOPY: u64 = 4 * MAX_MEMORY_SIZE;

/// The least the file grows its disk blocks by.
const ALLOCATION_STEP: u64 = 8 << 20;

/// Most bytes of pages in one write.
const PIECE: usize = 1 << 20;

/// Pieces received and not yet written, at most: receiving waits beyond that.
const QUEUED: usize = 2;

/// The pages of a cell that came ahead of its state.
pub(super) struct Precopied {
    path: PathBuf,
    /// Which pages came, a bit each.
    pages: Vec<u64>,
    /// Bytes received so far.
    received: u64,
    memory: Memory,
}

/// Where the pages go.
enum Memory {
    /// While they arrive: to the writer.
    Writing(Writer),
    /// Once they all came: in the file.
    Written(File),
    /// Nowhere: a write failed.
    Failed,
}

/// The thread that writes received pieces into the file, and the buffers it hands
/// back once written.
struct Writer {
    pieces: SyncSender<Piece>,
    written: Receiver<Vec<u8>>,
    thread: JoinHandle<Result<File, String>>,
}

/// The first `len` bytes of `bytes`, which go at guest-physical `addr`.
struct Piece {
    addr: u64,
    bytes: Vec<u8>,
    len: usize,
}

impl Precopied {
    /// A new, empty file at `path` for the pages.
    pub fn new(path: &Path) -> Result<Self, Refusal> {
        let cannot = |e: std::io::Error| Refusal::Told(format!("cannot keep its memory: {e}"));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(cannot)?;
        let (pieces, queue) = mpsc::sync_channel(QUEUED);
        let (give_back, written) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("hypercell-pages".into())
            .spawn(move || write_pieces(file, &queue, &give_back))
            .map_err(cannot)?;
        Ok(Self {
            path: path.to_path_buf(),
            pages: Vec::new(),
            received: 0,
            memory: Memory::Writing(Writer {
                pieces,
                written,
                thread,
            }),
        })
    }

    /// Whether no pages came ahead of the state (a paused cell moves without them).
    pub fn is_empty(&self) -> bool {
        self.received == 0
    }

    /// Takes the bytes of `runs` from `wire` and hands them to the writer.
    pub fn receive(&mut self, wire: &mut Wire, runs: &[PageRun]) -> Result<(), Refusal> {
        for run in runs {
            let end = run.addr.checked_add(run.len);
            let sane = run.len > 0
                && run.addr.is_multiple_of(PAGE_SIZE)
                && run.len.is_multiple_of(PAGE_SIZE)
                && end.is_some_and(|end| end <= MAX_MEMORY_SIZE);
            if !sane {
                return Err(Refusal::Told(format!(
                    "it sent pages at {:#x} ({} bytes), outside any cell's memory",
                    run.addr, run.len
                )));
            }
            self.received += run.len;
            if self.received > MAX_PRECOPY {
                return Err(Refusal::Told(format!(
                    "it sent more than {MAX_PRECOPY} bytes of memory ahead of its state"
                )));
            }
            let Memory::Writing(writer) = &mut self.memory else {
                return Err(Refusal::Told(
                    "it sent pages after it said they were all sent".into(),
                ));
            };
            let mut addr = run.addr;
            while addr < run.addr + run.len {
                let len = (run.addr + run.len - addr).min(PIECE as u64) as usize;
                // A buffer written already keeps what it held: it is overwritten, not
                // zeroed first.
                let mut bytes = writer.written.try_recv().unwrap_or_default();
                if bytes.len() < len {
                    bytes.resize(PIECE, 0);
                }
                wire.receive_into(&mut bytes[..len])?;
                if writer.pieces.send(Piece { addr, bytes, len }).is_err() {
                    // The writer ends early only when a write failed.
                    return Err(Refusal::Told(self.finish().err().unwrap_or_else(|| {
                        "cannot keep its memory: its writer stopped".into()
                    })));
                }
                addr += len as u64;
            }
            self.mark(run.addr, run.len);
        }
        Ok(())
    }

    /// Waits until every page received is in the file, and ends the writer: no more
    /// pages come. Its buffers are freed now, rather than while the cell is paused.
    pub fn finish(&mut self) -> Result<(), String> {
        self.memory = match std::mem::replace(&mut self.memory, Memory::Failed) {
            Memory::Writing(writer) => Memory::Written(writer.finish()?),
            Memory::Written(file) => Memory::Written(file),
            Memory::Failed => return Err("cannot keep its memory: a write failed".into()),
        };
        Ok(())
    }

    fn mark(&mut self, addr: u64, len: u64) {
        for page in addr / PAGE_SIZE..(addr + len) / PAGE_SIZE {
            let word = (page / 64) as usize;
            if self.pages.len() <= word {
                self.pages.resize(word + 1, 0);
            }
            self.pages[word] |= 1 << (page % 64);
        }
    }

    /// The cell's memory: the pages that came ahead, with `last` (the paused cell's
    /// last pages, which its snapshot holds) written over them, read from the file.
    pub fn complete(mut self, last: &MemoryImage) -> Result<MemoryImage, String> {
        last.check_runs().map_err(|e| e.to_string())?;
        let SavedPages::File { file, offset } = &last.pages else {
            return Err("its last pages are not in its snapshot file".into());
        };
        self.finish()?;
        let Memory::Written(memory) = std::mem::replace(&mut self.memory, Memory::Failed) else {
            unreachable!("finished");
        };
        // Copied a piece at a time (a cell that outran the pre-copy leaves much), in a
        // buffer no larger than needed: this happens while the cell is paused.
        let longest = last.runs.iter().map(|run| run.len).max().unwrap_or(0);
        let mut buffer = vec![0u8; longest.min(PIECE as u64) as usize];
        for run in &last.runs {
            let mut done = 0;
            while done < run.len {
                let piece = &mut buffer[..(run.len - done).min(PIECE as u64) as usize];
                let from = offset + run.addr + done;
                file.read_exact_at(piece, from)
                    .and_then(|()| memory.write_all_at(piece, run.addr + done))
                    .map_err(|e| format!("cannot keep its memory: {e}"))?;
                done += piece.len() as u64;
            }
            self.mark(run.addr, run.len);
        }
        let mut runs: Vec<PageRun> = Vec::new();
        for (word_index, &word) in self.pages.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let bit = bits.trailing_zeros() as u64;
                bits &= bits - 1;
                PageRun::add_page(&mut runs, (word_index as u64 * 64 + bit) * PAGE_SIZE);
            }
        }
        let image = MemoryImage {
            size: last.size,
            module: last.module.clone(),
            runs,
            pages: SavedPages::File {
                file: Arc::new(
                    File::open(&self.path).map_err(|e| format!("cannot map its memory: {e}"))?,
                ),
                offset: 0,
            },
        };
        image.check_runs().map_err(|e| e.to_string())?;
        Ok(image)
    }
}

impl Writer {
    /// Closes the queue and waits for the thread to write what it holds and end: the
    /// file, or why a write failed.
    fn finish(self) -> Result<File, String> {
        let Self {
            pieces,
            written,
            thread,
        } = self;
        drop(pieces);
        let file = thread
            .join()
            .map_err(|_| "cannot keep its memory: its writer panicked".to_string())?;
        drop(written);
        file
    }
}

/// The writer's thread: writes each piece from `queue` into `file`, giving its buffer
/// back, until the queue closes; then the file, or why a write failed.
fn write_pieces(
    file: File,
    queue: &Receiver<Piece>,
    give_back: &mpsc::Sender<Vec<u8>>,
) -> Result<File, String> {
    let mut allocated = 0;
    for Piece { addr, bytes, len } in queue {
        allocated = allocate(&file, allocated, addr + len as u64);
        file.write_all_at(&bytes[..len], addr)
            .map_err(|e| format!("cannot keep its memory: {e}"))?;
        let _ = give_back.send(bytes);
    }
    Ok(file)
}

/// Gives `file` disk blocks up to `end` and beyond, ahead of the writes, when fewer
/// than that (`allocated` bytes) have them: a write into blocks the file has costs the
/// filesystem much less than one that must find them. Where that fails (a filesystem
/// without it, a full disk), the writes themselves say why. The bytes allocated now.
fn allocate(file: &File, allocated: u64, end: u64) -> u64 {
    if end <= allocated {
        return allocated;
    }
    let upto = end
        .max(allocated.saturating_mul(2))
        .next_multiple_of(ALLOCATION_STEP)
        .min(MAX_MEMORY_SIZE);
    // SAFETY: fallocate only changes the file's blocks; the descriptor is `file`'s.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            allocated as libc::off_t,
            (upto - allocated) as libc::off_t,
        )
    };
    if rc == 0 { upto } else { allocated }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migration::wire::{Message, authenticated};

    /// Sends `runs` of pages, numbered by their page, over a fresh pair of wires; the
    /// destination's end.
    fn sent(runs: &[PageRun]) -> Wire {
        let (mut source, destination) = authenticated();
        let len: u64 = runs.iter().map(|run| run.len).sum();
        let pages: Vec<u8> = runs
            .iter()
            .flat_map(|run| (run.addr..run.addr + run.len).map(|at| (at / PAGE_SIZE) as u8))
            .collect();
        assert_eq!(pages.len() as u64, len);
        let mut image = MemoryImage {
            size: 64 << 20,
            module: 0..0,
            runs: runs.to_vec(),
            pages: SavedPages::InMemory(pages),
        };
        source.send_pages(&mut image).unwrap();
        let _ = source.send(&Message::PagesDone);
        destination
    }

    fn announced(wire: &mut Wire) -> Vec<PageRun> {
        match wire.receive() {
            Ok(Message::Pages { runs }) => runs,
            other => panic!("pages were announced: {other:?}"),
        }
    }

    #[test]
    fn pages_land_where_they_lie_and_the_last_ones_over_them() {
        let dir = tempfile::tempdir().unwrap();
        // Over 1 MiB, so that it goes in several pieces.
        let runs = [
            PageRun {
                addr: 0x1000,
                len: 0x2000,
            },
            PageRun {
                addr: 3 << 20,
                len: 0x180000,
            },
        ];
        let mut wire = sent(&runs);
        let Ok(mut precopied) = Precopied::new(&dir.path().join("arrived.mem")) else {
            panic!("a file for its memory");
        };
        let came = announced(&mut wire);
        assert!(precopied.receive(&mut wire, &came).is_ok());
        assert!(precopied.finish().is_ok());
        // The paused cell's last pages: one over a page that came, one new.
        let snapshot = dir.path().join("last");
        let offset = 0x10000;
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&snapshot)
            .unwrap();
        file.write_all_at(&[0xEE; 0x1000], offset + 0x2000).unwrap();
        file.write_all_at(&[0xDD; 0x1000], offset + 0x8000).unwrap();
        let last = MemoryImage {
            size: 64 << 20,
            module: 0..0,
            runs: vec![
                PageRun {
                    addr: 0x2000,
                    len: 0x1000,
                },
                PageRun {
                    addr: 0x8000,
                    len: 0x1000,
                },
            ],
            pages: SavedPages::File {
                file: Arc::new(file),
                offset,
            },
        };
        let Ok(image) = precopied.complete(&last) else {
            panic!("the memory is complete");
        };
        let pairs: Vec<(u64, u64)> = image.runs.iter().map(|run| (run.addr, run.len)).collect();
        assert_eq!(
            pairs,
            [(0x1000, 0x2000), (0x8000, 0x1000), (3 << 20, 0x180000)]
        );
        let contents = image.run_contents().unwrap();
        assert!(contents[0][..0x1000].iter().all(|&b| b == 1));
        assert!(contents[0][0x1000..].iter().all(|&b| b == 0xEE));
        assert!(contents[1].iter().all(|&b| b == 0xDD));
        for (index, page) in contents[2].chunks(PAGE_SIZE as usize).enumerate() {
            let number = ((3 << 20) / PAGE_SIZE + index as u64) as u8;
            assert!(page.iter().all(|&b| b == number), "page {index}");
        }
    }

    #[test]
    fn a_full_disk_refuses_the_move_with_its_reason() {
        let runs = [PageRun {
            addr: 0,
            len: 0x40000,
        }];
        let mut wire = sent(&runs);
        // Every write to it fails as a full disk's would.
        let Ok(mut precopied) = Precopied::new(Path::new("/dev/full")) else {
            panic!("/dev/full opens");
        };
        let came = announced(&mut wire);
        let received = precopied.receive(&mut wire, &came);
        let reason = match received {
            Err(Refusal::Told(reason)) => reason,
            Err(Refusal::Broken(error)) => panic!("{error}"),
            Ok(()) => precopied.finish().expect_err("the move was refused"),
        };
        assert!(reason.contains("cannot keep its memory"), "{reason}");
        assert!(reason.contains("No space left on device"), "{reason}");
    }
}
