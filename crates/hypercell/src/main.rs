//! `hypercell`: run WebAssembly programs in hardware-isolated KVM cells with no guest
//! operating system.
#![deny(unsafe_op_in_unsafe_fn)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hypercell_host::compile::check_components;
use hypercell_host::config::{
    ComponentChoice, Components, DEFAULT_MEMORY_LIMIT, component_names, format_size,
    parse_components, parse_duration, parse_memory_size,
};
use hypercell_host::fs::Preopen;

use grant_args::GrantArgs;
use hypercell_host::persist::{SnapshotError, SnapshotFile, SnapshotFileError, TemplatePoint};
use hypercell_host::{
    BoundsChecks, CacheStatus, CellConfig, CellControl, CellError, CellExit, CellFailure,
    CellPayload, CellReport, CellStats, CellStdio, CompileError, CompiledModule, Compiler,
    ConfigError, create_init_template, create_template, restore_cell, run_cell_with_control,
    start_from_template,
};

mod cache_command;
mod client;
mod daemon_commands;
mod grant_args;
mod migration_bar;
mod pipe_command;
mod pipeline_checkpoint;
mod serve_command;
mod signals;
mod tuning_args;

/// Exit status when the program could not be run at all.
const FAILURE_EXIT_STATUS: u8 = 1;

#[derive(Parser)]
#[command(name = "hypercell", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a WebAssembly command program (WASI preview1) in a new cell.
    Run(RunArgs),
    /// Run a pipeline of programs, each in a cell of its own, the stdout of each the
    /// stdin of the next: `hypercell pipe 'A.wasm ARGS' 'B.wasm ARGS'`.
    Pipe(pipe_command::PipeArgs),
    /// Go on running a cell from a snapshot written by `run --checkpoint`, or a
    /// pipeline from a directory written by `pipe --checkpoint`, with this process's
    /// stdio.
    Restore(RestoreArgs),
    /// Make templates: cells stopped at a chosen point, to start cells from.
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Show where compiled code is cached, or empty the cache.
    Cache(cache_command::CacheArgs),
    /// Run the daemon: many cells in one process, with their records, logs and events,
    /// managed through an HTTP API on a Unix socket.
    Daemon(daemon_commands::DaemonArgs),
    /// List the daemon's cells.
    Ps(daemon_commands::PsArgs),
    /// Create a cell in the daemon from a module or template (not started); prints its id.
    Create(daemon_commands::CreateArgs),
    /// Start cells in the daemon.
    Start(daemon_commands::CellsArgs),
    /// Stop cells in the daemon: close their stdin, then kill them after a grace period.
    Stop(daemon_commands::StopArgs),
    /// Kill cells in the daemon.
    Kill(daemon_commands::CellsArgs),
    /// Pause cells in the daemon.
    Pause(daemon_commands::CellsArgs),
    /// Write a checkpoint of a cell in the daemon, which goes on (or stays paused).
    Snapshot(daemon_commands::SnapshotArgs),
    /// Resume paused cells in the daemon.
    Resume(daemon_commands::CellsArgs),
    /// Move a live cell to another daemon, which goes on running it.
    Migrate(daemon_commands::MigrateArgs),
    /// Join a created cell's stdout to another created cell's stdin, by a channel in
    /// memory both map (`hypercell connect A:stdout B:stdin`), or grant two created
    /// cells a named channel that A writes and B reads, each opening it as
    /// `/channels/NAME` (`hypercell connect A:NAME B:NAME`).
    Connect(daemon_commands::ConnectArgs),
    /// List the channels between the daemon's cells.
    Channels(daemon_commands::PsArgs),
    /// Print a cell's stdout and stderr, or follow them.
    Logs(daemon_commands::LogsArgs),
    /// Print cells' records as JSON.
    Inspect(daemon_commands::CellsArgs),
    /// Print cells' state, run time, CPU time, exits and hypercalls.
    Stats(daemon_commands::StatsArgs),
    /// Remove cells from the daemon, with their logs.
    Rm(daemon_commands::RmArgs),
    /// Print every change of the daemon's cells as it happens, one JSON line each.
    Events(daemon_commands::EventsArgs),
    /// Answer HTTP requests, each in a fresh cell of a handler: a wasi:http proxy
    /// component, or a WAGI program (a WASI command that reads the request from its
    /// environment and stdin and writes the response to stdout).
    Serve(Box<serve_command::ServeArgs>),
}

