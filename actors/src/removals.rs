//! Participants removed by an operator or the API, remembered so that the token they held
//! cannot bring them straight back: a join of the same identity into the same meeting with
//! a token issued before the removal is refused (`REMOVED`) until that token would have
//! expired. A token minted after the removal joins normally (the app decided to readmit).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::ids::MeetingId;

/// Entries kept at most; the oldest give way first.
const MAX_ENTRIES: usize = 100_000;
/// How long a removal is remembered when the removed participant's token expiry is unknown.
pub const DEFAULT_MEMORY: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Copy, Debug)]
struct Removal {
    at: SystemTime,
    until: SystemTime,
}

/// The node's removals (see the module docs).
#[derive(Debug, Default)]
pub struct Removals {
    entries: Mutex<HashMap<(MeetingId, String), Removal>>,
}

impl Removals {
    /// Remembers that `identity` was removed from `meeting` at `at`; tokens issued until then
    /// are refused until `until` (the removed participant's token expiry).
    pub fn record(&self, meeting: &MeetingId, identity: &str, at: SystemTime, until: SystemTime) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|_, r| r.until > at);
        if entries.len() >= MAX_ENTRIES
            && let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, r)| r.at)
                .map(|(k, _)| k.clone())
        {
            entries.remove(&oldest);
        }
        entries.insert(
            (meeting.clone(), identity.to_owned()),
            Removal { at, until },
        );
    }

    /// True when a join of `identity` into `meeting` with a token issued at `issued_at`
    /// must be refused at `now`.
    pub fn refuses(
        &self,
        meeting: &MeetingId,
        identity: &str,
        issued_at: SystemTime,
        now: SystemTime,
    ) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&(meeting.clone(), identity.to_owned()))
            .is_some_and(|r| now < r.until && issued_at <= r.at)
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_token_is_refused_until_it_expires_and_a_new_one_is_not() {
        let removals = Removals::default();
        let m = MeetingId::parse("m").unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let issued = t0 - Duration::from_secs(60);
        let expires = t0 + Duration::from_secs(3600);
        removals.record(&m, "alice", t0, expires);
        assert!(removals.refuses(&m, "alice", issued, t0 + Duration::from_secs(1)));
        // Another identity, another meeting: unaffected.
        assert!(!removals.refuses(&m, "bob", issued, t0));
        let other = MeetingId::parse("n").unwrap();
        assert!(!removals.refuses(&other, "alice", issued, t0));
        // A token minted after the removal readmits.
        assert!(!removals.refuses(&m, "alice", t0 + Duration::from_secs(1), t0));
        // Once the old token would have expired, the entry no longer matters, and is pruned.
        assert!(!removals.refuses(&m, "alice", issued, expires));
        removals.record(&other, "carol", expires, expires + Duration::from_secs(1));
        assert_eq!(removals.len(), 1);
    }
}
