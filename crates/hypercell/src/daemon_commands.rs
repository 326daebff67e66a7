//! `hypercell daemon` and the verbs that drive a running daemon, as docker's and
//! podman's do: `ps`, `create`, `start`, `stop`, `kill`, `pause`, `resume`, `logs`,
//! `inspect`, `rm`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::Method;
use hypercell_daemon::record::{ChannelView, RestartPolicy, TemplateRecord, TemplateSpec};
use hypercell_daemon::{CellRecord, CellSpec, DaemonOptions, DirSpec};
use hypercell_host::config::{
    ComponentChoice, Components, parse_components, parse_duration, parse_memory_size,
};
use hypercell_host::fs::parse_dir;

use crate::client::{Client, ClientError, refusal};

/// Arguments of `hypercell daemon`.
#[derive(clap::Args)]
pub struct DaemonArgs {
    /// The API's Unix socket [default: $XDG_RUNTIME_DIR/hypercell/api.sock, or
    /// /run/hypercell/api.sock as root].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Where records, logs and compiled code are kept [default:
    /// $XDG_STATE_HOME/hypercell, or /var/lib/hypercell as root].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Serve the API on this TCP address too (such as 127.0.0.1:7878); requests there
    /// must carry the token of --token-file.
    #[arg(long, value_name = "ADDR", requires = "token_file")]
    listen: Option<std::net::SocketAddr>,
    /// A file whose first line is the bearer token TCP requests must carry (at least 16
    /// characters).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// A directory under which cells may be granted directories (repeatable); without
    /// one, cells get none.
    #[arg(long = "allow-dir", value_name = "DIR")]
    allow_dirs: Vec<PathBuf>,
    /// Park a cell that has waited this long for stdin: its VM is released and what it
    /// changed over its template kept, until input or a request wakes it; `off` never
    /// parks.
    #[arg(long, value_name = "DURATION|off", default_value = "10s", value_parser = parse_duration_or_off)]
    park_after: DurationOrOff,
    /// Checkpoint cells created with `--restart checkpoint` this often while they run,
    /// so that the next daemon restores them even after a crash (their logs cut back to
    /// the checkpoint); `off` checkpoints them only at shutdown.
    #[arg(long, value_name = "DURATION|off", default_value = "30s", value_parser = parse_duration_or_off)]
    checkpoint_every: DurationOrOff,
    /// Take cells other daemons migrate here on this TCP address (such as
    /// 10.0.0.2:7879); they must prove they hold the secret of --migration-secret-file.
    #[arg(long, value_name = "ADDR", requires = "migration_secret_file")]
    migration_listen: Option<std::net::SocketAddr>,
    /// A file whose first line is the secret daemons that migrate cells to each other
    /// share (at least 16 characters); needed to send cells too.
    #[arg(long, value_name = "FILE")]
    migration_secret_file: Option<PathBuf>,
}

/// A duration, or never (`off`).
#[derive(Clone, Copy)]
struct DurationOrOff(Option<std::time::Duration>);

fn parse_duration_or_off(text: &str) -> Result<DurationOrOff, String> {
    if text == "off" {
        return Ok(DurationOrOff(None));
    }
    parse_duration(text)
        .map(|after| DurationOrOff(Some(after)))
        .map_err(|e| e.to_string())
}

/// Where a client verb finds the daemon.
#[derive(clap::Args)]
pub struct HostArg {
    /// The daemon: unix:PATH or http://ADDR [default: $HYPERCELL_HOST, else the
    /// daemon's default socket].
    #[arg(long, value_name = "ADDRESS")]
    host: Option<String>,
    /// For http://ADDR: a file whose first line is the daemon's token [default:
    /// $HYPERCELL_TOKEN holds the token itself].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

/// How listings are printed.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// A table for people.
    Table,
    /// JSON, for scripts.
    Json,
}

