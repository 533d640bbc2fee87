//! Chunking: documents into pieces small enough to embed, each keeping its provenance.
//!
//! Prose is cut by text-splitter's Markdown splitter (headings, paragraphs,
//! sentences, words, in that order of preference), sized in characters or in
//! the embedding model's tokens. Tables are cut between rows, and every piece
//! starts with the table's header so that it reads on its own. Chunks never
//! straddle two sections, so a chunk's page or sheet is exact.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use text_splitter::{ChunkConfig, ChunkSizer, MarkdownSplitter, TextSplitter};

use crate::document::{Chunk, Document, Section};
use crate::error::{Error, Result};

/// How chunk size is measured.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SizeUnit {
    /// Unicode characters (fast).
    #[default]
    Characters,
    /// Tokens of the embedding model's tokenizer (exact, slower).
    Tokens,
}

/// The chunker's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ChunkerConfig {
    /// Markdown-aware: prefers cutting at headings, then paragraphs, sentences, words.
    Markdown(SplitConfig),
    /// Plain text: paragraphs, sentences, words.
    Text(SplitConfig),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    /// Largest chunk, in `unit`s.
    pub size: usize,
    /// Text repeated between consecutive chunks, in `unit`s; smaller than `size`.
    pub overlap: usize,
    pub unit: SizeUnit,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            size: 1500,
            overlap: 150,
            unit: SizeUnit::Characters,
        }
    }
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        ChunkerConfig::Markdown(SplitConfig::default())
    }
}

impl ChunkerConfig {
    pub fn split(&self) -> &SplitConfig {
        match self {
            ChunkerConfig::Markdown(s) | ChunkerConfig::Text(s) => s,
        }
    }

    pub fn split_mut(&mut self) -> &mut SplitConfig {
        match self {
            ChunkerConfig::Markdown(s) | ChunkerConfig::Text(s) => s,
        }
    }

    /// Problems with these settings, each with its key.
    pub fn problems(&self) -> Vec<(String, String)> {
        let s = self.split();
        let mut out = Vec::new();
        if s.size == 0 {
            out.push(("size".into(), "must be at least 1".into()));
        }
        if s.size > 0 && s.overlap >= s.size {
            out.push((
                "overlap".into(),
                format!("must be smaller than size ({})", s.size),
            ));
        }
        out
    }
}

enum Sizer {
    Characters,
    Tokens(Box<tokenizers::Tokenizer>),
}

impl Sizer {
    fn size(&self, text: &str) -> usize {
        match self {
            Sizer::Characters => text.chars().count(),
            Sizer::Tokens(t) => t.size(text),
        }
    }
}

pub struct Chunker {
    config: ChunkerConfig,
    sizer: Sizer,
}

impl Chunker {
    /// A chunker; `tokenizer` is required when sizing in tokens.
    pub fn new(config: ChunkerConfig, tokenizer: Option<tokenizers::Tokenizer>) -> Result<Self> {
        if let Some((key, problem)) = config.problems().into_iter().next() {
            return Err(Error::Chunk(format!("{key} {problem}")));
        }
        let sizer = match config.split().unit {
            SizeUnit::Characters => Sizer::Characters,
            SizeUnit::Tokens => {
                let mut t = tokenizer.ok_or_else(|| {
                    Error::Chunk("sizing in tokens needs the embedding model's tokenizer".into())
                })?;
                // Padding or truncation would make every text look the same size.
                t.with_padding(None);
                t.with_truncation(None)
                    .map_err(|e| Error::Chunk(e.to_string()))?;
                Sizer::Tokens(Box::new(t))
            }
        };
        Ok(Chunker { config, sizer })
    }

    pub fn config(&self) -> &ChunkerConfig {
        &self.config
    }

