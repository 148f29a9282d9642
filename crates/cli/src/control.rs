//! The control socket of a running job: `<state>/run/<ID>.sock`, owner-only.
//!
//! A line protocol: the client sends one command line (`status`, `pause`, `resume`,
//! `set-rate <RATE>`, `cancel`) and reads one JSON line back: `{"ok":true,"snapshot":{…}}` or
//! `{"ok":false,"error":"…"}`. The job's process owns the `JobHandle`; the listener hands each
//! command to it over a channel and writes its answer.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use ferry::types::Rate;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{RwLock, mpsc, oneshot};

use crate::error::{Explain, fail};
use crate::state::create_private_dir;

/// A command for the running job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Status,
    Pause,
    Resume,
    SetRate(Rate),
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
                .parse::<Rate>()
                .map(Command::SetRate)
                .map_err(|e| e.to_string()),
            _ => Err(format!("unknown command {line:?}")),
        }
    }
}

/// The answer to a command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Reply {
    pub(crate) ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// The job's snapshot after the command (`ferry::types::JobSnapshot` as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) snapshot: Option<serde_json::Value>,
    /// Extra facts: the job's SRC, DST, process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) info: Option<serde_json::Value>,
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
        Err(error) => Reply {
            ok: false,
            error: Some(error),
            snapshot: None,
            info: None,
        },
        Ok(command) => {
            let (tx, rx) = oneshot::channel();
            let gone = || Reply {
                ok: false,
                error: Some("the job is ending".to_owned()),
                snapshot: None,
                info: None,
            };
            if requests.send((command, tx)).await.is_err() {
                gone()
            } else {
                rx.await.unwrap_or_else(|_| gone())
            }
        }
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
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
    let reply: Reply = serde_json::from_str(&line).explain(|| {
        (
            format!("the control socket {} answered garbage", path.display()),
            "is the process on this socket another version of ferry?".to_owned(),
        )
    })?;
    Ok(Some(reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_their_line() {
        for command in [
            Command::Status,
            Command::Pause,
            Command::Resume,
            Command::Cancel,
            Command::SetRate("10MiB".parse().unwrap()),
            Command::SetRate(Rate::Unlimited),
        ] {
            assert_eq!(Command::parse(&command.line()), Ok(command));
        }
        assert!(Command::parse("explode").is_err());
        assert!(Command::parse("set-rate 0").is_err());
    }
}
