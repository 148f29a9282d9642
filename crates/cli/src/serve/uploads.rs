//! Multipart uploads in progress: their parts wait in the state directory
//! (`<state>/serve/<job>/uploads/<upload id>/`) until the client completes the upload, when the
//! gateway streams them, in order, through its write path as one object.
//!
//! Parts are not made durable (a client whose upload is cut by a crash uploads its parts
//! again); the completed object is, as any acknowledged write.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::gateway::{BodyFault, hex};

/// Part numbers S3 allows.
pub(crate) const MAX_PART: i32 = 10_000;

/// Why an upload operation was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UploadError {
    #[error("no such upload")]
    NoSuchUpload,
    #[error("part number {0} is not between 1 and 10000")]
    BadPartNumber(i32),
    #[error("part {0} was not uploaded, or its ETag differs")]
    InvalidPart(i32),
    #[error("the parts are not in ascending order")]
    InvalidPartOrder,
    #[error("{0}")]
    Body(BodyFault),
    #[error("upload staging: {0}")]
    Io(#[from] std::io::Error),
}

/// One uploaded part.
#[derive(Debug, Clone)]
pub(crate) struct PartInfo {
    pub(crate) number: i32,
    pub(crate) size: u64,
    pub(crate) md5: String,
}

/// The uploads of one gateway.
#[derive(Debug)]
pub(crate) struct Uploads {
    root: PathBuf,
    counter: AtomicU64,
}

impl Uploads {
    /// The uploads kept under `root` (created when missing).
    pub(crate) fn open(root: PathBuf) -> std::io::Result<Uploads> {
        std::fs::create_dir_all(&root)?;
        Ok(Uploads {
            root,
            counter: AtomicU64::new(0),
        })
    }

