//! A container's root filesystem: the snapshot mounts containerd hands the task (an
//! overlay, or a bind mount of a `native` snapshot), mounted at the bundle's `rootfs`
//! for as long as the container lives, as runc's shim does.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use containerd_shim::protos::api::Mount;

/// A mounted root filesystem, unmounted by [`RootFs::unmount`].
#[derive(Debug)]
pub struct RootFs {
    path: PathBuf,
    mounted: bool,
}

impl RootFs {
    /// Mounts `mounts` in order at `path` (made if missing). With no mounts, `path` is
    /// the root as the bundle holds it.
    pub fn mount(path: &Path, mounts: &[Mount]) -> io::Result<Self> {
        if mounts.is_empty() {
            return Ok(Self {
                path: path.to_path_buf(),
                mounted: false,
            });
        }
        std::fs::create_dir_all(path)?;
        let mut root = Self {
            path: path.to_path_buf(),
            mounted: false,
        };
        for mount in mounts {
            containerd_shim::mount::mount_rootfs(
                Some(mount.type_.as_str()).filter(|kind| !kind.is_empty()),
                Some(mount.source.as_str()).filter(|source| !source.is_empty()),
                &mount.options,
                path,
            )
            .map_err(|e| {
                io::Error::other(format!(
                    "cannot mount the container's root filesystem ({} {}) at `{}`: {e}",
                    mount.type_,
                    mount.source,
                    path.display()
                ))
            })?;
            root.mounted = true;
        }
        Ok(root)
    }

    /// Where the root filesystem is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts what [`RootFs::mount`] mounted.
    pub fn unmount(&mut self) -> io::Result<()> {
        if self.mounted {
            unmount_all(&self.path)?;
            self.mounted = false;
        }
        Ok(())
    }
}

/// Unmounts everything mounted at `path`, lazily (a file still open there keeps the
/// mount alive only for itself); nothing mounted there is not an error.
pub fn unmount_all(path: &Path) -> io::Result<()> {
    let name = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    loop {
        // SAFETY: `name` is a NUL-terminated path that lives across the call.
        if unsafe { libc::umount2(name.as_ptr(), libc::MNT_DETACH) } != 0 {
            let error = io::Error::last_os_error();
            return match error.raw_os_error() {
                Some(libc::EINVAL | libc::ENOENT) => Ok(()),
                _ => Err(error),
            };
        }
    }
}
