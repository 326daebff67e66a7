//! `hypercell pipe 'A.wasm ARGS' 'B.wasm ARGS' ...`: a pipeline of programs, each in
//! a cell of its own in this process, the stdout of each the stdin of the next. The
//! first reads this process's stdin, the last writes its stdout, and every stage's
//! stderr is this process's. The exit status is a shell's with `pipefail`: the last
//! stage's that is not 0, else 0.
//!
//! Stages are joined by channels (`hypercell_host::channel`): rings in memory both
//! cells map, so that bytes go from one program to the next without the host, and,
//! while both keep up, without an exit. With `--checkpoint DIR`, SIGUSR1 saves the
//! whole pipeline there (see [`crate::pipeline_checkpoint`]), and `hypercell restore
//! DIR` runs it on.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use std::time::{Duration, Instant};

use hypercell_host::config::{
    ComponentChoice, Components, DEFAULT_MEMORY_LIMIT, format_size, parse_components,
    parse_duration, parse_memory_size,
};
use hypercell_host::persist::{CellSnapshot, SnapshotFile};
use hypercell_host::{
    CellChannels, CellConfig, CellControl, CellError, CellExit, CellFailure, CellPayload,
    CellReport, CellStdio, ChannelEnd, CompiledModule, Compiler, channel, restore_joined_cell,
    run_joined_cell,
};

use crate::grant_args::GrantArgs;
use crate::pipeline_checkpoint::PipelineCheckpoint;
use crate::signals;

/// Arguments of `hypercell pipe`.
#[derive(clap::Args)]
pub struct PipeArgs {
    #[command(flatten)]
    grant: GrantArgs,
    /// Most memory each program's linear memory may grow to, such as 64M or 2G.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_size,
          default_value_t = DEFAULT_MEMORY_LIMIT, hide_default_value = true)]
    memory: u64,
    /// Stop the pipeline after this much wall-clock time, such as 500ms or 10s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Give each program only these host components (see `hypercell run`).
    #[arg(long, value_name = "LIST", value_parser = parse_components)]
    components: Option<ComponentChoice>,
    /// Print each stage's time, exits and memory to stderr at the end.
    #[arg(long)]
    stats: bool,
    /// On SIGUSR1, save the whole pipeline in this directory (each stage's cell and
    /// what is in flight between them), for `hypercell restore DIR` to run on.
    #[arg(long, value_name = "DIR")]
    checkpoint: Option<PathBuf>,
    /// The stages, each a module and its arguments as one (quoted) argument, as a
    /// shell's pipeline writes them: 'producer.wasm 100' 'consumer.wasm'.
    #[arg(required = true, value_name = "'MODULE [ARGS]'")]
    stages: Vec<String>,
}

/// How one stage ended, and what it measured.
pub(crate) struct StageEnd {
    pub(crate) status: u8,
    signal: Option<i32>,
    exits: Option<u64>,
    memory: Option<u64>,
    elapsed: Duration,
}

impl StageEnd {
    /// A stage that had ended with `status` before the pipeline was saved.
    fn earlier(status: u8) -> Self {
        Self {
            status,
            signal: None,
            exits: None,
            memory: None,
            elapsed: Duration::ZERO,
        }
    }
}

/// How a stage's cell begins.
pub(crate) enum Beginning {
    /// From its module, compiled.
    Boot(CompiledModule),
    /// From a snapshot of a saved pipeline, of a cell running this module.
    Restore(CompiledModule, Box<CellSnapshot>),
    /// Not at all: it had ended, with this status, when the pipeline was saved.
    Ended(u8),
}

/// One stage, ready to run.
pub(crate) struct Stage {
    pub(crate) config: CellConfig,
    /// Where its code comes from, for a checkpoint.
    pub(crate) module_path: PathBuf,
    pub(crate) beginning: Beginning,
}

