//! A running cell's complete state at one instant: its vCPU, its host services and the
//! guest memory it touched, from which a new cell goes on where it stopped.

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsFd;
use std::sync::Arc;

use hypercell_vmm::{GuestMemory, TablesState, VcpuState};
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress};

use super::files::FileTableState;

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No cell is running to take it from.
    #[error("the cell is not running, so no snapshot can be taken")]
    NotRunning,
    /// The vCPU is inside a host call that cannot be abandoned and made again: a sleep,
    /// or a write that has delivered part of its bytes.
    #[error(
        "the cell is in the middle of a sleep or of a write to a slow reader; try again in a moment"
    )]
    InBlockingCall,
    /// Its descriptors could not be saved.
    #[error(transparent)]
    Files(#[from] super::files::PersistError),
    /// Its vCPU could not be read.
    #[error(transparent)]
    Vcpu(#[from] hypercell_vmm::VcpuError),
    /// The pages it wrote could not be listed.
    #[error("the pages the cell wrote cannot be listed: {0}")]
    Scan(std::io::Error),
    /// KVM could not log or list the pages it writes, for a pre-copy.
    #[error(transparent)]
    DirtyLog(#[from] hypercell_vmm::VmError),
    /// It is joined to other cells by channels, whose bytes in flight are theirs as
    /// much as its own.
    #[error(
        "the cell is joined to other cells by channels, and a snapshot of it alone would split them"
    )]
    Joined,
}

/// Granule of the saved memory.
const PAGE: u64 = 4096;

/// Where a template's cell was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TemplatePoint {
    /// Once the module was instantiated, before its program ran: cells from the
    /// template read their own arguments, environment and preopens.
    Start,
    /// When the program first read stdin: it has read its arguments and environment
    /// and loaded what it loads; cells from the template read their own stdin.
    FirstRead,
    /// After an initialisation export ran, as Wizer does: cells from the template go
    /// on to `_start` with what it left, and with the identity it saw.
    Init,
}

impl TemplatePoint {
    /// The stop point `text` names, as `--at` spells it: `start`, `first-read`, or
    /// `init:EXPORT` with the export's name beside it (empty for the others).
    pub fn parse(text: &str) -> Option<(Self, &str)> {
        match text.split_once(':') {
            None if text == "start" => Some((Self::Start, "")),
            None if text == "first-read" => Some((Self::FirstRead, "")),
            Some(("init", export)) if !export.is_empty() => Some((Self::Init, export)),
            _ => None,
        }
    }
}

/// A cell's complete state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellSnapshot {
    /// Where the cell was stopped, when the snapshot is a template.
    pub template: Option<TemplatePoint>,
    /// The compiled module the cell runs: a cell restored from the snapshot must run
    /// the very same code.
    pub module: ModuleIdentity,
    /// Bytes of the cell's identity region (arguments, environment, preopen names):
    /// cells started from the snapshot keep its layout, so theirs must fit.
    pub identity_capacity: u64,
    /// When it was taken, in nanoseconds since the Unix epoch: a restored cell's clock
    /// moves on by the time since, so its realtime is current.
    pub taken_at_ns: u64,
    /// The vCPU.
    pub vcpu: VcpuState,
    /// The host's side of the cell.
    pub services: ServicesState,
    /// Guest memory.
    pub memory: MemoryImage,
}

/// Which compiled code a snapshot was taken of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleIdentity {
    /// Length of the compiled artifact.
    pub len: u64,
    /// Its xxh3 checksum.
    pub checksum: u64,
}

impl ModuleIdentity {
    /// The identity of `artifact`.
    pub fn of_artifact(artifact: &crate::compile::Artifact) -> Self {
        Self {
            len: artifact.bytes().len() as u64,
            checksum: artifact.checksum(),
        }
    }

    /// The identity of the compiled artifact `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self {
            len: bytes.len() as u64,
            checksum: xxhash_rust::xxh3::xxh3_64(bytes),
        }
    }
}

/// The host services' state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServicesState {
    /// The descriptor table.
    pub files: FileTableState,
    /// Bytes of output delivered so far, against the output limit.
    pub output_written: u64,
    /// Most bytes of linear memory a `memory.grow` was refused.
    pub denied_growth: u64,
    /// Memory mapped into the VM and the reservation area's tables.
    pub growth: GrowthState,
}

