#!/usr/bin/env python3
"""The boto3 side of scripts/gateway-clients.sh: trees of known content, clients that keep a
ledger of acknowledged operations against an S3 endpoint, and the checks of the end state.

Subcommands (each exits non-zero with a message naming the key on any mismatch):
  make-tree DIR MANIFEST --files N --max-size BYTES --seed S
      Writes N files of known content (nested directories, mixed sizes, a few names with a
      space, non-ASCII letters or '+') and MANIFEST, a JSON map key -> version.
  wait-url STDOUT PID
      Waits for the gateway (process PID) to print its URL on a line of STDOUT; prints it.
  wait-job --ferry BIN --state DIR --id ID [--done-bytes N | --completed] --pid PID
      Polls `ferry status ID --json` until the job has moved N bytes, or has completed.
  run --endpoint URL --bucket B --manifest M --workers W --stop FILE --ledger OUT
      W boto3 clients (threads), each the only writer of its keys: some of the tree's files
      and new keys, doing put (single and multipart), get (whole and ranged), head, copy,
      delete, delete-objects, list (v1 and v2, paginated, with delimiter), multipart
      create/upload-part/list-parts/complete/abort, checking every answer against the ledger
      as they go, until FILE exists. The ledger (the last acknowledged state of every key
      they wrote) is written to OUT.
  verify --endpoint URL --bucket B --manifest M --ledger L --tree PREFIX=MANIFEST...
         --src DIR|s3://BUCKET/PREFIX --dst DIR|s3://BUCKET/PREFIX
      After the job: every key reads back as the ledger says, the listing is exactly the live
      keys, SRC holds nothing, DST holds every live key with its content.

An operation whose answer never came (connection refused or reset, timeout, a 5xx) is
"unknown": the client retries it, with the same content, until it is acknowledged, so the
ledger stays exact. A 5xx is also reported as a failure: the gateway must not answer one.
"""

import argparse
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import threading
import time

MiB = 1 << 20
PART = 5 * MiB  # S3's smallest part but the last
RETRY_SECS = 90  # how long a client retries an operation before giving up on the gateway


def content(seed, size):
    """The bytes of a version: a function of its seed and size, so nothing is kept."""
    return random.Random(seed).randbytes(size)


def version(seed, size, kind="put", parts=None):
    """A version of an object as the ledger records it."""
    data = content(seed, size)
    v = {"seed": seed, "size": size, "sha256": hashlib.sha256(data).hexdigest(),
         "md5": hashlib.md5(data).hexdigest(), "kind": kind}
    if parts:
        digests = b"".join(hashlib.md5(data[o:o + PART]).digest() for o in range(0, size, PART))
        v["etag"] = f"{hashlib.md5(digests).hexdigest()}-{parts}"
    else:
        v["etag"] = v["md5"]
    return v


def describe(v):
    if v is None:
        return "absent"
    return f"{v['kind']} of {v['size']} bytes sha256 {v['sha256'][:12]}"


def fail(msg):
    sys.exit(f"gateway-clients: {msg}")


# ---------------------------------------------------------------------------- make-tree

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
        os.makedirs(os.path.join(args.dir, "big"), exist_ok=True)
        with open(os.path.join(args.dir, "big", "multipart.bin"), "wb") as f:
            f.write(content(seed, PART + 1 * MiB))
    with open(args.manifest, "w") as f:
        json.dump(manifest, f, indent=0, sort_keys=True)
    total = sum(v["size"] for v in manifest.values())
    print(f"{len(manifest)} files, {total} bytes")


# ---------------------------------------------------------------------------- waiting

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


# ---------------------------------------------------------------------------- clients

def s3_client(endpoint, key_id, secret):
    import boto3
    from botocore.config import Config
    # No retries in botocore: every failed attempt reaches the ledger, which retries itself.
    config = Config(region_name="us-east-1", signature_version="s3v4",
                    s3={"addressing_style": "path"},
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    connect_timeout=5, read_timeout=60, max_pool_connections=4)
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, aws_access_key_id=key_id,
        aws_secret_access_key=secret, config=config)


