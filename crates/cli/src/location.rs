//! Where objects come from and go to: parsed from a command-line argument.
//!
//! Only local directories are supported today; the enum leaves room for object stores
//! (`s3://bucket/prefix`), which a later version adds as another variant.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A source or destination given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// A directory on this machine (`path`, `./path` or `file:///path`).
    Local(PathBuf),
}

impl Location {
    pub(crate) fn local_path(&self) -> &Path {
        match self {
            Location::Local(path) => path,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
        }
    }
}

impl FromStr for Location {
    type Err = String;

    fn from_str(text: &str) -> Result<Location, String> {
        if text.is_empty() {
            return Err("an empty path: give a directory".to_owned());
        }
        if let Some((scheme, rest)) = text.split_once("://") {
            let valid_scheme = !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            if valid_scheme {
                if scheme.eq_ignore_ascii_case("file") {
                    if rest.is_empty() {
                        return Err("file:// needs a path, e.g. file:///srv/data".to_owned());
                    }
                    return Ok(Location::Local(PathBuf::from(rest)));
                }
                return Err(format!(
                    "{scheme}:// locations are not supported yet: only local directories are \
                     (object stores come in a later version; copy through a mounted directory \
                     meanwhile)"
                ));
            }
        }
        Ok(Location::Local(PathBuf::from(text)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_file_urls_and_refuses_other_schemes() {
        assert_eq!(
            "a/b".parse::<Location>(),
            Ok(Location::Local(PathBuf::from("a/b")))
        );
        assert_eq!(
            "file:///srv/x".parse::<Location>(),
            Ok(Location::Local(PathBuf::from("/srv/x")))
        );
        let err = "s3://bucket/p".parse::<Location>().unwrap_err();
        assert!(
            err.contains("s3:// locations are not supported yet"),
            "{err}"
        );
        assert!("".parse::<Location>().is_err());
        // A colon in a plain name is a path, not a scheme.
        assert_eq!(
            "weird name:// x".parse::<Location>(),
            Ok(Location::Local(PathBuf::from("weird name:// x")))
        );
    }
}
