//! The records that flow through the pipeline: a [`Document`] of [`Section`]s, then [`Chunk`]s.
//!
//! A document's *text* is its sections' texts joined by a blank line; byte ranges
//! everywhere point into that text, which is what `moulin extract` prints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The formats moulin reads, detected from the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Pdf,
    Xlsx,
    Xlsb,
    Xls,
    Ods,
    Csv,
    Html,
    Markdown,
    Text,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Pdf => "pdf",
            Format::Xlsx => "xlsx",
            Format::Xlsb => "xlsb",
            Format::Xls => "xls",
            Format::Ods => "ods",
            Format::Csv => "csv",
            Format::Html => "html",
            Format::Markdown => "markdown",
            Format::Text => "text",
        }
    }

    pub fn is_spreadsheet(self) -> bool {
        matches!(
            self,
            Format::Xlsx | Format::Xlsb | Format::Xls | Format::Ods | Format::Csv
        )
    }
}

/// Where a section sits in its source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// 1-based page number (PDF).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    /// Sheet name (spreadsheets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sheet: Option<String>,
    /// The sheet is hidden in the workbook.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub hidden: bool,
}

/// The Markdown header of a table section, repeated at the top of every chunk cut from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// The header lines (`| a | b |` and `|---|---|`), newline-terminated.
    pub header: String,
    /// For each body line of the section's text after the header: its 1-based row
    /// number in the sheet, and its byte offset in the section's text.
    pub rows: Vec<TableRow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRow {
    pub row: u32,
    pub offset: usize,
}

/// A piece of a document with one provenance: a PDF page, a sheet, a web page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    pub text: String,
    #[serde(flatten)]
    pub location: Location,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<Table>,
}

impl Section {
    pub fn new(text: String, location: Location) -> Self {
        Section {
            text,
            location,
            table: None,
        }
    }
}

/// What extraction made of one input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// Stable identifier, derived from `source`.
    pub id: String,
    /// Where the document comes from, independent of where its folder is mounted:
    /// `{source name}/{path relative to the source's root}`, or the URL.
    pub source: String,
    /// Where a person can open it: the absolute path when it was read, or the URL.
    #[serde(default)]
    pub uri: String,
    pub format: Format,
    /// sha256 of the input's bytes: an unchanged input is not ingested again.
    pub content_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Author, dates, language, canonical URL…: scalar strings only.
    pub metadata: BTreeMap<String, String>,
    /// Pages for a PDF, sheets for a workbook, 1 otherwise.
    pub pages: u32,
    pub sections: Vec<Section>,
    /// What extraction noticed and went past (a name that says another format).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The separator between sections in a document's text.
pub const SECTION_SEPARATOR: &str = "\n\n";

impl Document {
    /// The identifier of the document whose stable source is `source`.
    pub fn id_for(source: &str) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(source.as_bytes());
        hex::encode(&digest[..8])
    }

    /// The document's text, and each section's byte offset in it.
    pub fn text_with_offsets(&self) -> (String, Vec<usize>) {
        let len = self.sections.iter().map(|s| s.text.len() + 2).sum();
        let mut text = String::with_capacity(len);
        let mut offsets = Vec::with_capacity(self.sections.len());
        for (i, section) in self.sections.iter().enumerate() {
            if i > 0 {
                text.push_str(SECTION_SEPARATOR);
            }
            offsets.push(text.len());
            text.push_str(&section.text);
        }
        (text, offsets)
    }

    pub fn text(&self) -> String {
        self.text_with_offsets().0
    }

    pub fn is_empty(&self) -> bool {
        self.sections.iter().all(|s| s.text.trim().is_empty())
    }
}

/// A piece of a document small enough to embed, with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// Stable across runs while the chunk's text and location do not change:
    /// see [`Chunk::assign_ids`].
    pub id: String,
    pub document_id: String,
    /// Position of the chunk in its document, from 0.
    pub index: u32,
    /// The text to embed and show. For a table chunk that does not start at the
    /// table's top, the table header comes first, then `document text[start..end]`.
    pub text: String,
    /// Byte range in the document's text.
    pub start: usize,
    pub end: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_start: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_end: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sheet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row_start: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row_end: Option<u32>,
    /// Titles of the Markdown headings above the chunk, outermost first.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub headings: Vec<String>,
}

impl Chunk {
    /// Give each chunk of one document its id: the document's id and a hash of the
    /// chunk's text and location (pages, sheet, rows), so that evaluation labels
    /// and citations survive a rerun that changes other parts of the document. The
    /// same text at the same place twice gets a counter (`-2`, `-3`…).
    pub fn assign_ids(chunks: &mut [Chunk]) {
        use sha2::{Digest, Sha256};
        let mut seen: std::collections::HashMap<String, u32> = Default::default();
        for c in chunks {
            let mut h = Sha256::new();
            h.update(c.text.as_bytes());
            let location = format!(
                "\0{:?}\0{:?}\0{:?}\0{:?}\0{:?}",
                c.page_start, c.page_end, c.sheet, c.row_start, c.row_end
            );
            h.update(location.as_bytes());
            let hash = hex::encode(&h.finalize()[..6]);
            let n = seen.entry(hash.clone()).or_default();
            *n += 1;
            c.id = match *n {
                1 => format!("{}-{hash}", c.document_id),
                n => format!("{}-{hash}-{n}", c.document_id),
            };
        }
    }
}
