//! Kernel objects a guest names by handles that are not file descriptors: wasi-nn graphs and
//! execution contexts, preview-2 resources (streams, pollables, descriptors of the component
//! model). They live in one table of index handles to plain data, beside the descriptor table,
//! and travel in the snapshot with the rest of the kernel.

use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

/// A table of objects by index handle: a freed handle is reused by the next insertion, as
/// descriptors are, and a stale one names nothing (or, once reused, the new object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleTable<T> {
    slots: Vec<Option<T>>,
}

impl<T> Default for HandleTable<T> {
    fn default() -> Self {
        HandleTable { slots: Vec::new() }
    }
}

impl<T> HandleTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        HandleTable::default()
    }

    /// Puts `object` in the lowest free slot; `None` when `limit` handles are in use.
    pub fn insert(&mut self, object: T, limit: usize) -> Option<u32> {
        if let Some(i) = self.slots.iter().position(Option::is_none) {
            self.slots[i] = Some(object);
            return u32::try_from(i).ok();
        }
        if self.slots.len() >= limit {
            return None;
        }
        self.slots.push(Some(object));
        u32::try_from(self.slots.len() - 1).ok()
    }

    /// The object of `handle`.
    pub fn get(&self, handle: u32) -> Option<&T> {
        self.slots.get(handle as usize)?.as_ref()
    }

    /// The object of `handle`, to change.
    pub fn get_mut(&mut self, handle: u32) -> Option<&mut T> {
        self.slots.get_mut(handle as usize)?.as_mut()
    }

    /// Takes the object of `handle` out; its handle is free again.
    pub fn remove(&mut self, handle: u32) -> Option<T> {
        let taken = self.slots.get_mut(handle as usize)?.take();
        while matches!(self.slots.last(), Some(None)) {
            self.slots.pop();
        }
        taken
    }

    /// Every live handle and its object, in handle order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i as u32, s.as_ref()?)))
    }

    /// Slots, live or free (what a decoded table costs).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }
}

/// An object of the [`HandleTable`] a kernel keeps. The kinds come with the interfaces that
/// hand them out (wasi-nn graphs and execution contexts, preview-2 streams and pollables);
/// until one does, a decoded table must be empty (see [`crate::Kernel::check`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KernelObject {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Handles are the lowest free index, freed ones are reused, stale ones name nothing,
    /// the limit holds, and the table round-trips through the kernel's encoding.
    #[test]
    fn handles_are_reused_bounded_and_plain_data() {
        let mut t: HandleTable<u8> = HandleTable::new();
        assert_eq!(t.insert(10, 3), Some(0));
        assert_eq!(t.insert(11, 3), Some(1));
        assert_eq!(t.insert(12, 3), Some(2));
        assert_eq!(t.insert(13, 3), None);
        assert_eq!(t.remove(1), Some(11));
        assert_eq!(t.get(1), None);
        assert_eq!(t.remove(1), None);
        assert_eq!(t.insert(14, 3), Some(1));
        assert_eq!(t.get(1), Some(&14));
        *t.get_mut(2).unwrap() = 22;
        assert_eq!(t.iter().collect::<Vec<_>>(), [(0, &10), (1, &14), (2, &22)]);
        t.remove(2);
        assert_eq!(t.slots(), 2);
        let bytes = postcard::to_allocvec(&t).unwrap();
        assert_eq!(postcard::from_bytes::<HandleTable<u8>>(&bytes).unwrap(), t);
    }
}
