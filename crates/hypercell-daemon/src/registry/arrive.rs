//! Taking a cell another daemon moves here, the destination's side (the protocol is in
//! [`crate::migration::wire`]). The offer is checked (same Hypercell, CPU features and
//! compiler; a free name; its directories here and grantable) and its module compiled
//! before the source pauses the cell; its snapshot then becomes the cell, under the same
//! id and name. A cell whose source does not commit is discarded again.

use std::fs::File;
use std::io::BufWriter;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::precopied::Precopied;
use super::{
    DaemonError, LoadedSnapshot, Registry, Restore, check_components_of, check_spec, valid_name,
};
use crate::migration::wire::{Message, Offer, WORK_PATIENCE, Wire, WireError};
use crate::record::{CellRecord, CellSpec, CellState, DirSpec, now_ms};

/// Largest module a source may send.
const MAX_MODULE: u64 = 1 << 30;
/// The snapshot an arrived cell was restored from, in its directory, kept while the
/// cell runs (its memory maps it).
pub(super) const ARRIVED: &str = "arrived.snap";

/// The memory that came ahead of an arrived cell's state, a pre-copy's, in its
/// directory while the cell runs (its memory maps it).
pub(super) const ARRIVED_MEMORY: &str = "arrived.mem";

/// Why an arriving cell was refused or dropped, in one sentence for the source.
pub(super) enum Refusal {
    /// Said to the source.
    Told(String),
    /// The connection failed: nothing more can be said.
    Broken(WireError),
}

impl From<WireError> for Refusal {
    fn from(error: WireError) -> Self {
        Self::Broken(error)
    }
}

/// What an arrival made here so far, for a failure to undo.
#[derive(Default)]
struct Arrival {
    /// The cell's id, once its offer was accepted (its directory exists).
    id: Option<String>,
    /// Once it was recorded: the record it had here before, if it left here earlier.
    recorded: Option<Option<CellRecord>>,
    /// The id whose cell's id and name this arrival holds, however it ends.
    reserved: Option<String>,
}

impl Registry {
    /// Takes the cell a source sends over `stream`, once it proves it holds `secret`.
    /// Blocks for the whole migration; failures are logged, and told to the source.
    pub(crate) fn arrive(self: &Arc<Self>, stream: TcpStream, secret: &[u8]) {
        let peer_addr = stream.peer_addr().ok();
        let peer = peer_addr.map_or_else(|| "an unknown peer".to_string(), |addr| addr.to_string());
        let mut wire = match Wire::new(stream) {
            Ok(wire) => wire,
            Err(error) => {
                tracing::warn!("a migration from {peer} failed: {error}");
                return;
            }
        };
        if let Err(error) = wire.authenticate_as_destination(secret) {
            tracing::warn!("refused a migration from {peer}: {error}");
            return;
        }
        let mut arrival = Arrival::default();
        let outcome = self.take_cell(&mut wire, peer_addr, &mut arrival);
        let reserved = arrival.reserved.take();
        if let Err(refusal) = outcome {
            let reason = match refusal {
                Refusal::Told(reason) => {
                    let _ = wire.send(&Message::Refused {
                        reason: reason.clone(),
                    });
                    reason
                }
                Refusal::Broken(error) => error.to_string(),
            };
            tracing::warn!("a cell from {peer} did not move here: {reason}");
            // The memory that came ahead of it is nobody's.
            if let Some(id) = &arrival.id {
                let _ = std::fs::remove_file(self.cell_dir(id).join(ARRIVED_MEMORY));
            }
            match arrival {
                Arrival {
                    id: Some(id),
                    recorded: Some(earlier),
                    ..
                } => self.drop_arrival(&id, earlier),
                // A cell unknown here leaves nothing behind.
                Arrival {
                    id: Some(id),
                    recorded: None,
                    ..
                } if !self.lock().cells.contains_key(&id) => {
                    let _ = std::fs::remove_dir_all(self.cell_dir(&id));
                }
                _ => {}
            }
        }
        if let Some(id) = reserved {
            self.lock().arriving.remove(&id);
        }
    }