    pub fn chunk(&self, doc: &Document) -> Vec<Chunk> {
        let (text, offsets) = doc.text_with_offsets();
        let headings = heading_index(&text);
        let mut chunks = Vec::new();
        for (section, &offset) in doc.sections.iter().zip(&offsets) {
            let pieces = match &section.table {
                Some(_) => self.table_pieces(section),
                None => self.prose_pieces(&section.text),
            };
            for piece in pieces {
                let start = offset + piece.range.start;
                let end = offset + piece.range.end;
                let mut chunk = Chunk {
                    id: String::new(),
                    document_id: doc.id.clone(),
                    index: chunks.len() as u32,
                    text: piece.text,
                    start,
                    end,
                    page_start: section.location.page,
                    page_end: section.location.page,
                    sheet: section.location.sheet.clone(),
                    row_start: piece.rows.as_ref().map(|r| r.start),
                    row_end: piece.rows.as_ref().map(|r| r.end),
                    headings: headings_at(&headings, start),
                };
                if chunk.text.trim().is_empty() {
                    continue;
                }
                chunk.index = chunks.len() as u32;
                chunks.push(chunk);
            }
        }
        Chunk::assign_ids(&mut chunks);
        chunks
    }

    fn prose_pieces(&self, text: &str) -> Vec<Piece> {
        let s = self.config.split();
        let markdown = matches!(self.config, ChunkerConfig::Markdown(_));
        let indices: Vec<(usize, &str)> = match &self.sizer {
            Sizer::Characters => {
                let cfg = ChunkConfig::new(s.size)
                    .with_overlap(s.overlap)
                    .expect("overlap checked against size")
                    .with_trim(true);
                if markdown {
                    MarkdownSplitter::new(cfg).chunk_indices(text).collect()
                } else {
                    TextSplitter::new(cfg).chunk_indices(text).collect()
                }
            }
            Sizer::Tokens(tokenizer) => {
                let cfg = ChunkConfig::new(s.size)
                    .with_overlap(s.overlap)
                    .expect("overlap checked against size")
                    .with_sizer(tokenizer.as_ref())
                    .with_trim(true);
                if markdown {
                    MarkdownSplitter::new(cfg).chunk_indices(text).collect()
                } else {
                    TextSplitter::new(cfg).chunk_indices(text).collect()
                }
            }
        };
        indices
            .into_iter()
            .map(|(offset, piece)| Piece {
                text: piece.to_string(),
                range: offset..offset + piece.len(),
                rows: None,
            })
            .collect()
    }

    /// Cut a table between rows; every piece after the first starts with the header.
    fn table_pieces(&self, section: &Section) -> Vec<Piece> {
        let table = section.table.as_ref().expect("a table section");
        let text = &section.text;
        let limit = self.config.split().size;
        let header_size = self.sizer.size(&table.header);
        let mut pieces = Vec::new();
        // Body rows: (row number, byte range in the section text).
        let body: Vec<(u32, Range<usize>)> = table
            .rows
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, r)| {
                let end = table
                    .rows
                    .get(i + 1)
                    .map(|n| n.offset)
                    .unwrap_or(text.len());
                (r.row, r.offset..end)
            })
            .collect();
        let header_row = table.rows.first().map(|r| r.row).unwrap_or(1);
        if body.is_empty() {
            return vec![Piece {
                text: text.clone(),
                range: 0..text.len(),
                rows: Some(header_row..header_row),
            }];
        }
        let mut start = 0usize; // index into body
        while start < body.len() {
            let mut size = header_size;
            let mut end = start;
            while end < body.len() {
                let row_size = self.sizer.size(&text[body[end].1.clone()]);
                if end > start && size + row_size > limit {
                    break;
                }
                size += row_size;
                end += 1;
            }
            let first = &body[start];
            let last = &body[end - 1];
            let (range, piece_text) = if start == 0 {
                let range = 0..last.1.end;
                (range.clone(), text[range].trim_end().to_string())
            } else {
                let range = first.1.start..last.1.end;
                let mut t = table.header.clone();
                t.push_str(&text[range.clone()]);
                (range, t.trim_end().to_string())
            };
            let row_start = if start == 0 { header_row } else { first.0 };
            if size > limit && end == start + 1 {
                // One row larger than a chunk: cut it like prose, keeping its row number.
                for p in self.prose_pieces(&text[first.1.clone()]) {
                    pieces.push(Piece {
                        text: p.text,
                        range: first.1.start + p.range.start..first.1.start + p.range.end,
                        rows: Some(first.0..first.0),
                    });
                }
            } else {
                let trimmed_end = range.start + text[range.clone()].trim_end().len();
                pieces.push(Piece {
                    text: piece_text,
                    range: range.start..trimmed_end,
                    rows: Some(row_start..last.0),
                });
            }
            start = end;
        }
        pieces
    }
}

