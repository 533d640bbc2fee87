//! Collections that last, through the real binary on a real LanceDB with the
//! real model: stable identity, chunks and vectors kept across changes,
//! re-chunking from stored text, failures that lose nothing, one writer at a
//! time, runs killed by SIGKILL at random moments, rollback, dry runs, upkeep.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Switchable, chunk_rows, document_rows, moulin, read_report, run_in, write_fiches};
use serde_json::Value;

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `ingest ARGS… --report report.json` in `dir`; the report.
fn ingest(dir: &Path, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["ingest"];
    all.extend(args);
    all.extend(["--report", "report.json", "--quiet"]);
    let out = run_in(dir, &all);
    (code(&out), read_report(&dir.join("report.json")))
}

fn status_of<'a>(report: &'a Value, path_end: &str) -> &'a Value {
    report["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["path"].as_str().unwrap().ends_with(path_end))
        .unwrap_or_else(|| panic!("{path_end} in {report}"))
}

#[test]
fn identity_survives_a_move_and_names_keep_sources_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_fiches(&dir.join("a/fiches"), 4, 600);
    let (c, r) = ingest(dir, &["a/fiches", "-c", "c", "--db", "db"]);
    assert_eq!(c, Some(0));
    assert_eq!(r["totals"]["added"], 4);
    let before = chunk_rows(&dir.join("db"), "c");

    // The same folder, mounted elsewhere: the same documents, unchanged.
    fs::create_dir_all(dir.join("elsewhere")).unwrap();
    fs::rename(dir.join("a/fiches"), dir.join("elsewhere/fiches")).unwrap();
    let (c, r) = ingest(
        dir,
        &["elsewhere/fiches", "-c", "c", "--db", "db", "--prune"],
    );
    assert_eq!(c, Some(0));
    assert_eq!(r["totals"]["unchanged"], 4, "{}", r["totals"]);
    assert_eq!(r["totals"]["pruned"], 0);
    assert_eq!(chunk_rows(&dir.join("db"), "c"), before);

    // Two sources with the same relative paths: apart by their names.
    write_fiches(&dir.join("b/fiches"), 4, 600);
    fs::write(
        dir.join("two.toml"),
        "[collection]\nname = \"d\"\ndb = \"db\"\n\n[[sources]]\ntype = \"files\"\nname = \"x\"\npath = \"elsewhere/fiches\"\n\n[[sources]]\ntype = \"files\"\nname = \"y\"\npath = \"b/fiches\"\n",
    )
    .unwrap();
    let out = run_in(dir, &["run", "two.toml", "--quiet"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let docs = document_rows(&dir.join("db"), "d");
    assert_eq!(docs.len(), 8);
    assert!(docs.values().any(|d| d.source == "x/fiche-000.md"));
    assert!(docs.values().any(|d| d.source == "y/fiche-000.md"));

    // Without names, the two would be one: refused before any work.
    let out = run_in(
        dir,
        &[
            "ingest",
            "elsewhere/fiches",
            "b/fiches",
            "-c",
            "e",
            "--db",
            "db",
        ],
    );
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).contains("would both be fiches/fiche-000.md"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_changed_document_keeps_its_other_chunks_and_their_vectors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let files = write_fiches(&dir.join("docs"), 2, 3000);
    let args = [
        "docs",
        "-c",
        "c",
        "--db",
        "db",
        "--chunk-size",
        "400",
        "--overlap",
        "0",
    ];
    let (_, first) = ingest(dir, &args);
    let before = chunk_rows(&dir.join("db"), "c");
    let chunks_of = |rows: &[(String, String, String, String)], doc: &str| -> BTreeSet<String> {
        rows.iter()
            .filter(|r| r.1 == doc)
            .map(|r| r.0.clone())
            .collect()
    };
    let doc = before[0].1.clone();
    let doc = if chunks_of(&before, &doc).len() > 2 {
        doc
    } else {
        before.last().unwrap().1.clone()
    };
    assert!(
        chunks_of(&before, &doc).len() > 2,
        "a document of several chunks"
    );
    assert_eq!(first["totals"]["embedded"], first["totals"]["chunks"]);

    // A paragraph added at the end of one document.
    let file = files
        .iter()
        .find(|f| {
            document_rows(&dir.join("db"), "c")[&doc]
                .uri
                .ends_with(f.file_name().unwrap().to_str().unwrap())
        })
        .unwrap();
    let mut text = fs::read_to_string(file).unwrap();
    text.push_str("\nParagraphe ajouté à la fin de la fiche, pour voir.\n");
    fs::write(file, text).unwrap();
    let (c, r) = ingest(dir, &args);
    assert_eq!(c, Some(0));
    assert_eq!(r["totals"]["updated"], 1, "{}", r["totals"]);
    assert_eq!(r["totals"]["unchanged"], 1);
    let after = chunk_rows(&dir.join("db"), "c");
    let (old, new) = (chunks_of(&before, &doc), chunks_of(&after, &doc));
    let kept = old.intersection(&new).count();
    assert!(
        kept + 1 >= old.len(),
        "chunk ids kept: {kept} of {}",
        old.len()
    );
    let embedded = r["totals"]["embedded"].as_u64().unwrap() as usize;
    assert!(
        embedded <= new.len() - kept,
        "only new chunks embedded: {embedded}"
    );
    assert!(embedded >= 1);
    // Never a document doubled: one row per chunk id.
    let ids: BTreeSet<&String> = after.iter().map(|r| &r.0).collect();
    assert_eq!(ids.len(), after.len());
}

#[test]
fn new_settings_rechunk_from_the_stored_text_never_a_mix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_fiches(&dir.join("docs"), 3, 2000);
    let (_, first) = ingest(dir, &["docs", "-c", "c", "--db", "db"]);
    assert_eq!(first["totals"]["added"], 3);

    let (c, r) = ingest(
        dir,
        &[
            "docs",
            "-c",
            "c",
            "--db",
            "db",
            "--chunk-size",
            "300",
            "--overlap",
            "30",
        ],
    );
    assert_eq!(c, Some(0));
    assert_eq!(r["totals"]["rechunked"], 3, "{}", r["totals"]);
    for input in r["inputs"].as_array().unwrap() {
        assert_eq!(input["change"], "rechunked");
    }
    // Every chunk is from this run, under the new size: not a mix of two configurations.
    let rows = chunk_rows(&dir.join("db"), "c");
    let run = r["run_id"].as_str().unwrap();
    assert!(
        rows.iter().all(|row| row.3 == run),
        "a chunk of an earlier run is left"
    );
    assert!(rows.iter().all(|row| row.2.chars().count() <= 300 + 40));
    // The collection records the configuration now in force, and each run's.
    let out = run_in(
        dir,
        &["collections", "show", "-c", "c", "--db", "db", "--json"],
    );
    let show: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(show["config"]["chunker"]["size"], 300);
    let out = run_in(
        dir,
        &["collections", "runs", "-c", "c", "--db", "db", "--json"],
    );
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sizes: Vec<i64> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::from_str::<Value>(r["config"].as_str().unwrap()).unwrap()["chunker"]["size"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(sizes, [1500, 300]);
}

#[test]
fn failures_lose_nothing_and_transient_ones_are_tried_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = Switchable::start();
    let page = fs::read(common::fixtures().join("demo/fiche-demission.html")).unwrap();
    server.set(200, "text/html; charset=utf-8", page);
    let url = format!("{}/fiche", server.base);
    fs::copy(
        common::fixtures().join("demo/jorf-2023-06-21-decision.pdf"),
        dir.join("decision.pdf"),
    )
    .unwrap();
    fs::write(
        dir.join("p.toml"),
        format!(
            "[collection]\nname = \"c\"\ndb = \"db\"\nprune = true\n\n[[sources]]\ntype = \"urls\"\nurls = [\"{url}\"]\n\n[[sources]]\ntype = \"files\"\npath = \"decision.pdf\"\n\n[extract]\nretries = 2\nretry_delay_seconds = 0.05\n"
        ),
    )
    .unwrap();
    let run = || {
        let out = run_in(
            dir,
            &["run", "p.toml", "--report", "report.json", "--quiet"],
        );
        (code(&out), read_report(&dir.join("report.json")))
    };
    let (c, _) = run();
    assert_eq!(c, Some(0));
    let stored = chunk_rows(&dir.join("db"), "c");

    // A flaky night: the server answers 503. Tried three times, then the page keeps its chunks.
    server.set(503, "text/plain", b"indisponible".to_vec());
    let (c, r) = run();
    assert_eq!(c, Some(1));
    let page = status_of(&r, "/fiche");
    assert_eq!(page["status"], "failed");
    assert!(
        page["reason"]
            .as_str()
            .unwrap()
            .ends_with("(the version stored before is kept)"),
        "{page}"
    );
    assert_eq!(server.requests.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(chunk_rows(&dir.join("db"), "c"), stored);

    // Permanent failures too: a page gone, a PDF now corrupt.
    server.set(404, "text/plain", Vec::new());
    fs::write(
        dir.join("decision.pdf"),
        b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog",
    )
    .unwrap();
    let (c, r) = run();
    assert_eq!(c, Some(1));
    assert_eq!(
        server.requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "a 404 is not tried again"
    );
    assert_eq!(status_of(&r, "decision.pdf")["status"], "failed");
    assert_eq!(chunk_rows(&dir.join("db"), "c"), stored, "nothing lost");
}

fn spawn_ingest(dir: &Path, collection: &str, extra: &[&str]) -> Child {
    moulin()
        .current_dir(dir)
        .args(["ingest", "docs", "-c", collection, "--db", "db", "--quiet"])
        .args(extra)
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn one_writer_at_a_time_and_readers_never_wait() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_fiches(&dir.join("docs"), 60, 500);
    let first = spawn_ingest(dir, "c", &[]);
    let lock = dir.join("db/_moulin/c.lock");
    let started = Instant::now();
    while fs::read_to_string(&lock).map_or(true, |t| t.is_empty()) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first run never took the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second writer stops at once, naming the first.
    let out = run_in(dir, &["ingest", "docs", "-c", "c", "--db", "db"]);
    assert_eq!(code(&out), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("collection c is busy") && err.contains(&format!("process {}", first.id())),
        "{err}"
    );
    // Readers do not wait.
    let out = run_in(dir, &["collections", "list", "--db", "db"]);
    assert_eq!(code(&out), Some(0));
    // A third waits for the first, then finds nothing to do.
    let third = spawn_ingest(dir, "c", &["--wait", "--report", "third.json"]);
    let first = first.wait_with_output().unwrap();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let third = third.wait_with_output().unwrap();
    assert_eq!(
        third.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
    assert_eq!(
        read_report(&dir.join("third.json"))["totals"]["unchanged"],
        60
    );
    let rows = chunk_rows(&dir.join("db"), "c");
    let ids: BTreeSet<&String> = rows.iter().map(|r| &r.0).collect();
    assert_eq!(ids.len(), rows.len(), "no chunk twice");
    assert_eq!(document_rows(&dir.join("db"), "c").len(), 60);
}

/// What a reader may see at any moment: every recorded document has exactly its
/// chunks, no chunk twice. (Chunks of a document not yet recorded may exist
/// between a kill and the next run, which removes them if their source is gone.)
fn assert_consistent(db: &Path, collection: &str, context: &str) {
    if !db.join(format!("{collection}.lance")).exists() {
        return;
    }
    let rows = chunk_rows(db, collection);
    let ids: BTreeSet<&String> = rows.iter().map(|r| &r.0).collect();
    assert_eq!(ids.len(), rows.len(), "{context}: a chunk twice");
    let mut per_doc: HashMap<&str, u32> = HashMap::new();
    for r in &rows {
        *per_doc.entry(&r.1).or_default() += 1;
    }
    for (id, doc) in document_rows(db, collection) {
        assert_eq!(
            per_doc.get(id.as_str()).copied().unwrap_or(0),
            doc.chunks,
            "{context}: {} has not its chunks",
            doc.source
        );
    }
}

#[test]
fn killed_at_random_moments_it_reruns_to_one_clean_run() {
    const DOCS: usize = 100;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_fiches(&dir.join("docs"), DOCS, 400);
    let db = dir.join("db");

    // One clean run, timed: kills fall anywhere in what is left of a run.
    let started = Instant::now();
    let (c, clean) = ingest(dir, &["docs", "-c", "clean", "--db", "db"]);
    assert_eq!(c, Some(0));
    let length = started.elapsed();
    assert!(clean["totals"]["chunks"].as_u64().unwrap() >= DOCS as u64);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill moments from seed {seed} (a full run takes {length:?})");
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let stored = |db: &Path| {
        if db.join("_moulin/killed/documents.lance").exists() && db.join("killed.lance").exists() {
            document_rows(db, "killed").len()
        } else {
            0
        }
    };
    let (mut kills, mut attempts) = (0, 0);
    while kills < 20 {
        attempts += 1;
        assert!(
            attempts < 200,
            "the runs never live long enough to be killed"
        );
        // Somewhere in what is left: the start (listing, hashing, loading the model)
        // weighs the same whatever is left, the rest in proportion.
        let left = 1.0 - stored(&db) as f64 / DOCS as f64;
        let span = Duration::from_millis(500) + length.mul_f64(left.max(0.05));
        let at = Duration::from_millis(next() % span.as_millis() as u64);
        let mut child = spawn_ingest(dir, "killed", &[]);
        let started = Instant::now();
        while started.elapsed() < at && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(status) = child.try_wait().unwrap() {
            // The run ended before its moment: start over from an empty collection.
            let mut err = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                std::io::Read::read_to_string(&mut pipe, &mut err).unwrap();
            }
            assert!(status.success(), "a resumed run failed: {status}\n{err}");
            let out = run_in(
                dir,
                &["collections", "delete", "-c", "killed", "--db", "db"],
            );
            assert_eq!(code(&out), Some(0), "{}", stderr(&out));
            continue;
        }
        // SIGKILL: no handler runs, nothing is flushed.
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        eprintln!("kill {kills} at {at:?}: {} documents stored", stored(&db));
        assert_consistent(&db, "killed", &format!("after kill {kills} at {at:?}"));
    }

    // The rerun finishes the work without redoing what was committed.
    let stored_before = stored(&db);
    let (c, last) = ingest(dir, &["docs", "-c", "killed", "--db", "db"]);
    assert_eq!(c, Some(0));
    assert_eq!(
        last["totals"]["ingested"].as_u64().unwrap() as usize,
        DOCS - stored_before,
        "documents committed before the kills are not redone"
    );
    assert_consistent(&db, "killed", "after the rerun");

    // Exactly what one clean run left.
    let strip = |rows: Vec<(String, String, String, String)>| -> Vec<(String, String, String)> {
        rows.into_iter()
            .map(|(id, doc, text, _)| (id, doc, text))
            .collect()
    };
    assert_eq!(
        strip(chunk_rows(&db, "killed")),
        strip(chunk_rows(&db, "clean"))
    );
    let docs = |name: &str| -> Vec<(String, String, String, u32)> {
        document_rows(&db, name)
            .into_values()
            .map(|d| (d.document_id, d.content_hash, d.sections, d.chunks))
            .collect()
    };
    assert_eq!(docs("killed"), docs("clean"));
    // Every interrupted run is marked as such.
    let out = run_in(
        dir,
        &[
            "collections",
            "runs",
            "-c",
            "killed",
            "--db",
            "db",
            "--json",
        ],
    );
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] != "running")
    );
}