/// Arguments of `hypercell ps`.
#[derive(clap::Args)]
pub struct PsArgs {
    #[command(flatten)]
    host: HostArg,
    /// Print a table or JSON.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// Arguments of `hypercell create`.
#[derive(clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    host: HostArg,
    /// A name for the cell, unique in the daemon.
    #[arg(long)]
    name: Option<String>,
    /// Start the cell too, in the same request, as `docker run` does.
    #[arg(long)]
    start: bool,
    /// Keep the program's stdin open, to be written through the API (`POST
    /// /v1/cells/{cell}/stdin`); otherwise it is empty.
    #[arg(short = 'i', long)]
    interactive: bool,
    #[command(flatten)]
    grant: crate::grant_args::GrantArgs,
    /// Most memory the program may grow to, such as 64M or 2G.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_size)]
    memory: Option<u64>,
    /// Stop the program after this much wall-clock time from its start.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Stop the program once it has written this much to stdout and stderr.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_size)]
    max_output: Option<u64>,
    /// Label the cell, as KEY=VALUE (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// What becomes of the cell, while it runs, when the daemon goes away: `no` (killed,
    /// or lost after a crash) or `checkpoint` (checkpointed at shutdown and restored by
    /// the next daemon from its last checkpoint).
    #[arg(long, value_name = "POLICY", default_value = "no", value_parser = parse_restart)]
    restart: RestartPolicy,
    /// Give the program only these host components, comma-separated, of stdio, args,
    /// env, clocks, random, fs and channels (its named channels); with `strict` in the list, a module importing a
    /// function of another is refused [default: all].
    #[arg(long, value_name = "LIST", value_parser = parse_components)]
    components: Option<ComponentChoice>,
    /// The module or template to run.
    module: PathBuf,
    /// Arguments passed to the program.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Arguments of the verbs that act on cells.
#[derive(clap::Args)]
pub struct CellsArgs {
    #[command(flatten)]
    host: HostArg,
    /// Cells, by id, id prefix or name.
    #[arg(required = true, value_name = "CELL")]
    cells: Vec<String>,
}

/// Arguments of `hypercell stats`.
#[derive(clap::Args)]
pub struct StatsArgs {
    /// Print a table or JSON.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    #[command(flatten)]
    cells: CellsArgs,
}

/// Arguments of `hypercell stop`.
#[derive(clap::Args)]
pub struct StopArgs {
    /// Seconds to wait for the cell to end once its stdin is closed, before killing it.
    #[arg(
        short = 't',
        long = "time",
        value_name = "SECONDS",
        default_value_t = 10
    )]
    time: u64,
    #[command(flatten)]
    cells: CellsArgs,
}

/// Arguments of `hypercell rm`.
#[derive(clap::Args)]
pub struct RmArgs {
    /// Kill a running cell first.
    #[arg(short = 'f', long)]
    force: bool,
    #[command(flatten)]
    cells: CellsArgs,
}

/// Arguments of `hypercell snapshot`.
#[derive(clap::Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    host: HostArg,
    /// The cell.
    cell: String,
    /// Where the daemon writes the checkpoint; `hypercell create FILE` makes a cell that
    /// goes on from it.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
}

/// Arguments of `hypercell migrate`.
#[derive(clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    host: HostArg,
    /// The cell.
    cell: String,
    /// The migration listener of the daemon to move it to (its --migration-listen).
    #[arg(long, value_name = "ADDR")]
    to: String,
    /// A directory of the cell that the destination has under another path (the same
    /// storage, mounted elsewhere); repeatable. The others must be at the same paths.
    #[arg(long = "dir-map", value_name = "OLD=NEW", value_parser = parse_dir_map)]
    dir_map: Vec<(String, String)>,
    /// How long the cell may be paused while the last of its memory moves: its
    /// memory moves in rounds while it runs until what is left fits.
    #[arg(long, value_name = "MS", default_value_t = 5)]
    downtime_ms: u64,
}

fn parse_dir_map(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((from, to)) if !from.is_empty() && !to.is_empty() => Ok((from.into(), to.into())),
        _ => Err(format!(
            "`{text}` is not OLD=NEW: write the directory here, `=`, and where the destination has it"
        )),
    }
}

/// Arguments of `hypercell connect`.
#[derive(clap::Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    host: HostArg,
    /// The writing cell's end: `CELL:stdout`, or `CELL:NAME` for a named channel.
    #[arg(value_name = "CELL:stdout|CELL:NAME", value_parser = end_of)]
    from: (String, String),
    /// The reading cell's end: `CELL:stdin`, or `CELL:NAME` with the same name.
    #[arg(value_name = "CELL:stdin|CELL:NAME", value_parser = end_of)]
    to: (String, String),
}

