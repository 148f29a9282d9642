//! The state directory: per job a sidecar (where SRC and DST are, which checkpoint backend),
//! the checkpoint stores, and the control sockets of running jobs.
//!
//! ```text
//! <state>/               0700
//!   jobs/<ID>.json       the sidecar (written atomically)
//!   checkpoints/         the file checkpoint store (ferry-checkpoint's FileStore)
//!   sled/                the sled checkpoint store, when a job chose it
//!   ferry.redb           the redb checkpoint store, when a job chose it
//!   run/<ID>.sock        the control socket of a running job, 0600 (run/ is 0700)
//! ```
//! The plan stored in the checkpoint names its nodes with short ids (`src`, `dst`); the
//! sidecar maps them to the directories, so `ferry resume ID` needs nothing but the id.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use ferry::checkpoint::{CheckpointStore, FileStore, RedbStore, SledStore};
use ferry::types::{JobId, JobKind};
use serde::{Deserialize, Serialize};

use crate::cli::CheckpointKind;
use crate::error::{Explain, fail, usage};
use crate::location::Location;

/// The format of the sidecar files; bumped on an incompatible change.
const SIDECAR_VERSION: u32 = 1;

/// The state directory.
#[derive(Debug, Clone)]
pub(crate) struct State {
    root: PathBuf,
    /// Whether the user named it (`--state` or `FERRY_STATE`): then the resume hint repeats it.
    explicit: bool,
}

/// What the CLI keeps beside a job's checkpoint record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JobMeta {
    pub(crate) version: u32,
    pub(crate) id: String,
    pub(crate) source: Location,
    pub(crate) target: Location,
    pub(crate) checkpoint: CheckpointKind,
    /// Symlinks and other entries that are not regular files, skipped at the last scan.
    #[serde(default)]
    pub(crate) not_regular_skipped: u64,
    /// Seconds since the Unix epoch when the job was created.
    pub(crate) created: u64,
    /// What the job does: `migrate` (sidecars written before `ferry check` existed) or
    /// `check`.
    #[serde(default)]
    pub(crate) kind: JobKind,
}

impl JobMeta {
    pub(crate) fn new(
        id: &JobId,
        source: Location,
        target: Location,
        kind: CheckpointKind,
    ) -> Self {
        JobMeta {
            version: SIDECAR_VERSION,
            id: id.as_str().to_owned(),
            source,
            target,
            checkpoint: kind,
            not_regular_skipped: 0,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
            kind: JobKind::Migrate,
        }
    }
}

