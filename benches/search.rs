//! Search as a service, measured: queries per second of one `Searcher` (model
//! loaded once) on a collection of 12 000 chunks, one query at a time and in
//! batches (`search_many`), semantic, lexical and hybrid, with and without the
//! IVF-PQ vector index; side by side with the reference, one `moulin search`
//! process per query (the model loaded again each time).
//!
//! The chunks are sentences of PIAF's contexts (real French text for the
//! full-text index); their vectors are synthetic (clustered, 384 dimensions,
//! recorded under the real model's identity so that the real model embeds the
//! queries): embedding 12 000 chunks would take this machine 20 minutes and
//! does not change how fast a search runs. Queries are PIAF questions.
//!
//! Then the retrieval scores of the three modes on PIAF: 300 questions spread
//! over the file, the collection built from all its 1 518 contexts by
//! `moulin eval import-squad`, scored by `moulin eval run --retrieval-only`.
//!
//! Run: `source scripts/setup.sh && cargo bench --profile dev --bench search`
//! `BENCH_PARTS=speed,piaf` chooses the parts (both by default).

use std::path::PathBuf;

mod common;
use common::moulin;
use std::time::Instant;

use moulin::store::search::{Mode, Query, Searcher};
use moulin::store::{Access, EmbeddedDocument, Store, Upkeep};

const CHUNKS: usize = 12_000;
const PER_DOC: usize = 100;
const QUERIES: usize = 200;
const CLI_QUERIES: usize = 5;

fn piaf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/qa_fr/piaf/piaf-v1.1.json")
}

/// Sentences of PIAF's contexts, and its questions.
fn texts() -> (Vec<String>, Vec<String>) {
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(piaf()).expect("PIAF in ../shared/corpus"))
            .unwrap();
    let mut sentences = Vec::new();
    let mut questions = Vec::new();
    for article in file["data"].as_array().unwrap() {
        for paragraph in article["paragraphs"].as_array().unwrap() {
            let context = paragraph["context"].as_str().unwrap();
            sentences.extend(
                context
                    .split_inclusive(". ")
                    .map(str::trim)
                    .filter(|s| s.len() > 20)
                    .map(str::to_string),
            );
            for qa in paragraph["qas"].as_array().unwrap() {
                questions.push(qa["question"].as_str().unwrap().to_string());
            }
        }
    }
    // As many chunks as asked: sentences again, each copy numbered.
    let base = sentences.len();
    let chunks = (0..CHUNKS)
        .map(|i| format!("{} ({})", sentences[i % base], i / base))
        .collect();
    let step = questions.len() / QUERIES;
    let questions = (0..QUERIES).map(|i| questions[i * step].clone()).collect();
    (chunks, questions)
}

fn main() {
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "speed,piaf".into());
    if parts.contains("speed") {
        speed();
    }
    if parts.contains("piaf") {
        piaf_scores();
    }
}

fn piaf_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let t = Instant::now();
    moulin(
        dir,
        &[
            "eval",
            "import-squad",
            piaf().to_str().unwrap(),
            "-c",
            "piaf",
            "--db",
            "db",
            "--questions",
            "300",
            "--set",
            "set.jsonl",
            "--quiet",
        ],
    );
    let import = t.elapsed().as_secs_f64();
    let show = moulin(
        dir,
        &["collections", "show", "-c", "piaf", "--db", "db", "--json"],
    );
    let show: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    println!(
        "\n## PIAF retrieval: 300 questions, {} contexts, {} chunks (imported in {import:.0} s)",
        show["documents"], show["chunks"]
    );
    println!("| mode | hit@1 | hit@5 | recall@5 | nDCG@10 | MRR | questions/s |");
    println!("|---|---|---|---|---|---|---|");
    for mode in ["hybrid", "semantic", "lexical"] {
        let out = moulin(
            dir,
            &[
                "eval",
                "run",
                "set.jsonl",
                "-c",
                "piaf",
                "--db",
                "db",
                "--retrieval-only",
                "--mode",
                mode,
                "--json",
            ],
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let s = &r["scores"];
        assert_eq!(s["scored"], 300);
        let at = |k: usize, m: &str| {
            s["at"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["k"] == k)
                .unwrap()[m]
                .as_f64()
                .unwrap()
        };
        println!(
            "| {mode} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.1} |",
            at(1, "hit"),
            at(5, "hit"),
            at(5, "recall"),
            at(10, "ndcg"),
            s["mrr"].as_f64().unwrap(),
            s["questions_per_second"].as_f64().unwrap()
        );
    }
}