/// The cell and the stream or channel name of `CELL:END`.
fn end_of(text: &str) -> Result<(String, String), String> {
    match text.rsplit_once(':') {
        Some((cell, end)) if !cell.is_empty() && !end.is_empty() => Ok((cell.into(), end.into())),
        _ => Err(format!(
            "`{text}` is not `CELL:stdout`, `CELL:stdin` or `CELL:NAME`: name a cell and one end of the channel"
        )),
    }
}

/// What `hypercell connect FROM TO` asks for: the named channel's name, or none to
/// join stdout to stdin.
fn channel_name(from: &str, to: &str) -> Result<Option<String>, ClientError> {
    match (from, to) {
        ("stdout", "stdin") => Ok(None),
        (from, to) if from == to && !matches!(from, "stdin" | "stdout" | "stderr") => {
            Ok(Some(from.to_string()))
        }
        _ => Err(ClientError::Usage(format!(
            "`{from}` to `{to}` is no channel: a channel joins `A:stdout` to `B:stdin`, or grants `A:NAME` and `B:NAME` the same named channel, which A writes and B reads"
        ))),
    }
}

/// Arguments of `hypercell logs`.
#[derive(clap::Args)]
pub struct LogsArgs {
    #[command(flatten)]
    host: HostArg,
    /// Keep printing output as the cell writes it, until it ends.
    #[arg(short = 'f', long)]
    follow: bool,
    /// The cell.
    cell: String,
}

/// Arguments of `hypercell events`.
#[derive(clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    host: HostArg,
    /// Print the recorded events after this sequence number first.
    #[arg(long, value_name = "SEQ")]
    since: Option<u64>,
}

/// The actions on cells that take no arguments of their own.
#[derive(Clone, Copy)]
pub enum Action {
    /// `start`.
    Start,
    /// `kill`.
    Kill,
    /// `pause`.
    Pause,
    /// `resume`.
    Resume,
}

/// Runs `hypercell daemon`.
pub fn daemon(args: DaemonArgs) -> ExitCode {
    let options = DaemonOptions {
        socket: args.socket.unwrap_or_else(hypercell_daemon::default_socket),
        state: args.state.unwrap_or_else(hypercell_daemon::default_state),
        listen: args.listen.zip(args.token_file),
        allowed_dirs: args.allow_dirs,
        park_after: args.park_after.0,
        checkpoint_every: args.checkpoint_every.0,
        migration: args
            .migration_secret_file
            .map(|secret| (secret, args.migration_listen)),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return crate::fail(&e),
    };
    let socket = options.socket.clone();
    let served = runtime.block_on(hypercell_daemon::serve(options, || {
        tracing::info!("serving the API on {}", socket.display());
        let _ = writeln!(
            std::io::stderr(),
            "hypercell daemon: serving on {}",
            socket.display()
        );
    }));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail(&e),
    }
}

fn parse_restart(policy: &str) -> Result<RestartPolicy, String> {
    match policy {
        "no" => Ok(RestartPolicy::No),
        "checkpoint" => Ok(RestartPolicy::Checkpoint),
        other => Err(format!(
            "`{other}` is not a restart policy: use `no` or `checkpoint`"
        )),
    }
}

pub fn client(host: &HostArg) -> Result<Client, ClientError> {
    Client::new(host.host.as_deref(), host.token_file.as_deref())
}

fn finish(result: Result<(), ClientError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => crate::fail(&e),
    }
}

/// Runs `hypercell ps`.
pub fn ps(args: PsArgs) -> ExitCode {
    list(
        &args.host,
        "/v1/cells",
        args.format,
        |out, cells: Vec<CellRecord>| {
            let now = hypercell_daemon::record::now_ms();
            let _ = writeln!(
                out,
                "{:<12}  {:<24}  {:<10}  {:<22}  {:<12}  MODULE",
                "CELL ID", "NAME", "STATE", "STATUS", "CREATED"
            );
            for cell in cells {
                let _ = writeln!(
                    out,
                    "{:<12}  {:<24}  {:<10}  {:<22}  {:<12}  {}",
                    cell.id,
                    cell.name,
                    cell.state.as_str(),
                    status(&cell),
                    format!("{} ago", age(now.saturating_sub(cell.created_ms))),
                    cell.spec.module
                );
            }
        },
    )
}

