//! What is particular to `DirStore`: key rules, links, temp files, sync strategies.

use std::path::Path;

use bytes::Bytes;
use ferry_store::{DirStore, Store, SyncStrategy, TEMP_PREFIX, body_from_bytes};
use ferry_store::{Error, ErrorKind};
use ferry_types::ObjectKey;

use crate::util::{key, keys, put, read};

fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            out.push(path.strip_prefix(root).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn keys_that_could_escape_the_root_are_rejected_before_touching_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let store = DirStore::open(&root).await.unwrap();
    let table = [
        ("../x", "'..' segment"),
        ("/abs", "absolute"),
        ("/", "absolute"),
        ("a//b", "empty segment"),
        ("a/./b", "'.' segment"),
        ("a/../b", "'..' segment"),
        ("..", "'..' segment"),
        (".", "'.' segment"),
        ("a/", "ends with '/'"),
        ("a\\..\\b", "backslash"),
        (".ferry-tmp-x", "reserved prefix"),
    ];
    for (text, reason) in table {
        let k = ObjectKey::new(text).unwrap();
        let body = body_from_bytes(Bytes::from_static(b"x"), 1);
        let errors = [
            store.put(&k, body).await.map(drop).unwrap_err(),
            store.get(&k).await.map(drop).unwrap_err(),
            store.head(&k).await.map(drop).unwrap_err(),
            store.delete(&k).await.map(drop).unwrap_err(),
        ];
        for err in errors {
            let Error::InvalidKey { key, reason: got } = &err else {
                panic!("{text}: {err}");
            };
            assert_eq!(key.as_str(), text);
            assert!(got.contains(reason), "{text}: {got}");
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
            assert_eq!(err.kind(), ErrorKind::Permanent);
        }
    }
    // NUL and empty keys cannot even be made.
    assert!(ObjectKey::new("a\0b").is_err());
    assert!(ObjectKey::new("").is_err());
    assert!(
        tree(dir.path()) == ["root"],
        "nothing created: {:?}",
        tree(dir.path())
    );
}

#[tokio::test]
async fn symlinks_inside_the_root_are_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"S").unwrap();
    let store = DirStore::open(&root).await.unwrap();
    std::os::unix::fs::symlink(&outside, root.join("dirlink")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), root.join("filelink")).unwrap();
    put(&store, "real/x", b"x").await;
    let unsafe_path = |r: Result<(), Error>| {
        let err = r.unwrap_err();
        assert!(matches!(err, Error::UnsafePath { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::Permanent);
    };

    unsafe_path(store.get(&key("dirlink/secret")).await.map(drop));
    unsafe_path(store.get(&key("filelink")).await.map(drop));
    unsafe_path(store.head(&key("dirlink/secret")).await.map(drop));
    unsafe_path(store.head(&key("filelink")).await.map(drop));
    unsafe_path(store.delete(&key("dirlink/secret")).await.map(drop));
    unsafe_path(store.delete(&key("filelink")).await.map(drop));
    let body = body_from_bytes(Bytes::from_static(b"evil"), 4);
    unsafe_path(store.put(&key("dirlink/new"), body).await.map(drop));
    let body = body_from_bytes(Bytes::from_static(b"evil"), 4);
    unsafe_path(store.put(&key("dirlink/secret"), body).await.map(drop));
    assert_eq!(
        keys(&store, "", None).await,
        ["real/x"],
        "links are not listed"
    );

    // A put onto a link's own name replaces the link, never writes through it.
    put(&store, "filelink", b"mine").await;
    assert_eq!(read(&store, "filelink").await.unwrap(), b"mine");
    assert!(
        !std::fs::symlink_metadata(root.join("filelink"))
            .unwrap()
            .is_symlink()
    );

    assert_eq!(
        std::fs::read(outside.join("secret")).unwrap(),
        b"S",
        "outside unchanged"
    );
    assert_eq!(tree(&outside), ["secret"], "nothing created outside");
}

#[tokio::test]
async fn temp_leftovers_are_never_listed_and_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = DirStore::open(root).await.unwrap();
    put(&store, "a/kept", b"k").await;
    // What a crash in the middle of puts leaves.
    std::fs::write(root.join(format!("{TEMP_PREFIX}1")), b"partial").unwrap();
    std::fs::write(root.join("a").join(format!("{TEMP_PREFIX}2")), b"partial").unwrap();
    std::fs::create_dir_all(root.join("deep/er")).unwrap();
    std::fs::write(root.join("deep/er").join(format!("{TEMP_PREFIX}3")), b"p").unwrap();
    assert_eq!(keys(&store, "", None).await, ["a/kept"]);
    let temp_key = key(&format!("a/{TEMP_PREFIX}2"));
    let err = store.get(&temp_key).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidKey { .. }),
        "temp files are not objects: {err}"
    );
    drop(store);

    let store = DirStore::open(root).await.unwrap();
    let left: Vec<String> = tree(root)
        .into_iter()
        .filter(|p| p.contains(TEMP_PREFIX))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(read(&store, "a/kept").await.unwrap(), b"k");
    // A failed put leaves no temp file either.
    let body: ferry_store::ByteStream = Box::pin(futures_util::stream::iter([
        Ok(Bytes::from_static(b"x")),
        Err(Error::NotFound { key: key("src") }),
    ]));
    assert!(store.put(&key("a/failed"), body).await.is_err());
    assert!(
        tree(root)
            .iter()
            .all(|p| !p.contains(TEMP_PREFIX) && !p.ends_with("failed"))
    );
}

