//! Per-stage throughput: extraction (pages/s per format), chunking (MB/s), embedding
//! (chunks/s, moulin against a plain ONNX Runtime session of the same model on the
//! same chunks, batch size and threads), and LanceDB writes (rows/s).
//!
//! Run: `source scripts/setup.sh && cargo bench --bench stages`

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use divan::counter::{BytesCount, ItemsCount};
use divan::{Bencher, black_box};
use moulin::chunk::{Chunker, ChunkerConfig, SizeUnit, SplitConfig};
use moulin::embed::{Embedder, OnnxConfig, OnnxEmbedder};
use moulin::extract::{self, ExtractOptions};

fn main() {
    divan::main();
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

fn extract_file(rel: &str) -> moulin::Document {
    extract::extract_path(&fixture(rel), &ExtractOptions::default()).expect("fixture extracts")
}

mod extraction {
    use super::*;

    fn bench_file(bencher: Bencher, rel: &str) {
        let bytes = std::fs::read(fixture(rel)).unwrap();
        let pages = extract_file(rel).pages as usize;
        let options = ExtractOptions::default();
        bencher
            .counter(ItemsCount::new(pages))
            .bench(|| black_box(extract::extract(rel, rel, &bytes, None, &options).unwrap()));
    }

    #[divan::bench(sample_count = 10)]
    fn pdf_two_columns(b: Bencher) {
        bench_file(b, "pdf/two-columns.pdf");
    }

    #[divan::bench(sample_count = 10)]
    fn pdf_journal_officiel(b: Bencher) {
        bench_file(b, "demo/jorf-2023-06-21-decision.pdf");
    }

    #[divan::bench(sample_count = 10)]
    fn html_fiche(b: Bencher) {
        bench_file(b, "demo/fiche-cdd.html");
    }

    #[divan::bench(sample_count = 10)]
    fn xlsx_workbook(b: Bencher) {
        bench_file(b, "demo/crpa-questions.xlsx");
    }
}

fn demo_documents() -> &'static Vec<moulin::Document> {
    static DOCS: OnceLock<Vec<moulin::Document>> = OnceLock::new();
    DOCS.get_or_init(|| {
        std::fs::read_dir(fixture("demo"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| extract::extract_path(&p, &ExtractOptions::default()).unwrap())
            .collect()
    })
}

fn embedder() -> &'static OnnxEmbedder {
    static E: OnceLock<OnnxEmbedder> = OnceLock::new();
    E.get_or_init(|| {
        OnnxEmbedder::load(&OnnxConfig::default()).expect("run scripts/setup.sh first")
    })
}

mod chunking {
    use super::*;

    #[divan::bench(args = ["characters", "tokens"], sample_count = 10)]
    fn markdown(bencher: Bencher, unit: &str) {
        let docs = demo_documents();
        let bytes: usize = docs.iter().map(|d| d.text().len()).sum();
        let unit = if unit == "tokens" {
            SizeUnit::Tokens
        } else {
            SizeUnit::Characters
        };
        let size = if unit == SizeUnit::Tokens { 400 } else { 1500 };
        let tokenizer = (unit == SizeUnit::Tokens).then(|| embedder().tokenizer().clone());
        let chunker = Chunker::new(
            ChunkerConfig::Markdown(SplitConfig {
                size,
                overlap: size / 10,
                unit,
            }),
            tokenizer,
        )
        .unwrap();
        bencher
            .counter(BytesCount::new(bytes))
            .bench(|| docs.iter().map(|d| chunker.chunk(d).len()).sum::<usize>());
    }
}

/// Chunks of the demo corpus, as the default pipeline cuts them.
fn demo_chunks() -> &'static Vec<String> {
    static C: OnceLock<Vec<String>> = OnceLock::new();
    C.get_or_init(|| {
        let chunker = Chunker::new(ChunkerConfig::default(), None).unwrap();
        let mut texts: Vec<String> = demo_documents()
            .iter()
            .flat_map(|d| chunker.chunk(d))
            .map(|c| c.text)
            .collect();
        // A fixed, varied sample: every third chunk, 96 of them.
        texts = texts.into_iter().step_by(3).take(96).collect();
        texts
    })
}

mod embedding {
    use super::*;
    use ndarray::{Array2, Axis};
    use ort::session::Session;
    use ort::value::TensorRef;

    /// moulin's embedding stage as configured by default: prefixes, batches sorted by
    /// length, of 32 texts or 4096 tokens at most, fastembed, ONNX Runtime.
    #[divan::bench(sample_count = 3)]
    fn moulin(bencher: Bencher) {
        embed_with(bencher, embedder());
    }

    /// The same with batches of exactly 32 texts, as the plain session below.
    #[divan::bench(sample_count = 3)]
    fn moulin_batches_of_32(bencher: Bencher) {
        static E: OnceLock<OnnxEmbedder> = OnceLock::new();
        let e = E.get_or_init(|| {
            let config = OnnxConfig {
                max_batch_tokens: usize::MAX,
                ..OnnxConfig::default()
            };
            OnnxEmbedder::load(&config).expect("run scripts/setup.sh first")
        });
        embed_with(bencher, e);
    }