#[derive(Subcommand)]
enum TemplateCommand {
    /// Run MODULE with the run flags up to a point and keep the cell there as a
    /// template: in a file (`-o FILE`; `hypercell run FILE ARGS...` starts cells from
    /// it), or in the daemon (`--name NAME`; `hypercell create NAME` starts cells).
    Create(Box<TemplateCreateArgs>),
    /// List the daemon's templates.
    Ls(daemon_commands::TemplateLsArgs),
    /// Remove templates from the daemon.
    Rm(daemon_commands::TemplateRmArgs),
}

#[derive(clap::Args)]
struct TemplateCreateArgs {
    /// Where to write the template.
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FILE",
        required_unless_present = "name"
    )]
    output: Option<PathBuf>,
    /// Have the daemon make and keep the template under this name, instead of a file.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["output", "checkpoint", "stats", "timeout", "max_output"])]
    name: Option<String>,
    #[command(flatten)]
    host: daemon_commands::HostArg,
    /// Where the cell stops: `start`, once the module is instantiated and before its
    /// program runs; `init:EXPORT`, after running the export EXPORT (a function of no
    /// parameters and no results), as Wizer does; `first-read`, when the program first
    /// reads stdin (an interpreter that has loaded itself and waits for a script).
    #[arg(long, value_name = "POINT", default_value = "start")]
    at: String,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// Stop the program after this much wall-clock time from the restore.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Print timings, exits and memory touched to stderr.
    #[arg(long)]
    stats: bool,
    /// The snapshot file, or the directory a pipeline was saved in (`pipe
    /// --checkpoint`).
    file: PathBuf,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    grant: GrantArgs,
    /// Most memory the program's linear memory may grow to, as wasmtime's
    /// `-W max-memory-size`; the runtime's own memory is apart from it.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_size,
          default_value_t = DEFAULT_MEMORY_LIMIT, hide_default_value = true,
          help = "Most memory the program may grow to, such as 64M or 2G [default: 4G]")]
    memory: u64,
    /// Stop the program after this much wall-clock time, such as 500ms or 10s.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Stop the program once it has written this much to stdout and stderr, such as 10M.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_size)]
    max_output: Option<u64>,
    /// Give the program only these host components, comma-separated, of stdio, args,
    /// env, clocks, random, fs (its --dir directories) and channels; a call into another answers
    /// `notcapable`. With `strict` in the list, a module importing a function of a
    /// component not given is refused [default: all].
    #[arg(long, value_name = "LIST", value_parser = parse_components)]
    components: Option<ComponentChoice>,
    /// Print timings, exits, memory touched and the compile-cache outcome to stderr.
    #[arg(long)]
    stats: bool,
    /// Write a snapshot of the running cell to FILE each time this process gets
    /// SIGUSR1; the cell goes on. `hypercell restore FILE` runs on from it.
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Compiler setting, as `wasmtime run -O`: `signals-based-traps=n` compiles a
    /// bounds check into each linear-memory access instead of leaving out-of-bounds
    /// accesses to guard pages, so that memory grows with fewer exits (for short
    /// runs that grow: what `hypercell serve` does by default), at some cost to
    /// compute-bound code [default: signals-based-traps=y]. A template keeps its own.
    #[arg(short = 'O', long = "optimize", value_name = "KEY[=VAL]", value_parser = tuning_args::parse_tuning)]
    optimize: Vec<tuning_args::Tuning>,
    /// The module to run (binary `.wasm` or text `.wat`), `-` to read it from stdin, or
    /// a template made by `hypercell template create`.
    module: PathBuf,
    /// Arguments passed to the program.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

