#!/usr/bin/env bash
# The az:// tests against Azurite, Azure Storage's emulator (npm), which this script installs
# into target/azurite (with `npm ci`: every package's version and integrity hash pinned in the
# committed scripts/azurite/package-lock.json; installed anew when it changes), starts on a
# free loopback port with in-memory storage, and stops when the tests end. `.ci/run` calls it
# after the workspace tests; run it by hand the same way. Needs node and npm with access to
# the npm registry. To update: change package.json, then `npm install --package-lock-only` in
# scripts/azurite.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/azurite
mkdir -p "$dir"
if ! cmp -s scripts/azurite/package-lock.json "$dir/package-lock.json" || [ ! -x "$dir/node_modules/.bin/azurite-blob" ]; then
    cp scripts/azurite/package.json scripts/azurite/package-lock.json "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --silent)
fi
cp scripts/azurite/create-container.js "$dir/"
. scripts/lib.sh
port=$(free_port)
"$dir/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$port" \
    --inMemoryPersistence --skipApiVersionCheck --silent >target/azurite.log 2>&1 &
server=$!
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
url="http://127.0.0.1:$port"
wait_port "$port" target/azurite.log
node "$dir/create-container.js" "$url" ferry-tests
node "$dir/create-container.js" "$url" ferry-cli

# object_store's Azure client talks to the emulator with these (its well-known account).
export AZURE_STORAGE_USE_EMULATOR=true AZURITE_BLOB_STORAGE_URL="$url"
FERRY_TEST_AZURITE=1 cargo test -p ferry-object-store --features azure --test external_azure -- --nocapture

# The `ferry` command end to end (ferry_end_to_end in lib.sh): a tree to a container and
# back, and a job shared by two workers with its state there (conditional writes on Azure).
small_tree "$work/tree"
cargo build --quiet -p ferry-cli
ferry=target/debug/ferry
export FERRY_STATE="$work/state"
ferry_end_to_end "$ferry" "$work" az://ferry-cli
