//! Extraction in a child process, under a memory limit and a deadline.
//!
//! Readers of complex formats can be driven into a crash, an allocation storm or
//! a loop by a hostile or broken file. The pipeline therefore hands each input's
//! bytes to `moulin __extract` (the same binary), which lowers its own address
//! space limit before parsing and answers with the document as JSON. A crash,
//! an out-of-memory or a timeout in the child becomes a clear error in the
//! report; the run goes on.

use std::path::Path;
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::document::Document;
use crate::error::{Error, Result};
use crate::extract::ExtractOptions;

/// The first line the parent writes to the child; the input's bytes follow.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub source: String,
    pub name: String,
    pub content_type: Option<String>,
    pub options: ExtractOptions,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Document(Box<Document>),
    Unsupported(String),
    Failed(String),
}

/// Extract `bytes` in a child process running `exe __extract`.
pub async fn extract(exe: &Path, request: Request, bytes: &[u8]) -> Result<Document> {
    let source = request.source.clone();
    let timeout = request.options.timeout();
    let limit_mb = request.options.memory_limit_mb;
    let mut child = tokio::process::Command::new(exe)
        .arg("__extract")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::extract(&source, format!("cannot start the extractor: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let header = serde_json::to_vec(&request).expect("serializable request");
    let work = async {
        let write = async {
            stdin.write_all(&header).await?;
            stdin.write_all(b"\n").await?;
            stdin.write_all(bytes).await?;
            stdin.shutdown().await?;
            drop(stdin);
            Ok::<_, std::io::Error>(())
        };
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (w, r, e) = tokio::join!(
            write,
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err)
        );
        let status = child.wait().await;
        (w, r, e, status, out, err)
    };
    let (_, _, _, status, out, err) = match tokio::time::timeout(timeout, work).await {
        Ok(done) => done,
        Err(_) => {
            return Err(Error::extract(
                &source,
                format!(
                    "extraction timed out after {} s (extract.timeout_seconds)",
                    timeout.as_secs()
                ),
            ));
        }
    };
    if let Ok(reply) = serde_json::from_slice::<Reply>(&out) {
        return match reply {
            Reply::Document(doc) => Ok(*doc),
            Reply::Unsupported(what) => Err(Error::Unsupported {
                input: source,
                what,
            }),
            Reply::Failed(reason) => Err(Error::extract(&source, reason)),
        };
    }
    let status = status.map_err(|e| Error::extract(&source, e.to_string()))?;
    let stderr = String::from_utf8_lossy(&err);
    let oom = stderr.contains("memory allocation") || stderr.contains("out of memory");
    let reason = if oom {
        format!("the reader ran out of memory (limit {limit_mb} MB, extract.memory_limit_mb)")
    } else {
        use std::os::unix::process::ExitStatusExt;
        match status.signal() {
            Some(sig) => format!(
                "the reader crashed (signal {sig}){}",
                last_line(&stderr)
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default()
            ),
            None => format!(
                "the reader failed ({status}){}",
                last_line(&stderr)
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default()
            ),
        }
    };
    Err(Error::extract(&source, reason))
}

fn last_line(s: &str) -> Option<&str> {
    s.lines().rev().map(str::trim).find(|l| !l.is_empty())
}

/// The child's side: read a request from stdin, extract, answer on stdout.
pub fn serve() -> std::io::Result<()> {
    use std::io::{BufRead, Read, Write};
    let mut input = std::io::stdin().lock();
    let mut header = Vec::new();
    input.read_until(b'\n', &mut header)?;
    let request: Request = serde_json::from_slice(&header)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut bytes = Vec::new();
    input
        .take(request.options.max_file_bytes + 1)
        .read_to_end(&mut bytes)?;
    let limit = request.options.memory_limit_mb.saturating_mul(1024 * 1024);
    // Address space, not resident memory: generous enough for the allocator's arenas.
    let _ = rlimit::setrlimit(rlimit::Resource::AS, limit, limit);
    // A panic is caught inside `extract`; its default message on stderr is noise here.
    std::panic::set_hook(Box::new(|_| {}));
    let reply = match crate::extract::extract(
        &request.source,
        &request.name,
        &bytes,
        request.content_type.as_deref(),
        &request.options,
    ) {
        Ok(doc) => Reply::Document(Box::new(doc)),
        Err(Error::Unsupported { what, .. }) => Reply::Unsupported(what),
        Err(Error::Extract { reason, .. }) => Reply::Failed(reason),
        Err(e) => Reply::Failed(e.to_string()),
    };
    drop(bytes);
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, &reply)?;
    stdout.flush()
}
