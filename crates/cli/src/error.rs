//! Exit codes and the errors the user reads: what went wrong, where, and what to do.

use std::fmt;

/// Everything done.
pub(crate) const EXIT_OK: u8 = 0;
/// An error (the message says what, where and what to do).
pub(crate) const EXIT_ERROR: u8 = 1;
/// The command line cannot work as typed.
pub(crate) const EXIT_USAGE: u8 = 2;
/// The job completed, but some objects failed (`ferry retry-failed ID`).
pub(crate) const EXIT_FAILED_OBJECTS: u8 = 3;
/// Interrupted (Ctrl-C): the job is paused and saved (`ferry resume ID`).
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// An error for the user: a message naming what and where, an exit code and a hint saying
/// what to do. Attached as the outermost context of an `anyhow::Error`, so the cause chain
/// (an I/O error, a checkpoint error naming its file) is printed under it.
#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) code: u8,
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// An error with exit code 1.
pub(crate) fn fail(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(CliError {
        code: EXIT_ERROR,
        message: message.into(),
        hint: Some(hint.into()).filter(|h: &String| !h.is_empty()),
    })
}

/// A usage error (exit code 2): the command as typed can never work.
pub(crate) fn usage(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(CliError {
        code: EXIT_USAGE,
        message: message.into(),
        hint: Some(hint.into()).filter(|h: &String| !h.is_empty()),
    })
}

/// Adds a user-facing message and hint (exit code 1) over a lower-level error.
pub(crate) trait Explain<T> {
    fn explain(self, message: impl FnOnce() -> (String, String)) -> anyhow::Result<T>;
}

impl<T, E> Explain<T> for Result<T, E>
where
    E: Into<anyhow::Error>,
{
    fn explain(self, message: impl FnOnce() -> (String, String)) -> anyhow::Result<T> {
        self.map_err(|err| {
            let (message, hint) = message();
            let err: anyhow::Error = err.into();
            err.context(CliError {
                code: EXIT_ERROR,
                message,
                hint: Some(hint).filter(|h| !h.is_empty()),
            })
        })
    }
}

/// Prints an error to stderr: the message, each cause, then the hint.
pub(crate) fn report(err: &anyhow::Error) {
    let mut out = format!("error: {err}\n");
    for cause in err.chain().skip(1) {
        out.push_str(&format!("  caused by: {cause}\n"));
    }
    if let Some(hint) = err
        .downcast_ref::<CliError>()
        .and_then(|e| e.hint.as_deref())
    {
        out.push_str(&format!("  hint: {hint}\n"));
    }
    eprint!("{out}");
}

/// An error and its causes on one line.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(err) = cause {
        text.push_str(": ");
        text.push_str(&err.to_string());
        cause = err.source();
    }
    text
}
