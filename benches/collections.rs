//! Collections that last, measured: on 500+ pages of `../shared/corpus`, a full
//! run vs a rerun with nothing changed vs a rerun with 1% of the documents
//! changed vs `reindex` with a new chunk size (no extraction), side by side in
//! one run, with peak memory; the files and versions on disk after 30
//! incremental runs, with the default upkeep and with `keep_days = 0`; and the
//! recall@10 of the IVF-PQ vector index against exact search on 50 000
//! synthetic chunks, with query latency.
//!
//! Run: `source scripts/setup.sh && cargo bench --profile dev --bench collections`
//! `BENCH_PARTS=reruns,upkeep,recall` chooses the parts (all by default).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

mod common;

/// Inputs copied into the benchmark's folder, so that some can be changed: the
/// end-to-end benchmark's PDFs and more (600 pages), a French workbook, the
/// ministry pages and the readability test pages (their `source.html` only).
const INPUTS: &[&str] = &[
    "pdf/french",
    "pdf/large",
    "pdf/multilingual",
    "pdf/producers",
    "pdf/structure",
    "pdf/forms",
    "pdf/tables",
    "spreadsheets/french/piaf-ml_time_report.ods",
    "html/gouv_fr",
    "html/readability",
];

fn moulin(dir: &Path, args: &[&str]) -> (f64, f64, serde_json::Value) {
    let report = dir.join("bench-report.json");
    let _ = std::fs::remove_file(&report);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moulin"));
    cmd.current_dir(dir)
        .args(args)
        .args(["--quiet", "--report"])
        .arg(&report);
    let (code, seconds, peak_mb) = run_measured(&mut cmd);
    assert!(
        (0..=1).contains(&code),
        "moulin {args:?} failed: exit code {code}"
    );
    let r = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    (seconds, peak_mb, r)
}

/// Run a command to its end: exit code, wall seconds, and the peak resident
/// memory (MB) of it and of the processes it waited for (the extractors).
// The child is reaped by wait4, which returns the rusage std's wait cannot.
#[allow(clippy::zombie_processes)]
fn run_measured(cmd: &mut Command) -> (i32, f64, f64) {
    let t = Instant::now();
    let child = cmd.spawn().expect("moulin starts");
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, writing into values we own.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert!(pid > 0, "wait4 failed");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (
        code,
        t.elapsed().as_secs_f64(),
        usage.ru_maxrss as f64 / 1024.0,
    )
}