/// How much of the cell's memory is mapped and ready, and the reservation tables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrowthState {
    /// End of the memory mapped into the VM.
    pub mapped: u64,
    /// End of the memory made ready for the guest.
    pub ready: u64,
    /// Bytes of linear memory mapped into the reservation area.
    pub linear_memory: u64,
    /// The reservation tables' bookkeeping.
    pub tables: TablesState,
}

/// Pages saved back to back from a guest-physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    /// Where the run starts (page-aligned).
    pub addr: u64,
    /// Its length in bytes (whole pages).
    pub len: u64,
}

impl PageRun {
    /// Adds the page at `page` to `runs`, in address order, extending the last run
    /// when it ends there.
    pub fn add_page(runs: &mut Vec<PageRun>, page: u64) {
        match runs.last_mut() {
            Some(run) if run.addr + run.len == page => run.len += PAGE,
            _ => runs.push(PageRun {
                addr: page,
                len: PAGE,
            }),
        }
    }
}

/// Where the contents of a snapshot's saved pages are.
#[derive(Clone, Debug)]
pub enum SavedPages {
    /// In memory: the runs' contents back to back, as a snapshot taken in this process
    /// holds them.
    InMemory(Vec<u8>),
    /// In a snapshot file, as an image of guest memory: the page at guest-physical
    /// address A lies at `offset + A`, and pages that were not saved are holes. Cells
    /// restored from it map it privately, so that they share its page cache until they
    /// write.
    File {
        /// The file, open.
        file: Arc<File>,
        /// Where guest-physical address 0 lies in it (page-aligned).
        offset: u64,
    },
}

impl Default for SavedPages {
    fn default() -> Self {
        Self::InMemory(Vec::new())
    }
}

/// Guest memory, sparse: the size of the whole, and only the pages that hold data.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemoryImage {
    /// Size of the guest memory.
    pub size: u64,
    /// Where the compiled module is mapped from its cache file, and its length: pages
    /// there are saved only where the guest changed them.
    pub module: Range<u64>,
    /// Runs of saved pages, in address order, apart from one another; every other page
    /// holds zeros (or, in the module's range, the module).
    pub runs: Vec<PageRun>,
    /// Their contents (kept apart from the serialised description: the snapshot file
    /// stores them as a page-aligned memory image).
    #[serde(skip)]
    pub pages: SavedPages,
}

impl PartialEq for MemoryImage {
    fn eq(&self, other: &Self) -> bool {
        self.size == other.size
            && self.module == other.module
            && self.runs == other.runs
            && self.run_contents() == other.run_contents()
    }
}

/// Adds the page at `page` holding `contents` to the saved `runs` and their `bytes`,
/// extending the last run when it ends there.
fn save_page(runs: &mut Vec<PageRun>, bytes: &mut Vec<u8>, page: u64, contents: &[u8]) {
    bytes.extend_from_slice(contents);
    PageRun::add_page(runs, page);
}

