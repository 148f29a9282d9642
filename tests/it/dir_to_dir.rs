//! A whole migration through the facade, on real disks: `DirStore` → `DirStore`, checkpoints in
//! a `FileStore`, checksum verify, cleanup after verify (SPEC I1), then a second engine started
//! on the same checkpoint directory finds the job finished and refuses to run it again.

use std::sync::Arc;

use ferry::Engine;
use ferry::checkpoint::FileStore;
use ferry::forwarding::{Route, Table};
use ferry::store::DirStore;
use ferry::types::{
    CleanupPolicy, JobId, JobStatus, MigrationPlan, NodeId, ObjectKey, ObjectSelection, VerifyMode,
};

fn content(i: usize) -> Vec<u8> {
    // Sizes from 0 bytes to a few chunks, so empty files and multi-chunk files both move.
    let len = (i * 7919) % (3 << 20);
    (0..len).map(|j| (j * 31 + i) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn i1_a_directory_tree_moves_byte_exact_and_its_sources_go_only_after() {
    let (src_dir, dst_dir, state) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    const N: usize = 60;
    let names: Vec<String> = (0..N)
        .map(|i| format!("tree/{}/file {i} ünï.bin", i % 5))
        .collect();
    for (i, name) in names.iter().enumerate() {
        let path = src_dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content(i)).unwrap();
    }
    let (src, dst) = (NodeId::new("src").unwrap(), NodeId::new("dst").unwrap());
    let table = Table::default();
    let engine = Engine::builder()
        .node(src, Arc::new(DirStore::open(src_dir.path()).await.unwrap()))
        .node(dst, Arc::new(DirStore::open(dst_dir.path()).await.unwrap()))
        .checkpoint_store(Arc::new(FileStore::open(state.path()).unwrap()))
        .forwarding(table.clone())
        .build()
        .unwrap();
    let id = JobId::new("tree-move").unwrap();
    let plan = MigrationPlan::new(src, dst, ObjectSelection::prefix("tree/"))
        .with_id(id.clone())
        .with_verify(VerifyMode::Checksum)
        .with_cleanup(CleanupPolicy::AfterVerify);
    let done = engine
        .start(plan.clone())
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.done_objects, N as u64);

    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            std::fs::read(dst_dir.path().join(name)).unwrap(),
            content(i),
            "{name} arrived byte-exact"
        );
        assert!(
            !src_dir.path().join(name).exists(),
            "{name} was cleaned from the source"
        );
        assert_eq!(table.route_read(name), Route::Target(dst));
    }
    let key = ObjectKey::new(&names[0]).unwrap();
    let dst_store = engine.node(&dst).unwrap();
    assert!(dst_store.head(&key).await.unwrap().is_some());

    // A finished job stays finished: starting it again is refused, nothing moves twice.
    let again = Engine::builder()
        .node(src, Arc::new(DirStore::open(src_dir.path()).await.unwrap()))
        .node(dst, Arc::new(DirStore::open(dst_dir.path()).await.unwrap()))
        .checkpoint_store(Arc::new(FileStore::open(state.path()).unwrap()))
        .build()
        .unwrap();
    assert!(again.start(plan).await.is_err());
    let listed = again.jobs(None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].status, JobStatus::Completed);
}
