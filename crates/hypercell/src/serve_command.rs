//! `hypercell serve`: answer HTTP requests, each in a fresh cell of the handler.

use std::io::Write;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use hypercell_host::config::{
    ComponentChoice, Components, DEFAULT_MEMORY_LIMIT, parse_components, parse_duration,
    parse_memory_size,
};
use hypercell_host::{CellConfig, keep_vms_ready};
use hypercell_serve::{AccessLog, Handler, HandlerError, HandlerKind, PoolLimits, ServeOptions};

/// Arguments of `hypercell serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; `--listen 0.0.0.0:8080` serves other hosts too.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Most cells answering requests at once [default: the number of CPUs].
    #[arg(long, value_name = "N")]
    max_cells: Option<usize>,
    /// Cells kept ready however idle the server is.
    #[arg(long, value_name = "N", default_value_t = 1)]
    min_cells: usize,
    /// Most requests waiting for a cell; more are answered 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 256)]
    queue: usize,
    /// How long a cell beyond --min-cells stays without a request before it goes.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    idle: Duration,
    /// Largest request body taken; a larger one is answered 413.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_size, default_value = "16M")]
    max_body: u64,
    /// Stop a request's cell after this much wall-clock time; the request is answered
    /// 504.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    timeout: Duration,
    /// Most a handler may write to stdout and stderr for one request; more ends the
    /// request with 500.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_size, default_value = "64M")]
    max_output: u64,
    /// Most memory the handler's linear memory may grow to in one request, such as
    /// 64M [default: 4G]. A template keeps the limit it was made with.
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_size,
          default_value_t = DEFAULT_MEMORY_LIMIT, hide_default_value = true)]
    memory: u64,
    /// Let one cell answer up to N requests in turn (`--reuse=N`; without N: as many
    /// as come),
    /// as `wasmtime serve` reuses instances, rather than giving each request a fresh
    /// cell: faster, but a request can see what earlier ones left in the cell. For
    /// wasi:http components; a WAGI program ends after each request.
    #[arg(long, value_name = "N", num_args = 0..=1, require_equals = true)]
    reuse: Option<Option<NonZeroU64>>,
    /// Directories and variables every request's cell is given (the request's CGI
    /// variables come after these).
    #[command(flatten)]
    grant: crate::grant_args::GrantArgs,
    /// Give the handler only these host components (see `hypercell run --help`);
    /// it needs `stdio` to answer. A template keeps its own.
    #[arg(long, value_name = "LIST", value_parser = parse_components)]
    components: Option<ComponentChoice>,
    /// Compiler setting, as `wasmtime serve -O`: `signals-based-traps=n` compiles a
    /// bounds check into each linear-memory access, so that a request's memory grows
    /// without exits (the default for wasi:http components); `=y` leaves out-of-bounds
    /// accesses to guard pages, for handlers that compute more than they grow (the
    /// default for WAGI programs). A template keeps its own.
    #[arg(short = 'O', long = "optimize", value_name = "KEY[=VAL]", value_parser = crate::tuning_args::parse_tuning)]
    optimize: Vec<crate::tuning_args::Tuning>,
    /// The handler: a wasi:http proxy component (as `wasmtime serve` runs), a WASI
    /// command module following WAGI's conventions, or a template of one made with
    /// `hypercell template create` (at `start`).
    handler: PathBuf,
    /// Arguments every request's program gets, before those of the request's query.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Longest a request's body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// `hypercell serve`.