fn main() -> ExitCode {
    let started = Instant::now();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("HYPERCELL_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args, started),
        Command::Pipe(args) => pipe_command::pipe(args),
        Command::Restore(args) => restore(args, started),
        Command::Template(TemplateCommand::Create(args)) => match args.name.clone() {
            Some(name) => create_template_in_daemon(*args, name),
            None => create_template_file(*args),
        },
        Command::Template(TemplateCommand::Ls(args)) => daemon_commands::template_ls(args),
        Command::Template(TemplateCommand::Rm(args)) => daemon_commands::template_rm(args),
        Command::Cache(args) => cache_command::run(args),
        Command::Daemon(args) => daemon_commands::daemon(args),
        Command::Ps(args) => daemon_commands::ps(args),
        Command::Create(args) => daemon_commands::create(args),
        Command::Start(args) => daemon_commands::act(daemon_commands::Action::Start, args),
        Command::Stop(args) => daemon_commands::stop(args),
        Command::Kill(args) => daemon_commands::act(daemon_commands::Action::Kill, args),
        Command::Pause(args) => daemon_commands::act(daemon_commands::Action::Pause, args),
        Command::Snapshot(args) => daemon_commands::snapshot(args),
        Command::Migrate(args) => daemon_commands::migrate(args),
        Command::Connect(args) => daemon_commands::connect(args),
        Command::Channels(args) => daemon_commands::channels(args),
        Command::Resume(args) => daemon_commands::act(daemon_commands::Action::Resume, args),
        Command::Logs(args) => daemon_commands::logs(args),
        Command::Inspect(args) => daemon_commands::inspect(args),
        Command::Stats(args) => daemon_commands::stats(args),
        Command::Rm(args) => daemon_commands::rm(args),
        Command::Events(args) => daemon_commands::events(args),
        Command::Serve(args) => serve_command::serve(*args),
    }
}

/// The preopens `args` asks for.
fn preopens(args: &RunArgs) -> Result<Vec<Preopen>, ConfigError> {
    args.grant.preopens()
}

/// The cell `args` asks for, with `preopens`.
fn cell_config(args: &RunArgs, preopens: Vec<Preopen>) -> CellConfig {
    let mut program_args = vec![args.module.display().to_string()];
    program_args.extend(args.args.iter().cloned());
    CellConfig {
        memory_limit: args.memory,
        timeout: args.timeout,
        output_limit: args.max_output,
        preopens,
        args: program_args,
        env: args.grant.program_env(),
        components: args
            .components
            .map_or(Components::ALL, |choice| choice.components),
    }
}

/// [`check_strict`] for the module file `module`, read only when strict.
fn check_strict_file(components: Option<ComponentChoice>, module: &Path) -> Result<(), String> {
    if !components.is_some_and(|choice| choice.strict) {
        return Ok(());
    }
    let bytes = std::fs::read(module)
        .map_err(|e| format!("cannot read module `{}`: {e}", module.display()))?;
    check_strict(components, module, &bytes)
}

/// With `--components ...,strict` (`components`): refuses a module (`bytes`, read from
/// `path`) that imports a function of a component not given.
fn check_strict(
    components: Option<ComponentChoice>,
    path: &Path,
    bytes: &[u8],
) -> Result<(), String> {
    match components {
        Some(choice) if choice.strict => {
            check_components(path, bytes, choice.components).map_err(|e| {
                format!("{e}; give the cell that component in --components, or drop `strict`")
            })
        }
        _ => Ok(()),
    }
}

fn run(args: RunArgs, started: Instant) -> ExitCode {
    let control = CellControl::new();
    let checkpoint_action = signals::forward_to(control.clone());
    let preopens = match preopens(&args) {
        Ok(preopens) => preopens,
        Err(e) => return fail(&e),
    };
    if SnapshotFile::is_snapshot(&args.module) {
        return run_template(&args, preopens, &control, started);
    }
    let mut strict = Ok(());
    let checks = tuning_args::bounds_checks(&args.optimize).unwrap_or_default();
    let compiled = Compiler::with_bounds_checks(checks).and_then(|compiler| {
        let module = if args.module == Path::new("-") {
            // As with `wasmtime run -`: the module is read from stdin, which the
            // program then finds at its end.
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes).map_err(|source| {
                CompileError::Unreadable {
                    path: args.module.clone(),
                    source,
                }
            })?;
            strict = check_strict(args.components, Path::new("standard input"), &bytes);
            compiler.compile_bytes(Path::new("standard input"), &bytes)?
        } else {
            strict = check_strict_file(args.components, &args.module);
            compiler.compile_file(&args.module)?
        };
        Ok((
            module,
            compiler.cpu_features(),
            compiler.fingerprint().to_string(),
        ))
    });
    let (module, cpu_features, engine) = match compiled {
        Ok(compiled) => compiled,
        Err(e @ CompileError::Component(_)) => {
            return fail_with(&format!(
                "{e}; a wasi:http proxy component is served with `hypercell serve`"
            ));
        }
        Err(e) => return fail(&e),
    };
    if let Err(refusal) = strict {
        return fail_with(&refusal);
    }
    let config = cell_config(&args, preopens);
    if let Some(path) = args.checkpoint {
        let meta = SnapshotMeta {
            module: args.module.clone(),
            cpu_features,
            engine,
            config: config.clone(),
        };
        let control = control.clone();
        *checkpoint_action
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(Box::new(move || meta.checkpoint(&control, &path)));
    }
    let payload = CellPayload::Wasm {
        module: &module,
        cpu_features,
    };
    let result = run_cell_with_control(&config, payload, CellStdio::inherit(), &control);
    let stats = args.stats.then_some((started, &module));
    report(result, &args.module, &config, stats)
}

