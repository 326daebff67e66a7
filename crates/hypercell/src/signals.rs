//! Ending a cell on SIGINT, SIGTERM or SIGHUP without losing its output: the signals
//! are blocked in every thread and taken by one thread of their own, which stops the
//! running cell; once the cell's output is delivered, the process dies of the same
//! signal, so whoever started it sees the status it expects. With `--checkpoint`,
//! SIGUSR1 is taken the same way and writes a snapshot.

use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use hypercell_host::{CellControl, StopReason};

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set it is given; sigaddset adds valid
    // signal numbers to it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        libc::sigaddset(&mut set, libc::SIGUSR1);
        set
    }
}

/// What SIGUSR1 does once a cell runs with `--checkpoint`.
pub type Checkpoint = Arc<Mutex<Option<Box<dyn Fn() + Send>>>>;

/// Blocks the signals in this thread (and so in every thread it starts later) and
/// starts the thread that takes them: a signal stops the cell `control` runs, or ends
/// the process at once when no cell is running; SIGUSR1 runs the returned checkpoint
/// once one is set, and otherwise ends the process as it would have. Call it first
/// thing: a thread started before it (a compiler's) would take the signals instead.
pub fn forward_to(control: CellControl) -> Checkpoint {
    forward_to_each(vec![control])
}

/// [`forward_to`] for the cells of a pipeline: a signal stops each of them, or ends
/// the process at once when none is running.
pub fn forward_to_each(controls: Vec<CellControl>) -> Checkpoint {
    forward_with(controls, Checkpoint::default())
}

/// [`forward_to_each`], SIGUSR1 running `checkpoint`'s action from the start.
pub fn forward_with(controls: Vec<CellControl>, checkpoint: Checkpoint) -> Checkpoint {
    let action = checkpoint.clone();
    let set = signal_set();
    // SAFETY: the set is initialised; blocking signals in the calling thread has no
    // other precondition.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    thread::Builder::new()
        .name("hypercell-signals".into())
        .spawn(move || {
            loop {
                let mut signal = 0;
                // SAFETY: sigwait reads the initialised set and writes one int.
                if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                    continue;
                }
                if signal == libc::SIGUSR1 {
                    match &*action.lock().unwrap_or_else(PoisonError::into_inner) {
                        Some(checkpoint) => checkpoint(),
                        None => die_of(signal),
                    }
                } else {
                    // Every cell is asked, whether or not an earlier one was running.
                    let stopped = controls
                        .iter()
                        .map(|control| control.stop(StopReason::Signal(signal)))
                        .fold(false, |any, stopped| any | stopped);
                    if !stopped {
                        die_of(signal);
                    }
                }
            }
        })
        .expect("the host can start a thread for signals");
    checkpoint
}

/// Ends the process as `signal` would have, had it not been caught.
pub fn die_of(signal: libc::c_int) -> ! {
    // SAFETY: restoring the default action and unblocking the signal in this thread
    // have no preconditions; raising it then ends the process.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
    std::process::exit(128 + signal)
}
