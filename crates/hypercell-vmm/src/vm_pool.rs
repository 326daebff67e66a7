//! VMs made ahead of need. Creating a VM and its vCPU costs the kernel about 0.4 ms here,
//! most of what restoring a cell from a template costs; a pool keeps a few ready, made
//! by a thread of its own, so that a process that starts many cells (a server, the
//! daemon) starts each without waiting on the kernel.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use crate::{Vcpu, Vm};

/// A VM with its one vCPU, made and never run.
pub type FreshVm = (Vm, Vcpu);

/// Keeps up to a number of fresh VMs ready; taking one wakes its thread to make another.
pub struct VmPool {
    shared: Arc<Shared>,
    filler: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    state: Mutex<PoolState>,
    changed: Condvar,
    target: usize,
}

struct PoolState {
    ready: Vec<FreshVm>,
    closed: bool,
}

/// How long the pool waits before trying again after the kernel refused a VM.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl VmPool {
    /// A pool that keeps `target` fresh VMs ready.
    pub fn new(target: usize) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(PoolState {
                ready: Vec::with_capacity(target),
                closed: false,
            }),
            changed: Condvar::new(),
            target,
        });
        let filler = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("hypercell-vm-pool".into())
                .spawn(move || shared.fill())
                .ok()
        };
        Self { shared, filler }
    }

    /// A fresh VM, if one is ready.
    pub fn take(&self) -> Option<FreshVm> {
        let taken = self.shared.lock().ready.pop();
        self.shared.changed.notify_all();
        taken
    }

    /// Waits until the pool holds its target of fresh VMs, or `timeout` passes; returns
    /// how many it holds.
    pub fn wait_until_full(&self, timeout: Duration) -> usize {
        let state = self.shared.lock();
        let (state, _) = self
            .shared
            .changed
            .wait_timeout_while(state, timeout, |state| {
                state.ready.len() < self.shared.target && !state.closed
            })
            .unwrap_or_else(PoisonError::into_inner);
        state.ready.len()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pool's thread: makes VMs while fewer than the target are ready, at a low
    /// priority, so that on a busy host it takes no time from the cells it makes VMs
    /// for (a VM is made ahead, not waited on).
    fn fill(&self) {
        // SAFETY: setpriority takes plain integers; on Linux, PRIO_PROCESS with a
        // thread id sets that thread's nice value. Failing leaves the priority as is.
        unsafe {
            libc::setpriority(
                libc::PRIO_PROCESS,
                libc::gettid() as libc::id_t,
                BACKGROUND_NICE,
            )
        };
        loop {
            {
                let state = self.lock();
                let state = self
                    .changed
                    .wait_while(state, |state| {
                        state.ready.len() >= self.target && !state.closed
                    })
                    .unwrap_or_else(PoisonError::into_inner);
                if state.closed {
                    return;
                }
            }
            let made = Vm::new()
                .map_err(|e| e.to_string())
                .and_then(|vm| match vm.create_vcpu() {
                    Ok(vcpu) => Ok((vm, vcpu)),
                    Err(e) => Err(e.to_string()),
                });
            match made {
                Ok(fresh) => {
                    self.lock().ready.push(fresh);
                    self.changed.notify_all();
                }
                Err(error) => {
                    // Cells make their own VMs meanwhile, and report the error if the
                    // kernel refuses them too.
                    tracing::debug!("the VM pool could not make a VM: {error}");
                    let state = self.lock();
                    let _ = self
                        .changed
                        .wait_timeout_while(state, RETRY_AFTER, |state| !state.closed);
                }
            }
        }
    }
}

/// The nice value of the pool's thread.
const BACKGROUND_NICE: libc::c_int = 10;

impl Drop for VmPool {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        if let Some(filler) = self.filler.take() {
            let _ = filler.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_refills_what_is_taken_and_stops_when_dropped() {
        let pool = VmPool::new(2);
        assert_eq!(pool.wait_until_full(Duration::from_secs(10)), 2);
        let (vm, vcpu) = pool.take().expect("a ready VM");
        assert_eq!(vcpu.exits(), 0);
        assert_eq!(pool.wait_until_full(Duration::from_secs(10)), 2);
        drop((vcpu, vm));
        drop(pool);
    }
}