def code_of(e):
    from botocore.exceptions import ClientError
    if isinstance(e, ClientError):
        return e.response.get("Error", {}).get("Code", ""), \
            e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return "", 0


def no_response(e):
    """Whether an exception means the answer never came (the outcome is unknown)."""
    import botocore.exceptions as be
    import urllib3.exceptions as ue
    from boto3.exceptions import S3UploadFailedError
    if isinstance(e, (be.ConnectionError, be.HTTPClientError, be.IncompleteReadError,
                      ue.HTTPError, ConnectionError, TimeoutError)):
        return True
    if isinstance(e, S3UploadFailedError):
        return True  # the multipart helper's wrapper; its cause is one of the above or a 5xx
    return False


class Failures:
    """Mismatches seen by the clients, printed as they happen."""

    def __init__(self, log):
        self.lock = threading.Lock()
        self.items = []
        self.log = log

    def add(self, msg):
        with self.lock:
            self.items.append(msg)
            print(f"MISMATCH: {msg}", file=sys.stderr, flush=True)
            self.log.write(json.dumps({"t": round(time.time(), 3), "mismatch": msg}) + "\n")


class Worker(threading.Thread):
    def __init__(self, n, args, owned, untouched, manifest, failures, log):
        super().__init__(name=f"w{n}", daemon=True)
        self.n, self.args = n, args
        self.c = s3_client(args.endpoint, args.key_id, args.secret)
        self.bucket = args.bucket
        self.rng = random.Random(args.seed * 7919 + n)
        # The ledger: key -> last acknowledged version (None: deleted or never written).
        self.state = {k: manifest[k] for k in owned}
        self.state.update({k: None for k in new_keys(n, args.new_keys, manifest)})
        self.untouched, self.manifest = untouched, manifest
        self.failures, self.log = failures, log
        self.counter = 0
        self.ops = {}
        self.unknown = 0
        self.server_errors = 0
        self.outages = 0
        self.swept = 0
        self.stopped = threading.Event()

    # -- plumbing

    def record(self, op, key, outcome):
        self.log.write(json.dumps({"t": round(time.time(), 3), "w": self.n, "op": op,
                                   "key": key, "outcome": outcome}) + "\n")

    def call(self, op, key, fn, expect_codes=()):
        """Runs fn until it gets an answer: its result, or the ClientError whose code is in
        expect_codes (returned, not raised). No answer (connection error, 5xx): unknown,
        retried after a short pause while the gateway restarts."""
        from botocore.exceptions import ClientError
        deadline = time.monotonic() + RETRY_SECS
        while True:
            try:
                r = fn()
                self.ops[op] = self.ops.get(op, 0) + 1
                self.record(op, key, "ok")
                return r
            except ClientError as e:
                code, status = code_of(e)
                if code in expect_codes or str(status) in expect_codes:
                    self.ops[op] = self.ops.get(op, 0) + 1
                    self.record(op, key, code or str(status))
                    return e
                if status < 500:
                    raise
                self.server_errors += 1
                self.failures.add(f"{op} {key!r}: the gateway answered {status} {code}: {e}")
                self.record(op, key, f"server error {status} {code}")
            except Exception as e:  # noqa: BLE001 - sorted by no_response
                if not no_response(e):
                    raise
                self.outages += 1
                self.record(op, key, f"unknown: {type(e).__name__}: {e}")
            self.unknown += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"{op} {key!r}: no answer from the gateway for {RETRY_SECS} s")
            time.sleep(0.2)

    def set(self, key, v):
        """An acknowledged write: the key's new state in the ledger."""
        self.state[key] = v
        self.record("state", key, describe(v))

    def new_seed(self):
        self.counter += 1
        return (self.args.seed * 1000 + self.n) * 1_000_000 + self.counter

    def mine(self):
        return self.rng.choice(sorted(self.state))

    # -- checks

    def check_get(self, key, expected, why="get"):
        def get():
            try:
                r = self.c.get_object(Bucket=self.bucket, Key=key)
            except Exception as e:  # noqa: BLE001
                if code_of(e)[0] in ("NoSuchKey", "404"):
                    return None
                raise
            return r["Body"].read()
        from botocore.exceptions import FlexibleChecksumError
        try:
            data = self.call("get", key, get)
        except FlexibleChecksumError as e:
            self.failures.add(f"{why} {key!r}: the body does not match the checksum the server "
                              f"sent with it ({e}); expected {describe(expected)}")
            return
        if expected is None:
            if data is not None:
                self.failures.add(f"{why} {key!r}: expected absent (last acknowledged op a delete), "
                                  f"got {len(data)} bytes sha256 {hashlib.sha256(data).hexdigest()[:12]}")
            return
        if data is None:
            self.failures.add(f"{why} {key!r}: expected {describe(expected)}, got 404")
        elif hashlib.sha256(data).hexdigest() != expected["sha256"]:
            self.failures.add(f"{why} {key!r}: expected {describe(expected)}, got {len(data)} bytes "
                              f"sha256 {hashlib.sha256(data).hexdigest()[:12]}")

    def check_range(self, key, expected):
        if expected is None or expected["size"] == 0:
            return self.check_get(key, expected, "range get")
        size = expected["size"]
        a = self.rng.randrange(size)
        b = min(size - 1, a + self.rng.randrange(1, 256 << 10))
        r = self.call("range get", key,
                      lambda: self.c.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={a}-{b}")["Body"].read(),
                      expect_codes=("NoSuchKey",))
        want = content(expected["seed"], size)[a:b + 1]
        if not isinstance(r, bytes):
            self.failures.add(f"range get {key!r} bytes={a}-{b}: expected {describe(expected)}, got 404")
        elif r != want:
            self.failures.add(f"range get {key!r} bytes={a}-{b}: expected {len(want)} bytes of "
                              f"{describe(expected)}, got {len(r)} other bytes")

    def check_head(self, key, expected):
        r = self.call("head", key, lambda: self.c.head_object(Bucket=self.bucket, Key=key),
                      expect_codes=("404", "NoSuchKey"))
        if not isinstance(r, dict):
            if expected is not None:
                self.failures.add(f"head {key!r}: expected {describe(expected)}, got 404")
            return
        if expected is None:
            self.failures.add(f"head {key!r}: expected absent, got {r['ContentLength']} bytes")
            return
        problem = head_mismatch(r, expected)
        if problem:
            self.failures.add(f"head {key!r}: {problem}")

    def check_listing(self):
        """A full listing (v2 or v1, pages of a random size): keys in order, each once; this
        client's keys exactly as its ledger says; the untouched files of the tree present."""
        v1 = self.rng.random() < 0.3
        page = self.rng.choice([7, 50, 1000])
        keys = self.call("list", "", lambda: list_keys(self.c, self.bucket, page=page, v1=v1))
        if keys != sorted(set(keys)):
            self.failures.add(f"list (v{'1' if v1 else '2'}, pages of {page}): keys out of order or "
                              f"listed twice: {first_disorder(keys)}")
        listed = set(keys)
        for key, v in self.state.items():
            if (key in listed) != (v is not None):
                self.failures.add(f"list (v{'1' if v1 else '2'}, pages of {page}): {key!r} "
                                  f"{'listed' if key in listed else 'missing'}, its ledger says "
                                  f"{describe(v)}")
        for key in self.untouched:
            if key not in listed:
                self.failures.add(f"list (v{'1' if v1 else '2'}): untouched tree file {key!r} missing")

    def check_delimited(self):
        """A listing of one directory of this client's new keys with delimiter '/'."""
        prefix = f"{self.rng.choice(dirs_of(self.state))}"
        r = self.call("list", prefix, lambda: list_dir(self.c, self.bucket, prefix))
        files, _ = r
        for key, v in self.state.items():
            if key.startswith(prefix) and "/" not in key[len(prefix):]:
                if (key in files) != (v is not None):
                    self.failures.add(f"list prefix {prefix!r} delimiter '/': {key!r} "
                                      f"{'listed' if key in files else 'missing'}, its ledger says {describe(v)}")

    def sweep(self):
        """After the gateway came back: every key of this client reads as its ledger says."""
        self.swept += 1
        for key in sorted(self.state):
            self.check_get(key, self.state[key], "get after the restart")

    # -- writes

    def put(self, key):
        size = self.rng.choice([0, self.rng.randrange(1, 64 << 10), self.rng.randrange(64 << 10, 1 << 20)])
        v = version(self.new_seed(), size)
        data = content(v["seed"], size)
        r = self.call("put", key, lambda: self.c.put_object(Bucket=self.bucket, Key=key, Body=data))
        self.set(key, v)
        if r.get("ETag", "").strip('"') != v["md5"]:
            self.failures.add(f"put {key!r}: ETag {r.get('ETag')} is not the MD5 of the content ({v['md5']})")

    def put_transfer(self, key):
        """boto3's managed upload above its multipart threshold (set low): a multipart upload."""
        import io
        from boto3.s3.transfer import TransferConfig
        size = PART + self.rng.randrange(1, 2 * MiB)
        v = version(self.new_seed(), size, parts=2)
        data = content(v["seed"], size)
        cfg = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=2,
                             use_threads=True)
        self.call("upload_fileobj", key,
                  lambda: self.c.upload_fileobj(io.BytesIO(data), self.bucket, key, Config=cfg))
        self.set(key, v)

    def multipart(self, key, abort=False):
        """create / upload part / list parts / complete (or abort), by hand."""
        size = PART + self.rng.randrange(0, 3 * MiB)
        n = (size + PART - 1) // PART
        v = version(self.new_seed(), size, parts=n)
        data = content(v["seed"], size)
        for _ in range(5):
            outages = self.outages
            up = self.call("create multipart", key,
                           lambda: self.c.create_multipart_upload(Bucket=self.bucket, Key=key))
            uid = up["UploadId"]
            parts, lost = [], None
            for i in range(n):
                body = data[i * PART:(i + 1) * PART]
                r = self.call("upload part", key, lambda: self.c.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=uid, PartNumber=i + 1, Body=body),
                    expect_codes=("NoSuchUpload",))
                if not isinstance(r, dict):
                    lost = "upload part"
                    break
                if r["ETag"].strip('"') != hashlib.md5(body).hexdigest():
                    self.failures.add(f"upload part {i + 1} of {key!r}: ETag {r['ETag']} is not the part's MD5")
                parts.append({"PartNumber": i + 1, "ETag": r["ETag"]})
            if lost is None:
                r = self.call("list parts", key, lambda: self.c.list_parts(
                    Bucket=self.bucket, Key=key, UploadId=uid), expect_codes=("NoSuchUpload",))
                if not isinstance(r, dict):
                    lost = "list parts"
                else:
                    got = [(p.get("PartNumber"), p.get("ETag"), p.get("Size")) for p in r.get("Parts", [])]
                    want = [(p["PartNumber"], p["ETag"], len(data[i * PART:(i + 1) * PART]))
                            for i, p in enumerate(parts)]
                    if got != want:
                        self.failures.add(f"list parts of {key!r}: {got} is not the parts uploaded {want}")
            if lost is None and abort:
                self.call("abort multipart", key, lambda: self.c.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=uid), expect_codes=("NoSuchUpload",))
                return
            if lost is None:
                before = self.outages
                r = self.call("complete multipart", key, lambda: self.c.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": parts}),
                    expect_codes=("NoSuchUpload",))
                if isinstance(r, dict):
                    self.set(key, v)
                    if r.get("ETag", "").strip('"') != v["etag"]:
                        self.failures.add(f"complete multipart {key!r}: ETag {r.get('ETag')}, "
                                          f"expected {v['etag']} (MD5 of the parts' MD5s, -{n})")
                    return
                if self.outages != before:
                    # The complete whose answer was lost may have been done: the retry finds
                    # the upload gone. Do it again with the same content.
                    continue
                lost = "complete multipart"
            if self.outages != outages:
                self.failures.add(f"{lost} {key!r}: the multipart upload created before the gateway "
                                  f"restarted is gone after it (NoSuchUpload)")
            else:
                self.failures.add(f"{lost} {key!r}: NoSuchUpload for an upload just created")
            if abort:
                return
        raise RuntimeError(f"multipart upload of {key!r}: gave up after 5 tries")

    def delete(self, key):
        self.call("delete", key, lambda: self.c.delete_object(Bucket=self.bucket, Key=key))
        self.set(key, None)

    def delete_many(self):
        keys = self.rng.sample(sorted(self.state), k=min(len(self.state), self.rng.randrange(2, 5)))
        r = self.call("delete objects", ",".join(keys), lambda: self.c.delete_objects(
            Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys]}))
        for e in r.get("Errors", []):
            self.failures.add(f"delete objects: {e.get('Key')!r}: {e.get('Code')} {e.get('Message')}")
        deleted = {d["Key"] for d in r.get("Deleted", [])}
        for k in keys:
            if k in deleted:
                self.set(k, None)
            elif not r.get("Errors"):
                self.failures.add(f"delete objects: {k!r} neither deleted nor in error")

    def copy(self, key):
        src = self.mine()
        if src == key:
            return
        r = self.call("copy", f"{src} -> {key}", lambda: self.c.copy_object(
            Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": src}),
            expect_codes=("NoSuchKey", "404"))
        before = self.state[src]
        if isinstance(r, dict):
            if before is None:
                self.failures.add(f"copy {src!r} -> {key!r}: succeeded, but the source's last "
                                  f"acknowledged op was a delete")
                return
            self.set(key, dict(before, kind="copy", etag=before["md5"], source_etag=before["etag"]))
        elif before is not None:
            self.failures.add(f"copy {src!r} -> {key!r}: NoSuchKey, but the source is {describe(before)}")

    # -- the loop

    def step(self):
        from botocore.exceptions import ClientError
        r = self.rng.random()
        key = self.mine()
        try:
            self.do(r, key)
        except ClientError as e:
            # A refused request changed nothing (S3's rule): the ledger stands.
            self.failures.add(f"{key!r}: {e}")
        if len(self.failures.items) > 100:
            raise RuntimeError("more than 100 mismatches: stopping")

    def do(self, r, key):
        if r < 0.22:
            self.put(key)
        elif r < 0.25:
            self.put_transfer(key)
        elif r < 0.28:
            self.multipart(key)
        elif r < 0.30:
            self.multipart(key, abort=True)
        elif r < 0.48:
            self.check_get(key, self.state[key])
        elif r < 0.56:
            k = self.rng.choice(self.untouched) if self.untouched else key
            self.check_get(k, self.manifest.get(k, self.state.get(k)), "get untouched")
        elif r < 0.62:
            self.check_range(key, self.state[key])
        elif r < 0.68:
            self.check_head(key, self.state[key])
        elif r < 0.78:
            self.delete(key)
        elif r < 0.81:
            self.delete_many()
        elif r < 0.88:
            self.copy(key)
        elif r < 0.94:
            self.check_listing()
        else:
            self.check_delimited()

    def run(self):
        try:
            while not os.path.exists(self.args.stop):
                seen = self.outages
                self.step()
                if self.outages != seen:
                    self.sweep()
        except Exception as e:  # noqa: BLE001 - reported as a failure of the run
            import traceback
            self.failures.add(f"client w{self.n} stopped: {type(e).__name__}: {e}\n{traceback.format_exc()}")
        finally:
            self.stopped.set()


def new_keys(n, count, manifest):
    """Keys no tree file has: some beside the tree's files (in its directories), some under
    a prefix of their own."""
    dirs = sorted({k.rsplit("/", 1)[0] for k in manifest if "/" in k})
    keys = []
    for j in range(count):
        if j % 2 == 0 and dirs:
            keys.append(f"{dirs[(n * 7 + j) % len(dirs)]}/n{n}-{j}.dat")
        else:
            keys.append(f"ledger/w{n}/k{j}" + (" sp" if j % 5 == 1 else ""))
    return keys


def dirs_of(state):
    return sorted({k.rsplit("/", 1)[0] + "/" for k in state if "/" in k})


def list_keys(c, bucket, prefix="", page=1000, v1=False):
    keys = []
    if v1:
        marker = {}  # no marker on the first page, as clients do
        while True:
            r = c.list_objects(Bucket=bucket, Prefix=prefix, MaxKeys=page, **marker)
            got = [o["Key"] for o in r.get("Contents", [])]
            keys += got
            if not r.get("IsTruncated"):
                return keys
            marker = {"Marker": r.get("NextMarker") or got[-1]}
    token = None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        r = c.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=page, **kw)
        keys += [o["Key"] for o in r.get("Contents", [])]
        if not r.get("IsTruncated"):
            return keys
        token = r["NextContinuationToken"]


