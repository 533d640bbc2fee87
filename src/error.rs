//! The library's error type: every variant names the file, URL, model or collection involved.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A readable format whose content could not be read (corrupt, encrypted, empty…).
    #[error("{input}: {reason}")]
    Extract { input: String, reason: String },
    /// Not a format moulin reads; `what` says what it looked like.
    #[error("{input}: unsupported format: {what}")]
    Unsupported { input: String, what: String },
    #[error("cannot fetch {url}: {reason}")]
    Fetch {
        url: String,
        reason: String,
        /// A timeout or a server error: trying again later may work.
        retryable: bool,
    },
    #[error("embedding model {model}: {reason}")]
    Model { model: String, reason: String },
    #[error("language model {model}: {reason}")]
    Llm { model: String, reason: String },
    #[error("collection {collection}: {reason}")]
    Collection { collection: String, reason: String },
    #[error("no collection {collection} in {db}")]
    CollectionNotFound { collection: String, db: String },
    /// Another writer holds the collection.
    #[error("collection {collection} is busy: {reason}")]
    Busy { collection: String, reason: String },
    #[error("database {uri}: {reason}")]
    Store { uri: String, reason: String },
    /// Settings that cannot run, every problem listed.
    #[error(transparent)]
    Settings(#[from] crate::config::Problems),
    #[error("chunker: {0}")]
    Chunk(String),
    /// A job, a prompt or an item of a job that cannot run; `subject` names it.
    #[error("{subject}: {reason}")]
    Job { subject: String, reason: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn extract(input: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Extract {
            input: input.into(),
            reason: reason.into(),
        }
    }

    /// Whether running the same thing again later may succeed: a timeout, a
    /// connection refused, an HTTP 429 or 5xx, a busy collection.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Fetch {
                retryable: true,
                ..
            } | Error::Busy { .. }
        )
    }
}
