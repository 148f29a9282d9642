//! `DirStore` never leaves its root through a symbolic link (SPEC §6: a key must never escape
//! the root; issue #7, hostile input). The root holds links to outside it — to a file, to a
//! directory, in a middle segment, relative and absolute, to `/`, and loops — and every
//! operation on keys through them (get, head, put, delete, list) is shown to read and write
//! nothing outside: the files and directories outside have known contents and mtimes, which
//! stay as they were, and no operation returns their bytes or lists their names.

#![cfg(unix)]
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use ferry_store::Error;
use ferry_store::{DirStore, Store, body_from_bytes};
use ferry_types::ObjectKey;
use futures_util::{StreamExt, TryStreamExt};

const SECRET: &[u8] = b"outside the root: never to be read";

/// A fixed, old mtime for everything outside, so that any write shows.
fn old_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000)
}

/// `<tmp>/outside` (files and a subdirectory), `<tmp>/sentinel`, and `<tmp>/root` with links.
struct Tree {
    _dir: tempfile::TempDir,
    parent: PathBuf,
    root: PathBuf,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().canonicalize().unwrap();
        let (root, outside) = (parent.join("root"), parent.join("outside"));
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::fs::create_dir_all(root.join("mid")).unwrap();
        for file in [
            parent.join("sentinel"),
            outside.join("secret"),
            outside.join("sub/deep"),
        ] {
            std::fs::write(&file, SECRET).unwrap();
        }
        // Links to outside, in every shape.
        symlink(outside.join("secret"), root.join("filelink")).unwrap();
        symlink(&outside, root.join("dirlink")).unwrap();
        symlink("../outside", root.join("rellink")).unwrap();
        symlink("../../outside", root.join("mid/link")).unwrap();
        symlink("/", root.join("slash")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        symlink("loopb", root.join("loopa")).unwrap();
        symlink("loopa", root.join("loopb")).unwrap();
        symlink(outside.join("absent"), root.join("dangling")).unwrap();
        // Old mtimes outside, set last (creating entries changes their directory's mtime).
        for path in [
            outside.join("sub/deep"),
            outside.join("secret"),
            parent.join("sentinel"),
            outside.join("sub"),
            outside.clone(),
        ] {
            std::fs::File::open(&path)
                .unwrap()
                .set_modified(old_time())
                .unwrap();
        }
        Tree {
            _dir: dir,
            parent,
            root,
        }
    }

    /// Everything outside the root: path → (kind, content, mtime, inode), links not followed.
    fn outside(&self) -> BTreeMap<PathBuf, (String, Vec<u8>, i64, i64, u64)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![self.parent.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path == self.root {
                    continue;
                }
                let meta = std::fs::symlink_metadata(&path).unwrap();
                let content = if meta.is_file() {
                    std::fs::read(&path).unwrap()
                } else {
                    Vec::new()
                };
                if meta.is_dir() {
                    stack.push(path.clone());
                }
                let kind = format!("{:?}", meta.file_type());
                let stamp = (meta.mtime(), meta.mtime_nsec(), meta.ino());
                out.insert(path, (kind, content, stamp.0, stamp.1, stamp.2));
            }
        }
        out
    }

    /// Checks that outside is as `Tree::new` made it.
    fn assert_outside_untouched(
        &self,
        before: &BTreeMap<PathBuf, (String, Vec<u8>, i64, i64, u64)>,
    ) {
        assert_eq!(
            &self.outside(),
            before,
            "something outside the root changed"
        );
        let old = old_time().duration_since(SystemTime::UNIX_EPOCH).unwrap();
        for file in [
            "sentinel",
            "outside/secret",
            "outside/sub/deep",
            "outside/sub",
            "outside",
        ] {
            let meta = std::fs::symlink_metadata(self.parent.join(file)).unwrap();
            assert_eq!(meta.mtime(), old.as_secs() as i64, "{file}: mtime changed");
            if meta.is_file() {
                assert_eq!(
                    std::fs::read(self.parent.join(file)).unwrap(),
                    SECRET,
                    "{file}"
                );
            }
        }
        assert_eq!(
            std::fs::read_dir(self.parent.join("outside"))
                .unwrap()
                .count(),
            2,
            "a new entry outside"
        );
    }
}

fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap()
}

/// The keys that go through a link to outside (on the way or as the final name).
fn through_links(tree: &Tree) -> Vec<String> {
    let parent = tree.parent.to_str().unwrap().trim_start_matches('/');
    vec![
        "filelink".into(),
        "dirlink/secret".into(),
        "dirlink/sub/deep".into(),
        "rellink/secret".into(),
        "mid/link/secret".into(),
        "mid/link/sub/deep".into(),
        "slash/etc/passwd".into(),
        // Through `/` back to this very tree: were it followed, it would reach the secret.
        format!("slash/{parent}/outside/secret"),
        format!("slash/{parent}/sentinel"),
        "loop".into(),
        "loop/x".into(),
        "loopa/x".into(),
        "dangling".into(),
    ]
}

/// Reads a key to the end; `Some` only if the store returned content.
async fn read(store: &DirStore, k: &ObjectKey) -> Result<Vec<u8>, Error> {
    let object = store.get(k).await?;
    let chunks: Vec<Bytes> = object.checked_body().try_collect().await?;
    Ok(chunks.concat())
}

