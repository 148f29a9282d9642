//! Checking SRC and DST before anything moves, and a walk of SRC that finds what the
//! directory store will not move (symlinks, special files, names that are not UTF-8) so that
//! each is reported and counted as skipped, and totals for the progress display and `plan`.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::Result;
use ferry::engine::store::TEMP_PREFIX;

use crate::error::{Explain, fail, usage};
use crate::location::Location;

/// SRC and DST, resolved and checked.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    pub(crate) source: PathBuf,
    pub(crate) target: PathBuf,
    /// Whether DST exists now.
    pub(crate) target_exists: bool,
}

/// Resolves SRC and DST and refuses what cannot work: a missing source, SRC == DST, one
/// inside the other (after resolving links and `..`), and a state directory inside either.
pub(crate) fn endpoints(source: &Location, target: &Location, state: &Path) -> Result<Endpoints> {
    let src_arg = source.local_path();
    let dst_arg = target.local_path();
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
    let (dst, target_exists) = resolve_maybe_missing(dst_arg)?;
    if target_exists && !dst.is_dir() {
        return Err(fail(
            format!("the destination {} is not a directory", dst_arg.display()),
            "give a directory (it is created when missing)",
        ));
    }
    if src == dst {
        return Err(usage(
            format!(
                "source and destination are the same directory: {}",
                src.display()
            ),
            "give a different DST",
        ));
    }
    if dst.starts_with(&src) {
        return Err(usage(
            format!(
                "the destination {} is inside the source {}",
                dst.display(),
                src.display()
            ),
            "the copy would be copied again: choose a DST outside SRC",
        ));
    }
    if src.starts_with(&dst) {
        return Err(usage(
            format!(
                "the source {} is inside the destination {}",
                src.display(),
                dst.display()
            ),
            "choose a DST that does not contain SRC",
        ));
    }
    let (state, _) = resolve_maybe_missing(state)?;
    for (side, dir) in [("source", &src), ("destination", &dst)] {
        if state.starts_with(dir) {
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