#[tokio::test]
async fn a_key_under_an_object_is_a_permanent_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::open(dir.path()).await.unwrap();
    put(&store, "a", b"file").await;
    let body = body_from_bytes(Bytes::from_static(b"x"), 1);
    let err = store.put(&key("a/b"), body).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(store.head(&key("a/b")).await.unwrap(), None);
    // A directory is not an object.
    put(&store, "d/x", b"x").await;
    assert_eq!(store.head(&key("d")).await.unwrap(), None);
    assert!(store.get(&key("d")).await.unwrap_err().is_not_found());
    assert!(!store.delete(&key("d")).await.unwrap());
}

/// Hole G of the engine-wing review: after a failed sync the kernel has reported its
/// write-back error and forgotten it, so a later sync that succeeds says nothing of the
/// writes the failed one covered. The first failure poisons the store: every later sync
/// fails, and a commit can never delete a source on the word of a retried barrier (I1).
#[tokio::test]
async fn a_failed_sync_poisons_the_store_and_every_later_sync_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::open(dir.path())
        .await
        .unwrap()
        .with_sync_strategy(SyncStrategy::PerFileFsync);
    put(&store, "d/x", b"data").await;
    // Make the barrier fail once: the directory on the way to the file becomes a symbolic
    // link, which the store refuses to follow; then put it back as it was.
    let (d, moved) = (dir.path().join("d"), dir.path().join("moved"));
    std::fs::rename(&d, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &d).unwrap();
    let first = store.sync().await.unwrap_err();
    assert!(
        !matches!(first, Error::SyncPoisoned { .. }),
        "the first failure is the cause itself: {first}"
    );
    std::fs::remove_file(&d).unwrap();
    std::fs::rename(&moved, &d).unwrap();
    // Nothing is wrong with the tree any more, yet no sync may vouch for the write now.
    for _ in 0..2 {
        let err = store.sync().await.unwrap_err();
        assert!(matches!(err, Error::SyncPoisoned { .. }), "{err}");
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert!(err.to_string().contains("poisoned"), "{err}");
    }
    // Reads still work: the store refuses only to vouch for durability.
    assert_eq!(read(&store, "d/x").await.as_deref(), Some(&b"data"[..]));
    // A store opened afresh starts clean (the caller copies again what it cannot vouch for).
    let reopened = DirStore::open(dir.path()).await.unwrap();
    put(&reopened, "d/y", b"more").await;
    reopened.sync().await.unwrap();
}

#[tokio::test]
async fn every_sync_strategy_syncs_puts_and_deletes() {
    for strategy in [SyncStrategy::PerFileFsync, SyncStrategy::Syncfs] {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path())
            .await
            .unwrap()
            .with_sync_strategy(strategy);
        assert_eq!(store.sync_strategy(), strategy);
        for i in 0..40 {
            put(&store, &format!("s/{}/{i}", i % 4), b"data").await;
        }
        store.delete(&key("s/0/0")).await.unwrap();
        store.sync().await.unwrap();
        store.sync().await.unwrap();
        assert_eq!(keys(&store, "s/", None).await.len(), 39);
    }
    assert_eq!(
        SyncStrategy::default(),
        SyncStrategy::Syncfs,
        "the faster one measured"
    );
}

