//! Counted reads: [`ReadGuard`]s and the drain that waits for them.
//!
//! A read that routed to the source just before the flip may still be reading it when the
//! engine's cleanup deletes the source copy. The engine calls the embedder's commit hook
//! after the flip and before the delete; the hook awaits [`Table::drain_reads`], which
//! returns once every read of the key that began before it has ended.
//!
//! # How reads are counted
//! One stripe per shard (so a drain also waits for reads of keys in the same shard: they are
//! short). A stripe has two counters and an epoch bit, as SRCU (sleepable read-copy update)
//! has: a read adds one to the counter the epoch names and takes it off when its guard drops;
//! a drain (one per stripe at a time) waits for the other counter to empty, flips the epoch,
//! and waits for the counter it named before. Reads that begin after the flip count on the
//! other side, so a steady stream of reads never holds a drain back: it waits only for reads
//! that began before it (and for the few that read the epoch just before the previous drain
//! flipped it, and counted themselves just after).
//!
//! # Why a drain sees every read that routed to the source
//! A read counts itself (a `SeqCst` read-modify-write) before it routes. If it routed under
//! the shard's lock and saw the key not yet flipped, its lock came before the flip's, so its
//! count happens before the flip and before the drain that follows it. If it routed on the
//! lock-free filter miss (the key was not registered yet), that miss is a `SeqCst` load that
//! did not see the `SeqCst` bits the key's registration set: in the single total order of
//! `SeqCst` operations the count comes before that load, the load before the registration,
//! the registration before the drain's `SeqCst` loads of the counters, which therefore see
//! the count. Plain [`Table::route_read`] keeps its `Relaxed` load (on x86 both loads are
//! one `mov`).

use std::fmt;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};

use tokio::sync::{Mutex, Notify};

use crate::{Route, Table};

/// The reads in flight of one stripe of keys (see the module docs).
#[derive(Default)]
pub(crate) struct ReadStripe {
    /// Bit 0 names the counter new reads add to; only a drain changes it.
    epoch: AtomicUsize,
    /// Reads in flight, by the epoch bit they began under.
    reads: [AtomicUsize; 2],
    /// Drains waiting for a counter to empty: a read that empties one wakes them only then,
    /// so a read's end costs one atomic subtraction and one load when no drain waits.
    waiting: AtomicUsize,
    /// Woken when a counter empties while drains wait.
    emptied: Notify,
    /// One drain at a time flips the epoch. An async mutex, held across the drain's waits
    /// (what it is for) and never handed out.
    drains: Mutex<()>,
}

impl ReadStripe {
    /// Counts a read in; returns the epoch bit to count it out with.
    #[inline]
    fn begin(&self) -> usize {
        let epoch = self.epoch.load(Relaxed) & 1;
        self.reads[epoch].fetch_add(1, SeqCst);
        epoch
    }

    /// Counts a read out.
    #[inline]
    fn end(&self, epoch: usize) {
        if self.reads[epoch].fetch_sub(1, SeqCst) == 1 && self.waiting.load(SeqCst) > 0 {
            self.emptied.notify_waiters();
        }
    }

    /// Waits until every read counted in before the call is counted out.
    async fn drain(&self) {
        let _one_drain = self.drains.lock().await;
        let current = self.epoch.load(Relaxed) & 1;
        // Reads that read the epoch before the previous drain flipped it and counted
        // themselves after that drain saw their counter empty.
        self.wait_empty(current ^ 1).await;
        self.epoch.fetch_add(1, SeqCst);
        self.wait_empty(current).await;
    }

    async fn wait_empty(&self, epoch: usize) {
        if self.reads[epoch].load(SeqCst) == 0 {
            return;
        }
        self.waiting.fetch_add(1, SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            let mut emptied = pin!(self.emptied.notified());
            // Registered before the check: a read that empties the counter after it sees
            // `waiting` (both `SeqCst`) and its wake-up reaches this future.
            emptied.as_mut().enable();
            if self.reads[epoch].load(SeqCst) == 0 {
                return;
            }
            emptied.await;
        }
    }
}

