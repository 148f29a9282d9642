//! `ferry serve`: the S3 gateway over a live move, from outside — signed clients (object_store's
//! S3 client) reading, writing, listing and deleting while the tree moves, across a SIGKILL and
//! a restart on the same port (SPEC I1–I3, I8 through the gateway); hostile requests sent raw;
//! the setups it refuses.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};

use ferry_object_store::object_store::aws::{AmazonS3, AmazonS3Builder};
use ferry_object_store::object_store::path::Path as StorePath;
use ferry_object_store::object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use futures_util::TryStreamExt;

use super::*;

const ACCESS: &str = "gateway-test-key";
const SECRET: &str = "gateway-test-secret";
const BUCKET: &str = "live";

/// Where a gateway's job moves from and to: two directories of the test's scratch dir, or two
/// buckets of the in-process S3 server.
#[derive(Clone, Copy)]
enum Sides<'a> {
    Dirs,
    Buckets(&'a S3Server),
}

/// A running `ferry serve`: its child, its URL, its stderr file.
struct Gateway {
    child: Child,
    url: String,
    stderr: PathBuf,
}

impl Gateway {
    /// Starts `ferry serve SRC DST --id ID --bucket live` with `extra` flags and waits for
    /// its URL line.
    fn start(env: &Env, id: &str, listen: &str, extra: &[&str], anonymous: bool) -> Gateway {
        Gateway::start_over(env, Sides::Dirs, id, listen, extra, anonymous)
    }

