//! The shim's own life: containerd runs the binary with `start` to get the address of
//! a shim serving a container (starting one, or finding the one of its pod), with
//! `delete` to clean up after a shim that died, and the shim itself serves the task API
//! until containerd shuts it down.

use std::path::Path;
use std::sync::Arc;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::write_address;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts, socket_address};

use crate::rootfs::unmount_all;
use crate::spec::ContainerSpec;
use crate::task::TaskService;
use crate::templates::TemplateCache;

/// The shim.
pub struct HypercellShim {
    namespace: String,
    /// The address this shim serves on, when it is the serving process.
    address: String,
    exit: Arc<ExitSignal>,
}

/// The key of the shim serving the container whose bundle is the current directory:
/// its pod, as the CRI plugin names it, so that the containers of a pod share one
/// shim as under runc, or else the container itself.
fn grouping(id: &str) -> String {
    ContainerSpec::read(Path::new("."))
        .ok()
        .and_then(|spec| spec.sandbox_id)
        .unwrap_or_else(|| id.to_owned())
}

impl containerd_shim::Shim for HypercellShim {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Self {
            namespace: args.namespace.clone(),
            address: socket_address(&args.address, &args.namespace, &grouping(&args.id)),
            exit: Arc::default(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        // containerd runs `start` in the container's bundle.
        let grouping = grouping(&opts.id);
        let (_, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        // The shim died with its container: what it had mounted is left in the bundle.
        let _ = unmount_all(Path::new("rootfs"));
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: containerd_shim::util::timestamp().ok().into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
        // The crate removes the socket through the address file in the bundle, which
        // containerd may have deleted by now; the listener stays open until the end.
        if let Some(path) = self.address.strip_prefix("unix://") {
            let _ = std::fs::remove_file(path);
        }
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        TaskService::new(
            crate::events::Events::new(publisher, self.namespace.clone()),
            TemplateCache::from_env(),
            self.exit.clone(),
        )
    }
}