    fn dir(&self, id: &str) -> Result<PathBuf, UploadError> {
        // Ids are ours: 32 lowercase hex digits. Anything else names no upload (and never
        // a path outside the root).
        if id.len() != 32
            || !id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(UploadError::NoSuchUpload);
        }
        let dir = self.root.join(id);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(UploadError::NoSuchUpload)
        }
    }

    /// Starts an upload of `key`; returns its id.
    pub(crate) async fn create(&self, key: &str) -> Result<String, UploadError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seed = format!(
            "{}:{}:{}:{key}",
            now.as_nanos(),
            std::process::id(),
            self.counter.fetch_add(1, Ordering::Relaxed)
        );
        let id = hex(&blake3::hash(seed.as_bytes()).as_bytes()[..16]);
        let dir = self.root.join(&id);
        tokio::fs::create_dir(&dir).await?;
        tokio::fs::write(dir.join("key"), key.as_bytes()).await?;
        Ok(id)
    }

    /// The key an upload is for.
    pub(crate) async fn key(&self, id: &str) -> Result<String, UploadError> {
        let dir = self.dir(id)?;
        Ok(String::from_utf8_lossy(&tokio::fs::read(dir.join("key")).await?).into_owned())
    }

    /// Stores part `number` of upload `id` (replacing an earlier upload of that part);
    /// returns its MD5 in hex.
    pub(crate) async fn put_part<S>(
        &self,
        id: &str,
        number: i32,
        mut body: S,
        expected: Option<u64>,
    ) -> Result<String, UploadError>
    where
        S: Stream<Item = Result<Bytes, BodyFault>> + Unpin,
    {
        if !(1..=MAX_PART).contains(&number) {
            return Err(UploadError::BadPartNumber(number));
        }
        let dir = self.dir(id)?;
        let tmp = dir.join(format!(
            ".tmp-{number}-{}",
            self.counter.fetch_add(1, Ordering::Relaxed)
        ));
        let mut file = tokio::fs::File::create(&tmp).await?;
        let mut md5 = Md5::new();
        let mut got = 0u64;
        let fault = loop {
            match body.next().await {
                Some(Ok(chunk)) => {
                    got += chunk.len() as u64;
                    md5.update(&chunk);
                    if let Err(e) = file.write_all(&chunk).await {
                        let _ = tokio::fs::remove_file(&tmp).await;
                        return Err(e.into());
                    }
                }
                Some(Err(fault)) => break Some(fault),
                None => {
                    break expected
                        .filter(|&e| e != got)
                        .map(|expected| BodyFault::Length { expected, got });
                }
            }
        };
        if let Some(fault) = fault {
            drop(file);
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(UploadError::Body(fault));
        }
        file.flush().await?;
        drop(file);
        let md5 = hex(&md5.finalize());
        for old in self.part_files(&dir, Some(number)).await? {
            let _ = tokio::fs::remove_file(old.1).await;
        }
        tokio::fs::rename(&tmp, dir.join(format!("{number:05}.{md5}"))).await?;
        Ok(md5)
    }

    /// Part files of `dir` (of part `only` when given), by part number.
    async fn part_files(
        &self,
        dir: &Path,
        only: Option<i32>,
    ) -> Result<Vec<(PartInfo, PathBuf)>, UploadError> {
        let mut out = Vec::new();
        let mut entries = tokio::fs::read_dir(dir).await?;
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name();
            let Some((number, md5)) = name.to_str().and_then(|n| n.split_once('.')) else {
                continue;
            };
            let Ok(number) = number.parse::<i32>() else {
                continue;
            };
            if only.is_some_and(|o| o != number) {
                continue;
            }
            let size = entry.metadata().await?.len();
            out.push((
                PartInfo {
                    number,
                    size,
                    md5: md5.to_owned(),
                },
                entry.path(),
            ));
        }
        out.sort_by_key(|(p, _)| p.number);
        Ok(out)
    }

    /// The parts of upload `id`, by number.
    pub(crate) async fn parts(&self, id: &str) -> Result<Vec<PartInfo>, UploadError> {
        let dir = self.dir(id)?;
        Ok(self
            .part_files(&dir, None)
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect())
    }

    /// The object that completing upload `id` with `chosen` (part number, ETag as the client
    /// sent it) makes: its content as a stream of the parts' files, its size, and its ETag
    /// (the MD5 of the parts' MD5s, `-` their count).
    pub(crate) async fn assemble(
        &self,
        id: &str,
        chosen: &[(i32, String)],
    ) -> Result<(FileChain, u64, String), UploadError> {
        let dir = self.dir(id)?;
        let have = self.part_files(&dir, None).await?;
        let mut files = Vec::with_capacity(chosen.len());
        let mut md5s = Md5::new();
        let mut size = 0;
        let mut last = 0;
        for (number, etag) in chosen {
            if *number <= last {
                return Err(UploadError::InvalidPartOrder);
            }
            last = *number;
            let etag = etag.trim_matches('"');
            let Some((part, path)) = have.iter().find(|(p, _)| p.number == *number) else {
                return Err(UploadError::InvalidPart(*number));
            };
            if !etag.is_empty() && !etag.eq_ignore_ascii_case(&part.md5) {
                return Err(UploadError::InvalidPart(*number));
            }
            let raw: Vec<u8> = (0..part.md5.len() / 2)
                .filter_map(|i| u8::from_str_radix(&part.md5[2 * i..2 * i + 2], 16).ok())
                .collect();
            md5s.update(&raw);
            size += part.size;
            files.push(path.clone());
        }
        if files.is_empty() {
            return Err(UploadError::InvalidPart(0));
        }
        let etag = format!("{}-{}", hex(&md5s.finalize()), files.len());
        Ok((FileChain { files }, size, etag))
    }

    /// Forgets upload `id` and its parts.
    pub(crate) async fn remove(&self, id: &str) -> Result<(), UploadError> {
        let dir = self.dir(id)?;
        tokio::fs::remove_dir_all(dir).await?;
        Ok(())
    }
}

/// Files read one after the other as one stream of chunks.
pub(crate) struct FileChain {
    files: Vec<PathBuf>,
}

/// Chunk size when reading parts back.
const CHUNK: usize = 1 << 20;

impl FileChain {
    pub(crate) fn stream(self) -> impl Stream<Item = Result<Bytes, BodyFault>> + Send + 'static {
        let files = self.files.into_iter();
        futures_util::stream::unfold(
            (files, None::<tokio::fs::File>),
            |(mut files, mut open)| async move {
                loop {
                    let file = match open.as_mut() {
                        Some(file) => file,
                        None => {
                            let path = files.next()?;
                            match tokio::fs::File::open(&path).await {
                                Ok(file) => open.insert(file),
                                Err(e) => {
                                    return Some((
                                        Err(BodyFault::Broken(e.to_string())),
                                        (Vec::new().into_iter(), None),
                                    ));
                                }
                            }
                        }
                    };
                    let mut buf = BytesMut::with_capacity(CHUNK);
                    match file.read_buf(&mut buf).await {
                        Ok(0) => open = None,
                        Ok(_) => return Some((Ok(buf.freeze()), (files, open))),
                        Err(e) => {
                            return Some((
                                Err(BodyFault::Broken(e.to_string())),
                                (Vec::new().into_iter(), None),
                            ));
                        }
                    }
                }
            },
        )
    }
}
