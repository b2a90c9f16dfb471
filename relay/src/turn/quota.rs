//! The allocation ledger shared by all workers of a node: allocations in total and per user.
//! Touched only when allocations are created or freed, never per packet.

use std::collections::HashMap;
use std::sync::Mutex;

/// Which quota a new allocation would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaExceeded {
    Total,
    PerUser,
}

#[derive(Debug)]
pub struct AllocationLedger {
    max_total: usize,
    max_per_user: usize,
    inner: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    total: usize,
    per_user: HashMap<String, usize>,
}

impl AllocationLedger {
    pub fn new(max_total: usize, max_per_user: usize) -> Self {
        AllocationLedger {
            max_total,
            max_per_user,
            inner: Mutex::new(Ledger::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A worker that panicked while holding the lock left consistent counters behind
        // (every update is a single statement), so poisoning is not a reason to stop.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn try_acquire(&self, user: &str) -> Result<(), QuotaExceeded> {
        let mut l = self.lock();
        if l.total >= self.max_total {
            return Err(QuotaExceeded::Total);
        }
        let n = l.per_user.get(user).copied().unwrap_or(0);
        if n >= self.max_per_user {
            return Err(QuotaExceeded::PerUser);
        }
        l.per_user.insert(user.to_string(), n + 1);
        l.total += 1;
        Ok(())
    }

    pub fn release(&self, user: &str) {
        let mut l = self.lock();
        if let Some(n) = l.per_user.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                l.per_user.remove(user);
            }
            l.total -= 1;
        }
    }

    pub fn total(&self) -> usize {
        self.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforces_total_and_per_user() {
        let l = AllocationLedger::new(3, 2);
        assert_eq!(l.try_acquire("a"), Ok(()));
        assert_eq!(l.try_acquire("a"), Ok(()));
        assert_eq!(l.try_acquire("a"), Err(QuotaExceeded::PerUser));
        assert_eq!(l.try_acquire("b"), Ok(()));
        assert_eq!(l.try_acquire("c"), Err(QuotaExceeded::Total));
        l.release("a");
        assert_eq!(l.try_acquire("c"), Ok(()));
        l.release("nobody");
        assert_eq!(l.total(), 3);
    }
}