impl State {
    /// Opens (creating it, owner-only) the state directory: `dir`, or the per-user default.
    pub(crate) fn open(dir: Option<&Path>) -> Result<State> {
        let (root, explicit) = match dir {
            Some(dir) => (absolute(dir)?, true),
            None => (default_dir()?, false),
        };
        create_private_dir(&root)?;
        create_private_dir(&root.join("jobs"))?;
        Ok(State { root, explicit })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// `--state DIR ` when the user chose the directory (for hints that repeat the command).
    pub(crate) fn flag(&self) -> String {
        if self.explicit {
            format!("--state {} ", shell_quote(&self.root.display().to_string()))
        } else {
            String::new()
        }
    }

    pub(crate) fn sidecar_path(&self, id: &JobId) -> PathBuf {
        self.root.join("jobs").join(format!("{}.json", id.as_str()))
    }

    pub(crate) fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    pub(crate) fn socket_path(&self, id: &JobId) -> PathBuf {
        self.run_dir().join(format!("{}.sock", id.as_str()))
    }

    /// Validates a job id given by the user.
    pub(crate) fn job_id(text: &str) -> Result<JobId> {
        JobId::new(text).map_err(|e| {
            usage(
                format!("invalid job id {text:?}: {e}"),
                "a job id is 1 to 128 of A-Z a-z 0-9 . _ - and does not start with '.'",
            )
        })
    }

    /// The sidecar of `id`; an error naming the state directory when there is none.
    pub(crate) fn load_meta(&self, id: &JobId) -> Result<JobMeta> {
        let path = self.sidecar_path(id);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(fail(
                    format!("no job {id} in the state directory {}", self.root.display()),
                    format!(
                        "`ferry {}list` shows the jobs; check --state if the job was started with \
                         another state directory",
                        self.flag()
                    ),
                ));
            }
            Err(e) => {
                return Err(e).explain(|| {
                    (
                        format!("cannot read the state file {}", path.display()),
                        "check the state directory's permissions".to_owned(),
                    )
                });
            }
        };
        let meta: JobMeta = serde_json::from_slice(&text).explain(|| {
            (
                format!("the state file {} is corrupt", path.display()),
                format!(
                    "it maps job {id} to its directories; restore it from a backup, or remove it \
                     and the job with `ferry {}forget {id}`",
                    self.flag()
                ),
            )
        })?;
        if meta.version > SIDECAR_VERSION || meta.id != id.as_str() {
            return Err(fail(
                format!(
                    "the state file {} is corrupt or from a newer ferry (version {}, job {:?})",
                    path.display(),
                    meta.version,
                    meta.id
                ),
                "use the ferry that wrote it, or remove the file",
            ));
        }
        Ok(meta)
    }

    pub(crate) fn has_meta(&self, id: &JobId) -> bool {
        self.sidecar_path(id).exists()
    }

    /// Writes a sidecar atomically: temp file, fsync, rename, fsync the directory.
    pub(crate) fn save_meta(&self, meta: &JobMeta) -> Result<()> {
        let id = JobId::new(&meta.id)?;
        let path = self.sidecar_path(&id);
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&serde_json::to_vec_pretty(meta)?)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(self.root.join("jobs"))?.sync_all()
        };
        write().explain(|| {
            (
                format!("cannot write the state file {}", path.display()),
                "check that the state directory is writable and its disk not full".to_owned(),
            )
        })
    }

    pub(crate) fn remove_meta(&self, id: &JobId) -> Result<()> {
        let path = self.sidecar_path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).explain(|| {
                (
                    format!("cannot remove the state file {}", path.display()),
                    "check the state directory's permissions".to_owned(),
                )
            }),
        }
    }

    /// Every job with a sidecar, sorted by id. Files that are not sidecars are ignored.
    pub(crate) fn job_ids(&self) -> Result<Vec<JobId>> {
        let dir = self.root.join("jobs");
        let entries = fs::read_dir(&dir).explain(|| {
            (
                format!("cannot read the state directory {}", dir.display()),
                "check its permissions".to_owned(),
            )
        })?;
        let mut ids = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = name.strip_suffix(".json")
                && let Ok(id) = JobId::new(id)
            {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Opens the checkpoint store of `kind`.
    pub(crate) fn checkpoints(&self, kind: CheckpointKind) -> Result<Arc<dyn CheckpointStore>> {
        let (path, store): (PathBuf, Result<Arc<dyn CheckpointStore>, _>) = match kind {
            CheckpointKind::File => {
                let path = self.root.join("checkpoints");
                let store = FileStore::open(&path).map(|s| Arc::new(s) as _);
                (path, store)
            }
            CheckpointKind::Sled => {
                let path = self.root.join("sled");
                let store = SledStore::open(&path).map(|s| Arc::new(s) as _);
                (path, store)
            }
            CheckpointKind::Redb => {
                let path = self.root.join("ferry.redb");
                let store = RedbStore::open(&path).map(|s| Arc::new(s) as _);
                (path, store)
            }
        };
        store.explain(|| {
            (
                format!(
                    "cannot open the {} checkpoint store {}",
                    kind.as_str(),
                    path.display()
                ),
                match kind {
                    CheckpointKind::File => "check the state directory's permissions".to_owned(),
                    _ => format!(
                        "a {} store is opened by one process at a time: is another ferry \
                         using it? Otherwise check its permissions",
                        kind.as_str()
                    ),
                },
            )
        })
    }
}

/// `$XDG_STATE_HOME/ferry`, or `~/.local/state/ferry`.
fn default_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        if dir.is_absolute() {
            return Ok(dir.join("ferry"));
        }
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/state/ferry")),
        None => Err(fail(
            "no state directory: neither XDG_STATE_HOME nor HOME is set",
            "pass --state DIR (or set FERRY_STATE)",
        )),
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).explain(|| {
        (
            format!("cannot resolve the path {}", path.display()),
            "check that the current directory still exists".to_owned(),
        )
    })
}

/// Creates `dir` (and its parents) with mode 0700 and makes sure it is owner-only.
pub(crate) fn create_private_dir(dir: &Path) -> Result<()> {
    let created = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir);
    created.explain(|| {
        (
            format!("cannot create the state directory {}", dir.display()),
            "check the permissions of its parent, or pass --state DIR".to_owned(),
        )
    })?;
    let meta = fs::metadata(dir).explain(|| {
        (
            format!("cannot read the state directory {}", dir.display()),
            "check its permissions".to_owned(),
        )
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).explain(|| {
            (
                format!(
                    "cannot make the state directory {} owner-only",
                    dir.display()
                ),
                "chmod 700 it".to_owned(),
            )
        })?;
    }
    Ok(())
}

/// Quotes `text` for a POSIX shell when it needs it.
pub(crate) fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,=@%".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}
