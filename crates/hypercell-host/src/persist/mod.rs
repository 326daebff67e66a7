//! Saved state: plain, serialisable types apart from the live objects they describe (as
//! Firecracker's `persist.rs` keeps them), from which a cell can be built again.

pub mod file;
pub mod files;
pub mod snapshot;

pub use file::{SnapshotFile, SnapshotFileError};
pub use files::{DescriptorState, FileTableState, PersistError};
pub use snapshot::{
    CellSnapshot, GrowthState, ImageError, MemoryImage, ModuleIdentity, PageRun, SavedPages,
    ServicesState, SnapshotError, TemplatePoint,
};
