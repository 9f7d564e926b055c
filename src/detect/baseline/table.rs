//! The key table of the baselines: a fixed-size slot per key, found by its
//! hash, in a segmented LRU. A new key starts on probation and is promoted
//! once it calls in a second bucket; a new key evicts the least recently
//! seen key on probation, so a flood of invented names churns only the
//! probation segment, and promoted keys hold at most 3/4 of the table.

use half::f16;

use super::{Baselines, NONE, OWNS_PROFILE, PROTECTED_KEY, RING, Shape, Slot, WEEK_HOURS};

/// One segment's recency list, threaded through the slots.
#[derive(Clone, Copy)]
pub(super) struct Lru {
    head: u32,
    tail: u32,
    len: usize,
}

pub(super) const EMPTY_LRU: Lru = Lru {
    head: NONE,
    tail: NONE,
    len: 0,
};
pub(super) const PROBATION: usize = 0;
pub(super) const PROTECTED: usize = 1;

impl Baselines {
    /// Keys promoted out of probation, for tests and the metric.
    pub fn protected(&self) -> usize {
        self.lists[PROTECTED].len
    }

    /// Moves a key that called again in a later bucket to the protected
    /// segment; at 3/4 of the table, its least recent key goes back on
    /// probation to make room.
    pub(super) fn promote(&mut self, idx: u32) {
        self.unlink(idx);
        self.slots[idx as usize].set(PROTECTED_KEY, true);
        self.push_front(idx);
        let cap = self.cfg.max_keys - self.cfg.max_keys / 4;
        while self.lists[PROTECTED].len > cap.max(1) {
            let demoted = self.lists[PROTECTED].tail;
            if demoted == NONE || demoted == idx {
                break;
            }
            self.unlink(demoted);
            self.slots[demoted as usize].set(PROTECTED_KEY, false);
            self.push_front(demoted);
        }
    }

    pub(super) fn slot_for(&mut self, key: u64, bucket: u32, shape: Shape) -> u32 {
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        let mut fresh = Slot {
            key,
            lx: 0.0,
            lp: 0.0,
            flat: 0.0,
            phi: 1.0,
            surge: f16::ZERO,
            drop: f16::ZERO,
            up_peak: f16::ZERO,
            down_peak: f16::ZERO,
            kept: 0,
            newest: bucket,
            counts: [0; RING as usize],
            profile: NONE,
            history: 0,
            fired: 0,
            flags: 0,
            episode_up: 0,
            episode_down: 0,
            prev: NONE,
            next: NONE,
        };
        let victim = match self.lists[PROBATION].tail {
            NONE => self.lists[PROTECTED].tail,
            t => t,
        };
        let idx = if self.slots.len() >= self.cfg.max_keys && victim != NONE {
            self.unlink(victim);
            let old = self.slots[victim as usize];
            self.index.remove(&old.key);
            if old.has(OWNS_PROFILE) && old.profile != NONE {
                self.free_profiles.push(old.profile);
                self.bursts.forget(old.profile);
            }
            self.evictions += 1;
            victim
        } else {
            self.slots.push(fresh);
            u32::try_from(self.slots.len() - 1).unwrap_or(NONE - 1)
        };
        if shape == Shape::Own {
            let p = match self.free_profiles.pop() {
                Some(p) => Some(p),
                None if self.profiles.len() < self.cfg.max_profiles => {
                    self.profiles.push([f16::NAN; WEEK_HOURS]);
                    u32::try_from(self.profiles.len() - 1).ok()
                }
                None => None,
            };
            if let Some(p) = p {
                self.profiles[p as usize] = [f16::NAN; WEEK_HOURS];
                fresh.profile = p;
                fresh.set(OWNS_PROFILE, true);
            }
        }
        self.slots[idx as usize] = fresh;
        self.index.insert(key, idx);
        self.push_front(idx);
        idx
    }

    fn segment(&self, idx: u32) -> usize {
        if self.slots[idx as usize].has(PROTECTED_KEY) {
            PROTECTED
        } else {
            PROBATION
        }
    }

    pub(super) fn touch(&mut self, idx: u32) {
        if self.lists[self.segment(idx)].head != idx {
            self.unlink(idx);
            self.push_front(idx);
        }
    }

    fn unlink(&mut self, idx: u32) {
        let list = self.segment(idx);
        let (prev, next) = {
            let s = &self.slots[idx as usize];
            (s.prev, s.next)
        };
        match prev {
            NONE => self.lists[list].head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NONE => self.lists[list].tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
        self.lists[list].len -= 1;
    }

    fn push_front(&mut self, idx: u32) {
        let list = self.segment(idx);
        let old = self.lists[list].head;
        {
            let s = &mut self.slots[idx as usize];
            s.prev = NONE;
            s.next = old;
        }
        if old != NONE {
            self.slots[old as usize].prev = idx;
        }
        let l = &mut self.lists[list];
        l.head = idx;
        if l.tail == NONE {
            l.tail = idx;
        }
        l.len += 1;
    }
}