/// What a snapshot file records beside the cell itself.
struct SnapshotMeta {
    module: PathBuf,
    cpu_features: u32,
    engine: String,
    config: CellConfig,
}

impl SnapshotMeta {
    /// Takes a snapshot of the cell `control` runs, writes it to `path` and lets the
    /// cell go on; a snapshot that cannot be taken now is reported, and the cell goes
    /// on all the same.
    fn checkpoint(&self, control: &CellControl, path: &Path) {
        let snapshot = match control.snapshot() {
            Ok(snapshot) => snapshot,
            Err(SnapshotError::NotRunning) => return,
            Err(error) => {
                control.resume();
                let _ = writeln!(
                    std::io::stderr(),
                    "hypercell: no checkpoint written: {error}"
                );
                return;
            }
        };
        control.resume();
        let file = SnapshotFile::new(
            &self.module,
            self.cpu_features,
            &self.engine,
            &self.config,
            snapshot,
        );
        if let Err(error) = file.write_to(path) {
            let _ = writeln!(
                std::io::stderr(),
                "hypercell: no checkpoint written: {error}"
            );
        }
    }
}

/// `hypercell run TEMPLATE ARGS...`: a cell from a template, with its own arguments,
/// environment, directories and stdio.
fn run_template(
    args: &RunArgs,
    preopens: Vec<Preopen>,
    control: &CellControl,
    started: Instant,
) -> ExitCode {
    let file = match SnapshotFile::read_from(&args.module) {
        Ok(file) => file,
        Err(e) => return fail(&e),
    };
    let identity_given = !args.args.is_empty() || !args.grant.is_empty();
    let template_components = Components(file.components).known();
    if let Some(choice) = args.components
        && choice.components != template_components
    {
        return fail_with(&format!(
            "`{}` was made with the components {}, which its cells keep; make the template with --components {} instead",
            args.module.display(),
            component_names(template_components),
            component_names(choice.components)
        ));
    }
    let config =
        match file.template_config(&args.module, cell_config(args, preopens), identity_given) {
            Ok(config) => config,
            Err(e @ SnapshotFileError::NotTemplate(_)) => {
                return fail_with(&format!("{e}; run it on with `hypercell restore`"));
            }
            Err(e @ SnapshotFileError::IdentityRead(_)) => {
                return fail_with(&format!("{e}, so pass no ARGS, --env or --dir"));
            }
            Err(e) => return fail(&e),
        };
    if let Err(refusal) =
        tuning_args::keep_template_checks(&args.optimize, file.bounds_checks(), &args.module)
    {
        return fail_with(&refusal);
    }
    let (module, cpu_features, engine) = match compile(&file.module, file.bounds_checks()) {
        Ok(compiled) => compiled,
        Err(e) => return fail(&e),
    };
    if let Err(e) = file.check_host(&args.module, cpu_features, &engine) {
        return fail(&e);
    }
    let payload = CellPayload::Wasm {
        module: &module,
        cpu_features: file.cpu_features,
    };
    let result = start_from_template(
        &config,
        payload,
        &file.snapshot,
        CellStdio::inherit(),
        control,
    );
    let stats = args.stats.then_some((started, &module));
    report(result, &file.module, &config, stats)
}

