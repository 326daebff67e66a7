//! A thread kept to run one partition's vCPU for cell after cell, confined by the
//! vCPU's seccomp filter once, when it starts. Installing the filter costs the kernel
//! a JIT compilation, and starting a thread a clone and a stack: on a fresh thread per
//! cell those were a quarter of the host's time in a server's cell per request.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;

use crate::seccomp::{self, SeccompError};

/// The vCPU's part of one cell's run, as the thread takes it.
trait Job: Send {
    /// Runs the work, given whether the thread is confined, and reports its end.
    fn run(self: Box<Self>, confined: Result<(), SeccompError>);
}

/// A job: its work and where its end is reported. Fields drop in order, so a task
/// dropped unrun drops its work, and what that borrows, before its `done` tells the
/// caller it may go on.
struct Task<F, R> {
    work: F,
    done: mpsc::SyncSender<std::thread::Result<R>>,
}

impl<F, R> Job for Task<F, R>
where
    F: FnOnce(Result<(), SeccompError>) -> R + Send,
    R: Send,
{
    fn run(self: Box<Self>, confined: Result<(), SeccompError>) {
        let Task { work, done } = *self;
        let outcome = catch_unwind(AssertUnwindSafe(|| work(confined)));
        let _ = done.send(outcome);
    }
}

/// The thread ended before it took a job.
#[derive(Debug)]
pub(crate) struct RunnerGone;

/// A thread under the vCPU's seccomp filter, running one job at a time.
pub(crate) struct VcpuRunner {
    jobs: mpsc::Sender<Box<dyn Job + 'static>>,
}

impl VcpuRunner {
    /// Starts the thread, confines it and waits until it takes jobs. From then on it
    /// ends only when this value drops: a job's panic is caught and handed back.
    pub fn start() -> std::io::Result<Self> {
        let (jobs, waiting) = mpsc::channel::<Box<dyn Job + 'static>>();
        let (ready, started) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("hypercell-vcpu".into())
            .spawn(move || {
                // The kick's signal handler is the process's, installed before the
                // filter, which refuses `rt_sigaction`.
                hypercell_vmm::prepare_kicks();
                let confined = seccomp::install_vcpu_filter();
                let _ = ready.send(());
                while let Ok(job) = waiting.recv() {
                    job.run(confined.clone());
                }
            })?;
        started.recv().map_err(|_| {
            std::io::Error::other("the vCPU thread ended before it could take a cell")
        })?;
        Ok(Self { jobs })
    }

    /// Runs `work` on the thread, given whether the thread is confined, while
    /// `alongside` runs on this one; returns what `work` returned once both are done,
    /// or that the thread has gone (and `alongside` did not run). A panic in `work` is
    /// raised again here.
    pub fn run<'a, R: Send + 'a>(
        &self,
        work: impl FnOnce(Result<(), SeccompError>) -> R + Send + 'a,
        alongside: impl FnOnce(),
    ) -> Result<R, RunnerGone> {
        let (done, result) = mpsc::sync_channel(1);
        let job: Box<dyn Job + 'a> = Box::new(Task { work, done });
        // SAFETY: only the lifetime changes: `job` borrows what lives for 'a, and it is
        // run or dropped before this function returns or unwinds. Its sender `done`
        // goes last (after the work, whether run or dropped), and `Finished` below,
        // which waits in its drop for `result` to receive or disconnect, lets this
        // function end only after that.
        let job: Box<dyn Job + 'static> =
            unsafe { std::mem::transmute::<Box<dyn Job + 'a>, Box<dyn Job + 'static>>(job) };
        let mut finished = Finished {
            result,
            waited: false,
        };
        if let Err(mpsc::SendError(job)) = self.jobs.send(job) {
            drop(job);
            finished.wait();
            return Err(RunnerGone);
        }
        alongside();
        match finished.wait() {
            Some(Ok(value)) => Ok(value),
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => Err(RunnerGone),
        }
    }
}

/// Waits for a job's end, in its drop too, so that nothing the job borrows goes away
/// before it, even when the caller unwinds.
struct Finished<R> {
    result: mpsc::Receiver<std::thread::Result<R>>,
    waited: bool,
}

impl<R> Finished<R> {
    /// The job's outcome; `None` when it was dropped without running.
    fn wait(&mut self) -> Option<std::thread::Result<R>> {
        self.waited = true;
        self.result.recv().ok()
    }
}

impl<R> Drop for Finished<R> {
    fn drop(&mut self) {
        if !self.waited {
            let _ = self.result.recv();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_borrow_and_return_and_the_thread_is_confined() {
        let thread = VcpuRunner::start().unwrap();
        let mut text = String::from("cell");
        for round in 0..3 {
            let seen = thread
                .run(
                    |confined| {
                        confined.unwrap();
                        text.push('!');
                        // SAFETY: a plain system call the filter refuses.
                        let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                        (text.len(), socket)
                    },
                    || {},
                )
                .unwrap();
            assert_eq!(seen, (5 + round, -1));
        }
        assert_eq!(text, "cell!!!");
    }

    #[test]
    fn a_panic_in_a_job_reaches_the_caller_and_the_thread_goes_on() {
        let thread = VcpuRunner::start().unwrap();
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            let _ = thread.run(|_| panic!("in the job"), || {});
        }));
        assert!(panicked.is_err());
        assert_eq!(thread.run(|_| 7, || {}).unwrap(), 7);
    }
}