    fn start_over(
        env: &Env,
        sides: Sides<'_>,
        id: &str,
        listen: &str,
        extra: &[&str],
        anonymous: bool,
    ) -> Gateway {
        let stderr = env.path(&format!(
            "serve-{id}-{}.err",
            Instant::now().elapsed().as_nanos()
        ));
        let (src, dst, mut cmd) = match sides {
            Sides::Dirs => (
                env.path("src").to_str().unwrap().to_owned(),
                env.path("dst").to_str().unwrap().to_owned(),
                env.cmd(),
            ),
            Sides::Buckets(server) => (
                "s3://src/".to_owned(),
                "s3://dst/".to_owned(),
                s3_cmd(env, server),
            ),
        };
        cmd.args(["serve", &src, &dst])
            .args(["--id", id, "--bucket", BUCKET, "--listen", listen])
            .args(extra)
            .env("FERRY_ACCESS_KEY_ID", ACCESS)
            .env("FERRY_SECRET_ACCESS_KEY", SECRET)
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr).unwrap());
        if anonymous {
            cmd.arg("--anonymous");
        }
        let mut child = cmd.spawn().expect("ferry serve starts");
        let lines = line_channel(child.stdout.take().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.starts_with("http://") => break line,
                Ok(_) => {}
                Err(e) => panic!(
                    "no URL line from ferry serve: {e}\n{}",
                    fs::read_to_string(&stderr).unwrap_or_default()
                ),
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Gateway { child, url, stderr }
    }

    fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn client(&self, secret: &str) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.url)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_region("us-east-1")
            .with_bucket_name(BUCKET)
            .with_access_key_id(ACCESS)
            .with_secret_access_key(secret)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_timeout(Duration::from_secs(30)),
            )
            .with_retry(RetryConfig {
                max_retries: 40,
                retry_timeout: Duration::from_secs(60),
                ..Default::default()
            })
            .build()
            .unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_refuses_setups_that_cannot_work_with_clear_errors() {
    let env = Env::new();
    flat_tree(&env.path("src"), 3, 10);
    let (src, dst) = (env.path("src"), env.path("dst"));
    let (src, dst) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let base = ["serve", src, dst, "--id", "x", "--bucket", BUCKET];
    let mut cmd = env.cmd();
    cmd.args(base)
        .env_remove("FERRY_ACCESS_KEY_ID")
        .env_remove("FERRY_SECRET_ACCESS_KEY");
    assert_fails(
        &cmd.output().unwrap(),
        2,
        "set FERRY_ACCESS_KEY_ID and FERRY_SECRET_ACCESS_KEY",
    );
    let with = |extra: &[&str]| {
        let mut cmd = env.cmd();
        cmd.args(base)
            .args(extra)
            .env("FERRY_ACCESS_KEY_ID", ACCESS)
            .env("FERRY_SECRET_ACCESS_KEY", SECRET);
        cmd.output().unwrap()
    };
    assert_fails(
        &with(&["--cleanup", "never"]),
        2,
        "--cleanup never would keep two live copies",
    );
    let out = {
        let mut cmd = env.cmd();
        cmd.args(["serve", src, dst, "--id", "x", "--bucket", "No_Such"])
            .env("FERRY_ACCESS_KEY_ID", ACCESS)
            .env("FERRY_SECRET_ACCESS_KEY", SECRET);
        cmd.output().unwrap()
    };
    assert_fails(&out, 2, "not a valid S3 bucket name");
    // Nothing was started: no job, DST untouched.
    assert!(!env.path("dst").exists());
    // A job made by `migrate --cleanup never` is not served (its SRC would be drained).
    let out = env.run(&["migrate", src, dst, "--id", "kept", "--rate", "1KiB", "-q"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let with_id = |id: &str, src: &str| {
        let mut cmd = env.cmd();
        cmd.args(["serve", src, dst, "--id", id, "--bucket", BUCKET])
            .env("FERRY_ACCESS_KEY_ID", ACCESS)
            .env("FERRY_SECRET_ACCESS_KEY", SECRET);
        cmd.output().unwrap()
    };
    assert_fails(&with_id("kept", src), 2, "was not made by `ferry serve`");
    // Another SRC under an existing job's id.
    let other = env.path("other");
    fs::create_dir_all(&other).unwrap();
    assert_fails(
        &with_id("kept", other.to_str().unwrap()),
        2,
        "job kept moves",
    );
}

/// One raw HTTP/1.1 request (the connection closed after it); the status and the body.
fn raw(port: u16, head: &str, body: &[u8], close_early: bool) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    if close_early {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn req(method: &str, path: &str, headers: &[(&str, &str)], body_len: usize) -> String {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {body_len}\r\n"
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

#[test]
fn hostile_requests_get_s3_errors_and_nothing_is_written_outside_the_stores() {
    let env = Env::new();
    write(&env.path("src/keep.txt"), b"kept content");
    let gw = Gateway::start(&env, "hostile", "127.0.0.1:0", &[], true);
    let port = gw.port();
    let code = |text: &str| {
        text.split("<Code>")
            .nth(1)
            .and_then(|t| t.split("</Code>").next())
            .unwrap_or("")
            .to_owned()
    };
    let outside_before = fs::read_dir(env.path("")).unwrap().count();

    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        (
            "a key with .. segments",
            req("PUT", "/live/a/../../escaped", &[], 4),
            b"evil".to_vec(),
            400,
            "InvalidArgument",
        ),
        (
            "a key with NUL",
            req("PUT", "/live/nul%00key", &[], 4),
            b"evil".to_vec(),
            400,
            "InvalidArgument",
        ),
        (
            "a key of 2000 bytes",
            req("PUT", &format!("/live/{}", "k".repeat(2000)), &[], 4),
            b"evil".to_vec(),
            400,
            "KeyTooLongError",
        ),
        (
            "an unknown bucket",
            req("GET", "/other/keep.txt", &[], 0),
            Vec::new(),
            404,
            "NoSuchBucket",
        ),
        (
            "a malformed DeleteObjects body",
            req("POST", "/live?delete", &[], 20),
            b"<Delete><Object><Key".to_vec(),
            400,
            "MalformedXML",
        ),
        (
            "a wrong Content-MD5",
            req(
                "PUT",
                "/live/keep.txt",
                &[("Content-MD5", "1B2M2Y8AsgTpgAmY7PhCfg==")],
                4,
            ),
            b"evil".to_vec(),
            400,
            "BadDigest",
        ),
        (
            "a range past the end",
            req("GET", "/live/keep.txt", &[("Range", "bytes=100-200")], 0),
            Vec::new(),
            416,
            "InvalidRange",
        ),
        (
            "an unknown multipart upload",
            req("PUT", "/live/k?partNumber=1&uploadId=../../x", &[], 4),
            b"part".to_vec(),
            404,
            "NoSuchUpload",
        ),
    ];
    for (what, head, body, status, wanted) in &cases {
        let (got, text) = raw(port, head, body, false);
        assert_eq!(got, *status, "{what}: {text}");
        assert_eq!(code(&text), *wanted, "{what}: {text}");
    }

    // An empty marker or start-after lists from the start, as S3 does.
    for path in ["/live?marker=", "/live?list-type=2&start-after="] {
        let (status, text) = raw(port, &req("GET", path, &[], 0), b"", false);
        assert_eq!(status, 200, "{path}: {text}");
        assert!(text.contains("<Key>keep.txt</Key>"), "{path}: {text}");
    }

    // Ranges: a slice, an open end, a suffix.
    for (range, want) in [
        ("bytes=5-11", "content"),
        ("bytes=5-", "content"),
        ("bytes=-3", "ent"),
    ] {
        let (status, text) = raw(
            port,
            &req("GET", "/live/keep.txt", &[("Range", range)], 0),
            b"",
            false,
        );
        assert_eq!(status, 206, "{range}: {text}");
        assert!(
            text.ends_with(&format!("\r\n\r\n{want}")),
            "{range}: {text}"
        );
    }

    // A malformed CompleteMultipartUpload body, on a real upload.
    let (status, text) = raw(port, &req("POST", "/live/mp?uploads", &[], 0), b"", false);
    assert_eq!(status, 200, "{text}");
    let upload = text
        .split("<UploadId>")
        .nth(1)
        .and_then(|t| t.split("</UploadId>").next())
        .unwrap()
        .to_owned();
    let (status, text) = raw(
        port,
        &req("POST", &format!("/live/mp?uploadId={upload}"), &[], 13),
        b"<Complete><P>",
        false,
    );
    assert_eq!(
        (status, code(&text).as_str()),
        (400, "MalformedXML"),
        "{text}"
    );

    // A body shorter than its Content-Length (the client gives up): nothing is stored, the
    // old object is intact.
    let (status, _) = raw(
        port,
        &req("PUT", "/live/keep.txt", &[], 1000),
        b"truncated",
        true,
    );
    assert_ne!(status, 200, "a truncated upload was acknowledged");
    let (status, text) = raw(port, &req("GET", "/live/keep.txt", &[], 0), b"", false);
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("kept content"), "{text}");
    let (status, _) = raw(port, &req("GET", "/live/mp", &[], 0), b"", false);
    assert_eq!(status, 404);

    // Nothing escaped: no new entry beside the stores and the state, no `escaped` anywhere.
    assert_eq!(fs::read_dir(env.path("")).unwrap().count(), outside_before);
    let all = regular_files(env.path("").as_path()).0;
    assert!(
        all.keys()
            .all(|k| !k.contains("escaped") && !k.contains("nul")),
        "{:?}",
        all.keys().collect::<Vec<_>>()
    );
    assert!(!gw.stderr().contains("panicked"), "{}", gw.stderr());
}

#[test]
fn a_wrong_signature_is_refused_with_403_and_the_right_one_is_served() {
    let env = Env::new();
    write(&env.path("src/a"), b"alpha");
    let gw = Gateway::start(&env, "auth", "127.0.0.1:0", &[], false);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let bad = gw.client("not-the-secret");
        let err = bad.get(&StorePath::from("a")).await.unwrap_err();
        assert!(format!("{err:?}").contains("403"), "{err:?}");
        let good = gw.client(SECRET);
        let got = good.get(&StorePath::from("a")).await.unwrap();
        assert_eq!(got.bytes().await.unwrap().as_ref(), b"alpha");
    });
    // Unsigned requests are refused too.
    let (status, _) = raw(gw.port(), &req("GET", "/live/a", &[], 0), b"", false);
    assert_eq!(status, 403);
}

