#!/usr/bin/env bash
# `ferry serve` under real S3 clients while the objects move (issue 17's test with real
# clients; scripts/s3-clients/README.md says more). Twice: SRC and DST as directories, then as
# buckets of the in-process S3 server (the s3_server example). Each time: `ferry serve` over a
# SRC tree moved slowly; at the same time boto3 clients keeping a ledger of acknowledged
# operations, `aws s3 cp --recursive` and `rclone copy` + `rclone check` rounds; the gateway
# SIGKILLed mid-run and restarted on the same port; then, once the job completed, the ledger
# key by key, the listing against the live keys, SRC empty, DST complete.
#
#   scripts/gateway-clients.sh [--bounded]
#
# --bounded: a smaller tree and fewer clients (CI). Uses ${FERRY_BIN:-target/debug/ferry}
# (built by cargo when FERRY_BIN is not set) and installs the clients (scripts/s3-clients.sh).
# Prints one line per scenario; exits non-zero naming the key on any mismatch, and keeps its
# scratch directory (logs, ledger, the gateway's stderr) for a look.
set -euo pipefail
cd "$(dirname "$0")/.."
bounded=false
case "${1:-}" in
    --bounded) bounded=true ;;
    "") ;;
    *) echo "usage: scripts/gateway-clients.sh [--bounded]" >&2; exit 2 ;;
esac
started=$SECONDS

target=${CARGO_TARGET_DIR:-target}
if [ -z "${FERRY_BIN:-}" ]; then
    cargo build --quiet -p ferry-cli
fi
ferry=$(realpath "${FERRY_BIN:-$target/debug/ferry}")
# (Always: cargo only rebuilds what changed, and a stale server would test old code.)
cargo build --quiet -p ferry-object-store --features test-server --example s3_server
s3_server=$(realpath "$target/debug/examples/s3_server")
bin=$(scripts/s3-clients.sh | tail -n 1)
py="$bin/python"
ledger="$PWD/scripts/s3-clients/ledger.py"

