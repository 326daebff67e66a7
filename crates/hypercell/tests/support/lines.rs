//! A child's output, line by line, as it comes: for the tests' daemons and servers and
//! the serve benchmark.

use std::io::{BufRead, BufReader};
use std::sync::mpsc;

/// The lines of `stream`, read on a thread, as they come.
pub fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}
