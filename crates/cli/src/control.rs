//! The control socket of a running job: `<state>/run/<ID>.sock`, owner-only.
//!
//! A line protocol: the client sends one command line (`status`, `pause`, `resume`,
//! `set-rate <RATE>`, `cancel`) and reads one JSON line back, a [`Reply`]:
//! `{"ok":true,"snapshot":{…},"info":{…}}` or `{"ok":false,"error":"…"}`. The job's process
//! owns the `JobHandle`; the listener hands each command to it over a channel and writes its
//! answer.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use ferry::types::{JobId, RateSetting};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{RwLock, mpsc, oneshot};

use crate::error::{Explain, fail};
use crate::location::Location;
use crate::progress::LiveSnapshot;
use crate::state::create_private_dir;

/// A command for the running job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Status,
    Pause,
    Resume,
    SetRate(RateSetting),
    Cancel,
}

impl Command {
    fn line(&self) -> String {
        match self {
            Command::Status => "status".to_owned(),
            Command::Pause => "pause".to_owned(),
            Command::Resume => "resume".to_owned(),
            Command::SetRate(rate) => format!("set-rate {rate}"),
            Command::Cancel => "cancel".to_owned(),
        }
    }

    fn parse(line: &str) -> Result<Command, String> {
        let line = line.trim();
        let (word, arg) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "status" => Ok(Command::Status),
            "pause" => Ok(Command::Pause),
            "resume" => Ok(Command::Resume),
            "cancel" => Ok(Command::Cancel),
            "set-rate" => arg
                .trim()
                .parse::<RateSetting>()
                .map(Command::SetRate)
                .map_err(|e| e.to_string()),
            _ => Err(format!("unknown command {line:?}")),
        }
    }
}

/// The answer to a command. `--json` of `pause`, `set-rate` and `cancel` prints it as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Reply {
    pub(crate) ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// The job's figures after the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) snapshot: Option<LiveSnapshot>,
    /// What the process runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) info: Option<JobInfo>,
}

/// What a running job's process says about itself besides its figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JobInfo {
    pub(crate) id: JobId,
    pub(crate) source: Location,
    pub(crate) target: Location,
    pub(crate) pid: u32,
    /// The scan's totals.
    pub(crate) total_objects: Option<u64>,
    pub(crate) total_bytes: Option<u64>,
}

impl Reply {
    /// A command carried out.
    pub(crate) fn done(snapshot: LiveSnapshot, info: JobInfo) -> Reply {
        Reply {
            ok: true,
            error: None,
            snapshot: Some(snapshot),
            info: Some(info),
        }
    }

    /// A command refused or not carried out.
    pub(crate) fn refused(error: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(error.into()),
            snapshot: None,
            info: None,
        }
    }

    /// The reply as the line the server writes.
    fn to_line(&self) -> serde_json::Result<Vec<u8>> {
        let mut line = serde_json::to_vec(self)?;
        line.push(b'\n');
        Ok(line)
    }

    /// Reads the line a server wrote on the socket `path`. An answer of another shape (from
    /// another version of ferry) is an error that says so.
    fn from_line(line: &str, path: &Path) -> Result<Reply> {
        serde_json::from_str(line).explain(|| {
            (
                format!(
                    "the control socket {} answered in a form this ferry does not read",
                    path.display()
                ),
                "is the process on this socket another version of ferry? `ferry status ID` \
                 from that version shows the job"
                    .to_owned(),
            )
        })
    }
}

/// One command from a client, with the way back.
pub(crate) type Request = (Command, oneshot::Sender<Reply>);

/// A bound control socket; the file is removed when dropped.
#[derive(Debug)]
pub(crate) struct Server {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
    /// Each connection holds a read guard while it is answered; `drain` takes the write lock.
    inflight: Arc<RwLock<()>>,
}

