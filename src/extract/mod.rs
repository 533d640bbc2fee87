//! Extraction: bytes of a PDF, spreadsheet, web page or text file in, a [`Document`] out.
//!
//! The format is detected from the content ([`detect`]), not trusted from the
//! extension. Every extractor is bounded (sizes, decompression, recursion), and
//! [`extract`] turns a panic inside a reader into an error, so one bad file never
//! takes a batch down. [`isolate`] goes further and runs extraction in a child
//! process under a memory limit and a deadline.

pub mod detect;
pub mod fetch;
pub mod html;
pub mod isolate;
mod office_crypto;
pub mod pdf;
pub mod sheet;
pub mod text;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::document::{Document, Format};
use crate::error::{Error, Result};

/// The version of what extraction makes of a file. Bump it when a change to an
/// extractor changes its output: documents read by an older version are read
/// again on the next run, even when their bytes did not change.
pub const VERSION: u32 = 1;

/// Settings that every extractor reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ExtractOptions {
    /// Password for encrypted PDFs and workbooks (an empty user password is always tried).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Largest input accepted, in bytes.
    pub max_file_bytes: u64,
    /// Largest size one compressed stream may expand to, in bytes (decompression bombs).
    pub max_decompressed_bytes: u64,
    /// Most pages read from one PDF.
    pub max_pages: u32,
    /// Most rows read from one sheet.
    pub max_rows_per_sheet: u32,
    /// Memory limit of the process that extracts one file, in megabytes.
    pub memory_limit_mb: u64,
    /// Time allowed to extract one file, in seconds.
    pub timeout_seconds: u64,
    /// Time allowed to fetch one URL, in seconds.
    pub http_timeout_seconds: u64,
    /// Most redirects followed when fetching a URL.
    pub http_max_redirects: u32,
    /// How many times a transient failure (a timeout, a refused connection, an
    /// HTTP 429 or 5xx) is tried again before the input counts as failed.
    pub retries: u32,
    /// Seconds before the first retry; each next one waits twice as long.
    pub retry_delay_seconds: f64,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            password: None,
            max_file_bytes: 200 * 1024 * 1024,
            max_decompressed_bytes: 256 * 1024 * 1024,
            max_pages: 5000,
            max_rows_per_sheet: 1_000_000,
            memory_limit_mb: 4096,
            timeout_seconds: 300,
            http_timeout_seconds: 30,
            http_max_redirects: 5,
            retries: 2,
            retry_delay_seconds: 1.0,
        }
    }
}

impl ExtractOptions {
    /// Problems with these settings, each with its key.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut at_least = |key: &str, value: u64, min: u64| {
            if value < min {
                out.push((key.to_string(), format!("must be at least {min}")));
            }
        };
        at_least("max_file_bytes", self.max_file_bytes, 1);
        at_least("max_decompressed_bytes", self.max_decompressed_bytes, 1);
        at_least("max_pages", self.max_pages.into(), 1);
        at_least("max_rows_per_sheet", self.max_rows_per_sheet.into(), 1);
        // Below this, the extractor process cannot even start.
        at_least("memory_limit_mb", self.memory_limit_mb, 64);
        at_least("timeout_seconds", self.timeout_seconds, 1);
        at_least("http_timeout_seconds", self.http_timeout_seconds, 1);
        if !(0.0..=3600.0).contains(&self.retry_delay_seconds) {
            out.push((
                "retry_delay_seconds".into(),
                "must be between 0 and 3600".into(),
            ));
        }
        out
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds.max(1))
    }
}

/// Extract a document from bytes read from `source` (a path or URL).
///
/// `name_hint` is the file name or URL path, used only where the content cannot
/// tell (CSV versus plain text, Markdown versus plain text).
pub fn extract(
    source: &str,
    name_hint: &str,
    bytes: &[u8],
    content_type: Option<&str>,
    options: &ExtractOptions,
) -> Result<Document> {
    if bytes.len() as u64 > options.max_file_bytes {
        return Err(Error::extract(
            source,
            format!(
                "file too large: {} bytes, the limit is {} (extract.max_file_bytes)",
                bytes.len(),
                options.max_file_bytes
            ),
        ));
    }
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Error::extract(source, "empty file"));
    }
    // The hash of the bytes as read: what a rerun compares before extracting.
    let hash = content_hash(bytes);
    // A password-protected OOXML workbook: with a password, the package inside.
    let decrypted;
    let bytes = match &options.password {
        Some(password) if office_crypto::is_encrypted_package(bytes) => {
            decrypted = office_crypto::decrypt_package(bytes, password)
                .map_err(|reason| Error::extract(source, reason))?;
            &decrypted[..]
        }
        _ => bytes,
    };
    let format = detect::detect(bytes, name_hint, content_type).map_err(|r| match r {
        detect::Rejected::Unsupported(what) => Error::Unsupported {
            input: source.to_string(),
            what,
        },
        detect::Rejected::Unreadable(reason) => Error::extract(source, reason),
    })?;
    let result = catch_unwind(AssertUnwindSafe(|| {
        extract_format(format, source, bytes, options)
    }));
    let mut doc = match result {
        Ok(Ok(doc)) => doc,
        Ok(Err(reason)) => return Err(Error::extract(source, reason)),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            let kind = if format.is_spreadsheet() {
                "workbook"
            } else {
                format.as_str()
            };
            return Err(Error::extract(
                source,
                format!(
                    "corrupt {kind}: the {} reader crashed ({message})",
                    format.as_str()
                ),
            ));
        }
    };
    if doc.is_empty() {
        let reason = match format {
            Format::Pdf => "no text layer (scanned?)",
            f if f.is_spreadsheet() => "no data: every sheet is empty",
            _ => "no text content",
        };
        return Err(Error::extract(source, reason));
    }
    doc.content_hash = hash;
    doc.warnings
        .extend(detect::name_mismatch(format, name_hint));
    Ok(doc)
}

fn extract_format(
    format: Format,
    source: &str,
    bytes: &[u8],
    options: &ExtractOptions,
) -> Result<Document, String> {
    let parts = match format {
        Format::Pdf => pdf::extract(bytes, options)?,
        Format::Xlsx | Format::Xlsb | Format::Xls | Format::Ods => {
            sheet::extract_workbook(format, bytes, options)?
        }
        Format::Csv => sheet::extract_csv(bytes, options)?,
        Format::Html => html::extract(bytes, source)?,
        Format::Markdown | Format::Text => text::extract(bytes, format)?,
    };
    Ok(Document {
        id: Document::id_for(source),
        source: source.to_string(),
        uri: source.to_string(),
        format,
        content_hash: String::new(),
        title: parts.title,
        metadata: parts.metadata,
        pages: parts.pages,
        sections: parts.sections,
        warnings: Vec::new(),
    })
}

/// What a format's extractor returns; [`extract`] adds identity and hashes.
#[derive(Debug, Default)]
pub struct Extracted {
    pub title: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub pages: u32,
    pub sections: Vec<crate::document::Section>,
}

pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Read a local file (bounded by `max_file_bytes`) and extract it in this process.
pub fn extract_path(path: &Path, options: &ExtractOptions) -> Result<Document> {
    let source = crate::paths::source_uri(path);
    let bytes = read_bounded(path, options.max_file_bytes)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    extract(&source, name, &bytes, None, options)
}

pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > max {
        return Err(Error::extract(
            path.display().to_string(),
            format!(
                "file too large: {} bytes, the limit is {max} (extract.max_file_bytes)",
                meta.len()
            ),
        ));
    }
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// Collapse runs of whitespace inside a line and trim it.
pub(crate) fn squeeze_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}
