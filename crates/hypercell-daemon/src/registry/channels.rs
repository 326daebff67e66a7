//! Channels between the daemon's cells: one cell's stdout joined to another's stdin
//! through memory both map, as `hypercell pipe` joins its stages (`hypercell connect
//! A:stdout B:stdin`), or a named channel that one cell writes and the other reads,
//! each opening it as `/channels/NAME` (`hypercell connect A:NAME B:NAME`). Cells are
//! joined before either starts; each then starts when it
//! is started, and a writer whose reader has not started yet fills the ring and
//! waits. The ends live in the daemon until their cells start; a cell removed before
//! it starts closes its end, so its peer reads the end of input or gets `EPIPE`. A
//! daemon that opens makes channels again for joined cells that never started.

use std::path::Path;
use std::sync::PoisonError;

use hypercell_host::abi::channel::{CHANNELS_DIRECTORY, MAX_NAMED_CHANNELS, is_channel_name};
use hypercell_host::persist::SnapshotFile;
use hypercell_host::{NamedChannelEnd, OwnedChannels, channel};

use super::{DaemonError, Inner, Registry, internal, resolve};
use crate::record::{
    CellRecord, CellState, ChannelView, Event, NamedChannelLink, RestartPolicy, now_ms,
};

impl Registry {
    /// Joins the stdout of the cell `from` names to the stdin of the cell `to` names,
    /// or, with `name`, grants them the named channel `name`, which `from` writes and
    /// `to` reads. Both must be created and never started. Both records change, with a
    /// `connect` event each, in one transaction. Returns both records.
    pub fn connect(
        &self,
        from: &str,
        to: &str,
        name: Option<&str>,
    ) -> Result<[CellRecord; 2], DaemonError> {
        if let Some(name) = name.filter(|name| !is_channel_name(name.as_bytes())) {
            return Err(DaemonError::BadRequest {
                field: "name",
                message: format!(
                    "`{name}` cannot name a channel: use 1 to 48 letters, digits, `.`, `_` or `-`, not starting with `.`, and not `stdin`, `stdout` or `stderr`"
                ),
            });
        }
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
        joinable(&inner, &from_id, name.is_some())?;
        joinable(&inner, &to_id, name.is_some())?;
        let (writer, reader) = (&inner.cells[&from_id], &inner.cells[&to_id]);
        let mut writer = writer.clone();
        let mut reader = reader.clone();
        match name {
            Some(name) => grant_named(&inner, &mut writer, &mut reader, name)?,
            None => join_stdio(&inner, &mut writer, &mut reader)?,
        }
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
                migration: None,
            })
            .collect();
        let (write_end, read_end) =
            channel().map_err(|e| internal(format!("cannot make a channel: {e}")))?;
        // Saved before anything changes here: a failed save leaves the cells unjoined.
        self.store
            .save_all(&[writer.clone(), reader.clone()], &events)?;
        inner.next_event += events.len() as u64;
        put_ends(&mut inner, &from_id, &to_id, name, write_end, read_end);
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
        let fresh =
            |record: &CellRecord| record.state == CellState::Created && record.started_ms.is_none();
        // (writer, reader, the named channel's name or none for stdio)
        let mut joins: Vec<(String, String, Option<String>)> = Vec::new();
        for writer in inner.cells.values().filter(|record| fresh(record)) {
            if let Some(reader) = writer.stdout_to.as_ref().and_then(|id| inner.cells.get(id))
                && fresh(reader)
                && reader.stdin_from.as_ref() == Some(&writer.id)
            {
                joins.push((writer.id.clone(), reader.id.clone(), None));
            }
            for link in writer.named_channels.iter().filter(|link| link.writes) {
                let Some(reader) = inner.cells.get(&link.peer) else {
                    continue;
                };
                let granted = reader.named_channels.iter().any(|other| {
                    other.name == link.name && other.peer == writer.id && !other.writes
                });
                if fresh(reader) && granted {
                    joins.push((
                        writer.id.clone(),
                        reader.id.clone(),
                        Some(link.name.clone()),
                    ));
                }
            }
        }
        for (from, to, name) in joins {
            let (write_end, read_end) =
                channel().map_err(|e| internal(format!("cannot make a channel: {e}")))?;
            put_ends(&mut inner, &from, &to, name.as_deref(), write_end, read_end);
        }
        Ok(())
    }

    /// Every channel the records hold, by the cell that writes it.
    pub fn channels(&self) -> Vec<ChannelView> {
        let inner = self.lock();
        let view = |record: &CellRecord, to: &String, name: Option<&String>| {
            let view = ChannelView {
                from: record.id.clone(),
                from_name: record.name.clone(),
                to_name: inner.cells.get(to).map(|reader| reader.name.clone()),
                to: to.clone(),
                name: name.cloned(),
            };
            (record.created_ms, view)
        };
        let mut channels: Vec<(u64, ChannelView)> = inner
            .cells
            .values()
            .flat_map(|record| {
                let stdio = record.stdout_to.iter().map(|to| view(record, to, None));
                let named = record
                    .named_channels
                    .iter()
                    .filter(|link| link.writes)
                    .map(|link| view(record, &link.peer, Some(&link.name)));
                stdio.chain(named).collect::<Vec<_>>()
            })
            .collect();
        channels.sort_by(|a, b| (a.0, &a.1.from, &a.1.name).cmp(&(b.0, &b.1.from, &b.1.name)));
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
            || (record.stdout_to.is_some() && ends.stdout.is_none())
            || record
                .named_channels
                .iter()
                .any(|link| !ends.named.iter().any(|named| named.name == link.name));
        if missing {
            return Err(
                "the channel that joined it to another cell closed when one of them ran or the daemon that joined them went away; a joined cell runs once, so create and connect them again".into(),
            );
        }
        Ok(ends)
    }

    /// Puts back the ends of a cell that did not start after all.
    pub(super) fn return_channel_ends(&self, id: &str, ends: OwnedChannels) {
        if !ends.is_empty() {
            self.lock().channel_ends.insert(id.to_string(), ends);
        }
    }
}

