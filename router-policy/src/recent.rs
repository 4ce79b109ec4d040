//! A bounded map of the most recent entries (request ids to what feedback needs later) that
//! never rehashes on the request path.
//!
//! The plain design, a map plus an eviction queue, removes one entry per insert once full. The
//! removals leave tombstones in the hash table, and when they use up its free slots the table
//! rehashes every entry at once, under the caller's lock: at 100k entries, a stall of about
//! 30 ms, first after about 150k inserts. Here entries live in two generations that
//! only ever grow to their reserved size: when the newer one is full, the older one is dropped
//! whole (off the caller's thread) and a fresh, pre-sized map takes the newer one's place.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

// Keyed like std's SipHash (a random key per map), at a fraction of its cost per lookup.
use ahash::RandomState;

/// Remembers at least the last `capacity` inserted entries, and at most twice as many.
#[derive(Debug)]
pub struct RecentMap<K, V> {
    capacity: usize,
    current: HashMap<K, V, RandomState>,
    previous: HashMap<K, V, RandomState>,
}

impl<K, V> RecentMap<K, V>
where
    K: Eq + Hash + Send + 'static,
    V: Send + 'static,
{
    /// A map that keeps at least the last `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            current: HashMap::with_capacity_and_hasher(capacity, RandomState::new()),
            previous: HashMap::default(),
        }
    }

    /// Remembers `value` under `key` as the newest entry, replacing any older value of `key`.
    pub fn insert(&mut self, key: K, value: V) {
        self.previous.remove(&key);
        if self.current.len() >= self.capacity && !self.current.contains_key(&key) {
            self.rotate();
        }
        self.current.insert(key, value);
    }

    /// The value remembered under `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.current.get(key).or_else(|| self.previous.get(key))
    }

    /// The value remembered under `key`, to change in place.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        match self.current.get_mut(key) {
            Some(value) => Some(value),
            None => self.previous.get_mut(key),
        }
    }

    /// How many entries are remembered now.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The newer generation becomes the older; the old older one is freed on another thread,
    /// since freeing `capacity` entries one by one takes milliseconds.
    fn rotate(&mut self) {
        let fresh = HashMap::with_capacity_and_hasher(self.capacity, RandomState::new());
        let newer = std::mem::replace(&mut self.current, fresh);
        let expired = std::mem::replace(&mut self.previous, newer);
        if expired.is_empty() {
            return;
        }
        // Where no thread can be started, the unused closure, and the map with it, is freed
        // here: slower, but nothing is kept.
        let _ = std::thread::Builder::new()
            .name("tandem-recent-free".into())
            .spawn(move || drop(expired));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_capacity_entries_are_always_remembered() {
        let mut map = RecentMap::new(100);
        for i in 0..1_000u32 {
            map.insert(i, i * 2);
            let oldest_kept = i.saturating_sub(99);
            for j in oldest_kept..=i {
                assert_eq!(map.get(&j), Some(&(j * 2)), "entry {j} lost after {i}");
            }
            assert!(map.len() <= 200, "{} entries held", map.len());
        }
        // Long gone.
        assert_eq!(map.get(&0), None);
    }

    #[test]
    fn a_key_inserted_again_has_one_value_the_newest() {
        let mut map = RecentMap::new(2);
        map.insert("a".to_string(), 1);
        map.insert("b".to_string(), 2);
        map.insert("c".to_string(), 3); // "a" and "b" move to the older generation
        map.insert("a".to_string(), 4); // back in the newer one, out of the older
        assert_eq!(map.get("a"), Some(&4));
        assert_eq!(map.len(), 3);
        if let Some(v) = map.get_mut("b") {
            *v = 5;
        }
        assert_eq!(map.get("b"), Some(&5));
        map.insert("d".to_string(), 6);
        map.insert("e".to_string(), 7); // "b" expires; "a" and "d" stay
        assert_eq!(map.get("b"), None);
        assert_eq!(map.get("a"), Some(&4));
        assert!(!map.is_empty());
    }

    #[test]
    fn the_table_never_grows_past_its_reservation() {
        let mut map = RecentMap::new(1_000);
        let reserved = map.current.capacity();
        for i in 0..20_000u32 {
            map.insert(i, ());
            assert!(map.current.capacity() <= reserved, "rehashed at {i}");
        }
    }
}
