//! One table: the objects of one kind keyed by id, with a unique-name index and secondary
//! indexes. Pure data; ordering is by id everywhere, so iteration is deterministic.
//!
//! Invariant: `names` and `index` always describe exactly the objects in `objects`; only
//! [`Table::put`] and [`Table::delete`] change any of the three.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::object::{By, StoreObject};

/// The objects of one kind with their indexes.
#[derive(Debug)]
pub struct Table<T> {
    objects: BTreeMap<String, Arc<T>>,
    /// Lowercased unique name → id.
    names: BTreeMap<String, String>,
    /// Secondary key → ids carrying it.
    index: BTreeMap<By, BTreeSet<String>>,
}

// Manual impls: deriving would require `T: Clone`/`T: Default`, but only the Arcs are cloned.
impl<T> Clone for Table<T> {
    fn clone(&self) -> Self {
        Table {
            objects: self.objects.clone(),
            names: self.names.clone(),
            index: self.index.clone(),
        }
    }
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            objects: BTreeMap::new(),
            names: BTreeMap::new(),
            index: BTreeMap::new(),
        }
    }
}

/// The form a name takes in the unique-name index (Swarm compares names case-insensitively).
pub(crate) fn name_key(name: &str) -> String {
    name.to_lowercase()
}

impl<T: StoreObject> Table<T> {
    /// The object with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<T>> {
        self.objects.get(id)
    }

    /// The object with this unique name (case-insensitive).
    pub fn get_by_name(&self, name: &str) -> Option<&Arc<T>> {
        self.names
            .get(&name_key(name))
            .and_then(|id| self.objects.get(id))
    }

    /// The id holding `name` in the unique-name index, if any.
    pub(crate) fn name_owner(&self, name: &str) -> Option<&str> {
        self.names.get(&name_key(name)).map(String::as_str)
    }

    /// Every object, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<T>> + '_ {
        self.objects.values()
    }

    /// The objects carrying index key `by`, in id order.
    pub fn find<'a>(&'a self, by: &By) -> impl Iterator<Item = &'a Arc<T>> + 'a {
        self.index
            .get(by)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.objects.get(id))
    }

    /// How many objects carry index key `by`.
    pub fn count(&self, by: &By) -> usize {
        self.index.get(by).map_or(0, BTreeSet::len)
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Inserts or replaces the object with `obj`'s id and returns the one it replaced.
    /// The caller has checked that `obj`'s name is free (or already its own).
    pub(crate) fn put(&mut self, obj: Arc<T>) -> Option<Arc<T>> {
        let id = obj.id().to_owned();
        let old = self.delete(&id);
        if let Some(name) = obj.name() {
            self.names.insert(name_key(name), id.clone());
        }
        let mut keys = Vec::new();
        obj.index_keys(&mut keys);
        for key in keys {
            self.index.entry(key).or_default().insert(id.clone());
        }
        self.objects.insert(id, obj);
        old
    }

    /// Removes the object with this id and its index entries; returns it.
    pub(crate) fn delete(&mut self, id: &str) -> Option<Arc<T>> {
        let old = self.objects.remove(id)?;
        if let Some(name) = old.name() {
            let key = name_key(name);
            if self.names.get(&key).is_some_and(|owner| owner == id) {
                self.names.remove(&key);
            }
        }
        let mut keys = Vec::new();
        old.index_keys(&mut keys);
        for key in keys {
            if let Some(ids) = self.index.get_mut(&key) {
                ids.remove(id);
                if ids.is_empty() {
                    self.index.remove(&key);
                }
            }
        }
        Some(old)
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{Annotations, Service, ServiceSpec, Task};

    use super::*;

    fn task(id: &str, service: &str, slot: u64, node: &str) -> Arc<Task> {
        Arc::new(Task {
            id: id.into(),
            service_id: service.into(),
            slot,
            node_id: node.into(),
            ..Default::default()
        })
    }

    fn ids<'a>(it: impl Iterator<Item = &'a Arc<Task>>) -> Vec<&'a str> {
        it.map(|t| t.id.as_str()).collect()
    }

    #[test]
    fn indexes_follow_puts_replacements_and_deletes() {
        let mut t = Table::<Task>::default();
        t.put(task("a", "s1", 1, "n1"));
        t.put(task("b", "s1", 2, ""));
        t.put(task("c", "s2", 1, "n1"));
        assert_eq!(ids(t.find(&By::ServiceId("s1".into()))), ["a", "b"]);
        assert_eq!(ids(t.find(&By::NodeId("n1".into()))), ["a", "c"]);
        assert_eq!(
            ids(t.find(&By::Slot {
                service_id: "s1".into(),
                slot: 2
            })),
            ["b"]
        );

        // Scheduling b moves it into n2's index; replacing keeps no stale key.
        let old = t.put(task("b", "s1", 2, "n2"));
        assert_eq!(old.map(|o| o.node_id.clone()), Some(String::new()));
        assert_eq!(ids(t.find(&By::NodeId("n2".into()))), ["b"]);
        assert_eq!(t.count(&By::NodeId("n1".into())), 2);

        assert!(t.delete("a").is_some());
        assert!(t.delete("a").is_none());
        assert_eq!(ids(t.find(&By::ServiceId("s1".into()))), ["b"]);
        assert_eq!(ids(t.find(&By::NodeId("n1".into()))), ["c"]);
        assert_eq!(t.len(), 2);
        // Emptied keys leave no empty sets behind.
        t.delete("c");
        assert_eq!(t.count(&By::NodeId("n1".into())), 0);
        assert!(!t.index.contains_key(&By::NodeId("n1".into())));
    }

    #[test]
    fn unique_names_are_case_insensitive_and_follow_renames() {
        let svc = |id: &str, name: &str| {
            Arc::new(Service {
                id: id.into(),
                spec: Some(ServiceSpec {
                    annotations: Some(Annotations {
                        name: name.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
        };
        let mut t = Table::<Service>::default();
        t.put(svc("s1", "Web"));
        assert_eq!(t.get_by_name("web").map(|s| s.id.as_str()), Some("s1"));
        assert_eq!(t.name_owner("WEB"), Some("s1"));
        t.put(svc("s1", "api"));
        assert!(t.get_by_name("web").is_none());
        assert_eq!(t.get_by_name("API").map(|s| s.id.as_str()), Some("s1"));
        t.delete("s1");
        assert!(t.get_by_name("api").is_none());
        assert!(t.names.is_empty());
    }
}
