//! The S3 API of the gateway: `s3s` parses requests, checks their signatures and writes the
//! XML; this file turns each operation into the [`Gateway`]'s and its outcome into S3's
//! answer. Operations not implemented here answer `NotImplemented` (s3s's default).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use ferry::store::{ByteStream, Error as StoreError, ErrorKind, ObjectMeta};
use ferry::types::ObjectKey;
use futures_util::{Stream, StreamExt};
use s3s::dto::{
    AbortMultipartUploadInput, AbortMultipartUploadOutput, Bucket, CommonPrefix,
    CompleteMultipartUploadInput, CompleteMultipartUploadOutput, CopyObjectInput, CopyObjectOutput,
    CopyObjectResult, CopySource, CreateBucketInput, CreateBucketOutput,
    CreateMultipartUploadInput, CreateMultipartUploadOutput, DeleteObjectInput, DeleteObjectOutput,
    DeleteObjectsInput, DeleteObjectsOutput, DeletedObject, ETag, EncodingType,
    GetBucketLocationInput, GetBucketLocationOutput, GetObjectInput, GetObjectOutput,
    HeadBucketInput, HeadBucketOutput, HeadObjectInput, HeadObjectOutput, ListBucketsInput,
    ListBucketsOutput, ListObjectsInput, ListObjectsOutput, ListObjectsV2Input,
    ListObjectsV2Output, ListPartsInput, ListPartsOutput, Object, Part, PutObjectInput,
    PutObjectOutput, Range, StreamingBlob, Timestamp, UploadPartInput, UploadPartOutput,
};
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::gateway::{BodyFault, Gateway, GatewayError, Page};
use super::uploads::{MAX_PART, UploadError, Uploads};

/// The S3 face of a gateway: one bucket.
pub(crate) struct GatewayS3 {
    pub(crate) bucket: String,
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) uploads: Uploads,
    /// When the gateway started: the `LastModified` of what has no time of its own (a
    /// staged part, an object whose store reports none).
    pub(crate) started: std::time::SystemTime,
}

fn err(code: S3ErrorCode, message: impl Into<String>) -> S3Error {
    S3Error::with_message(code, message.into())
}

impl GatewayS3 {
    fn bucket(&self, bucket: &str) -> S3Result<()> {
        if bucket == self.bucket {
            Ok(())
        } else {
            Err(err(
                S3ErrorCode::NoSuchBucket,
                format!("this gateway serves the bucket {:?} only", self.bucket),
            ))
        }
    }

    /// The `LastModified` of `meta`: when its store says it was written.
    fn modified(&self, meta: Option<&ObjectMeta>) -> Timestamp {
        Timestamp::from(meta.and_then(|m| m.modified).unwrap_or(self.started))
    }
}

/// The key of a request, checked as every store checks it.
fn key(key: &str) -> S3Result<ObjectKey> {
    if key.len() > ObjectKey::MAX_LEN {
        return Err(err(
            S3ErrorCode::KeyTooLongError,
            format!("a key is at most {} bytes", ObjectKey::MAX_LEN),
        ));
    }
    ObjectKey::new(key).map_err(|e| err(S3ErrorCode::InvalidArgument, e.to_string()))
}

fn store_error(e: &StoreError) -> S3Error {
    match e {
        StoreError::NotFound { .. } => err(S3ErrorCode::NoSuchKey, "no such key"),
        StoreError::InvalidKey { .. } | StoreError::UnsafePath { .. } => {
            err(S3ErrorCode::InvalidArgument, e.to_string())
        }
        StoreError::Truncated { .. } => err(S3ErrorCode::IncompleteBody, e.to_string()),
        _ if e.kind() == ErrorKind::Transient => {
            tracing::warn!(error = %crate::error::chain(e), "store failure");
            err(
                S3ErrorCode::ServiceUnavailable,
                "the store failed; try again",
            )
        }
        _ => {
            tracing::error!(error = %crate::error::chain(e), "store failure");
            err(S3ErrorCode::InternalError, e.to_string())
        }
    }
}

