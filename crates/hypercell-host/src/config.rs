//! What a cell is asked to be: memory limit, time limit, arguments and environment. Kept
//! apart from the running cell, which [`crate::Cell`] owns.

use std::time::Duration;

pub use hypercell_abi::Components;

/// Errors parsing cell settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A memory size that is not a number with an optional K, M or G suffix.
    #[error(
        "invalid memory size `{0}`: write a number with an optional K, M or G suffix, such as 64M or 1G"
    )]
    MemorySize(String),
    /// A duration that is not a number with a unit.
    #[error(
        "invalid duration `{0}`: write a number with a unit of ms, s, m or h, such as 500ms or 10s"
    )]
    Duration(String),
    /// An environment entry without a name.
    #[error("invalid environment variable `{0}`: write it as NAME=VALUE or NAME")]
    EnvVar(String),
    /// A directory to grant with more than one `::`.
    #[error("invalid directory `{0}`: write it as HOST or HOST::GUEST, with one `::` at most")]
    DirSpec(String),
    /// A component that does not exist.
    #[error(
        "`{0}` is not a component: choose from stdio, args, env, clocks, random, fs and channels"
    )]
    Component(String),
}

/// Default limit of a program's linear memory: 4 GiB, all a 32-bit memory can
/// address, as under `wasmtime run`.
pub const DEFAULT_MEMORY_LIMIT: u64 = 4 << 30;

/// Settings of one cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CellConfig {
    /// Most bytes the program's linear memory may grow to, as `wasmtime run -W
    /// max-memory-size` (the runtime's own memory is apart from it). For raw machine
    /// code, which has no runtime, the size of the whole cell.
    pub memory_limit: u64,
    /// Wall-clock limit for the program; `None` for no limit.
    pub timeout: Option<Duration>,
    /// Most bytes the program may write to stdout and stderr together; `None` for no
    /// limit. Output up to the limit is delivered; then the cell is stopped.
    pub output_limit: Option<u64>,
    /// Program arguments, the program's name first.
    pub args: Vec<String>,
    /// Environment variables as `(name, value)`.
    pub env: Vec<(String, String)>,
    /// Host directories the program may use, as descriptors 3, 4, ...
    pub preopens: Vec<crate::fs::Preopen>,
    /// The host components the program is given; a call into another answers
    /// `notcapable`.
    pub components: Components,
}

impl CellConfig {
    /// Bytes its arguments, environment and preopen names take in the cell's identity
    /// region, each laid out as a string with a NUL after it (a variable as
    /// `NAME=VALUE`): what a template's `identity_capacity` must hold.
    pub fn identity_len(&self) -> u64 {
        let args: usize = self.args.iter().map(|arg| arg.len() + 1).sum();
        let env: usize = self
            .env
            .iter()
            .map(|(name, value)| name.len() + value.len() + 2)
            .sum();
        let preopens: usize = self
            .preopens
            .iter()
            .map(|preopen| preopen.guest.len() + 1)
            .sum();
        (args + env + preopens) as u64
    }
}

impl Default for CellConfig {
    fn default() -> Self {
        Self {
            memory_limit: DEFAULT_MEMORY_LIMIT,
            timeout: None,
            output_limit: None,
            args: Vec::new(),
            env: Vec::new(),
            preopens: Vec::new(),
            components: Components::ALL,
        }
    }
}

/// Components as `--components` lists them: names separated by commas, and `strict`
/// among them to refuse a module that imports a function of a component not given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ComponentChoice {
    /// The components given.
    pub components: Components,
    /// Whether a module importing from another is refused.
    pub strict: bool,
}