    /// The migration's steps here, noting in `arrival` what a failure must undo.
    fn take_cell(
        self: &Arc<Self>,
        wire: &mut Wire,
        peer: Option<SocketAddr>,
        arrival: &mut Arrival,
    ) -> Result<(), Refusal> {
        let Message::Offer(offer) = wire.receive()? else {
            return Err(Refusal::Told(
                "the migration did not begin with an offer".into(),
            ));
        };
        if offer.module_len > MAX_MODULE {
            return Err(Refusal::Told(format!(
                "its module of {} bytes is larger than the {MAX_MODULE} allowed",
                offer.module_len
            )));
        }
        let checked = self.check_offer(&offer);
        if checked.is_ok() {
            arrival.reserved = Some(offer.id.clone());
        }
        let dir = match checked {
            Ok(dir) => {
                arrival.id = Some(offer.id.clone());
                dir
            }
            Err(refusal) => {
                // Read what the source sent on, so that it reads the refusal rather
                // than a connection reset.
                wire.receive_bytes(&mut std::io::sink(), offer.module_len)?;
                return Err(refusal);
            }
        };
        let module = dir.join(format!("module.{}", offer.module_extension));
        let mut writer = File::create(&module)
            .map(BufWriter::new)
            .map_err(|e| Refusal::Told(format!("cannot keep its module: {e}")))?;
        wire.receive_bytes(&mut writer, offer.module_len)?;
        writer
            .into_inner()
            .map_err(|e| Refusal::Told(format!("cannot keep its module: {e}")))?;
        // The spec as it reads here, where its module is the copy just received.
        let mut spec = offer.spec.clone();
        spec.module = module.display().to_string();
        spec.name = Some(offer.name.clone());
        let told = |e: DaemonError| Refusal::Told(e.to_string());
        check_spec(&spec).map_err(told)?;
        check_components_of(self, &spec).map_err(told)?;
        // Compiled while the cell still runs at the source.
        self.modules
            .get_or_load(&module, || self.compiler.compile_file(&module))
            .map_err(|e| Refusal::Told(format!("its module does not compile here: {e}")))?;
        wire.send(&Message::Accepted)?;

        // Its memory arrives while it runs at the source, then its state.
        let mut precopied = Precopied::new(&dir.join(ARRIVED_MEMORY))?;
        loop {
            match wire.receive_within(WORK_PATIENCE)? {
                Message::Pages { runs } => precopied.receive(wire, &runs)?,
                Message::PagesDone => {
                    precopied.finish().map_err(Refusal::Told)?;
                    wire.send(&Message::PagesWritten)?;
                }
                Message::State => break,
                other => {
                    return Err(Refusal::Told(format!(
                        "the cell's state did not follow: it sent {other:?}"
                    )));
                }
            }
        }
        let snapshot = dir.join(ARRIVED);
        let mut file = wire
            .receive_snapshot(&snapshot, &module)
            .map_err(|e| Refusal::Told(e.to_string()))?;
        // Its last pages go over those that came while it ran.
        let loaded = match precopied.is_empty() {
            true => None,
            false => {
                file.snapshot.memory = precopied
                    .complete(&file.snapshot.memory)
                    .map_err(Refusal::Told)?;
                Some(Arc::new(LoadedSnapshot {
                    shared: Arc::new(file.snapshot.clone()),
                    file: file.clone(),
                }))
            }
        };
        // The cell gets the directories its snapshot names: they must be what this
        // daemon may grant, whatever the offer said.
        let granted: Vec<DirSpec> = file
            .preopens
            .iter()
            .map(|(host, guest, read_only)| DirSpec {
                host: host.display().to_string(),
                guest: Some(guest.clone()),
                read_only: *read_only,
            })
            .collect();
        self.check_dirs(&granted).map_err(told)?;

        // Where it came from: the source's migration listener, where it has one.
        let from = match (peer, offer.source_port) {
            (Some(peer), Some(port)) => SocketAddr::new(peer.ip(), port).to_string(),
            (Some(peer), None) => peer.ip().to_string(),
            (None, _) => "an unknown peer".to_string(),
        };
        let earlier = self.record_arrival(&offer, spec, &from)?;
        let id = offer.id.clone();
        arrival.recorded = Some(earlier);
        let record = self.lock().cells[&id].clone();
        // Restored paused: it runs here only once the source has let it go.
        let restore = Restore {
            path: &snapshot,
            paused: true,
            record_later: true,
            loaded,
        };
        self.launch(
            &record,
            Some(restore),
            &[("arrive", CellState::Created)],
            "start",
        )
        .map_err(|reason| Refusal::Told(format!("it could not run here: {reason}")))?;
        if !offer.stdin_open
            && let Some(live) = self.lock().live.get_mut(&id)
        {
            // Its stdin was closed at the source: the program reads its end here too.
            live.stdin = None;
        }
        wire.send(&Message::Running)?;
        match wire.receive()? {
            // A daemon shutting down would take the cell with it.
            Message::Commit if *self.closing().borrow() => {
                return Err(Refusal::Told("this daemon is shutting down".into()));
            }
            Message::Commit => {}
            other => {
                return Err(Refusal::Told(format!(
                    "the source did not commit: it sent {other:?}"
                )));
            }
        }
        // From here the cell is this daemon's, whatever becomes of the connection.
        arrival.id = None;
        arrival.recorded = None;
        self.forget_checkpoints(&id);
        // It runs here from now: the source hears so before the record says it, so
        // that the record's sync is not part of the cell's pause.
        let control = self.lock().live.get(&id).map(|live| live.control.clone());
        let go_on = !offer.paused && control.is_some();
        if let Some(control) = control.filter(|_| go_on) {
            control.resume();
        }
        let _ = wire.send(&Message::Committed);
        // Its record, kept from the disk during the pause, goes there now.
        let recorded = match go_on {
            true => self
                .change(&id, "resume", |record| {
                    record.state = CellState::Running;
                })
                .map(drop),
            false => self.store.sync().map_err(DaemonError::from),
        };
        if let Err(error) = recorded {
            tracing::warn!("cell {id} moved here, but its record may not say so: {error}");
        }
        Ok(())
    }

