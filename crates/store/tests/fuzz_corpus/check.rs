//! The check of the `dirstore_key_path` fuzz target, shared with its stable replay
//! (`crates/store/tests/fuzz_corpus.rs`): the fuzz target compiles this same file with
//! `#[path = "…"] mod check;`, so both run exactly the same assertions.
//!
//! One input is up to [`MAX_KEYS`] lines; each line that is an [`ObjectKey`] is put into a
//! [`DirStore`] (rooted at `<parent>/root`), and `head`, `get`, `list` and `delete` are run on
//! it, against a model of what was put. What must hold (SPEC §6: a key never escapes the root):
//! - nothing outside the root is created, changed or removed: a listing of `<parent>` without
//!   `root` (names, types, sizes, modes, mtimes, contents) is the same before and after, and
//!   the sentinel files keep their content;
//! - nothing outside is read: a `get` returns what this input put under that key, or nothing;
//! - a key that is absolute or has an empty, `.` or `..` segment is refused with `InvalidKey`;
//! - every failure is a clean `Err`, never a panic (a panic on a blocking thread would come
//!   back as a `JoinError` inside the error: that fails the check too).

use std::collections::BTreeMap;
use std::path::PathBuf;

use bytes::Bytes;
use ferry_store::Error;
use ferry_store::{DirStore, Store, body_from_bytes};
use ferry_types::ObjectKey;
use futures_util::{StreamExt, TryStreamExt};

/// At most this many keys per input (one per line).
pub(crate) const MAX_KEYS: usize = 8;

/// What the sentinel files outside the root hold.
const SENTINEL: &[u8] = b"ferry sentinel: must never be read or changed";

/// A parent directory holding the store's root and, beside it, files the store must never
/// touch; one per process (the fuzz target) or per test.
pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    parent: PathBuf,
    root: PathBuf,
    store: DirStore,
    rt: tokio::runtime::Runtime,
}

/// One entry of a directory listing, with everything a write would change.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    path: String,
    kind: &'static str,
    len: u64,
    mode: u32,
    mtime: (i64, i64),
    content: Option<Vec<u8>>,
    link: Option<PathBuf>,
}

