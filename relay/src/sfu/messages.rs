//! Room messages: the per-room sequence, the bounded log that reconnecting clients resume
//! from, and duplicate suppression for messages a client sends again after a reconnect.
//!
//! A client message carries its own id (unique per identity). The first time the room sees
//! `(identity, id)` it gets the next room sequence number, is logged, and is delivered; the
//! client is acknowledged with that sequence number. The same `(identity, id)` again — a resend
//! of a message whose ack was lost — is acknowledged with the original number and not delivered
//! again, so nothing acknowledged is lost and nothing is applied twice.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Who a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// From players to the room's device(s): controls.
    Devices,
    /// From a device to the room's players.
    Players,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub from: Arc<str>,
    pub to: Audience,
    /// The message's `data`, as JSON text.
    pub data: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Logged under this sequence number; deliver it.
    New(u64),
    /// Already logged under this number; acknowledge again, do not deliver.
    Duplicate(u64),
}

#[derive(Debug)]
pub struct MessageLog {
    cap: usize,
    next_seq: u64,
    entries: VecDeque<Entry>,
    seen: HashMap<(Arc<str>, u64), u64>,
    seen_order: VecDeque<(Arc<str>, u64)>,
}

impl MessageLog {
    /// A log keeping the last `cap` messages (and remembering 4×`cap` client ids for
    /// duplicate suppression).
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            next_seq: 1,
            entries: VecDeque::new(),
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
        }
    }

    pub fn append(
        &mut self,
        from: &Arc<str>,
        client_id: Option<u64>,
        to: Audience,
        data: Arc<str>,
    ) -> Appended {
        if let Some(id) = client_id {
            if let Some(&seq) = self.seen.get(&(from.clone(), id)) {
                return Appended::Duplicate(seq);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(id) = client_id {
            let key = (from.clone(), id);
            self.seen.insert(key.clone(), seq);
            self.seen_order.push_back(key);
            while self.seen_order.len() > self.cap * 4 {
                if let Some(old) = self.seen_order.pop_front() {
                    self.seen.remove(&old);
                }
            }
        }
        self.entries.push_back(Entry {
            seq,
            from: from.clone(),
            to,
            data,
        });
        while self.entries.len() > self.cap {
            self.entries.pop_front();
        }
        Appended::New(seq)
    }

    /// The last sequence number handed out (0 before the first message).
    /// Copies entry `seq` of the home's log (this log mirrors it, for a room served here over
    /// the trunk). False for one already here (or older than what is here).
    pub fn mirror(&mut self, seq: u64, from: Arc<str>, to: Audience, data: Arc<str>) -> bool {
        if seq < self.next_seq {
            return false;
        }
        self.next_seq = seq + 1;
        self.entries.push_back(Entry {
            seq,
            from,
            to,
            data,
        });
        while self.entries.len() > self.cap {
            self.entries.pop_front();
        }
        true
    }

    /// Every entry kept (oldest first).
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Messages for `to` after `after`, oldest first, and the range that was missed because
    /// the log no longer holds it (`Some((first, last))`), if any.
    pub fn since(&self, after: u64, to: Audience) -> (Vec<Entry>, Option<(u64, u64)>) {
        let oldest = self.entries.front().map_or(self.next_seq, |e| e.seq);
        let gap = (after + 1 < oldest).then(|| (after + 1, oldest - 1));
        let list = self
            .entries
            .iter()
            .filter(|e| e.seq > after && e.to == to)
            .cloned()
            .collect();
        (list, gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn sequence_numbers_increase_and_duplicates_keep_theirs() {
        let mut log = MessageLog::new(8);
        let a = who("alice");
        assert_eq!(
            log.append(&a, Some(1), Audience::Devices, "1".into()),
            Appended::New(1)
        );
        assert_eq!(
            log.append(&a, Some(2), Audience::Devices, "2".into()),
            Appended::New(2)
        );
        // Resent after a reconnect: same number, not logged again.
        assert_eq!(
            log.append(&a, Some(1), Audience::Devices, "1".into()),
            Appended::Duplicate(1)
        );
        // Another identity may reuse the id.
        let b = who("bob");
        assert_eq!(
            log.append(&b, Some(1), Audience::Devices, "x".into()),
            Appended::New(3)
        );
        // No id: never deduplicated.
        assert_eq!(
            log.append(&b, None, Audience::Players, "y".into()),
            Appended::New(4)
        );
        assert_eq!(
            log.append(&b, None, Audience::Players, "y".into()),
            Appended::New(5)
        );
        assert_eq!(log.last_seq(), 5);
    }

    #[test]
    fn a_mirror_follows_the_home_log() {
        let mut home = MessageLog::new(4);
        let d = who("device");
        for i in 0..6u64 {
            home.append(&d, Some(i), Audience::Players, format!("{i}").into());
        }
        // The edge starts watching late: it gets the home's tail, then what follows.
        let mut edge = MessageLog::new(4);
        for e in home.entries() {
            assert!(edge.mirror(e.seq, e.from.clone(), e.to, e.data.clone()));
        }
        assert!(!edge.mirror(4, d.clone(), Audience::Players, "dup".into()));
        assert_eq!(edge.last_seq(), 6);
        let (list, gap) = edge.since(1, Audience::Players);
        assert_eq!(
            gap,
            Some((2, 2)),
            "what the home no longer has is a gap here too"
        );
        assert_eq!(list.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5, 6]);
    }

    #[test]
    fn resume_replays_only_missed_messages_for_the_audience() {
        let mut log = MessageLog::new(8);
        let a = who("alice");
        let d = who("device");
        for i in 0..4u64 {
            log.append(&a, Some(i), Audience::Devices, format!("{i}").into());
            log.append(&d, Some(i), Audience::Players, format!("d{i}").into());
        }
        let (for_device, gap) = log.since(3, Audience::Devices);
        assert_eq!(gap, None);
        let seqs: Vec<u64> = for_device.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![5, 7]);
        let (for_players, _) = log.since(0, Audience::Players);
        assert_eq!(for_players.len(), 4);
        assert!(for_players.iter().all(|e| &*e.from == "device"));
    }

    #[test]
    fn bounded_log_reports_the_gap() {
        let mut log = MessageLog::new(3);
        let a = who("alice");
        for i in 0..10u64 {
            log.append(&a, Some(i), Audience::Devices, "x".into());
        }
        let (list, gap) = log.since(2, Audience::Devices);
        assert_eq!(
            list.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
        assert_eq!(gap, Some((3, 7)));
        let (_, none) = log.since(7, Audience::Devices);
        assert_eq!(none, None);
        // Ids older than the dedupe window are forgotten, bounding memory.
        let mut small = MessageLog::new(1);
        for i in 0..100u64 {
            small.append(&a, Some(i), Audience::Devices, "x".into());
        }
        assert!(small.seen.len() <= 4);
    }
}