struct Piece {
    text: String,
    range: Range<usize>,
    rows: Option<Range<u32>>,
}

/// Markdown headings of a text: (byte offset, level, title).
fn heading_index(text: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut in_code = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if trimmed.starts_with("```") {
            in_code = !in_code;
        } else if !in_code {
            let level = trimmed.bytes().take_while(|&b| b == b'#').count();
            if (1..=6).contains(&level) && trimmed[level..].starts_with(' ') {
                out.push((offset, level, trimmed[level..].trim().to_string()));
            }
        }
        offset += line.len();
    }
    out
}

fn headings_at(index: &[(usize, usize, String)], at: usize) -> Vec<String> {
    let mut path: Vec<(usize, &str)> = Vec::new();
    for (offset, level, title) in index {
        if *offset > at {
            break;
        }
        while path.last().is_some_and(|(l, _)| l >= level) {
            path.pop();
        }
        path.push((*level, title));
    }
    path.into_iter().map(|(_, t)| t.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::document::{Format, Location};
    use proptest::prelude::*;

    fn doc(sections: Vec<Section>) -> Document {
        Document {
            id: "d".into(),
            source: "s".into(),
            uri: "s".into(),
            format: Format::Markdown,
            content_hash: String::new(),
            title: None,
            metadata: Default::default(),
            pages: 1,
            sections,
            warnings: Vec::new(),
        }
    }

    fn chunker(size: usize, overlap: usize) -> Chunker {
        Chunker::new(
            ChunkerConfig::Markdown(SplitConfig {
                size,
                overlap,
                unit: SizeUnit::Characters,
            }),
            None,
        )
        .unwrap()
    }

    #[test]
    fn headings_are_tracked() {
        let text = "# Titre\n\nIntro.\n\n## Partie A\n\nTexte A.\n\n## Partie B\n\nTexte B.";
        let d = doc(vec![Section::new(text.into(), Location::default())]);
        let chunks = chunker(20, 0).chunk(&d);
        let b = chunks.iter().find(|c| c.text.contains("Texte B")).unwrap();
        assert_eq!(b.headings, vec!["Titre", "Partie B"]);
    }

    #[test]
    fn table_chunks_repeat_the_header_and_know_their_rows() {
        let rows = (1..=40).map(|i| (i, vec![format!("ligne {i}"), format!("{}", i * 10)]));
        let section = crate::extract::sheet::table_section("Feuil1", false, rows).unwrap();
        let d = doc(vec![section]);
        let chunks = chunker(200, 0).chunk(&d);
        assert!(chunks.len() > 2);
        let (text, _) = d.text_with_offsets();
        for c in &chunks {
            assert!(
                c.text
                    .starts_with("## Feuil1\n\n| ligne 1 | 10 |\n|---|---|\n"),
                "{}",
                c.text
            );
            assert!(c.text.ends_with(&text[c.start..c.end]));
            assert!(c.text.chars().count() <= 200, "{}", c.text.len());
        }
        assert_eq!(chunks[0].row_start, Some(1));
        assert_eq!(chunks.last().unwrap().row_end, Some(40));
        assert_eq!(chunks[1].row_start, Some(chunks[0].row_end.unwrap() + 1));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn chunks_cover_the_text_respect_the_bound_and_point_back(
            paragraphs in proptest::collection::vec("[a-zéèàç ,.]{0,120}", 1..12),
            size in 20usize..200,
        ) {
            let text = paragraphs.join("\n\n");
            let d = doc(vec![Section::new(text.clone(), Location::default())]);
            let chunks = chunker(size, 0).chunk(&d);
            let mut covered = 0usize;
            for c in &chunks {
                prop_assert_eq!(&text[c.start..c.end], c.text.as_str());
                prop_assert!(c.text.chars().count() <= size);
                // Nothing but whitespace is skipped between chunks.
                prop_assert!(text[covered.min(c.start)..c.start].trim().is_empty());
                covered = c.end;
            }
            prop_assert!(text[covered..].trim().is_empty());
        }
    }
}
