//! What several benchmarks share: running the binary, and synthetic documents
//! with clustered vectors for measures where embedding real text would only
//! cost time.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Run moulin in `dir`; it must succeed.
pub fn moulin(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_moulin"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "moulin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Unit vectors around random centres, as embeddings of topics are:
/// deterministic for a seed.
pub struct Clustered {
    state: u64,
    centres: Vec<Vec<f32>>,
}

impl Clustered {
    pub fn new(seed: u64, centres: usize, dimension: usize) -> Self {
        let mut c = Clustered {
            state: seed,
            centres: Vec::new(),
        };
        c.centres = (0..centres)
            .map(|_| (0..dimension).map(|_| c.uniform()).collect())
            .collect();
        c
    }

    /// xorshift64, in -0.5..0.5.
    fn uniform(&mut self) -> f32 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    }

    /// A point near centre `i` (modulo their number).
    pub fn point(&mut self, i: usize) -> Vec<f32> {
        let centre = i % self.centres.len();
        let v: Vec<f32> = (0..self.centres[centre].len())
            .map(|k| self.centres[centre][k] + 0.6 * self.uniform())
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }
}

/// A text document `id` known as `source`, and one chunk per text.
pub fn document(
    id: &str,
    source: &str,
    texts: &[String],
) -> (moulin::Document, Vec<moulin::Chunk>) {
    let doc = moulin::Document {
        id: id.to_string(),
        source: source.to_string(),
        uri: source.to_string(),
        format: moulin::Format::Text,
        content_hash: id.to_string(),
        title: None,
        metadata: Default::default(),
        pages: 1,
        sections: Vec::new(),
        warnings: Vec::new(),
    };
    let chunks = texts
        .iter()
        .enumerate()
        .map(|(i, text)| moulin::Chunk {
            id: format!("{id}-{i:05}"),
            document_id: id.to_string(),
            index: i as u32,
            text: text.clone(),
            start: 0,
            end: text.len(),
            page_start: None,
            page_end: None,
            sheet: None,
            row_start: None,
            row_end: None,
            headings: Vec::new(),
        })
        .collect();
    (doc, chunks)
}
