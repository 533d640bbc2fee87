//! Runs over many workers, measured.
//!
//! 1. **Commit cost** as a function of shards and rows: synthetic chunks
//!    (384-dimension vectors, ~300-character texts, 10 per document) staged by
//!    N shards, then the commit that makes them visible (`staged_run` +
//!    `commit_staged`: reading the manifests and one transaction per table),
//!    then a second run that replaces 1% of the documents (the commit deletes
//!    their earlier rows). Files written and bytes on disk are counted. The
//!    index refresh that follows a commit is measured apart (it is the same as
//!    after a one-process run).
//! 2. **Per-shard throughput**: the real pipeline on the ministry's fiches with
//!    the real model, one process against 2 shards run at the same time plus
//!    their commit, side by side.
//!
//! Run: `source scripts/setup.sh && cargo bench --profile dev --bench sharding`
//! `SHARDING_ROWS="10000 100000 1000000"` and `SHARDING_SHARDS="1 8 64"` choose
//! the grid, `SHARDING_REFRESH=0` leaves out the index refresh;
//! `BENCH_PARTS=commit,throughput` the parts.

use std::path::Path;
use std::time::Instant;

use moulin::shard::Shard;
use moulin::store::{Access, DocumentRow, EmbeddedDocument, Store};

mod common;

const DIM: usize = 384;
const PER_DOC: usize = 10;

fn list(var: &str, default: &str) -> Vec<usize> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split_whitespace()
        .map(|v| v.parse().expect("a number"))
        .collect()
}

fn folder_stats(dir: &Path) -> (usize, u64) {
    let mut files = 0;
    let mut bytes = 0;
    for e in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if e.file_type().is_file() {
            files += 1;
            bytes += e.metadata().map_or(0, |m| m.len());
        }
    }
    (files, bytes)
}

fn row(id: &str, run: &str, version: u32) -> DocumentRow {
    DocumentRow {
        document_id: id.to_string(),
        origin: "synthetic".into(),
        source: format!("synthetic/{id}"),
        uri: format!("synthetic/{id}"),
        content_hash: format!("{id}-{version}"),
        format: "text".into(),
        title: None,
        pages: 1,
        metadata: "{}".into(),
        sections: "[]".into(),
        extractor: 1,
        chunking: "bench".into(),
        embedding: "bench".into(),
        chunks: PER_DOC as u32,
        first_run: run.into(),
        last_run: run.into(),
        updated_at: String::new(),
    }
}

/// Stage `docs` (by id) for run `run` over `n` shards, each shard writing its
/// documents as a worker would; the staging time of the slowest shard.
async fn stage(
    c: &moulin::store::Collection,
    space: &mut common::Clustered,
    docs: &[usize],
    n: u32,
    run: &str,
    version: u32,
    replaced: bool,
) -> f64 {
    let mut slowest: f64 = 0.0;
    let text: String = "Les agents publics bénéficient d'un droit à la formation professionnelle tout au long de la vie, dans les conditions fixées par décret. ".repeat(3);
    for i in 0..n {
        let shard = Shard::new(i, n).unwrap();
        let t = Instant::now();
        let mut staged = c.stage(run).await.unwrap();
        let mine: Vec<usize> = docs
            .iter()
            .copied()
            .filter(|d| shard.contains(&format!("d{d:07}")))
            .collect();
        for group in mine.chunks(64) {
            let built: Vec<(moulin::Document, Vec<moulin::Chunk>, Vec<Vec<f32>>)> = group
                .iter()
                .map(|&d| {
                    let texts: Vec<String> = (0..PER_DOC).map(|k| format!("{k} {text}")).collect();
                    let (doc, chunks) =
                        common::document(&format!("d{d:07}"), &format!("synthetic/{d}"), &texts);
                    let vectors = (0..PER_DOC).map(|k| space.point(d * PER_DOC + k)).collect();
                    (doc, chunks, vectors)
                })
                .collect();
            let embedded: Vec<EmbeddedDocument> = built
                .iter()
                .map(|(document, chunks, vectors)| EmbeddedDocument {
                    document,
                    chunks,
                    vectors,
                })
                .collect();
            let rows: Vec<DocumentRow> = built
                .iter()
                .map(|(d, _, _)| row(&d.id, run, version))
                .collect();
            let stored: Vec<String> = if replaced {
                built.iter().map(|(d, _, _)| d.id.clone()).collect()
            } else {
                Vec::new()
            };
            staged.write(&embedded, &rows, run, stored).await.unwrap();
        }
        staged
            .finish(run, shard, serde_json::json!({}))
            .await
            .unwrap();
        slowest = slowest.max(t.elapsed().as_secs_f64());
    }
    slowest
}

