//! The component's resources: wasmtime's table of them, with a count of those alive.
//! A component that never drops a handle it was given keeps its resource alive, and
//! the store allows 100,000 live handles: a cell that answers requests in turn ends
//! once the count shows it leaking, before that limit fails a request.

use core::any::Any;

use wasmtime::component::{Resource, ResourceTable, ResourceTableError};

/// [`ResourceTable`], counting the entries alive.
pub struct Resources {
    table: ResourceTable,
    live: usize,
}

impl Resources {
    pub fn new() -> Self {
        Self {
            table: ResourceTable::new(),
            live: 0,
        }
    }

    /// Resources alive: pushed and not yet deleted.
    pub fn live(&self) -> usize {
        self.live
    }

    pub fn push<T: Send + 'static>(&mut self, entry: T) -> Result<Resource<T>, ResourceTableError> {
        let resource = self.table.push(entry)?;
        self.live += 1;
        Ok(resource)
    }

    pub fn push_child<T: Send + 'static, U: 'static>(
        &mut self,
        entry: T,
        parent: &Resource<U>,
    ) -> Result<Resource<T>, ResourceTableError> {
        let resource = self.table.push_child(entry, parent)?;
        self.live += 1;
        Ok(resource)
    }

    pub fn delete<T: Any>(&mut self, resource: Resource<T>) -> Result<T, ResourceTableError> {
        let entry = self.table.delete(resource)?;
        self.live -= 1;
        Ok(entry)
    }

    pub fn get<T: Any + Sized>(&self, key: &Resource<T>) -> Result<&T, ResourceTableError> {
        self.table.get(key)
    }

    pub fn get_mut<T: Any + Sized>(
        &mut self,
        key: &Resource<T>,
    ) -> Result<&mut T, ResourceTableError> {
        self.table.get_mut(key)
    }
}
