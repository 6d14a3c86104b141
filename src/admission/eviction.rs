//! How an eviction by the pre-association budget ([`super::budget`])
//! reaches the evicted connection's task, and where it is counted: in that
//! task, only when the eviction is what closes the connection. The evictor
//! cannot know whether the connection is ending by itself at that instant
//! (its ACSE deadline firing on another worker thread); counting it there
//! would count such a connection twice (`timeout` and an eviction).

use std::future::Future;
use std::net::IpAddr;
use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

/// Why a pre-association connection was evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Eviction {
    /// Its source reached the per-source cap with a newer connection.
    SourceCap,
    /// The listener's budget was full; it was the oldest of the busiest source.
    BudgetFull,
}

impl Eviction {
    pub fn as_str(self) -> &'static str {
        match self {
            Eviction::SourceCap => "source_cap",
            Eviction::BudgetFull => "budget_full",
        }
    }
}

/// How an eviction reaches its connection's task: the evictor (under the
/// budget's lock, once per entry: it takes the entry out) writes where and
/// why, then cancels. Shared by the budget's entry and the connection.
#[derive(Debug, Default)]
pub struct Notice {
    /// Cancelled only by [`Notice::evict`], after `why` is set.
    token: CancellationToken,
    /// The source the entry was under when evicted, and the rule that did it.
    why: OnceLock<(IpAddr, Eviction)>,
}

impl Notice {
    pub(super) fn evict(&self, source: IpAddr, why: Eviction) {
        let _ = self.why.set((source, why));
        self.token.cancel();
    }

    /// Whether (and why) the budget evicted this connection, whether or not
    /// the eviction is what closed it.
    pub fn eviction(&self) -> Option<(IpAddr, Eviction)> {
        self.why.get().copied()
    }

    /// Runs `connection` until it ends or is evicted. `Some`: the eviction
    /// closed it (the future is dropped unfinished, so it recorded no outcome
    /// of its own): the caller counts it as evicted. `None`: it ended by
    /// itself and recorded its outcome, even if an eviction came in the same
    /// instant; that one is not counted, so each connection has one outcome.
    pub async fn guard(&self, connection: impl Future<Output = ()>) -> Option<(IpAddr, Eviction)> {
        tokio::select! {
            biased;
            _ = self.token.cancelled() => self.eviction(),
            _ = connection => None,
        }
    }
}
