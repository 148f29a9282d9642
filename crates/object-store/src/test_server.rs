//! An S3 server for tests (feature `test-server`): `s3s-fs` serving a temp dir over HTTP on
//! `127.0.0.1:<free port>`, in this process, with fixed credentials, so that tests of S3 code
//! need nothing installed. [`S3Server::start`] starts it on a thread of its own (with its own
//! Tokio runtime, so it does not depend on the caller's runtime); dropping the [`S3Server`]
//! stops it, waits for its thread and removes the directory. [`S3Server::serve_dir`] serves an
//! existing directory instead, and leaves it in place; [`S3Server::serve_dir_fsync`] also
//! fsyncs each object a PUT writes before answering.
//!
//! Used by this crate's tests, by the `ferry` command's end-to-end tests, which point the
//! binary at it through [`S3Server::env`], and by `cargo xtask bench serve` as the direct peer
//! of `ferry serve` over the same directory.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::prefix::PrefixStore;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::sync::oneshot;

use crate::{Listing, ObjectStoreAdapter};

/// The access key id the server accepts.
pub const ACCESS_KEY: &str = "ferry-test-access-key";
/// The secret access key the server accepts.
pub const SECRET_KEY: &str = "ferry-test-secret-key";
/// The region the client signs for (the server checks signatures with whatever region the
/// request names).
pub const REGION: &str = "us-east-1";

/// A running server; stopped when dropped.
pub struct S3Server {
    endpoint: String,
    root: Root,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl S3Server {
    /// Starts a server whose buckets are `buckets` (empty), listening on a free loopback port.
    ///
    /// # Errors
    /// When the temp dir, the socket or the server thread cannot be made.
    pub fn start(buckets: &[&str]) -> std::io::Result<S3Server> {
        let root = tempfile::tempdir()?;
        for bucket in buckets {
            std::fs::create_dir(root.path().join(bucket))?;
        }
        S3Server::spawn(Root::Temp(root), false)
    }

    /// Starts a server over the existing directory `root`, listening on a free loopback port:
    /// each subdirectory of `root` is a bucket, each file under it an object (the key is its
    /// path below the bucket's directory). Dropping the server leaves the directory in place.
    ///
    /// s3s-fs keeps its own files in `root` itself, beside the buckets: the metadata of the
    /// objects it writes (`.bucket-….json`) and its temp files (`.tmp.….internal.part`,
    /// removed at start). Nothing of it lands inside a bucket's directory, so another program
    /// may serve or move a bucket's directory at the same time.
    ///
    /// # Errors
    /// When `root` is not a directory, or the socket or the server thread cannot be made.
    pub fn serve_dir(root: &Path) -> std::io::Result<S3Server> {
        S3Server::spawn(Root::given(root)?, false)
    }

    /// [`S3Server::serve_dir`], durable: a PutObject (or CopyObject) is answered only once
    /// its file and the file's directory are fsynced, as a server that acknowledges durable
    /// writes does; s3s-fs itself never syncs. Multipart uploads are not synced.
    ///
    /// # Errors
    /// As [`S3Server::serve_dir`].
    pub fn serve_dir_fsync(root: &Path) -> std::io::Result<S3Server> {
        S3Server::spawn(Root::given(root)?, true)
    }

    fn spawn(root: Root, fsync_puts: bool) -> std::io::Result<S3Server> {
        let service = {
            let fs = s3s_fs::FileSystem::new(root.path())
                .map_err(|e| std::io::Error::other(format!("s3s-fs: {e:?}")))?;
            let mut builder = S3ServiceBuilder::new(fs);
            builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            Service {
                s3: builder.build(),
                fsync_root: fsync_puts.then(|| Arc::new(root.path().to_path_buf())),
            }
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let (shutdown, mut stop) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("s3-server".to_owned())
            .spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return; // the server is gone: the caller's first request fails
                };
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let http = ConnBuilder::new(TokioExecutor::new());
                    let mut connections = tokio::task::JoinSet::new();
                    loop {
                        tokio::select! {
                            _ = &mut stop => break,
                            accepted = listener.accept() => {
                                let Ok((socket, _)) = accepted else { continue };
                                // Without it a response written in two parts (head, then
                                // body) waits for the client's delayed ACK: 40 ms a GET.
                                let _ = socket.set_nodelay(true);
                                let connection = http
                                    .serve_connection(TokioIo::new(socket), service.clone())
                                    .into_owned();
                                connections.spawn(async move {
                                    let _ = connection.await;
                                });
                            }
                        }
                    }
                    connections.abort_all();
                });
            })?;
        Ok(S3Server {
            endpoint,
            root,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The environment variables that point object_store's `from_env` S3 builder (and so
    /// `s3://` URLs, in this process or a child) at this server with its credentials.
    pub fn env(&self) -> [(&'static str, String); 6] {
        [
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".to_owned()),
        ]
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The directory served: a bucket is a directory in it, an object a file.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// An object_store S3 client for `bucket` on this server, path-style, over plain HTTP,
    /// with the given credentials. Read from nothing in the environment.
    pub fn s3(&self, bucket: &str, access_key: &str, secret_key: &str) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_region(REGION)
            .with_bucket_name(bucket)
            .with_access_key_id(access_key)
            .with_secret_access_key(secret_key)
            .with_http_connector(crate::StallTimeout::default())
    }

    /// The adapter over `s3://bucket/prefix` on this server (`prefix` may be empty), with the
    /// server's credentials.
    ///
    /// # Errors
    /// When object_store refuses the configuration.
    pub fn adapter(&self, bucket: &str, prefix: &str) -> object_store::Result<ObjectStoreAdapter> {
        self.adapter_with(bucket, prefix, ACCESS_KEY, SECRET_KEY)
    }

    /// The adapter over `s3://bucket/prefix` on this server, with the given credentials.
    ///
    /// # Errors
    /// When object_store refuses the configuration.
    pub fn adapter_with(
        &self,
        bucket: &str,
        prefix: &str,
        access_key: &str,
        secret_key: &str,
    ) -> object_store::Result<ObjectStoreAdapter> {
        let client = Arc::new(self.s3(bucket, access_key, secret_key).build()?);
        let s3: Arc<dyn ObjectStore> = Arc::clone(&client) as Arc<dyn ObjectStore>;
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            s3
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        };
        let prefix = (!prefix.is_empty()).then(|| object_store::path::Path::from(prefix));
        Ok(ObjectStoreAdapter::new(store, Listing::Sorted).with_multipart(client, prefix))
    }
}

/// The directory a server serves: its own temp dir, removed with it, or one it was given.
enum Root {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

impl Root {
    fn given(root: &Path) -> std::io::Result<Root> {
        if root.is_dir() {
            Ok(Root::Given(root.to_path_buf()))
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ))
        }
    }

    fn path(&self) -> &Path {
        match self {
            Root::Temp(dir) => dir.path(),
            Root::Given(path) => path,
        }
    }
}

