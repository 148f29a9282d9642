//! Property: every store agrees with a `BTreeMap` model on what `list(prefix, start_after)`
//! returns after any sequence of puts and deletes.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_store::{MemStore, Store};
use proptest::prelude::*;

use crate::util::{key, keys, put};

/// Keys from names that sort around '/' ('-' and '.' below it, '0' above). Directory and file
/// names are disjoint, so no key is both an object and a directory of others (which
/// `DirStore` cannot hold).
fn any_key() -> impl Strategy<Value = String> {
    let dir = prop::sample::select(vec!["d", "d-", "d.e", "d0"]);
    let file = prop::sample::select(vec!["x", "x-", "x.y", "x0", "0"]);
    (prop::collection::vec(dir, 0..3), file).prop_map(|(dirs, file)| {
        let mut k = dirs.join("/");
        if !k.is_empty() {
            k.push('/');
        }
        k.push_str(file);
        k
    })
}

#[derive(Debug, Clone)]
enum Action {
    Put(String, u8),
    Delete(String),
}

fn any_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (any_key(), any::<u8>()).prop_map(|(k, v)| Action::Put(k, v)),
        1 => any_key().prop_map(Action::Delete),
    ]
}

fn any_prefix() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["", "d", "d/", "d-", "d.e/", "d/d", "x", "d0/x", "0"])
        .prop_map(str::to_owned)
}

async fn check(
    store: Arc<dyn Store>,
    actions: Vec<Action>,
    queries: Vec<(String, Option<String>)>,
) {
    let mut model: BTreeMap<String, u8> = BTreeMap::new();
    for action in actions {
        match action {
            Action::Put(k, v) => {
                put(&*store, &k, &[v]).await;
                model.insert(k, v);
            }
            Action::Delete(k) => {
                let was = store.delete(&key(&k)).await.unwrap();
                assert_eq!(was, model.remove(&k).is_some(), "delete {k}");
            }
        }
    }
    for (prefix, after) in queries {
        let want: Vec<String> = model
            .keys()
            .filter(|k| k.starts_with(&prefix) && after.as_ref().is_none_or(|a| *k > a))
            .cloned()
            .collect();
        assert_eq!(
            keys(&*store, &prefix, after.as_deref()).await,
            want,
            "list({prefix:?}, {after:?})"
        );
    }
}

fn queries() -> impl Strategy<Value = Vec<(String, Option<String>)>> {
    prop::collection::vec((any_prefix(), prop::option::of(any_key())), 1..6)
}

proptest! {
    // `PROPTEST_CASES` overrides the default (48), as for every proptest suite here.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48)
    ))]

    #[test]
    fn mem_store_lists_like_the_model(
        actions in prop::collection::vec(any_action(), 0..40),
        queries in queries(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(check(Arc::new(MemStore::with_chunk_size(1)), actions, queries));
    }

    #[cfg(unix)]
    #[test]
    fn dir_store_lists_like_the_model(
        actions in prop::collection::vec(any_action(), 0..40),
        queries in queries(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        rt.block_on(async {
            let store = ferry_store::DirStore::open(dir.path()).await.unwrap();
            check(Arc::new(store), actions, queries).await;
        });
    }
}