/// Copy a folder (or one file) into `to`; of the readability pages, only their source.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    if from.is_file() {
        std::fs::copy(from, to.join(from.file_name().unwrap())).unwrap();
        return;
    }
    for entry in walkdir::WalkDir::new(from) {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(from).unwrap();
        let target = to.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
        } else if !from.ends_with("readability") || entry.file_name() == "source.html" {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Add a sentence to the text of a web page (in its longest paragraph: the
/// article, not the footer that extraction drops), so that its extracted text
/// changes, as an edited page's does.
fn add_sentence(page: &Path, n: usize) {
    let text = std::fs::read_to_string(page).unwrap();
    let at = text
        .match_indices("</p>")
        .map(|(end, _)| {
            let start = text[..end].rfind("<p").unwrap_or(0);
            (end - start, end)
        })
        .max()
        .expect("a paragraph")
        .1;
    let sentence = format!(" Phrase ajoutée pour le banc d'essai, numéro {n}.");
    std::fs::write(page, format!("{}{sentence}{}", &text[..at], &text[at..])).unwrap();
}

fn files_and_versions(db: &Path, name: &str) -> (usize, usize) {
    let files = walkdir::WalkDir::new(db)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .count();
    let versions =
        std::fs::read_dir(db.join(format!("{name}.lance/_versions"))).map_or(0, |d| d.count());
    (files, versions)
}

fn reruns(tmp: &Path) {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    let docs = tmp.join("docs");
    for rel in INPUTS {
        copy_tree(&corpus.join(rel), &docs.join(rel.replace('/', "-")));
    }
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo"),
        &docs.join("demo"),
    );
    let ingest = ["ingest", "docs", "-c", "bench", "--db", "db"];

    let (full_s, full_mb, full) = moulin(tmp, &ingest);
    let pages = full["totals"]["pages"].as_u64().unwrap();
    let ingested = full["totals"]["ingested"].as_u64().unwrap();
    assert!(
        pages >= 500,
        "the benchmark wants 500+ pages, the inputs have {pages}"
    );

    let (same_s, same_mb, same) = moulin(tmp, &ingest);
    assert_eq!(same["totals"]["ingested"], 0);

    // 1% of the documents change: a sentence added inside the text of web pages.
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(&docs)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .filter(|p| p.extension().is_some_and(|e| e == "html"))
        .collect();
    files.sort();
    let changed = (ingested as usize).div_ceil(100).max(1);
    for f in files.iter().step_by(files.len() / changed).take(changed) {
        add_sentence(f, 0);
    }
    let (one_s, one_mb, one) = moulin(tmp, &ingest);
    assert!(
        one["totals"]["embedded"].as_u64().unwrap() >= changed as u64,
        "the changed pages' text changed"
    );

    let (re_s, re_mb, re) = moulin(
        tmp,
        &[
            "reindex",
            "-c",
            "bench",
            "--db",
            "db",
            "--chunk-size",
            "1000",
            "--overlap",
            "100",
        ],
    );

    println!("\n## Reruns: {ingested} documents, {pages} pages");
    println!("| run | seconds | share of the full run | peak MB | ingested | embedded |");
    println!("|---|---|---|---|---|---|");
    for (what, s, mb, r) in [
        ("full run", full_s, full_mb, &full),
        ("rerun, nothing changed", same_s, same_mb, &same),
        ("rerun, 1% changed", one_s, one_mb, &one),
        ("reindex, chunk size 1000", re_s, re_mb, &re),
    ] {
        println!(
            "| {what} | {s:.1} | {:.1}% | {mb:.0} | {} | {} |",
            100.0 * s / full_s,
            r["totals"]["ingested"],
            r["totals"]["embedded"]
        );
    }
    println!(
        "\nreindex: extraction {:.1} s (none: from the stored documents), embedding {:.1} s",
        re["seconds"]["extract"].as_f64().unwrap(),
        re["seconds"]["embed"].as_f64().unwrap()
    );
}

fn upkeep(tmp: &Path) {
    println!(
        "\n## Files and versions after 30 incremental runs (8 documents, one changed per run)"
    );
    println!("| policy | after run 1 | after run 10 | after run 20 | after run 30 |");
    println!("|---|---|---|---|---|");
    for (policy, extra) in [
        ("default (keep_runs 10, keep_days 30)", ""),
        (
            "keep_runs 10, keep_days 0",
            "\n[upkeep]\nkeep_runs = 10\nkeep_days = 0\n",
        ),
    ] {
        let dir = tmp.join(format!("upkeep-{}", extra.len()));
        copy_tree(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo"),
            &dir.join("docs"),
        );
        std::fs::write(
            dir.join("p.toml"),
            format!("[collection]\nname = \"c\"\ndb = \"db\"\n\n[[sources]]\ntype = \"files\"\npath = \"docs\"\n{extra}"),
        )
        .unwrap();
        let page = dir.join("docs/fiche-cdd.html");
        let mut cells = Vec::new();
        for run in 1..=30 {
            add_sentence(&page, run);
            let (_, _, r) = moulin(&dir, &["run", "p.toml"]);
            if run > 1 {
                // One page changed, and its text with it: at least one chunk embedded again.
                assert_eq!(r["totals"]["updated"], 1);
                assert!(r["totals"]["embedded"].as_u64().unwrap() >= 1);
            }
            if [1, 10, 20, 30].contains(&run) {
                let (files, versions) = files_and_versions(&dir.join("db"), "c");
                cells.push(format!("{files} files, {versions} versions"));
            }
        }
        println!("| {policy} | {} |", cells.join(" | "));
    }
}

fn recall() {
    use arrow_array::{Array, RecordBatch, StringArray};
    use futures::TryStreamExt;
    use lancedb::query::{ExecutableQuery, QueryBase, Select};
    use moulin::store::{Access, EmbeddedDocument, Store, Upkeep};

    const DOCS: usize = 50;
    const PER_DOC: usize = 1000;
    const DIM: usize = 384;
    const QUERIES: usize = 200;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // Clustered vectors, as embeddings of topics are: 500 centres, points around them.
    let mut space = common::Clustered::new(0x9e37_79b9_7f4a_7c15, 500, DIM);
    let info = moulin::embed::ModelInfo {
        name: "synthetic".into(),
        dimension: DIM,
        hash: "synthetic".into(),
        passage_prefix: String::new(),
        query_prefix: String::new(),
    };
    runtime.block_on(async {
        let store = Store::connect(tmp.path().to_str().unwrap(), Access::Write).await.unwrap();
        let c = store.open_for_writing("recall", &info).await.unwrap();
        let t = Instant::now();
        for d in 0..DOCS {
            let texts: Vec<String> = (0..PER_DOC).map(|i| format!("chunk {i}")).collect();
            let (doc, chunks) =
                common::document(&format!("d{d:03}"), &format!("synthetic/{d}"), &texts);
            let vectors: Vec<Vec<f32>> = (0..PER_DOC)
                .map(|i| space.point(d * PER_DOC + i))
                .collect();
            c.swap_chunks(
                &[EmbeddedDocument {
                    document: &doc,
                    chunks: &chunks,
                    vectors: &vectors,
                }],
                "bench",
            )
            .await
            .unwrap();
        }
        let write = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let policy = Upkeep {
            vector_index_min_chunks: 10_000,
            ..Default::default()
        };
        c.refresh(&policy).await.unwrap();
        let build = t.elapsed().as_secs_f64();

        let queries: Vec<Vec<f32>> = (0..QUERIES).map(|q| space.point(q * 7919)).collect();
        let top = |batches: Vec<RecordBatch>| -> Vec<String> {
            batches
                .iter()
                .flat_map(|b| {
                    let ids = b
                        .column_by_name("chunk_id")
                        .unwrap()
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .unwrap()
                        .clone();
                    (0..ids.len()).map(move |i| ids.value(i).to_string())
                })
                .collect()
        };
        let search = |q: &Vec<f32>, exact: bool, refine: Option<u32>| {
            let table = c.table.clone();
            let q = q.clone();
            async move {
                let mut query = table
                    .vector_search(q)
                    .unwrap()
                    .distance_type(lancedb::DistanceType::Cosine)
                    .select(Select::columns(&["chunk_id"]))
                    .limit(10);
                if exact {
                    query = query.bypass_vector_index();
                }
                if let Some(r) = refine {
                    query = query.refine_factor(r);
                }
                let batches: Vec<RecordBatch> =
                    query.execute().await.unwrap().try_collect().await.unwrap();
                batches
            }
        };
        let mut truth = Vec::new();
        let t = Instant::now();
        for q in &queries {
            truth.push(top(search(q, true, None).await));
        }
        let exact_ms = t.elapsed().as_secs_f64() * 1000.0 / QUERIES as f64;
        println!(
            "\n## Vector index: {} chunks of {DIM} dimensions (clustered synthetic), {QUERIES} queries",
            DOCS * PER_DOC
        );
        println!("written in {write:.1} s; IVF-PQ built (with the other indexes) in {build:.1} s");
        println!("| search | recall@10 | ms per query |");
        println!("|---|---|---|");
        println!("| exact (no index) | 1.000 | {exact_ms:.1} |");
        for refine in [None, Some(5), Some(10), Some(20)] {
            let t = Instant::now();
            let mut found = 0;
            for (q, truth) in queries.iter().zip(&truth) {
                let got = top(search(q, false, refine).await);
                found += got.iter().filter(|id| truth.contains(id)).count();
            }
            let ms = t.elapsed().as_secs_f64() * 1000.0 / QUERIES as f64;
            let name = match refine {
                None => "IVF-PQ".to_string(),
                Some(r) => format!("IVF-PQ, refine factor {r}"),
            };
            println!(
                "| {name} | {:.3} | {ms:.1} |",
                found as f64 / (10 * QUERIES) as f64
            );
        }
    });
}

fn main() {
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "reruns,upkeep,recall".into());
    let tmp = tempfile::tempdir().unwrap();
    if parts.contains("reruns") {
        reruns(tmp.path());
    }
    if parts.contains("upkeep") {
        upkeep(tmp.path());
    }
    if parts.contains("recall") {
        recall();
    }
}