async fn listing(store: &DirStore, prefix: &str) -> Vec<String> {
    store
        .list(prefix, None)
        .map(|m| m.unwrap().key.as_str().to_owned())
        .collect()
        .await
}

#[tokio::test]
async fn reads_through_links_to_outside_the_root_are_refused_and_return_nothing() {
    let tree = Tree::new();
    let before = tree.outside();
    let store = DirStore::open(&tree.root).await.unwrap();
    for k in through_links(&tree) {
        let k = key(&k);
        match read(&store, &k).await {
            Ok(bytes) => panic!("get {k:?} read {} bytes through a link", bytes.len()),
            // A dangling link as the final name is refused like any link; nothing to read.
            Err(e) => assert!(
                matches!(e, Error::UnsafePath { .. }),
                "get {k:?}: {e} (expected a refused link)"
            ),
        }
        match store.head(&k).await {
            Ok(Some(meta)) => panic!("head {k:?} saw {} bytes through a link", meta.size),
            Ok(None) => panic!("head {k:?} answered absent instead of refusing the link"),
            Err(e) => assert!(matches!(e, Error::UnsafePath { .. }), "head {k:?}: {e}"),
        }
    }
    tree.assert_outside_untouched(&before);
}

#[tokio::test]
async fn writes_and_deletes_through_links_change_nothing_outside_the_root() {
    let tree = Tree::new();
    let before = tree.outside();
    let store = DirStore::open(&tree.root).await.unwrap();
    let parent = tree
        .parent
        .to_str()
        .unwrap()
        .trim_start_matches('/')
        .to_owned();
    // Keys whose directories go through a link: the put is refused.
    for k in [
        "dirlink/secret".to_owned(),
        "dirlink/planted".to_owned(),
        "dirlink/sub/planted".to_owned(),
        "rellink/planted".to_owned(),
        "mid/link/planted".to_owned(),
        "mid/link/newdir/planted".to_owned(),
        format!("slash/{parent}/outside/planted"),
        format!("slash/{parent}/sentinel"),
        "loop/x".to_owned(),
        "loopa/x".to_owned(),
        "dangling/x".to_owned(),
    ] {
        let k = key(&k);
        let body = body_from_bytes(Bytes::from_static(b"planted"), 3);
        let err = store.put(&k, body).await.map(drop).unwrap_err();
        assert!(matches!(err, Error::UnsafePath { .. }), "put {k:?}: {err}");
    }
    for k in through_links(&tree) {
        let k = key(&k);
        let err = store.delete(&k).await.unwrap_err();
        assert!(
            matches!(err, Error::UnsafePath { .. }),
            "delete {k:?}: {err}"
        );
    }
    // The links themselves are still there: a refused delete removed nothing.
    for link in [
        "filelink", "dirlink", "rellink", "mid/link", "slash", "loop", "dangling",
    ] {
        let meta = std::fs::symlink_metadata(tree.root.join(link)).unwrap();
        assert!(meta.is_symlink(), "{link} is gone");
    }
    // A put onto a link's own name replaces the link in the root; its target is untouched.
    for name in ["filelink", "dangling", "loop"] {
        let body = body_from_bytes(Bytes::from_static(b"mine"), 2);
        store.put(&key(name), body).await.unwrap();
        assert_eq!(read(&store, &key(name)).await.unwrap(), b"mine");
        assert!(
            !std::fs::symlink_metadata(tree.root.join(name))
                .unwrap()
                .is_symlink()
        );
    }
    assert!(
        !tree.parent.join("outside/absent").exists(),
        "a put onto a dangling link created its target"
    );
    store.sync().await.unwrap();
    tree.assert_outside_untouched(&before);
}

#[tokio::test]
async fn listings_never_include_anything_outside_the_root() {
    let tree = Tree::new();
    let before = tree.outside();
    let store = DirStore::open(&tree.root).await.unwrap();
    for k in ["mid/real", "real/x", "z"] {
        let body = body_from_bytes(Bytes::from_static(b"in"), 2);
        store.put(&key(k), body).await.unwrap();
    }
    assert_eq!(listing(&store, "").await, ["mid/real", "real/x", "z"]);
    for prefix in [
        "dirlink", "dirlink/", "rellink/", "mid/link", "slash", "slash/", "loop", "filelink",
    ] {
        assert_eq!(
            listing(&store, prefix).await,
            Vec::<String>::new(),
            "prefix {prefix:?}"
        );
    }
    assert_eq!(listing(&store, "mid/").await, ["mid/real"]);
    tree.assert_outside_untouched(&before);
}

/// The checks above can fail: the same helpers see a write through a link made by hand.
#[test]
fn the_outside_check_notices_a_write_through_a_link() {
    let tree = Tree::new();
    let before = tree.outside();
    std::fs::write(tree.root.join("dirlink/planted"), b"x").unwrap();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tree.assert_outside_untouched(&before)
    }));
    assert!(run.is_err(), "a file planted outside went unnoticed");

    let tree = Tree::new();
    let before = tree.outside();
    // Same content, same size: only the mtime tells.
    std::fs::write(tree.root.join("filelink"), SECRET).unwrap();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tree.assert_outside_untouched(&before)
    }));
    assert!(run.is_err(), "a rewrite of the secret went unnoticed");
}
