//! Reaching a running cell from other threads: to stop it (its time limit passed, or
//! the host process got a signal), to pause and resume it, or to make it hand over
//! buffered output.
//!
//! The thread that started the cell supervises it; the vCPU thread looks at the
//! requests whenever a kick brings it out of the guest or out of a blocking call.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

use hypercell_abi::Hypercall;
use hypercell_vmm::VcpuHandle;

use crate::hypercall::HypercallCounts;
use crate::identity::NextRequest;
use crate::persist::{CellSnapshot, MemoryImage, SavedPages, SnapshotError};

/// How often a vCPU that is asked to pause or stop is kicked until it does.
pub(crate) const KICK_INTERVAL: Duration = Duration::from_millis(1);

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
    pausing: AtomicBool,
    /// VM exits taken so far.
    exits: AtomicU64,
    /// Hypercalls made so far, by call number.
    hypercalls: [AtomicU64; HYPERCALL_NUMBERS],
    /// Bytes delivered to stdout and stderr so far.
    delivered: [AtomicU64; 2],
    /// When the vCPU thread began to wait for stdin, in nanoseconds on
    /// [`Inner::epoch`]'s clock plus one; 0 while it is not waiting.
    input_wait: AtomicU64,
    epoch: std::sync::OnceLock<Instant>,
    /// Buffers of a pre-copy's pieces, sent and handed back to be filled again: a
    /// fresh buffer costs the host a page fault for each of its pages.
    spare_pieces: Mutex<Vec<Vec<u8>>>,
}

/// Most piece buffers a pre-copy keeps for reuse: enough for those queued, the one
/// being sent and the one being filled, so that a steady pre-copy makes no new ones.
const SPARE_PIECES: usize = QUEUED_PIECES + 2;

/// Most copied pieces of a pre-copy that wait to be sent: copying waits beyond that,
/// rather than fault in ever more buffers ahead of a slower link.
const QUEUED_PIECES: usize = 2;

/// Hypercall numbers counted apart.
const HYPERCALL_NUMBERS: usize = 16;

/// What a cell has done so far, read from any thread while it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CellActivity {
    /// VM exits taken.
    pub exits: u64,
    /// The hypercalls among them.
    pub hypercalls: HypercallCounts,
    /// CPU time of the vCPU thread (the guest's computing and the hypercalls it
    /// served), once the vCPU has started.
    pub cpu_time: Option<Duration>,
}

/// A snapshot's way back to whoever asked for it.
type SnapshotReply = mpsc::Sender<Result<CellSnapshot, SnapshotError>>;

/// Which memory a snapshot saves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SnapshotScope {
    /// Every page that holds data: the snapshot stands alone.
    Whole,
    /// The pages the cell made its own since it started: the snapshot goes on top of
    /// what the cell started from.
    Changes,
    /// Every page, of a cell joined by channels to neighbours that are paused and
    /// saved with it (see [`CellControl::snapshot_with_neighbours`]).
    WithNeighbours,
    /// The pages written since the last round of a pre-copy (see
    /// [`CellControl::precopy_start`]): the snapshot goes on top of what the rounds
    /// copied.
    Dirty,
}

/// What a pre-copy asks of a running cell's supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PrecopyStep {
    /// Log writes from now on and copy every page that holds data.
    Start,
    /// Copy the pages written since the last step.
    Round,
    /// Stop logging writes.
    End,
}

/// Where a pre-copy step's pages go: one image, or, for [`PrecopyStep::Start`], the
/// pieces of one in order, the sender dropped after the last.
pub(crate) type PrecopyReply = mpsc::SyncSender<Result<MemoryImage, SnapshotError>>;

/// Bytes of pages in each piece of a pre-copy's first copy.
pub const PRECOPY_PIECE: usize = 1 << 20;

/// What a parked vCPU thread is asked to do.
pub(crate) enum ParkRequest {
    /// Hand over buffered output.
    Drain,
    /// Take a snapshot and send it back.
    Snapshot(SnapshotReply, SnapshotScope),
}

