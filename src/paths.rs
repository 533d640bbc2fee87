//! Where moulin keeps its files, and how inputs are named.

use std::path::{Path, PathBuf};

/// moulin's cache: models, the ONNX Runtime library. `MOULIN_HOME`, else `~/.cache/moulin`.
pub fn moulin_home() -> PathBuf {
    if let Some(home) = std::env::var_os("MOULIN_HOME") {
        return PathBuf::from(home);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("moulin")
}

/// The folder of a named model in moulin's cache.
pub fn model_dir(name: &str) -> PathBuf {
    moulin_home().join("models").join(name)
}

/// The source URI recorded for a local file: its absolute path.
pub fn source_uri(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Whether an input names a web page rather than a file.
pub fn is_url(input: &str) -> bool {
    input.starts_with("http://") || input.starts_with("https://")
}

/// Whether a string starts with a URL scheme (`ftp://`, `s3://`…), supported or not.
pub fn has_scheme(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, _)| {
        scheme.len() >= 2
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}
