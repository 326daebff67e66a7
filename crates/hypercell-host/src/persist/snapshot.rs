//! A running cell's complete state at one instant: its vCPU, its host services and the
//! guest memory it touched, from which a new cell goes on where it stopped.

use std::ops::Range;

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    /// Where the run starts.
    pub addr: u64,
    /// Its contents, encoded as one byte string (not byte by byte).
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// Guest memory, sparse: the size of the whole, and only the pages that hold data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryImage {
    /// Size of the guest memory.
    pub size: u64,
    /// Where the compiled module is mapped from its cache file, and its length: pages
    /// there are saved only where the guest changed them.
    pub module: Range<u64>,
    /// Runs of saved pages: guest-physical address and contents.
    pub runs: Vec<PageRun>,
    /// Runs of backed pages that hold only zeros: address and length.
    pub zero_runs: Vec<(u64, u64)>,
}

impl MemoryImage {
    /// Saves the pages of `memory` below `mapped` that the host backed, less those of
    /// the mapped module (at `module`) that still equal `artifact`.
    pub fn capture(memory: &GuestMemory, mapped: u64, module: Range<u64>, artifact: &[u8]) -> Self {
        let mut runs: Vec<PageRun> = Vec::new();
        let mut zero_runs: Vec<(u64, u64)> = Vec::new();
        let mut page_bytes = vec![0u8; PAGE as usize];
        // A page never backed holds zeros (and one of the module that the guest changed
        // is always backed: it is a private copy).
        let resident = memory.resident_pages(0..mapped.min(memory.size()));
        for (index, _) in resident.iter().enumerate().filter(|&(_, &backed)| backed) {
            let page = index as u64 * PAGE;
            let in_module = module.contains(&page);
            if memory
                .mem()
                .read_slice(&mut page_bytes, GuestAddress(page))
                .is_err()
            {
                continue;
            }
            if in_module {
                let offset = (page - module.start) as usize;
                let original = artifact.get(offset..).unwrap_or_default();
                let original = &original[..original.len().min(PAGE as usize)];
                let unchanged = page_bytes[..original.len()] == *original
                    && page_bytes[original.len()..].iter().all(|&b| b == 0);
                if unchanged {
                    continue;
                }
            }
            if page_bytes.iter().all(|&b| b == 0) {
                match zero_runs.last_mut() {
                    Some((start, len)) if *start + *len == page => *len += PAGE,
                    _ => zero_runs.push((page, PAGE)),
                }
                continue;
            }
            match runs.last_mut() {
                Some(run) if run.addr + run.bytes.len() as u64 == page => {
                    run.bytes.extend_from_slice(&page_bytes);
                }
                _ => runs.push(PageRun {
                    addr: page,
                    bytes: page_bytes.clone(),
                }),
            }
        }
        Self {
            size: memory.size(),
            module,
            runs,
            zero_runs,
        }
    }

    /// Writes the saved pages into `memory`; false when a run lies outside it.
    pub fn restore_into(&self, memory: &GuestMemory) -> bool {
        let zeros = [0u8; PAGE as usize];
        let zeroed = self.zero_runs.iter().all(|&(start, len)| {
            let end = start.checked_add(len).filter(|&end| end <= memory.size());
            end.is_some()
                && (start..start + len).step_by(PAGE as usize).all(|page| {
                    let len = PAGE.min(start + len - page) as usize;
                    memory
                        .mem()
                        .write_slice(&zeros[..len], GuestAddress(page))
                        .is_ok()
                })
        });
        zeroed
            && self.runs.iter().all(|run| {
                memory
                    .mem()
                    .write_slice(&run.bytes, GuestAddress(run.addr))
                    .is_ok()
            })
    }
}