/// A key's content, or `None` when absent.
type Value = Option<Vec<u8>>;

/// What a key must read as: one value, or (after an operation whose answer was lost) any of
/// several. `None`: absent.
#[derive(Debug, Clone)]
struct Expect(Vec<Option<Vec<u8>>>);

impl Expect {
    fn exactly(v: Option<Vec<u8>>) -> Expect {
        Expect(vec![v])
    }
}

/// Operations of one client on the keys it alone writes, recorded in `ledger` once
/// acknowledged (an operation that failed leaves either outcome possible).
async fn client_ops(
    s3: AmazonS3,
    me: usize,
    keys: Vec<String>,
    ops: usize,
    ledger: Arc<Mutex<BTreeMap<String, Expect>>>,
    stop_at: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (me as u64);
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for n in 0..ops {
        if stop_at.load(std::sync::atomic::Ordering::Relaxed) && n > ops / 2 {
            break;
        }
        let key = &keys[(next() as usize) % keys.len()];
        let path = StorePath::from(key.as_str());
        let before = ledger.lock().unwrap()[key].clone();
        let pick = next() % 10;
        // What a write would leave, for the ledger: `Some(value)`; reads: `None`.
        let (intended, outcome): (Option<Value>, Result<Value, String>) = match pick {
            0..=3 => {
                let data = bytes(next(), (next() % 40_000) as usize);
                let sent = s3.put(&path, PutPayload::from(data.clone())).await;
                (
                    Some(Some(data.clone())),
                    sent.map(|_| Some(data)).map_err(|e| e.to_string()),
                )
            }
            4 => {
                let sent = s3.delete(&path).await;
                (Some(None), sent.map(|_| None).map_err(|e| e.to_string()))
            }
            5 => {
                // Multipart: two parts.
                let (a, b) = (
                    bytes(next(), 5 << 20),
                    bytes(next(), (next() % 100_000) as usize),
                );
                let whole = [a.clone(), b.clone()].concat();
                let attempt = async {
                    let mut up = s3.put_multipart(&path).await?;
                    up.put_part(PutPayload::from(a)).await?;
                    up.put_part(PutPayload::from(b)).await?;
                    up.complete().await
                };
                let sent = attempt.await;
                (
                    Some(Some(whole.clone())),
                    sent.map(|_| Some(whole)).map_err(|e| e.to_string()),
                )
            }
            _ => {
                let got = match s3.get(&path).await {
                    Ok(got) => got
                        .bytes()
                        .await
                        .map(|d| Some(d.to_vec()))
                        .map_err(|e| e.to_string()),
                    Err(ferry_object_store::object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e.to_string()),
                };
                if let Ok(data) = &got {
                    assert!(
                        before.0.contains(data),
                        "I2/I3: {key} reads {:?} bytes, none of the acknowledged values {:?}",
                        data.as_ref().map(Vec::len),
                        before
                            .0
                            .iter()
                            .map(|v| v.as_ref().map(Vec::len))
                            .collect::<Vec<_>>()
                    );
                }
                (None, got)
            }
        };
        let mut ledger = ledger.lock().unwrap();
        match (intended, outcome) {
            // Acknowledged, or read: the key is exactly this now.
            (_, Ok(value)) => {
                ledger.insert(key.clone(), Expect::exactly(value));
            }
            // A write whose answer was lost (the gateway was killed under it): it may or may
            // not have happened.
            (Some(value), Err(_)) => ledger.get_mut(key).unwrap().0.push(value),
            (None, Err(_)) => {}
        }
    }
}