fn speed() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let (chunks, questions) = texts();
    let model = moulin::embed::OnnxEmbedder::load(&Default::default()).expect("default model");
    let info = moulin::embed::Embedder::info(&model).clone();
    drop(model);

    let mut space = common::Clustered::new(0x2545_f491_4f6c_dd1d, 200, info.dimension);

    println!(
        "# Search: {CHUNKS} chunks, {QUERIES} PIAF questions, model {}",
        info.name
    );
    runtime.block_on(async {
        let store = Store::connect(db.to_str().unwrap(), Access::Write)
            .await
            .unwrap();
        let c = store.open_for_writing("search", &info).await.unwrap();
        for (d, texts) in chunks.chunks(PER_DOC).enumerate() {
            let (doc, rows) =
                common::document(&format!("d{d:04}"), &format!("piaf/{d:04}.txt"), texts);
            let vectors: Vec<Vec<f32>> = (0..rows.len())
                .map(|i| space.point(d * PER_DOC + i))
                .collect();
            c.swap_chunks(
                &[EmbeddedDocument {
                    document: &doc,
                    chunks: &rows,
                    vectors: &vectors,
                }],
                "bench",
            )
            .await
            .unwrap();
        }
        c.refresh(&Upkeep::default()).await.unwrap();
    });

    // The reference: one process per query, as `moulin search` was used before it took several.
    let t = Instant::now();
    for q in &questions[..CLI_QUERIES] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_moulin"))
            .args(["search", q, "-c", "search", "--db"])
            .arg(&db)
            .args(["--mode", "semantic", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cli_qps = CLI_QUERIES as f64 / t.elapsed().as_secs_f64();

    println!("\n| search | index | one at a time (q/s) | batch of {QUERIES} (q/s) |");
    println!("|---|---|---|---|");
    println!("| semantic, one `moulin search` process per query | exact | {cli_qps:.1} | |");
    runtime.block_on(async {
        for indexed in [false, true] {
            if indexed {
                let store = Store::connect(db.to_str().unwrap(), Access::Write)
                    .await
                    .unwrap();
                let c = store.open_for_writing("search", &info).await.unwrap();
                let policy = Upkeep {
                    vector_index_min_chunks: 10_000,
                    ..Default::default()
                };
                c.refresh(&policy).await.unwrap();
            }
            let store = Store::connect(db.to_str().unwrap(), Access::Read)
                .await
                .unwrap();
            let searcher = Searcher::open(store.open("search").await.unwrap(), None, false)
                .await
                .unwrap();
            for mode in [Mode::Semantic, Mode::Lexical, Mode::Hybrid] {
                let queries: Vec<Query> = questions
                    .iter()
                    .map(|q| Query {
                        text: q.clone(),
                        mode,
                        limit: 10,
                        filters: Default::default(),
                    })
                    .collect();
                // Warm the caches once.
                searcher.search(&queries[0]).await.unwrap();
                let t = Instant::now();
                for q in &queries {
                    assert!(!searcher.search(q).await.unwrap().is_empty());
                }
                let one = QUERIES as f64 / t.elapsed().as_secs_f64();
                let t = Instant::now();
                let answers = searcher.search_many(&queries).await;
                let batch = QUERIES as f64 / t.elapsed().as_secs_f64();
                assert!(
                    answers
                        .iter()
                        .all(|a| a.as_ref().is_ok_and(|h| !h.is_empty()))
                );
                let index = if indexed {
                    "IVF-PQ, refine 20"
                } else {
                    "exact"
                };
                println!("| {mode:?} | {index} | {one:.1} | {batch:.1} |");
            }
        }
    });
}
