//! Modules and snapshot files loaded once and shared by every cell that runs them, for
//! as long as the file is unchanged: the cells of one template map its memory image
//! from one open file, and a module's code comes from one compile-cache mapping.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

/// What tells one version of a file from the next.
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    device: u64,
    inode: u64,
    len: u64,
    modified_ns: i128,
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        let metadata = std::fs::metadata(path).ok()?;
        Some(Self {
            device: metadata.dev(),
            inode: metadata.ino(),
            len: metadata.len(),
            modified_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
        })
    }
}

/// Things made from files, by path, each kept while its file is unchanged.
pub struct Loaded<T> {
    entries: Mutex<HashMap<PathBuf, (FileStamp, Arc<T>)>>,
}

impl<T> Default for Loaded<T> {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Loaded<T> {
    /// What `load` made of the file at `path`, made again if the file changed since.
    pub fn get_or_load<E>(
        &self,
        path: &Path,
        load: impl FnOnce() -> Result<T, E>,
    ) -> Result<Arc<T>, E> {
        let stamp = FileStamp::of(path);
        if let Some(stamp) = stamp {
            let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((known, loaded)) = entries.get(path)
                && *known == stamp
            {
                return Ok(Arc::clone(loaded));
            }
        }
        // Loaded outside the lock: another cell's start need not wait on this one.
        let loaded = Arc::new(load()?);
        if let Some(stamp) = stamp {
            self.entries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(path.to_path_buf(), (stamp, Arc::clone(&loaded)));
        }
        Ok(loaded)
    }

    /// Lets go of what was made of the file at `path`: what is not shared elsewhere
    /// goes, its file with it.
    pub fn forget(&self, path: &Path) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_loaded_once_until_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "one").unwrap();
        let loaded = Loaded::default();
        let read = || std::fs::read_to_string(&path);
        let first = loaded.get_or_load(&path, read).unwrap();
        let again = loaded.get_or_load(&path, || -> std::io::Result<String> {
            panic!("an unchanged file is not loaded again")
        });
        assert!(Arc::ptr_eq(&first, &again.unwrap()));
        std::fs::write(&path, "two, longer").unwrap();
        assert_eq!(*loaded.get_or_load(&path, read).unwrap(), "two, longer");
    }
}
