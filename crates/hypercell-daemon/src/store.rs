//! The daemon's records, in an embedded ACID database (redb): cells by id and the
//! sequence of events. Every change is one committed transaction, so the
//! database is consistent whenever the daemon dies.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::record::{CellRecord, Event};

const CELLS: TableDefinition<&str, &[u8]> = TableDefinition::new("cells");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[error("the daemon's database failed: {0}")]
pub struct StoreError(String);

fn failed(error: impl std::fmt::Display) -> StoreError {
    StoreError(error.to_string())
}

/// The daemon's database.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens the database at `path`, creating it if needed.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(failed)?;
        let txn = db.begin_write().map_err(failed)?;
        {
            txn.open_table(CELLS).map_err(failed)?;
            txn.open_table(EVENTS).map_err(failed)?;
        }
        txn.commit().map_err(failed)?;
        Ok(Self { db })
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

    /// Saves `record` (a new cell, or a change) and `events` together.
    pub fn save(&self, record: &CellRecord, events: &[Event]) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(failed)?;
        let txn = self.db.begin_write().map_err(failed)?;
        {
            txn.open_table(CELLS)
                .map_err(failed)?
                .insert(record.id.as_str(), bytes.as_slice())
                .map_err(failed)?;
            for event in events {
                Self::append(&txn, event)?;
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
            Self::append(&txn, event)?;
        }
        txn.commit().map_err(failed)
    }

    fn append(txn: &redb::WriteTransaction, event: &Event) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(event).map_err(failed)?;
        txn.open_table(EVENTS)
            .map_err(failed)?
            .insert(event.seq, bytes.as_slice())
            .map_err(failed)?;
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
    use crate::record::{CellSpec, CellState};

    fn record(id: &str, name: &str) -> CellRecord {
        CellRecord {
            id: id.into(),
            name: name.into(),
            spec: CellSpec {
                module: "/m.wasm".into(),
                ..CellSpec::default()
            },
            state: CellState::Created,
            created_ms: 1,
            started_ms: None,
            finished_ms: None,
            exit_code: None,
            error: None,
            usage: None,
        }
    }

    fn event(seq: u64, cell: &CellRecord, action: &str) -> Event {
        Event {
            seq,
            time_ms: 1,
            cell: cell.id.clone(),
            name: cell.name.clone(),
            action: action.into(),
            state: cell.state,
        }
    }

    #[test]
    fn records_and_events_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let a = record("aaaa", "first");
        let b = record("bbbb", "second");
        {
            let store = Store::open(&path).unwrap();
            store.save(&a, &[event(1, &a, "create")]).unwrap();
            store.save(&b, &[event(2, &b, "create")]).unwrap();
            store.remove(&a, &event(3, &a, "remove")).unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.cells().unwrap(), vec![b]);
        assert_eq!(store.last_event().unwrap(), 3);
        let after = store.events_after(1).unwrap();
        assert_eq!(
            after.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
            ["create", "remove"]
        );
    }
}