#[test]
fn rollback_brings_a_run_back_and_can_itself_be_undone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let files = write_fiches(&dir.join("docs"), 4, 800);
    let db = dir.join("db");
    let (_, first) = ingest(dir, &["docs", "-c", "c", "--db", "db"]);
    let state1 = chunk_rows(&db, "c");
    fs::remove_file(&files[0]).unwrap();
    fs::write(&files[1], "# Changée\n\nUne fiche entièrement réécrite.\n").unwrap();
    let (_, second) = ingest(dir, &["docs", "-c", "c", "--db", "db", "--prune"]);
    assert_eq!(second["totals"]["pruned"], 1);
    let state2 = chunk_rows(&db, "c");
    assert_ne!(state1, state2);

    let run1 = first["run_id"].as_str().unwrap();
    let out = run_in(
        dir,
        &["collections", "rollback", "-c", "c", "--db", "db", run1],
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(chunk_rows(&db, "c"), state1);
    assert_eq!(document_rows(&db, "c").len(), 4);

    // The rollback is a run of its own: going back to the second run undoes it.
    let run2 = second["run_id"].as_str().unwrap();
    let out = run_in(
        dir,
        &["collections", "rollback", "-c", "c", "--db", "db", run2],
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(chunk_rows(&db, "c"), state2);
    let out = run_in(
        dir,
        &["collections", "runs", "-c", "c", "--db", "db", "--json"],
    );
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["ingest", "ingest", "rollback", "rollback"]);

    // An unknown run is said plainly.
    let out = run_in(
        dir,
        &["collections", "rollback", "-c", "c", "--db", "db", "nope"],
    );
    assert_eq!(code(&out), Some(2));
    assert!(stderr(&out).contains("no run nope"), "{}", stderr(&out));
}

