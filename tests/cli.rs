//! The command line's face, through the real binary: settings checked before any
//! work with every problem listed, no surprises on bad options or databases,
//! honest statuses for garbage inputs. Error outputs and summaries are insta
//! snapshots, so that any change to what a user reads is a reviewed diff.

mod common;

use std::fs;
use std::path::Path;
use std::process::Output;

use common::{fixtures, moulin, run_in};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Snapshot settings: the temporary folder and timings are masked.
fn settings(tmp: &Path) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    let path = fs::canonicalize(tmp).unwrap();
    s.add_filter(&regex::escape(&path.display().to_string()), "[TMP]");
    s.add_filter(&regex::escape(&tmp.display().to_string()), "[TMP]");
    s.add_filter(
        &regex::escape(&moulin::paths::moulin_home().display().to_string()),
        "[MOULIN_HOME]",
    );
    s.add_filter(&regex::escape(env!("CARGO_MANIFEST_DIR")), "[REPO]");
    s.add_filter(r"\d+\.\d+ s\b", "[T] s");
    s.add_filter(r"\d{8}T\d{6}Z-[0-9a-f]{6}", "[RUN]");
    s.add_filter(r"moulin \d+\.\d+\.\d+", "moulin [VERSION]");
    s
}

/// No raw internals reach the user: no path inside the cargo registry, no long cause chains.
fn assert_clean(text: &str) {
    assert!(
        !text.contains(".cargo/registry"),
        "internal path leaked:\n{text}"
    );
    assert!(!text.contains(".rs:"), "source location leaked:\n{text}");
    assert!(
        text.matches("Caused by:").count() <= 1,
        "a chain of causes longer than needed:\n{text}"
    );
    assert!(!text.contains("panicked"), "a panic:\n{text}");
}