/// Runs `hypercell channels`: the channels between cells, writer first.
pub fn channels(args: PsArgs) -> ExitCode {
    list(
        &args.host,
        "/v1/channels",
        args.format,
        |out, channels: Vec<ChannelView>| {
            let _ = writeln!(out, "{:<24}  {:<24}  CHANNEL", "FROM", "TO");
            for channel in channels {
                let to = channel.to_name.unwrap_or(channel.to);
                let (from, to) = match &channel.name {
                    Some(name) => (
                        format!("{}:{name}", channel.from_name),
                        format!("{to}:{name}"),
                    ),
                    None => (
                        format!("{}:stdout", channel.from_name),
                        format!("{to}:stdin"),
                    ),
                };
                let kind = if channel.name.is_some() {
                    "named"
                } else {
                    "stdio"
                };
                let _ = writeln!(out, "{from:<24}  {to:<24}  {kind}");
            }
        },
    )
}

/// Prints the list the daemon answers at `path`: its JSON as it came, or a table that
/// `table` writes.
fn list<T: serde::de::DeserializeOwned>(
    host: &HostArg,
    path: &str,
    format: Format,
    table: impl FnOnce(&mut dyn Write, Vec<T>),
) -> ExitCode {
    finish((|| {
        let body = client(host)?.call(Method::GET, path, None)?;
        let items: Vec<T> =
            serde_json::from_slice(&body).map_err(|e| ClientError::Http(e.to_string()))?;
        let mut out = std::io::stdout().lock();
        match format {
            Format::Json => {
                let _ = writeln!(out, "{}", String::from_utf8_lossy(&body));
            }
            Format::Table => table(&mut out, items),
        }
        Ok(())
    })())
}

/// A short word on how the cell ended or runs.
fn status(cell: &CellRecord) -> String {
    match (cell.exit_code, &cell.error, cell.parked_ms) {
        (Some(code), _, _) => format!("exit {code}"),
        (None, Some(error), _) => error.chars().take(22).collect(),
        (None, None, Some(since)) => format!(
            "parked {}",
            age(hypercell_daemon::record::now_ms().saturating_sub(since))
        ),
        (None, None, None) => String::new(),
    }
}