#[test]
fn a_dry_run_says_what_would_change_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let files = write_fiches(&dir.join("docs"), 4, 800);
    ingest(dir, &["docs", "-c", "c", "--db", "db"]);
    let before = fs::read_dir(dir.join("db/c.lance/_versions"))
        .unwrap()
        .count();
    fs::remove_file(&files[0]).unwrap();
    fs::write(&files[1], "# Changée\n\nRéécrite.\n").unwrap();
    write_fiches(&dir.join("new"), 5, 300);
    fs::rename(dir.join("new/fiche-004.md"), dir.join("docs/fiche-new.md")).unwrap();
    let out = run_in(
        dir,
        &[
            "ingest",
            "docs",
            "-c",
            "c",
            "--db",
            "db",
            "--prune",
            "--dry-run",
        ],
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("c (dry run, nothing written): 1 to add, 1 to update, 0 to re-chunk, 2 unchanged, 1 to delete"),
        "{text}"
    );
    assert!(text.contains("  add       docs/fiche-new.md"), "{text}");
    assert!(text.contains("  delete    docs/fiche-000.md"), "{text}");
    assert_eq!(
        fs::read_dir(dir.join("db/c.lance/_versions"))
            .unwrap()
            .count(),
        before
    );
    assert!(!stderr(&out).contains("loading"), "no model loaded");
}