/// Hands the ends of a channel from `from` to `to` to their cells: as `from`'s stdout
/// and `to`'s stdin, or as the named channel `name` of each.
fn put_ends(
    inner: &mut Inner,
    from: &str,
    to: &str,
    name: Option<&str>,
    write_end: hypercell_host::ChannelEnd,
    read_end: hypercell_host::ChannelEnd,
) {
    for (id, end) in [(from, write_end), (to, read_end)] {
        let ends = inner.channel_ends.entry(id.to_string()).or_default();
        match name {
            Some(name) => ends.named.push(NamedChannelEnd {
                name: name.to_string(),
                end,
            }),
            None if end.is_reader() => ends.stdin = Some(end),
            None => ends.stdout = Some(end),
        }
    }
}

/// Records `writer`'s stdout joined to `reader`'s stdin, or says why it cannot be.
fn join_stdio(
    inner: &Inner,
    writer: &mut CellRecord,
    reader: &mut CellRecord,
) -> Result<(), DaemonError> {
    if let Some(joined) = &writer.stdout_to {
        return Err(DaemonError::Conflict(format!(
            "cell `{}`'s stdout is already joined to cell `{}`",
            writer.name,
            name_of(inner, joined)
        )));
    }
    if let Some(joined) = &reader.stdin_from {
        return Err(DaemonError::Conflict(format!(
            "cell `{}`'s stdin is already joined to cell `{}`'s stdout",
            reader.name,
            name_of(inner, joined)
        )));
    }
    if reader.spec.stdin {
        return Err(DaemonError::Conflict(format!(
            "cell `{}` takes its stdin from the API (it was created interactive); create it again without",
            reader.name
        )));
    }
    writer.stdout_to = Some(reader.id.clone());
    reader.stdin_from = Some(writer.id.clone());
    Ok(())
}

/// Records the named channel `name` granted to `writer` and `reader`, or says why it
/// cannot be.
fn grant_named(
    inner: &Inner,
    writer: &mut CellRecord,
    reader: &mut CellRecord,
    name: &str,
) -> Result<(), DaemonError> {
    for record in [&*writer, &*reader] {
        if let Some(link) = record.named_channels.iter().find(|link| link.name == name) {
            return Err(DaemonError::Conflict(format!(
                "cell `{}` already has a channel named `{name}`, joined to cell `{}`",
                record.name,
                name_of(inner, &link.peer)
            )));
        }
        if record.named_channels.len() >= MAX_NAMED_CHANNELS {
            return Err(DaemonError::Conflict(format!(
                "cell `{}` has {MAX_NAMED_CHANNELS} named channels, the most a cell takes",
                record.name
            )));
        }
        let taken = record
            .spec
            .dirs
            .iter()
            .any(|dir| dir.guest.as_ref().unwrap_or(&dir.host) == CHANNELS_DIRECTORY);
        if taken {
            return Err(DaemonError::Conflict(format!(
                "cell `{}` is given a directory as `/channels`, the name its named channels take",
                record.name
            )));
        }
    }
    writer.named_channels.push(NamedChannelLink {
        name: name.to_string(),
        peer: reader.id.clone(),
        writes: true,
    });
    reader.named_channels.push(NamedChannelLink {
        name: name.to_string(),
        peer: writer.id.clone(),
        writes: false,
    });
    Ok(())
}

/// Refuses a cell that cannot be joined: one that has started or is starting, that
/// starts from a snapshot, that is to be checkpointed, or that lacks the component the
/// channel needs (`channels` for a named one, `stdio` otherwise).
fn joinable(inner: &Inner, id: &str, named: bool) -> Result<(), DaemonError> {
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
    let (component, carries) = if named {
        ("channels", "serves named channels")
    } else {
        ("stdio", "carries a channel")
    };
    let given = record
        .spec
        .components
        .as_ref()
        .is_none_or(|names| names.iter().any(|name| name == component));
    if !given {
        return Err(DaemonError::Conflict(format!(
            "cell `{}` is not given the `{component}` component, which {carries}",
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