/// Parses a list such as `stdio,clocks,strict` (`all` gives every component; an empty
/// list none).
pub fn parse_components(text: &str) -> Result<ComponentChoice, ConfigError> {
    let mut choice = ComponentChoice {
        components: Components::NONE,
        strict: false,
    };
    for name in text
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        match name {
            "strict" => choice.strict = true,
            "all" => choice.components = Components::ALL,
            name => {
                let component =
                    Components::named(name).ok_or_else(|| ConfigError::Component(name.into()))?;
                choice.components = choice.components.union(component);
            }
        }
    }
    Ok(choice)
}

/// The names of `components`, comma-separated (`none` for none).
pub fn component_names(components: Components) -> String {
    let names: Vec<&str> = Components::NAMES
        .iter()
        .filter(|&&(_, component)| components.contains(component))
        .map(|&(name, _)| name)
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

/// Parses a size such as `1048576`, `512K`, `64M`, `64MiB` or `1G` into bytes.
pub fn parse_memory_size(text: &str) -> Result<u64, ConfigError> {
    let error = || ConfigError::MemorySize(text.to_string());
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number.parse().map_err(|_| error())?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(error()),
    };
    number.checked_mul(1 << shift).ok_or_else(error)
}

/// Parses a duration such as `500ms`, `10s`, `1.5s`, `2m` or `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, ConfigError> {
    let error = || ConfigError::Duration(text.to_string());
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(error)?;
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().map_err(|_| error())?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(error()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| error())
}

/// Parses `NAME=VALUE`, or a bare `NAME`, whose value is to come from the host's
/// environment (`None`), as `wasmtime run --env NAME` takes it.
pub fn parse_env_var(text: &str) -> Result<(String, Option<String>), ConfigError> {
    let (name, value) = match text.split_once('=') {
        Some((name, value)) => (name, Some(value.to_string())),
        None => (text, None),
    };
    if name.is_empty() {
        return Err(ConfigError::EnvVar(text.to_string()));
    }
    Ok((name.to_string(), value))
}

/// Formats a byte count for messages: `64 MiB`, `1 GiB`, `1536 KiB`.
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    if bytes >= 1 << 20 {
        return format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20));
    }
    if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        return format!("{} KiB", bytes >> 10);
    }
    format!("{bytes} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory_size("64M"), Ok(64 << 20));
        assert_eq!(parse_memory_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_memory_size("4096"), Ok(4096));
        assert_eq!(parse_memory_size("2k"), Ok(2048));
        assert!(parse_memory_size("lots").is_err());
        assert!(parse_memory_size("64T").is_err());
        assert!(parse_memory_size("99999999999999G").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1x").is_err());
    }

    #[test]
    fn env_vars_and_sizes() {
        assert_eq!(parse_env_var("A=b=c"), Ok(("A".into(), Some("b=c".into()))));
        assert_eq!(parse_env_var("A="), Ok(("A".into(), Some(String::new()))));
        assert_eq!(parse_env_var("HOSTS"), Ok(("HOSTS".into(), None)));
        assert!(parse_env_var("=x").is_err());
        assert!(parse_env_var("").is_err());
        assert_eq!(format_size(64 << 20), "64 MiB");
        assert_eq!(format_size(3 << 29), "1536 MiB");
        assert_eq!(format_size(30001 << 16), "1875.1 MiB");
        assert_eq!(format_size(3 << 10), "3 KiB");
        assert_eq!(format_size(100), "100 bytes");
    }

    #[test]
    fn component_lists() {
        let choice = parse_components("stdio, clocks,strict").unwrap();
        assert_eq!(
            choice.components,
            Components::STDIO.union(Components::CLOCKS)
        );
        assert!(choice.strict);
        assert_eq!(parse_components("all").unwrap().components, Components::ALL);
        assert_eq!(parse_components("").unwrap().components, Components::NONE);
        assert_eq!(
            parse_components("stdio,net"),
            Err(ConfigError::Component("net".into()))
        );
        assert_eq!(
            component_names(Components::ALL),
            "stdio,args,env,clocks,random,fs,channels"
        );
        assert_eq!(component_names(Components::NONE), "none");
    }
}