/// Compiles the module at `path` (or finds its code in the cache) with `checks`, with
/// the compiler's CPU features and settings.
fn compile(
    path: &Path,
    checks: BoundsChecks,
) -> Result<(CompiledModule, u32, String), CompileError> {
    let compiler = Compiler::with_bounds_checks(checks)?;
    Ok((
        compiler.compile_file(path)?,
        compiler.cpu_features(),
        compiler.fingerprint().to_string(),
    ))
}

/// `hypercell template create`.
/// `hypercell template create --name NAME`: the daemon makes the template.
fn create_template_in_daemon(args: TemplateCreateArgs, name: String) -> ExitCode {
    let run = &args.run;
    if tuning_args::bounds_checks(&run.optimize)
        .is_some_and(|checks| checks != BoundsChecks::GuardPages)
    {
        return fail_with(
            "the daemon compiles with guard pages (signals-based-traps=y); make a template with -O signals-based-traps=n as a file, with -o FILE",
        );
    }
    let dirs = match daemon_commands::dir_specs(&run.grant.dirs, &run.grant.dirs_read_only) {
        Ok(dirs) => dirs,
        Err(e) => return fail(&e),
    };
    let spec = hypercell_daemon::record::TemplateSpec {
        name,
        module: run.module.display().to_string(),
        at: Some(args.at.clone()),
        args: run.args.clone(),
        env: run
            .grant
            .program_env()
            .into_iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect(),
        dirs,
        memory: (run.memory != DEFAULT_MEMORY_LIMIT).then_some(run.memory),
        components: run.components.map(daemon_commands::component_list),
        components_strict: run.components.is_some_and(|choice| choice.strict),
    };
    daemon_commands::template_create(&args.host, spec)
}

