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

/// A URL as it may be recorded (in a collection, a report, a log): without the
/// user and password it may carry, and with the values of query parameters that
/// look like credentials (`token`, `api_key`, `signature`, `X-Amz-Credential`…)
/// replaced by `REDACTED`. The document's identity comes from this form too, so
/// that a token that changes every night does not make a new document.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return raw.to_string();
    };
    let mut changed = false;
    if !url.username().is_empty() || url.password().is_some() {
        let _ = url.set_username("");
        let _ = url.set_password(None);
        changed = true;
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                if is_credential(&k) {
                    changed = true;
                    (k.into_owned(), "REDACTED".to_string())
                } else {
                    (k.into_owned(), v.into_owned())
                }
            })
            .collect();
        if changed {
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
    }
    if changed {
        url.to_string()
    } else {
        raw.to_string()
    }
}

fn is_credential(key: &str) -> bool {
    const NAMES: &[&str] = &[
        "token",
        "auth",
        "key",
        "apikey",
        "password",
        "passwd",
        "pwd",
        "secret",
        "signature",
        "sig",
        "credential",
        "session",
        "jwt",
    ];
    let key = key.to_ascii_lowercase();
    NAMES.iter().any(|n| {
        key == *n
            || key.ends_with(&format!("_{n}"))
            || key.ends_with(&format!("-{n}"))
            || key.starts_with(&format!("{n}_"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_urls_before_they_are_recorded() {
        assert_eq!(
            redact_url("https://alice:s3cret@example.org/doc?id=4&token=abc&page=2"),
            "https://example.org/doc?id=4&token=REDACTED&page=2"
        );
        assert_eq!(
            redact_url(
                "https://bucket.s3.example/f.pdf?X-Amz-Credential=AK&X-Amz-Signature=ff&x=1"
            ),
            "https://bucket.s3.example/f.pdf?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED&x=1"
        );
        assert_eq!(
            redact_url("https://example.org/a?access_token=1&api_key=2&sort=asc"),
            "https://example.org/a?access_token=REDACTED&api_key=REDACTED&sort=asc"
        );
        // Nothing to hide: the URL as given, byte for byte.
        assert_eq!(
            redact_url("https://example.org/a?q=cong%C3%A9"),
            "https://example.org/a?q=cong%C3%A9"
        );
    }
}
