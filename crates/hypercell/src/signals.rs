//! Ending a cell on SIGINT, SIGTERM or SIGHUP without losing its output: the signals
//! are blocked in every thread and taken by one thread of their own, which stops the
//! running cell; once the cell's output is delivered, the process dies of the same
//! signal, so whoever started it sees the status it expects.

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
        set
    }
}

/// Blocks the signals in this thread (and so in every thread it starts later) and
/// starts the thread that takes them: a signal stops the cell `control` runs, or ends
/// the process at once when no cell is running. Call it before starting any thread.
pub fn forward_to(control: CellControl) {
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
                if !control.stop(StopReason::Signal(signal)) {
                    die_of(signal);
                }
            }
        })
        .expect("the host can start a thread for signals");
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
