"""The test's scaffolding: trees of known content, and waiting on the gateway and its job.
Part of scripts/gateway-clients.sh (see ledger.py)."""

import json
import os
import random
import re
import subprocess
import sys
import time

from common import MiB, PART, content, fail, load, version


def make_tree(args):
    rng = random.Random(args.seed)
    manifest = {}
    names = ["with space", "ünï", "plus+sign"]
    for i in range(args.files):
        depth = rng.choice([0, 1, 1, 2, 2, 3])
        parts = [f"d{rng.randrange(4)}" for _ in range(depth)]
        name = f"f{i:04d}.bin"
        if i < len(names):
            parts, name = ["odd"], f"{names[i]} {i}.txt"
        key = "/".join(parts + [name])
        r = rng.random()
        if i % 17 == 0:
            size = 0
        elif r < 0.6:
            size = rng.randrange(1, 16 << 10)
        elif r < 0.9:
            size = rng.randrange(16 << 10, 512 << 10)
        else:
            size = rng.randrange(min(512 << 10, args.max_size), args.max_size + 1)
        seed = args.seed * 1_000_003 + i
        manifest[key] = version(seed, size, kind="tree")
        path = os.path.join(args.dir, *key.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content(seed, size))
    if args.big:
        # One file above the clients' multipart threshold (5 MiB): two parts.
        key, seed = "big/multipart.bin", args.seed * 1_000_003 + 999_999
        manifest[key] = version(seed, PART + 1 * MiB, kind="tree")
        # Uploaded by the aws CLI, in 5 MiB parts: the ETag of a two-part upload.
        manifest[key]["multipart_etag"] = version(seed, PART + 1 * MiB, parts=2)["etag"]
        os.makedirs(os.path.join(args.dir, "big"), exist_ok=True)
        with open(os.path.join(args.dir, "big", "multipart.bin"), "wb") as f:
            f.write(content(seed, PART + 1 * MiB))
    with open(args.manifest, "w") as f:
        json.dump(manifest, f, indent=0, sort_keys=True)
    total = sum(v["size"] for v in manifest.values())
    print(f"{len(manifest)} files, {total} bytes")

def wait_url(args):
    deadline = time.monotonic() + args.deadline
    pattern = re.compile(r"^http://127\.0\.0\.1:\d+$")
    while True:
        try:
            with open(args.stdout) as f:
                for line in f:
                    if pattern.match(line.strip()):
                        print(line.strip())
                        return
        except FileNotFoundError:
            pass
        if not alive(args.pid):
            fail(f"the gateway exited before printing its URL: see {args.stderr}")
        if time.monotonic() > deadline:
            fail(f"the gateway printed no URL in {args.deadline} s: see {args.stdout}, {args.stderr}")
        time.sleep(0.05)

def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by the shell) is dead too.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False

def job_status(ferry, state, job):
    out = subprocess.run([ferry, "--state", state, "status", job, "--json"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr.strip()
    return json.loads(out.stdout), None

def wait_job(args):
    deadline = time.monotonic() + args.deadline
    last, err = None, None
    while True:
        status, err = job_status(args.ferry, args.state, args.id)
        if status is not None:
            last = status
            s = status["status"]
            if args.completed and s == "completed_with_errors":
                # Finished: the caller checks the end state, then reports the failed objects.
                print(json.dumps(status))
                sys.exit(3)
            if s in ("failed", "cancelled", "completed_with_errors"):
                fail(f"job {args.id} is {s}: {json.dumps(status)[:2000]} (gateway stderr: {args.stderr})")
            if args.completed and s == "completed":
                print(json.dumps(status))
                return
            if args.or_file and os.path.exists(args.or_file):
                return
            if args.done_bytes is not None and status["done_bytes"] >= args.done_bytes:
                print(json.dumps(status))
                return
            if args.done_bytes is not None and s == "completed":
                fail(f"job {args.id} completed before {args.done_bytes} bytes were moved "
                     f"(moved {status['done_bytes']}): the clients did not run during the move; "
                     f"lower the rate")
        if args.or_file and os.path.exists(args.or_file):
            return
        if args.pid and not alive(args.pid):
            fail(f"the gateway died: see {args.stderr}")
        if time.monotonic() > deadline:
            want = "completed" if args.completed else f"{args.done_bytes} bytes moved"
            fail(f"job {args.id} not {want} after {args.deadline} s; last status: "
                 f"{json.dumps(last)[:2000] if last else err}")
        time.sleep(0.25)

def failed(args):
    """The failed objects of a `ferry status --json` answer, shortly."""
    status = load(args.status)
    items = status.get("failed") or []
    print(f"{status.get('failed_objects', len(items))}: " + "; ".join(f"{f['key']!r}: {f['error'][:300]}" for f in items[:3]))