fn body_fault(fault: &BodyFault) -> S3Error {
    match fault {
        BodyFault::Digest => err(S3ErrorCode::BadDigest, fault.to_string()),
        BodyFault::Length { .. } | BodyFault::Broken(_) => {
            err(S3ErrorCode::IncompleteBody, fault.to_string())
        }
    }
}

impl From<GatewayError> for S3Error {
    fn from(e: GatewayError) -> S3Error {
        match &e {
            GatewayError::Store(e) => store_error(e),
            GatewayError::Busy { .. } => err(S3ErrorCode::SlowDown, e.to_string()),
            GatewayError::Body(fault) => body_fault(fault),
            GatewayError::Records(_) => {
                tracing::error!(error = %e, "the multipart ETag records failed");
                err(S3ErrorCode::InternalError, e.to_string())
            }
        }
    }
}

impl From<UploadError> for S3Error {
    fn from(e: UploadError) -> S3Error {
        match &e {
            UploadError::NoSuchUpload => err(S3ErrorCode::NoSuchUpload, e.to_string()),
            UploadError::BadPartNumber(_) => err(S3ErrorCode::InvalidArgument, e.to_string()),
            UploadError::InvalidPart(_) => err(S3ErrorCode::InvalidPart, e.to_string()),
            UploadError::InvalidPartOrder => err(S3ErrorCode::InvalidPartOrder, e.to_string()),
            UploadError::Body(fault) => body_fault(fault),
            UploadError::Io(_) => {
                tracing::error!(error = %e, "multipart staging failed");
                err(S3ErrorCode::InternalError, e.to_string())
            }
        }
    }
}

/// A request body as the gateway reads it.
fn body_of(
    blob: Option<StreamingBlob>,
) -> futures_util::stream::BoxStream<'static, Result<Bytes, BodyFault>> {
    match blob {
        None => futures_util::stream::empty().boxed(),
        Some(blob) => blob
            .map(|chunk| chunk.map_err(|e| BodyFault::Broken(e.to_string())))
            .boxed(),
    }
}

fn length(declared: Option<i64>) -> S3Result<Option<u64>> {
    declared
        .map(|n| u64::try_from(n).map_err(|_| err(S3ErrorCode::InvalidArgument, "negative length")))
        .transpose()
}

/// `Content-MD5`: 16 bytes in base64.
fn content_md5(header: Option<&str>) -> S3Result<Option<[u8; 16]>> {
    let Some(text) = header else { return Ok(None) };
    let bad = || {
        err(
            S3ErrorCode::InvalidDigest,
            "Content-MD5 is not 16 bytes in base64",
        )
    };
    let bytes = base64_decode(text.trim()).ok_or_else(bad)?;
    <[u8; 16]>::try_from(bytes.as_slice())
        .map(Some)
        .map_err(|_| bad())
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for group in text.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in group.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    Some(out)
}

/// A stream that is `Sync` because only its owner ever polls it (what `StreamingBlob` asks).
struct Owned(Mutex<ByteStream>);

impl Stream for Owned {
    type Item = Result<Bytes, StoreError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .0
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
            .poll_next(cx)
    }
}

fn etag(text: &str) -> ETag {
    ETag::Strong(text.to_owned())
}

/// S3's `encoding-type=url`: everything but unreserved characters and `/` percent-encoded.
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A continuation token: the cursor in hex (keys may hold what XML cannot).
fn token(cursor: &str) -> String {
    super::gateway::hex(cursor.as_bytes())
}