#[test]
fn i1_i2_i3_i8_signed_clients_through_the_gateway_during_a_move_across_a_sigkill() {
    let env = Env::new();
    clients_across_a_sigkill(&env, Sides::Dirs);
}

#[test]
fn i1_i2_i3_i8_the_same_over_bucket_urls() {
    let env = Env::new();
    let server = S3Server::start(&["src", "dst"]).expect("the S3 test server starts");
    clients_across_a_sigkill(&env, Sides::Buckets(&server));
}

/// Four signed clients (each the only writer of its keys, with a ledger of what was
/// acknowledged) read, write, delete and upload in parts while the tree moves; the gateway is
/// SIGKILLed mid-run and restarted on its port; at the end every key reads as the ledger says,
/// the listing is exactly the live keys, SRC is empty and DST holds the live keys.
fn clients_across_a_sigkill(env: &Env, sides: Sides<'_>) {
    // A tree to move, slowly enough that the clients run while it moves.
    let mut initial = BTreeMap::new();
    for i in 0..160 {
        let key = format!("tree/{:02}/f{i:03}", i % 7);
        let data = bytes(i as u64 + 1, 1000 + (i * 997) % 60_000);
        initial.insert(key, data);
    }
    put_side(env, sides, "src", &initial);
    let flags = ["--rate", "1MiB", "--concurrency", "4"];
    let gw = Gateway::start_over(env, sides, "live", "127.0.0.1:0", &flags, false);
    let port = gw.port();

    // Four clients, each owning its keys: some of the tree's (moving), some new.
    let ledger: Arc<Mutex<BTreeMap<String, Expect>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let mut owned: Vec<Vec<String>> = vec![Vec::new(); 4];
    for (i, (key, data)) in initial.iter().enumerate() {
        ledger
            .lock()
            .unwrap()
            .insert(key.clone(), Expect::exactly(Some(data.clone())));
        if i % 3 == 0 {
            owned[i % 4].push(key.clone());
        }
    }
    for (c, keys) in owned.iter_mut().enumerate() {
        for j in 0..12 {
            let key = format!("new/c{c}/k{j:02}");
            ledger
                .lock()
                .unwrap()
                .insert(key.clone(), Expect::exactly(None));
            keys.push(key);
        }
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = owned
        .iter()
        .enumerate()
        .map(|(me, keys)| {
            rt.spawn(client_ops(
                gw.client(SECRET),
                me,
                keys.clone(),
                120,
                Arc::clone(&ledger),
                Arc::clone(&stop),
            ))
        })
        .collect();

    // Kill the gateway mid-run, once it has moved some objects, and restart it on its port.
    let dst_files = || {
        side_files(&rt, env, sides, "dst")
            .keys()
            .filter(|k| k.starts_with("tree/"))
            .count()
    };
    wait_until(Duration::from_secs(120), "the move to start", || {
        dst_files() >= 10
    });
    let mut gw = gw;
    gw.child.kill().unwrap();
    gw.child.wait().unwrap();
    let first_stderr = gw.stderr();
    drop(gw);
    let gw = Gateway::start_over(
        env,
        sides,
        "live",
        &format!("127.0.0.1:{port}"),
        &["--rate", "64MiB"],
        false,
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rt.block_on(async {
        for c in clients {
            c.await.unwrap();
        }
    });

    // The job completes; the gateway settles and drains SRC.
    wait_until(
        Duration::from_secs(180),
        "the job to complete and SRC to drain",
        || gw.stderr().contains("SRC drained"),
    );
    let s3 = gw.client(SECRET);
    let ledger = ledger.lock().unwrap().clone();
    rt.block_on(async {
        // Every key reads back as its last acknowledged operation left it (I2, I3).
        let mut live = BTreeMap::new();
        for (key, expect) in &ledger {
            let got = match s3.get(&StorePath::from(key.as_str())).await {
                Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
                Err(ferry_object_store::object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("I2: {key}: {e}"),
            };
            assert!(
                expect.0.contains(&got),
                "I3: {key} reads {:?} bytes, expected one of {:?}",
                got.as_ref().map(Vec::len),
                expect
                    .0
                    .iter()
                    .map(|v| v.as_ref().map(Vec::len))
                    .collect::<Vec<_>>()
            );
            if let Some(data) = got {
                live.insert(key.clone(), data);
            }
        }
        // The listing is exactly the live keys, each once, in order.
        let listed: Vec<String> = s3
            .list(None)
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .unwrap();
        let expected: Vec<String> = live.keys().cloned().collect();
        assert_eq!(listed, expected, "the listing is not the live keys");
        let top = s3.list_with_delimiter(None).await.unwrap();
        let prefixes: BTreeSet<String> =
            top.common_prefixes.iter().map(|p| p.to_string()).collect();
        let wanted: BTreeSet<String> = live
            .keys()
            .map(|k| k.split('/').next().unwrap().to_owned())
            .collect();
        assert_eq!(prefixes, wanted);
        // I8: SRC holds nothing; DST holds exactly the live keys with their contents (I1).
        let src = side_files_async(env, sides, "src").await;
        assert!(src.is_empty(), "I8: SRC not empty: {:?}", src.keys());
        let dst = side_files_async(env, sides, "dst").await;
        assert_eq!(
            dst.keys().cloned().collect::<Vec<_>>(),
            expected,
            "DST is not the live keys"
        );
        for (key, data) in &live {
            assert_eq!(
                &dst[key], data,
                "DST's {key} is not what the gateway serves"
            );
        }
    });
    assert!(
        !first_stderr.contains("panicked") && !gw.stderr().contains("panicked"),
        "{first_stderr}\n{}",
        gw.stderr()
    );
}

/// The test server's client for `bucket`.
fn bucket_client(server: &S3Server, bucket: &str) -> AmazonS3 {
    use ferry_object_store::test_server::{ACCESS_KEY, SECRET_KEY};
    server.s3(bucket, ACCESS_KEY, SECRET_KEY).build().unwrap()
}

/// Writes `files` to `side` ("src" or "dst"): files of the scratch dir, or objects.
fn put_side(env: &Env, sides: Sides<'_>, side: &str, files: &BTreeMap<String, Vec<u8>>) {
    match sides {
        Sides::Dirs => {
            for (key, data) in files {
                write(&env.path(&format!("{side}/{key}")), data);
            }
        }
        Sides::Buckets(server) => {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let s3 = bucket_client(server, side);
            rt.block_on(async {
                for (key, data) in files {
                    s3.put(&StorePath::from(key.as_str()), data.clone().into())
                        .await
                        .unwrap();
                }
            });
        }
    }
}

/// What `side` holds: key → content.
async fn side_files_async(env: &Env, sides: Sides<'_>, side: &str) -> BTreeMap<String, Vec<u8>> {
    match sides {
        Sides::Dirs => regular_files(&env.path(side)).0,
        Sides::Buckets(server) => {
            let s3 = bucket_client(server, side);
            let metas: Vec<_> = s3.list(None).try_collect().await.unwrap();
            let mut out = BTreeMap::new();
            for meta in metas {
                let data = s3.get(&meta.location).await.unwrap().bytes().await.unwrap();
                out.insert(meta.location.to_string(), data.to_vec());
            }
            out
        }
    }
}

fn side_files(
    rt: &tokio::runtime::Runtime,
    env: &Env,
    sides: Sides<'_>,
    side: &str,
) -> BTreeMap<String, Vec<u8>> {
    rt.block_on(side_files_async(env, sides, side))
}

/// The MD5 of `data` in hex.
fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An ETag as S3 sends it, without its quotes.
fn bare(etag: Option<String>) -> String {
    etag.unwrap_or_default().trim_matches('"').to_owned()
}

#[test]
fn multipart_etags_and_last_modified_hold_across_a_restart_and_the_move() {
    let env = Env::new();
    write(&env.path("src/small"), b"a small object");
    let gw = Gateway::start(&env, "tags", "127.0.0.1:0", &[], false);
    let port = gw.port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = (bytes(1, 5 << 20), bytes(2, 1000));
    let whole = [a.clone(), b.clone()].concat();
    let parts_md5 = [md5_hex(&a), md5_hex(&b)]
        .iter()
        .flat_map(|h| (0..16).map(move |i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap()))
        .collect::<Vec<u8>>();
    let multipart = format!("{}-2", md5_hex(&parts_md5));
    let big = StorePath::from("big");
    rt.block_on(async {
        let s3 = gw.client(SECRET);
        let mut up = s3.put_multipart(&big).await.unwrap();
        up.put_part(PutPayload::from(a)).await.unwrap();
        up.put_part(PutPayload::from(b)).await.unwrap();
        up.complete().await.unwrap();
        assert_eq!(bare(s3.head(&big).await.unwrap().e_tag), multipart);
    });
    wait_until(Duration::from_secs(120), "SRC to drain", || {
        gw.stderr().contains("SRC drained")
    });
    assert_eq!(
        fs::read(env.path("dst/big")).unwrap(),
        whole,
        "moved to DST"
    );
    drop(gw); // SIGKILL

    // Another version of the same content (its mtime changed), read by a new gateway that
    // remembers nothing in memory.
    let past = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    fs::File::options()
        .write(true)
        .open(env.path("dst/big"))
        .unwrap()
        .set_modified(past)
        .unwrap();
    let gw = Gateway::start(&env, "tags", &format!("127.0.0.1:{port}"), &[], false);
    rt.block_on(async {
        let s3 = gw.client(SECRET);
        let head = s3.head(&big).await.unwrap();
        assert_eq!(bare(head.e_tag), multipart, "the multipart ETag is kept");
        assert_eq!(
            head.last_modified.timestamp(),
            1_000_000_000,
            "the file's mtime"
        );
        let small = s3.head(&StorePath::from("small")).await.unwrap();
        assert_eq!(bare(small.e_tag), md5_hex(b"a small object"));
        let mtime = fs::metadata(env.path("dst/small"))
            .unwrap()
            .modified()
            .unwrap();
        let secs = mtime
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(small.last_modified.timestamp() as u64, secs);
        let listed: Vec<_> = s3.list(None).try_collect().await.unwrap();
        let listed_big = listed.iter().find(|m| m.location == big).unwrap();
        assert_eq!(bare(listed_big.e_tag.clone()), multipart);
        assert_eq!(listed_big.last_modified.timestamp(), 1_000_000_000);
        // A single-part write replaces the object and its ETag.
        s3.put(&big, PutPayload::from_static(b"now small"))
            .await
            .unwrap();
    });
    drop(gw);
    let gw = Gateway::start(&env, "tags", &format!("127.0.0.1:{port}"), &[], false);
    rt.block_on(async {
        let head = gw.client(SECRET).head(&big).await.unwrap();
        assert_eq!(
            bare(head.e_tag),
            md5_hex(b"now small"),
            "the record is forgotten"
        );
    });
}
