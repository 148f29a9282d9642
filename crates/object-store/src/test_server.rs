//! An S3 server for tests (feature `test-server`): `s3s-fs` serving a temp dir over HTTP on
//! `127.0.0.1:<free port>`, in this process, with fixed credentials, so that tests of S3 code
//! need nothing installed. [`S3Server::start`] starts it on a thread of its own (with its own
//! Tokio runtime, so it does not depend on the caller's runtime); dropping the [`S3Server`]
//! stops it, waits for its thread and removes the directory. [`S3Server::serve_dir`] serves an
//! existing directory instead, and leaves it in place.
//!
//! Used by this crate's tests, by the `ferry` command's end-to-end tests, which point the
//! binary at it through [`S3Server::env`], and by `cargo xtask bench serve` as the direct peer
//! of `ferry serve` over the same directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::prefix::PrefixStore;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
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
        S3Server::spawn(Root::Temp(root))
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
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        S3Server::spawn(Root::Given(root.to_path_buf()))
    }

    fn spawn(root: Root) -> std::io::Result<S3Server> {
        let service = {
            let fs = s3s_fs::FileSystem::new(root.path())
                .map_err(|e| std::io::Error::other(format!("s3s-fs: {e:?}")))?;
            let mut builder = S3ServiceBuilder::new(fs);
            builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            builder.build()
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
        let s3: Arc<dyn ObjectStore> = Arc::new(self.s3(bucket, access_key, secret_key).build()?);
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            s3
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        };
        Ok(ObjectStoreAdapter::new(store, Listing::Sorted))
    }
}

/// The directory a server serves: its own temp dir, removed with it, or one it was given.
enum Root {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

impl Root {
    fn path(&self) -> &Path {
        match self {
            Root::Temp(dir) => dir.path(),
            Root::Given(path) => path,
        }
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
