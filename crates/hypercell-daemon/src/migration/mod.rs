//! Live migration between daemons: the wire protocol, and the listener through which a
//! daemon takes cells others send it. What each side does to its cells is the
//! registry's (`registry/migrate.rs` and `registry/arrive.rs`).

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::registry::Registry;

pub(crate) mod seal;
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

/// Most migrations taken at once: more connections are closed at once, so that peers
/// cannot hold the daemon's threads and descriptors.
const MAX_ARRIVALS: usize = 8;

/// One migration taken, counted until it ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Takes cells sent to `listener`, each migration on a thread of its own (at most
/// [`MAX_ARRIVALS`] at once), until the daemon closes.
pub fn serve_migrations(
    registry: Arc<Registry>,
    listener: TcpListener,
    secret: Vec<u8>,
) -> std::io::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    let secret: Arc<[u8]> = secret.into();
    let arriving = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("hypercell-migrations".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(stream) => stream,
                    Err(error) => {
                        // Out of descriptors, most likely: wait for some to go rather
                        // than spin.
                        tracing::warn!("cannot take a migration: {error}");
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                };
                if *registry.closing().borrow() {
                    break;
                }
                if arriving.fetch_add(1, Ordering::SeqCst) >= MAX_ARRIVALS {
                    arriving.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                let registry = Arc::clone(&registry);
                let secret = Arc::clone(&secret);
                let slot = Slot(Arc::clone(&arriving));
                let spawned = std::thread::Builder::new()
                    .name("hypercell-arrival".into())
                    .spawn(move || {
                        let _slot = slot;
                        registry.arrive(stream, &secret);
                    });
                if let Err(error) = spawned {
                    tracing::warn!("cannot take a migration: {error}");
                }
            }
        })?;
    Ok(addr)
}
