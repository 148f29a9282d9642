#!/usr/bin/env python3
"""The boto3 side of scripts/gateway-clients.sh: trees of known content, clients that keep a
ledger of acknowledged operations against an S3 endpoint, and the checks of the end state.

Subcommands (each exits non-zero with a message naming the key on any mismatch):
  make-tree DIR MANIFEST --files N --max-size BYTES --seed S
      Writes N files of known content (nested directories, mixed sizes, a few names with a
      space, non-ASCII letters or '+') and MANIFEST, a JSON map key -> version.
  wait-url STDOUT STDERR PID
      Waits for the gateway (process PID) to print its URL on a line of STDOUT; prints it.
  wait-job --ferry BIN --state DIR --id ID [--done-bytes N | --completed] --pid PID
      Polls `ferry status ID --json` until the job has moved N bytes, or has completed
      (exit 3: completed with failed objects).
  failed STATUS_JSON
      The failed objects of a status, in a line.
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

`run` is here; make-tree, wait-url, wait-job and failed are in harness.py, verify in
endstate.py, and what they share in common.py.
"""

import argparse
import hashlib
import json
import os
import random
import sys
import threading
import time

from common import (MiB, PART, code_of, content, describe, fail, first_disorder,
                    head_mismatch, list_dir, list_keys, load, s3_client, version)

RETRY_SECS = 90  # how long a client retries an operation before giving up on the gateway


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
    import endstate
    import harness
    {"make-tree": harness.make_tree, "wait-url": harness.wait_url, "wait-job": harness.wait_job,
     "failed": harness.failed, "run": run, "verify": endstate.verify}[args.cmd](args)


if __name__ == "__main__":
    main()