/// The pages of `memory` below `end` that may hold data worth saving, as sorted,
/// disjoint ranges: the cell's own pages (written since they were mapped, one
/// `PAGEMAP_SCAN` away, at a cost that grows with them rather than with the memory)
/// and the pages of `base`, whose file pages may not be mapped. Elsewhere are zeros, or
/// the module's pages as its artifact has them. Where the kernel cannot list the cell's
/// own pages, every page the host backed is one.
fn candidate_ranges(memory: &GuestMemory, end: u64, base: Option<&MemoryImage>) -> Vec<Range<u64>> {
    let mut ranges = memory.written_ranges(0..end).unwrap_or_else(|_| {
        let mut backed = Vec::new();
        for (index, _) in memory
            .resident_pages(0..end)
            .iter()
            .enumerate()
            .filter(|&(_, &resident)| resident)
        {
            PageRun::add_page(&mut backed, index as u64 * PAGE);
        }
        backed
            .iter()
            .map(|run| run.addr..run.addr + run.len)
            .collect()
    });
    ranges.extend(
        base.map_or(&[][..], |base| &base.runs)
            .iter()
            .map(|run| run.addr..(run.addr + run.len).min(end))
            .filter(|range| range.start < range.end),
    );
    ranges.sort_unstable_by_key(|range| range.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

/// Most pages a capture reads in one copy, before it squeezes out those with nothing
/// worth saving: a bound on the room it takes beyond what it keeps.
const MOST_PAGES_READ: usize = 1024;

/// Whether `bytes` are all zero: 64 bytes at a time with no early exit inside, which
/// the compiler turns into vector instructions.
fn is_zero(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(64);
    chunks.all(|chunk| chunk.iter().fold(0u8, |any, &b| any | b) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}

/// Why a memory image does not fit the cell it is restored into.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A run is misaligned, out of order, or outside the memory.
    #[error("its saved memory has a run of pages outside the cell or out of order")]
    BadRun,
    /// The runs describe more bytes than it holds.
    #[error("its saved memory describes more pages than it holds")]
    MissingPages,
    /// Its pages could not be mapped.
    #[error(transparent)]
    Map(#[from] hypercell_vmm::MemoryError),
}

impl MemoryImage {
    /// Saves the pages of `memory` below `mapped` that hold data, less those of the
    /// mapped module (at `module`) that still equal `artifact`. Candidates are the
    /// cell's own pages and those of `base`, the image the cell was restored from
    /// (whose file pages need not be mapped).
    pub fn capture(
        memory: &GuestMemory,
        mapped: u64,
        module: Range<u64>,
        artifact: &[u8],
        base: Option<&MemoryImage>,
    ) -> Self {
        let mut whole = None;
        Self::capture_in_pieces(
            memory,
            mapped,
            module,
            artifact,
            base,
            usize::MAX,
            |piece| {
                whole = Some(piece);
                Some(Vec::new())
            },
        );
        whole.expect("the last piece is always given")
    }

    /// [`Self::capture`], handed to `each` in pieces of about `piece_len` bytes of
    /// pages, in address order (the last, perhaps empty, always), so that the first can
    /// be sent while the rest are copied. `each` answers with a buffer for the next
    /// piece's pages (one a sent piece held, so that its pages need no faulting in
    /// again; what it holds is overwritten), or `None` to stop early.
    pub fn capture_in_pieces(
        memory: &GuestMemory,
        mapped: u64,
        module: Range<u64>,
        artifact: &[u8],
        base: Option<&MemoryImage>,
        piece_len: usize,
        mut each: impl FnMut(Self) -> Option<Vec<u8>>,
    ) {
        let page_len = PAGE as usize;
        let piece = |runs: &mut Vec<PageRun>, bytes: &mut Vec<u8>, filled: usize| {
            bytes.truncate(filled);
            Self {
                size: memory.size(),
                module: module.clone(),
                runs: std::mem::take(runs),
                pages: SavedPages::InMemory(std::mem::take(bytes)),
            }
        };
        let mut runs: Vec<PageRun> = Vec::new();
        let mut bytes = Vec::new();
        // Bytes of `bytes` that hold this piece's pages; the rest is room.
        let mut filled = 0;
        let end = mapped.min(memory.size());
        for range in candidate_ranges(memory, end, base) {
            let mut start = range.start;
            while start < range.end {
                // A span of candidate pages is read in one copy to the end of the
                // piece, no further than the piece's end; its pages that hold nothing
                // worth sending are squeezed out again.
                let room = piece_len
                    .saturating_sub(filled)
                    .div_ceil(page_len)
                    .clamp(1, MOST_PAGES_READ);
                let span = (((range.end - start) / PAGE) as usize).min(room) * page_len;
                if bytes.len() < filled + span {
                    bytes.resize(filled + span, 0);
                }
                let read = memory
                    .mem()
                    .read_slice(&mut bytes[filled..filled + span], GuestAddress(start));
                let mut kept = filled;
                for (number, page) in (start..)
                    .step_by(page_len)
                    .take(span / page_len)
                    .enumerate()
                {
                    let at = filled + number * page_len;
                    let readable = read.is_ok()
                        || memory
                            .mem()
                            .read_slice(&mut bytes[at..at + page_len], GuestAddress(page))
                            .is_ok();
                    let contents = &bytes[at..at + page_len];
                    let worthless = !readable
                        || if module.contains(&page) {
                            let offset = (page - module.start) as usize;
                            let original = artifact.get(offset..).unwrap_or_default();
                            let original = &original[..original.len().min(page_len)];
                            contents[..original.len()] == *original
                                && is_zero(&contents[original.len()..])
                        } else {
                            is_zero(contents)
                        };
                    if worthless {
                        continue;
                    }
                    if kept != at {
                        bytes.copy_within(at..at + page_len, kept);
                    }
                    kept += page_len;
                    PageRun::add_page(&mut runs, page);
                }
                filled = kept;
                if filled >= piece_len {
                    match each(piece(&mut runs, &mut bytes, filled)) {
                        Some(next) => bytes = next,
                        None => return,
                    }
                    filled = 0;
                }
                start += span as u64;
            }
        }
        each(piece(&mut runs, &mut bytes, filled));
    }

    /// Saves the pages of `memory` below `mapped` that the cell made its own since it
    /// started from `base` (or, without one, booted): pages written by the guest, the
    /// host or KVM, over the base's file pages or over zeros, as one `PAGEMAP_SCAN`
    /// finds them. The image holds only what differs from the base: a cell restored
    /// from the base and then from it goes on as this one would. All-zero pages are
    /// left out where the base holds zeros too.
    pub fn capture_written(
        memory: &GuestMemory,
        mapped: u64,
        module: Range<u64>,
        base: Option<&MemoryImage>,
    ) -> std::io::Result<Self> {
        let end = mapped.min(memory.size());
        let written = memory.written_ranges(0..end)?;
        let base_holds = |page: u64| {
            module.contains(&page)
                || base.is_some_and(|base| {
                    base.module.contains(&page)
                        || base
                            .runs
                            .iter()
                            .any(|run| (run.addr..run.addr + run.len).contains(&page))
                })
        };
        let mut runs: Vec<PageRun> = Vec::new();
        let mut bytes = Vec::new();
        let mut page_bytes = vec![0u8; PAGE as usize];
        for range in written {
            for page in (range.start..range.end).step_by(PAGE as usize) {
                if memory
                    .mem()
                    .read_slice(&mut page_bytes, GuestAddress(page))
                    .is_err()
                {
                    continue;
                }
                if is_zero(&page_bytes) && !base_holds(page) {
                    continue;
                }
                save_page(&mut runs, &mut bytes, page, &page_bytes);
            }
        }
        Ok(Self {
            size: memory.size(),
            module,
            runs,
            pages: SavedPages::InMemory(bytes),
        })
    }

    /// Saves the pages of `memory` at the guest-physical addresses `pages` (sorted,
    /// page-aligned), whatever they hold: a pre-copy round's, each over an older copy
    /// of the page.
    pub fn capture_pages(memory: &GuestMemory, module: Range<u64>, pages: &[u64]) -> Self {
        let mut runs: Vec<PageRun> = Vec::new();
        let mut bytes = Vec::with_capacity(pages.len() * PAGE as usize);
        let mut page_bytes = vec![0u8; PAGE as usize];
        for &page in pages {
            if memory
                .mem()
                .read_slice(&mut page_bytes, GuestAddress(page))
                .is_ok()
            {
                save_page(&mut runs, &mut bytes, page, &page_bytes);
            }
        }
        Self {
            size: memory.size(),
            module,
            runs,
            pages: SavedPages::InMemory(bytes),
        }
    }

    /// Bytes of saved pages.
    pub fn saved_len(&self) -> u64 {
        self.runs.iter().map(|run| run.len).sum()
    }

    /// End of the highest saved page: the length of the memory image in a file.
    pub fn image_len(&self) -> u64 {
        self.runs.last().map_or(0, |run| run.addr + run.len)
    }

    /// Checks that the runs are page-aligned, in order, apart and inside the memory.
    pub fn check_runs(&self) -> Result<(), ImageError> {
        let mut floor = 0;
        for run in &self.runs {
            let end = run.addr.checked_add(run.len).ok_or(ImageError::BadRun)?;
            if run.len == 0
                || !run.addr.is_multiple_of(PAGE)
                || !run.len.is_multiple_of(PAGE)
                || run.addr < floor
                || end > self.size
            {
                return Err(ImageError::BadRun);
            }
            floor = end;
        }
        Ok(())
    }

    /// The contents of every run, in order, when they are all at hand in memory or
    /// readable from the file.
    pub fn run_contents(&self) -> Option<Vec<Vec<u8>>> {
        let mut at = 0usize;
        self.runs
            .iter()
            .map(|run| match &self.pages {
                SavedPages::InMemory(bytes) => {
                    let contents = bytes.get(at..at + run.len as usize)?.to_vec();
                    at += run.len as usize;
                    Some(contents)
                }
                SavedPages::File { file, offset } => {
                    let mut buffer = vec![0; run.len as usize];
                    std::os::unix::fs::FileExt::read_exact_at(
                        &**file,
                        &mut buffer,
                        offset.checked_add(run.addr)?,
                    )
                    .ok()?;
                    Some(buffer)
                }
            })
            .collect()
    }

    /// Puts the saved pages into `memory`, fresh (all zeros) apart from the module,
    /// which is mapped at `self.module` already. Pages in a file are mapped privately
    /// (shared until the cell writes them); pages in memory are copied.
    pub fn restore_into(&self, memory: &GuestMemory) -> Result<(), ImageError> {
        if self.size != memory.size() {
            return Err(ImageError::BadRun);
        }
        self.check_runs()?;
        match &self.pages {
            SavedPages::InMemory(bytes) => {
                if self.saved_len() != bytes.len() as u64 {
                    return Err(ImageError::MissingPages);
                }
                let mut at = 0;
                for run in &self.runs {
                    let contents = &bytes[at..at + run.len as usize];
                    memory
                        .mem()
                        .write_slice(contents, GuestAddress(run.addr))
                        .map_err(|_| ImageError::BadRun)?;
                    at += run.len as usize;
                }
                Ok(())
            }
            SavedPages::File { file, offset } => {
                let module =
                    self.module.start / PAGE * PAGE..self.module.end.next_multiple_of(PAGE);
                // The image is mapped whole around the module (one mapping each side,
                // holes reading as zeros), and over the module only where the guest
                // changed it.
                let image = 0..self.image_len();
                let pieces = [
                    image.start..image.end.min(module.start),
                    image.start.max(module.end)..image.end,
                ];
                for piece in pieces.into_iter().filter(|p| p.start < p.end) {
                    memory.map_file(
                        piece.start,
                        piece.end - piece.start,
                        file.as_fd(),
                        offset + piece.start,
                    )?;
                }
                for run in self
                    .runs
                    .iter()
                    .filter(|run| run.addr < module.end && run.addr + run.len > module.start)
                {
                    memory.map_file(run.addr, run.len, file.as_fd(), offset + run.addr)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every page from `image`, by address.
    fn pages_of(image: &MemoryImage) -> Vec<(u64, Vec<u8>)> {
        let contents = image.run_contents().unwrap();
        image
            .runs
            .iter()
            .zip(contents)
            .flat_map(|(run, bytes)| {
                (0..run.len / PAGE).map(move |i| {
                    let at = (i * PAGE) as usize;
                    (run.addr + i * PAGE, bytes[at..at + PAGE as usize].to_vec())
                })
            })
            .collect()
    }

    #[test]
    fn pieces_hold_the_pages_worth_saving_and_only_them() {
        let memory = GuestMemory::new(32 << 20).unwrap();
        let module = (8 << 20)..(8 << 20) + 3 * PAGE;
        let artifact = vec![7u8; 2 * PAGE as usize + 100];
        let mut expected = Vec::new();
        for index in 0..2048u64 {
            let page = index * PAGE;
            let byte = match index % 5 {
                // Written back to zero: backed, but nothing worth sending.
                0 => 0,
                _ => (index % 251) as u8 + 1,
            };
            memory
                .mem()
                .write_obj(byte, GuestAddress(page + 17))
                .unwrap();
            if byte != 0 {
                expected.push(page);
            }
        }
        // The module: its first page as the artifact has it, its second changed.
        memory
            .mem()
            .write_slice(&artifact, GuestAddress(module.start))
            .unwrap();
        memory
            .mem()
            .write_obj(1u8, GuestAddress(module.start + PAGE + 5))
            .unwrap();
        expected.push(module.start + PAGE);
        let whole = MemoryImage::capture(&memory, 32 << 20, module.clone(), &artifact, None);
        let mut pieces = Vec::new();
        MemoryImage::capture_in_pieces(
            &memory,
            32 << 20,
            module,
            &artifact,
            None,
            5 * PAGE as usize,
            |piece| {
                pieces.push(piece);
                // A used buffer, full of what it held, for the next piece.
                Some(vec![0xAA; 6 * PAGE as usize])
            },
        );
        let in_pieces: Vec<_> = pieces.iter().flat_map(pages_of).collect();
        assert_eq!(in_pieces, pages_of(&whole));
        assert_eq!(
            in_pieces.iter().map(|(page, _)| *page).collect::<Vec<_>>(),
            expected
        );
        for (page, contents) in &in_pieces {
            let mut now = vec![0; PAGE as usize];
            memory
                .mem()
                .read_slice(&mut now, GuestAddress(*page))
                .unwrap();
            assert_eq!(&now, contents, "page {page:#x}");
        }
        assert!(pieces.iter().all(|piece| piece.saved_len() <= 6 * PAGE));
        assert!(pieces.len() > 300, "{} pieces", pieces.len());
    }
}