def list_dir(c, bucket, prefix):
    files, dirs, token = set(), set(), None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        r = c.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/", MaxKeys=5, **kw)
        files |= {o["Key"] for o in r.get("Contents", [])}
        dirs |= {p["Prefix"] for p in r.get("CommonPrefixes", [])}
        if not r.get("IsTruncated"):
            return files, dirs
        token = r["NextContinuationToken"]


def first_disorder(keys):
    for a, b in zip(keys, keys[1:]):
        if a >= b:
            return f"{a!r} then {b!r}"
    return "?"


def head_mismatch(r, expected):
    if r["ContentLength"] != expected["size"]:
        return f"size {r['ContentLength']}, expected {describe(expected)}"
    etag = r.get("ETag", "").strip('"')
    allowed = {expected["etag"]}
    if "-" in expected["etag"]:
        # A multipart upload's ETag (MD5 of the parts' MD5s, -N) may become the MD5 of the
        # content once the object moved: the gateway keeps no record of the parts.
        allowed.add(expected["md5"])
    if expected["kind"] == "copy":
        allowed.add(expected.get("source_etag", expected["md5"]))
    if etag not in allowed:
        return f"ETag {etag}, expected {' or '.join(sorted(allowed))} ({describe(expected)})"
    return None


def run(args):
    manifest = load(args.manifest)
    keys = sorted(manifest)
    # Every other file of the tree is left alone (moved, read, never written); the others
    # are shared out, one writer each.
    untouched = keys[0::2]
    touched = keys[1::2]
    log = open(args.ledger + ".log", "w", buffering=1)
    failures = Failures(log)
    workers = [Worker(n, args, touched[n::args.workers], untouched, manifest, failures, log)
               for n in range(args.workers)]
    started = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    ops, unknown, server, outages, sweeps = {}, 0, 0, 0, 0
    state = {}
    for w in workers:
        for op, count in w.ops.items():
            ops[op] = ops.get(op, 0) + count
        unknown += w.unknown
        server += w.server_errors
        outages += w.outages
        sweeps += w.swept
        state.update(w.state)
    with open(args.ledger, "w") as f:
        json.dump({"state": state, "untouched": untouched, "ops": ops, "unknown": unknown,
                   "failures": failures.items}, f, indent=0, sort_keys=True)
    total = sum(ops.values())
    print(f"ledger: {args.workers} boto3 clients, {total} acknowledged operations in "
          f"{time.monotonic() - started:.0f} s ({', '.join(f'{k} {v}' for k, v in sorted(ops.items()))}); "
          f"{unknown} without answer, retried; {sweeps} sweeps after an outage; "
          f"{len(failures.items)} mismatches")
    if failures.items:
        fail(f"{len(failures.items)} mismatches during the run; the first: {failures.items[0]} "
             f"(operations in {args.ledger}.log)")