#[tokio::test]
async fn a_file_changed_in_place_while_read_is_an_error_not_a_cut_copy() {
    use futures_util::TryStreamExt;

    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::open(dir.path()).await.unwrap().with_chunk_size(4);
    let k = ObjectKey::new("log.txt").unwrap();
    std::fs::write(dir.path().join("log.txt"), b"0123456789").unwrap();
    for (change, what) in [(&b"0123456789abc"[..], "grew"), (&b"0123"[..], "shrank")] {
        let object = store.get(&k).await.unwrap();
        assert_eq!(object.meta.size, 10);
        // Written in place (not through the store) after the first chunk was read.
        std::fs::write(dir.path().join("log.txt"), change).unwrap();
        let read: Result<Vec<Bytes>, _> = object.checked_body().try_collect().await;
        assert!(read.is_err(), "a file that {what} while read: {read:?}");
        std::fs::write(dir.path().join("log.txt"), b"0123456789").unwrap();
    }
    // Unchanged, the same reads give the whole file in chunks of 4.
    let object = store.get(&k).await.unwrap();
    let chunks: Vec<Bytes> = object.checked_body().try_collect().await.unwrap();
    assert_eq!(chunks.iter().map(Bytes::len).collect::<Vec<_>>(), [4, 4, 2]);
    assert_eq!(chunks.concat(), b"0123456789");
}

/// A body of `chunks` whose last chunk waits for `release`; `reached` is notified when the
/// put asks for it, i.e. once it has created its temp file and written what came before.
fn held_body(
    chunks: Vec<Bytes>,
    reached: std::sync::Arc<tokio::sync::Notify>,
    release: tokio::sync::oneshot::Receiver<()>,
) -> ferry_store::ByteStream {
    use futures_util::StreamExt as _;
    let last = chunks.len() - 1;
    let mut release = Some(release);
    Box::pin(
        futures_util::stream::iter(chunks.into_iter().enumerate()).then(move |(i, chunk)| {
            let wait = (i == last).then(|| release.take()).flatten();
            let reached = std::sync::Arc::clone(&reached);
            async move {
                if let Some(wait) = wait {
                    reached.notify_one();
                    let _ = wait.await;
                }
                Ok::<_, Error>(chunk)
            }
        }),
    )
}

#[tokio::test]
async fn a_put_in_progress_shows_no_temp_name_with_unnamed_temp_files_and_one_without() {
    for named in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = DirStore::open(dir.path()).await.unwrap();
        if named {
            store = store.with_named_temp_files();
        }
        let store = std::sync::Arc::new(store);
        put(&*store, "a/b", b"old").await;
        let chunks: Vec<Bytes> = ["one-", "two-", "three"].map(Bytes::from).into();
        let reached = std::sync::Arc::new(tokio::sync::Notify::new());
        let (release, held) = tokio::sync::oneshot::channel();
        let body = held_body(chunks, std::sync::Arc::clone(&reached), held);
        let putting = {
            let store = std::sync::Arc::clone(&store);
            tokio::spawn(async move { store.put(&key("a/b"), body).await })
        };
        reached.notified().await;
        let temps: Vec<String> = tree(dir.path())
            .into_iter()
            .filter(|p| p.contains(TEMP_PREFIX))
            .collect();
        if cfg!(target_os = "linux") && !named {
            assert!(
                temps.is_empty(),
                "an unnamed temp file has a name: {temps:?}"
            );
        } else {
            assert_eq!(temps.len(), 1, "{temps:?}");
        }
        // Readers still see the old object while the put runs.
        assert_eq!(read(&*store, "a/b").await.as_deref(), Some(&b"old"[..]));
        release.send(()).unwrap();
        putting.await.unwrap().unwrap();
        assert_eq!(
            read(&*store, "a/b").await.as_deref(),
            Some(&b"one-two-three"[..])
        );
        assert_eq!(tree(dir.path()), ["a", "a/b"], "named: {named}");
    }
}

#[tokio::test]
async fn put_reports_the_blake3_of_what_it_wrote_and_head_reports_none() {
    for named in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut store = DirStore::open(dir.path()).await.unwrap();
        if named {
            store = store.with_named_temp_files();
        }
        // One chunk (written in the same trip as the create), several, and none.
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for (len, chunk) in [(5, 64), (data.len(), 4096), (0, 1)] {
            let body = body_from_bytes(Bytes::copy_from_slice(&data[..len]), chunk);
            let meta = store.put(&key("sum/a"), body).await.unwrap();
            assert_eq!(meta.size, len as u64);
            assert_eq!(
                meta.checksum,
                Some(ferry_store::Checksum::Blake3(
                    *blake3::hash(&data[..len]).as_bytes()
                )),
                "{len} bytes, named temps: {named}"
            );
            let head = store.head(&key("sum/a")).await.unwrap().unwrap();
            assert_eq!(head.checksum, None);
        }
    }
}
