//! Saving a running pipeline and running it on: `hypercell pipe --checkpoint DIR`
//! saves it on SIGUSR1, `hypercell restore DIR` goes on from there.
//!
//! A stage alone cannot be saved: the bytes in flight in its channels are its
//! neighbours' too. So every stage is paused first; then each stage's cell is
//! snapshotted and each channel's header and ring copied, all while nothing moves;
//! then every stage goes on, and the files are written. A stage that had ended is
//! saved as ended, with its status: restored, its channel ends are closed at once, so
//! that its reader reads what it left and then the end.
//!
//! In `DIR`: `pipeline.json`, `stage-N.snapshot` for each stage that runs (a snapshot
//! file, as `run --checkpoint` writes), and `channel-N.bin` for the channel after
//! stage N. A checkpoint is written whole into a directory beside `DIR`, synced, and
//! then swapped with `DIR` in one rename, so that `DIR` always holds one moment of
//! the pipeline, never files of two.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hypercell_host::channel::CHANNEL_LEN;
use hypercell_host::persist::{CellSnapshot, SnapshotError, SnapshotFile};
use hypercell_host::{CellConfig, CellControl, ChannelMemory, Compiler, channel_with};
use serde::{Deserialize, Serialize};

use crate::pipe_command::{Beginning, Pipeline, Stage};
use crate::signals;

/// The file that says what a checkpoint directory holds.
const MANIFEST: &str = "pipeline.json";

/// Most stages a saved pipeline may have.
const MOST_STAGES: usize = 256;

/// Largest manifest read.
const MOST_MANIFEST: u64 = 1 << 20;

/// `pipeline.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    /// Each stage, in order.
    stages: Vec<SavedStage>,
}

/// A stage in `pipeline.json`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedStage {
    /// Its module and arguments, as the pipeline was given them.
    args: Vec<String>,
    /// Its status, if it had ended; otherwise its cell is in `stage-N.snapshot`.
    ended: Option<u8>,
}

fn stage_file(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("stage-{}.snapshot", index + 1))
}

fn channel_file(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("channel-{}.bin", index + 1))
}

/// What SIGUSR1 saves: a running pipeline, its channels, and which stages ended.
pub(crate) struct PipelineCheckpoint {
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) channels: Vec<ChannelMemory>,
    pub(crate) ended: Arc<[OnceLock<u8>]>,
    pub(crate) dir: PathBuf,
}

/// What one moment of the pipeline holds, taken while every stage is paused.
struct Taken {
    stages: Vec<Option<CellSnapshot>>,
    channels: Vec<Vec<u8>>,
}

impl PipelineCheckpoint {
    /// Saves the pipeline; the pipeline goes on whatever happens, and a checkpoint that
    /// cannot be taken or written is reported.
    pub(crate) fn save(&self) {
        let saved = self.take().and_then(|taken| self.write(taken));
        if let Err(error) = saved {
            eprintln!("hypercell: no checkpoint written: {error}");
        }
    }

    /// Pauses every stage, takes each one's snapshot and each channel's contents, and
    /// lets them all go on.
    fn take(&self) -> Result<Taken, String> {
        let controls = &self.pipeline.controls;
        let mut paused: Vec<&CellControl> = Vec::new();
        let taken = (|| {
            let mut running = Vec::new();
            for (i, control) in controls.iter().enumerate() {
                if control.pause() {
                    paused.push(control);
                    running.push(true);
                    continue;
                }
                // A pause asked of a cell that has not begun would hold it when it
                // does: taken back.
                control.resume();
                if self.ended[i].get().is_none() {
                    return Err(format!(
                        "stage {} has not started yet, or has just ended; try again",
                        i + 1
                    ));
                }
                running.push(false);
            }
            let mut stages = Vec::new();
            for (i, control) in controls.iter().enumerate() {
                if !running[i] {
                    stages.push(None);
                    continue;
                }
                match control.snapshot_with_neighbours() {
                    Ok(snapshot) => stages.push(Some(snapshot)),
                    Err(SnapshotError::NotRunning) => {
                        return Err(format!("stage {} ended meanwhile; try again", i + 1));
                    }
                    Err(error) => return Err(format!("stage {}: {error}", i + 1)),
                }
            }
            let channels = self.channels.iter().map(ChannelMemory::contents).collect();
            // A stage stopped meanwhile (its time limit) closed its ends: what was
            // copied would not match its snapshot.
            let stopped = paused
                .iter()
                .any(|control| !control.is_paused() || control.stop_requested().is_some());
            if stopped {
                return Err("a stage was stopped meanwhile".into());
            }
            Ok(Taken { stages, channels })
        })();
        for control in paused {
            control.resume();
        }
        taken
    }