    fn embed_with(bencher: Bencher, e: &OnnxEmbedder) {
        let texts = demo_chunks();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        bencher
            .counter(ItemsCount::new(texts.len()))
            .bench(|| black_box(e.embed_passages(&refs).unwrap()));
    }

    /// The reference: a plain ONNX Runtime session, same model, chunks, batch size and
    /// threads, the tokenizer without padding, batches padded to their longest, mean pooling.
    #[divan::bench(sample_count = 3, args = ["as given", "sorted by length"])]
    fn plain_onnxruntime(bencher: Bencher, order: &str) {
        let environment = moulin::embed::runtime().expect("ONNX Runtime");
        let dir = moulin::embed::model_folder(moulin::embed::DEFAULT_MODEL);
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut session = Session::builder(&environment)
            .unwrap()
            .with_intra_threads(threads)
            .unwrap()
            .commit_from_file(dir.join("model.onnx"))
            .unwrap();
        let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: 512,
                ..Default::default()
            }))
            .unwrap();
        let mut texts: Vec<String> = demo_chunks()
            .iter()
            .map(|t| format!("passage: {t}"))
            .collect();
        if order != "as given" {
            texts.sort_by_key(|t| std::cmp::Reverse(t.len()));
        }
        bencher
            .counter(ItemsCount::new(texts.len()))
            .bench_local(|| {
                let mut out = Vec::new();
                for batch in texts.chunks(32) {
                    let enc = tokenizer.encode_batch(batch.to_vec(), true).unwrap();
                    let n = enc.iter().map(|e| e.len()).max().unwrap();
                    let mut ids = Array2::<i64>::zeros((enc.len(), n));
                    let mut mask = Array2::<i64>::zeros((enc.len(), n));
                    for (i, e) in enc.iter().enumerate() {
                        for (j, &id) in e.get_ids().iter().enumerate() {
                            ids[[i, j]] = id as i64;
                            mask[[i, j]] = 1;
                        }
                    }
                    let types = Array2::<i64>::zeros((enc.len(), n));
                    let outputs = session
                        .run(ort::inputs![
                            "input_ids" => TensorRef::from_array_view(&ids).unwrap(),
                            "attention_mask" => TensorRef::from_array_view(&mask).unwrap(),
                            "token_type_ids" => TensorRef::from_array_view(&types).unwrap(),
                        ])
                        .unwrap();
                    let hidden = outputs["last_hidden_state"]
                        .try_extract_array::<f32>()
                        .unwrap();
                    let m = mask.mapv(|x| x as f32).insert_axis(Axis(2));
                    let summed = (&hidden * &m).sum_axis(Axis(1));
                    let counts = m.sum_axis(Axis(1));
                    out.push(summed / counts);
                }
                black_box(out)
            });
    }
}

mod lancedb_write {
    use super::*;
    use moulin::store::{EmbeddedDocument, Store};

    #[divan::bench(args = [1000, 10000], sample_count = 5)]
    fn rows(bencher: Bencher, n: usize) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let doc = moulin::Document {
            id: "bench".into(),
            source: "bench".into(),
            uri: "bench".into(),
            format: moulin::Format::Text,
            content_hash: "x".into(),
            title: None,
            metadata: Default::default(),
            pages: 1,
            sections: Vec::new(),
            warnings: Vec::new(),
        };
        let text = "Le contrat de travail à durée déterminée ne peut avoir ni pour objet ni pour effet de pourvoir durablement un emploi. ".repeat(8);
        let mut chunks: Vec<moulin::Chunk> = (0..n)
            .map(|i| moulin::Chunk {
                id: String::new(),
                document_id: "bench".into(),
                index: i as u32,
                text: text.clone(),
                start: 0,
                end: text.len(),
                page_start: Some(1),
                page_end: Some(1),
                sheet: None,
                row_start: None,
                row_end: None,
                headings: vec!["Titre".into()],
            })
            .collect();
        moulin::Chunk::assign_ids(&mut chunks);
        let vectors: Vec<Vec<f32>> = (0..n).map(|i| vec![(i % 7) as f32 / 7.0; 384]).collect();
        let info = moulin::embed::ModelInfo {
            name: "bench".into(),
            dimension: 384,
            hash: "h".into(),
            passage_prefix: String::new(),
            query_prefix: String::new(),
        };
        bencher.counter(ItemsCount::new(n)).bench_local(|| {
            runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let store =
                    Store::connect(dir.path().to_str().unwrap(), moulin::store::Access::Write)
                        .await
                        .unwrap();
                let c = store.open_for_writing("bench", &info).await.unwrap();
                let docs = [EmbeddedDocument {
                    document: &doc,
                    chunks: &chunks,
                    vectors: &vectors,
                }];
                c.swap_chunks(&docs, "bench").await.unwrap()
            })
        });
    }
}
