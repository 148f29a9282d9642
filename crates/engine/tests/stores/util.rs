//! Helpers shared by the store tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use ferry_engine::store::{ByteStream, Store, body_from_bytes};
use ferry_types::{ObjectKey, ObjectMeta};
use futures_util::{StreamExt, TryStreamExt};

pub(crate) fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap()
}

pub(crate) async fn put(store: &dyn Store, k: &str, data: &[u8]) -> ObjectMeta {
    let body = body_from_bytes(Bytes::copy_from_slice(data), 3);
    store.put(&key(k), body).await.unwrap()
}

pub(crate) async fn read(store: &dyn Store, k: &str) -> Option<Vec<u8>> {
    match store.get(&key(k)).await {
        Ok(object) => {
            let chunks: Vec<Bytes> = object.checked_body().try_collect().await.unwrap();
            Some(chunks.concat())
        }
        Err(e) if e.is_not_found() => None,
        Err(e) => panic!("get {k}: {e}"),
    }
}

pub(crate) async fn keys(store: &dyn Store, prefix: &str, after: Option<&str>) -> Vec<String> {
    let after = after.map(key);
    store
        .list(prefix, after.as_ref())
        .map(|m| m.unwrap().key.as_str().to_owned())
        .collect()
        .await
}

/// Counts the chunk buffers alive (made and not yet dropped by whoever holds them), and the
/// most that were alive at once.
#[derive(Clone, Default)]
pub(crate) struct LiveChunks {
    live: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

struct Tracked {
    data: Bytes,
    live: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl LiveChunks {
    /// `data` as a chunk whose buffer is counted until the last reference to it drops.
    pub(crate) fn track(&self, data: Bytes) -> Bytes {
        let now = self.live.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        Bytes::from_owner(Tracked {
            data,
            live: Arc::clone(&self.live),
        })
    }

    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// A body of `n` chunks of `size` bytes (chunk `i` filled with `i as u8`), made lazily.
    pub(crate) fn generate(&self, n: usize, size: usize) -> ByteStream {
        let this = self.clone();
        Box::pin(
            futures_util::stream::iter(0..n)
                .map(move |i| Ok(this.track(Bytes::from(vec![i as u8; size])))),
        )
    }
}