fn age(ms: u64) -> String {
    match ms / 1000 {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Runs `hypercell create`: prints the new cell's id.
pub fn create(args: CreateArgs) -> ExitCode {
    finish((|| {
        let mut labels = std::collections::BTreeMap::new();
        for label in &args.labels {
            let Some((key, value)) = label.split_once('=') else {
                return Err(ClientError::Refused(format!(
                    "--label `{label}` is not KEY=VALUE"
                )));
            };
            labels.insert(key.to_string(), value.to_string());
        }
        let spec = CellSpec {
            name: args.name.clone(),
            module: module_or_template(&args.module),
            args: args.args.clone(),
            env: args
                .grant
                .program_env()
                .into_iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect(),
            dirs: dir_specs(&args.grant.dirs, &args.grant.dirs_read_only)?,
            memory: args.memory,
            timeout_ms: args.timeout.map(|t| t.as_millis() as u64),
            max_output: args.max_output,
            labels,
            stdin: args.interactive,
            restart: args.restart,
            components: args.components.map(component_list),
            components_strict: args.components.is_some_and(|choice| choice.strict),
        };
        let client = client(&args.host)?;
        let body = serde_json::to_vec(&spec).map_err(|e| ClientError::Http(e.to_string()))?;
        let path = if args.start {
            "/v1/cells?start=true"
        } else {
            "/v1/cells"
        };
        let answer = client.call(Method::POST, path, Some(body))?;
        let record: CellRecord =
            serde_json::from_slice(&answer).map_err(|e| ClientError::Http(e.to_string()))?;
        let _ = writeln!(std::io::stdout(), "{}", record.id);
        Ok(())
    })())
}

/// `path` made absolute for the daemon, which does not share our working directory.
fn absolute(path: &str) -> String {
    std::path::absolute(path).map_or_else(|_| path.to_string(), |p| p.display().to_string())
}

/// A cell's module as the daemon takes it: a path made absolute, or, for a bare name
/// that is no file here, a template's name.
fn module_or_template(module: &Path) -> String {
    let text = module.display().to_string();
    if !text.contains('/') && !module.is_file() {
        text
    } else {
        absolute(&text)
    }
}

/// `--dir` and `--dir-ro` flags as the API's directories.
pub fn dir_specs(dirs: &[String], read_only: &[String]) -> Result<Vec<DirSpec>, ClientError> {
    let dir = |spec: &String, read_only: bool| {
        let preopen =
            parse_dir(spec, read_only).map_err(|e| ClientError::Refused(e.to_string()))?;
        Ok(DirSpec {
            host: absolute(&preopen.host.display().to_string()),
            guest: Some(preopen.guest),
            read_only,
        })
    };
    dirs.iter()
        .map(|d| dir(d, false))
        .chain(read_only.iter().map(|d| dir(d, true)))
        .collect()
}

/// A `--components` choice as the API's list.
pub fn component_list(choice: ComponentChoice) -> Vec<String> {
    Components::NAMES
        .iter()
        .filter(|&&(_, component)| choice.components.contains(component))
        .map(|&(name, _)| name.to_string())
        .collect()
}

/// Runs `hypercell template create --name NAME`: the daemon makes the template.
pub fn template_create(host: &HostArg, mut spec: TemplateSpec) -> ExitCode {
    finish((|| {
        spec.module = absolute(&spec.module);
        let client = client(host)?;
        let body = serde_json::to_vec(&spec).map_err(|e| ClientError::Http(e.to_string()))?;
        let answer = client.call(Method::POST, "/v1/templates", Some(body))?;
        let record: TemplateRecord =
            serde_json::from_slice(&answer).map_err(|e| ClientError::Http(e.to_string()))?;
        let _ = writeln!(std::io::stdout(), "{}", record.name);
        Ok(())
    })())
}

/// Arguments of `hypercell template ls`.
#[derive(clap::Args)]
pub struct TemplateLsArgs {
    #[command(flatten)]
    host: HostArg,
    /// Print a table or JSON.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

/// Runs `hypercell template ls`.
pub fn template_ls(args: TemplateLsArgs) -> ExitCode {
    list(
        &args.host,
        "/v1/templates",
        args.format,
        |out, templates: Vec<TemplateRecord>| {
            let now = hypercell_daemon::record::now_ms();
            let _ = writeln!(
                out,
                "{:<24}  {:<12}  {:>10}  {:<12}  MODULE",
                "NAME", "AT", "SIZE", "CREATED"
            );
            for template in templates {
                let _ = writeln!(
                    out,
                    "{:<24}  {:<12}  {:>10}  {:<12}  {}",
                    template.name,
                    template.spec.at.as_deref().unwrap_or("start"),
                    hypercell_host::config::format_size(template.bytes),
                    format!("{} ago", age(now.saturating_sub(template.created_ms))),
                    template.spec.module
                );
            }
        },
    )
}

/// Arguments of `hypercell template rm`.
#[derive(clap::Args)]
pub struct TemplateRmArgs {
    #[command(flatten)]
    host: HostArg,
    /// Templates, by name.
    #[arg(required = true, value_name = "TEMPLATE")]
    names: Vec<String>,
}

/// Runs `hypercell template rm`, printing each name as it is removed.
pub fn template_rm(args: TemplateRmArgs) -> ExitCode {
    on_each(&args.host, &args.names, |client, name| {
        client
            .call(
                Method::DELETE,
                &format!("/v1/templates/{}", path_part(name)),
                None,
            )
            .map(drop)
    })
}

/// Runs `start`, `kill`, `pause` or `resume` on each cell, printing each reference as
/// it succeeds.
pub fn act(action: Action, args: CellsArgs) -> ExitCode {
    let verb = match action {
        Action::Start => "start",
        Action::Kill => "kill",
        Action::Pause => "pause",
        Action::Resume => "resume",
    };
    on_each(&args.host, &args.cells, |client, cell| {
        client
            .call(
                Method::PUT,
                &format!("/v1/cells/{}/{verb}", path_part(cell)),
                None,
            )
            .map(drop)
    })
}

/// Runs `hypercell connect`: joins one created cell's stdout to another's stdin, or
/// grants two created cells a named channel.
pub fn connect(args: ConnectArgs) -> ExitCode {
    finish((|| {
        let ((from, from_end), (to, to_end)) = (args.from, args.to);
        let name = channel_name(&from_end, &to_end)?;
        let client = client(&args.host)?;
        let body = serde_json::to_vec(&serde_json::json!({ "from": from, "to": to, "name": name }))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let joined = client.call(Method::POST, "/v1/channels", Some(body))?;
        let records: [CellRecord; 2] = serde_json::from_slice(&joined).map_err(|e| {
            ClientError::Http(format!("the daemon's answer is not two cell records: {e}"))
        })?;
        let _ = writeln!(
            std::io::stdout(),
            "{}:{from_end} -> {}:{to_end}",
            records[0].name,
            records[1].name
        );
        Ok(())
    })())
}

/// Runs `hypercell snapshot`: prints the file written.
pub fn snapshot(args: SnapshotArgs) -> ExitCode {
    finish((|| {
        let client = client(&args.host)?;
        let path = std::path::absolute(&args.output).unwrap_or(args.output.clone());
        let body = serde_json::to_vec(&serde_json::json!({ "path": path }))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        client.call(
            Method::PUT,
            &format!("/v1/cells/{}/snapshot", path_part(&args.cell)),
            Some(body),
        )?;
        let _ = writeln!(std::io::stdout(), "{}", path.display());
        Ok(())
    })())
}

/// Runs `hypercell migrate`: says where the cell went and what its move cost.
pub fn migrate(args: MigrateArgs) -> ExitCode {
    finish((|| {
        let client = client(&args.host)?;
        let dir_map: Vec<_> = args
            .dir_map
            .iter()
            .map(|(from, to)| serde_json::json!({ "from": from, "to": to }))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({
            "to": args.to,
            "dir_map": dir_map,
            "downtime_ms": args.downtime_ms,
        }))
        .map_err(|e| ClientError::Http(e.to_string()))?;
        let progress = crate::migration_bar::MigrationBar::show(&args.host, &args.cell, &args.to);
        let moved = client.call(
            Method::PUT,
            &format!("/v1/cells/{}/migrate", path_part(&args.cell)),
            Some(body),
        );
        drop(progress);
        let moved = moved?;
        let moved: hypercell_daemon::registry::Migration =
            serde_json::from_slice(&moved).map_err(|e| {
                ClientError::Http(format!("the daemon's answer is not a migration: {e}"))
            })?;
        let _ = writeln!(
            std::io::stdout(),
            "moved {} to {} in {:.1} ms ({:.1} ms paused, {:.1} MiB sent)",
            moved.cell.name,
            args.to,
            moved.total_ms,
            moved.downtime_ms,
            moved.bytes as f64 / f64::from(1 << 20)
        );
        Ok(())
    })())
}

/// Runs `hypercell stop`.
pub fn stop(args: StopArgs) -> ExitCode {
    let grace = args.time.saturating_mul(1000);
    on_each(&args.cells.host, &args.cells.cells, |client, cell| {
        client
            .call(
                Method::PUT,
                &format!("/v1/cells/{}/stop?grace_ms={grace}", path_part(cell)),
                None,
            )
            .map(drop)
    })
}

/// Runs `hypercell rm`.
pub fn rm(args: RmArgs) -> ExitCode {
    let force = args.force;
    on_each(&args.cells.host, &args.cells.cells, |client, cell| {
        client
            .call(
                Method::DELETE,
                &format!("/v1/cells/{}?force={force}", path_part(cell)),
                None,
            )
            .map(drop)
    })
}

/// Runs `hypercell stats`: each cell's state, run time, CPU time, exits and hypercalls.
pub fn stats(args: StatsArgs) -> ExitCode {
    finish((|| {
        let client = client(&args.cells.host)?;
        let mut views = Vec::new();
        for cell in &args.cells.cells {
            let body = client.call(
                Method::GET,
                &format!("/v1/cells/{}/stats", path_part(cell)),
                None,
            )?;
            let view: hypercell_daemon::record::CellStatsView =
                serde_json::from_slice(&body).map_err(|e| ClientError::Http(e.to_string()))?;
            views.push(view);
        }
        let mut out = std::io::stdout().lock();
        match args.format {
            Format::Json => {
                let text = serde_json::to_string_pretty(&views)
                    .map_err(|e| ClientError::Http(e.to_string()))?;
                let _ = writeln!(out, "{text}");
            }
            Format::Table => {
                let _ = writeln!(
                    out,
                    "{:<24}  {:<8}  {:>10}  {:>10}  {:>8}  {:>12}  HYPERCALLS",
                    "NAME", "STATE", "UPTIME", "CPU", "EXITS", "MEMORY"
                );
                for view in views {
                    let ms = |ms: Option<u64>| {
                        ms.map_or("-".into(), |ms| format!("{:.3}s", ms as f64 / 1000.0))
                    };
                    let calls: Vec<String> = view
                        .usage
                        .hypercalls
                        .iter()
                        .map(|(call, count)| format!("{call} {count}"))
                        .collect();
                    let _ = writeln!(
                        out,
                        "{:<24}  {:<8}  {:>10}  {:>10}  {:>8}  {:>12}  {}",
                        view.name,
                        view.state.as_str(),
                        ms(view.uptime_ms),
                        ms(view.usage.cpu_time_ms),
                        view.usage.exits,
                        match (view.parked_bytes, view.usage.memory_touched) {
                            (Some(kept), _) =>
                                format!("{} parked", hypercell_host::config::format_size(kept)),
                            (None, Some(touched)) => hypercell_host::config::format_size(touched),
                            (None, None) => "-".into(),
                        },
                        calls.join(", ")
                    );
                }
            }
        }
        Ok(())
    })())
}

/// Runs `hypercell inspect`: the cells' records as a JSON array.
pub fn inspect(args: CellsArgs) -> ExitCode {
    finish((|| {
        let client = client(&args.host)?;
        let mut records = Vec::new();
        for cell in &args.cells {
            let body = client.call(Method::GET, &format!("/v1/cells/{}", path_part(cell)), None)?;
            let record: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| ClientError::Http(e.to_string()))?;
            records.push(record);
        }
        let text =
            serde_json::to_string_pretty(&records).map_err(|e| ClientError::Http(e.to_string()))?;
        let _ = writeln!(std::io::stdout(), "{text}");
        Ok(())
    })())
}

/// Runs `hypercell logs`: stdout to stdout and stderr to stderr, followed together.
pub fn logs(args: LogsArgs) -> ExitCode {
    finish((|| {
        let client = client(&args.host)?;
        let path = |stream: &str| {
            format!(
                "/v1/cells/{}/logs?stream={stream}&follow={}",
                path_part(&args.cell),
                args.follow
            )
        };
        let copy = |stream: &'static str| {
            let path = path(stream);
            let client = &client;
            async move {
                let mut response = client.send(Method::GET, &path, None).await?;
                let status = response.status();
                let mut failure = Vec::new();
                while let Some(frame) = response.body_mut().frame().await {
                    let frame = frame.map_err(|e| ClientError::Http(e.to_string()))?;
                    if let Some(data) = frame.data_ref() {
                        if !status.is_success() {
                            failure.extend_from_slice(data);
                        } else if stream == "stdout" {
                            let mut out = std::io::stdout().lock();
                            let _ = out.write_all(data);
                            let _ = out.flush();
                        } else {
                            let _ = std::io::stderr().write_all(data);
                        }
                    }
                }
                if status.is_success() {
                    Ok(())
                } else {
                    Err(refusal(status, &failure))
                }
            }
        };
        let (out, err) = client.block_on(async { tokio::join!(copy("stdout"), copy("stderr")) });
        out.and(err)
    })())
}

/// Runs `hypercell events`: every change of every cell, one JSON line each, until the
/// daemon goes away.
pub fn events(args: EventsArgs) -> ExitCode {
    finish((|| {
        let client = client(&args.host)?;
        let path = match args.since {
            Some(since) => format!("/v1/events?since={since}"),
            None => "/v1/events".to_string(),
        };
        client.stream(Method::GET, &path, None, |chunk| {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(chunk);
            let _ = out.flush();
        })
    })())
}

/// Runs `request` on the daemon `host` names for each of `names` (cells or templates),
/// printing each that succeeded and failing with the refusals' sentences after trying
/// them all.
fn on_each(
    host: &HostArg,
    names: &[String],
    request: impl Fn(&Client, &str) -> Result<(), ClientError>,
) -> ExitCode {
    let client = match client(host) {
        Ok(client) => client,
        Err(e) => return crate::fail(&e),
    };
    let mut status = ExitCode::SUCCESS;
    for name in names {
        match request(&client, name) {
            Ok(()) => {
                let _ = writeln!(std::io::stdout(), "{name}");
            }
            Err(e) => status = crate::fail(&e),
        }
    }
    status
}

/// `cell` made safe as one part of a URL path.
pub fn path_part(cell: &str) -> String {
    cell.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