/// Runs `hypercell pipe`.
pub fn pipe(args: PipeArgs) -> ExitCode {
    let controls: Vec<CellControl> = args.stages.iter().map(|_| CellControl::new()).collect();
    // First thing: a thread started before it would take the signals.
    // Until the stages run, SIGUSR1 is refused rather than fatal.
    let not_yet: signals::Checkpoint = match args.checkpoint {
        Some(_) => Arc::new(std::sync::Mutex::new(Some(Box::new(|| {
            eprintln!("hypercell: no checkpoint written: the pipeline has not started yet")
        })))),
        None => signals::Checkpoint::default(),
    };
    let checkpoint_action = signals::forward_with(controls.clone(), not_yet);
    let words = match args
        .stages
        .iter()
        .enumerate()
        .map(|(i, stage)| match split_words(stage) {
            Ok(words) if !words.is_empty() => Ok(words),
            Ok(_) => Err(format!("stage {} is empty: give it a module", i + 1)),
            Err(e) => Err(format!("stage {} `{stage}`: {e}", i + 1)),
        })
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(words) => words,
        Err(e) => return crate::fail_with(&e),
    };
    let preopens = match args.grant.preopens() {
        Ok(preopens) => preopens,
        Err(e) => return crate::fail(&e),
    };
    let compiler = match Compiler::new() {
        Ok(compiler) => compiler,
        Err(e) => return crate::fail(&e),
    };
    let components = args
        .components
        .map_or(Components::ALL, |choice| choice.components);
    // Every module compiles before any stage runs: a pipeline that cannot run whole
    // does not run in part.
    let mut stages = Vec::new();
    for (i, words) in words.iter().enumerate() {
        let path = Path::new(&words[0]);
        if SnapshotFile::is_snapshot(path) {
            return crate::fail_with(&format!(
                "stage {}: `{}` is a template or snapshot; pipeline stages run modules",
                i + 1,
                path.display()
            ));
        }
        let module = match compiler.compile_file(path) {
            Ok(module) => module,
            Err(e) => return crate::fail_with(&format!("stage {}: {e}", i + 1)),
        };
        stages.push(Stage {
            config: CellConfig {
                memory_limit: args.memory,
                timeout: args.timeout,
                output_limit: None,
                args: words.clone(),
                env: args.grant.program_env(),
                preopens: preopens.clone(),
                components,
            },
            module_path: path.to_path_buf(),
            beginning: Beginning::Boot(module),
        });
    }
    let channels = match (1..stages.len())
        .map(|_| channel())
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(channels) => channels,
        Err(e) => {
            return crate::fail_with(&format!("cannot make a channel between stages: {e}"));
        }
    };
    let run = Pipeline {
        stages,
        cpu_features: compiler.cpu_features(),
        engine: compiler.fingerprint().to_string(),
        controls,
    };
    run.run(channels, args.checkpoint, &checkpoint_action, args.stats)
}

/// A pipeline ready to run: its stages, and a control for each.
pub(crate) struct Pipeline {
    pub(crate) stages: Vec<Stage>,
    pub(crate) cpu_features: u32,
    /// The compiler's fingerprint, for checkpoints.
    pub(crate) engine: String,
    pub(crate) controls: Vec<CellControl>,
}

impl Pipeline {
    /// Runs the stages joined by `channels` (one fewer than the stages); with
    /// `checkpoint`, SIGUSR1 saves the pipeline there. Returns the pipeline's status.
    pub(crate) fn run(
        self,
        channels: Vec<(ChannelEnd, ChannelEnd)>,
        checkpoint: Option<PathBuf>,
        checkpoint_action: &signals::Checkpoint,
        stats: bool,
    ) -> ExitCode {
        // What a stage's runtime might still send the host for a stream that is a
        // channel goes nowhere.
        let null = match File::options().read(true).write(true).open("/dev/null") {
            Ok(null) => null,
            Err(e) => return crate::fail_with(&format!("cannot open /dev/null: {e}")),
        };
        let ended: Arc<[OnceLock<u8>]> = self.stages.iter().map(|_| OnceLock::new()).collect();
        for (stage, ended) in self.stages.iter().zip(ended.iter()) {
            if let Beginning::Ended(status) = stage.beginning {
                let _ = ended.set(status);
            }
        }
        let memories = channels.iter().map(|(write, _)| write.memory()).collect();
        let pipeline = Arc::new(self);
        if let Some(dir) = checkpoint {
            let saver = PipelineCheckpoint {
                pipeline: Arc::clone(&pipeline),
                channels: memories,
                ended: Arc::clone(&ended),
                dir,
            };
            *checkpoint_action
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(Box::new(move || saver.save()));
        }
        let ends = run_stages(&pipeline, channels, &null, &ended);
        if stats {
            let words: Vec<&[String]> = pipeline
                .stages
                .iter()
                .map(|stage| &stage.config.args[..])
                .collect();
            print_stats(&words, &ends);
        }
        // A pipeline stopped by a signal ends as the signal would have ended it.
        if let Some(signal) = ends.iter().find_map(|end| end.signal) {
            signals::die_of(signal);
        }
        ExitCode::from(
            ends.iter()
                .rev()
                .map(|end| end.status)
                .find(|&status| status != 0)
                .unwrap_or(0),
        )
    }
}