fn create_template_file(args: TemplateCreateArgs) -> ExitCode {
    let Some((point, export)) = TemplatePoint::parse(&args.at) else {
        return fail_with(&format!(
            "--at takes `start`, `init:EXPORT` or `first-read`, not `{}`",
            args.at
        ));
    };
    let preopens = match preopens(&args.run) {
        Ok(preopens) => preopens,
        Err(e) => return fail(&e),
    };
    if let Err(refusal) = check_strict_file(args.run.components, &args.run.module) {
        return fail_with(&refusal);
    }
    let checks = tuning_args::bounds_checks(&args.run.optimize).unwrap_or_default();
    let (module, cpu_features, engine) = match compile(&args.run.module, checks) {
        Ok(compiled) => compiled,
        Err(e) => return fail(&e),
    };
    let config = cell_config(&args.run, preopens);
    let payload = CellPayload::Wasm {
        module: &module,
        cpu_features,
    };
    let made = match point {
        TemplatePoint::Init => create_init_template(&config, payload, CellStdio::inherit(), export),
        _ => create_template(&config, payload, CellStdio::inherit(), point),
    };
    let template = match made {
        Ok(template) => template,
        Err(failure) => return fail(&failure.error),
    };
    let file = SnapshotFile::new(&args.run.module, cpu_features, &engine, &config, template);
    let Some(output) = &args.output else {
        return fail_with("a template needs -o FILE, or --name NAME to keep it in the daemon");
    };
    match file.write_to(output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn restore(args: RestoreArgs, started: Instant) -> ExitCode {
    if pipeline_checkpoint::is_pipeline_checkpoint(&args.file) {
        return pipeline_checkpoint::restore(&args.file, args.timeout, args.stats);
    }
    let control = CellControl::new();
    signals::forward_to(control.clone());
    let file = match SnapshotFile::read_from(&args.file) {
        Ok(file) => file,
        Err(e) => return fail(&e),
    };
    let (module, cpu_features, engine) = match compile(&file.module, file.bounds_checks()) {
        Ok(compiled) => compiled,
        Err(e) => return fail(&e),
    };
    if let Err(e) = file.check_host(&args.file, cpu_features, &engine) {
        return fail(&e);
    }
    let config = file.config(args.timeout);
    let payload = CellPayload::Wasm {
        module: &module,
        cpu_features: file.cpu_features,
    };
    let result = restore_cell(
        &config,
        payload,
        &file.snapshot,
        CellStdio::inherit(),
        &control,
    );
    let stats = args.stats.then_some((started, &module));
    report(result, &file.module, &config, stats)
}

/// The exit status and messages for how a cell of `config` running `module` ended,
/// after its `--stats` when asked for (with when the process started and its code).
fn report(
    result: Result<CellReport, CellFailure>,
    module: &Path,
    config: &CellConfig,
    stats: Option<(Instant, &CompiledModule)>,
) -> ExitCode {
    let memory_limit = config.memory_limit;
    let report_stats = |cell_stats: Option<&CellStats>| {
        if let Some((started, compiled)) = stats {
            print_stats(
                started,
                compiled,
                cell_stats,
                memory_limit,
                config.components,
            );
        }
    };
    match result {
        Ok(report) => {
            report_stats(Some(&report.stats));
            let failed = report.exit != CellExit::Exited(0);
            if let CellExit::Trapped(trap) = &report.exit {
                let _ = writeln!(
                    std::io::stderr(),
                    "Error: failed to run main module `{}`\n\n{trap}",
                    module.display()
                );
            }
            let status = ExitCode::from(report.exit.status());
            // A refused memory.grow is the likeliest cause of a failure that follows it.
            if let Some(bytes) = report.denied_growth.filter(|_| failed) {
                let _ = writeln!(
                    std::io::stderr(),
                    "note: the program was refused a linear memory of {} by the cell's memory limit of {}; raise it with --memory",
                    format_size(bytes),
                    format_size(memory_limit)
                );
            }
            status
        }
        Err(failure) => {
            report_stats(failure.stats.as_deref());
            if let CellError::Stopped(signal) = failure.error {
                signals::die_of(signal);
            }
            fail(&failure.error)
        }
    }
}

fn fail(error: &dyn std::error::Error) -> ExitCode {
    fail_with(&error.to_string())
}

fn fail_with(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "error: {message}");
    ExitCode::from(FAILURE_EXIT_STATUS)
}

fn print_stats(
    started: Instant,
    module: &CompiledModule,
    stats: Option<&CellStats>,
    memory_limit: u64,
    components: Components,
) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let cache = match module.cache {
        CacheStatus::Hit => "hit",
        CacheStatus::Miss => "miss",
    };
    let mut out = String::new();
    out.push_str(&format!(
        "hypercell stats:\n  compile cache:            {cache} ({:.3} ms)\n  components:               {}\n",
        ms(module.elapsed),
        component_names(components)
    ));
    if let Some(s) = stats {
        let setup = [
            ("vm create", s.vm_created - s.started),
            ("memory set-up", s.memory_ready - s.vm_created),
            ("guest load", s.guest_loaded - s.memory_ready),
            ("run (boot to exit)", s.finished - s.first_entry),
        ];
        out.push_str(&format!(
            "  first guest instruction:  {:.3} ms after start\n",
            ms(s.first_entry - started)
        ));
        let guest = s.guest.map(|g| {
            [
                ("  runtime init", g.runtime_init),
                ("  module load", g.module_load),
                ("  instantiate", g.instantiate),
                ("  program", g.program),
            ]
        });
        let teardown = ("teardown", s.torn_down - s.finished);
        let lines = setup
            .into_iter()
            .chain(guest.into_iter().flatten())
            .chain([teardown]);
        for (name, duration) in lines {
            out.push_str(&format!(
                "  {:<25} {:.3} ms\n",
                format!("{name}:"),
                ms(duration)
            ));
        }
        let calls: Vec<String> = s
            .hypercalls
            .made()
            .map(|(call, count)| format!("{call:?} {count}"))
            .collect();
        out.push_str(&format!(
            "  total:                    {:.3} ms\n  exits:                    {} (hypercalls: {})\n  guest memory touched:     {}\n  linear memory:            {}{} of a {} limit; the runtime's share is the rest\n",
            ms(started.elapsed()),
            s.exits,
            if calls.is_empty() { "none".to_string() } else { calls.join(", ") },
            format_size(s.memory_touched),
            format_size(s.linear_memory),
            match module.bounds_checks {
                BoundsChecks::GuardPages => "",
                BoundsChecks::Explicit => " mapped, in whole 2 MiB pages (explicit bounds checks),",
            },
            format_size(memory_limit)
        ));
    } else {
        out.push_str(&format!(
            "  total:                    {:.3} ms (the cell did not start)\n",
            ms(started.elapsed())
        ));
    }
    let _ = std::io::stderr().write_all(out.as_bytes());
}
