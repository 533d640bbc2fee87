//! End to end: the real binary ingests real files into a LanceDB on disk with the
//! real embedding model, then finds passages by French queries.

mod common;

use std::fs;

use common::{fixtures, run, serve};
use serde_json::Value;

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn report(path: &std::path::Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).expect("a report")).expect("JSON report")
}

#[test]
fn demo_corpus_is_searchable_in_french_and_reruns_are_incremental() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let db = db.to_str().unwrap();
    let docs = tmp.path().join("docs");
    fs::create_dir(&docs).unwrap();
    for f in [
        "fiche-periode-essai.html",
        "jorf-2023-06-21-decision.pdf",
        "crpa-questions.xlsx",
    ] {
        fs::copy(fixtures().join("demo").join(f), docs.join(f)).unwrap();
    }
    // A broken PDF among good files: reported, not fatal.
    fs::write(
        docs.join("tronque.pdf"),
        b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog",
    )
    .unwrap();
    let report_path = tmp.path().join("report.json");
    let out = run(&[
        "ingest",
        docs.to_str().unwrap(),
        "--collection",
        "demo",
        "--db",
        db,
        "--report",
        report_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "one input failed: exit code 1");
    let r = report(&report_path);
    assert_eq!(r["totals"]["ingested"], 3);
    assert_eq!(r["totals"]["failed"], 1);
    let failed = r["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["status"] == "failed")
        .unwrap();
    assert!(failed["path"].as_str().unwrap().ends_with("tronque.pdf"));
    assert!(
        failed["reason"].as_str().unwrap().contains("PDF"),
        "{failed}"
    );
    let pdf = r["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["path"].as_str().unwrap().ends_with(".pdf") && i["status"] == "ingested")
        .unwrap();
    assert!(pdf["pages"].as_u64().unwrap() >= 1 && pdf["chunks"].as_u64().unwrap() >= 1);
    for stage in ["extract", "chunk", "embed", "write", "total"] {
        assert!(r["seconds"][stage].is_number(), "seconds.{stage}");
    }

    // Semantic search in French finds the trial-period passage, with its provenance.
    let out = run(&[
        "search",
        "-c",
        "demo",
        "Combien de temps dure la période d'essai d'un cadre ?",
        "--db",
        db,
        "--mode",
        "semantic",
        "--json",
    ]);
    assert!(out.status.success());
    let hits = json(&out);
    let top = &hits[0];
    assert!(
        top["source"]
            .as_str()
            .unwrap()
            .ends_with("fiche-periode-essai.html"),
        "{top}"
    );
    assert!(
        top["text"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("essai")
    );
    for key in ["text", "score", "source", "page", "chunk_id"] {
        assert!(top.get(key).is_some(), "hit has {key}: {top}");
    }

    // Lexical and hybrid search work, and filters apply.
    let out = run(&[
        "search",
        "-c",
        "demo",
        "période d'essai",
        "--db",
        db,
        "--mode",
        "lexical",
        "--json",
    ]);
    assert!(out.status.success());
    assert!(!json(&out).as_array().unwrap().is_empty());
    let out = run(&[
        "search",
        "-c",
        "demo",
        "décision du Journal officiel",
        "--db",
        db,
        "--format",
        "pdf",
        "--json",
    ]);
    let hits = json(&out);
    assert!(!hits.as_array().unwrap().is_empty());
    assert!(
        hits.as_array()
            .unwrap()
            .iter()
            .all(|h| h["source"].as_str().unwrap().ends_with(".pdf"))
    );
    assert!(
        hits[0]["page"].as_u64().is_some(),
        "PDF hits carry their page"
    );

    // Spreadsheet hits carry their sheet and rows.
    let out = run(&[
        "search", "-c", "demo", "question", "--db", db, "--format", "xlsx", "--json", "--mode",
        "lexical",
    ]);
    let hits = json(&out);
    let h = hits
        .as_array()
        .unwrap()
        .first()
        .expect("the workbook matches");
    assert!(h["sheet"].is_string() && h["rows"].is_array(), "{h}");

    // A second run changes nothing: every good input is unchanged.
    fs::remove_file(docs.join("tronque.pdf")).unwrap();
    let out = run(&[
        "ingest",
        docs.to_str().unwrap(),
        "--collection",
        "demo",
        "--db",
        db,
        "--report",
        report_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    let r = report(&report_path);
    assert_eq!(r["totals"]["unchanged"], 3, "{}", r["totals"]);
    assert_eq!(r["totals"]["ingested"], 0);

    // A changed file is ingested again; its old chunks are replaced, not duplicated.
    let out = run(&["collections", "show", "-c", "demo", "--db", db, "--json"]);
    let before = json(&out)["chunks"].as_u64().unwrap();
    let page = fs::read_to_string(docs.join("fiche-periode-essai.html")).unwrap();
    fs::write(
        docs.join("fiche-periode-essai.html"),
        page.replace("</main>", "<p>Paragraphe ajouté.</p></main>"),
    )
    .unwrap();
    let out = run(&[
        "ingest",
        docs.to_str().unwrap(),
        "--collection",
        "demo",
        "--db",
        db,
        "--report",
        report_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(report(&report_path)["totals"]["ingested"], 1);
    let out = run(&["collections", "show", "-c", "demo", "--db", db, "--json"]);
    let info = &json(&out);
    let after = info["chunks"].as_u64().unwrap();
    assert!(after.abs_diff(before) <= 1, "{before} → {after}");
    assert_eq!(info["documents"], 3);
    assert_eq!(info["model"]["name"], "multilingual-e5-small");
    assert_eq!(info["model"]["dimension"], 384);
    assert_eq!(
        info["config"]["collection"]["name"], "demo",
        "the configuration is a JSON object, not a string"
    );
}

#[test]
fn web_pages_are_fetched_from_a_local_server() {
    let page = fs::read(fixtures().join("demo/fiche-demission.html")).unwrap();
    let base = serve(vec![
        ("/page", 200, "text/html; charset=utf-8", page),
        (
            "/vide",
            200,
            "text/html",
            b"<html><body><nav>menu</nav></body></html>".to_vec(),
        ),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let report_path = tmp.path().join("report.json");
    let urls = [
        format!("{base}/page"),
        format!("{base}/redirect/2"),
        format!("{base}/redirect/9"),
        format!("{base}/absente"),
        format!("{base}/vide"),
    ];
    let mut args = vec!["ingest"];
    args.extend(urls.iter().map(String::as_str));
    args.extend([
        "--collection",
        "web",
        "--db",
        db.to_str().unwrap(),
        "--report",
        report_path.to_str().unwrap(),
    ]);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(1));
    let r = report(&report_path);
    let status = |url: &str| {
        r["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["path"] == url)
            .unwrap_or_else(|| panic!("{url} in {r}"))
            .clone()
    };
    assert_eq!(status(&urls[0])["status"], "ingested");
    assert_eq!(
        status(&urls[1])["status"],
        "ingested",
        "two redirects are followed"
    );
    let too_many = status(&urls[2]);
    assert_eq!(too_many["status"], "failed");
    assert!(
        too_many["reason"].as_str().unwrap().contains("redirect"),
        "{too_many}"
    );
    assert!(status(&urls[3])["reason"].as_str().unwrap().contains("404"));
    assert!(
        status(&urls[4])["reason"]
            .as_str()
            .unwrap()
            .contains("no text")
    );

    let out = run(&[
        "search",
        "-c",
        "web",
        "préavis de démission",
        "--db",
        db.to_str().unwrap(),
        "--json",
        "--limit",
        "1",
    ]);
    let hits = json(&out);
    assert!(hits[0]["source"].as_str().unwrap().starts_with(&base));
}

#[test]
fn extract_prints_text_and_json_with_provenance() {
    let pdf = fixtures().join("demo/jorf-2023-06-21-decision.pdf");
    let out = run(&["extract", pdf.to_str().unwrap(), "--json"]);
    assert!(out.status.success());
    let doc = json(&out);
    assert_eq!(doc["format"], "pdf");
    assert!(doc["sections"][0]["page"].as_u64() == Some(1));
    let out = run(&[
        "extract",
        fixtures()
            .join("demo/crpa-questions.xlsx")
            .to_str()
            .unwrap(),
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("## "), "{text}");
    assert!(text.contains("|---|"));
}

#[test]
fn pipeline_files_validate_with_every_problem_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.toml");
    fs::write(&bad, "[collection]\nname = 'x'\nextra = 1\n[[sources]]\ntype = 'files'\npath = '/nope'\n[chunker]\ntype = 'markdown'\nsize = 10\noverlap = 20\n").unwrap();
    let out = run(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("collection"), "{text}");
    let demo = fixtures().join("../pipelines/demo.toml");
    let out = run(&["validate", demo.to_str().unwrap()]);
    assert!(out.status.success());
}

#[test]
fn a_collection_refuses_another_model() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let db = db.to_str().unwrap();
    let doc = fixtures().join("demo/fiche-jours-feries.html");
    let out = run(&[
        "ingest",
        doc.to_str().unwrap(),
        "--collection",
        "c",
        "--db",
        db,
    ]);
    assert!(out.status.success());
    // The same ONNX graph with another tokenizer is another model.
    let default = moulin::paths::model_dir(moulin::embed::DEFAULT_MODEL);
    let other = tmp.path().join("other-model");
    fs::create_dir(&other).unwrap();
    std::os::unix::fs::symlink(default.join("model.onnx"), other.join("model.onnx")).unwrap();
    let mut tok = fs::read_to_string(default.join("tokenizer.json")).unwrap();
    tok.push('\n');
    fs::write(other.join("tokenizer.json"), tok).unwrap();
    let out = run(&[
        "ingest",
        doc.to_str().unwrap(),
        "--collection",
        "c",
        "--db",
        db,
        "--embedding-model",
        other.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("collection c") && err.contains("embedded with"),
        "{err}"
    );
}