/// Counts a drain out of [`ReadStripe::waiting`] however its wait ends (also when cancelled).
struct Waiting<'s>(&'s AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// A read of one key in flight, from [`Table::read`]: says where to read, and keeps the read
/// counted until it is dropped, so that [`Table::drain_reads`] can wait for it.
///
/// Hold it until the node has answered (it is `Send`: it may be held across `.await` in a
/// spawned task), then drop it. It borrows the table and holds no lock. A guard that is never
/// dropped (leaked) makes every later drain of its stripe wait forever.
#[must_use = "the read is counted until the guard is dropped"]
pub struct ReadGuard<'t> {
    stripe: &'t ReadStripe,
    epoch: usize,
    route: Route,
}

impl ReadGuard<'_> {
    /// Where to read: the same answer as [`Table::route_read`] at the time of the call.
    pub fn route(&self) -> Route {
        self.route
    }
}

impl fmt::Debug for ReadGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadGuard")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl Drop for ReadGuard<'_> {
    fn drop(&mut self) {
        self.stripe.end(self.epoch);
    }
}

impl Table {
    /// Starts a read of `key`: routes it as [`Table::route_read`] does (and counts it in
    /// [`Stats::lookups`](crate::Stats::lookups)), and counts the read in flight until the
    /// guard is dropped. Use it instead of `route_read` where the migration deletes source
    /// copies, and drop the guard once the node has answered: the commit hook's
    /// [`Table::drain_reads`] then waits for reads that routed to the source before the flip.
    ///
    /// It costs `route_read` plus two uncontended atomic read-modify-writes on the stripe's
    /// cache line (one here, one when the guard drops).
    ///
    /// ```
    /// use ferry_forwarding::{Route, Table};
    /// use ferry_types::NodeId;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let table = Table::default();
    /// let home = NodeId::new("node-a")?; // where the embedder's own placement puts the key
    /// let guard = table.read("photos/cat.jpg");
    /// let node = match guard.route() {
    ///     Route::Source => home,
    ///     Route::Target(node) => node,
    /// };
    /// // ... read the object from `node` ...
    /// # let _ = node;
    /// drop(guard); // after the node answered
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn read(&self, key: &str) -> ReadGuard<'_> {
        let hash = self.inner.hash(key);
        let stripe = self.inner.read_stripe(hash);
        // Counted before routing: see the module docs for why a drain then sees it.
        let epoch = stripe.begin();
        let route = self.route_hashed(key, hash, SeqCst);
        ReadGuard {
            stripe,
            epoch,
            route,
        }
    }

    /// Waits until every [`ReadGuard`] of `key` created before this call has been dropped.
    ///
    /// Guards of other keys in the same shard may be waited for too (false sharing: it only
    /// waits a little longer). Reads that begin while it waits do not hold it back, however
    /// many there are: they are counted apart (an epoch, as in SRCU). Drains of one shard run
    /// one at a time.
    ///
    /// This is what a commit hook awaits after the flip and before it returns (the engine
    /// deletes the source copy after the hook): a read that routed to the source before the
    /// flip has then finished with it, and every later read routes to the target.
    ///
    /// ```
    /// use ferry_forwarding::{Route, Table};
    /// use ferry_types::{NodeId, ObjectKey};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let table = Table::default();
    /// let (a, b) = (NodeId::new("node-a")?, NodeId::new("node-b")?);
    /// let key = ObjectKey::new("photos/cat.jpg")?;
    /// table.register(&key, a, b)?;
    ///
    /// // A client starts reading the source...
    /// let guard = table.read("photos/cat.jpg");
    /// assert_eq!(guard.route(), Route::Source);
    ///
    /// // ...while the engine flips the key and calls the commit hook, which drains.
    /// let observed = table.generation("photos/cat.jpg").ok_or("registered above")?;
    /// table.try_flip("photos/cat.jpg", observed)?;
    /// let hook = tokio::spawn({
    ///     let table = table.clone();
    ///     async move {
    ///         // (A real hook first places the key on the target: see `Placement`.)
    ///         table.drain_reads("photos/cat.jpg").await;
    ///     }
    /// });
    /// tokio::task::yield_now().await; // the hook runs, and waits for `guard`
    /// assert!(!hook.is_finished());
    ///
    /// // Reads that begin now go to the target.
    /// assert_eq!(table.read("photos/cat.jpg").route(), Route::Target(b));
    ///
    /// // The early read ends: the hook returns, and the source copy may go.
    /// drop(guard);
    /// hook.await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future stops the wait and leaves every read counted as it
    /// was; a later call waits for everything this one would have.
    pub async fn drain_reads(&self, key: &str) {
        self.inner.read_stripe(self.inner.hash(key)).drain().await;
    }
}
