//! A thread kept to run one partition's vCPU for cell after cell, confined by the
//! vCPU's seccomp filter once, when it starts. Installing the filter costs the kernel
//! a JIT compilation, and starting a thread a clone and a stack: on a fresh thread per
//! cell those were a quarter of the host's time in a server's cell per request.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;

use crate::seccomp::{self, SeccompError};

/// Work for the thread: the vCPU's part of one cell's run.
type Job = Box<dyn FnOnce(Result<(), SeccompError>) + Send + 'static>;

/// A thread under the vCPU's seccomp filter, running one job at a time.
pub(crate) struct VcpuRunner {
    jobs: mpsc::Sender<Job>,
}

impl VcpuRunner {
    /// Starts the thread and confines it.
    pub fn start() -> std::io::Result<Self> {
        let (jobs, waiting) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("hypercell-vcpu".into())
            .spawn(move || {
                // The kick's signal handler is the process's, installed before the
                // filter, which refuses `rt_sigaction`.
                hypercell_vmm::prepare_kicks();
                let confined = seccomp::install_vcpu_filter();
                // Ends when the owner drops its end.
                while let Ok(job) = waiting.recv() {
                    job(confined.clone());
                }
            })?;
        Ok(Self { jobs })
    }

    /// Runs `work` on the thread, given whether the thread is confined, while
    /// `alongside` runs on this one; returns what `work` returned once both are done.
    /// A panic in `work` is raised again here.
    pub fn run<'a, R: Send + 'a>(
        &self,
        work: impl FnOnce(Result<(), SeccompError>) -> R + Send + 'a,
        alongside: impl FnOnce(),
    ) -> R {
        let (done, result) = mpsc::sync_channel(1);
        let job: Box<dyn FnOnce(Result<(), SeccompError>) + Send + 'a> =
            Box::new(move |confined| {
                let outcome = catch_unwind(AssertUnwindSafe(|| work(confined)));
                let _ = done.send(outcome);
            });
        // SAFETY: only the lifetime changes: `job` borrows what lives for 'a, and it is
        // run or dropped before this function returns or unwinds. Its sender `done` is
        // inside it, so `Finished` below, which waits in its drop for `result` to
        // receive or disconnect, returns only once the job has run to its end (sending)
        // or been dropped (by the channel, when the thread has gone).
        let job: Job = unsafe {
            std::mem::transmute::<Box<dyn FnOnce(Result<(), SeccompError>) + Send + 'a>, Job>(job)
        };
        let mut finished = Finished {
            result,
            waited: false,
        };
        // A thread that has gone hands the job back, dropped at once; the wait below
        // then finds the channel closed.
        let _ = self.jobs.send(job);
        alongside();
        match finished.wait() {
            Some(Ok(value)) => value,
            Some(Err(panic)) => std::panic::resume_unwind(panic),
            None => panic!("the vCPU thread ended before it ran the cell"),
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
            let seen = thread.run(
                |confined| {
                    confined.unwrap();
                    text.push('!');
                    // SAFETY: a plain system call the filter refuses.
                    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                    (text.len(), socket)
                },
                || {},
            );
            assert_eq!(seen, (5 + round, -1));
        }
        assert_eq!(text, "cell!!!");
    }

    #[test]
    fn a_panic_in_a_job_reaches_the_caller_and_the_thread_goes_on() {
        let thread = VcpuRunner::start().unwrap();
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            thread.run(|_| panic!("in the job"), || {});
        }));
        assert!(panicked.is_err());
        assert_eq!(thread.run(|_| 7, || {}), 7);
    }
}
