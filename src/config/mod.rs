//! Settings, checked before any work: problems with their origin, and TOML files
//! read with positions and checked against the JSON Schema of their types.
//!
//! Every command resolves its settings from files, flags and defaults, then
//! checks them all and reports every [`Problem`] at once, each naming where the
//! value came from: `file:line:column: key.path: message` for a settings file,
//! `--flag: message` for a command-line option. `moulin validate` and the
//! commands that run a pipeline give the same messages because they run the
//! same checks ([`file::read`] for the file's shape, then the typed checks of
//! each stage's configuration).

pub mod file;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// One problem with a command's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Key path in the settings (`sources[1].path`); empty for the whole file.
    pub key: String,
    pub message: String,
    #[serde(flatten)]
    pub origin: Origin,
}

/// Where a setting came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Origin {
    /// A settings file, at a 1-based line and column.
    File {
        file: PathBuf,
        line: usize,
        column: usize,
    },
    /// A command-line option, such as `--collection`.
    Flag { flag: String },
    /// A positional argument; the message names it.
    Argument,
    /// A default value.
    Default,
}

impl Problem {
    /// A problem with the value of a command-line option.
    pub fn flag(flag: &str, message: impl Into<String>) -> Self {
        Problem {
            key: String::new(),
            message: message.into(),
            origin: Origin::Flag { flag: flag.into() },
        }
    }

    /// A problem with a positional argument; the message names it.
    pub fn argument(message: impl Into<String>) -> Self {
        Problem {
            key: String::new(),
            message: message.into(),
            origin: Origin::Argument,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File { file, line, column } => {
                write!(f, "{}:{line}:{column}: ", file.display())?;
                if !self.key.is_empty() {
                    write!(f, "{}: ", self.key)?;
                }
            }
            Origin::Flag { flag } => write!(f, "{flag}: ")?,
            Origin::Argument => {}
            Origin::Default if self.key.is_empty() => {}
            Origin::Default => write!(f, "{}: ", self.key)?,
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one thing (a file, a command's options): an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems {
    /// What was checked: a file name, or `the options` of a command.
    pub subject: String,
    pub list: Vec<Problem>,
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.list.len();
        write!(
            f,
            "{}: {n} problem{}",
            self.subject,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.list {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

impl Problems {
    pub fn new(subject: impl Into<String>) -> Self {
        Problems {
            subject: subject.into(),
            list: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// `Ok(())` when there is nothing to report.
    pub fn into_result(self) -> Result<(), Problems> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

/// Where each key of a settings value came from: positions in its file, the
/// flags that overrode some keys.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    file: Option<PathBuf>,
    /// 1-based (line, column) of each key path written in the file.
    positions: BTreeMap<String, (usize, usize)>,
    flags: BTreeMap<String, Origin>,
}

impl Origins {
    pub fn for_file(path: &Path) -> Self {
        Origins {
            file: Some(path.to_path_buf()),
            ..Default::default()
        }
    }

    pub(crate) fn record(&mut self, key: &str, position: (usize, usize)) {
        self.positions.entry(key.to_string()).or_insert(position);
    }

    /// The value at `key` (and everything under it) came from a command-line option.
    pub fn set_flag(&mut self, key: &str, flag: &str) {
        self.flags.insert(
            key.to_string(),
            Origin::Flag {
                flag: flag.to_string(),
            },
        );
    }

    /// The value at `key` came from a positional argument.
    pub fn set_argument(&mut self, key: &str) {
        self.flags.insert(key.to_string(), Origin::Argument);
    }

    /// Where the value at `key` came from: the flag that set it or a key above
    /// it, else the closest position written in the file, else a default.
    pub fn of(&self, key: &str) -> Origin {
        let mut k = key;
        loop {
            if let Some(o) = self.flags.get(k) {
                return o.clone();
            }
            if let Some(&(line, column)) = self.positions.get(k)
                && let Some(file) = &self.file
            {
                return Origin::File {
                    file: file.clone(),
                    line,
                    column,
                };
            }
            match parent_key(k) {
                Some(p) => k = p,
                None => break,
            }
        }
        match &self.file {
            Some(file) if !key.is_empty() && self.positions.is_empty() => Origin::File {
                file: file.clone(),
                line: 1,
                column: 1,
            },
            _ => Origin::Default,
        }
    }

    pub fn problem(&self, key: impl Into<String>, message: impl Into<String>) -> Problem {
        let key = key.into();
        Problem {
            origin: self.of(&key),
            key,
            message: message.into(),
        }
    }
}

/// `sources[1].path` → `sources[1]` → `sources` → none.
fn parent_key(key: &str) -> Option<&str> {
    if key.is_empty() {
        return None;
    }
    let cut = key.rfind(['.', '[']).unwrap_or(0);
    Some(&key[..cut])
}

/// Join a key path and a child key.
pub fn join_key(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// The candidate closest to `word`, when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro(word, c), c))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_fall_back_to_the_closest_key_written() {
        let mut o = Origins::for_file(Path::new("p.toml"));
        o.record("sources[1]", (7, 1));
        o.record("chunker.size", (12, 1));
        o.set_flag("collection.name", "--collection");
        let at = |k: &str| o.problem(k, "m").to_string();
        assert_eq!(at("sources[1].path"), "p.toml:7:1: sources[1].path: m");
        assert_eq!(at("chunker.size"), "p.toml:12:1: chunker.size: m");
        assert_eq!(at("collection.name"), "--collection: m");
        assert_eq!(at("embedder.model"), "embedder.model: m");
    }

    #[test]
    fn suggestions_only_for_near_misses() {
        let keys = ["path", "include", "exclude"];
        assert_eq!(did_you_mean("pth", keys), Some("path"));
        assert_eq!(did_you_mean("includes", keys), Some("include"));
        assert_eq!(did_you_mean("colour", keys), None);
    }
}
