#!/usr/bin/env bash
# The az:// tests against Azurite, Azure Storage's emulator (npm), which this script installs
# into target/azurite (once, versions pinned in scripts/azurite/package.json), starts on a free
# loopback port with in-memory storage, and stops when the tests end. `.ci/run` calls it after
# the workspace tests; run it by hand the same way. Needs node and npm with access to the npm
# registry.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/azurite
mkdir -p "$dir"
if ! cmp -s scripts/azurite/package.json "$dir/package.json" || [ ! -x "$dir/node_modules/.bin/azurite-blob" ]; then
    cp scripts/azurite/package.json "$dir/package.json"
    (cd "$dir" && npm install --no-audit --no-fund --silent --no-package-lock)
fi
cp scripts/azurite/create-container.js "$dir/"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$dir/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$port" \
    --inMemoryPersistence --skipApiVersionCheck --silent >target/azurite.log 2>&1 &
server=$!
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
url="http://127.0.0.1:$port"
# Wait (at most 30 s) until it accepts connections.
python3 - "$port" <<'PY'
import socket, sys, time
deadline = time.monotonic() + 30
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("azurite did not start: see target/azurite.log")
        time.sleep(0.1)
PY
node "$dir/create-container.js" "$url" ferry-tests
node "$dir/create-container.js" "$url" ferry-cli

# object_store's Azure client talks to the emulator with these (its well-known account).
export AZURE_STORAGE_USE_EMULATOR=true AZURITE_BLOB_STORAGE_URL="$url"
FERRY_TEST_AZURITE=1 cargo test -p ferry-object-store --features azure --test external_azure -- --nocapture

# The `ferry` command end to end: a tree to a container and back, then a job shared by two
# workers with its state in the container (conditional writes on Azure).
python3 - "$work" <<'PY'
import os, sys
root = sys.argv[1] + "/tree"
for rel, size in [("a/b/c.bin", 3 << 20), ("empty", 0), ("with space/ünï.txt", 1000), (".dot", 7)]:
    os.makedirs(os.path.dirname(os.path.join(root, rel)) or root, exist_ok=True)
    with open(os.path.join(root, rel), "wb") as f:
        f.write(os.urandom(size))
PY
cargo build --quiet -p ferry-cli
ferry=target/debug/ferry
export FERRY_STATE="$work/state"
"$ferry" migrate "$work/tree" az://ferry-cli/up
"$ferry" migrate az://ferry-cli/up "$work/back"
diff -r "$work/tree" "$work/back"
echo "azurite: ferry migrate dir -> az -> dir: identical"
"$ferry" submit "$work/tree" az://ferry-cli/shared --state az://ferry-cli/state --id az --ranges 2
"$ferry" worker --state az://ferry-cli/state --lease 3s &
first=$!
"$ferry" worker --state az://ferry-cli/state --lease 3s
wait "$first"
"$ferry" migrate az://ferry-cli/shared "$work/shared"
diff -r "$work/tree" "$work/shared"
echo "azurite: ferry submit + two ferry workers, state in a container: identical"
