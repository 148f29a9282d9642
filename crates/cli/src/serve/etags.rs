//! The ETags the gateway answers with.
//!
//! A single-part object's ETag is the MD5 of its content: remembered per store version from
//! the write that made it, or computed once by reading the object. An object completed from a
//! multipart upload has another ETag (the MD5 of its parts' MD5s, `-N`) that its content alone
//! does not give back, so the gateway keeps it durably, under the state directory, by key and
//! content: the key, the size and BLAKE3 of the content, the ETag. A read of a version the
//! gateway does not remember (after a restart, or once the job has moved the object to DST)
//! hashes the content and answers the kept ETag when the content is the one it was given for.
//!
//! The record file is a journal of JSON lines, appended and fsynced before a completed
//! upload is acknowledged, and compacted when the gateway starts. A later write of the key
//! appends a line that forgets the record without a sync: a crash may bring the record back,
//! and it then names only content identical to the multipart object's.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry::store::{ObjectMeta, Version};
use ferry::types::ObjectKey;
use serde::{Deserialize, Serialize};

use super::gateway::{Side, hex, lock};

/// ETags remembered at most; past it the memory is cleared (each is recomputed on demand).
const ETAG_CAP: usize = 1 << 20;

/// An object's ETag, remembered for one version of it.
type Remembered = (Version, Arc<str>);

/// The ETags of the objects the gateway wrote or read, per side and version, in memory.
#[derive(Default)]
pub(crate) struct Etags {
    map: Mutex<HashMap<(Side, ObjectKey), Remembered>>,
}

impl Etags {
    pub(crate) fn get(&self, side: Side, meta: &ObjectMeta) -> Option<Arc<str>> {
        let map = lock(&self.map);
        map.get(&(side, meta.key.clone()))
            .filter(|(version, _)| *version == meta.version)
            .map(|(_, etag)| Arc::clone(etag))
    }

    pub(crate) fn insert(&self, side: Side, meta: &ObjectMeta, etag: Arc<str>) {
        let mut map = lock(&self.map);
        if map.len() >= ETAG_CAP {
            map.clear();
        }
        map.insert((side, meta.key.clone()), (meta.version.clone(), etag));
    }
}

/// The ETag a multipart upload gave to some content of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tagged {
    pub(crate) size: u64,
    pub(crate) blake3: [u8; 32],
    pub(crate) etag: Arc<str>,
}

/// One line of the journal.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Record {
        key: String,
        size: u64,
        blake3: String,
        etag: String,
    },
    Forget {
        forget: String,
    },
}

impl Line {
    fn record(key: &ObjectKey, tagged: &Tagged) -> Line {
        Line::Record {
            key: key.as_str().to_owned(),
            size: tagged.size,
            blake3: hex(&tagged.blake3),
            etag: tagged.etag.to_string(),
        }
    }

    /// The line as written: JSON and a newline.
    fn bytes(&self) -> std::io::Result<Vec<u8>> {
        let mut text = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        text.push(b'\n');
        Ok(text)
    }
}

/// The ETags of objects completed from multipart uploads, kept durably in one file.
pub(crate) struct MultipartTags {
    path: PathBuf,
    /// The records, and the journal they are appended to (one lock: a record and a later
    /// forget of its key reach the file in the order they were made).
    inner: Arc<Mutex<Journal>>,
}

struct Journal {
    records: HashMap<ObjectKey, Tagged>,
    file: File,
}

impl MultipartTags {
    /// The records kept at `path` (a new, empty file when there is none), compacted.
    ///
    /// # Errors
    /// An I/O error, or a line in the middle of the file that is no record (naming the
    /// file and line); a torn last line, cut by a crash while it was appended, is dropped.
    pub(crate) fn open(path: PathBuf) -> std::io::Result<MultipartTags> {
        let records = match File::open(&path) {
            Ok(file) => read_journal(&path, file)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(e),
        };
        compact(&path, &records)?;
        let file = File::options().append(true).open(&path)?;
        Ok(MultipartTags {
            path,
            inner: Arc::new(Mutex::new(Journal { records, file })),
        })
    }

    /// The record of `key` when its content may be the one recorded (same `size`).
    pub(crate) fn candidate(&self, key: &ObjectKey, size: u64) -> Option<Tagged> {
        lock(&self.inner)
            .records
            .get(key)
            .filter(|t| t.size == size)
            .cloned()
    }

