//! Checking SRC and DST before anything moves, and a walk of SRC that finds what the
//! directory store will not move (symlinks, special files, names that are not UTF-8) so that
//! each is reported and counted as skipped, and totals for the progress display and `plan`.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::Result;
use ferry::store::TEMP_PREFIX;
use futures_util::StreamExt;

use crate::error::{Explain, fail, usage};
use crate::location::Location;

/// SRC and DST, resolved and checked.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    /// A local source is canonical (links and `..` resolved).
    pub(crate) source: Location,
    /// A local destination is resolved as far as it exists.
    pub(crate) target: Location,
    /// Whether DST exists now (a bucket is taken to exist: its first listing says if not).
    pub(crate) target_exists: bool,
}

/// Resolves SRC and DST and refuses what cannot work: a missing source directory, SRC == DST,
/// one inside the other (after resolving links and `..`, or by whole prefix segments in one
/// bucket), and a local state directory (`None` when the state is in a bucket) inside a local
/// SRC or DST.
pub(crate) fn endpoints(
    source: &Location,
    target: &Location,
    state: Option<&Path>,
) -> Result<Endpoints> {
    let src = match source {
        Location::Local(path) => Location::Local(source_dir(path)?),
        bucket => bucket.clone(),
    };
    let (dst, target_exists) = match target {
        Location::Local(dst_arg) => {
            let (dst, exists) = resolve_maybe_missing(dst_arg)?;
            if exists && !dst.is_dir() {
                return Err(fail(
                    format!("the destination {} is not a directory", dst_arg.display()),
                    "give a directory (it is created when missing)",
                ));
            }
            (Location::Local(dst), exists)
        }
        bucket => (bucket.clone(), true),
    };
    let nesting = match (&src, &dst) {
        (Location::Local(s), Location::Local(d)) if s == d => Some(std::cmp::Ordering::Equal),
        (Location::Local(s), Location::Local(d)) if d.starts_with(s) => {
            Some(std::cmp::Ordering::Less)
        }
        (Location::Local(s), Location::Local(d)) if s.starts_with(d) => {
            Some(std::cmp::Ordering::Greater)
        }
        _ => src.bucket_nesting(&dst),
    };
    match nesting {
        Some(std::cmp::Ordering::Equal) => {
            let what = match src {
                Location::Local(_) => "directory",
                Location::Bucket(_) => "place",
            };
            return Err(usage(
                format!("source and destination are the same {what}: {src}"),
                "give a different DST",
            ));
        }
        Some(std::cmp::Ordering::Less) => {
            return Err(usage(
                format!("the destination {dst} is inside the source {src}"),
                "the copy would be copied again: choose a DST outside SRC",
            ));
        }
        Some(std::cmp::Ordering::Greater) => {
            return Err(usage(
                format!("the source {src} is inside the destination {dst}"),
                "choose a DST that does not contain SRC",
            ));
        }
        None => {}
    }
    let state = state.map(resolve_maybe_missing).transpose()?;
    for (side, end) in [("source", &src), ("destination", &dst)] {
        if let (Location::Local(dir), Some((state, _))) = (end, &state)
            && state.starts_with(dir)
        {
            return Err(usage(
                format!(
                    "the state directory {} is inside the {side} {}",
                    state.display(),
                    dir.display()
                ),
                "pass --state DIR outside both trees",
            ));
        }
    }
    Ok(Endpoints {
        source: src,
        target: dst,
        target_exists,
    })
}

/// The canonical path of a source directory, or an error saying what is wrong with it.
fn source_dir(src_arg: &Path) -> Result<PathBuf> {
    let src = fs::canonicalize(src_arg).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            "check the path: SRC must be an existing directory"
        } else {
            "check the path and its permissions"
        };
        anyhow::Error::new(e).context(crate::error::CliError {
            code: crate::error::EXIT_ERROR,
            message: format!("cannot open the source directory {}", src_arg.display()),
            hint: Some(hint.to_owned()),
        })
    })?;
    if !src.is_dir() {
        return Err(fail(
            format!("the source {} is not a directory", src_arg.display()),
            "ferry migrates directory trees: give the directory that holds the file",
        ));
    }
    Ok(src)
}

/// Canonicalizes the longest existing ancestor of `path` and appends the rest, so that a DST
/// that does not exist yet is still compared with SRC through links and `..`.
fn resolve_maybe_missing(path: &Path) -> Result<(PathBuf, bool)> {
    let abs = std::path::absolute(path).explain(|| {
        (
            format!("cannot resolve the path {}", path.display()),
            "check that the current directory still exists".to_owned(),
        )
    })?;
    let parts: Vec<Component<'_>> = abs.components().collect();
    // The longest prefix that exists, resolved; then the rest applied by hand.
    for cut in (1..=parts.len()).rev() {
        let head: PathBuf = parts[..cut].iter().collect();
        if let Ok(mut base) = fs::canonicalize(&head) {
            for part in &parts[cut..] {
                match part {
                    Component::ParentDir => {
                        base.pop();
                    }
                    Component::Normal(name) => base.push(name),
                    _ => {}
                }
            }
            return Ok((base, cut == parts.len()));
        }
    }
    Ok((abs, false))
}

