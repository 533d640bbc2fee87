//! Retrieval as a service and evaluation sets, end to end: the real binary, a
//! real LanceDB on disk, the real embedding model, real QA data (PIAF, from
//! `../shared/corpus`).

mod common;

use std::fs;
use std::path::Path;

use common::{corpus, run_in};
use serde_json::Value;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The first `articles` articles of PIAF, as a SQuAD-format file in `dir`.
fn piaf_sample(dir: &Path, articles: usize) -> (usize, usize) {
    let file: Value = serde_json::from_str(
        &fs::read_to_string(corpus().join("qa_fr/piaf/piaf-v1.1.json")).unwrap(),
    )
    .unwrap();
    let data: Vec<Value> = file["data"].as_array().unwrap()[..articles].to_vec();
    let contexts = data
        .iter()
        .map(|a| a["paragraphs"].as_array().unwrap().len())
        .sum();
    let questions = data
        .iter()
        .flat_map(|a| a["paragraphs"].as_array().unwrap())
        .map(|p| p["qas"].as_array().unwrap().len())
        .sum();
    let sample = serde_json::json!({ "version": "1.1", "data": data });
    fs::write(dir.join("piaf-sample.json"), sample.to_string()).unwrap();
    (contexts, questions)
}

/// Open a page in headless Chromium: the DOM once its scripts ran, and the console.
fn open_in_chromium(page: &Path) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium (Debian package; scripts/test.sh installs it)");
    assert!(out.status.success(), "{}", stderr(&out));
    let console = stderr(&out)
        .lines()
        .filter(|l| l.contains("CONSOLE"))
        .collect::<Vec<_>>()
        .join("\n");
    (stdout(&out), console)
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn a_squad_file_becomes_a_collection_and_an_evaluation_set_that_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (contexts, questions) = piaf_sample(dir, 8);
    let import = [
        "eval",
        "import-squad",
        "piaf-sample.json",
        "-c",
        "piaf",
        "--db",
        "db",
        "--name",
        "piaf",
        "--report",
        "import.json",
    ];
    let out = run_in(dir, &import);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!(
        "{questions} questions written to piaf-sample.eval.jsonl, {contexts} contexts"
    )));
    let report = common::read_report(&dir.join("import.json"));
    assert_eq!(report["totals"]["ingested"], contexts as u64);
    let set = lines(&fs::read_to_string(dir.join("piaf-sample.eval.jsonl")).unwrap());
    assert_eq!(set.len(), questions);
    let source = set[0]["relevant_sources"][0].as_str().unwrap();
    assert!(source.starts_with("piaf/0001-"), "{source}");

    // Importing again changes nothing.
    let out = run_in(dir, &import);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let again = common::read_report(&dir.join("import.json"));
    assert_eq!(again["totals"]["unchanged"], contexts as u64);

    let evaluate = |mode: &str| {
        let out = run_in(
            dir,
            &[
                "eval",
                "run",
                "piaf-sample.eval.jsonl",
                "-c",
                "piaf",
                "--db",
                "db",
                "--retrieval-only",
                "--mode",
                mode,
                "--output",
                &format!("{mode}.results.jsonl"),
                "--report",
                &format!("{mode}.json"),
                "--markdown",
                &format!("{mode}.md"),
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains("| k | hit | recall | precision | nDCG |"));
        let report = common::read_report(&dir.join(format!("{mode}.json")));
        let results =
            lines(&fs::read_to_string(dir.join(format!("{mode}.results.jsonl"))).unwrap());
        (report, results)
    };
    for mode in ["hybrid", "semantic", "lexical"] {
        let (report, results) = evaluate(mode);
        let scores = &report["scores"];
        assert_eq!(scores["items"], questions as u64);
        assert_eq!(
            scores["scored"], questions as u64,
            "every question is judged"
        );
        assert_eq!(scores["failed"], 0);
        assert_eq!(results.len(), questions);
        // Each item's scores agree with the passages it lists as retrieved.
        for r in &results {
            let retrieved = r["retrieved"].as_array().unwrap();
            // Lexical search finds only passages sharing a word with the question.
            if mode == "lexical" {
                assert!(retrieved.len() <= 10, "{r}");
            } else {
                assert_eq!(retrieved.len(), 10, "{r}");
            }
            let first = retrieved.iter().position(|h| h["relevant"] == true);
            let mrr = r["retrieval"]["mrr"].as_f64().unwrap();
            assert_eq!(mrr, first.map_or(0.0, |i| 1.0 / (i + 1) as f64), "{r}");
            let hit1 = r["retrieval"]["at"][0]["hit"].as_f64().unwrap();
            assert_eq!(hit1 == 1.0, first == Some(0), "{r}");
        }
        // Real questions on 8 articles' contexts: the right one is usually found.
        let hit10 = scores["at"][3]["hit"].as_f64().unwrap();
        let hit1 = scores["at"][0]["hit"].as_f64().unwrap();
        assert!(hit10 >= 0.7, "{mode}: hit@10 {hit10}");
        assert!(hit1 <= hit10 && hit1 > 0.2, "{mode}: hit@1 {hit1}");
        let md = fs::read_to_string(dir.join(format!("{mode}.md"))).unwrap();
        assert!(
            md.contains(&format!(
                "{questions} items: {questions} scored, 0 unjudged, 0 failed"
            )),
            "{md}"
        );
    }

    // The HTML report renders in a real browser, charts and items in the page,
    // no console error; and two runs compare.
    let out = run_in(
        dir,
        &[
            "eval",
            "run",
            "piaf-sample.eval.jsonl",
            "-c",
            "piaf",
            "--db",
            "db",
            "--retrieval-only",
            "--mode",
            "lexical",
            "--html",
            "report.html",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (dom, console) = open_in_chromium(&dir.join("report.html"));
    assert!(!console.contains("Uncaught"), "console errors: {console}");
    assert_eq!(
        dom.matches("<svg").count(),
        2,
        "metrics by k, score distribution"
    );
    assert!(dom.matches("<rect class=\"bar\"").count() >= 16 + 10);
    assert_eq!(
        dom.matches("<details>").count(),
        questions,
        "one expandable row per item"
    );
    let compare = run_in(
        dir,
        &[
            "eval",
            "compare",
            "hybrid.json",
            "lexical.json",
            "--threshold",
            "1",
        ],
    );
    assert_eq!(compare.status.code(), Some(0), "{}", stderr(&compare));
    assert!(stdout(&compare).contains("| mrr |"), "{}", stdout(&compare));
    let (h, l) = (
        common::read_report(&dir.join("hybrid.json"))["scores"]["mrr"]
            .as_f64()
            .unwrap(),
        common::read_report(&dir.join("lexical.json"))["scores"]["mrr"]
            .as_f64()
            .unwrap(),
    );
    let strict = run_in(
        dir,
        &[
            "eval",
            "compare",
            "hybrid.json",
            "lexical.json",
            "--threshold",
            "0",
            "--json",
        ],
    );
    // Exit 1 exactly when a metric is worse in the second run.
    let c: Value = serde_json::from_str(&stdout(&strict)).unwrap();
    let worse = c["regressions"].as_u64().unwrap();
    assert_eq!(strict.status.code(), Some(if worse > 0 { 1 } else { 0 }));
    if l < h {
        assert!(worse > 0);
    }

    // A set with lines that are not questions: each said, the others scored, exit 1.
    fs::write(
        dir.join("mixed.jsonl"),
        format!(
            "{}\n{{\"reference\": \"sans question\"}}\nnot json\n{{\"user_input\": \"Une question sans jugement\"}}\n",
            set[0]
        ),
    )
    .unwrap();
    let out = run_in(
        dir,
        &[
            "eval",
            "run",
            "mixed.jsonl",
            "-c",
            "piaf",
            "--db",
            "db",
            "--retrieval-only",
            "--mode",
            "lexical",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("mixed.jsonl: line 2: no query or question"),
        "{err}"
    );
    assert!(err.contains("mixed.jsonl: line 3: not JSON"), "{err}");
    let report: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["unreadable_lines"], 2);
    assert_eq!(report["scores"]["scored"], 1);
    assert_eq!(report["scores"]["unjudged"], 1);

    // Settings are checked before any model loads: every problem at once.
    let out = run_in(
        dir,
        &[
            "eval",
            "run",
            "missing.jsonl",
            "-c",
            "piaf",
            "--db",
            "db",
            "-k",
            "0",
            "--max-new-tokens",
            "0",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for said in ["cannot read missing.jsonl", "--max-new-tokens", "--top-k"] {
        assert!(err.contains(said), "{said} missing from: {err}");
    }
}

#[test]
fn search_answers_many_queries_with_one_model_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let docs = dir.join("docs");
    fs::create_dir(&docs).unwrap();
    for f in [
        "fiche-periode-essai.html",
        "fiche-demission.html",
        "fiche-cdd.html",
    ] {
        fs::copy(common::fixtures().join("demo").join(f), docs.join(f)).unwrap();
    }
    let out = run_in(dir, &["ingest", "docs", "-c", "demo", "--db", "db"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let questions = [
        "Combien de temps dure la période d'essai ?",
        "Quel préavis pour une démission ?",
        "Quand un CDD peut-il être renouvelé ?",
    ];
    let single = |q: &str| -> Vec<String> {
        let out = run_in(
            dir,
            &["search", q, "-c", "demo", "--db", "db", "--json", "-n", "3"],
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let hits: Value = serde_json::from_str(&stdout(&out)).unwrap();
        hits.as_array()
            .unwrap()
            .iter()
            .map(|h| h["chunk_id"].as_str().unwrap().to_string())
            .collect()
    };
    let alone: Vec<Vec<String>> = questions.iter().map(|q| single(q)).collect();

    let mut args = vec!["search"];
    args.extend(questions);
    args.extend(["-c", "demo", "--db", "db", "--json", "-n", "3"]);
    let out = run_in(dir, &args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let answers = lines(&stdout(&out));
    assert_eq!(answers.len(), 3);
    for ((answer, q), ids) in answers.iter().zip(questions).zip(&alone) {
        assert_eq!(answer["query"], q);
        let got: Vec<&str> = answer["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["chunk_id"].as_str().unwrap())
            .collect();
        assert_eq!(&got, ids, "the same hits together as alone");
        let bytes = &answer["hits"][0]["bytes"];
        assert!(
            bytes[0].as_u64().unwrap() < bytes[1].as_u64().unwrap(),
            "{answer}"
        );
    }
    assert!(
        answers[0]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["source"] == "docs/fiche-periode-essai.html"),
        "{}",
        answers[0]
    );

    // From a file: ids kept, a bad line said and counted, the others answered.
    fs::write(
        dir.join("q.jsonl"),
        "{\"id\": \"a\", \"question\": \"période d'essai\"}\n{\"text\": \"no question\"}\n\"démission\"\n",
    )
    .unwrap();
    let out = run_in(
        dir,
        &[
            "search",
            "--queries",
            "q.jsonl",
            "-c",
            "demo",
            "--db",
            "db",
            "--json",
            "--mode",
            "lexical",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("q.jsonl: line 2: no query or question or user_input field"));
    let answers = lines(&stdout(&out));
    let ids: Vec<&str> = answers.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "3"]);
    assert!(
        answers
            .iter()
            .all(|a| !a["hits"].as_array().unwrap().is_empty())
    );

    // Text output names each query.
    let out = run_in(
        dir,
        &[
            "search",
            "période d'essai",
            "démission",
            "-c",
            "demo",
            "--db",
            "db",
            "-n",
            "1",
        ],
    );
    let text = stdout(&out);
    assert!(
        text.contains("query 1: période d'essai") && text.contains("query 2: démission"),
        "{text}"
    );
}
