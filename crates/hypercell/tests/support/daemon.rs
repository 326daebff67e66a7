//! A `hypercell daemon` of a test's own, on a socket and state directory in a
//! temporary directory, driven through the real CLI.
// Every test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::binary::*;
pub use lines::lines_of;

#[path = "lines.rs"]
mod lines;

/// Longest a test waits for an event that should come soon.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A daemon on a socket and state directory of its own.
pub struct Daemon {
    /// The daemon's process.
    pub child: Child,
    /// Its API socket.
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts the daemon and waits until it says it serves.
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// Starts the daemon with `extra` flags and waits until it says it serves.
    pub fn start_with(dir: &Path, extra: &[&str]) -> Self {
        Self::start_limited(dir, extra, None)
    }

    /// Starts the daemon with `extra` flags and, if given, a limit of open files, and
    /// waits until it says it serves.
    pub fn start_limited(dir: &Path, extra: &[&str], open_files: Option<u64>) -> Self {
        Self::start_in(dir, extra, open_files, None)
    }

    /// [`Self::start_limited`], in the network namespace `netns` if given.
    pub fn start_in(
        dir: &Path,
        extra: &[&str],
        open_files: Option<u64>,
        netns: Option<&str>,
    ) -> Self {
        use std::os::unix::process::CommandExt;
        let socket = dir.join("api.sock");
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command
                    .args(["netns", "exec", netns, env!("CARGO_BIN_EXE_hypercell")])
                    .env("XDG_CACHE_HOME", scratch().join("cache"))
                    .env_remove("HYPERCELL_LOG");
                command
            }
            None => hypercell(&scratch().join("cache")),
        };
        if let Some(open_files) = open_files {
            // SAFETY: the closure runs in the forked child before exec and only calls
            // setrlimit, which is async-signal-safe, on a struct it owns.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: open_files,
                        rlim_max: open_files,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .args(["daemon", "--socket"])
            .arg(&socket)
            .arg("--state")
            .arg(dir.join("state"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stderr.take().unwrap());
        let first = lines
            .recv_timeout(PATIENCE)
            .expect("the daemon says it serves");
        assert!(first.contains("serving on"), "{first}");
        Self { child, socket }
    }

    /// `hypercell ARGS` against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        hypercell(&scratch().join("cache"))
            .env("HYPERCELL_HOST", format!("unix:{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `hypercell ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// `hypercell ARGS`, which must fail saying `sentence`.
    pub fn refused(&self, args: &[&str], sentence: &str) {
        let out = self.cli(args);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(sentence),
            "{args:?}: {stderr}"
        );
    }

    /// `hypercell ARGS` as a child whose stdout lines arrive on a channel.
    pub fn follow(&self, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
        let mut child = hypercell(&scratch().join("cache"))
            .env("HYPERCELL_HOST", format!("unix:{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stdout.take().unwrap());
        (child, lines)
    }

    /// The record of `cell`.
    pub fn inspect(&self, cell: &str) -> serde_json::Value {
        let records: serde_json::Value =
            serde_json::from_str(&self.ok(&["inspect", cell])).unwrap();
        records[0].clone()
    }

    /// Sends `signal` to the daemon and waits for it to end.
    pub fn signal(&mut self, signal: i32) {
        // SAFETY: kill sends a signal to the child this test started and still owns.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next line that satisfies `wanted`.
pub fn wait_for(lines: &mpsc::Receiver<String>, wanted: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).expect("the awaited line arrives");
        if wanted(&line) {
            return line;
        }
    }
}
