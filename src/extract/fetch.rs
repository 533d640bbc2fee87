//! Fetching web pages: timeouts, a size limit, a bounded number of redirects.

use std::time::Duration;

use futures::StreamExt;

use crate::error::{Error, Result};
use crate::extract::ExtractOptions;

/// A fetched page: its bytes, its content type, and the URL it was finally served from.
pub struct Fetched {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
    pub final_url: String,
}

pub fn client(options: &ExtractOptions) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(options.http_timeout_seconds.max(1)))
        .connect_timeout(Duration::from_secs(
            options.http_timeout_seconds.clamp(1, 15),
        ))
        .redirect(reqwest::redirect::Policy::limited(
            options.http_max_redirects as usize,
        ))
        .user_agent(concat!("moulin/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Fetch {
            url: String::new(),
            reason: e.to_string(),
            retryable: false,
        })
}

pub async fn fetch(
    client: &reqwest::Client,
    url: &str,
    options: &ExtractOptions,
) -> Result<Fetched> {
    let fail = |reason: String, retryable: bool| Error::Fetch {
        url: url.to_string(),
        reason,
        retryable,
    };
    let response = client.get(url).send().await.map_err(|e| {
        let reason = if e.is_timeout() {
            format!("timed out after {} s", options.http_timeout_seconds)
        } else if e.is_redirect() {
            format!("more than {} redirects", options.http_max_redirects)
        } else if e.is_connect() {
            format!("cannot connect: {}", root_cause(&e))
        } else {
            root_cause(&e)
        };
        fail(reason, e.is_timeout() || e.is_connect())
    })?;
    let status = response.status();
    if !status.is_success() {
        let retryable = status.is_server_error() || status.as_u16() == 429;
        return Err(fail(format!("HTTP {status}"), retryable));
    }
    let final_url = response.url().to_string();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(len) = response.content_length()
        && len > options.max_file_bytes
    {
        return Err(fail(
            format!(
                "too large: {len} bytes, the limit is {}",
                options.max_file_bytes
            ),
            false,
        ));
    }
    let mut bytes = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| fail(root_cause(&e), e.is_timeout()))?;
        if (bytes.len() + piece.len()) as u64 > options.max_file_bytes {
            return Err(fail(
                format!(
                    "too large: over the limit of {} bytes",
                    options.max_file_bytes
                ),
                false,
            ));
        }
        bytes.extend_from_slice(&piece);
    }
    Ok(Fetched {
        bytes,
        content_type,
        final_url,
    })
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
