//! Leadership among controllers that share one store: exactly one runs what must be single
//! (the reconcile workers), and its writes are fenced by its term.
//!
//! On etcd a controller campaigns with a lease: it puts the leader key (`P leader`) attached
//! to its lease only if the key does not exist; the key's create revision is its [`Term`]. It
//! renews the lease every third of the TTL and steps down (publishes `None`) once a third of
//! the TTL is left since the last renewal it knows reached etcd, so it stops before the
//! lease can expire and another controller can win. On top of that, every transaction of a
//! fenced call ([`fenced`]) carries the compare "the leader key still has this create
//! revision", so a deposed leader's late write cannot land even if it missed the step-down.
//! The sled store has one controller: it is always the leader of term 0 and fences nothing.

use std::cell::Cell;
use std::time::Duration;

use tokio::sync::watch;

/// One tenure of leadership: the etcd revision that created the leader key (0 on sled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Term {
    pub revision: i64,
}

/// How a controller campaigns.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Stored in the leader key so operators (and tests) see who leads: the listen address.
    pub identity: String,
    /// The lease's time to live; a dead leader is replaced after at most about this long.
    pub lease_ttl: Duration,
}

/// Whether this controller leads, and in which term; follow it with [`Leadership::subscribe`].
pub struct Leadership {
    state: watch::Receiver<Option<Term>>,
    /// Keeps the campaign running; dropping the last handle stops it (and lets the lease go).
    _campaign: Option<CampaignGuard>,
}

/// Stops a campaign task when dropped.
pub(crate) struct CampaignGuard(pub(crate) tokio::task::AbortHandle);

impl Drop for CampaignGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Leadership {
    /// The single controller of an embedded store: leader for good, term 0.
    pub fn always() -> Self {
        let (sender, state) = watch::channel(Some(Term { revision: 0 }));
        // The receiver keeps the last value after the sender is gone.
        drop(sender);
        Self {
            state,
            _campaign: None,
        }
    }

    pub(crate) fn campaigning(
        state: watch::Receiver<Option<Term>>,
        campaign: CampaignGuard,
    ) -> Self {
        Self {
            state,
            _campaign: Some(campaign),
        }
    }

    /// Whether other controllers may share the store (this one campaigns for leadership).
    pub fn shared(&self) -> bool {
        self._campaign.is_some()
    }

    /// The current term, if this controller leads.
    pub fn current(&self) -> Option<Term> {
        *self.state.borrow()
    }

    /// Follows the leadership: `Some(term)` while leading, `None` otherwise.
    pub fn subscribe(&self) -> watch::Receiver<Option<Term>> {
        self.state.clone()
    }
}

thread_local! {
    static FENCE: Cell<Option<Term>> = const { Cell::new(None) };
}

/// Runs the store calls of `body` (synchronous, on this thread) fenced by `term`: on etcd
/// each of their transactions commits only while `term` still holds, and fails with
/// `StoreError::Deposed` otherwise. Term 0 (sled) fences nothing.
pub fn fenced<T>(term: Term, body: impl FnOnce() -> T) -> T {
    struct Restore(Option<Term>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FENCE.with(|fence| fence.set(self.0));
        }
    }
    let _restore = Restore(FENCE.with(|fence| fence.replace(Some(term))));
    body()
}

/// The term the current thread's store calls are fenced by, if any.
pub(crate) fn current_fence() -> Option<Term> {
    FENCE.with(Cell::get).filter(|term| term.revision != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_holds_inside_its_body_only_and_nests() {
        assert_eq!(current_fence(), None);
        fenced(Term { revision: 7 }, || {
            assert_eq!(current_fence(), Some(Term { revision: 7 }));
            fenced(Term { revision: 9 }, || {
                assert_eq!(current_fence(), Some(Term { revision: 9 }));
            });
            assert_eq!(current_fence(), Some(Term { revision: 7 }));
        });
        assert_eq!(current_fence(), None);
        fenced(Term { revision: 0 }, || assert_eq!(current_fence(), None));
    }

    #[test]
    fn the_embedded_store_always_leads() {
        let leadership = Leadership::always();
        assert_eq!(leadership.current(), Some(Term { revision: 0 }));
        assert_eq!(*leadership.subscribe().borrow(), Some(Term { revision: 0 }));
    }
}