work=$(mktemp -d -t gateway-clients.XXXXXX)
pids=()
# Stops what this shell started: the clients end at the stop file, the rest by their ids.
stop_started() {
    [ -z "${stop:-}" ] || touch "$stop" 2>/dev/null || true
    for pid in "${pids[@]}"; do
        pkill -P "$pid" 2>/dev/null || true
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
cleanup() {
    local status=$?
    stop_started
    if [ "$status" = 0 ]; then
        rm -rf "$work"
    else
        echo "gateway-clients: failed; logs, ledger and the gateway's output are in $work" >&2
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() {
    echo "gateway-clients: $*" >&2
    for f in "${sc:-$work/*}"/gw.*.err; do
        [ -s "$f" ] && { echo "--- last lines of $f:" >&2; tail -n 20 "$f" >&2; }
    done
    exit 1
}

# The clients talk to the gateway with these; nothing of the user's AWS or rclone setup is
# read (AWS_* stay for `ferry`, which reads them for s3:// URLs).
export FERRY_ACCESS_KEY_ID=${FERRY_ACCESS_KEY_ID:-gateway-clients}
export FERRY_SECRET_ACCESS_KEY=${FERRY_SECRET_ACCESS_KEY:-gateway-clients-secret}
cat >"$work/aws-config" <<'EOF'
[default]
region = us-east-1
s3 =
    multipart_threshold = 5MB
    multipart_chunksize = 5MB
    addressing_style = path
EOF
export AWS_CONFIG_FILE="$work/aws-config" AWS_SHARED_CREDENTIALS_FILE=/dev/null
export RCLONE_CONFIG="$work/rclone.conf"
touch "$RCLONE_CONFIG"
unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3 AWS_SESSION_TOKEN

if $bounded; then
    files=100 max_size=$((2 << 20)) workers=3 new_keys=8 move_secs=50 tree_files=8
else
    files=400 max_size=$((4 << 20)) workers=6 new_keys=12 move_secs=200 tree_files=16
fi

# One scenario: $1 names it (dir, s3), $2 and $3 are SRC and DST for `ferry serve`, and the
# tree of SRC ($4, with its manifest $4.json) is already in SRC. $5: what ends rclone's
# remote paths (see the s3 scenario).
scenario() {
    local name=$1 src=$2 dst=$3 manifest=$4.json slash=${5:-}
    sc="$work/$1" stop="$work/$1/stop" # (not local: the subshell's exit trap uses them)
    local t0=$SECONDS state="$sc/state" n=0 url port gw
    mkdir -p "$sc"
    # The tree's bytes, and those of the half the clients leave alone (what the progress
    # thresholds are taken from: the other half they overwrite and delete).
    local total untouched rate
    read -r total untouched < <("$py" -c '
import json, sys
m = json.load(open(sys.argv[1]))
keys = sorted(m)
print(sum(m[k]["size"] for k in keys), sum(m[k]["size"] for k in keys[0::2]))' "$manifest")
    rate="$(( total / move_secs / 1024 + 1 ))KiB"

    start_gateway() {
        n=$((n + 1))
        "$ferry" serve "$src" "$dst" --id gw --state "$state" --listen "$1" --bucket live \
            --rate "$rate" --cleanup after-verify >"$sc/gw.$n.out" 2>"$sc/gw.$n.err" &
        gw=$!
        pids+=("$gw")
        url=$("$py" "$ledger" wait-url "$sc/gw.$n.out" "$sc/gw.$n.err" "$gw") || die "$name: the gateway did not start"
    }
    wait_job() {
        "$py" "$ledger" wait-job --ferry "$ferry" --state "$state" --id gw --pid "$gw" \
            --stderr "$sc/gw.$n.err" "$@" >"$sc/status.json"
    }
    # --cli-read-timeout: the aws CLI's own copy of botocore (1.43.62 in awscli 1.46.3) keeps
    # a stale status line on a connection after a PUT with Expect: 100-continue that was
    # answered without 100 (the gateway does so for an empty body, as RFC 9110 allows): the
    # next such PUT on that connection waits for its read timeout (60 s by default), then
    # succeeds on retry.
    gw_aws() {
        AWS_ACCESS_KEY_ID="$FERRY_ACCESS_KEY_ID" AWS_SECRET_ACCESS_KEY="$FERRY_SECRET_ACCESS_KEY" \
            AWS_RETRY_MODE=standard AWS_MAX_ATTEMPTS=10 "$bin/aws" --endpoint-url "$url" \
            --cli-read-timeout 15 "$@"
    }
    gw_rclone() {
        # (Without AWS_CA_BUNDLE: rclone's S3 client refuses one with its HTTP transport.)
        env -u AWS_CA_BUNDLE RCLONE_CONFIG_GW_TYPE=s3 RCLONE_CONFIG_GW_PROVIDER=Other \
            RCLONE_CONFIG_GW_ENDPOINT="$url" RCLONE_CONFIG_GW_ACCESS_KEY_ID="$FERRY_ACCESS_KEY_ID" \
            RCLONE_CONFIG_GW_SECRET_ACCESS_KEY="$FERRY_SECRET_ACCESS_KEY" \
            RCLONE_CONFIG_GW_REGION=us-east-1 \
            rclone --s3-upload-cutoff 5M --s3-chunk-size 5M -q "$@"
    }
    # Rounds of one tool until the stop file, spread over the move (round r starts once a
    # tenth of the untouched bytes per round moved): each round into a prefix of its own,
    # retried whole (at most 5 times: a SIGKILL may cut one) until it succeeds. $1 names the
    # tool, the rest of the line is the round, run with $round set.
    rounds() {
        local tool=$1 round=0 try
        shift
        while [ ! -e "$stop" ]; do
            round=$((round + 1))
            if [ "$round" -gt 1 ]; then
                "$py" "$ledger" wait-job --ferry "$ferry" --state "$state" --id gw \
                    --done-bytes $((untouched * (round - 1) / 10)) --or-file "$stop" \
                    --deadline $((move_secs * 3)) >/dev/null || return 1
                [ ! -e "$stop" ] || break
            fi
            echo "$round" >"$sc/$tool.rounds"
            try=0
            until "$@" >>"$sc/$tool.log" 2>&1; do
                try=$((try + 1))
                echo "$tool: round $round failed (try $try)" >>"$sc/$tool.log"
                echo "$try" >>"$sc/$tool.retries"
                [ "$try" -lt 5 ] || { echo "$tool round $round failed 5 times: see $sc/$tool.log" >&2; return 1; }
            done
        done
    }
    aws_round() {
        gw_aws s3 cp --recursive --only-show-errors "$work/awstree" "s3://live/aws/r$round/" &&
            gw_aws s3 ls --recursive "s3://live/aws/r$round/" >"$sc/aws.ls" &&
            [ "$(wc -l <"$sc/aws.ls")" = "$(find "$work/awstree" -type f | wc -l)" ]
    }
    rclone_round() {
        gw_rclone copy "$work/rclonetree" "gw:live/rclone/r$round$slash" &&
            gw_rclone check "$work/rclonetree" "gw:live/rclone/r$round$slash"
    }

    start_gateway 127.0.0.1:0
    port=${url##*:}
    "$py" "$ledger" run --endpoint "$url" --bucket live --manifest "$manifest" \
        --ledger "$sc/ledger.json" --workers "$workers" --new-keys "$new_keys" --stop "$stop" \
        --seed "${FERRY_SEED:-$RANDOM}" >"$sc/ledger.out" 2>"$sc/ledger.err" &
    local boto=$!
    pids+=("$boto")
    rounds aws aws_round &
    local aws=$!
    pids+=("$aws")
    rounds rclone rclone_round &
    local rcl=$!
    pids+=("$rcl")

    # SIGKILL a fifth of the way, while the clients run; restart on the same port.
    wait_job --done-bytes $((untouched / 5)) --deadline $((move_secs * 2)) || die "$name: waiting for the job"
    kill -KILL "$gw"
    wait "$gw" 2>/dev/null || true
    start_gateway "127.0.0.1:$port"
    [ "$url" = "http://127.0.0.1:$port" ] || die "$name: restarted on $url, not on port $port"
    # The clients stop half way through the move.
    wait_job --done-bytes $((untouched / 2)) --deadline $((move_secs * 3)) || die "$name: waiting for the job"
    touch "$stop"
    # (Mismatches the clients saw are reported after the checks of the end state.)
    local during=""
    wait "$boto" || during=$(tail -n 1 "$sc/ledger.err" | sed "s/^gateway-clients: //")
    [ -s "$sc/ledger.json" ] || die "$name: the boto3 clients wrote no ledger: see $sc/ledger.err"
    wait "$aws" || die "$name: aws s3 cp failed: see $sc/aws.log"
    wait "$rcl" || die "$name: rclone failed: see $sc/rclone.log"

    # The rest of the move at full speed, then the checks of the end state.
    "$ferry" --state "$state" set-rate gw unlimited >/dev/null
    # (A job that completed with failed objects is reported after the checks of the end state.)
    local job=0
    wait_job --completed --deadline 300 || job=$?
    [ "$job" = 0 ] || [ "$job" = 3 ] || die "$name: waiting for the job"
    if [ "$job" = 3 ]; then
        during="${during:+$during; and }job gw completed with failed objects: $("$py" "$ledger" failed "$sc/status.json")"
    fi
    local trees=() i
    for i in $(seq 1 "$(cat "$sc/aws.rounds")"); do trees+=(--tree "aws/r$i/=$work/awstree.json"); done
    for i in $(seq 1 "$(cat "$sc/rclone.rounds")"); do trees+=(--tree "rclone/r$i/=$work/rclonetree.json"); done
    "$py" "$ledger" verify --endpoint "$url" --bucket live --manifest "$manifest" \
        --ledger "$sc/ledger.json" "${trees[@]}" --src "$src" --dst "$dst" >"$sc/verify.out" 2>"$sc/verify.err" ||
        die "$name: $(tail -n 1 "$sc/verify.err" | sed "s/^gateway-clients: //")${during:+; and during the run: $during}"
    [ -z "$during" ] || die "$name: $during"
    for i in $(seq 1 "$(cat "$sc/rclone.rounds")"); do
        gw_rclone check "$work/rclonetree" "gw:live/rclone/r$i$slash" 2>>"$sc/rclone.log" ||
            die "$name: rclone check of rclone/r$i/ after the job failed: see $sc/rclone.log"
    done
    gw_aws s3 cp --recursive --only-show-errors s3://live/aws/r1/ "$sc/aws-back" >>"$sc/aws.log" 2>&1 ||
        die "$name: aws s3 cp back of aws/r1/ failed: see $sc/aws.log"
    diff -r "$work/awstree" "$sc/aws-back" >&2 || die "$name: aws/r1/ read back differs from the tree uploaded"

    kill -TERM "$gw"
    wait "$gw" 2>/dev/null || true
    local retries=0
    [ -e "$sc/aws.retries" ] && retries=$(wc -l <"$sc/aws.retries")
    [ -e "$sc/rclone.retries" ] && retries=$((retries + $(wc -l <"$sc/rclone.retries")))
    echo "gateway-clients $name: $("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["done_objects"])' "$sc/status.json") objects of $src moved at $rate, one SIGKILL and restart;" \
        "$(sed 's/^ledger: //' "$sc/ledger.out");" \
        "$(cat "$sc/aws.rounds") aws s3 cp and $(cat "$sc/rclone.rounds") rclone copy+check rounds ($retries retried);" \
        "$(sed 's/^verify: //' "$sc/verify.out"); $((SECONDS - t0)) s"
}

# The trees the aws CLI and rclone upload (each with a 6 MiB file: a multipart upload).
"$py" "$ledger" make-tree "$work/awstree" "$work/awstree.json" --files "$tree_files" \
    --max-size $((1 << 20)) --seed 2 --big >/dev/null
"$py" "$ledger" make-tree "$work/rclonetree" "$work/rclonetree.json" --files "$tree_files" \
    --max-size $((1 << 20)) --seed 3 --big >/dev/null

# 1. Directories.
mkdir -p "$work/dir"
"$py" "$ledger" make-tree "$work/dir/src" "$work/dir/tree.json" --files "$files" \
    --max-size "$max_size" --seed 1 >/dev/null
failed=()
# A scenario runs in a subshell of its own, which stops what it started when it ends.
run_scenario() {
    (
        pids=()
        trap stop_started EXIT
        scenario "$@"
    ) || failed+=("$1")
}
run_scenario dir "$work/dir/src" "$work/dir/dst" "$work/dir/tree"

# 2. Buckets of the in-process S3 server (bounded either way), SRC seeded by `ferry migrate`.
if ! $bounded; then
    files=80 max_size=$((2 << 20)) workers=3 new_keys=8 move_secs=50
fi
mkdir -p "$work/s3"
mkfifo "$work/s3/server.stdin"
"$s3_server" src dst <"$work/s3/server.stdin" >"$work/s3/server.env" 2>"$work/s3/server.log" &
pids+=($!)
server=$!
exec 7>"$work/s3/server.stdin" # the server runs until this closes
deadline=$((SECONDS + 30))
until grep -q AWS_VIRTUAL_HOSTED_STYLE_REQUEST "$work/s3/server.env"; do
    [ "$SECONDS" -lt "$deadline" ] || die "the S3 server did not start: see $work/s3/server.log"
    sleep 0.1
done
. "$work/s3/server.env"
"$py" "$ledger" make-tree "$work/s3/seed" "$work/s3/tree.json" --files "$files" \
    --max-size "$max_size" --seed 4 >/dev/null
"$ferry" --state "$work/s3/seed-state" migrate "$work/s3/seed" s3://src/ --id seed >"$work/s3/seed.log" 2>&1 ||
    die "seeding s3://src/ failed: see $work/s3/seed.log"
# rclone's paths end with '/' here: without it rclone first HEADs the path itself
# (rclone/rN, a directory in s3s-fs's files), which s3s-fs answers with 500, not 404; the
# gateway passes that on as 503, and rclone retries it for minutes.
run_scenario s3 s3://src/ s3://dst/ "$work/s3/tree" /
exec 7>&-
wait "$server" || true

if [ "${#failed[@]}" != 0 ]; then
    echo "gateway-clients: FAILED: ${failed[*]} ($((SECONDS - started)) s)" >&2
    exit 1
fi
echo "gateway-clients: passed ($((SECONDS - started)) s)"