fn commit_cost() {
    let rows = list("SHARDING_ROWS", "10000 100000 1000000");
    let shards = list("SHARDING_SHARDS", "1 8 64");
    // SHARDING_REFRESH=0 leaves out the index refresh (minutes at a million chunks).
    let refresh = std::env::var("SHARDING_REFRESH").map_or(true, |v| v != "0");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!("## Commit cost (synthetic chunks, {DIM} dimensions, {PER_DOC} per document)\n");
    println!(
        "| chunks | shards | staging, slowest shard s | commit s | files | MB on disk | rerun 1%: commit s | index refresh s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let info = moulin::embed::ModelInfo {
        name: "synthetic".into(),
        dimension: DIM,
        hash: "synthetic".into(),
        passage_prefix: String::new(),
        query_prefix: String::new(),
    };
    for &chunks in &rows {
        for &n in &shards {
            let tmp = tempfile::tempdir().unwrap();
            let db = tmp.path().join("db");
            let mut space = common::Clustered::new(0x9e37_79b9_7f4a_7c15, 500, DIM);
            let docs: Vec<usize> = (0..chunks / PER_DOC).collect();
            let (stage_s, commit_s, rerun_s, refresh_s) = runtime.block_on(async {
                let store = Store::connect(db.to_str().unwrap(), Access::Write)
                    .await
                    .unwrap();
                let c = store.open_for_writing("c", &info).await.unwrap();
                let stage_s = stage(&c, &mut space, &docs, n as u32, "first", 1, false).await;
                let t = Instant::now();
                let manifests = c.staged_run("first").await.unwrap();
                c.commit_staged("first", &manifests).await.unwrap();
                let commit_s = t.elapsed().as_secs_f64();
                assert_eq!(
                    c.table.count_rows(None).await.unwrap(),
                    docs.len() * PER_DOC
                );
                // 1% of the documents replaced by a second run.
                let changed: Vec<usize> = docs.iter().copied().filter(|d| d % 100 == 7).collect();
                stage(&c, &mut space, &changed, n as u32, "second", 2, true).await;
                let t = Instant::now();
                let manifests = c.staged_run("second").await.unwrap();
                c.commit_staged("second", &manifests).await.unwrap();
                let rerun_s = t.elapsed().as_secs_f64();
                assert_eq!(
                    c.table.count_rows(None).await.unwrap(),
                    docs.len() * PER_DOC
                );
                let t = Instant::now();
                if refresh {
                    c.refresh(&Default::default()).await.unwrap();
                }
                (stage_s, commit_s, rerun_s, t.elapsed().as_secs_f64())
            });
            let (files, bytes) = folder_stats(&db);
            println!(
                "| {chunks} | {n} | {stage_s:.1} | {commit_s:.2} | {files} | {:.0} | {rerun_s:.2} | {refresh_s:.1} |",
                bytes as f64 / 1e6
            );
        }
    }
    println!();
}

fn throughput() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let json = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpus/fr_admin_corpus/fiches-travail-data/fiches-travail.json");
    let fiches: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(json).expect("the fiches")).unwrap();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let n = 60;
    for (i, f) in fiches.iter().take(n).enumerate() {
        let text: String = f["sections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n\n");
        std::fs::write(
            dir.join(format!("src/fiche-{i:03}.md")),
            format!("# {}\n\n{text}\n", f["title"].as_str().unwrap_or("")),
        )
        .unwrap();
    }
    for name in ["one", "two"] {
        std::fs::write(
            dir.join(format!("{name}.toml")),
            format!("[collection]\nname = \"c\"\ndb = \"{name}\"\n\n[[sources]]\ntype = \"files\"\npath = \"src\"\n"),
        )
        .unwrap();
    }
    let moulin = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_moulin"))
            .current_dir(dir)
            .args(args)
            .arg("--quiet")
            .spawn()
            .unwrap()
    };
    let t = Instant::now();
    assert!(moulin(&["run", "one.toml"]).wait().unwrap().success());
    let one = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let shards: Vec<_> = (0..2)
        .map(|i| {
            moulin(&[
                "run",
                "two.toml",
                "--shard",
                &format!("{i}/2"),
                "--run-id",
                "r",
            ])
        })
        .collect();
    for mut s in shards {
        assert!(s.wait().unwrap().success());
    }
    let staged = t.elapsed().as_secs_f64();
    let t = Instant::now();
    assert!(
        moulin(&["commit", "r", "two.toml"])
            .wait()
            .unwrap()
            .success()
    );
    let commit = t.elapsed().as_secs_f64();
    println!(
        "## Per-shard throughput ({n} fiches, real model, {} cores)\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| run | time s | documents/s |");
    println!("|---|---|---|");
    println!("| one process | {one:.1} | {:.2} |", n as f64 / one);
    println!(
        "| 2 shards at once, each | {staged:.1} | {:.2} per shard |",
        n as f64 / 2.0 / staged
    );
    println!("| their commit (with index refresh) | {commit:.1} | |");
    println!(
        "| 2 shards + commit | {:.1} | {:.2} |",
        staged + commit,
        n as f64 / (staged + commit)
    );
}

fn main() {
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "commit,throughput".into());
    if parts.contains("commit") {
        commit_cost();
    }
    if parts.contains("throughput") {
        throughput();
    }
}
