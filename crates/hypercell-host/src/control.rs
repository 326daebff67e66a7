//! Reaching a running cell from other threads: to stop it (its time limit passed, or
//! the host process got a signal) or to make it hand over buffered output.
//!
//! The thread that started the cell supervises it; the vCPU thread looks at the
//! requests whenever a kick brings it out of the guest or out of a blocking call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use hypercell_vmm::VcpuHandle;

/// Why a cell was stopped from outside its program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Its time limit passed.
    Timeout,
    /// Someone asked, for example the host process on a signal (the signal's number).
    Signal(i32),
}

/// A cell's control: stop requests and output hand-overs. Clones share one cell.
#[derive(Clone, Debug, Default)]
pub struct CellControl {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    changed: Condvar,
    drain: AtomicBool,
    stopping: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    stop: Option<StopReason>,
    vcpu: Option<VcpuHandle>,
    finished: bool,
}

/// What [`CellControl::wait_until`] woke for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// The vCPU thread finished.
    Finished,
    /// A stop was requested and the vCPU thread has not finished yet.
    Stopping,
    /// The time given passed.
    Timeout,
}

impl CellControl {
    /// A control for a cell that has not started.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Asks the cell to stop: it ends as soon as its vCPU leaves the guest or a
    /// blocking call, after its buffered output is delivered. The first reason given
    /// is the one reported. Returns whether a cell was running to receive it (false
    /// before it starts and after it ends).
    pub fn stop(&self, reason: StopReason) -> bool {
        let mut state = self.state();
        state.stop.get_or_insert(reason);
        self.inner.stopping.store(true, Ordering::SeqCst);
        self.inner.changed.notify_all();
        let running = state.vcpu.is_some() && !state.finished;
        if let Some(vcpu) = &state.vcpu {
            vcpu.kick();
        }
        running
    }

    /// The stop requested so far, if any.
    pub fn stop_requested(&self) -> Option<StopReason> {
        if !self.inner.stopping.load(Ordering::SeqCst) {
            return None;
        }
        self.state().stop
    }

    /// Asks the vCPU to hand over its buffered output at its next kick.
    pub(crate) fn request_drain(&self) {
        self.inner.drain.store(true, Ordering::SeqCst);
        self.kick();
    }

    /// Whether output was asked for since the last call.
    pub(crate) fn take_drain(&self) -> bool {
        self.inner.drain.swap(false, Ordering::SeqCst)
    }

    /// Kicks the vCPU, if it runs.
    pub(crate) fn kick(&self) {
        if let Some(vcpu) = &self.state().vcpu {
            vcpu.kick();
        }
    }

    /// Records the handle of the cell's vCPU, so that requests reach it.
    pub(crate) fn attach(&self, vcpu: VcpuHandle) {
        self.state().vcpu = Some(vcpu);
    }

    /// Records that the vCPU thread has finished.
    pub(crate) fn finish(&self) {
        let mut state = self.state();
        state.finished = true;
        self.inner.changed.notify_all();
    }

    /// Waits until the vCPU thread finishes, a stop is requested, or `deadline`.
    pub(crate) fn wait_until(&self, deadline: Instant) -> Wake {
        let mut state = self.state();
        loop {
            if state.finished {
                return Wake::Finished;
            }
            if state.stop.is_some() {
                return Wake::Stopping;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Wake::Timeout;
            }
            state = self
                .inner
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_first_stop_reason_wins_and_waiters_wake() {
        let control = CellControl::new();
        assert!(!control.stop(StopReason::Signal(15)), "no cell runs yet");
        control.stop(StopReason::Timeout);
        assert_eq!(control.stop_requested(), Some(StopReason::Signal(15)));
        let far = Instant::now() + Duration::from_secs(60);
        assert_eq!(control.wait_until(far), Wake::Stopping);
        control.finish();
        assert_eq!(control.wait_until(far), Wake::Finished);
    }

    #[test]
    fn waiting_times_out_and_drains_are_taken_once() {
        let control = CellControl::new();
        let soon = Instant::now() + Duration::from_millis(5);
        assert_eq!(control.wait_until(soon), Wake::Timeout);
        assert_eq!(control.stop_requested(), None);
        control.request_drain();
        assert!(control.take_drain());
        assert!(!control.take_drain());
    }
}