    /// Records `tagged` for `key`, durably: the journal is synced when this returns.
    ///
    /// # Errors
    /// The file's I/O error.
    pub(crate) async fn record(&self, key: &ObjectKey, tagged: Tagged) -> std::io::Result<()> {
        let inner = Arc::clone(&self.inner);
        let key = key.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let line = Line::record(&key, &tagged);
            let file = {
                let mut journal = lock(&inner);
                append(&mut journal.file, &line)?;
                journal.records.insert(key, tagged);
                journal.file.try_clone()?
            };
            file.sync_data()
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Forgets the record of `key`, if any (a write or delete of the key replaced its content).
    /// Not synced: see the module's docs.
    ///
    /// # Errors
    /// The file's I/O error.
    pub(crate) fn forget(&self, key: &ObjectKey) -> std::io::Result<()> {
        let mut journal = lock(&self.inner);
        if journal.records.remove(key).is_some() {
            let line = Line::Forget {
                forget: key.as_str().to_owned(),
            };
            append(&mut journal.file, &line)?;
        }
        Ok(())
    }
}

fn append(file: &mut File, line: &Line) -> std::io::Result<()> {
    file.write_all(&line.bytes()?)
}

fn bad(path: &Path, number: usize, why: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{} line {number}: {why}", path.display()),
    )
}

fn read_journal(path: &Path, file: File) -> std::io::Result<HashMap<ObjectKey, Tagged>> {
    let mut records = HashMap::new();
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(records);
        }
        number += 1;
        if buf.last() != Some(&b'\n') {
            // The last line, cut while it was appended: its write was never acknowledged.
            return Ok(records);
        }
        let line: Line = serde_json::from_slice(&buf).map_err(|e| bad(path, number, e))?;
        match line {
            Line::Record {
                key,
                size,
                blake3,
                etag,
            } => {
                let key = ObjectKey::new(key).map_err(|e| bad(path, number, e))?;
                let blake3 = blake3::Hash::from_hex(&blake3).map_err(|e| bad(path, number, e))?;
                records.insert(
                    key,
                    Tagged {
                        size,
                        blake3: *blake3.as_bytes(),
                        etag: etag.into(),
                    },
                );
            }
            Line::Forget { forget } => {
                let key = ObjectKey::new(forget).map_err(|e| bad(path, number, e))?;
                records.remove(&key);
            }
        }
    }
}

/// Rewrites the journal at `path` with `records` only: a temporary file beside it, synced,
/// renamed over it, the directory synced.
fn compact(path: &Path, records: &HashMap<ObjectKey, Tagged>) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    let mut keys: Vec<&ObjectKey> = records.keys().collect();
    keys.sort();
    let mut text = Vec::new();
    for key in keys {
        text.extend(Line::record(key, &records[key]).bytes()?);
    }
    file.write_all(&text)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(content: &[u8], etag: &str) -> Tagged {
        Tagged {
            size: content.len() as u64,
            blake3: *blake3::hash(content).as_bytes(),
            etag: etag.into(),
        }
    }

    #[tokio::test]
    async fn records_survive_a_reopen_and_forgets_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("multipart-etags");
        let (a, b) = (
            ObjectKey::new("a").unwrap(),
            ObjectKey::new("dir/b").unwrap(),
        );
        {
            let tags = MultipartTags::open(path.clone()).unwrap();
            tags.record(&a, tagged(b"aaaa", "11-2")).await.unwrap();
            tags.record(&b, tagged(b"bb", "22-3")).await.unwrap();
            tags.record(&b, tagged(b"bbb", "33-4")).await.unwrap();
            tags.forget(&a).unwrap();
            assert_eq!(tags.candidate(&a, 4), None);
        }
        let tags = MultipartTags::open(path.clone()).unwrap();
        assert_eq!(
            tags.candidate(&a, 4),
            None,
            "a forgotten record stays forgotten"
        );
        assert_eq!(tags.candidate(&b, 2), None, "the later record replaced it");
        assert_eq!(tags.candidate(&b, 3), Some(tagged(b"bbb", "33-4")));
        // Compacted: one line per live record.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
    }

    #[tokio::test]
    async fn a_torn_last_line_is_dropped_and_a_bad_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("multipart-etags");
        let k = ObjectKey::new("k").unwrap();
        {
            let tags = MultipartTags::open(path.clone()).unwrap();
            tags.record(&k, tagged(b"kk", "aa-2")).await.unwrap();
        }
        let whole = std::fs::read(&path).unwrap();
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"key":"x","size":1,"bla"#);
        std::fs::write(&path, &torn).unwrap();
        let tags = MultipartTags::open(path.clone()).unwrap();
        assert_eq!(tags.candidate(&k, 2), Some(tagged(b"kk", "aa-2")));
        drop(tags);

        let mut bad = b"not json\n".to_vec();
        bad.extend_from_slice(&whole);
        std::fs::write(&path, &bad).unwrap();
        let err = MultipartTags::open(path.clone())
            .err()
            .expect("a bad line is refused");
        assert!(err.to_string().contains("line 1"), "{err}");
        assert!(err.to_string().contains("multipart-etags"), "{err}");
    }
}
