//! Live migration between daemons: the wire protocol, and the listener through which a
//! daemon takes cells others send it. What each side does to its cells is the
//! registry's (`registry/migrate.rs` and `registry/arrive.rs`).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;

use crate::registry::Registry;

pub(crate) mod wire;

/// Shortest migration secret accepted.
const MIN_SECRET: usize = 16;

/// Reads the migration secret from `path`: its first line, of at least 16 characters.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let secret = text.lines().next().unwrap_or("").trim();
    if secret.len() < MIN_SECRET {
        return Err(format!(
            "`{}` holds no secret of at least {MIN_SECRET} characters on its first line",
            path.display()
        ));
    }
    Ok(secret.as_bytes().to_vec())
}

/// Takes cells sent to `listener`, each migration on a thread of its own, until the
/// process ends.
pub fn serve_migrations(
    registry: Arc<Registry>,
    listener: TcpListener,
    secret: Vec<u8>,
) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let secret: Arc<[u8]> = secret.into();
    std::thread::Builder::new()
        .name("hypercell-migrations".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let registry = Arc::clone(&registry);
                let secret = Arc::clone(&secret);
                let spawned = std::thread::Builder::new()
                    .name("hypercell-arrival".into())
                    .spawn(move || registry.arrive(stream, &secret));
                if let Err(error) = spawned {
                    tracing::warn!("cannot take a migration: {error}");
                }
            }
        })?;
    Ok(addr)
}