    /// Checks that this daemon can take the cell `offer` describes; its directory here.
    fn check_offer(&self, offer: &Offer) -> Result<PathBuf, Refusal> {
        let refuse = |reason: String| Err(Refusal::Told(reason));
        if *self.closing().borrow() {
            return refuse("this daemon is shutting down".into());
        }
        let version = env!("CARGO_PKG_VERSION");
        if offer.hypercell_version != version {
            return refuse(format!(
                "it runs on Hypercell {}, this daemon is {version}",
                offer.hypercell_version
            ));
        }
        if offer.cpu_features != self.compiler.cpu_features()
            || offer.engine != self.compiler.fingerprint()
        {
            return refuse(
                "its code was compiled for other CPU features or another compiler than this host's"
                    .into(),
            );
        }
        let id_ok = offer.id.len() == 12
            && offer
                .id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !id_ok || !valid_name(&offer.name) {
            return refuse(format!(
                "`{}` ({}) is not a cell id and name",
                offer.id, offer.name
            ));
        }
        if !matches!(offer.module_extension.as_str(), "wasm" | "wat") {
            return refuse(format!(
                "its module is a `.{}` file, not `.wasm` or `.wat`",
                offer.module_extension
            ));
        }
        let told = |e: DaemonError| Refusal::Told(e.to_string());
        for dir in &offer.spec.dirs {
            if !Path::new(&dir.host).is_dir() {
                return refuse(format!("its directory `{}` does not exist here", dir.host));
            }
        }
        self.check_dirs(&offer.spec.dirs).map_err(told)?;
        {
            let mut inner = self.lock();
            self.check_room(&inner).map_err(told)?;
            if let Some(record) = inner.cells.get(&offer.id)
                && record.state != CellState::Migrated
            {
                return refuse(format!(
                    "a cell with its id `{}` is here already, {}",
                    offer.id,
                    record.state.as_str()
                ));
            }
            if inner
                .names
                .get(&offer.name)
                .is_some_and(|holder| *holder != offer.id)
                || inner.arriving.values().any(|name| *name == offer.name)
            {
                return refuse(format!("a cell named `{}` is here already", offer.name));
            }
            if inner.arriving.contains_key(&offer.id) {
                return refuse(format!("cell `{}` is arriving here already", offer.id));
            }
            // Its id and name are held for it until it is recorded or refused.
            inner.arriving.insert(offer.id.clone(), offer.name.clone());
        }
        let dir = self.cell_dir(&offer.id);
        if let Err(error) = std::fs::create_dir_all(&dir) {
            self.lock().arriving.remove(&offer.id);
            return refuse(format!("cannot make its directory: {error}"));
        }
        Ok(dir)
    }

    /// Records the arriving cell, under its own id and name, as created: a cell that
    /// left here before is back. Returns the record it had here before, if any.
    fn record_arrival(
        &self,
        offer: &Offer,
        spec: CellSpec,
        from: &str,
    ) -> Result<Option<CellRecord>, Refusal> {
        let mut inner = self.lock();
        if inner.live.contains_key(&offer.id) {
            return Err(Refusal::Told(format!(
                "a cell with its id `{}` runs here",
                offer.id
            )));
        }
        let created_ms = inner
            .cells
            .get(&offer.id)
            .map_or_else(now_ms, |earlier| earlier.created_ms);
        let record = CellRecord {
            migrated_from: Some(from.to_string()),
            ..CellRecord::created(offer.id.clone(), offer.name.clone(), spec, created_ms)
        };
        inner.names.insert(offer.name.clone(), offer.id.clone());
        Ok(inner.cells.insert(offer.id.clone(), record))
    }

    /// Discards a cell whose migration here did not complete, back to the record it had
    /// here before, if it left here earlier.
    fn drop_arrival(self: &Arc<Self>, id: &str, earlier: Option<CellRecord>) {
        if let Ok((_, Some(mut end))) = self.ask_to_end(id, true) {
            let _ = self
                .runtime
                .block_on(end.wait_for(|state| !state.is_live()));
        }
        let discarded = match earlier {
            Some(earlier) => self
                .change(id, "abandon", |record| *record = earlier)
                .map(drop),
            None => self.remove(id).map(drop),
        };
        if let Err(error) = discarded {
            tracing::warn!("cannot discard cell {id}, whose migration here failed: {error}");
        }
    }
}
