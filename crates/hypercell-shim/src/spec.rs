//! What a container asks for, read from its bundle's OCI runtime spec (`config.json`):
//! the program and its arguments, the environment, the directories it sees and its
//! memory limit.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

/// The annotation the CRI plugin sets on each container of a pod: `sandbox` for the
/// pod's placeholder (the pause container), `container` for the others.
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The annotation naming a container's pod, whose containers one shim serves.
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// Errors reading a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file cannot be read.
    #[error("cannot read the container's OCI spec `{path}`: {source}")]
    Unreadable {
        /// The spec file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a spec.
    #[error("the container's OCI spec `{path}` is not valid: {source}")]
    Invalid {
        /// The spec file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// `process.args` is empty.
    #[error(
        "the container has no program to run: its process.args is empty, and its first entry must name a .wasm file in the image"
    )]
    NoProgram,
    /// An environment entry without `=`.
    #[error("the container's environment entry `{0}` is not NAME=VALUE")]
    Env(String),
    /// A path that leaves the container's root.
    #[error("`{0}` leads outside the container's root filesystem")]
    Escapes(String),
}

/// The parts of an OCI runtime spec a cell uses; everything else is ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawSpec {
    process: Option<RawProcess>,
    root: Option<RawRoot>,
    mounts: Vec<RawMount>,
    linux: Option<RawLinux>,
    annotations: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawProcess {
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    terminal: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawRoot {
    path: String,
    readonly: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawMount {
    destination: String,
    #[serde(rename = "type")]
    kind: String,
    source: String,
    options: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawLinux {
    resources: Option<RawResources>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawResources {
    memory: Option<RawMemory>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawMemory {
    limit: Option<i64>,
}

/// A host directory bound into the container, which the cell gets as a preopen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// The directory on the host.
    pub source: PathBuf,
    /// Where the program sees it.
    pub destination: String,
    /// Whether it is mounted read-only.
    pub read_only: bool,
}

/// What a container runs, from its spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The program, as `process.args[0]` names it: a path in the container's root,
    /// made absolute against `process.cwd`.
    pub program: String,
    /// The program's arguments, `process.args` whole (the program's name first).
    pub args: Vec<String>,
    /// `process.env`, split into names and values.
    pub env: Vec<(String, String)>,
    /// The root filesystem, relative to the bundle when not absolute.
    pub root: PathBuf,
    /// Whether the root filesystem is read-only.
    pub root_read_only: bool,
    /// Bind mounts of host directories: the spec's other mounts (proc, tmpfs, ...)
    /// have no meaning to a WebAssembly program.
    pub binds: Vec<BindMount>,
    /// `linux.resources.memory.limit`, when set and positive.
    pub memory_limit: Option<u64>,
    /// Whether the process asks for a terminal.
    pub terminal: bool,
    /// Whether this is a pod's placeholder container, which runs no program.
    pub sandbox: bool,
    /// The pod the container belongs to, when the CRI plugin says.
    pub sandbox_id: Option<String>,
}

impl ContainerSpec {
    /// Reads `config.json` in `bundle`.
    pub fn read(bundle: &Path) -> Result<Self, SpecError> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(|source| SpecError::Unreadable {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ParseError::Json(source) => SpecError::Invalid { path, source },
            ParseError::Spec(e) => e,
        })
    }

    fn parse(text: &[u8]) -> Result<Self, ParseError> {
        let raw: RawSpec = serde_json::from_slice(text).map_err(ParseError::Json)?;
        let sandbox = raw.annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("sandbox");
        let sandbox_id = raw.annotations.get(SANDBOX_ID).cloned();
        let process = raw.process.unwrap_or_default();
        let program = match process.args.first() {
            Some(first) => absolute_in_root(&process.cwd, first)?,
            None if sandbox => String::new(),
            None => return Err(SpecError::NoProgram.into()),
        };
        let env = process
            .env
            .iter()
            .map(|entry| match entry.split_once('=') {
                Some((name, value)) if !name.is_empty() => Ok((name.into(), value.into())),
                _ => Err(SpecError::Env(entry.clone())),
            })
            .collect::<Result<_, _>>()?;
        let root = raw.root.unwrap_or_default();
        let binds = raw
            .mounts
            .into_iter()
            .filter(|mount| {
                mount.kind == "bind"
                    || mount
                        .options
                        .iter()
                        .any(|option| option == "bind" || option == "rbind")
            })
            .map(|mount| BindMount {
                read_only: mount.options.iter().any(|option| option == "ro"),
                source: mount.source.into(),
                destination: mount.destination,
            })
            .collect();
        let memory_limit = raw
            .linux
            .and_then(|linux| linux.resources)
            .and_then(|resources| resources.memory)
            .and_then(|memory| memory.limit)
            .and_then(|limit| u64::try_from(limit).ok())
            .filter(|&limit| limit > 0);
        Ok(Self {
            program,
            args: process.args,
            env,
            root: if root.path.is_empty() {
                PathBuf::from("rootfs")
            } else {
                PathBuf::from(root.path)
            },
            root_read_only: root.readonly,
            binds,
            memory_limit,
            terminal: process.terminal,
            sandbox,
            sandbox_id,
        })
    }
}

enum ParseError {
    Json(serde_json::Error),
    Spec(SpecError),
}

impl From<SpecError> for ParseError {
    fn from(e: SpecError) -> Self {
        Self::Spec(e)
    }
}

/// `path` made absolute against `cwd` and normalised, refusing `..` that climbs above
/// the root (the program is looked up beneath the container's root, as its own `/`).
fn absolute_in_root(cwd: &str, path: &str) -> Result<String, SpecError> {
    let joined = Path::new(if cwd.is_empty() { "/" } else { cwd }).join(path);
    let mut parts: Vec<&str> = Vec::new();
    for component in joined.components() {
        match component {
            Component::Normal(part) => parts.push(
                part.to_str()
                    .ok_or_else(|| SpecError::Escapes(path.into()))?,
            ),
            Component::ParentDir => {
                parts.pop().ok_or_else(|| SpecError::Escapes(path.into()))?;
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ContainerSpec, SpecError> {
        ContainerSpec::parse(json.as_bytes()).map_err(|e| match e {
            ParseError::Json(e) => panic!("not JSON: {e}"),
            ParseError::Spec(e) => e,
        })
    }

    #[test]
    fn reads_what_ctr_writes() {
        let spec = parse(
            r#"{"ociVersion":"1.0.2-dev","process":{"user":{"uid":0,"gid":0},
            "args":["/app/hello.wasm","one"],"env":["PATH=/usr/bin","WHO=k8s","EMPTY="],
            "cwd":"/","capabilities":{}},"root":{"path":"rootfs"},"hostname":"x",
            "mounts":[{"destination":"/proc","type":"proc","source":"proc","options":["nosuid"]},
            {"destination":"/data","type":"bind","source":"/srv/data","options":["rbind","ro"]},
            {"destination":"/work","source":"/srv/work","options":["rbind","rw"]}],
            "linux":{"resources":{"memory":{"limit":67108864}},"namespaces":[{"type":"pid"}]}}"#,
        )
        .unwrap();
        assert_eq!(spec.program, "/app/hello.wasm");
        assert_eq!(spec.args, ["/app/hello.wasm", "one"]);
        assert_eq!(
            spec.env,
            [
                ("PATH".into(), "/usr/bin".into()),
                ("WHO".into(), "k8s".into()),
                ("EMPTY".into(), String::new())
            ]
        );
        assert_eq!(spec.root, Path::new("rootfs"));
        assert_eq!(
            spec.binds,
            [
                BindMount {
                    source: "/srv/data".into(),
                    destination: "/data".into(),
                    read_only: true
                },
                BindMount {
                    source: "/srv/work".into(),
                    destination: "/work".into(),
                    read_only: false
                }
            ]
        );
        assert_eq!(spec.memory_limit, Some(64 << 20));
        assert!(!spec.sandbox && !spec.terminal);
    }

    #[test]
    fn a_relative_program_is_found_from_the_working_directory() {
        let spec = parse(r#"{"process":{"args":["bin/../app.wasm"],"cwd":"/srv"}}"#).unwrap();
        assert_eq!(spec.program, "/srv/app.wasm");
        let spec = parse(r#"{"process":{"args":["app.wasm"]}}"#).unwrap();
        assert_eq!(spec.program, "/app.wasm");
    }

    #[test]
    fn a_program_outside_the_root_is_refused() {
        let error = parse(r#"{"process":{"args":["../../etc/shadow"],"cwd":"/"}}"#).unwrap_err();
        assert!(matches!(error, SpecError::Escapes(_)), "{error}");
    }

    #[test]
    fn no_program_and_bad_environment_are_refused() {
        let error = parse(r#"{"process":{"args":[]}}"#).unwrap_err();
        assert!(matches!(error, SpecError::NoProgram), "{error}");
        let error = parse(r#"{"process":{"args":["a.wasm"],"env":["=x"]}}"#).unwrap_err();
        assert!(error.to_string().contains("`=x`"), "{error}");
    }

    #[test]
    fn no_or_unlimited_memory_means_no_limit() {
        let spec =
            parse(r#"{"process":{"args":["a"]},"linux":{"resources":{"memory":{"limit":-1}}}}"#)
                .unwrap();
        assert_eq!(spec.memory_limit, None);
    }

    #[test]
    fn a_pod_placeholder_needs_no_program() {
        let spec = parse(
            r#"{"process":{"args":[]},"annotations":{"io.kubernetes.cri.container-type":"sandbox",
            "io.kubernetes.cri.sandbox-id":"pod1"}}"#,
        )
        .unwrap();
        assert!(spec.sandbox);
        assert_eq!(spec.sandbox_id.as_deref(), Some("pod1"));
    }
}
