//! The background sweeper thread.

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::table::Inner;

/// A handle on a table's sweeper thread, to see that it stopped after the table was dropped.
#[derive(Debug, Clone)]
pub struct SweeperHandle {
    state: Arc<SweeperState>,
}

#[derive(Debug, Default)]
struct SweeperState {
    finished: Mutex<bool>,
    changed: Condvar,
}

impl SweeperHandle {
    /// Whether the thread has exited.
    pub fn is_finished(&self) -> bool {
        *self.state.finished.lock()
    }

    /// Waits up to `timeout` for the thread to exit; returns whether it did.
    pub fn wait_finished(&self, timeout: Duration) -> bool {
        let mut finished = self.state.finished.lock();
        if !*finished {
            let _ = self
                .state
                .changed
                .wait_while_for(&mut finished, |done| !*done, timeout);
        }
        *finished
    }
}

/// Marks the sweeper finished when the thread's loop ends, even by a panic.
struct FinishOnDrop(Arc<SweeperState>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        *self.0.finished.lock() = true;
        self.0.changed.notify_all();
    }
}

/// Starts the sweeper of `inner`. It holds only a `Weak` between sweeps, so it never keeps
/// the table alive; `Inner`'s `Drop` unparks it and it exits on its next look.
pub(crate) fn spawn(inner: &Arc<Inner>, interval: Duration) -> Option<SweeperHandle> {
    let state = Arc::new(SweeperState::default());
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let finish = FinishOnDrop(Arc::clone(&state));
    let handle = std::thread::Builder::new()
        .name("ferry-forwarding-sweeper".into())
        .spawn(move || {
            let _finish = finish;
            run(&weak, interval);
        })
        .ok()?;
    // Set once, right after spawning; the thread only reads it through `Inner::drop`.
    let _ = inner.sweeper.set(handle.thread().clone());
    Some(SweeperHandle { state })
}

fn run(weak: &Weak<Inner>, interval: Duration) {
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        // One shard at a time: each shard's expired entries are removed in batches, so no
        // reader waits behind more than one batch.
        let now = inner.clock.now();
        for index in 0..inner.shards.len() {
            inner.sweep_shard(index, now, true);
            if Arc::strong_count(&inner) == 1 {
                // Every table handle is gone: stop early.
                return;
            }
        }
        crate::metrics::swept();
        crate::metrics::record(&inner);
        drop(inner);
        std::thread::park_timeout(interval);
    }
}