fn untoken(token: &str) -> S3Result<String> {
    let bad = || err(S3ErrorCode::InvalidArgument, "invalid continuation token");
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Option<Vec<u8>> = (0..token.len() / 2)
        .map(|i| u8::from_str_radix(token.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes.ok_or_else(bad)?).map_err(|_| bad())
}

/// Max keys as asked (S3: at most 1000, default 1000).
fn max_keys(asked: Option<i32>) -> S3Result<usize> {
    match asked {
        None => Ok(1000),
        Some(n) if n < 0 => Err(err(S3ErrorCode::InvalidArgument, "max-keys is negative")),
        Some(n) => Ok((n as usize).min(1000)),
    }
}

impl GatewayS3 {
    fn contents(&self, page: &Page, url: bool) -> (Vec<Object>, Vec<CommonPrefix>) {
        let enc = |s: &str| if url { url_encode(s) } else { s.to_owned() };
        let objects = page
            .objects
            .iter()
            .map(|listed| Object {
                key: Some(enc(listed.meta.key.as_str())),
                size: Some(listed.meta.size as i64),
                e_tag: Some(etag(&listed.etag)),
                last_modified: Some(self.modified(Some(&listed.meta))),
                ..Default::default()
            })
            .collect();
        let prefixes = page
            .prefixes
            .iter()
            .map(|p| CommonPrefix {
                prefix: Some(enc(p)),
            })
            .collect();
        (objects, prefixes)
    }

    /// The key of an upload request, checked against the key the upload `id` was created for.
    async fn upload_key(&self, bucket: &str, k: &str, id: &str) -> S3Result<ObjectKey> {
        self.bucket(bucket)?;
        let k = key(k)?;
        if self.uploads.key(id).await? != k.as_str() {
            return Err(UploadError::NoSuchUpload.into());
        }
        Ok(k)
    }

    async fn write(
        &self,
        key: &ObjectKey,
        body: futures_util::stream::BoxStream<'static, Result<Bytes, BodyFault>>,
        expected: Option<u64>,
        md5: Option<[u8; 16]>,
        etag: Option<String>,
    ) -> S3Result<(ferry::store::ObjectMeta, Arc<str>)> {
        Ok(self.gateway.put(key, body, expected, md5, etag).await?)
    }
}

#[async_trait::async_trait]
impl S3 for GatewayS3 {
    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(vec![Bucket {
                name: Some(self.bucket.clone()),
                creation_date: Some(self.modified(None)),
                ..Default::default()
            }]),
            ..Default::default()
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        if req.input.bucket == self.bucket {
            return Err(err(
                S3ErrorCode::BucketAlreadyOwnedByYou,
                "the gateway's bucket exists",
            ));
        }
        Err(err(
            S3ErrorCode::NotImplemented,
            "the gateway serves one bucket and creates none",
        ))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        self.bucket(&input.bucket)?;
        let key = key(&input.key)?;
        let (opened, length, content_range) = match input.range {
            None => {
                let opened = self.gateway.open(&key).await?;
                let size = opened.meta.size;
                (opened, size, None)
            }
            Some(range) => {
                // The range as asked for (a suffix needs the size: the object's head first),
                // then checked against the size of the object actually opened.
                let (start, end) = match range {
                    Range::Int { first, last } => {
                        (first, last.map_or(u64::MAX, |l| l.saturating_add(1)))
                    }
                    Range::Suffix { .. } => {
                        let size = match self.gateway.head(&key).await? {
                            Some((meta, _)) => meta.size,
                            None => return Err(err(S3ErrorCode::NoSuchKey, "no such key")),
                        };
                        let r = range.check(size)?;
                        (r.start, r.end)
                    }
                };
                let opened = self.gateway.open_range(&key, start, end).await?;
                let size = opened.meta.size;
                let r = range.check(size)?;
                let content_range = format!("bytes {}-{}/{size}", r.start, r.end.saturating_sub(1));
                if (r.start, r.end) != (start.min(size), end.min(size)) {
                    // The object changed between the head and the read (a suffix range).
                    return Err(err(
                        S3ErrorCode::ServiceUnavailable,
                        "the object changed while it was read; try again",
                    ));
                }
                (opened, r.end - r.start, Some(content_range))
            }
        };
        let body = opened.body;
        Ok(S3Response::new(GetObjectOutput {
            body: Some(StreamingBlob::wrap(Owned(Mutex::new(body)))),
            content_length: Some(length as i64),
            content_range,
            accept_ranges: Some("bytes".to_owned()),
            e_tag: Some(etag(&opened.etag)),
            last_modified: Some(self.modified(Some(&opened.meta))),
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        self.bucket(&input.bucket)?;
        let key = key(&input.key)?;
        let Some((meta, tag)) = self.gateway.head(&key).await? else {
            return Err(err(S3ErrorCode::NoSuchKey, "no such key"));
        };
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(meta.size as i64),
            accept_ranges: Some("bytes".to_owned()),
            e_tag: Some(etag(&tag)),
            last_modified: Some(self.modified(Some(&meta))),
            ..Default::default()
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        self.bucket(&input.bucket)?;
        let key = key(&input.key)?;
        let md5 = content_md5(input.content_md5.as_deref())?;
        let expected = length(input.content_length)?;
        let (_, tag) = self
            .write(&key, body_of(input.body), expected, md5, None)
            .await?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag(&tag)),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        self.bucket(&input.bucket)?;
        let key = key(&input.key)?;
        self.gateway.delete(&key).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        self.bucket(&input.bucket)?;
        if input.delete.objects.len() > 1000 {
            return Err(err(
                S3ErrorCode::MalformedXML,
                "at most 1000 keys per DeleteObjects",
            ));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let (mut deleted, mut errors) = (Vec::new(), Vec::new());
        for object in input.delete.objects {
            let outcome = match key(&object.key) {
                Ok(k) => self.gateway.delete(&k).await.map_err(S3Error::from),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(_) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(object.key),
                            ..Default::default()
                        });
                    }
                }
                Err(e) => errors.push(s3s::dto::Error {
                    code: Some(e.code().as_str().to_owned()),
                    key: Some(object.key),
                    message: e.message().map(str::to_owned),
                    ..Default::default()
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        self.bucket(&input.bucket)?;
        let target = key(&input.key)?;
        let CopySource::Bucket {
            bucket,
            key: from,
            version_id,
        } = input.copy_source
        else {
            return Err(err(
                S3ErrorCode::NotImplemented,
                "copy from an access point is not supported",
            ));
        };
        self.bucket(&bucket)?;
        if version_id.is_some() {
            return Err(err(
                S3ErrorCode::NotImplemented,
                "the gateway keeps no versions",
            ));
        }
        let from = key(&from)?;
        let opened = self.gateway.open(&from).await?;
        let size = opened.meta.size;
        let body = opened
            .body
            .map(|chunk| chunk.map_err(|e| BodyFault::Broken(e.to_string())))
            .boxed();
        let (meta, tag) = self.write(&target, body, Some(size), None, None).await?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&tag)),
                last_modified: Some(self.modified(Some(&meta))),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        self.bucket(&input.bucket)?;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let prefix = input.prefix.clone().unwrap_or_default();
        let after = match &input.continuation_token {
            Some(t) => Some(untoken(t)?),
            None => input.start_after.clone(),
        };
        let max = max_keys(input.max_keys)?;
        let page = self
            .gateway
            .list(&prefix, input.delimiter.as_deref(), after, max)
            .await?;
        let (objects, prefixes) = self.contents(&page, url);
        let enc = |s: String| if url { url_encode(&s) } else { s };
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(self.bucket.clone()),
            prefix: Some(enc(prefix)),
            delimiter: input.delimiter.map(enc),
            max_keys: Some(max as i32),
            key_count: Some((objects.len() + prefixes.len()) as i32),
            is_truncated: Some(page.next.is_some()),
            continuation_token: input.continuation_token,
            next_continuation_token: page.next.as_deref().map(token),
            start_after: input.start_after.map(enc),
            contents: Some(objects),
            common_prefixes: Some(prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        self.bucket(&input.bucket)?;
        let url = input
            .encoding_type
            .as_ref()
            .is_some_and(|e| e.as_str() == EncodingType::URL);
        let prefix = input.prefix.clone().unwrap_or_default();
        let max = max_keys(input.max_keys)?;
        let page = self
            .gateway
            .list(
                &prefix,
                input.delimiter.as_deref(),
                input.marker.clone(),
                max,
            )
            .await?;
        let (objects, prefixes) = self.contents(&page, url);
        let enc = |s: String| if url { url_encode(&s) } else { s };
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(self.bucket.clone()),
            prefix: Some(enc(prefix)),
            delimiter: input.delimiter.map(enc),
            marker: input.marker.map(enc),
            max_keys: Some(max as i32),
            is_truncated: Some(page.next.is_some()),
            next_marker: page.next.map(enc),
            contents: Some(objects),
            common_prefixes: Some(prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        self.bucket(&input.bucket)?;
        let k = key(&input.key)?;
        let id = self.uploads.create(k.as_str()).await?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let input = req.input;
        self.upload_key(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let expected = length(input.content_length)?;
        let md5 = self
            .uploads
            .put_part(
                &input.upload_id,
                input.part_number,
                body_of(input.body),
                expected,
            )
            .await?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag(&md5)),
            ..Default::default()
        }))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        self.upload_key(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let after = input.part_number_marker.unwrap_or(0);
        let max = input.max_parts.unwrap_or(1000).clamp(0, 1000) as usize;
        let all: Vec<_> = self
            .uploads
            .parts(&input.upload_id)
            .await?
            .into_iter()
            .filter(|p| p.number > after)
            .collect();
        let truncated = all.len() > max;
        let parts: Vec<Part> = all
            .into_iter()
            .take(max)
            .map(|p| Part {
                part_number: Some(p.number),
                size: Some(p.size as i64),
                e_tag: Some(etag(&p.md5)),
                last_modified: Some(self.modified(None)),
                ..Default::default()
            })
            .collect();
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            is_truncated: Some(truncated),
            next_part_number_marker: parts.last().and_then(|p| p.part_number),
            max_parts: Some(max as i32),
            parts: Some(parts),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let k = self
            .upload_key(&input.bucket, &input.key, &input.upload_id)
            .await?;
        let chosen: Vec<(i32, String)> = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let number = p.part_number.unwrap_or(0);
                if !(1..=MAX_PART).contains(&number) {
                    return Err(err(
                        S3ErrorCode::InvalidPart,
                        format!("part number {number} is not between 1 and {MAX_PART}"),
                    ));
                }
                Ok((number, p.e_tag.map(ETag::into_value).unwrap_or_default()))
            })
            .collect::<S3Result<_>>()?;
        if chosen.is_empty() {
            return Err(err(
                S3ErrorCode::MalformedXML,
                "a completed upload names at least one part",
            ));
        }
        let (files, size, tag) = self.uploads.assemble(&input.upload_id, &chosen).await?;
        let (_, tag) = self
            .write(&k, files.stream().boxed(), Some(size), None, Some(tag))
            .await?;
        self.uploads.remove(&input.upload_id).await?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(etag(&tag)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        self.upload_key(&input.bucket, &input.key, &input.upload_id)
            .await?;
        self.uploads.remove(&input.upload_id).await?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_of_md5_decodes() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e, base64 1B2M2Y8AsgTpgAmY7PhCfg==
        let bytes = base64_decode("1B2M2Y8AsgTpgAmY7PhCfg==").unwrap_or_default();
        assert_eq!(
            super::super::gateway::hex(&bytes),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert!(base64_decode("not base64!").is_none());
    }

    #[test]
    fn tokens_round_trip_any_key() {
        for cursor in ["a", "dir/ünï \u{1}", "x\u{10FFFF}"] {
            assert_eq!(untoken(&token(cursor)).ok().as_deref(), Some(cursor));
        }
        assert!(untoken("zz").is_err());
        assert!(untoken("abc").is_err());
    }

    #[test]
    fn url_encoding_keeps_slashes_and_unreserved() {
        assert_eq!(url_encode("a b/c+d%é"), "a%20b/c%2Bd%25%C3%A9");
    }
}
