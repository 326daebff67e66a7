//! `hypercell cache`: where the compile cache lives, and emptying it.

use std::io::Write;
use std::process::ExitCode;

use hypercell_host::compile::{CompileCache, default_cache_dir};
use hypercell_host::config::format_size;

/// Arguments of `hypercell cache`.
#[derive(clap::Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(clap::Subcommand)]
enum CacheCommand {
    /// Remove all compiled code, index records, the containerd shim's templates and
    /// temporary files, and say how much space that freed.
    Clean,
    /// Print the compile-cache directory.
    Dir,
}

/// Errors of `hypercell cache`.
#[derive(Debug, thiserror::Error)]
enum CacheCommandError {
    /// Neither variable names a cache directory.
    #[error("there is no compile-cache directory: set XDG_CACHE_HOME to an absolute path, or HOME")]
    NoDirectory,
}

/// Runs `hypercell cache`.
pub fn run(args: CacheArgs) -> ExitCode {
    let Some(dir) = default_cache_dir() else {
        return super::fail(&CacheCommandError::NoDirectory);
    };
    let mut stdout = std::io::stdout();
    match args.command {
        CacheCommand::Dir => {
            let _ = writeln!(stdout, "{}", dir.display());
        }
        CacheCommand::Clean => match CompileCache::new(dir).clean() {
            Ok(cleaned) => {
                let count =
                    |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
                let _ = writeln!(
                    stdout,
                    "Freed {} by removing {}, {}, {} and {}.",
                    format_size(cleaned.bytes),
                    count(cleaned.entries, "compiled module"),
                    count(cleaned.index_records, "index record"),
                    count(cleaned.templates, "template"),
                    count(cleaned.temp_files, "temporary file"),
                );
            }
            Err(e) => return super::fail(&e),
        },
    }
    ExitCode::SUCCESS
}
