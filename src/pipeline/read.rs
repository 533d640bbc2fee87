//! The read stage: an input's bytes (a file, bounded, or a URL, fetched, with
//! transient failures tried again), and extraction where the pipeline says.

use std::path::PathBuf;
use std::time::Duration;

use crate::document::Document;
use crate::error::Result;
use crate::extract::{self, ExtractOptions};
use crate::pipeline::sources::Input;

/// Where extraction runs.
#[derive(Debug, Clone)]
pub enum Isolation {
    /// In this process (panics are still caught).
    InProcess,
    /// In child processes of this executable (`moulin __extract`), under limits.
    Subprocess(PathBuf),
}

/// An input's bytes, as read from disk or fetched.
pub struct ReadInput {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
}

/// Read one input: a file (bounded by `max_file_bytes`) or a URL (fetched).
/// A transient failure is tried again `options.retries` times, waiting
/// `retry_delay_seconds`, then twice as long each time.
pub async fn read_input(
    input: &Input,
    client: &reqwest::Client,
    options: &ExtractOptions,
) -> Result<ReadInput> {
    let mut delay = Duration::from_secs_f64(options.retry_delay_seconds.max(0.0));
    let mut attempt = 0;
    loop {
        match read_once(input, client, options).await {
            Err(e) if e.is_transient() && attempt < options.retries => {
                tracing::info!(source = input.source(), attempt, error = %e, "trying again");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn read_once(
    input: &Input,
    client: &reqwest::Client,
    options: &ExtractOptions,
) -> Result<ReadInput> {
    match input {
        Input::Path(path) => {
            let path = path.clone();
            let max = options.max_file_bytes;
            let bytes = tokio::task::spawn_blocking(move || extract::read_bounded(&path, max))
                .await
                .expect("reading does not panic")?;
            Ok(ReadInput {
                bytes,
                content_type: None,
            })
        }
        Input::Url(url) => {
            let fetched = extract::fetch::fetch(client, url, options).await?;
            Ok(ReadInput {
                bytes: fetched.bytes,
                content_type: fetched.content_type,
            })
        }
    }
}

/// Read one input and extract it where `isolation` says.
pub async fn extract_input(
    isolation: &Isolation,
    input: &Input,
    client: &reqwest::Client,
    options: &ExtractOptions,
) -> Result<Document> {
    let read = read_input(input, client, options).await?;
    extract_read(isolation, input, read, options).await
}

/// Extract an input already read, where `isolation` says.
pub async fn extract_read(
    isolation: &Isolation,
    input: &Input,
    read: ReadInput,
    options: &ExtractOptions,
) -> Result<Document> {
    let source = input.source();
    let ReadInput {
        bytes,
        content_type,
    } = read;
    match isolation {
        Isolation::Subprocess(exe) => {
            let request = extract::isolate::Request {
                source: source.clone(),
                name: input.name(),
                content_type,
                options: options.clone(),
            };
            extract::isolate::extract(exe, request, &bytes).await
        }
        Isolation::InProcess => {
            let name = input.name();
            let options = options.clone();
            tokio::task::spawn_blocking(move || {
                extract::extract(&source, &name, &bytes, content_type.as_deref(), &options)
            })
            .await
            .expect("extract catches panics")
        }
    }
}