    /// Writes what was taken into a directory beside the checkpoint's, syncs it, and
    /// swaps it in.
    fn write(&self, taken: Taken) -> Result<(), String> {
        let dir = &self.dir;
        let name = dir
            .file_name()
            .ok_or_else(|| format!("`{}` names no directory", dir.display()))?;
        let partial = dir.with_file_name(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&partial);
        let written = self
            .write_into(&partial, taken)
            .and_then(|()| swap_in(&partial, dir));
        if written.is_err() {
            let _ = std::fs::remove_dir_all(&partial);
        }
        written
    }

    /// Writes every file of the checkpoint into `dir`, synced.
    fn write_into(&self, dir: &Path, taken: Taken) -> Result<(), String> {
        std::fs::create_dir(dir).map_err(|e| format!("cannot make `{}`: {e}", dir.display()))?;
        let failed = |path: &Path, e: &dyn std::fmt::Display| {
            format!("cannot write `{}`: {e}", path.display())
        };
        let write =
            |path: &Path, bytes: &[u8]| std::fs::write(path, bytes).map_err(|e| failed(path, &e));
        let pipeline = &self.pipeline;
        let mut manifest = Manifest { stages: Vec::new() };
        for (i, (stage, snapshot)) in pipeline.stages.iter().zip(taken.stages).enumerate() {
            let ended = match snapshot {
                Some(snapshot) => {
                    let module = std::path::absolute(&stage.module_path)
                        .unwrap_or_else(|_| stage.module_path.clone());
                    let file = SnapshotFile::new(
                        &module,
                        pipeline.cpu_features,
                        &pipeline.engine,
                        &stage.config,
                        snapshot,
                    );
                    let path = stage_file(dir, i);
                    file.write_to(&path).map_err(|e| failed(&path, &e))?;
                    None
                }
                None => self.ended[i].get().copied(),
            };
            manifest.stages.push(SavedStage {
                args: stage.config.args.clone(),
                ended,
            });
        }
        for (i, contents) in taken.channels.iter().enumerate() {
            write(&channel_file(dir, i), contents)?;
        }
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
        write(&dir.join(MANIFEST), &json)?;
        for entry in std::fs::read_dir(dir).map_err(|e| failed(dir, &e))? {
            let path = entry.map_err(|e| failed(dir, &e))?.path();
            sync(&path).map_err(|e| failed(&path, &e))?;
        }
        sync(dir).map_err(|e| failed(dir, &e))
    }
}

/// Flushes `path` (a file or a directory) to the disk.
fn sync(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// Puts the directory `partial` at `dir`: swapped with the checkpoint there in one
/// rename (which is then removed), or renamed when there is none.
fn swap_in(partial: &Path, dir: &Path) -> Result<(), String> {
    let failed =
        |e: std::io::Error| format!("cannot put the checkpoint at `{}`: {e}", dir.display());
    if !dir.exists() {
        std::fs::rename(partial, dir).map_err(failed)?;
    } else {
        let from = std::ffi::CString::new(partial.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("`{}` holds a NUL", partial.display()))?;
        let to = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("`{}` holds a NUL", dir.display()))?;
        // SAFETY: both paths are NUL-terminated strings that live across the call,
        // which only reads them.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc != 0 {
            return Err(failed(std::io::Error::last_os_error()));
        }
        // The old checkpoint, now where the new one was written.
        let _ = std::fs::remove_dir_all(partial);
    }
    if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        let _ = sync(parent);
    }
    Ok(())
}

/// The bytes of the regular file at `path`, at most `most` of them; a link, a FIFO,
/// a device or a larger file is refused, so that no file put in a checkpoint can
/// hang or exhaust the process.
fn read_regular(path: &Path, most: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let metadata = file
        .metadata()
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    if !metadata.is_file() {
        return Err(format!("`{}` is not a regular file", path.display()));
    }
    if metadata.len() > most {
        return Err(format!(
            "`{}` is {} bytes, more than the {most} it may be",
            path.display(),
            metadata.len()
        ));
    }
    let mut bytes = Vec::new();
    file.take(most)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    Ok(bytes)
}