def load(path):
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------- verify

def store_listing(spec):
    """Every object of a directory or s3://bucket/prefix: key -> sha256."""
    if spec.startswith("s3://"):
        bucket, _, prefix = spec[5:].partition("/")
        from botocore.handlers import set_list_objects_encoding_type_url
        c = s3_client(os.environ["AWS_ENDPOINT"], os.environ["AWS_ACCESS_KEY_ID"],
                      os.environ["AWS_SECRET_ACCESS_KEY"])
        # Keys as they are: the in-process server (s3s-fs) url-encodes a '+' as itself,
        # which boto3's decoding turns into a space.
        for op in ("ListObjects", "ListObjectsV2"):
            c.meta.events.unregister(f"before-parameter-build.s3.{op}",
                                     set_list_objects_encoding_type_url)
        out = {}
        for key in list_keys(c, bucket, prefix):
            body = c.get_object(Bucket=bucket, Key=key)["Body"].read()
            out[key[len(prefix):]] = hashlib.sha256(body).hexdigest()
        return out
    out = {}
    for root, _, files in os.walk(spec):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, spec)] = hashlib.file_digest(f, "sha256").hexdigest()
    return out


def verify(args):
    ledger = load(args.ledger)
    manifest = load(args.manifest)
    expected = {k: manifest[k] for k in ledger["untouched"]}
    deleted = []
    for k, v in ledger["state"].items():
        if v is None:
            deleted.append(k)
        else:
            expected[k] = v
    for spec in args.tree:
        prefix, _, path = spec.partition("=")
        for k, v in load(path).items():
            expected[prefix + k] = v
    problems = []
    c = s3_client(args.endpoint, args.key_id, args.secret)

    def get(key):
        from botocore.exceptions import FlexibleChecksumError
        try:
            return c.get_object(Bucket=args.bucket, Key=key)["Body"].read()
        except FlexibleChecksumError as e:
            problems.append(f"get {key!r}: the body does not match the checksum the server sent "
                            f"with it ({e})")
            return False
        except Exception as e:  # noqa: BLE001
            if code_of(e)[0] in ("NoSuchKey", "404"):
                return None
            raise

    # 1. Every key reads back as the ledger says (GET and HEAD), through the gateway.
    for key in sorted(expected):
        v = expected[key]
        data = get(key)
        if data is False:
            continue
        if data is None:
            problems.append(f"get {key!r}: 404, expected {describe(v)}")
            continue
        if hashlib.sha256(data).hexdigest() != v["sha256"]:
            problems.append(f"get {key!r}: {len(data)} bytes sha256 "
                            f"{hashlib.sha256(data).hexdigest()[:12]}, expected {describe(v)}")
        try:
            problem = head_mismatch(c.head_object(Bucket=args.bucket, Key=key), v)
        except Exception as e:  # noqa: BLE001
            problem = f"{type(e).__name__}: {e}"
        if problem:
            problems.append(f"head {key!r}: {problem}")
    for key in sorted(deleted):
        data = get(key)
        if isinstance(data, bytes):
            problems.append(f"get {key!r}: {len(data)} bytes, expected absent (deleted)")

    # 2. The listing is exactly the live keys, whatever the page size, v2 and v1.
    for page, v1 in [(1000, False), (37, False), (53, True)]:
        keys = list_keys(c, args.bucket, page=page, v1=v1)
        name = f"list v{'1' if v1 else '2'} pages of {page}"
        if keys != sorted(set(keys)):
            problems.append(f"{name}: out of order or twice: {first_disorder(keys)}")
        for key in sorted(set(keys) - set(expected)):
            problems.append(f"{name}: {key!r} listed, but it is not live "
                            f"({'deleted' if key in deleted else 'never written'})")
        for key in sorted(set(expected) - set(keys)):
            problems.append(f"{name}: {key!r} missing ({describe(expected[key])})")
    files, dirs = list_dir(c, args.bucket, "")
    want_dirs = {k.split("/", 1)[0] + "/" for k in expected if "/" in k}
    want_files = {k for k in expected if "/" not in k}
    if files != want_files or dirs != want_dirs:
        problems.append(f"list delimiter '/': files {sorted(files)} dirs {sorted(dirs)}, "
                        f"expected {sorted(want_files)} {sorted(want_dirs)}")

    # 3. SRC holds nothing; DST holds every live key with its content, and nothing else.
    if args.src:
        for key in sorted(store_listing(args.src)):
            problems.append(f"SRC {args.src} still holds {key!r}")
    dst = store_listing(args.dst) if args.dst else {k: v["sha256"] for k, v in expected.items()}
    for key in sorted(expected):
        if key not in dst:
            problems.append(f"DST {args.dst} lacks {key!r} ({describe(expected[key])})")
        elif dst[key] != expected[key]["sha256"]:
            problems.append(f"DST {args.dst} holds {key!r} with sha256 {dst[key][:12]}, "
                            f"expected {describe(expected[key])}")
    for key in sorted(set(dst) - set(expected)):
        problems.append(f"DST {args.dst} holds {key!r}, which is not live")

    for p in problems[:50]:
        print(f"MISMATCH: {p}", file=sys.stderr)
    if problems:
        fail(f"{len(problems)} mismatches after the job completed; the first: {problems[0]}")
    print(f"verify: {len(expected)} live keys read back as acknowledged, {len(deleted)} deleted "
          f"keys absent; listings exact"
          + (f"; SRC empty" if args.src else "")
          + (f"; DST holds the {len(expected)} live keys" if args.dst else ""))


