//! [`DirStore`]'s uploads in parts: one named temp file beside the object's final name,
//! written part by part at each part's offset and fsynced after each, renamed into place by
//! `complete_upload`. [`DirStore::open`] keeps these files (they are what a resumed copy
//! continues); `abort_upload` removes one.

use std::fs::File;
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use ferry_types::ObjectKey;
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use super::{
    DirStore, TEMP_PREFIX, Walk, blocking, meta_of, next_chunk, segments, split_last,
    temp_name_after,
};
use crate::{BoxStream, Error, ObjectMeta, Op, PartTag, Result, UploadId};

/// The start of an upload's temp file name: a temp name (never listed, never a key) that
/// [`DirStore::open`] keeps, unlike the temp files of puts.
pub(super) const UPLOAD_PREFIX: &str = ".ferry-tmp-up-";

const _: () = assert!(UPLOAD_PREFIX.len() > TEMP_PREFIX.len());

fn gone(key: &ObjectKey, upload: &UploadId) -> Error {
    Error::UploadNotFound {
        key: key.clone(),
        upload: upload.as_str().to_owned(),
    }
}

/// The upload's file name, when `upload` is one this store could have made (anything else
/// never reaches a path).
fn file_name<'a>(key: &ObjectKey, upload: &'a UploadId) -> Result<&'a str> {
    let name = upload.as_str();
    let rest = name
        .strip_prefix(UPLOAD_PREFIX)
        .ok_or_else(|| gone(key, upload))?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(gone(key, upload));
    }
    Ok(name)
}

/// A part's tag: its length and its BLAKE3 (`LEN-HEX`).
fn tag(len: u64, hash: &blake3::Hash) -> PartTag {
    PartTag::new(format!("{len}-{}", hash.to_hex()))
}

/// The length a part's tag names.
fn tag_len(key: &ObjectKey, upload: &UploadId, tag: &PartTag) -> Result<u64> {
    tag.as_str()
        .split_once('-')
        .and_then(|(len, _)| len.parse().ok())
        .ok_or_else(|| gone(key, upload))
}

impl DirStore {
    /// Opens the upload's file for writing, `UploadNotFound` when it is gone.
    fn open_upload(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
    ) -> Result<(rustix::fd::OwnedFd, File)> {
        let name = file_name(key, upload)?;
        let segs = segments(key)?;
        let (_, dirs) = split_last(&segs);
        let Walk::Dir(dir) = self.inner.walk(Op::Put, key, dirs, None)? else {
            return Err(gone(key, upload));
        };
        let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
            Ok(fd) => Ok((dir, File::from(fd))),
            Err(Errno::NOENT | Errno::LOOP) => Err(gone(key, upload)),
            Err(e) => Err(Error::io(Op::Put, key.as_str(), e)),
        }
    }

    pub(super) async fn create_upload_inner(&self, key: &ObjectKey) -> Result<UploadId> {
        let segs: Vec<String> = segments(key)?.into_iter().map(str::to_owned).collect();
        let this = self.clone();
        let k = key.clone();
        blocking(Op::Put, move || {
            let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
            let (_, dirs) = split_last(&segs);
            let mut created = Vec::new();
            let Walk::Dir(dir) = this.inner.walk(Op::Put, &k, dirs, Some(&mut created))? else {
                return Err(Error::io(Op::Put, k.as_str(), Errno::NOENT));
            };
            let name = temp_name_after(UPLOAD_PREFIX);
            let flags =
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let io = |e| Error::io(Op::Put, k.as_str(), e);
            let fd = rustix::fs::openat(&dir, name.as_str(), flags, Mode::from_raw_mode(0o644))
                .map_err(io)?;
            // The file and its name survive a crash from now on: a resumed copy finds it.
            rustix::fs::fsync(&fd).map_err(io)?;
            rustix::fs::fsync(&dir).map_err(io)?;
            for parent in created {
                this.inner.fsync_path(&parent, true)?;
            }
            Ok(UploadId::new(name))
        })
        .await
    }

    pub(super) async fn put_part_inner(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        offset: u64,
        mut body: BoxStream<'_, Result<Bytes>>,
    ) -> Result<PartTag> {
        let this = self.clone();
        let (k, u) = (key.clone(), upload.clone());
        let (_, mut file) = blocking(Op::Put, move || this.open_upload(&k, &u)).await?;
        let mut hasher = blake3::Hasher::new();
        let mut at = offset;
        // A chunk is written while the next one is pulled from the body.
        let mut next = next_chunk(&mut body).await?;
        while let Some(chunk) = next {
            hasher.update(&chunk);
            let k = key.clone();
            let write = blocking(Op::Put, move || {
                file.write_all_at(&chunk, at)
                    .map_err(|e| Error::io(Op::Put, k.as_str(), e))?;
                Ok((file, chunk.len() as u64))
            });
            let (written, following) = tokio::join!(write, next_chunk(&mut body));
            let (f, len) = written?;
            file = f;
            at += len;
            next = following?;
        }
        let k = key.clone();
        blocking(Op::Put, move || {
            // Durable before its tag is handed out (and recorded in a checkpoint).
            file.sync_data()
                .map_err(|e| Error::io(Op::Put, k.as_str(), e))
        })
        .await?;
        Ok(tag(at - offset, &hasher.finalize()))
    }

    pub(super) async fn complete_upload_inner(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
        parts: &[PartTag],
    ) -> Result<ObjectMeta> {
        let mut total = 0u64;
        for part in parts {
            total += tag_len(key, upload, part)?;
        }
        let this = self.clone();
        let (k, u) = (key.clone(), upload.clone());
        let stat = blocking(Op::Put, move || {
            let (dir, file) = this.open_upload(&k, &u)?;
            let io = |e| Error::io(Op::Put, k.as_str(), e);
            let len = file.metadata().map_err(io)?.len();
            if len < total {
                // Parts the tags name are missing: the file is not what was recorded.
                return Err(gone(&k, &u));
            }
            if len > total {
                // A part written after the last one recorded, by a run that stopped.
                file.set_len(total).map_err(io)?;
            }
            let segs = segments(&k)?;
            let (target, _) = split_last(&segs);
            let errno = |e| Error::io(Op::Put, k.as_str(), e);
            let stat = rustix::fs::fstat(&file).map_err(errno)?;
            rustix::fs::renameat(&dir, u.as_str(), &dir, target).map_err(errno)?;
            Ok(stat)
        })
        .await?;
        self.inner.written(key, Vec::new());
        Ok(meta_of(key.clone(), &stat))
    }

    pub(super) async fn abort_upload_inner(
        &self,
        key: &ObjectKey,
        upload: &UploadId,
    ) -> Result<()> {
        let Ok(name) = file_name(key, upload) else {
            return Ok(()); // never one of this store's: nothing to remove
        };
        let name = name.to_owned();
        let this = self.clone();
        let k = key.clone();
        blocking(Op::Delete, move || {
            let segs = segments(&k)?;
            let (_, dirs) = split_last(&segs);
            let Walk::Dir(dir) = this.inner.walk(Op::Delete, &k, dirs, None)? else {
                return Ok(());
            };
            match rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(Error::io(Op::Delete, k.as_str(), e)),
            }
        })
        .await
    }
}