/// Runs each stage on a thread of its own, stage `i` reading the reading end of
/// channel `i - 1` and writing the writing end of channel `i`; each stage's ends close
/// as it ends (a stage that had ended before a checkpoint, at once), so that its
/// neighbours read end of file or get EPIPE. Each stage's status goes into `ended` as
/// it ends.
fn run_stages(
    pipeline: &Pipeline,
    channels: Vec<(ChannelEnd, ChannelEnd)>,
    null: &File,
    ended: &[OnceLock<u8>],
) -> Vec<StageEnd> {
    let mut reads: Vec<Option<ChannelEnd>> = vec![None];
    let mut writes: Vec<Option<ChannelEnd>> = Vec::new();
    for (write, read) in channels {
        writes.push(Some(write));
        reads.push(Some(read));
    }
    writes.push(None);
    let cpu_features = pipeline.cpu_features;
    std::thread::scope(|scope| {
        let running: Vec<_> = pipeline
            .stages
            .iter()
            .enumerate()
            .map(|(i, stage)| {
                let input = reads[i].take();
                let output = writes[i].take();
                let control = &pipeline.controls[i];
                let ended = &ended[i];
                scope.spawn(move || {
                    let inherited = CellStdio::inherit();
                    let stdio = CellStdio {
                        stdin: input.as_ref().map_or(inherited.stdin, |_| null.as_fd()),
                        stdout: output.as_ref().map_or(inherited.stdout, |_| null.as_fd()),
                        stderr: inherited.stderr,
                    };
                    let payload = |module| CellPayload::Wasm {
                        module,
                        cpu_features,
                    };
                    let joined = CellChannels {
                        stdin: input.as_ref(),
                        stdout: output.as_ref(),
                        ..CellChannels::default()
                    };
                    let started = Instant::now();
                    let config = &stage.config;
                    let end = match &stage.beginning {
                        Beginning::Ended(status) => StageEnd::earlier(*status),
                        Beginning::Boot(module) => {
                            let result =
                                run_joined_cell(config, payload(module), stdio, control, joined);
                            stage_end(i, result, config, started.elapsed())
                        }
                        Beginning::Restore(module, snapshot) => {
                            let result = restore_joined_cell(
                                config,
                                payload(module),
                                snapshot,
                                stdio,
                                control,
                                joined,
                            );
                            stage_end(i, result, config, started.elapsed())
                        }
                    };
                    let _ = ended.set(end.status);
                    // Closed now, not when every stage has ended, even when the cell
                    // never started: the neighbours learn of this end.
                    drop(input);
                    drop(output);
                    end
                })
            })
            .collect();
        running
            .into_iter()
            .map(|stage| stage.join().expect("a stage's thread does not panic"))
            .collect()
    })
}

/// How stage `index` ended, as `hypercell run` reports it, its messages on stderr
/// naming the stage.
fn stage_end(
    index: usize,
    result: Result<CellReport, CellFailure>,
    config: &CellConfig,
    elapsed: Duration,
) -> StageEnd {
    let name = &config.args[0];
    let mut stderr = std::io::stderr();
    let mut end = StageEnd {
        status: 0,
        signal: None,
        exits: None,
        memory: None,
        elapsed,
    };
    match result {
        Ok(report) => {
            end.exits = Some(report.stats.exits);
            end.memory = Some(report.stats.memory_touched);
            if let CellExit::Trapped(trap) = &report.exit {
                let _ = writeln!(
                    stderr,
                    "Error: stage {} failed to run main module `{name}`\n\n{trap}",
                    index + 1
                );
            }
            end.status = report.exit.status();
        }
        Err(failure) => {
            end.exits = failure.stats.as_ref().map(|stats| stats.exits);
            match failure.error {
                CellError::Stopped(signal) => {
                    end.signal = Some(signal);
                    end.status = 128 + signal as u8;
                }
                error => {
                    let _ = writeln!(stderr, "error: stage {} (`{name}`): {error}", index + 1);
                    end.status = 1;
                }
            }
        }
    }
    end
}

fn print_stats(stages: &[&[String]], ends: &[StageEnd]) {
    let mut out = String::from("hypercell pipe stats:\n");
    for (i, (words, end)) in stages.iter().zip(ends).enumerate() {
        out.push_str(&format!(
            "  stage {} `{}`: status {}, {:.3} s, {} exits, {} touched\n",
            i + 1,
            words[0],
            end.status,
            end.elapsed.as_secs_f64(),
            end.exits.map_or("?".into(), |exits| exits.to_string()),
            end.memory.map_or("?".into(), format_size),
        ));
    }
    let _ = std::io::stderr().write_all(out.as_bytes());
}

/// Splits a stage into words as a shell would for simple words: spaces separate them,
/// and single or double quotes keep spaces inside one (a backslash escapes the next
/// character outside single quotes).
fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(done) = word.take() {
                    words.push(done);
                }
            }
            '\'' => {
                let word = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("a single quote is not closed".into()),
                    }
                }
            }
            '"' => {
                let word = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => word.push(c),
                            None => return Err("a backslash ends it".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("a double quote is not closed".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("a backslash ends it".into()),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::split_words;

    #[test]
    fn stages_split_into_words_as_a_shell_splits_them() {
        assert_eq!(
            split_words(r#" prog.wasm  one 'two three' "four \"five\"" six\ seven '' "#).unwrap(),
            [
                "prog.wasm",
                "one",
                "two three",
                "four \"five\"",
                "six seven",
                ""
            ]
        );
        assert!(split_words("prog 'open").is_err());
        assert!(split_words("prog \"open").is_err());
        assert!(split_words("").unwrap().is_empty());
    }
}
