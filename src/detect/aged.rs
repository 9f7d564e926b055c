//! Aged owns the bounded maps of what detection remembers per name: tools a
//! tenant has called, credentials' agents, when a tenant or agent was first
//! seen, a tenant's calls this minute.
//!
//! Names are the producer's to invent, so a plain bounded map (clear it when
//! full, or drop its oldest) lets one tenant's flood of invented names erase
//! what every other tenant's detection relies on: its tools would all look
//! new, its credentials unowned, its rate-limit minute reset. Here a new
//! name starts among the *newcomers*, and becomes *established* once it is
//! seen again in another bucket. A full newcomer set is cleared, which costs
//! only other newcomers; a full established set drops its stalest half,
//! which a flood can reach only by repeating every invented name in a later
//! bucket.

use super::HashedKeys;

/// What a key holds, and the newest bucket it was seen in.
#[derive(Debug)]
struct Entry<V> {
    value: V,
    seen: i64,
}

pub struct AgedMap<V> {
    established: HashedKeys<Entry<V>>,
    newcomers: HashedKeys<Entry<V>>,
    max_established: usize,
    max_newcomers: usize,
    /// Entries dropped to stay within bounds.
    pub evictions: u64,
}

impl<V> AgedMap<V> {
    /// A map of at most `max` entries: a quarter for newcomers.
    pub fn new(max: usize) -> AgedMap<V> {
        let max_newcomers = (max / 4).max(1);
        AgedMap {
            established: HashedKeys::default(),
            newcomers: HashedKeys::default(),
            max_established: max.saturating_sub(max_newcomers).max(1),
            max_newcomers,
            evictions: 0,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.established.len() + self.newcomers.len()
    }

    #[cfg(test)]
    fn get(&self, key: u64) -> Option<&V> {
        self.established
            .get(&key)
            .or_else(|| self.newcomers.get(&key))
            .map(|e| &e.value)
    }

    /// The entry of `key` seen in `bucket`, inserted with `init` when new.
    /// Returns it and whether it was new.
    pub fn entry(&mut self, key: u64, bucket: i64, init: impl FnOnce() -> V) -> (&mut V, bool) {
        if self.established.contains_key(&key) {
            let e = self
                .established
                .get_mut(&key)
                .unwrap_or_else(|| unreachable!("checked just now"));
            e.seen = e.seen.max(bucket);
            return (&mut e.value, false);
        }
        if let Some(e) = self.newcomers.get(&key) {
            if bucket != e.seen {
                // Seen again in another bucket (warm-up reads history newest
                // first): established.
                if let Some(mut e) = self.newcomers.remove(&key) {
                    e.seen = e.seen.max(bucket);
                    self.make_established_room();
                    let slot = self.established.entry(key).or_insert(e);
                    return (&mut slot.value, false);
                }
            }
            let e = self
                .newcomers
                .get_mut(&key)
                .unwrap_or_else(|| unreachable!("checked just now"));
            return (&mut e.value, false);
        }
        if self.newcomers.len() >= self.max_newcomers {
            self.evictions += self.newcomers.len() as u64;
            self.newcomers.clear();
        }
        let e = self.newcomers.entry(key).or_insert(Entry {
            value: init(),
            seen: bucket,
        });
        (&mut e.value, true)
    }

    /// Drops the stalest half of the established entries when full:
    /// amortised O(1) per promotion.
    fn make_established_room(&mut self) {
        if self.established.len() < self.max_established {
            return;
        }
        let mut seen: Vec<i64> = self.established.values().map(|e| e.seen).collect();
        let mid = seen.len() / 2;
        let (_, cut, _) = seen.select_nth_unstable(mid);
        let cut = *cut;
        let before = self.established.len();
        self.established.retain(|_, e| e.seen > cut);
        self.evictions += (before - self.established.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_new_names_never_erases_an_established_one() {
        let mut m: AgedMap<u32> = AgedMap::new(100);
        for bucket in 0..2 {
            for key in 0..10 {
                *m.entry(key, bucket, || 0).0 += 1;
            }
        }
        // One-off names, far more than the map holds.
        for key in 1_000..100_000 {
            let (_, new) = m.entry(key, 5, || 7);
            assert!(new);
        }
        assert!(m.len() <= 100);
        for key in 0..10 {
            assert_eq!(m.get(key), Some(&2), "established key {key} lost");
            assert!(!m.entry(key, 6, || 0).1);
        }
        assert!(m.evictions > 90_000);
    }

    #[test]
    fn a_name_is_established_only_when_seen_in_a_later_bucket() {
        let mut m: AgedMap<()> = AgedMap::new(8);
        m.entry(1, 0, || ());
        m.entry(1, 0, || ());
        m.entry(2, 0, || ());
        // Two newcomers fill their quarter: a third clears them, 1 included.
        m.entry(3, 0, || ());
        assert!(m.entry(1, 0, || ()).1, "1 was a newcomer, cleared");
        // Seen in another bucket, 1 is established and survives the churn.
        m.entry(1, 1, || ());
        for key in 10..20 {
            m.entry(key, 1, || ());
        }
        assert!(!m.entry(1, 2, || ()).1, "1 is established now");
    }

    #[test]
    fn a_full_established_set_keeps_its_freshest_half() {
        let mut m: AgedMap<()> = AgedMap::new(40);
        for key in 0..40u64 {
            let first = key as i64;
            m.entry(key, first, || ());
            m.entry(key, first + 1, || ());
        }
        assert!(m.len() <= 40);
        assert!(m.get(39).is_some(), "the freshest stays");
        assert!(m.get(0).is_none(), "the stalest went");
        assert!(m.evictions > 0);
    }
}
