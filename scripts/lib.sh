# Helpers for the scripts that start a test server: source it.

# Prints a free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits (at most 30 s) until 127.0.0.1:$1 accepts connections; else fails naming the log $2.
wait_port() {
    python3 - "$1" "$2" <<'PY'
import socket, sys, time
deadline = time.monotonic() + 30
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(f"the server did not start: see {sys.argv[2]}")
        time.sleep(0.1)
PY
}

# Writes a small tree as users have it under $1: a nested 3 MiB file, an empty file, a name
# with a space and non-ASCII letters, a dotfile.
small_tree() {
    python3 - "$1" <<'PY'
import os, sys
root = sys.argv[1]
for rel, size in [("a/b/c.bin", 3 << 20), ("empty", 0), ("with space/ünï.txt", 1000), (".dot", 7)]:
    os.makedirs(os.path.dirname(os.path.join(root, rel)) or root, exist_ok=True)
    with open(os.path.join(root, rel), "wb") as f:
        f.write(os.urandom(size))
PY
}

# The `ferry` command ($1) end to end against a bucket URL prefix ($3), with a scratch
# directory ($2) holding `tree`: the tree up to the bucket, across to another prefix and back;
# `ferry check` of the tree against the bucket (a match) and of the bucket against a changed
# copy (one difference); then a job shared by two workers with its state in the bucket
# (conditional writes), fetched back; each result compared with the tree by `diff -r`.
ferry_end_to_end() {
    local ferry=$1 work=$2 remote=$3
    "$ferry" migrate "$work/tree" "$remote/up"
    "$ferry" migrate "$remote/up" "$remote/across"
    "$ferry" migrate "$remote/across" "$work/back"
    diff -r "$work/tree" "$work/back"
    echo "$remote: ferry migrate dir -> bucket -> bucket -> dir: identical"
    "$ferry" check -q "$work/tree" "$remote/across"
    echo "f" > "$work/back/empty"
    if "$ferry" check -q "$remote/across" "$work/back" > "$work/differences"; then
        echo "ferry check found no difference where there is one" >&2
        return 1
    fi
    grep -qx "different: empty (size 0 vs 2)" "$work/differences"
    echo "$remote: ferry check dir <-> bucket: a match (exit 0), then the one difference named (exit 1)"
    "$ferry" submit "$work/tree" "$remote/shared" --state "$remote/state" --id e2e --ranges 2
    "$ferry" worker --state "$remote/state" --lease 3s &
    local first=$!
    "$ferry" worker --state "$remote/state" --lease 3s
    wait "$first"
    "$ferry" migrate "$remote/shared" "$work/shared"
    diff -r "$work/tree" "$work/shared"
    echo "$remote: ferry submit + two ferry workers, state in the bucket: identical"
}