/// Whether `path` is a directory a pipeline was saved in.
pub fn is_pipeline_checkpoint(path: &Path) -> bool {
    path.join(MANIFEST).is_file()
}

/// Runs `hypercell restore DIR` for a saved pipeline: every stage goes on from its
/// snapshot, joined by channels holding what was in flight, with this process's stdio
/// at the ends; `timeout` limits each stage from now.
pub fn restore(dir: &Path, timeout: Option<Duration>, stats: bool) -> ExitCode {
    let manifest = match read_manifest(dir) {
        Ok(manifest) => manifest,
        Err(e) => return crate::fail_with(&e),
    };
    let controls: Vec<CellControl> = manifest.stages.iter().map(|_| CellControl::new()).collect();
    // Before any thread starts: a thread started earlier would take the signals.
    let checkpoint_action = signals::forward_to_each(controls.clone());
    let compiler = match Compiler::new() {
        Ok(compiler) => compiler,
        Err(e) => return crate::fail(&e),
    };
    let mut stages = Vec::new();
    for (i, saved) in manifest.stages.iter().enumerate() {
        match restore_stage(dir, i, saved, &compiler, timeout) {
            Ok(stage) => stages.push(stage),
            Err(e) => return crate::fail_with(&format!("stage {}: {e}", i + 1)),
        }
    }
    let mut channels = Vec::new();
    for i in 0..stages.len() - 1 {
        let path = channel_file(dir, i);
        let joined = read_regular(&path, CHANNEL_LEN as u64).and_then(|contents| {
            channel_with(&contents).map_err(|e| format!("`{}`: {e}", path.display()))
        });
        match joined {
            Ok(ends) => channels.push(ends),
            Err(e) => return crate::fail_with(&e),
        }
    }
    let pipeline = Pipeline {
        stages,
        cpu_features: compiler.cpu_features(),
        engine: compiler.fingerprint().to_string(),
        controls,
    };
    // SIGUSR1 saves the pipeline again, in the same directory.
    pipeline.run(channels, Some(dir.to_path_buf()), &checkpoint_action, stats)
}

fn read_manifest(dir: &Path) -> Result<Manifest, String> {
    let path = dir.join(MANIFEST);
    let bytes = read_regular(&path, MOST_MANIFEST)?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| format!("`{}` is not a pipeline's manifest: {e}", path.display()))?;
    let stages = manifest.stages.len();
    if stages == 0 || stages > MOST_STAGES {
        return Err(format!(
            "`{}` lists {stages} stages; a saved pipeline has 1 to {MOST_STAGES}",
            path.display()
        ));
    }
    if manifest.stages.iter().any(|stage| stage.args.is_empty()) {
        return Err(format!("`{}` lists a stage with no module", path.display()));
    }
    Ok(manifest)
}

/// Stage `index` as it was saved: its cell's snapshot and code, or its status.
fn restore_stage(
    dir: &Path,
    index: usize,
    saved: &SavedStage,
    compiler: &Compiler,
    timeout: Option<Duration>,
) -> Result<Stage, String> {
    if let Some(status) = saved.ended {
        return Ok(Stage {
            config: CellConfig {
                args: saved.args.clone(),
                ..CellConfig::default()
            },
            module_path: PathBuf::from(&saved.args[0]),
            beginning: Beginning::Ended(status),
        });
    }
    let path = stage_file(dir, index);
    // Looked at before it is opened: a FIFO or a link put there is refused.
    let regular = std::fs::symlink_metadata(&path).is_ok_and(|metadata| metadata.is_file());
    if !regular {
        return Err(format!("`{}` is not a regular file", path.display()));
    }
    let file = SnapshotFile::read_from(&path).map_err(|e| e.to_string())?;
    let module = compiler
        .compile_file(&file.module)
        .map_err(|e| e.to_string())?;
    file.check_host(&path, compiler.cpu_features(), compiler.fingerprint())
        .map_err(|e| e.to_string())?;
    Ok(Stage {
        config: file.config(timeout),
        module_path: file.module.clone(),
        beginning: Beginning::Restore(module, Box::new(file.snapshot)),
    })
}
