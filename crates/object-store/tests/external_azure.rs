//! The store conformance checks and the checkpoint records' conditional writes against Azure
//! Blob Storage's emulator, Azurite (npm). `scripts/azurite.sh` (run by `.ci/run`) installs and
//! starts it, creates the container `ferry-tests`, and runs this with `FERRY_TEST_AZURITE=1`,
//! `AZURE_STORAGE_USE_EMULATOR=true` and `AZURITE_BLOB_STORAGE_URL` set, so `az://` URLs are
//! opened exactly as a user's are (object_store's `from_env`). Without them there is nothing to
//! talk to, and the test says so.
// Tests stop on the first unexpected error: unwrap and expect say where.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod records;

use std::sync::Arc;

use common::{ADAPTER, suite};
use ferry_object_store::{ObjectRecords, ObjectStoreAdapter};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_conforms_and_enforces_the_conditional_writes_of_checkpoint_records() {
    if std::env::var_os("FERRY_TEST_AZURITE").is_none() {
        eprintln!("FERRY_TEST_AZURITE is not set: no Azure emulator to test against (see .ci/run)");
        return;
    }
    let run = std::process::id();
    for prefix in [format!("run-{run}"), format!("run-{run}/some/prefix")] {
        let store = ObjectStoreAdapter::from_url(&format!("az://ferry-tests/{prefix}")).unwrap();
        // Azure gives every write a new ETag, and lists the ETags `head` gives.
        suite(Arc::new(store), ADAPTER).await;
    }
    let records = |name: &str| {
        ObjectRecords::from_url(&format!("az://ferry-tests/records-{run}/{name}")).unwrap()
    };
    records::conditional_writes_are_enforced(&records("writes")).await;
    records::i6_the_stale_worker_is_fenced(Arc::new(records("fenced"))).await;
}