/// The S3 service, and with [`S3Server::serve_dir_fsync`] the fsync of each object a PUT
/// wrote before its answer.
#[derive(Clone)]
struct Service {
    s3: S3Service,
    fsync_root: Option<Arc<PathBuf>>,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Service {
    type Response = s3s::HttpResponse;
    type Error = s3s::HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        // A PutObject or CopyObject: a PUT to `/bucket/key` without a query (a part upload
        // has one).
        let written = match &self.fsync_root {
            Some(root) if req.method() == hyper::Method::PUT && req.uri().query().is_none() => {
                object_path(root, req.uri().path())
            }
            _ => None,
        };
        let s3 = self.s3.clone();
        let req = req.map(s3s::Body::from);
        Box::pin(async move {
            let response = s3.call(req).await?;
            if let Some(path) = written
                && response.status().is_success()
            {
                tokio::task::spawn_blocking(move || fsync_with_dir(&path))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|synced| synced)
                    .map_err(|e| s3s::HttpError::new(Box::new(e)))?;
            }
            Ok(response)
        })
    }
}

/// The file of the object at the (percent-encoded) request path `/bucket/key`, or `None` for
/// a path without a key or one that does not decode.
fn object_path(root: &Path, path: &str) -> Option<PathBuf> {
    let (bucket, key) = path.strip_prefix('/')?.split_once('/')?;
    if bucket.is_empty() || key.is_empty() {
        return None;
    }
    let key = percent_decode(key)?;
    if key
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return None;
    }
    Some(root.join(percent_decode(bucket)?).join(key))
}

fn percent_decode(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

fn fsync_with_dir(path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    match path.parent() {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A server thread that panicked has already failed the test that used it.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_path_decodes_the_request_path_and_refuses_what_names_no_object() {
        let root = Path::new("/r");
        for (path, expected) in [
            ("/b/k", Some("/r/b/k")),
            ("/b/a/b%20c", Some("/r/b/a/b c")),
            ("/b/caf%C3%A9", Some("/r/b/caf\u{e9}")),
            ("/b", None),
            ("/b/", None),
            ("//k", None),
            ("/b/a/../k", None),
            ("/b/%2E%2E/k", None),
            ("/b/a%2", None),
            ("/b/%FF", None),
        ] {
            assert_eq!(
                object_path(root, path),
                expected.map(PathBuf::from),
                "{path}"
            );
        }
    }
}
