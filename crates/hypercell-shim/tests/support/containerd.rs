//! A private containerd for tests and benchmarks: Debian's containerd, run as root with
//! its own config, root, state and socket in a temporary directory, no systemd and the
//! CRI plugin off, finding the Hypercell shim first on its PATH. Dropping it kills
//! whatever it started, unmounts what was mounted under its directory and removes it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any one `ctr` command may take before the test gives up on it.
const CTR_PATIENCE: Duration = Duration::from_secs(120);

/// The runtime name of the Hypercell shim.
pub const HYPERCELL: &str = "io.containerd.hypercell.v1";

pub struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
}

impl Containerd {
    /// Starts containerd and waits until it answers.
    pub fn start() -> Self {
        assert!(
            Command::new("containerd")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "containerd is needed for the shim tests: run ./scripts/setup"
        );
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "containerd and its shims run as root: run the shim tests as root"
        );
        // Short paths: a Unix socket's path holds at most 107 bytes.
        let dir = tempfile::Builder::new()
            .prefix("ctd")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path();
        std::fs::write(
            root.join("config.toml"),
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{0}/c.sock\"\n[ttrpc]\n  address = \"{0}/c.sock.ttrpc\"\n",
                root.display()
            ),
        )
        .unwrap();
        let shim_dir = Path::new(env!("CARGO_BIN_EXE_containerd-shim-hypercell-v1"))
            .parent()
            .unwrap()
            .to_path_buf();
        let path = format!(
            "{}:{}",
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(root.join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(root.join("config.toml"))
            .env("PATH", path)
            // The shims' compile cache and templates.
            .env("XDG_CACHE_HOME", root.join("cache"))
            .env_remove("HYPERCELL_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd starts");
        let containerd = Self { dir, daemon };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !containerd
            .ctr_command(&["version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 30 s: {}",
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        containerd
    }

    /// The directory everything of this containerd lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the shims keep templates.
    pub fn templates(&self) -> PathBuf {
        self.dir().join("cache/hypercell/v1/templates")
    }

    /// containerd's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` talking to this containerd.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(self.dir().join("c.sock"))
            .args(args)
            .stdin(Stdio::null());
        command
    }

    /// Runs `ctr ARGS` to its end, within [`CTR_PATIENCE`].
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.finish(self.ctr_command(args), args)
    }

    /// Runs `command` (a `ctr` command) to its end, within [`CTR_PATIENCE`].
    pub fn finish(&self, mut command: Command, what: &[&str]) -> Output {
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_with_output_within(child, CTR_PATIENCE)
            .unwrap_or_else(|| panic!("`ctr {what:?}` took over {CTR_PATIENCE:?}: {}", self.log()))
    }

    /// Imports the OCI image tar at `tar`.
    pub fn import(&self, tar: &Path) {
        let output = self.ctr(&["images", "import", tar.to_str().unwrap()]);
        assert!(
            output.status.success(),
            "import failed: {}",
            text(&output.stderr)
        );
    }

    /// `ctr run --rm --runtime RUNTIME IMAGE ID`.
    pub fn run_under(&self, runtime: &str, image: &str, id: &str) -> Output {
        self.ctr(&["run", "--rm", "--runtime", runtime, image, id])
    }

    /// `ctr run --rm --runtime io.containerd.hypercell.v1 [FLAGS] IMAGE ID [ARGS]`.
    pub fn run(&self, flags: &[&str], image: &str, id: &str, args: &[&str]) -> Output {
        let mut all = vec!["run", "--rm", "--runtime", HYPERCELL];
        all.extend(flags);
        all.push(image);
        all.push(id);
        all.extend(args);
        self.ctr(&all)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SAFETY: kill sends a signal to a child this fixture started.
        unsafe { libc::kill(self.daemon.id() as libc::pid_t, libc::SIGTERM) };
        if wait_within(&mut self.daemon, Duration::from_secs(10)).is_none() {
            let _ = self.daemon.kill();
            let _ = self.daemon.wait();
        }
        // Shims outlive containerd (that is how it restarts without stopping
        // containers); these served only this one.
        let address = self.dir().join("c.sock").display().to_string();
        for pid in processes_with_argument(&address) {
            // SAFETY: as above, for a process this fixture's containerd started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for mount in mounts_under(self.dir()) {
            let Ok(name) = std::ffi::CString::new(mount) else {
                continue;
            };
            // SAFETY: a NUL-terminated path; unmounting has no memory preconditions.
            unsafe { libc::umount2(name.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Processes whose command line has `argument` as one of its arguments.
fn processes_with_argument(argument: &str) -> Vec<libc::pid_t> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &libc::pid_t| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|line| {
                line.split(|&b| b == 0)
                    .any(|arg| arg == argument.as_bytes())
            })
        })
        .collect()
}

/// Mount points under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&prefix))
        .map(String::from)
        .collect();
    mounts.sort_by_key(|point| std::cmp::Reverse(point.len()));
    mounts
}

/// Waits for `child` for at most `patience`; `None` when it is still running.
pub fn wait_within(child: &mut Child, patience: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Collects `child`'s output, killing it when it runs past `patience`.
fn wait_with_output_within(mut child: Child, patience: Duration) -> Option<Output> {
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let status = match wait_within(&mut child, patience) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
    };
    Some(Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    })
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Compiles `source` (C) for wasm32-wasi with clang into `out`.
pub fn wasm_program(source: &Path, out: &Path) {
    let status = Command::new("clang")
        .args(["--target=wasm32-wasi", "-O2"])
        .arg(source)
        .arg("-o")
        .arg(out)
        .status()
        .expect("clang is needed for the C programs: run ./scripts/setup");
    assert!(status.success(), "clang failed on {}", source.display());
}

/// Builds the image `name` from `program` (and `adds`, as `scripts/oci-image --add`
/// takes them) into `out`.
pub fn image(program: &Path, name: &str, adds: &[String], out: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/oci-image");
    let mut command = Command::new(script);
    for add in adds {
        command.arg("--add").arg(add);
    }
    let output = command.arg(program).arg(name).arg(out).output().unwrap();
    assert!(
        output.status.success(),
        "oci-image failed: {}",
        text(&output.stderr)
    );
}
