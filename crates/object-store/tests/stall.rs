//! `StallTimeout`, the cloud backends' HTTP connector: a reader that stops reading for longer
//! than any request limit (a throttled copy) still gets the whole object, while a server that
//! stops sending fails the read within the limit instead of hanging it.
// Tests stop on the first unexpected error: unwrap says where.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use ferry_object_store::object_store::{ClientOptions, RetryConfig};
use ferry_object_store::test_server::{ACCESS_KEY, S3Server, SECRET_KEY};
use ferry_object_store::{Listing, ObjectStoreAdapter, StallTimeout};
use ferry_store::{Store, body_from_bytes};
use ferry_types::ObjectKey;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// No retries: each check sees the first request's fate.
fn no_retries() -> RetryConfig {
    RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    }
}

/// 16 MiB: more than loopback buffers hold, so reading goes on after a pause.
fn data() -> Vec<u8> {
    (0..16 << 20).map(|i: u32| (i % 251) as u8).collect()
}

/// Reads `slow/object` in 64 KiB chunks, stopping `pause` after the first.
async fn read_slowly(store: &ObjectStoreAdapter, pause: Duration) -> ferry_store::Result<Vec<u8>> {
    let key = ObjectKey::new("slow/object").unwrap();
    let data = data();
    let mut object = store.get(&key).await?;
    let mut read = Vec::new();
    let first = object.body.next().await.unwrap()?;
    read.extend_from_slice(&first);
    // The reader is elsewhere (a throttle): the server is not stalled.
    tokio::time::sleep(pause).await;
    while let Some(chunk) = object.body.next().await {
        read.extend_from_slice(&chunk?);
    }
    assert_eq!(read, data, "the object read back whole");
    Ok(read)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_waits_longer_than_a_request_may_take_gets_the_whole_object() {
    let server = S3Server::start(&["bucket"]).unwrap();
    let key = ObjectKey::new("slow/object").unwrap();
    server
        .adapter("bucket", "")
        .unwrap()
        .put(&key, body_from_bytes(data().into(), 1 << 16))
        .await
        .unwrap();
    let limit = Duration::from_millis(200);
    let client = |stall: Option<StallTimeout>| {
        let builder = server
            .s3("bucket", ACCESS_KEY, SECRET_KEY)
            .with_client_options(ClientOptions::new().with_timeout(limit))
            .with_allow_http(true)
            .with_retry(no_retries());
        let builder = match stall {
            Some(stall) => builder.with_http_connector(stall),
            // object_store's own client, whose timeout covers the whole request.
            None => builder.with_http_connector(
                ferry_object_store::object_store::client::ReqwestConnector::default(),
            ),
        };
        ObjectStoreAdapter::new(Arc::new(builder.build().unwrap()), Listing::Sorted)
            .with_chunk_size(1 << 16)
    };
    let pause = limit * 3;
    let whole_request = read_slowly(&client(None), pause).await;
    assert!(
        whole_request.is_err(),
        "the control: a whole-request timeout fails a reader that waits"
    );
    read_slowly(&client(Some(StallTimeout::new(limit))), pause)
        .await
        .unwrap();
}

/// A server on loopback that answers every request with a head promising `len` body bytes, then
/// sends `sent` of them and nothing more, holding the connection open. With `len` = None it
/// answers nothing at all.
async fn stalling_server(len: Option<usize>, sent: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            if let Some(len) = len {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nETag: \"e\"\r\n\
                     Last-Modified: Thu, 03 Dec 2026 00:00:00 GMT\r\n\r\n"
                );
                socket.write_all(head.as_bytes()).await.unwrap();
                socket.write_all(&vec![7u8; sent]).await.unwrap();
            }
            held.push(socket);
        }
    });
    endpoint
}

fn stalled_client(endpoint: &str, limit: Duration) -> ObjectStoreAdapter {
    let s3 = ferry_object_store::object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_region(ferry_object_store::test_server::REGION)
        .with_bucket_name("bucket")
        .with_access_key_id(ACCESS_KEY)
        .with_secret_access_key(SECRET_KEY)
        .with_retry(no_retries())
        .with_http_connector(StallTimeout::new(limit))
        .build()
        .unwrap();
    ObjectStoreAdapter::new(Arc::new(s3), Listing::Sorted)
}

/// What a guard against a hang (far above the limit) let through.
fn bounded<T>(what: &str, result: Result<T, tokio::time::error::Elapsed>) -> T {
    result.unwrap_or_else(|_| panic!("{what} hung"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_sending_fails_the_read_instead_of_hanging_it() {
    let limit = Duration::from_millis(200);
    let key = ObjectKey::new("k").unwrap();

    // The head never comes.
    let silent = stalled_client(&stalling_server(None, 0).await, limit);
    let answer = tokio::time::timeout(Duration::from_secs(20), silent.get(&key)).await;
    let Err(err) = bounded("a request without an answer", answer) else {
        panic!("a request without an answer fails");
    };
    assert!(format!("{err:?}").contains("Stalled(200ms)"), "{err:?}");

    // The body stops after 10 of 1000 bytes.
    let stalled = stalled_client(&stalling_server(Some(1000), 10).await, limit);
    let read = async {
        let mut object = stalled.get(&key).await.unwrap();
        let mut got = 0;
        while let Some(chunk) = object.body.next().await {
            got += chunk?.len();
        }
        Ok::<_, ferry_store::Error>(got)
    };
    let read = tokio::time::timeout(Duration::from_secs(20), read).await;
    let Err(err) = bounded("a body that stopped", read) else {
        panic!("a body that stopped fails");
    };
    assert!(format!("{err:?}").contains("Stalled(200ms)"), "{err:?}");
}