impl Server {
    /// Waits (at most 2 s) until every answer in flight was written, so that a client whose
    /// command ended the job (cancel) still reads its answer before the process exits.
    pub(crate) async fn drain(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inflight.write()).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the job's socket (replacing a stale one a dead process left: the checkpoint lease
/// already proved that no other process runs the job) and serves it until dropped.
pub(crate) fn serve(path: &Path, requests: mpsc::Sender<Request>) -> Result<Server> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).explain(|| {
                (
                    format!("cannot remove the stale control socket {}", path.display()),
                    "check the state directory's permissions".to_owned(),
                )
            });
        }
    }
    let listener = UnixListener::bind(path).explain(|| {
        (
            format!("cannot create the control socket {}", path.display()),
            "a socket path is limited to about 100 bytes: use a shorter --state or job id"
                .to_owned(),
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).explain(|| {
        (
            format!(
                "cannot make the control socket {} owner-only",
                path.display()
            ),
            "check the state directory's permissions".to_owned(),
        )
    })?;
    let inflight = Arc::new(RwLock::new(()));
    let lock = Arc::clone(&inflight);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let requests = requests.clone();
            let guard = Arc::clone(&lock).read_owned().await;
            tokio::spawn(async move {
                let _ = handle(stream, requests).await;
                drop(guard);
            });
        }
    });
    Ok(Server {
        path: path.to_path_buf(),
        task,
        inflight,
    })
}

