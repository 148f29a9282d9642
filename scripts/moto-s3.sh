#!/usr/bin/env bash
# The S3 tests against a second, independent S3 implementation: moto's server (PyPI), which
# this script installs into target/moto-venv (once), starts on a free loopback port, and
# stops when the tests end. `.ci/run` calls it after the workspace tests; run it by hand the
# same way. Needs python3 with venv and network access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
MOTO_VERSION=5.2.5
venv=target/moto-venv
if [ ! -x "$venv/bin/moto_server" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$venv/bin/moto_server" -p "$port" >target/moto-server.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
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
            sys.exit("moto_server did not start: see target/moto-server.log")
        time.sleep(0.1)
PY
FERRY_TEST_S3_ENDPOINT="http://127.0.0.1:$port" \
    cargo test -p ferry-object-store --test external_s3 -- --nocapture

# The `ferry` command end to end against the same server: a tree up to a bucket and back.
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
python3 - "$port" "$work" <<'PY'
import http.client, os, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
conn.request("PUT", "/ferry-cli")
assert conn.getresponse().status == 200, "cannot create the bucket"
root = sys.argv[2] + "/tree"
for rel, size in [("a/b/c.bin", 3 << 20), ("empty", 0), ("with space/ünï.txt", 1000), (".dot", 7)]:
    os.makedirs(os.path.dirname(os.path.join(root, rel)) or root, exist_ok=True)
    with open(os.path.join(root, rel), "wb") as f:
        f.write(os.urandom(size))
PY
cargo build --quiet -p ferry-cli
ferry=target/debug/ferry
export FERRY_STATE="$work/state" AWS_ENDPOINT="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true \
    AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=ferry-test AWS_SECRET_ACCESS_KEY=ferry-test
unset AWS_CA_BUNDLE
"$ferry" migrate "$work/tree" s3://ferry-cli/up
"$ferry" migrate s3://ferry-cli/up s3://ferry-cli/across
"$ferry" migrate s3://ferry-cli/across "$work/back"
diff -r "$work/tree" "$work/back"
echo "moto: ferry migrate dir -> s3 -> s3 -> dir: identical"

# Two workers share one job through a state bucket on the same server (conditional writes).
"$ferry" submit "$work/tree" "$work/shared" --state s3://ferry-cli/state --id moto --ranges 2
"$ferry" worker --state s3://ferry-cli/state --lease 3s &
first=$!
"$ferry" worker --state s3://ferry-cli/state --lease 3s
wait "$first"
diff -r "$work/tree" "$work/shared"
echo "moto: ferry submit + two ferry workers, state in a bucket: identical"
