//! The daemon's records, in an embedded ACID database (redb): cells by id, the
//! sequence of events, and templates by name. Every change is one committed transaction, so the
//! database is consistent whenever the daemon dies.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::record::{CellRecord, Event, TemplateRecord};

const CELLS: TableDefinition<&str, &[u8]> = TableDefinition::new("cells");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const TEMPLATES: TableDefinition<&str, &[u8]> = TableDefinition::new("templates");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[error("the daemon's database failed: {0}")]
pub struct StoreError(String);

fn failed(error: impl std::fmt::Display) -> StoreError {
    StoreError(error.to_string())
}

/// Events the daemon keeps by default: the newest, some tens of MB of them.
pub const DEFAULT_EVENTS_KEPT: u64 = 100_000;

/// The daemon's database.
pub struct Store {
    db: Database,
    /// How many of the newest events are kept; older ones go as new ones come.
    events_kept: u64,
}

impl Store {
    /// Opens the database at `path`, creating it if needed, keeping the newest
    /// `events_kept` events.
    pub fn open(path: &Path, events_kept: u64) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(failed)?;
        let txn = db.begin_write().map_err(failed)?;
        {
            txn.open_table(CELLS).map_err(failed)?;
            txn.open_table(EVENTS).map_err(failed)?;
            txn.open_table(TEMPLATES).map_err(failed)?;
        }
        txn.commit().map_err(failed)?;
        Ok(Self {
            db,
            events_kept: events_kept.max(1),
        })
    }

    /// Every cell record.
    pub fn cells(&self) -> Result<Vec<CellRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let table = txn.open_table(CELLS).map_err(failed)?;
        let mut cells = Vec::new();
        for entry in table.iter().map_err(failed)? {
            let (_, value) = entry.map_err(failed)?;
            cells.push(serde_json::from_slice(value.value()).map_err(failed)?);
        }
        Ok(cells)
    }

    /// Every template record.
    pub fn templates(&self) -> Result<Vec<TemplateRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let table = txn.open_table(TEMPLATES).map_err(failed)?;
        let mut templates = Vec::new();
        for entry in table.iter().map_err(failed)? {
            let (_, value) = entry.map_err(failed)?;
            templates.push(serde_json::from_slice(value.value()).map_err(failed)?);
        }
        Ok(templates)
    }

    /// Saves a template's record.
    pub fn save_template(&self, record: &TemplateRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(failed)?;
        let txn = self.db.begin_write().map_err(failed)?;
        txn.open_table(TEMPLATES)
            .map_err(failed)?
            .insert(record.name.as_str(), bytes.as_slice())
            .map_err(failed)?;
        txn.commit().map_err(failed)
    }

    /// Removes the record of the template `name`.
    pub fn remove_template(&self, name: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(failed)?;
        txn.open_table(TEMPLATES)
            .map_err(failed)?
            .remove(name)
            .map_err(failed)?;
        txn.commit().map_err(failed)
    }

    /// Saves `record` (a new cell, or a change) and `events` together.
    pub fn save(&self, record: &CellRecord, events: &[Event]) -> Result<(), StoreError> {
        self.save_all(std::slice::from_ref(record), events)
    }

    /// Saves `records` and `events` in one transaction.
    pub fn save_all(&self, records: &[CellRecord], events: &[Event]) -> Result<(), StoreError> {
        self.write(records, events, Durability::Immediate)
    }

    /// Saves `record` and `events` as [`Self::save`] does, but on disk only with the
    /// next save that is not of this kind, or [`Self::sync`]: for what is worth little
    /// after a crash (a migration's rounds, an arriving cell's record before the cell
    /// is its own), told without waiting for the disk.
    pub fn save_unsynced(&self, record: &CellRecord, events: &[Event]) -> Result<(), StoreError> {
        self.write(std::slice::from_ref(record), events, Durability::None)
    }

    /// Puts on disk every save before it, [`Self::save_unsynced`]'s too.
    pub fn sync(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(failed)?;
        txn.set_durability(Durability::Immediate).map_err(failed)?;
        txn.commit().map_err(failed)
    }

    fn write(
        &self,
        records: &[CellRecord],
        events: &[Event],
        durability: Durability,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(failed)?;
        txn.set_durability(durability).map_err(failed)?;
        {
            let mut cells = txn.open_table(CELLS).map_err(failed)?;
            for record in records {
                let bytes = serde_json::to_vec(record).map_err(failed)?;
                cells
                    .insert(record.id.as_str(), bytes.as_slice())
                    .map_err(failed)?;
            }
            drop(cells);
            for event in events {
                self.append(&txn, event)?;
            }
        }
        txn.commit().map_err(failed)
    }

    /// Removes the cell `record` names, recording `event`.
    pub fn remove(&self, record: &CellRecord, event: &Event) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(failed)?;
        {
            txn.open_table(CELLS)
                .map_err(failed)?
                .remove(record.id.as_str())
                .map_err(failed)?;
            self.append(&txn, event)?;
        }
        txn.commit().map_err(failed)
    }

    /// Records `event` and lets the one that falls out of the kept window go, so the
    /// table stays the same size however long the daemon runs.
    fn append(&self, txn: &redb::WriteTransaction, event: &Event) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(event).map_err(failed)?;
        let mut table = txn.open_table(EVENTS).map_err(failed)?;
        table.insert(event.seq, bytes.as_slice()).map_err(failed)?;
        if let Some(old) = event.seq.checked_sub(self.events_kept) {
            table.remove(old).map_err(failed)?;
        }
        Ok(())
    }

    /// The events after sequence number `after`, oldest first.
    pub fn events_after(&self, after: u64) -> Result<Vec<Event>, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let table = txn.open_table(EVENTS).map_err(failed)?;
        let mut events = Vec::new();
        for entry in table.range(after.saturating_add(1)..).map_err(failed)? {
            let (_, value) = entry.map_err(failed)?;
            events.push(serde_json::from_slice(value.value()).map_err(failed)?);
        }
        Ok(events)
    }

    /// The last event's sequence number, 0 when there is none.
    pub fn last_event(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let table = txn.open_table(EVENTS).map_err(failed)?;
        Ok(table
            .last()
            .map_err(failed)?
            .map_or(0, |(key, _)| key.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::CellSpec;

    fn record(id: &str, name: &str) -> CellRecord {
        let spec = CellSpec {
            module: "/m.wasm".into(),
            ..CellSpec::default()
        };
        CellRecord::created(id.into(), name.into(), spec, 1)
    }

    fn event(seq: u64, cell: &CellRecord, action: &str) -> Event {
        Event {
            seq,
            time_ms: 1,
            cell: cell.id.clone(),
            name: cell.name.clone(),
            action: action.into(),
            state: cell.state,
            migration: None,
        }
    }

    #[test]
    fn records_and_events_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let a = record("aaaa", "first");
        let b = record("bbbb", "second");
        {
            let store = Store::open(&path, 100).unwrap();
            store.save(&a, &[event(1, &a, "create")]).unwrap();
            store.save(&b, &[event(2, &b, "create")]).unwrap();
            store.remove(&a, &event(3, &a, "remove")).unwrap();
        }
        let store = Store::open(&path, 100).unwrap();
        assert_eq!(store.cells().unwrap(), vec![b]);
        assert_eq!(store.last_event().unwrap(), 3);
        let after = store.events_after(1).unwrap();
        assert_eq!(
            after.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
            ["create", "remove"]
        );
    }

    #[test]
    fn only_the_newest_events_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 3).unwrap();
        let cell = record("cccc", "kept");
        for seq in 1..=10 {
            store.save(&cell, &[event(seq, &cell, "pause")]).unwrap();
        }
        let kept: Vec<u64> = store
            .events_after(0)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(kept, [8, 9, 10]);
        assert_eq!(store.last_event().unwrap(), 10);
    }

    #[test]
    fn unsynced_saves_are_read_at_once_and_kept_with_the_next_save() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut cell = record("dddd", "moving");
        {
            let store = Store::open(&path, 100).unwrap();
            store.save(&cell, &[event(1, &cell, "create")]).unwrap();
            for seq in 2..=4 {
                store
                    .save_unsynced(&cell, &[event(seq, &cell, "migrate")])
                    .unwrap();
            }
            assert_eq!(store.last_event().unwrap(), 4);
            cell.name = "moved".into();
            store.save(&cell, &[event(5, &cell, "stop")]).unwrap();
        }
        let store = Store::open(&path, 100).unwrap();
        assert_eq!(store.cells().unwrap(), vec![cell]);
        let actions: Vec<String> = store
            .events_after(0)
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(actions, ["create", "migrate", "migrate", "migrate", "stop"]);
    }

    #[test]
    fn a_sync_keeps_progress_saved_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let cell = record("eeee", "arrived");
        {
            let store = Store::open(&path, 100).unwrap();
            store
                .save_unsynced(&cell, &[event(1, &cell, "arrive")])
                .unwrap();
            store.sync().unwrap();
        }
        let store = Store::open(&path, 100).unwrap();
        assert_eq!(store.cells().unwrap(), vec![cell]);
        assert_eq!(store.last_event().unwrap(), 1);
    }
}