# ---------------------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("make-tree")
    t.add_argument("dir")
    t.add_argument("manifest")
    t.add_argument("--files", type=int, required=True)
    t.add_argument("--max-size", type=int, required=True)
    t.add_argument("--seed", type=int, required=True)
    t.add_argument("--big", action="store_true", help="add one file of 6 MiB")

    u = sub.add_parser("wait-url")
    u.add_argument("stdout")
    u.add_argument("stderr")
    u.add_argument("pid", type=int)
    u.add_argument("--deadline", type=float, default=60)

    j = sub.add_parser("wait-job")
    j.add_argument("--ferry", required=True)
    j.add_argument("--state", required=True)
    j.add_argument("--id", required=True)
    j.add_argument("--pid", type=int, default=0)
    j.add_argument("--stderr", default="?")
    j.add_argument("--done-bytes", type=int)
    j.add_argument("--completed", action="store_true")
    j.add_argument("--or-file", help="return as well when this file exists")
    j.add_argument("--deadline", type=float, default=300)

    f = sub.add_parser("failed")
    f.add_argument("status")

    for name in ("run", "verify"):
        s = sub.add_parser(name)
        s.add_argument("--endpoint", required=True)
        s.add_argument("--bucket", required=True)
        s.add_argument("--manifest", required=True)
        s.add_argument("--ledger", required=True)
        s.add_argument("--key-id", default=os.environ.get("FERRY_ACCESS_KEY_ID"))
        s.add_argument("--secret", default=os.environ.get("FERRY_SECRET_ACCESS_KEY"))
        if name == "run":
            s.add_argument("--workers", type=int, default=4)
            s.add_argument("--new-keys", type=int, default=10, help="new keys per client")
            s.add_argument("--stop", required=True)
            s.add_argument("--seed", type=int, default=1)
        else:
            s.add_argument("--tree", action="append", default=[])
            s.add_argument("--src", help="omitted: SRC is not checked (a plain S3 server)")
            s.add_argument("--dst", help="omitted: DST is not checked (a plain S3 server)")

    args = p.parse_args()
    {"make-tree": make_tree, "wait-url": wait_url, "wait-job": wait_job, "failed": failed,
     "run": run, "verify": verify}[args.cmd](args)


if __name__ == "__main__":
    main()