/// An entry of SRC that is not moved.
#[derive(Debug, Clone)]
pub(crate) struct SkippedEntry {
    /// The path relative to SRC (lossy for names that are not UTF-8).
    pub(crate) path: String,
    pub(crate) reason: &'static str,
}

/// What a walk of SRC found.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scan {
    pub(crate) objects: u64,
    pub(crate) bytes: u64,
    pub(crate) largest: u64,
    pub(crate) skipped: Vec<SkippedEntry>,
}

/// What SRC holds under `prefix`: [`scan`] of a directory, or a listing of a bucket (every
/// object of a bucket is moved; nothing is skipped there).
pub(crate) async fn survey(source: &Location, prefix: &str) -> Result<Scan> {
    match source {
        Location::Local(root) => scan(root, prefix),
        Location::Bucket(url) => {
            let store = crate::run::open_store("source", source).await?;
            let mut out = Scan::default();
            let mut listing = store.list(prefix, None);
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| {
                    anyhow::Error::new(e).context(crate::error::CliError {
                        code: crate::error::EXIT_ERROR,
                        message: format!("cannot list the source {url}"),
                        hint: Some(crate::run::BUCKET_HINT.to_owned()),
                    })
                })?;
                out.objects += 1;
                out.bytes += meta.size;
                out.largest = out.largest.max(meta.size);
            }
            Ok(out)
        }
    }
}

/// Walks `root` without following links, counting the regular files whose relative path
/// starts with `prefix`, and listing what is skipped. A directory that cannot be read is an
/// error naming it (the migration could not list it either).
pub(crate) fn scan(root: &Path, prefix: &str) -> Result<Scan> {
    let mut out = Scan::default();
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let entries = fs::read_dir(&dir).explain(|| {
            (
                format!("cannot read the directory {}", dir.display()),
                "fix its permissions (ferry needs to list every directory of SRC)".to_owned(),
            )
        })?;
        for entry in entries {
            let entry = entry.explain(|| {
                (
                    format!("cannot read the directory {}", dir.display()),
                    "fix its permissions".to_owned(),
                )
            })?;
            let name = entry.file_name();
            let Some(name_str) = name.to_str() else {
                let shown = format!("{rel}{}", String::from_utf8_lossy(name.as_bytes()));
                if shown.starts_with(prefix) {
                    out.skipped.push(SkippedEntry {
                        path: shown,
                        reason: "name is not UTF-8",
                    });
                }
                continue;
            };
            let key = format!("{rel}{name_str}");
            // A directory can hold wanted keys when its path and the prefix agree so far.
            let wanted_dir = |key: &str| {
                let dir = format!("{key}/");
                dir.starts_with(prefix) || prefix.starts_with(&dir)
            };
            let ty = match entry.file_type() {
                Ok(ty) => ty,
                Err(e) => {
                    return Err(e).explain(|| {
                        (
                            format!("cannot stat {}", entry.path().display()),
                            "check its permissions".to_owned(),
                        )
                    });
                }
            };
            if ty.is_dir() {
                if wanted_dir(&key) {
                    stack.push((entry.path(), format!("{key}/")));
                }
                continue;
            }
            if !key.starts_with(prefix) {
                continue;
            }
            if ty.is_symlink() {
                out.skipped.push(SkippedEntry {
                    path: key,
                    reason: "symbolic link (never followed)",
                });
            } else if !ty.is_file() {
                out.skipped.push(SkippedEntry {
                    path: key,
                    reason: "not a regular file",
                });
            } else if name_str.starts_with(TEMP_PREFIX) {
                // A temp file of an interrupted ferry copy: never an object.
            } else if name_str.contains('\\') {
                out.skipped.push(SkippedEntry {
                    path: key,
                    reason: "name holds a backslash",
                });
            } else {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                out.objects += 1;
                out.bytes += size;
                out.largest = out.largest.max(size);
            }
        }
    }
    out.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Makes a job's destination ready before the job is recorded: a missing directory is
/// created, a bucket is probed ([`probe_bucket`]).
pub(crate) async fn prepare_target(ends: &Endpoints) -> Result<()> {
    match &ends.target {
        Location::Local(dir) if !ends.target_exists => {
            std::fs::create_dir_all(dir).explain(|| {
                (
                    format!("cannot create the destination directory {}", dir.display()),
                    "check the permissions of its parent directory".to_owned(),
                )
            })?;
        }
        Location::Local(_) => {}
        bucket => probe_bucket("destination", bucket).await?,
    }
    Ok(())
}

/// Lists one object of the bucket `location`, so that a wrong name or wrong credentials are
/// reported before a job is created.
pub(crate) async fn probe_bucket(side: &'static str, location: &Location) -> Result<()> {
    let Location::Bucket(url) = location else {
        return Ok(());
    };
    let store = crate::run::open_store(side, location).await?;
    if let Some(Err(e)) = store.list("", None).next().await {
        return Err(anyhow::Error::new(e).context(crate::error::CliError {
            code: crate::error::EXIT_ERROR,
            message: format!("cannot list the {side} {url}"),
            hint: Some(crate::run::BUCKET_HINT.to_owned()),
        }));
    }
    Ok(())
}