impl Fixture {
    /// Makes `<tmp>/root` (the store), and beside it `sentinel`, `outside/secret`,
    /// `root-sibling/secret` (a name that starts like the root) and a link `up` to `..`.
    pub(crate) fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let parent = dir.path().to_path_buf();
        let root = parent.join("root");
        for sub in ["outside", "root-sibling"] {
            std::fs::create_dir(parent.join(sub)).expect("mkdir");
            std::fs::write(parent.join(sub).join("secret"), SENTINEL).expect("write");
        }
        std::fs::write(parent.join("sentinel"), SENTINEL).expect("write");
        std::os::unix::fs::symlink("..", parent.join("up")).expect("symlink");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let store = rt.block_on(DirStore::open(&root)).expect("open the store");
        Fixture {
            _dir: dir,
            parent,
            root,
            store,
            rt,
        }
    }

    /// Runs one input through the store and checks it (panics on a violation).
    pub(crate) fn check(&self, input: &[u8]) {
        self.check_with(input, |_| {});
    }

    /// [`Fixture::check`], with `meddle` called on the parent directory once the store's
    /// operations ran: how the tests show that the check notices a change outside the root.
    pub(crate) fn check_with(&self, input: &[u8], meddle: impl FnOnce(&std::path::Path)) {
        let before = self.outside();
        let keys = keys_of(input);
        self.rt.block_on(self.run(&keys));
        meddle(&self.parent);
        let after = self.outside();
        assert_eq!(
            before, after,
            "something outside the root changed for keys {keys:?}"
        );
        for file in ["sentinel", "outside/secret", "root-sibling/secret"] {
            assert_eq!(
                std::fs::read(self.parent.join(file)).expect("a sentinel is there"),
                SENTINEL,
                "{file} changed for keys {keys:?}"
            );
        }
        self.empty_root();
    }

    async fn run(&self, keys: &[ObjectKey]) {
        let store = &self.store;
        // What this input put, as the store must now show it.
        let mut model: BTreeMap<ObjectKey, Vec<u8>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            let refused = must_be_refused(key.as_str());
            // Before the put: only what this input put may be seen.
            let seen = head(store, key).await;
            assert_eq!(
                seen,
                model.get(key).map(|c| c.len() as u64),
                "head {key:?} before its put"
            );
            assert_eq!(
                get(store, key).await.as_ref(),
                model.get(key),
                "get {key:?} before its put read something it did not put"
            );

            let content = format!("ferry fuzz {i}: {}", key.as_str()).into_bytes();
            let body = body_from_bytes(Bytes::from(content.clone()), 7);
            match store.put(key, body).await {
                Ok(meta) => {
                    assert!(!refused, "put {key:?} succeeded: the key must be refused");
                    assert_eq!(meta.size, content.len() as u64, "put {key:?}: size");
                    // A put replaces the key and, through the file system, can make no other
                    // key disappear (a file and a directory of the same name cannot coexist).
                    model.insert(key.clone(), content);
                }
                Err(e) => {
                    clean(&e, "put", key);
                    if refused {
                        assert!(
                            matches!(e, Error::InvalidKey { .. }),
                            "put {key:?}: refused with {e}, not as an invalid key"
                        );
                    }
                }
            }
            assert_eq!(
                head(store, key).await,
                model.get(key).map(|c| c.len() as u64),
                "head {key:?} after its put"
            );
            assert_eq!(
                get(store, key).await.as_ref(),
                model.get(key),
                "get {key:?} after its put"
            );
        }
        // The listing shows exactly what was put, in key order, and nothing from outside.
        let listed: Vec<ObjectKey> = store
            .list("", None)
            .map(|m| m.expect("list").key)
            .collect()
            .await;
        let expected: Vec<ObjectKey> = model.keys().cloned().collect();
        assert_eq!(listed, expected, "list of the root");
        for key in keys {
            if let Some(first) = key.as_str().split('/').next() {
                let listed: Vec<ObjectKey> = store
                    .list(first, None)
                    .map(|m| m.expect("list").key)
                    .collect()
                    .await;
                let expected: Vec<ObjectKey> = model
                    .keys()
                    .filter(|k| k.as_str().starts_with(first))
                    .cloned()
                    .collect();
                assert_eq!(listed, expected, "list with prefix {first:?}");
            }
        }
        for key in keys {
            match store.delete(key).await {
                Ok(existed) => assert_eq!(
                    existed,
                    model.remove(key).is_some(),
                    "delete {key:?}: whether it was there"
                ),
                Err(e) => {
                    clean(&e, "delete", key);
                    assert!(!model.contains_key(key), "delete {key:?} failed: {e}");
                }
            }
            assert_eq!(head(store, key).await, None, "head {key:?} after delete");
        }
    }

    /// Every entry under the parent except the root, links not followed.
    fn outside(&self) -> Vec<Entry> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let mut stack = vec![self.parent.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read_dir") {
                let path = entry.expect("entry").path();
                if path == self.root {
                    continue;
                }
                let meta = std::fs::symlink_metadata(&path).expect("lstat");
                let ty = meta.file_type();
                let kind = if ty.is_symlink() {
                    "link"
                } else if ty.is_dir() {
                    stack.push(path.clone());
                    "dir"
                } else if ty.is_file() {
                    "file"
                } else {
                    "other"
                };
                out.push(Entry {
                    path: path
                        .strip_prefix(&self.parent)
                        .expect("below the parent")
                        .display()
                        .to_string(),
                    kind,
                    len: meta.len(),
                    mode: meta.mode(),
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                    content: ty.is_file().then(|| std::fs::read(&path).expect("read")),
                    link: ty
                        .is_symlink()
                        .then(|| std::fs::read_link(&path).expect("readlink")),
                });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// Checks that the input's deletes left no file in the root (no object, no temp file),
    /// then removes the directories its puts made.
    fn empty_root(&self) {
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read_dir") {
                let path = entry.expect("entry").path();
                let meta = std::fs::symlink_metadata(&path).expect("lstat");
                assert!(meta.is_dir(), "{} left in the root", path.display());
                stack.push(path);
            }
        }
        for entry in std::fs::read_dir(&self.root).expect("read the root") {
            let path = entry.expect("entry").path();
            let removed = if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.expect("empty the root");
        }
    }
}

/// The keys of an input: its lines that are UTF-8 object keys, at most [`MAX_KEYS`].
pub(crate) fn keys_of(input: &[u8]) -> Vec<ObjectKey> {
    input
        .split(|&b| b == b'\n')
        .take(MAX_KEYS)
        .filter_map(|line| std::str::from_utf8(line).ok())
        .filter_map(|line| ObjectKey::new(line).ok())
        .collect()
}

/// SPEC §6, independently of the store's code: a key that is absolute, or has an empty, `.`
/// or `..` segment, is rejected (NUL cannot be in an `ObjectKey` at all).
pub(crate) fn must_be_refused(key: &str) -> bool {
    key.starts_with('/')
        || key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
}

/// Fails when `e` hides a panic of the store's blocking work.
fn clean(e: &Error, op: &str, key: &ObjectKey) {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(join) = err.downcast_ref::<tokio::task::JoinError>() {
            assert!(!join.is_panic(), "{op} {key:?} panicked: {e}");
        }
        source = err.source();
    }
}

async fn head(store: &DirStore, key: &ObjectKey) -> Option<u64> {
    match store.head(key).await {
        Ok(meta) => meta.map(|m| m.size),
        Err(e) => {
            clean(&e, "head", key);
            None
        }
    }
}

async fn get(store: &DirStore, key: &ObjectKey) -> Option<Vec<u8>> {
    match store.get(key).await {
        Ok(object) => {
            let chunks: Vec<Bytes> = object
                .checked_body()
                .try_collect()
                .await
                .unwrap_or_else(|e| panic!("body of {key:?}: {e}"));
            Some(chunks.concat())
        }
        Err(e) => {
            clean(&e, "get", key);
            None
        }
    }
}
