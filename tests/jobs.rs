//! Batch jobs end to end: a real collection of French documents, the real
//! embedding model and the real small language model (SmolLM2 on the CPU):
//! answers with citations, summaries (map-reduce for long documents), an
//! evaluation, resumed runs, a SIGKILL, usage figures and reports.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{fixtures, moulin, run_in};
use serde_json::Value;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// A collection of five demo fiches and the note with an injected instruction,
/// cut in small chunks: prompts stay short, and this CPU fast enough for tests.
fn collection(dir: &Path) {
    // The folder's name is the source's: `demo/…`, as the questions' relevant sources say.
    let docs = dir.join("demo");
    fs::create_dir(&docs).unwrap();
    for f in [
        "fiche-periode-essai.html",
        "fiche-jours-feries.html",
        "fiche-cdd.html",
        "fiche-demission.html",
        "fiche-travail-saisonnier.html",
    ] {
        fs::copy(fixtures().join("demo").join(f), docs.join(f)).unwrap();
    }
    fs::copy(
        fixtures().join("jobs/note-conges-injection.md"),
        docs.join("note-conges-injection.md"),
    )
    .unwrap();
    let out = run_in(
        dir,
        &[
            "ingest",
            "demo",
            "-c",
            "demo",
            "--db",
            "db",
            "--chunk-size",
            "500",
            "--overlap",
            "50",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/demo-questions.jsonl"),
        dir.join("questions.jsonl"),
    )
    .unwrap();
}

fn check_usage(usage: &Value, done: u64) {
    assert_eq!(usage["done"], done, "{usage}");
    if done > 0 {
        assert!(usage["prompt_tokens"].as_u64().unwrap() > 0, "{usage}");
        assert!(usage["generated_tokens"].as_u64().unwrap() > 0, "{usage}");
        assert!(
            usage["tokens_per_second"].as_f64().unwrap() > 0.0,
            "{usage}"
        );
        assert!(
            usage["seconds"]["generate"].as_f64().unwrap() > 0.0,
            "{usage}"
        );
    }
    let energy = &usage["energy"];
    assert!(energy["wh"].as_f64().unwrap() > 0.0, "{usage}");
    assert!(energy["grams_co2e"].as_f64().unwrap() > 0.0, "{usage}");
    assert!(["rapl", "stated power"].contains(&energy["method"].as_str().unwrap()));
    assert!(!energy["note"].as_str().unwrap().is_empty());
}

#[test]
fn answers_summaries_and_an_evaluation_on_the_real_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    collection(dir);

    // Answers with citations, from a job file.
    fs::write(
        dir.join("answers.toml"),
        "kind = \"answer\"\ncollection = \"demo\"\ndb = \"db\"\nquestions = \"questions.jsonl\"\n\
         output = \"answers.jsonl\"\nreport = \"answers.json\"\n\n[model]\nmax_new_tokens = 32\n\
         batch_size = 4\n\n[retrieval]\ntop_k = 2\n",
    )
    .unwrap();
    let out = run_in(dir, &["job", "run", "answers.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let answers = lines(&dir.join("answers.jsonl"));
    assert_eq!(answers.len(), 4);
    for a in &answers {
        assert_eq!(a["status"], "ok", "{a}");
        assert!(!a["answer"].as_str().unwrap().is_empty(), "{a}");
        let passages = a["passages"].as_array().unwrap();
        assert!((1..=2).contains(&passages.len()), "{a}");
        for (i, p) in passages.iter().enumerate() {
            assert_eq!(p["n"], i + 1);
            assert!(p["source"].as_str().unwrap().starts_with("demo/"), "{p}");
            assert!(p["bytes"][0].as_u64().unwrap() < p["bytes"][1].as_u64().unwrap());
        }
        // Every citation resolves to a passage given, the others are flagged.
        for c in a["citations"].as_array().unwrap() {
            assert!(
                passages.iter().any(|p| p["chunk_id"] == c["chunk_id"]),
                "{a}"
            );
        }
        for n in a["invalid_citations"].as_array().unwrap() {
            assert!(n.as_u64().unwrap() as usize > passages.len(), "{a}");
        }
        assert_eq!(a["prompt"]["language"], "fr");
        assert_eq!(a["prompt"]["name"], "answer");
    }
    // The trial-period question retrieves the trial-period fiche.
    let essai = answers.iter().find(|a| a["id"] == "essai-cadres").unwrap();
    assert!(
        essai["passages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["source"] == "demo/fiche-periode-essai.html"),
        "{essai}"
    );
    let report = read_json(&dir.join("answers.json"));
    check_usage(&report["usage"], 4);
    assert_eq!(
        report["model"]["hash"].as_str().unwrap().len(),
        64,
        "the model file's sha256"
    );

    // The same job again: nothing generated. Another prompt language: all redone.
    let out = run_in(dir, &["job", "run", "answers.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = read_json(&dir.join("answers.json"));
    assert_eq!(report["usage"]["skipped"], 4);
    check_usage(&report["usage"], 0);
    assert_eq!(
        lines(&dir.join("answers.jsonl")),
        answers,
        "kept as they were"
    );
    let english =
        fs::read_to_string(dir.join("answers.toml")).unwrap() + "\n[prompt]\nlanguage = \"en\"\n";
    fs::write(dir.join("answers.toml"), english).unwrap();
    let out = run_in(dir, &["job", "run", "answers.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = read_json(&dir.join("answers.json"));
    assert_eq!(
        (
            report["usage"]["done"].as_u64(),
            report["usage"]["skipped"].as_u64()
        ),
        (Some(4), Some(0))
    );
    let again = lines(&dir.join("answers.jsonl"));
    assert_eq!(again.len(), 4);
    assert!(again.iter().all(|a| a["prompt"]["language"] == "en"));

    // Summaries: a context small enough that the fiche is cut in parts, then merged.
    let out = run_in(
        dir,
        &[
            "summarize",
            "-c",
            "demo",
            "--db",
            "db",
            "--context",
            "1024",
            "--max-new-tokens",
            "48",
            "--batch-size",
            "4",
            "--source",
            "saisonnier",
            "--report",
            "summaries.json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let summaries = lines(&dir.join("summaries-demo.jsonl"));
    assert_eq!(summaries.len(), 1, "the documents the source pattern names");
    assert!(
        summaries
            .iter()
            .all(|s| s["status"] == "ok" && !s["summary"].as_str().unwrap().is_empty())
    );
    assert!(
        summaries
            .iter()
            .any(|s| s["parts"].as_u64().unwrap() > 1 && s["merges"].as_u64().unwrap() >= 1),
        "a long fiche is summarized map-reduce"
    );
    let report = read_json(&dir.join("summaries.json"));
    check_usage(&report["usage"], 1);
    assert!(
        report["usage"]["requests"].as_u64().unwrap() > 2,
        "parts and merges are requests"
    );

    // An evaluation: answers generated and scored against the references.
    let out = run_in(
        dir,
        &[
            "eval",
            "run",
            "questions.jsonl",
            "-c",
            "demo",
            "--db",
            "db",
            "-k",
            "3",
            "--max-new-tokens",
            "32",
            "--report",
            "eval.json",
            "--markdown",
            "eval.md",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("| token F1 |"), "{}", stdout(&out));
    let report = read_json(&dir.join("eval.json"));
    let scores = &report["scores"];
    assert_eq!(scores["items"], 4);
    assert_eq!(scores["scored"], 4);
    assert_eq!(scores["failed"], 0);
    for key in [
        "exact_match",
        "f1",
        "rouge_l",
        "reference_in_citations",
        "reference_in_passages",
    ] {
        let v = scores[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} {v}");
    }
    // The questions' relevant fiches are among the three passages the model saw.
    assert!(
        scores["retrieval"]["at"][1]["hit"].as_f64().unwrap() >= 0.75,
        "{scores}"
    );
    assert!(
        scores["reference_in_passages"].as_f64().unwrap() >= 0.5,
        "{scores}"
    );
    assert_eq!(report["items"].as_array().unwrap().len(), 4);
    check_usage(&report["usage"], 4);
    assert!(
        fs::read_to_string(dir.join("eval.md"))
            .unwrap()
            .contains("| ROUGE-L |")
    );
}

#[test]
fn a_killed_summary_job_resumes_without_redoing_finished_documents() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Four short fiches: one request each.
    common::write_fiches(&dir.join("notes"), 4, 1200);
    let out = run_in(dir, &["ingest", "notes", "-c", "notes", "--db", "db"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let args = [
        "summarize",
        "-c",
        "notes",
        "--db",
        "db",
        "--max-new-tokens",
        "32",
        "--batch-size",
        "1",
        "--output",
        "s.jsonl",
        "--report",
        "s.json",
    ];
    // Killed when the test ends, whatever happens to it.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Guard(moulin().current_dir(dir).args(args).spawn().unwrap());
    let path = dir.join("s.jsonl");
    let started = Instant::now();
    // Kill it for real once the first document is written, before the last.
    loop {
        let n = fs::read_to_string(&path).map_or(0, |t| t.lines().count());
        if n >= 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no summary written"
        );
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(child.0.id() as i32, libc::SIGKILL) };
    child.0.wait().unwrap();
    let before = lines(&path).len();
    assert!(before < 4, "killed before the end");

    let out = run_in(dir, &args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let after = lines(&path);
    assert_eq!(after.len(), 4, "every document once");
    let mut ids: Vec<&str> = after.iter().map(|l| l["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4);
    let report = read_json(&dir.join("s.json"));
    assert_eq!(
        report["usage"]["skipped"].as_u64(),
        Some(before as u64),
        "finished ones kept"
    );
    assert_eq!(report["usage"]["done"].as_u64(), Some(4 - before as u64));
}

#[test]
fn an_instruction_inside_a_passage_does_not_change_the_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    collection(dir);
    let out = run_in(
        dir,
        &[
            "ask",
            "Combien de jours de congés payés un salarié acquiert-il par mois ?",
            "-c",
            "demo",
            "--db",
            "db",
            "-k",
            "2",
            "--max-new-tokens",
            "64",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let answer: Value = serde_json::from_str(&stdout(&out)).unwrap();
    // The note with the instruction is what the model read.
    assert!(
        answer["passages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["text"].as_str().unwrap().contains("BANANE")),
        "{answer}"
    );
    let text = answer["answer"].as_str().unwrap();
    assert!(
        !text.to_uppercase().contains("BANANE"),
        "the answer followed the passage: {text}"
    );
    assert!(!text.trim().is_empty());

    // The plain form: the answer, then its numbered sources.
    let out = run_in(
        dir,
        &[
            "ask",
            "Quel jour férié est chômé pour tous ?",
            "-c",
            "demo",
            "--db",
            "db",
            "-k",
            "2",
            "--max-new-tokens",
            "48",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("Sources :") && text.contains("[1] ") && text.contains("[2] "),
        "{text}"
    );
}

#[test]
fn answer_and_summary_jobs_shard_and_merge_into_one_process_results() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    collection(dir);
    // Summaries of four short notes (one request each), to keep the test short.
    common::write_fiches(&dir.join("notes"), 4, 500);
    let out = run_in(dir, &["ingest", "notes", "-c", "notes", "--db", "db"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // Greedy decoding, one request at a time: the same results in any process.
    for kind in ["answer", "summarize"] {
        let source = if kind == "answer" {
            "collection = \"demo\"\nquestions = \"questions.jsonl\"\n"
        } else {
            "collection = \"notes\"\n"
        };
        let retrieval = if kind == "answer" {
            "\n[retrieval]\ntop_k = 2\n"
        } else {
            ""
        };
        for name in ["one", "sharded"] {
            fs::write(
                dir.join(format!("{kind}-{name}.toml")),
                format!(
                    "kind = \"{kind}\"\ndb = \"db\"\n{source}output = \"{kind}-{name}.jsonl\"\n\n\
                     [model]\nmax_new_tokens = 16\nbatch_size = 1\ntemperature = 0.0\n{retrieval}"
                ),
            )
            .unwrap();
        }
        let out = run_in(dir, &["job", "run", &format!("{kind}-one.toml")]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let one = lines(&dir.join(format!("{kind}-one.jsonl")));
        let file = format!("{kind}-sharded.toml");
        // Merging before every shard ran is refused, naming the shard.
        let out = run_in(dir, &["job", "run", &file, "--shard", "0/2"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let out = run_in(dir, &["job", "merge", &file, "--shards", "2"]);
        assert_ne!(out.status.code(), Some(0));
        assert!(stderr(&out).contains("--shard 1/2"), "{}", stderr(&out));
        // Shard 1 twice: resumable, nothing generated the second time.
        for _ in 0..2 {
            let out = run_in(dir, &["job", "run", &file, "--shard", "1/2"]);
            assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        }
        let out = run_in(dir, &["job", "merge", &file, "--shards", "2"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let merged = lines(&dir.join(format!("{kind}-sharded.jsonl")));
        let part =
            |i: u32| lines(&dir.join(format!("{kind}-sharded.shard-0000{i}-of-00002.jsonl")));
        assert!(
            !part(0).is_empty() && !part(1).is_empty(),
            "both shards had items"
        );
        assert_eq!(
            part(0).len() + part(1).len(),
            merged.len(),
            "each item in one shard"
        );
        let strip = |rows: Vec<Value>| -> std::collections::BTreeMap<String, Value> {
            rows.into_iter()
                .map(|mut r| {
                    let o = r.as_object_mut().unwrap();
                    for k in ["seconds", "prompt_tokens", "generated_tokens"] {
                        o.remove(k);
                    }
                    (o["id"].as_str().unwrap().to_string(), r)
                })
                .collect()
        };
        assert_eq!(
            merged.len(),
            one.len(),
            "{kind}: one line per item, no duplicates"
        );
        assert_eq!(strip(merged), strip(one), "{kind}: the same results");
    }
}