#[derive(Debug, Default)]
struct State {
    stop: Option<StopReason>,
    /// A snapshot asked for and not yet taken.
    snapshot: Option<(SnapshotReply, SnapshotScope)>,
    /// Measures of the memory touched asked for, and where to send each: askers at
    /// the same time share one measure.
    measure: Vec<mpsc::Sender<u64>>,
    /// A pre-copy step asked for and not yet taken.
    precopy: Option<(PrecopyStep, PrecopyReply)>,
    /// The vCPU thread answered a request and waits here for the next.
    boundary: Option<BoundaryReply>,
    vcpu: Option<VcpuHandle>,
    /// A cell has begun with this control (it may not run its vCPU yet).
    begun: bool,
    finished: bool,
    /// A pause was asked for and no resume since.
    pause: bool,
    /// The vCPU thread is parked: out of the guest and out of any blocking call.
    parked: bool,
    /// The vCPU thread's CPU-time clock, while it runs.
    vcpu_clock: Option<libc::clockid_t>,
    /// That clock when the cell's vCPU began on the thread, which may have run other
    /// cells before (a reused partition's).
    vcpu_clock_start: Duration,
    /// The vCPU thread's CPU time when it finished.
    vcpu_time: Option<Duration>,
}

/// The time on `clock`, if it can be read.
fn clock_time(clock: libc::clockid_t) -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the struct it is given.
    (unsafe { libc::clock_gettime(clock, &mut now) } == 0)
        .then(|| Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}

/// Where a cell that answered a request learns its next one.
pub(crate) type BoundaryReply = mpsc::SyncSender<Option<NextRequest>>;

/// What [`CellControl::wait_for_tick`] woke for.
#[derive(Debug)]
pub(crate) enum Wake {
    /// The vCPU thread finished.
    Finished,
    /// A stop was requested and the vCPU thread has not finished yet.
    Stopping,
    /// The memory the cell touched is asked for: here is where to send it.
    Measure(Vec<mpsc::Sender<u64>>),
    /// A pre-copy step is asked for.
    Precopy(PrecopyStep, PrecopyReply),
    /// The cell answered its request: its next goes here (`None`: no more come).
    Boundary(BoundaryReply),
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

