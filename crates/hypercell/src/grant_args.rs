//! The flags that grant a program host directories and environment variables, as
//! `wasmtime run` spells them: shared by `run`, `template create`, `create` and `serve`.

use hypercell_host::ConfigError;
use hypercell_host::config::parse_env_var;
use hypercell_host::fs::{Preopen, parse_dir};

/// `--dir`, `--dir-ro` and `--env`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct GrantArgs {
    /// Grant a host directory, as `wasmtime run --dir`: HOST, or HOST::GUEST to name it
    /// GUEST inside the program (repeatable).
    #[arg(long = "dir", value_name = "HOST[::GUEST]")]
    pub dirs: Vec<String>,
    /// Grant a host directory read-only (repeatable).
    #[arg(long = "dir-ro", value_name = "HOST[::GUEST]")]
    pub dirs_read_only: Vec<String>,
    /// Set an environment variable for the program, or pass on this shell's value of
    /// NAME (repeatable).
    #[arg(long = "env", value_name = "NAME[=VALUE]", value_parser = parse_env_var)]
    pub env: Vec<(String, Option<String>)>,
}

impl GrantArgs {
    /// The preopens the flags ask for.
    pub fn preopens(&self) -> Result<Vec<Preopen>, ConfigError> {
        self.dirs
            .iter()
            .map(|spec| parse_dir(spec, false))
            .chain(self.dirs_read_only.iter().map(|spec| parse_dir(spec, true)))
            .collect()
    }

    /// The program's environment: a bare NAME takes this process's value, and is left
    /// out when it has none.
    pub fn program_env(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .filter_map(|(name, value)| {
                let value = value.clone().or_else(|| std::env::var(name).ok())?;
                Some((name.clone(), value))
            })
            .collect()
    }

    /// Whether any directory or variable is asked for.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty() && self.dirs_read_only.is_empty() && self.env.is_empty()
    }
}