async fn handle(stream: UnixStream, requests: mpsc::Sender<Request>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take_line_limit();
    reader.read_line(&mut line).await?;
    let reply = match Command::parse(&line) {
        Err(error) => Reply::refused(error),
        Ok(command) => {
            let (tx, rx) = oneshot::channel();
            let gone = || Reply::refused("the job is ending");
            if requests.send((command, tx)).await.is_err() {
                gone()
            } else {
                rx.await.unwrap_or_else(|_| gone())
            }
        }
    };
    let out = reply.to_line().map_err(std::io::Error::other)?;
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Bounds what a client may send: one short line.
trait TakeLineLimit: Sized {
    fn take_line_limit(self) -> tokio::io::Take<Self>;
}

impl<R: tokio::io::AsyncRead + Unpin> TakeLineLimit for BufReader<R> {
    fn take_line_limit(self) -> tokio::io::Take<Self> {
        tokio::io::AsyncReadExt::take(self, 4096)
    }
}

/// Sends `command` to the job whose socket is `path`. `Ok(None)` when no process serves it
/// (no socket, or a stale one): the job is not running.
pub(crate) async fn send(path: &Path, command: &Command) -> Result<Option<Reply>> {
    let stream = match UnixStream::connect(path).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(e).explain(|| {
                (
                    format!("cannot connect to the control socket {}", path.display()),
                    "check the state directory's permissions".to_owned(),
                )
            });
        }
    };
    let exchange = async {
        let (read, mut write) = stream.into_split();
        write
            .write_all(format!("{}\n", command.line()).as_bytes())
            .await?;
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await?;
        Ok::<_, std::io::Error>(line)
    };
    // Pausing waits for copies to park at a chunk boundary; a minute is generous.
    let line = match tokio::time::timeout(Duration::from_secs(60), exchange).await {
        Ok(line) => line.explain(|| {
            (
                format!("the control socket {} did not answer", path.display()),
                "the job's process may be stuck; `ferry status ID` shows its record".to_owned(),
            )
        })?,
        Err(_) => {
            return Err(fail(
                format!(
                    "the control socket {} did not answer within 60 s",
                    path.display()
                ),
                "the job's process may be stuck; check it with `ps`",
            ));
        }
    };
    if line.trim().is_empty() {
        // The process ended between connect and answer.
        return Ok(None);
    }
    Reply::from_line(&line, path).map(Some)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use ferry::types::{JobSnapshot, JobStatus, NodeId};

    use super::*;
    use crate::error::CliError;
    use crate::progress::Totals;

    fn info() -> JobInfo {
        JobInfo {
            id: JobId::new("j-1").unwrap(),
            source: Location::Local(PathBuf::from("/srv/photos")),
            target: Location::Bucket("s3://new/photos".to_owned()),
            pid: 4242,
            total_objects: Some(10),
            total_bytes: Some(10 << 20),
        }
    }

    fn snapshot() -> LiveSnapshot {
        let mut snap = JobSnapshot::new(
            JobId::new("j-1").unwrap(),
            NodeId::new("src").unwrap(),
            NodeId::new("dst").unwrap(),
        );
        snap.status = JobStatus::Paused;
        snap.done_objects = 4;
        snap.done_bytes = 4 << 20;
        snap.throughput = 1 << 20;
        snap.effective_rate = "2MiB".parse().unwrap();
        snap.elapsed = Duration::from_millis(4_100);
        snap.eta = Some(Duration::from_secs(6));
        LiveSnapshot::new(
            snap,
            Totals {
                objects: Some(10),
                bytes: Some(10 << 20),
            },
        )
    }

    fn socket() -> PathBuf {
        PathBuf::from("/state/run/j-1.sock")
    }

    #[test]
    fn a_reply_written_by_the_server_reads_back_the_same_on_the_client() {
        let cancelled = Reply {
            ok: false,
            error: Some("the checkpoint store failed".to_owned()),
            snapshot: None,
            info: Some(info()),
        };
        for reply in [
            Reply::done(snapshot(), info()),
            cancelled,
            Reply::refused("unknown command \"explode\""),
        ] {
            let line = reply.to_line().unwrap();
            assert_eq!(line.last(), Some(&b'\n'), "one line");
            assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1, "one line");
            let line = String::from_utf8(line).unwrap();
            assert_eq!(Reply::from_line(&line, &socket()).unwrap(), reply);
        }
        // The snapshot travels flat, with the scan's totals and the time left beside it.
        let line = Reply::done(snapshot(), info()).to_line().unwrap();
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["snapshot"]["status"], "paused");
        assert_eq!(value["snapshot"]["total_bytes"], 10 << 20);
        assert_eq!(value["snapshot"]["eta_secs"], 6);
        assert_eq!(value["info"]["pid"], 4242);
        assert_eq!(value["info"]["target"], "s3://new/photos");
    }

    #[test]
    fn a_reply_of_another_shape_is_an_error_that_says_so() {
        let good = serde_json::to_value(Reply::done(snapshot(), info())).unwrap();
        let mut bad_status = good.clone();
        bad_status["snapshot"]["status"] = "exploding".into();
        let mut old_snapshot = good.clone();
        old_snapshot["snapshot"] = serde_json::json!({"done_objects": 3});
        let mut bad_pid = good.clone();
        bad_pid["info"]["pid"] = "me".into();
        for line in [
            "not json".to_owned(),
            r#"{"status":"running","done_objects":3}"#.to_owned(),
            bad_status.to_string(),
            old_snapshot.to_string(),
            bad_pid.to_string(),
        ] {
            let err = Reply::from_line(&line, &socket()).expect_err(&line);
            let cli = err
                .downcast_ref::<CliError>()
                .expect("a message for the user");
            assert!(
                cli.message.contains("/state/run/j-1.sock")
                    && cli.message.contains("does not read"),
                "{line}: {}",
                cli.message
            );
            assert!(
                cli.hint
                    .as_deref()
                    .is_some_and(|h| h.contains("another version")),
                "{line}: {:?}",
                cli.hint
            );
            assert!(
                err.chain().count() > 1,
                "{line}: the parse error is kept as the cause"
            );
        }
        // A newer process may add fields: they are ignored.
        let mut newer = good;
        newer["snapshot"]["new_counter"] = 7.into();
        newer["uptime"] = "3s".into();
        assert_eq!(
            Reply::from_line(&newer.to_string(), &socket()).unwrap(),
            Reply::done(snapshot(), info())
        );
    }

    #[test]
    fn commands_round_trip_through_their_line() {
        for command in [
            Command::Status,
            Command::Pause,
            Command::Resume,
            Command::Cancel,
            Command::SetRate("10MiB".parse().unwrap()),
            Command::SetRate(RateSetting::Fixed(ferry::types::Rate::Unlimited)),
            Command::SetRate("auto".parse().unwrap()),
            Command::SetRate("auto:200MiB".parse().unwrap()),
        ] {
            assert_eq!(Command::parse(&command.line()), Ok(command));
        }
        assert!(Command::parse("explode").is_err());
        assert!(Command::parse("set-rate 0").is_err());
    }
}