    /// Pauses the cell: its vCPU leaves the guest, or the blocking call it is in, and
    /// parks until [`Self::resume`] or a stop. Returns once it is parked, true, or
    /// false when no cell is running to pause (not yet started, or ended).
    pub fn pause(&self) -> bool {
        let mut state = self.state();
        state.pause = true;
        self.inner.pausing.store(true, Ordering::SeqCst);
        loop {
            if state.parked {
                return true;
            }
            if state.finished || !state.begun {
                return false;
            }
            if let Some(vcpu) = &state.vcpu {
                vcpu.kick();
            }
            // A kick that lands just before a blocking call begins is not seen by it:
            // kick again until the vCPU thread says it is parked.
            state = self
                .inner
                .changed
                .wait_timeout(state, KICK_INTERVAL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Pauses the cell and takes a snapshot of it; the cell stays paused until
    /// [`Self::resume`].
    pub fn snapshot(&self) -> Result<CellSnapshot, SnapshotError> {
        self.take_snapshot(SnapshotScope::Whole)
    }

    /// Pauses the cell and takes a snapshot of what it changed since it started: its
    /// vCPU and services, and only the memory pages it made its own. A cell restored
    /// from it over the snapshot or template the cell started from (see
    /// [`crate::Cell::resume_changes`]) goes on where it stopped. Costs what the cell
    /// wrote, not its size. The cell stays paused until [`Self::resume`].
    pub fn snapshot_changes(&self) -> Result<CellSnapshot, SnapshotError> {
        self.take_snapshot(SnapshotScope::Changes)
    }

    /// Pauses a cell joined to others by channels and takes a snapshot of it, as
    /// [`Self::snapshot`] does. For a caller that has paused every cell joined to it
    /// and saves them, and the channels' contents, with it: a snapshot of one joined
    /// cell alone would split its channels, which [`Self::snapshot`] refuses.
    pub fn snapshot_with_neighbours(&self) -> Result<CellSnapshot, SnapshotError> {
        self.take_snapshot(SnapshotScope::WithNeighbours)
    }

    /// Begins a pre-copy of the running cell, for a migration: from now on KVM logs
    /// the pages the guest writes (and the host marks those it writes), and this
    /// yields a copy of every page that holds data, taken while the cell runs on, in
    /// pieces of about [`PRECOPY_PIECE`] bytes as they are copied (so that the first
    /// can be sent while the rest are copied). Each [`Self::precopy_round`] then
    /// copies the pages written since, and [`Self::snapshot_dirty`] pauses the cell
    /// and takes the last of them with its state: those images laid over one another
    /// in order are the cell's memory. [`Self::precopy_end`] stops the logging, for a
    /// cell that goes on here.
    pub fn precopy_start(
        &self,
    ) -> Result<impl Iterator<Item = Result<MemoryImage, SnapshotError>>, SnapshotError> {
        self.ask_precopy(PrecopyStep::Start)
            .map(mpsc::Receiver::into_iter)
    }

    /// Copies the pages the cell wrote since the last pre-copy step, while it runs
    /// (see [`Self::precopy_start`]).
    pub fn precopy_round(&self) -> Result<MemoryImage, SnapshotError> {
        self.precopy(PrecopyStep::Round)
    }

    /// Stops logging the cell's writes, once a pre-copy is over.
    pub fn precopy_end(&self) -> Result<(), SnapshotError> {
        self.spares().clear();
        self.precopy(PrecopyStep::End).map(|_| ())
    }

    /// Hands back a piece of [`Self::precopy_start`] once its pages are sent, for its
    /// buffer to hold a later piece.
    pub fn precopy_recycle(&self, piece: MemoryImage) {
        if let SavedPages::InMemory(mut buffer) = piece.pages {
            let mut spares = self.spares();
            if buffer.capacity() >= PRECOPY_PIECE && spares.len() < SPARE_PIECES {
                // Its pages stay as they are, to be overwritten, not zeroed first.
                buffer.resize(buffer.capacity(), 0);
                spares.push(buffer);
            }
        }
    }

    /// A buffer for a pre-copy's next piece: one handed back, or a new one (whose
    /// zeros cost nothing until its pages are faulted in).
    pub(crate) fn piece_buffer(&self) -> Vec<u8> {
        self.spares()
            .pop()
            .unwrap_or_else(|| vec![0; PRECOPY_PIECE + 4096])
    }

    fn spares(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        self.inner
            .spare_pieces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Pauses the cell and takes a snapshot whose memory is only the pages written
    /// since the last pre-copy step (see [`Self::precopy_start`]). The cell stays
    /// paused until [`Self::resume`].
    pub fn snapshot_dirty(&self) -> Result<CellSnapshot, SnapshotError> {
        self.take_snapshot(SnapshotScope::Dirty)
    }

    fn precopy(&self, step: PrecopyStep) -> Result<MemoryImage, SnapshotError> {
        // The supervisor answers, or drops the sender when the cell ends first.
        self.ask_precopy(step)?
            .recv()
            .unwrap_or(Err(SnapshotError::NotRunning))
    }

    /// Asks the cell's supervisor for a pre-copy step: where its answers come.
    fn ask_precopy(
        &self,
        step: PrecopyStep,
    ) -> Result<mpsc::Receiver<Result<MemoryImage, SnapshotError>>, SnapshotError> {
        let (reply, answer) = mpsc::sync_channel(QUEUED_PIECES);
        let mut state = self.state();
        if state.finished || !state.begun || state.stop.is_some() {
            return Err(SnapshotError::NotRunning);
        }
        state.precopy = Some((step, reply));
        self.inner.changed.notify_all();
        Ok(answer)
    }

    fn take_snapshot(&self, scope: SnapshotScope) -> Result<CellSnapshot, SnapshotError> {
        if !self.pause() {
            return Err(SnapshotError::NotRunning);
        }
        let (reply, answer) = mpsc::channel();
        {
            let mut state = self.state();
            state.snapshot = Some((reply, scope));
            self.inner.changed.notify_all();
        }
        // The vCPU thread answers, or drops the sender when it ends first.
        answer.recv().unwrap_or(Err(SnapshotError::NotRunning))
    }

    /// Asks for a pause without waiting for it: a cell not started yet parks before
    /// its guest runs at all.
    pub(crate) fn hold(&self) {
        self.state().pause = true;
        self.inner.pausing.store(true, Ordering::SeqCst);
    }

    /// Lets a paused cell go on.
    pub fn resume(&self) {
        let mut state = self.state();
        state.pause = false;
        self.inner.pausing.store(false, Ordering::SeqCst);
        self.inner.changed.notify_all();
    }

    /// Whether the cell's vCPU is parked by a pause.
    pub fn is_paused(&self) -> bool {
        self.state().parked
    }

    /// On the vCPU thread, inside a blocking call: parks while paused. Output was
    /// delivered before the call, so none is handed over. When a snapshot is asked for,
    /// a `restartable` call (a read or write that has moved nothing yet, a sleep)
    /// returns true to be abandoned, so that the snapshot is taken between exits and the
    /// guest makes the call again; any other call refuses the snapshot.
    pub(crate) fn park_in_call(&self, restartable: bool) -> bool {
        self.park(
            |request| {
                if let ParkRequest::Snapshot(reply, _) = request {
                    let _ = reply.send(Err(SnapshotError::InBlockingCall));
                }
            },
            restartable,
        )
    }

    /// On the vCPU thread: parks while a pause is asked for and no stop, passing what
    /// is asked of it meanwhile (output, a snapshot) to `serve`.
    pub(crate) fn park_while_paused(&self, serve: impl FnMut(ParkRequest)) {
        self.park(serve, false);
    }

    /// Parks as [`Self::park_while_paused`]; with `leave_for_snapshot`, returns true as
    /// soon as a snapshot is asked for, leaving the request for the next park.
    fn park(&self, mut serve: impl FnMut(ParkRequest), leave_for_snapshot: bool) -> bool {
        if !self.inner.pausing.load(Ordering::SeqCst) {
            return false;
        }
        let mut state = self.state();
        while state.pause && state.stop.is_none() {
            if leave_for_snapshot && state.snapshot.is_some() {
                state.parked = false;
                return true;
            }
            if !state.parked {
                state.parked = true;
                self.inner.changed.notify_all();
            }
            if let Some((reply, scope)) = state.snapshot.take() {
                drop(state);
                serve(ParkRequest::Snapshot(reply, scope));
                state = self.state();
                continue;
            }
            if self.take_drain() {
                drop(state);
                serve(ParkRequest::Drain);
                state = self.state();
                continue;
            }
            state = self
                .inner
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.parked = false;
        false
    }

    /// Bytes of memory the running cell has touched so far (as its report gives them
    /// once it ends), measured by its supervising thread: `None` when no cell runs.
    pub fn memory_touched(&self) -> Option<u64> {
        let (reply, answer) = mpsc::channel();
        {
            let mut state = self.state();
            if state.finished || !state.begun {
                return None;
            }
            state.measure.push(reply);
            self.inner.changed.notify_all();
        }
        answer.recv_timeout(Duration::from_secs(5)).ok()
    }

    /// How long the cell has waited for its stdin without a byte, when its vCPU thread
    /// is blocked reading it (paused or not).
    pub fn waiting_for_input(&self) -> Option<Duration> {
        let since = self.inner.input_wait.load(Ordering::SeqCst);
        let epoch = self.inner.epoch.get()?;
        (since != 0).then(|| {
            epoch
                .elapsed()
                .saturating_sub(Duration::from_nanos(since - 1))
        })
    }

    /// On the vCPU thread: records that it begins (`true`) or ends a wait for stdin.
    /// The end wakes the supervisor, which does not look at an idle cell's output.
    pub(crate) fn wait_for_input(&self, waiting: bool) {
        if waiting {
            let epoch = self.inner.epoch.get_or_init(Instant::now);
            let since = epoch.elapsed().as_nanos() as u64 + 1;
            self.inner.input_wait.store(since, Ordering::SeqCst);
        } else {
            let _state = self.state();
            self.inner.input_wait.store(0, Ordering::SeqCst);
            self.inner.changed.notify_all();
        }
    }

    /// The stop requested so far, if any.
    pub fn stop_requested(&self) -> Option<StopReason> {
        if !self.inner.stopping.load(Ordering::SeqCst) {
            return None;
        }
        self.state().stop
    }

    /// On the vCPU thread of a cell that serves requests, once it answered one: waits
    /// for the supervisor to hand it the next, `None` when none comes or the cell is
    /// being stopped.
    pub(crate) fn next_request(&self) -> Option<NextRequest> {
        let (reply, answer) = mpsc::sync_channel(1);
        {
            let mut state = self.state();
            if state.stop.is_some() {
                return None;
            }
            state.boundary = Some(reply);
            self.inner.changed.notify_all();
        }
        answer.recv().ok().flatten()
    }

    /// Lets a vCPU thread waiting for its next request go on without one.
    pub(crate) fn refuse_next_request(&self) {
        self.state().boundary = None;
    }

    /// Asks the vCPU to hand over its buffered output at its next kick.
    pub(crate) fn request_drain(&self) {
        self.inner.drain.store(true, Ordering::SeqCst);
        // A parked vCPU thread waits on the condition variable, not in the guest.
        self.inner.changed.notify_all();
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

    /// Records that a cell begins with this control: from now on a pause waits for its
    /// vCPU to park, even before the vCPU first runs.
    pub(crate) fn begin(&self) {
        self.state().begun = true;
    }

    /// Records the handle of the cell's vCPU, so that requests reach it. Called on the
    /// vCPU thread, whose CPU-time clock it also records.
    pub(crate) fn attach(&self, vcpu: VcpuHandle) {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: pthread_getcpuclockid writes one clock id for the calling thread,
        // which is alive.
        let known = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0;
        let start = clock_time(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or_default();
        let mut state = self.state();
        state.vcpu = Some(vcpu);
        state.vcpu_clock = known.then_some(clock);
        state.vcpu_clock_start = start;
    }

    /// On the vCPU thread, as it ends: keeps its CPU time, as its clock goes with it.
    pub(crate) fn detach(&self) {
        let time = clock_time(libc::CLOCK_THREAD_CPUTIME_ID);
        let mut state = self.state();
        state.vcpu_clock = None;
        state.vcpu_time = time.map(|time| time.saturating_sub(state.vcpu_clock_start));
    }

    /// Counts an exit from the guest.
    pub(crate) fn count_exit(&self) {
        self.inner.exits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `bytes` of output delivered to descriptor `fd` (1 or 2).
    pub(crate) fn count_delivered(&self, fd: u64, bytes: usize) {
        if let Some(count) = fd
            .checked_sub(1)
            .and_then(|stream| self.inner.delivered.get(stream as usize))
        {
            count.fetch_add(bytes as u64, Ordering::SeqCst);
        }
    }

    /// Bytes of output this cell has delivered to its stdout and stderr: in a paused
    /// cell, exactly what a snapshot taken now leaves behind it.
    pub fn delivered(&self) -> [u64; 2] {
        self.inner
            .delivered
            .each_ref()
            .map(|count| count.load(Ordering::SeqCst))
    }

    /// Counts a hypercall.
    pub(crate) fn count_hypercall(&self, call: Hypercall) {
        if let Some(count) = self.inner.hypercalls.get(call as usize) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What the cell has done so far.
    pub fn activity(&self) -> CellActivity {
        let mut hypercalls = [0u64; HYPERCALL_NUMBERS];
        for (count, atomic) in hypercalls.iter_mut().zip(&self.inner.hypercalls) {
            *count = atomic.load(Ordering::Relaxed);
        }
        let state = self.state();
        // The clock is read under the lock that `detach` takes, so its thread has not
        // ended yet.
        let cpu_time = state
            .vcpu_clock
            .and_then(clock_time)
            .map(|time| time.saturating_sub(state.vcpu_clock_start))
            .or(state.vcpu_time);
        drop(state);
        CellActivity {
            exits: self.inner.exits.load(Ordering::Relaxed),
            hypercalls: HypercallCounts::from_counts(hypercalls),
            cpu_time,
        }
    }

    /// Records that the vCPU thread has finished.
    pub(crate) fn finish(&self) {
        let mut state = self.state();
        state.finished = true;
        // A pre-copy step asked for as the cell ended gets no supervisor.
        if let Some((_, reply)) = state.precopy.take() {
            let _ = reply.send(Err(SnapshotError::NotRunning));
        }
        self.inner.changed.notify_all();
    }

    /// What a supervisor waits on between its looks at the cell's output: until the
    /// vCPU thread finishes, a stop is requested, or `tick` (or `deadline`, if
    /// sooner), except that while the
    /// vCPU thread waits for input, which it does with no output pending, the wait
    /// goes on past `tick` until the input comes. An idle cell then costs its
    /// supervisor no wake-ups.
    pub(crate) fn wait_for_tick(&self, tick: Instant, deadline: Option<Instant>) -> Wake {
        let mut state = self.state();
        loop {
            if state.finished {
                return Wake::Finished;
            }
            if state.stop.is_some() {
                return Wake::Stopping;
            }
            if !state.measure.is_empty() {
                return Wake::Measure(std::mem::take(&mut state.measure));
            }
            if let Some((step, reply)) = state.precopy.take() {
                return Wake::Precopy(step, reply);
            }
            if let Some(reply) = state.boundary.take() {
                return Wake::Boundary(reply);
            }
            let idle = self.inner.input_wait.load(Ordering::SeqCst) != 0;
            let until = if idle {
                deadline
            } else {
                Some(deadline.map_or(tick, |deadline| deadline.min(tick)))
            };
            state = match until {
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Wake::Timeout;
                    }
                    self.inner
                        .changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .inner
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    /// Waits until the vCPU thread finishes or `deadline`, a stop asked for or not;
    /// true if it finished. What a supervisor waits on between the kicks of a stop, so
    /// that it does not kick without pause.
    pub(crate) fn wait_for_finish(&self, deadline: Instant) -> bool {
        let mut state = self.state();
        loop {
            if state.finished {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
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
        assert!(matches!(control.wait_for_tick(far, None), Wake::Stopping));
        control.finish();
        assert!(matches!(control.wait_for_tick(far, None), Wake::Finished));
    }

    #[test]
    fn a_cell_that_is_not_running_cannot_be_paused() {
        let control = CellControl::new();
        assert!(!control.pause());
        assert!(!control.is_paused());
        control.resume();
        control.park_while_paused(|_| unreachable!("not paused"));
    }

    #[test]
    fn waiting_for_a_stopping_cell_to_finish_takes_the_time_given() {
        // A supervisor kicks a stopping vCPU once per interval, not without pause:
        // a stop already asked for does not end the wait.
        let control = CellControl::new();
        control.stop(StopReason::Timeout);
        let started = Instant::now();
        assert!(!control.wait_for_finish(started + Duration::from_millis(20)));
        assert!(started.elapsed() >= Duration::from_millis(20));
        control.finish();
        assert!(control.wait_for_finish(Instant::now() + Duration::from_secs(60)));
    }

    #[test]
    fn waiting_times_out_and_drains_are_taken_once() {
        let control = CellControl::new();
        let soon = Instant::now() + Duration::from_millis(5);
        assert!(matches!(control.wait_for_tick(soon, None), Wake::Timeout));
        assert_eq!(control.stop_requested(), None);
        control.request_drain();
        assert!(control.take_drain());
        assert!(!control.take_drain());
    }
}
