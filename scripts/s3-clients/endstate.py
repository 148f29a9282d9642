"""The checks of the end state, once the job completed: the ledger key by key, the listings
against the live keys, SRC empty, DST complete. Part of scripts/gateway-clients.sh (see
ledger.py)."""

import hashlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from common import (code_of, describe, fail, first_disorder, head_mismatch, list_dir,
                    list_keys, load, s3_client)


READERS = 8  # reads at once


def per_thread(make):
    """A function returning one object per thread (boto3 clients are made per thread)."""
    local = threading.local()

    def get():
        if not hasattr(local, "it"):
            local.it = make()
        return local.it
    return get


def store_client():
    """A client of the store ferry's s3:// URLs name (the AWS_* environment)."""
    from botocore.handlers import set_list_objects_encoding_type_url
    c = s3_client(os.environ["AWS_ENDPOINT"], os.environ["AWS_ACCESS_KEY_ID"],
                  os.environ["AWS_SECRET_ACCESS_KEY"])
    # Keys as they are: the in-process server (s3s-fs) url-encodes a '+' as itself, which
    # boto3's decoding turns into a space.
    for op in ("ListObjects", "ListObjectsV2"):
        c.meta.events.unregister(f"before-parameter-build.s3.{op}",
                                 set_list_objects_encoding_type_url)
    return c


def store_listing(spec):
    """Every object of a directory or s3://bucket/prefix: key -> sha256."""
    if spec.startswith("s3://"):
        bucket, _, prefix = spec[5:].partition("/")
        client = per_thread(store_client)

        def digest(key):
            body = client().get_object(Bucket=bucket, Key=key)["Body"].read()
            return key[len(prefix):], hashlib.sha256(body).hexdigest()
        with ThreadPoolExecutor(READERS) as pool:
            return dict(pool.map(digest, list_keys(client(), bucket, prefix)))
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
    client = per_thread(lambda: s3_client(args.endpoint, args.key_id, args.secret))
    c = client()

    def get(key):
        """The body; None for 404; False (a problem noted) when it fails its checksum."""
        from botocore.exceptions import FlexibleChecksumError
        try:
            return client().get_object(Bucket=args.bucket, Key=key)["Body"].read()
        except FlexibleChecksumError as e:
            problems.append(f"get {key!r}: the body does not match the checksum the server sent "
                            f"with it ({e})")
            return False
        except Exception as e:  # noqa: BLE001
            if code_of(e)[0] in ("NoSuchKey", "404"):
                return None
            raise

    def check_live(key):
        v = expected[key]
        data = get(key)
        if data is False:
            return
        if data is None:
            problems.append(f"get {key!r}: 404, expected {describe(v)}")
            return
        if hashlib.sha256(data).hexdigest() != v["sha256"]:
            problems.append(f"get {key!r}: {len(data)} bytes sha256 "
                            f"{hashlib.sha256(data).hexdigest()[:12]}, expected {describe(v)}")
        try:
            problem = head_mismatch(client().head_object(Bucket=args.bucket, Key=key), v)
        except Exception as e:  # noqa: BLE001
            problem = f"{type(e).__name__}: {e}"
        if problem:
            problems.append(f"head {key!r}: {problem}")

    def check_deleted(key):
        data = get(key)
        if isinstance(data, bytes):
            problems.append(f"get {key!r}: {len(data)} bytes, expected absent (deleted)")

    # 1. Every key reads back as the ledger says (GET and HEAD), through the gateway.
    with ThreadPoolExecutor(READERS) as pool:
        list(pool.map(check_live, sorted(expected)))
        list(pool.map(check_deleted, sorted(deleted)))

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
          + ("; SRC empty" if args.src else "")
          + (f"; DST holds the {len(expected)} live keys" if args.dst else ""))