pub fn serve(args: ServeArgs) -> ExitCode {
    let preopens = match args.grant.preopens() {
        Ok(preopens) => preopens,
        Err(error) => return crate::fail(&error),
    };
    let base = CellConfig {
        memory_limit: args.memory,
        timeout: Some(args.timeout),
        output_limit: Some(args.max_output),
        args: std::iter::once(args.handler.display().to_string())
            .chain(args.args.iter().cloned())
            .collect(),
        env: args.grant.program_env(),
        preopens,
        components: args
            .components
            .map_or(Components::ALL, |choice| choice.components),
    };
    if !hypercell_host::persist::SnapshotFile::is_snapshot(&args.handler)
        && let Err(refusal) = crate::check_strict_file(args.components, &args.handler)
    {
        return crate::fail_with(&refusal);
    }
    let asked = crate::tuning_args::bounds_checks(&args.optimize);
    let handler = match Handler::load(&args.handler, base, asked) {
        Ok(handler) => handler,
        Err(error @ HandlerError::NoStdio(_)) => {
            return crate::fail_with(&format!("{error}: add `stdio` to --components"));
        }
        Err(error) => return crate::fail(&error),
    };
    if let Err(refusal) = crate::tuning_args::keep_template_checks(
        &args.optimize,
        handler.bounds_checks(),
        &args.handler,
    ) {
        return crate::fail_with(&refusal);
    }
    if args.reuse.is_some() && handler.kind() == HandlerKind::Wagi {
        let _ = writeln!(
            std::io::stderr(),
            "hypercell serve: note: --reuse applies to wasi:http components; `{}` is a WAGI program, which ends after each request, so each request still gets a fresh cell",
            args.handler.display()
        );
    }
    let max_cells = args.max_cells.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    if max_cells == 0 {
        return crate::fail_with("--max-cells must be at least 1");
    }
    let options = ServeOptions {
        limits: PoolLimits {
            max_cells,
            min_cells: args.min_cells.min(max_cells),
            queue: args.queue,
            idle: args.idle,
            requests_per_cell: match args.reuse {
                None => 1,
                Some(None) => u64::MAX,
                Some(Some(most)) => most.get(),
            },
        },
        max_body: usize::try_from(args.max_body).unwrap_or(usize::MAX),
        body_timeout: BODY_TIMEOUT,
        // The requests in flight end by their time limit; a connection that has not
        // sent its request yet, by hyper's 30 s for a request's head.
        drain_timeout: args.timeout.max(Duration::from_secs(30)) + Duration::from_secs(5),
    };
    // One thread parses HTTP and hands requests to the cells' threads: a second one
    // cost more in waking and stealing work than it gave (8-9% of the requests a
    // second, measured against a fresh component cell per request).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            return crate::fail_with(&format!("cannot start the server's runtime: {error}"));
        }
    };
    // New cells take VMs made ahead, off the requests' path.
    keep_vms_ready(max_cells.min(4));
    let log = Arc::new(AccessLog::new(
        Box::new(std::io::stdout()),
        Box::new(std::io::stderr()),
    ));
    let served = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
        let address = listener
            .local_addr()
            .map_err(|error| format!("cannot listen on {}: {error}", args.listen))?;
        let _ = writeln!(
            std::io::stderr(),
            "hypercell serve: serving `{}` on http://{address} with up to {max_cells} cells",
            args.handler.display()
        );
        hypercell_serve::serve(listener, handler, options, log, shutdown_signal())
            .await
            .map_err(|error| format!("the server failed: {error}"))?;
        let _ = writeln!(
            std::io::stderr(),
            "hypercell serve: stopped; every request taken was answered"
        );
        Ok::<(), String>(())
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => crate::fail_with(&message),
    }
}

/// Completes on SIGTERM or SIGINT (a server that cannot watch them is stopped by them
/// the usual way).
async fn shutdown_signal() {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    async fn either(terminate: &mut Signal, interrupt: &mut Signal) {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    }
    either(&mut terminate, &mut interrupt).await;
    let _ = writeln!(
        std::io::stderr(),
        "hypercell serve: stopping: answering the requests taken, then exiting (signal again to stop at once)"
    );
    tokio::spawn(async move {
        either(&mut terminate, &mut interrupt).await;
        let _ = writeln!(
            std::io::stderr(),
            "hypercell serve: stopped at once; requests in flight were not answered"
        );
        std::process::exit(1);
    });
}