#[test]
fn an_older_collection_is_refused_with_how_to_start_over() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // A collection as moulin wrote them before it kept documents.
        let db = lancedb::connect(dir.join("db").to_str().unwrap())
            .execute()
            .await
            .unwrap();
        let mut meta = std::collections::HashMap::new();
        for (k, v) in [
            ("model", "multilingual-e5-small"),
            ("dimension", "384"),
            ("model_hash", ""),
        ] {
            meta.insert(format!("moulin.{k}"), v.to_string());
        }
        let schema = moulin::store::chunk_schema(384).with_metadata(meta);
        db.create_empty_table("old", std::sync::Arc::new(schema))
            .execute()
            .await
            .unwrap();
    });
    write_fiches(&dir.join("docs"), 1, 300);
    let out = run_in(dir, &["ingest", "docs", "-c", "old", "--db", "db"]);
    assert_eq!(code(&out), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("earlier moulin that kept no documents")
            && err.contains("moulin collections delete -c old"),
        "{err}"
    );
    // It can still be read.
    let out = run_in(dir, &["collections", "show", "-c", "old", "--db", "db"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
}

#[test]
fn upkeep_keeps_the_versions_of_the_last_runs_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let files = write_fiches(&dir.join("docs"), 3, 400);
    fs::write(
        dir.join("p.toml"),
        "[collection]\nname = \"c\"\ndb = \"db\"\n\n[[sources]]\ntype = \"files\"\npath = \"docs\"\n\n[upkeep]\nkeep_runs = 2\nkeep_days = 0\n",
    )
    .unwrap();
    let mut run_ids = Vec::new();
    let mut versions = Vec::new();
    for i in 0..6 {
        fs::write(
            &files[i % 3],
            format!("# Fiche {i}\n\nVersion numéro {i} de cette fiche.\n"),
        )
        .unwrap();
        let out = run_in(
            dir,
            &["run", "p.toml", "--report", "report.json", "--quiet"],
        );
        assert_eq!(code(&out), Some(0), "{}", stderr(&out));
        run_ids.push(
            read_report(&dir.join("report.json"))["run_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        versions.push(
            fs::read_dir(dir.join("db/c.lance/_versions"))
                .unwrap()
                .count(),
        );
    }
    // Bounded: the last runs' versions and the current one, not one per commit ever made.
    assert!(
        versions[5] <= versions[2] + 1,
        "versions on disk run after run: {versions:?}"
    );
    // The last two runs can be gone back to; the first was pruned.
    let out = run_in(
        dir,
        &[
            "collections",
            "rollback",
            "-c",
            "c",
            "--db",
            "db",
            &run_ids[4],
        ],
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let out = run_in(
        dir,
        &[
            "collections",
            "rollback",
            "-c",
            "c",
            "--db",
            "db",
            &run_ids[0],
        ],
    );
    assert_eq!(code(&out), Some(2));
    assert!(stderr(&out).contains("pruned"), "{}", stderr(&out));
}

/// The default model's graph with a tokenizer file one byte longer: another
/// model as far as hashes go (so another collection's vectors), the same maths.
fn another_model(dir: &Path) -> std::path::PathBuf {
    let default = moulin::paths::model_dir(moulin::embed::DEFAULT_MODEL);
    let other = dir.join("other-model");
    fs::create_dir_all(&other).unwrap();
    std::os::unix::fs::symlink(default.join("model.onnx"), other.join("model.onnx")).unwrap();
    let mut tok = fs::read_to_string(default.join("tokenizer.json")).unwrap();
    tok.push('\n');
    fs::write(other.join("tokenizer.json"), tok).unwrap();
    for f in [
        "moulin-model.toml",
        "config.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        if default.join(f).exists() {
            fs::copy(default.join(f), other.join(f)).unwrap();
        }
    }
    other
}

#[test]
fn reindex_works_from_the_stored_documents_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_fiches(&dir.join("docs"), 4, 2000);
    let (_, first) = ingest(dir, &["docs", "-c", "c", "--db", "db"]);
    assert_eq!(first["totals"]["added"], 4);
    // No source is read: they are gone.
    fs::remove_dir_all(dir.join("docs")).unwrap();
    let db = dir.join("db");

    let reindex = |args: &[&str]| {
        let mut all = vec![
            "reindex", "-c", "c", "--db", "db", "--quiet", "--report", "r.json",
        ];
        all.extend(args);
        let out = run_in(dir, &all);
        let report = fs::read_to_string(dir.join("r.json"))
            .ok()
            .map(|t| serde_json::from_str::<Value>(&t).unwrap());
        let _ = fs::remove_file(dir.join("r.json"));
        (out, report)
    };
    let (out, r) = reindex(&["--chunk-size", "300", "--overlap", "30"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let r = r.unwrap();
    assert_eq!(r["totals"]["rechunked"], 4, "{}", r["totals"]);
    let rows = chunk_rows(&db, "c");
    assert!(
        rows.iter()
            .all(|row| row.3 == r["run_id"].as_str().unwrap())
    );
    assert!(rows.iter().all(|row| row.2.chars().count() <= 340));
    // Done is done: the same settings again change nothing (a killed reindex resumes like this).
    let (out, r) = reindex(&["--chunk-size", "300", "--overlap", "30"]);
    assert_eq!(code(&out), Some(0));
    assert_eq!(r.unwrap()["totals"]["unchanged"], 4);

    // Another model: never in place by surprise.
    let other = another_model(dir);
    let other = other.to_str().unwrap();
    let (out, _) = reindex(&["--embedding-model", other]);
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).contains("--into NAME, or replace the model in place with --replace-model"),
        "{}",
        stderr(&out)
    );
    // Into a new collection: the same chunks, embedded by the other model; the first untouched.
    let (out, _) = reindex(&["--embedding-model", other, "--into", "c2"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let ids =
        |name: &str| -> Vec<String> { chunk_rows(&db, name).into_iter().map(|r| r.0).collect() };
    assert_eq!(ids("c2"), ids("c"));
    let show = |name: &str| -> Value {
        let out = run_in(
            dir,
            &["collections", "show", "-c", name, "--db", "db", "--json"],
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (old_hash, new_hash) = (
        show("c")["model"]["hash"].clone(),
        show("c2")["model"]["hash"].clone(),
    );
    assert_ne!(old_hash, new_hash);

    // In place, when asked: a new version of the tables, which a rollback undoes.
    let before = run_in(
        dir,
        &["collections", "runs", "-c", "c", "--db", "db", "--json"],
    );
    let before: Value = serde_json::from_slice(&before.stdout).unwrap();
    let last = before.as_array().unwrap().last().unwrap()["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (out, _) = reindex(&["--embedding-model", other, "--replace-model"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(show("c")["model"]["hash"], new_hash);
    assert_eq!(ids("c"), ids("c2"));
    let out = run_in(dir, &["collections", "list", "--db", "db"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("c.reindex"),
        "the scratch collection is gone"
    );
    let out = run_in(
        dir,
        &["collections", "rollback", "-c", "c", "--db", "db", &last],
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(show("c")["model"]["hash"], old_hash);
}
