//! Channels between the daemon's cells (`hypercell connect A:stdout B:stdin`): one
//! cell's stdout joined to another's stdin through memory both map, as `hypercell pipe`
//! joins its stages. Cells are joined before either starts; each then starts when it
//! is started, and a writer whose reader has not started yet fills the ring and
//! waits. The ends live in the daemon until their cells start; a cell removed before
//! it starts closes its end, so its peer reads the end of input or gets `EPIPE`. A
//! daemon that opens makes channels again for joined cells that never started.

use std::path::Path;
use std::sync::PoisonError;

use hypercell_host::persist::SnapshotFile;
use hypercell_host::{OwnedChannels, channel};

use super::{DaemonError, Inner, Registry, internal, resolve};
use crate::record::{CellRecord, CellState, ChannelView, Event, RestartPolicy, now_ms};

impl Registry {
    /// Joins the stdout of the cell `from` names to the stdin of the cell `to` names;
    /// both must be created and never started. Both records change, with a `connect`
    /// event each, in one transaction. Returns both records.
    pub fn connect(&self, from: &str, to: &str) -> Result<[CellRecord; 2], DaemonError> {
        // Saves keep the order of changes (see `change_after`).
        let saving = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        let mut inner = self.lock();
        let from_id = resolve(&inner, from)?;
        let to_id = resolve(&inner, to)?;
        if from_id == to_id {
            return Err(DaemonError::BadRequest {
                field: "to",
                message: format!(
                    "cell `{}` cannot be joined to itself",
                    inner.cells[&from_id].name
                ),
            });
        }
        joinable(&inner, &from_id)?;
        joinable(&inner, &to_id)?;
        let (writer, reader) = (&inner.cells[&from_id], &inner.cells[&to_id]);
        if let Some(joined) = &writer.stdout_to {
            return Err(DaemonError::Conflict(format!(
                "cell `{}`'s stdout is already joined to cell `{}`",
                writer.name,
                name_of(&inner, joined)
            )));
        }
        if let Some(joined) = &reader.stdin_from {
            return Err(DaemonError::Conflict(format!(
                "cell `{}`'s stdin is already joined to cell `{}`'s stdout",
                reader.name,
                name_of(&inner, joined)
            )));
        }
        if reader.spec.stdin {
            return Err(DaemonError::Conflict(format!(
                "cell `{}` takes its stdin from the API (it was created interactive); create it again without",
                reader.name
            )));
        }
        let mut writer = writer.clone();
        let mut reader = reader.clone();
        writer.stdout_to = Some(to_id.clone());
        reader.stdin_from = Some(from_id.clone());
        let events: Vec<Event> = [&writer, &reader]
            .iter()
            .zip(inner.next_event..)
            .map(|(record, seq)| Event {
                seq,
                time_ms: now_ms(),
                cell: record.id.clone(),
                name: record.name.clone(),
                action: "connect".into(),
                state: record.state,
            })
            .collect();
        let (write_end, read_end) =
            channel().map_err(|e| internal(format!("cannot make a channel: {e}")))?;
        // Saved before anything changes here: a failed save leaves the cells unjoined.
        self.store
            .save_all(&[writer.clone(), reader.clone()], &events)?;
        inner.next_event += events.len() as u64;
        inner
            .channel_ends
            .entry(from_id.clone())
            .or_default()
            .stdout = Some(write_end);
        inner.channel_ends.entry(to_id.clone()).or_default().stdin = Some(read_end);
        inner.cells.insert(from_id, writer.clone());
        inner.cells.insert(to_id, reader.clone());
        drop(inner);
        for event in events {
            let _ = self.events.send(event);
        }
        drop(saving);
        Ok([writer, reader])
    }

