"""What the driver's parts share: versions of known content, the S3 client, listings, the
ETag rule. Part of scripts/gateway-clients.sh (see ledger.py)."""

import hashlib
import json
import random
import sys

MiB = 1 << 20
PART = 5 * MiB  # S3's smallest part but the last


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

def load(path):
    with open(path) as f:
        return json.load(f)

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
        # A multipart upload's ETag (MD5 of the parts' MD5s, -N) is kept by the gateway, but
        # an upload whose completion the SIGKILL cut may have stored the object before its
        # ETag record: it then reports the MD5 of its content.
        allowed.add(expected["md5"])
    if "multipart_etag" in expected:
        # A tree file its uploader may have sent in parts.
        allowed.add(expected["multipart_etag"])
    if expected["kind"] == "copy":
        allowed.add(expected.get("source_etag", expected["md5"]))
    if etag not in allowed:
        return f"ETag {etag}, expected {' or '.join(sorted(allowed))} ({describe(expected)})"
    return None