#[test]
fn validate_lists_every_mistake_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    fs::copy(
        fixtures().join("pipelines/mistakes.toml"),
        tmp.path().join("bad.toml"),
    )
    .unwrap();
    let out = run_in(tmp.path(), &["validate", "bad.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    // Fifteen mistakes, one of which (`pth`) is two problems: a key unknown, a key missing.
    assert!(text.contains("bad.toml: 16 problems"), "{text}");
    settings(tmp.path()).bind(|| insta::assert_snapshot!("validate_a_dozen_mistakes", text));

    // The same problems, as JSON with file, line, column and key.
    let out = run_in(tmp.path(), &["validate", "bad.toml", "--json"]);
    let problems: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let first = &problems[0];
    assert_eq!(first["file"], "bad.toml");
    assert_eq!(first["line"], 3);
    assert_eq!(first["key"], "collection.name");
    assert_eq!(problems.as_array().unwrap().len(), 16);

    // `run` refuses the file with the same messages, before any work.
    let out = run_in(tmp.path(), &["run", "bad.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for line in text.lines().filter(|l| l.starts_with("bad.toml:")) {
        assert!(err.contains(line), "run does not say {line:?}:\n{err}");
    }
    assert!(!tmp.path().join("data").exists(), "nothing was written");
}

#[test]
fn a_toml_syntax_error_has_its_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(
        tmp.path().join("broken.toml"),
        "[collection]\nname = \"demo\"\n\n[[sources]\ntype = \"files\"\n",
    )
    .unwrap();
    let out = run_in(tmp.path(), &["validate", "broken.toml"]);
    assert_eq!(out.status.code(), Some(1));
    settings(tmp.path()).bind(|| insta::assert_snapshot!("validate_syntax_error", stdout(&out)));
}

#[test]
fn search_checks_its_options_and_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_in(
        tmp.path(),
        &["search", "", "-c", "a b", "--limit", "0", "--db", "nowhere"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_clean(&err);
    settings(tmp.path()).bind(|| insta::assert_snapshot!("search_bad_options", err));
    assert!(
        !tmp.path().join("nowhere").exists(),
        "a read created the database"
    );

    // An empty query alone, on a database that exists.
    fs::create_dir(tmp.path().join("db")).unwrap();
    let out = run_in(tmp.path(), &["search", "  ", "-c", "demo", "--db", "db"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("the query is empty"),
        "{}",
        stderr(&out)
    );

    // A collection that is not there: said in one line, with a hint.
    let out = run_in(tmp.path(), &["search", "congé", "-c", "demo", "--db", "db"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_clean(&err);
    settings(tmp.path()).bind(|| insta::assert_snapshot!("search_no_such_collection", err));
}

#[test]
fn read_only_commands_never_create_a_database() {
    let tmp = tempfile::tempdir().unwrap();
    for args in [
        &["collections", "list", "--db", "missing"][..],
        &["collections", "show", "-c", "demo", "--db", "missing"],
        &["collections", "delete", "-c", "demo", "--db", "missing"],
        &[
            "search", "congé", "-c", "demo", "--db", "missing", "--mode", "lexical",
        ],
    ] {
        let out = run_in(tmp.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert_clean(&err);
        assert!(
            err.contains("--db: no database at missing: the folder does not exist"),
            "{args:?}: {err}"
        );
        assert!(!tmp.path().join("missing").exists(), "{args:?} created it");
    }
}

#[test]
fn a_file_given_as_database_is_said_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("notes.txt"), "pas une base").unwrap();
    let page = fixtures().join("demo/fiche-jours-feries.html");
    let mut outputs = String::new();
    for args in [
        vec!["collections", "list", "--db", "notes.txt"],
        vec!["search", "congé", "-c", "demo", "--db", "notes.txt"],
        vec![
            "ingest",
            page.to_str().unwrap(),
            "-c",
            "demo",
            "--db",
            "notes.txt",
        ],
    ] {
        let out = run_in(tmp.path(), &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert_clean(&err);
        assert!(
            err.contains("notes.txt is a file, not a LanceDB database (a folder)"),
            "{err}"
        );
        outputs.push_str(&format!("$ moulin {}\n{err}\n", args[..2].join(" ")));
    }
    settings(tmp.path()).bind(|| insta::assert_snapshot!("db_is_a_file", outputs));
}

#[test]
fn ingest_checks_every_setting_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_in(
        tmp.path(),
        &[
            "ingest",
            "ftp://example.org/circulaire.pdf",
            "absent/",
            "-c",
            "a b",
            "--db",
            "db",
            "--report",
            "reports/run.json",
            "--chunk-size",
            "10",
            "--overlap",
            "20",
            "--embedding-model",
            "no-such-model",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_clean(&err);
    settings(tmp.path()).bind(|| insta::assert_snapshot!("ingest_bad_settings", err));
    // Nothing was loaded or written.
    assert!(!err.contains("loading"), "{err}");
    assert!(!tmp.path().join("db").exists());

    // A bad name is blamed on the option with validate's words, not on LanceDB.
    let page = fixtures().join("demo/fiche-jours-feries.html");
    let out = run_in(tmp.path(), &["ingest", page.to_str().unwrap(), "-c", "été"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out),
        "error: moulin ingest: 1 problem\n  --collection: \"été\" is not a valid collection name: use ASCII letters, digits, '_', '-' and '.'\n"
    );

    // `run` takes the same overrides, and blames them on their flag.
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/demo.toml");
    let out = moulin()
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .args([
            "run",
            demo.to_str().unwrap(),
            "-c",
            "été",
            "--overlap",
            "5000",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("--collection: \"été\" is not a valid collection name"),
        "{err}"
    );
    assert!(
        err.contains("--overlap: must be smaller than size (1500)"),
        "{err}"
    );
}

#[test]
fn generate_checks_every_option_before_loading_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_in(
        tmp.path(),
        &[
            "generate",
            "--input",
            "missing.jsonl",
            "--output",
            "out/answers.jsonl",
            "--max-new-tokens",
            "0",
            "--batch-size",
            "0",
            "--top-p",
            "5",
            "--temperature=-1",
            "--llm",
            "no-model.gguf",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_clean(&err);
    assert!(!err.contains("parameters"), "the model was loaded: {err}");
    settings(tmp.path()).bind(|| insta::assert_snapshot!("generate_bad_options", err));
}

#[test]
fn garbage_inputs_get_honest_statuses() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    fs::create_dir_all(docs.join("vide")).unwrap();
    fs::copy(
        fixtures().join("demo/fiche-jours-feries.html"),
        docs.join("fiche-jours-feries.html"),
    )
    .unwrap();
    // A PNG named .html, random bytes named .csv, a bitmap named .xls, text named .pdf.
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";
    fs::write(docs.join("page.html"), png).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..50 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    fs::write(docs.join("donnees.csv"), noise).unwrap();
    let mut bmp =
        b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0\x28\0\0\0\x01\0\0\0\x01\0\0\0\x01\0\x18\0".to_vec();
    bmp.resize(58, 0);
    fs::write(docs.join("tableau.xls"), &bmp).unwrap();
    fs::write(
        docs.join("note.pdf"),
        "Note de service : les congés d'été sont posés avant le 1er mai.\n",
    )
    .unwrap();

    // Found by walking a folder: unsupported files do not fail the run.
    let out = run_in(
        tmp.path(),
        &[
            "ingest",
            "docs",
            "-c",
            "tri",
            "--db",
            "db",
            "--report",
            "report.json",
            "--quiet",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "unsupported files met in a folder are not failures"
    );
    let err = stderr(&out);
    settings(tmp.path()).bind(|| insta::assert_snapshot!("summary_garbage_in_a_folder", err));
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(tmp.path().join("report.json")).unwrap()).unwrap();
    let status = |name: &str| {
        report["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["path"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("{name} in the report"))
            .clone()
    };
    assert_eq!(status("page.html")["status"], "unsupported");
    assert_eq!(
        status("page.html")["reason"],
        "an image (image/png), named .html"
    );
    assert_eq!(status("donnees.csv")["status"], "unsupported");
    assert_eq!(
        status("tableau.xls")["reason"],
        "an image (image/bmp), named .xls"
    );
    assert_eq!(status("note.pdf")["status"], "ingested");
    assert_eq!(status("note.pdf")["format"], "text");
    assert_eq!(
        status("note.pdf")["warnings"][0],
        "named .pdf but read as text: the content decides the format"
    );
    assert_eq!(report["totals"]["unsupported"], 3);
    assert_eq!(report["totals"]["ingested"], 2);

    // Named on the command line, an unsupported file fails the run; the others are unchanged.
    let out = run_in(
        tmp.path(),
        &[
            "ingest",
            "docs",
            "docs/page.html",
            "-c",
            "tri",
            "--db",
            "db",
            "--report",
            "report.json",
            "--quiet",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a named unsupported input is a failure"
    );
    let err = stderr(&out);
    settings(tmp.path()).bind(|| insta::assert_snapshot!("summary_named_unsupported", err));

    // An empty folder: said, not silent.
    let out = run_in(
        tmp.path(),
        &["ingest", "docs/vide", "-c", "tri", "--db", "db"],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("warning: docs/vide: no files found"),
        "{}",
        stderr(&out)
    );

    // Logs as JSON lines for log collectors.
    let out = run_in(
        tmp.path(),
        &[
            "ingest",
            "docs",
            "-c",
            "tri",
            "--db",
            "db",
            "-v",
            "--log-format",
            "json",
        ],
    );
    let unchanged = stderr(&out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["status"] == "unchanged")
        .count();
    assert_eq!(unchanged, 2, "{}", stderr(&out));

    // A filter naming no column is refused against the table, in one line.
    let out = run_in(
        tmp.path(),
        &[
            "search",
            "congés",
            "-c",
            "tri",
            "--db",
            "db",
            "--where",
            "nocolumn = 3",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_clean(&err);
    assert!(
        err.starts_with("error: collection tri: filter \"(nocolumn = 3)\""),
        "{err}"
    );
}

#[test]
fn a_password_never_reaches_the_collection_or_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let pdf = fixtures().join("pdf/encrypted-userpw-baz.pdf");
    let out = run_in(
        tmp.path(),
        &[
            "ingest",
            pdf.to_str().unwrap(),
            "-c",
            "secret",
            "--db",
            "db",
            "--password",
            "baz",
            "--report",
            "report.json",
            "-vv",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let show = run_in(
        tmp.path(),
        &[
            "collections",
            "show",
            "-c",
            "secret",
            "--db",
            "db",
            "--json",
        ],
    );
    let report = fs::read_to_string(tmp.path().join("report.json")).unwrap();
    for (what, text) in [
        ("report", report),
        ("collections show", stdout(&show)),
        ("logs", stderr(&out)),
    ] {
        // The fixture's name says its password: that is not a leak.
        let text = text.replace("userpw-baz", "");
        assert!(!text.contains("baz"), "the password is in the {what}");
    }
    // Nor in any file of the database: chunks, documents, runs (with their configuration and report).
    let mut files = 0;
    for entry in walkdir::WalkDir::new(tmp.path().join("db")) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            files += 1;
            let bytes = fs::read(entry.path()).unwrap();
            assert!(
                memchr::memmem::find(&bytes, b"\"baz\"").is_none(),
                "{}",
                entry.path().display()
            );
        }
    }
    assert!(files > 10, "the database has its files ({files})");
}

#[test]
fn completions_and_man_pages_come_from_the_same_definitions() {
    let tmp = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = run_in(tmp.path(), &["completions", shell]);
        assert!(out.status.success());
        let script = stdout(&out);
        assert!(script.contains("embedding-model"), "{shell}: {script}");
    }
    let out = run_in(tmp.path(), &["man"]);
    assert!(stdout(&out).starts_with(".ie"), "{}", stdout(&out));
    let out = run_in(tmp.path(), &["man", "--dir", "man1"]);
    assert!(out.status.success());
    for page in ["moulin.1", "moulin-ingest.1", "moulin-collections-show.1"] {
        assert!(tmp.path().join("man1").join(page).is_file(), "{page}");
    }
}

#[test]
fn a_reader_that_goes_away_stops_the_command_quietly() {
    // `moulin schema | head -1`: the pipe closes before moulin writes.
    let mut child = moulin()
        .arg("schema")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stderr(&out), "", "nothing to say about a closed pipe");
}

#[test]
fn credentials_in_urls_are_never_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let server = common::Switchable::start();
    let page = fs::read(fixtures().join("demo/fiche-demission.html")).unwrap();
    server.set(200, "text/html; charset=utf-8", page);
    let base = server.base.replace("http://", "http://agent:m0tdepasse@");
    let url = format!("{base}/fiche?id=7&token=jeton-secret-42");
    let out = run_in(
        tmp.path(),
        &[
            "ingest",
            &url,
            "-c",
            "web",
            "--db",
            "db",
            "--report",
            "report.json",
            "-vv",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report = fs::read_to_string(tmp.path().join("report.json")).unwrap();
    assert!(report.contains("token=REDACTED"), "{report}");
    let show = run_in(
        tmp.path(),
        &["collections", "show", "-c", "web", "--db", "db", "--json"],
    );
    let search = run_in(
        tmp.path(),
        &["search", "démission", "-c", "web", "--db", "db", "--json"],
    );
    for (what, text) in [
        ("report", report),
        ("collections show", stdout(&show)),
        ("search", stdout(&search)),
        ("logs", stderr(&out)),
    ] {
        for secret in ["jeton-secret-42", "m0tdepasse"] {
            assert!(!text.contains(secret), "{secret} is in the {what}");
        }
    }
    for entry in walkdir::WalkDir::new(tmp.path().join("db")) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let bytes = fs::read(entry.path()).unwrap();
            for secret in [&b"jeton-secret-42"[..], b"m0tdepasse"] {
                assert!(
                    memchr::memmem::find(&bytes, secret).is_none(),
                    "{}",
                    entry.path().display()
                );
            }
        }
    }
}