    /// Makes channels again for the joined cells that neither started nor ran, as a
    /// daemon opens: their ends lived in the daemon that joined them.
    pub(super) fn rejoin_unstarted(&self) -> Result<(), DaemonError> {
        let mut inner = self.lock();
        let pairs: Vec<(String, String)> = inner
            .cells
            .values()
            .filter_map(|writer| {
                let reader = inner.cells.get(writer.stdout_to.as_ref()?)?;
                let fresh = |record: &CellRecord| {
                    record.state == CellState::Created && record.started_ms.is_none()
                };
                (fresh(writer) && fresh(reader) && reader.stdin_from.as_ref() == Some(&writer.id))
                    .then(|| (writer.id.clone(), reader.id.clone()))
            })
            .collect();
        for (from, to) in pairs {
            let (write_end, read_end) =
                channel().map_err(|e| internal(format!("cannot make a channel: {e}")))?;
            inner.channel_ends.entry(from).or_default().stdout = Some(write_end);
            inner.channel_ends.entry(to).or_default().stdin = Some(read_end);
        }
        Ok(())
    }

    /// Every channel the records hold, by the cell that writes it.
    pub fn channels(&self) -> Vec<ChannelView> {
        let inner = self.lock();
        let mut channels: Vec<(u64, ChannelView)> = inner
            .cells
            .values()
            .filter_map(|record| {
                let to = record.stdout_to.clone()?;
                let view = ChannelView {
                    from: record.id.clone(),
                    from_name: record.name.clone(),
                    to_name: inner.cells.get(&to).map(|reader| reader.name.clone()),
                    to,
                };
                Some((record.created_ms, view))
            })
            .collect();
        channels.sort_by(|a, b| (a.0, &a.1.from).cmp(&(b.0, &b.1.from)));
        channels.into_iter().map(|(_, view)| view).collect()
    }

    /// The channel ends the cell of `record` is to start with; why it cannot start, in
    /// one sentence, when its record says it is joined and its ends are gone (it ran
    /// already, or the daemon that joined it went away).
    pub(super) fn take_channel_ends(&self, record: &CellRecord) -> Result<OwnedChannels, String> {
        let ends = self
            .lock()
            .channel_ends
            .remove(&record.id)
            .unwrap_or_default();
        let missing = (record.stdin_from.is_some() && ends.stdin.is_none())
            || (record.stdout_to.is_some() && ends.stdout.is_none());
        if missing {
            return Err(
                "the channel that joined it to another cell closed when one of them ran or the daemon that joined them went away; a joined cell runs once, so create and connect them again".into(),
            );
        }
        Ok(ends)
    }

    /// Puts back the ends of a cell that did not start after all.
    pub(super) fn return_channel_ends(&self, id: &str, ends: OwnedChannels) {
        if ends.stdin.is_some() || ends.stdout.is_some() {
            self.lock().channel_ends.insert(id.to_string(), ends);
        }
    }
}

/// Refuses a cell that cannot be joined: one that has started or is starting, that
/// starts from a snapshot, or that is to be checkpointed.
fn joinable(inner: &Inner, id: &str) -> Result<(), DaemonError> {
    let record = &inner.cells[id];
    if record.state != CellState::Created
        || record.started_ms.is_some()
        || inner.starting.contains(id)
        || inner.live.contains_key(id)
    {
        return Err(DaemonError::Conflict(format!(
            "cell `{}` has started already; channels join cells before they start",
            record.name
        )));
    }
    if SnapshotFile::is_snapshot(Path::new(&record.spec.module)) {
        return Err(DaemonError::Conflict(format!(
            "cell `{}` starts from a template or checkpoint; channels join cells that boot from a module",
            record.name
        )));
    }
    if record.spec.restart == RestartPolicy::Checkpoint {
        return Err(DaemonError::Conflict(format!(
            "cell `{}` is to be checkpointed (`restart: checkpoint`), and a joined cell cannot be checkpointed apart from its neighbours",
            record.name
        )));
    }
    let stdio_given = record
        .spec
        .components
        .as_ref()
        .is_none_or(|names| names.iter().any(|name| name == "stdio"));
    if !stdio_given {
        return Err(DaemonError::Conflict(format!(
            "cell `{}` is not given the `stdio` component, which carries a channel",
            record.name
        )));
    }
    Ok(())
}

fn name_of(inner: &Inner, id: &str) -> String {
    inner
        .cells
        .get(id)
        .map_or_else(|| id.to_string(), |record| record.name.clone())
}
