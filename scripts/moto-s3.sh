#!/usr/bin/env bash
# The S3 tests against a second, independent S3 implementation: moto's server (PyPI), which
# this script installs into target/moto-venv (pinned with every dependency and hashed in
# scripts/moto/requirements.txt; made anew when that file changes), starts on a free loopback
# port, and stops when the tests end. `.ci/run` calls it after the workspace tests; run it by
# hand the same way. Needs python3 (3.11-3.13) with venv and network access to PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/moto-venv
requirements=scripts/moto/requirements.txt
if ! cmp -s "$requirements" "$venv/requirements.installed" || [ ! -x "$venv/bin/moto_server" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        --require-hashes --only-binary=:all: -r "$requirements"
    cp "$requirements" "$venv/requirements.installed"
fi
. scripts/lib.sh
port=$(free_port)
"$venv/bin/moto_server" -p "$port" >target/moto-server.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
wait_port "$port" target/moto-server.log
FERRY_TEST_S3_ENDPOINT="http://127.0.0.1:$port" \
    cargo test -p ferry-object-store --test external_s3 -- --nocapture

# The `ferry` command end to end against the same server (ferry_end_to_end in lib.sh).
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
python3 - "$port" <<'PY'
import http.client, sys
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
conn.request("PUT", "/ferry-cli")
assert conn.getresponse().status == 200, "cannot create the bucket"
PY
small_tree "$work/tree"
cargo build --quiet -p ferry-cli
ferry=target/debug/ferry
export FERRY_STATE="$work/state" AWS_ENDPOINT="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true \
    AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=ferry-test AWS_SECRET_ACCESS_KEY=ferry-test
unset AWS_CA_BUNDLE
ferry_end_to_end "$ferry" "$work" s3://ferry-cli
