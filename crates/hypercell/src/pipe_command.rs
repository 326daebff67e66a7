//! `hypercell pipe 'A.wasm ARGS' 'B.wasm ARGS' ...`: a pipeline of programs, each in
//! a cell of its own in this process, the stdout of each the stdin of the next. The
//! first reads this process's stdin, the last writes its stdout, and every stage's
//! stderr is this process's. The exit status is a shell's with `pipefail`: the last
//! stage's that is not 0, else 0.
//!
//! Stages are joined by channels (`hypercell_host::channel`): rings in memory both
//! cells map, so that bytes go from one program to the next without the host, and,
//! while both keep up, without an exit.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hypercell_host::config::{
    ComponentChoice, Components, DEFAULT_MEMORY_LIMIT, format_size, parse_components,
    parse_duration, parse_memory_size,
};
use hypercell_host::persist::SnapshotFile;
use hypercell_host::{
    CellChannels, CellConfig, CellControl, CellError, CellExit, CellFailure, CellPayload,
    CellReport, CellStdio, ChannelEnd, CompiledModule, Compiler, channel, run_joined_cell,
};

use crate::grant_args::GrantArgs;
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
    /// The stages, each a module and its arguments as one (quoted) argument, as a
    /// shell's pipeline writes them: 'producer.wasm 100' 'consumer.wasm'.
    #[arg(required = true, value_name = "'MODULE [ARGS]'")]
    stages: Vec<String>,
}

/// How one stage ended, and what it measured.
struct StageEnd {
    status: u8,
    signal: Option<i32>,
    exits: Option<u64>,
    memory: Option<u64>,
    elapsed: Duration,
}

/// Runs `hypercell pipe`.
pub fn pipe(args: PipeArgs) -> ExitCode {
    let controls: Vec<CellControl> = args.stages.iter().map(|_| CellControl::new()).collect();
    // First thing: a thread started before it would take the signals.
    signals::forward_to_each(controls.clone());
    let stages = match args
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
        Ok(stages) => stages,
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
    // Every module compiles before any stage runs: a pipeline that cannot run whole
    // does not run in part.
    let mut modules = Vec::new();
    for (i, words) in stages.iter().enumerate() {
        let path = Path::new(&words[0]);
        if SnapshotFile::is_snapshot(path) {
            return crate::fail_with(&format!(
                "stage {}: `{}` is a template or snapshot; pipeline stages run modules",
                i + 1,
                path.display()
            ));
        }
        match compiler.compile_file(path) {
            Ok(module) => modules.push(module),
            Err(e) => return crate::fail_with(&format!("stage {}: {e}", i + 1)),
        }
    }
    let components = args
        .components
        .map_or(Components::ALL, |choice| choice.components);
    let configs: Vec<CellConfig> = stages
        .iter()
        .map(|words| CellConfig {
            memory_limit: args.memory,
            timeout: args.timeout,
            output_limit: None,
            args: words.clone(),
            env: args.grant.program_env(),
            preopens: preopens.clone(),
            components,
        })
        .collect();
    let channels = match (1..stages.len())
        .map(|_| channel())
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(channels) => channels,
        Err(e) => {
            return crate::fail_with(&format!("cannot make a channel between stages: {e}"));
        }
    };
    // What a stage's runtime might still send the host for a stream that is a channel
    // goes nowhere.
    let null = match File::options().read(true).write(true).open("/dev/null") {
        Ok(null) => null,
        Err(e) => return crate::fail_with(&format!("cannot open /dev/null: {e}")),
    };
    let cpu_features = compiler.cpu_features();
    let ends = run_stages(&configs, &modules, cpu_features, &controls, channels, &null);
    if args.stats {
        print_stats(&stages, &ends);
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

/// Runs each stage on a thread of its own, stage `i` reading the reading end of
/// channel `i - 1` and writing the writing end of channel `i`; each stage's ends close
/// as it ends, so that its neighbours read end of file or get EPIPE.
fn run_stages(
    configs: &[CellConfig],
    modules: &[CompiledModule],
    cpu_features: u32,
    controls: &[CellControl],
    channels: Vec<(ChannelEnd, ChannelEnd)>,
    null: &File,
) -> Vec<StageEnd> {
    let mut reads: Vec<Option<ChannelEnd>> = vec![None];
    let mut writes: Vec<Option<ChannelEnd>> = Vec::new();
    for (write, read) in channels {
        writes.push(Some(write));
        reads.push(Some(read));
    }
    writes.push(None);
    std::thread::scope(|scope| {
        let running: Vec<_> = (0..configs.len())
            .map(|i| {
                let input = reads[i].take();
                let output = writes[i].take();
                let (config, module, control) = (&configs[i], &modules[i], &controls[i]);
                scope.spawn(move || {
                    let inherited = CellStdio::inherit();
                    let stdio = CellStdio {
                        stdin: input.as_ref().map_or(inherited.stdin, |_| null.as_fd()),
                        stdout: output.as_ref().map_or(inherited.stdout, |_| null.as_fd()),
                        stderr: inherited.stderr,
                    };
                    let payload = CellPayload::Wasm {
                        module,
                        cpu_features,
                    };
                    let joined = CellChannels {
                        stdin: input.as_ref(),
                        stdout: output.as_ref(),
                    };
                    let started = Instant::now();
                    let result = run_joined_cell(config, payload, stdio, control, joined);
                    let end = stage_end(i, result, config, started.elapsed());
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

fn print_stats(stages: &[Vec<String>], ends: &[StageEnd]) {
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
