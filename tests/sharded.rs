//! Runs over many workers, through the real binary on real LanceDB (on a local
//! folder and on a real S3-protocol server, moto's, started here on 127.0.0.1),
//! with the real model: N shards plus one commit give the collection one
//! process gives, row for row; commits are single and idempotent; a missing
//! shard is named; a shard rerun replaces its earlier work.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{run_env, write_fiches};
use moulin::store::{Access, Storage, Store};

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn pipeline(dir: &Path, file: &str, db: &str, storage: &str) {
    fs::write(
        dir.join(file),
        format!(
            "[collection]\nname = \"c\"\ndb = \"{db}\"\nprune = true\n{storage}\n[[sources]]\ntype = \"files\"\nname = \"fiches\"\npath = \"src\"\n"
        ),
    )
    .unwrap();
}

/// The rows of a collection, with what depends on the run (its id, times)
/// left out: chunk id → (every other column as JSON, vector); document id →
/// its row as JSON.
type Rows = (
    BTreeMap<String, (serde_json::Value, Vec<f32>)>,
    BTreeMap<String, serde_json::Value>,
);

fn rows(db: &str, storage: &Storage) -> Rows {
    use arrow_array::{Array, FixedSizeListArray, Float32Array, StringArray};
    use futures::TryStreamExt;
    use lancedb::query::ExecutableQuery;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Store::connect_with(db, Access::Read, storage)
            .await
            .unwrap();
        let c = store.open("c").await.unwrap();
        let batches: Vec<arrow_array::RecordBatch> = c
            .table
            .query()
            .execute()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut chunks = BTreeMap::new();
        for b in &batches {
            let ids = b
                .column_by_name("chunk_id")
                .unwrap()
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            let vectors = b
                .column_by_name("vector")
                .unwrap()
                .as_any()
                .downcast_ref::<FixedSizeListArray>()
                .unwrap()
                .clone();
            let keep: Vec<usize> = b
                .schema()
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| !matches!(f.name().as_str(), "vector" | "run_id" | "ingested_at"))
                .map(|(i, _)| i)
                .collect();
            let rest = b.project(&keep).unwrap();
            let mut writer = arrow_json::ArrayWriter::new(Vec::new());
            writer.write(&rest).unwrap();
            writer.finish().unwrap();
            let json: Vec<serde_json::Value> =
                serde_json::from_slice(&writer.into_inner()).unwrap();
            for (i, row) in json.into_iter().enumerate() {
                let v = vectors.value(i);
                let v = v.as_any().downcast_ref::<Float32Array>().unwrap();
                let previous = chunks.insert(ids.value(i).to_string(), (row, v.values().to_vec()));
                assert!(previous.is_none(), "chunk {} is there twice", ids.value(i));
            }
        }
        let ids: Vec<String> = c.document_states().await.unwrap().into_keys().collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut documents = BTreeMap::new();
        for mut d in c.load_documents(&ids).await.unwrap() {
            d.first_run.clear();
            d.last_run.clear();
            d.updated_at.clear();
            d.uri.clear();
            documents.insert(d.document_id.clone(), serde_json::to_value(&d).unwrap());
        }
        assert_eq!(documents.len(), ids.len(), "a document row is there twice");
        (chunks, documents)
    })
}

/// Two collections hold the same rows: same ids, texts, provenance and
/// document rows, vectors within float tolerance (batches differ between runs).
fn assert_same(a: &Rows, b: &Rows, what: &str) {
    assert_eq!(
        a.0.keys().collect::<Vec<_>>(),
        b.0.keys().collect::<Vec<_>>(),
        "{what}: chunk ids"
    );
    for (id, (row, vector)) in &a.0 {
        let (other, other_vector) = &b.0[id];
        assert_eq!(row, other, "{what}: chunk {id}");
        let diff = vector
            .iter()
            .zip(other_vector)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "{what}: chunk {id}'s vector differs by {diff}");
    }
    assert_eq!(a.1, b.1, "{what}: documents");
}

/// Run the shards of one run at the same time, as workers would.
fn run_shards(dir: &Path, file: &str, run_id: &str, shards: &[u32], n: u32, env: &[(&str, &str)]) {
    let children: Vec<(u32, Child)> = shards
        .iter()
        .map(|&i| {
            let child = common::moulin()
                .current_dir(dir)
                .args([
                    "run",
                    file,
                    "--quiet",
                    "--shard",
                    &format!("{i}/{n}"),
                    "--run-id",
                    run_id,
                ])
                .env("NO_COLOR", "1")
                .env_remove("MOULIN_DB")
                .envs(env.iter().copied())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (i, child)
        })
        .collect();
    for (i, child) in children {
        let out = child.wait_with_output().unwrap();
        assert_eq!(code(&out), Some(0), "shard {i}/{n}: {}", stderr(&out));
    }
}

fn commit(dir: &Path, run_id: &str, file: &str, env: &[(&str, &str)]) -> Output {
    run_env(
        dir,
        &["commit", run_id, file, "--quiet", "--report", "commit.json"],
        env,
    )
}

/// Change the corpus: one document edited, one removed, one added.
fn change_corpus(dir: &Path) {
    let src = dir.join("src");
    let edited = src.join("fiche-001.md");
    let text = fs::read_to_string(&edited).unwrap();
    fs::write(&edited, format!("{text}\nUn paragraphe ajouté depuis.\n")).unwrap();
    fs::remove_file(src.join("fiche-002.md")).unwrap();
    let extra = write_fiches(&dir.join("extra"), 11, 500);
    fs::copy(&extra[10], src.join("fiche-010.md")).unwrap();
}

/// One process, then N shards plus a commit, on the same corpus and its
/// change: the same collection, for N = 1, 2 and 4.
fn shards_equal_one_run(
    dir: &Path,
    db: impl Fn(&str) -> String,
    storage: &str,
    env: &[(&str, &str)],
    access: &Storage,
    counts: &[u32],
) {
    write_fiches(&dir.join("src"), 10, 2500);
    pipeline(dir, "one.toml", &db("one"), storage);
    for n in counts {
        pipeline(dir, &format!("n{n}.toml"), &db(&format!("n{n}")), storage);
    }
    for round in ["first", "after a change"] {
        if round != "first" {
            change_corpus(dir);
        }
        let out = run_env(dir, &["run", "one.toml", "--quiet"], env);
        assert_eq!(code(&out), Some(0), "{}", stderr(&out));
        let one = rows(&db("one"), access);
        assert!(one.0.len() > 15, "{} chunks", one.0.len());
        for &n in counts {
            let file = format!("n{n}.toml");
            let run_id = format!("r{n}-{}", round.len());
            run_shards(dir, &file, &run_id, &(0..n).collect::<Vec<_>>(), n, env);
            // Nothing is visible before the commit.
            let before = rows(&db(&format!("n{n}")), access);
            if round == "first" {
                assert!(before.0.is_empty(), "N={n}: rows visible before the commit");
            }
            let out = commit(dir, &run_id, &file, env);
            assert_eq!(code(&out), Some(0), "{}", stderr(&out));
            let report = common::read_report(&dir.join("commit.json"));
            assert_eq!(report["run_id"], run_id.as_str());
            assert_eq!(report["totals"]["inputs"], 10, "{}", report["totals"]);
            assert_same(
                &one,
                &rows(&db(&format!("n{n}")), access),
                &format!("N={n}, {round}"),
            );
            // Committing again changes nothing.
            let out = commit(dir, &run_id, &file, env);
            assert_eq!(code(&out), Some(0), "{}", stderr(&out));
            assert!(
                stderr(&out).contains("already committed"),
                "{}",
                stderr(&out)
            );
            assert_same(
                &one,
                &rows(&db(&format!("n{n}")), access),
                &format!("N={n}, {round}, twice"),
            );
        }
    }
}

#[test]
fn shards_plus_a_commit_equal_one_run_on_a_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = |name: &str| dir.join(name).to_string_lossy().into_owned();
    shards_equal_one_run(dir, db, "", &[], &Storage::new(), &[1, 2, 4]);
}

#[test]
fn a_missing_shard_is_named_and_a_rerun_shard_replaces_its_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_fiches(&dir.join("src"), 9, 400);
    pipeline(dir, "one.toml", "one", "");
    pipeline(dir, "p.toml", "db", "");
    let out = run_env(dir, &["run", "one.toml", "--quiet"], &[]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));

    run_shards(dir, "p.toml", "nightly", &[0, 2], 3, &[]);
    let out = commit(dir, "nightly", "p.toml", &[]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("1 of 3 shards") && err.contains("--shard 1/3"),
        "{err}"
    );
    assert!(
        rows(&dir.join("db").to_string_lossy(), &Storage::new())
            .0
            .is_empty()
    );

    // Shard 0 again (its first files are never referenced), then the missing one.
    run_shards(dir, "p.toml", "nightly", &[0], 3, &[]);
    run_shards(dir, "p.toml", "nightly", &[1], 3, &[]);
    // A staged file gone (as Lance's cleanup removes week-old unreferenced
    // files): the commit refuses to reference it and names the shard.
    let manifest: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(dir.join("db/_moulin/c/staging/nightly/shard-00001-of-00003.json"))
            .unwrap(),
    )
    .unwrap();
    let file = manifest["chunk_fragments"][0]["files"][0]["path"]
        .as_str()
        .unwrap();
    fs::remove_file(dir.join("db/c.lance/data").join(file)).unwrap();
    let out = commit(dir, "nightly", "p.toml", &[]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--shard 1/3"), "{}", stderr(&out));
    assert!(
        rows(&dir.join("db").to_string_lossy(), &Storage::new())
            .0
            .is_empty()
    );
    run_shards(dir, "p.toml", "nightly", &[1], 3, &[]);
    let out = commit(dir, "nightly", "p.toml", &[]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let one = rows(&dir.join("one").to_string_lossy(), &Storage::new());
    let sharded = rows(&dir.join("db").to_string_lossy(), &Storage::new());
    assert_same(&one, &sharded, "after a shard rerun");

    // A shard of another count for the same run is refused at the commit.
    let out = run_env(
        dir,
        &[
            "run", "p.toml", "--quiet", "--shard", "0/2", "--run-id", "nightly",
        ],
        &[],
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let out = commit(dir, "nightly", "p.toml", &[]);
    // The run is already recorded: nothing changes.
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_same(
        &one,
        &rows(&dir.join("db").to_string_lossy(), &Storage::new()),
        "after a stray shard",
    );

    // Bad shard options are said before any work.
    let out = run_env(
        dir,
        &["run", "p.toml", "--shard", "3/3", "--run-id", "x"],
        &[],
    );
    assert_eq!(code(&out), Some(2));
    assert!(
        stderr(&out).contains("numbered from 0 to 2"),
        "{}",
        stderr(&out)
    );
    let out = run_env(dir, &["run", "p.toml", "--shard", "0/3"], &[]);
    assert_eq!(code(&out), Some(2));
    assert!(stderr(&out).contains("--run-id"), "{}", stderr(&out));
}

/// A commit killed between its two tables leaves the chunks in and the document
/// rows not: every other writer refuses until that commit is rerun, which
/// finishes it as one clean run.
#[test]
fn a_commit_cut_between_its_tables_is_finished_before_anything_else_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_fiches(&dir.join("src"), 6, 300);
    pipeline(dir, "one.toml", "one", "");
    pipeline(dir, "p.toml", "db", "");
    run_shards(dir, "p.toml", "first", &[0, 1], 2, &[]);
    let out = commit(dir, "first", "p.toml", &[]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    change_corpus(dir);
    let out = run_env(dir, &["run", "one.toml", "--quiet"], &[]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));

    run_shards(dir, "p.toml", "cut", &[0, 1], 2, &[]);
    let abort = [(moulin::store::staging::FAIL_BETWEEN_TABLES, "1")];
    let out = commit(dir, "cut", "p.toml", &abort);
    assert_eq!(code(&out), None, "killed: {}", stderr(&out));

    let finish = "moulin commit cut PIPELINE";
    for args in [
        &["run", "p.toml", "--quiet"][..],
        &[
            "run", "p.toml", "--quiet", "--shard", "0/2", "--run-id", "next",
        ][..],
        &["reindex", "-c", "c", "--db", "db", "--quiet"][..],
        &["collections", "rollback", "-c", "c", "--db", "db", "first"][..],
    ] {
        let out = run_env(dir, args, &[]);
        assert_eq!(code(&out), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(finish), "{args:?}: {}", stderr(&out));
    }
    let out = commit(dir, "cut", "p.toml", &[]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let one = rows(&dir.join("one").to_string_lossy(), &Storage::new());
    assert_same(
        &one,
        &rows(&dir.join("db").to_string_lossy(), &Storage::new()),
        "after the commit's rerun",
    );
    let out = run_env(
        dir,
        &["run", "p.toml", "--quiet", "--report", "after.json"],
        &[],
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let report: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("after.json")).unwrap()).unwrap();
    assert_eq!(report["totals"]["unchanged"], 6, "{report}");
}

/// The upkeep removes a committed run's manifests an hour after its commit and
/// an abandoned run's after a week without writes; a run whose shards are still
/// writing keeps them.
#[test]
fn staging_folders_expire_by_the_retention_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_fiches(&dir.join("src"), 6, 300);
    pipeline(dir, "p.toml", "db", "");
    let staging = dir.join("db/_moulin/c/staging");

    // A run abandoned after one of its two shards, eight days ago.
    run_shards(dir, "p.toml", "old", &[0], 2, &[]);
    let aged = Command::new("find")
        .arg(staging.join("old"))
        .args(["-exec", "touch", "-d", "8 days ago", "{}", "+"])
        .status()
        .unwrap();
    assert!(aged.success());
    // A run committed now: its commit's upkeep removes the abandoned run only.
    run_shards(dir, "p.toml", "done", &[0, 1], 2, &[]);
    let out = commit(dir, "done", "p.toml", &[]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(!staging.join("old").exists());
    assert!(staging.join("done").exists());
    // A run in flight (one shard finished, the other not yet).
    run_shards(dir, "p.toml", "fresh", &[0], 2, &[]);

    let expire = |later: chrono::TimeDelta| -> Vec<String> {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let db = dir.join("db");
            let store = Store::connect_with(db.to_str().unwrap(), Access::Read, &Storage::new())
                .await
                .unwrap();
            let c = store.open("c").await.unwrap();
            let runs = c.run_summaries().await.unwrap();
            c.expire_staging(&runs, chrono::Utc::now() + later)
                .await
                .unwrap()
        })
    };
    assert!(expire(chrono::TimeDelta::minutes(30)).is_empty());
    assert_eq!(expire(chrono::TimeDelta::hours(2)), ["done"]);
    assert!(staging.join("fresh").exists());

    // The abandoned run cannot be committed any more and says so; the one in
    // flight commits once its last shard is in.
    let out = commit(dir, "old", "p.toml", &[]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no shard of run old"),
        "{}",
        stderr(&out)
    );
    run_shards(dir, "p.toml", "fresh", &[1], 2, &[]);
    let out = commit(dir, "fresh", "p.toml", &[]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(expire(chrono::TimeDelta::days(8)), ["fresh"]);
}

/// moto's S3 server on a free port of 127.0.0.1, stopped when dropped.
struct S3Server {
    child: Child,
    endpoint: String,
}

/// The Python environment with the test tools (moto), made by scripts/test.sh.
fn test_tools() -> PathBuf {
    let dir = std::env::var_os("MOULIN_TEST_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME");
            Path::new(&home).join(".cache/moulin/test-tools")
        });
    assert!(
        dir.join("bin/moto_server").exists(),
        "{} has no moto_server: run the tests with scripts/test.sh, which installs it",
        dir.display()
    );
    dir
}

impl S3Server {
    fn start() -> S3Server {
        let port = common::free_port();
        let tools = test_tools();
        let child = Command::new(tools.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let endpoint = format!("http://127.0.0.1:{port}");
        common::wait_for_port(port, "moto_server");
        let server = S3Server { child, endpoint };
        let out = Command::new(tools.join("bin/python"))
            .args([
                "-c",
                "import sys, boto3; boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test').create_bucket(Bucket='moulin')",
                &server.endpoint,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        server
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The secret the S3 tests use: it must not reach the collection or a report.
const SECRET: &str = "s3cr3t-never-stored";

#[test]
fn shards_plus_a_commit_equal_one_run_on_object_storage() {
    let server = S3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Endpoint and region in the pipeline file; credentials in the environment only.
    let storage = format!(
        "\n[collection.storage]\naws_endpoint = \"{}\"\naws_region = \"us-east-1\"\nallow_http = \"true\"\n",
        server.endpoint
    );
    let env = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
    ];
    let access = s3_access(&server.endpoint);
    shards_equal_one_run(
        dir,
        |name| format!("s3://moulin/{name}"),
        &storage,
        &env,
        &access,
        &[1, 2, 4],
    );

    // Search, the history and rollback work there, with the environment's settings.
    let s3env = s3_env(&server.endpoint);
    works_there(dir, "s3://moulin/n2", &s3env, &access);

    // A job there: one document summarized from the collection on S3.
    let out = run_env(
        dir,
        &[
            "summarize",
            "-c",
            "c",
            "--db",
            "s3://moulin/n2",
            "--source",
            "fiches/fiche-000.md",
            "--max-new-tokens",
            "8",
            "--output",
            "s.jsonl",
            "--quiet",
        ],
        &s3env,
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let summaries = fs::read_to_string(dir.join("s.jsonl")).unwrap();
    assert_eq!(summaries.lines().count(), 1, "{summaries}");
    assert!(summaries.contains("\"status\":\"ok\""), "{summaries}");

    // Credentials in the pipeline file (none in the environment) are used and
    // never recorded: not in the report, the runs' records or the debug logs.
    pipeline(
        dir,
        "inline.toml",
        "s3://moulin/inline",
        &format!(
            "[collection.storage]\naws_endpoint = \"{}\"\naws_region = \"us-east-1\"\nallow_http = \"true\"\naws_access_key_id = \"test\"\naws_secret_access_key = \"{SECRET}\"\n",
            server.endpoint
        ),
    );
    let out = run_env(
        dir,
        &["run", "inline.toml", "-vv", "--report", "inline.json"],
        &[],
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(said.contains("DEBUG"), "no debug logs: {said}");
    assert!(!said.contains(SECRET), "the secret is in the output");
    let report = fs::read_to_string(dir.join("inline.json")).unwrap();
    assert!(report.contains("us-east-1") && !report.contains(SECRET));
    let out = run_env(
        dir,
        &[
            "collections",
            "runs",
            "-c",
            "c",
            "--db",
            "s3://moulin/inline",
            "--json",
        ],
        &s3env,
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains(SECRET));

    // The secret is nowhere in the bucket: download everything and look.
    let out = Command::new(test_tools().join("bin/python"))
        .args([
            "-c",
            "import sys, boto3\ns3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='x')\nn = 0\nfor page in s3.get_paginator('list_objects_v2').paginate(Bucket='moulin'):\n    for o in page.get('Contents', []):\n        n += 1\n        if sys.argv[2].encode() in s3.get_object(Bucket='moulin', Key=o['Key'])['Body'].read():\n            print('LEAK', o['Key'])\nprint(n, 'objects')",
            &server.endpoint,
            SECRET,
        ])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!listing.contains("LEAK"), "{listing}");
    assert!(
        listing.contains("objects") && !listing.starts_with("0 "),
        "{listing}"
    );
    assert!(
        !fs::read_to_string(dir.join("commit.json"))
            .unwrap()
            .contains(SECRET)
    );
}

/// Azurite, Microsoft's Azure Blob Storage emulator, on a free port of
/// 127.0.0.1 with one account whose key is [`AZURE_SECRET`]; stopped when dropped.
struct AzureServer {
    child: Child,
    endpoint: String,
    _data: tempfile::TempDir,
}

const AZURE_ACCOUNT: &str = "moulinacct";
/// The account key (base64, as Azure's are): it must not reach the container.
const AZURE_SECRET: &str = "bW91bGluLWF6dXJlLXNlY3JldC1uZXZlci1zdG9yZWQ=";

impl AzureServer {
    fn start() -> AzureServer {
        let port = common::free_port();
        let tools = test_tools();
        let azurite = tools.join("node/node_modules/.bin/azurite-blob");
        assert!(
            azurite.exists(),
            "{} is missing: run the tests with scripts/test.sh, which installs it",
            azurite.display()
        );
        let data = tempfile::tempdir().unwrap();
        let child = Command::new(azurite)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(data.path())
            .args([
                "--silent",
                "--skipApiVersionCheck",
                "--disableProductStyleUrl",
            ])
            .env(
                "AZURITE_ACCOUNTS",
                format!("{AZURE_ACCOUNT}:{AZURE_SECRET}"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("azurite starts");
        let endpoint = format!("http://127.0.0.1:{port}/{AZURE_ACCOUNT}");
        common::wait_for_port(port, "azurite");
        let server = AzureServer {
            child,
            endpoint,
            _data: data,
        };
        let out = Command::new(tools.join("bin/python"))
            .args([
                "-c",
                "import sys\nfrom azure.storage.blob import BlobServiceClient\nBlobServiceClient.from_connection_string(f'DefaultEndpointsProtocol=http;AccountName={sys.argv[2]};AccountKey={sys.argv[3]};BlobEndpoint={sys.argv[1]};').create_container('moulin')",
                &server.endpoint,
                AZURE_ACCOUNT,
                AZURE_SECRET,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        server
    }

    /// Every byte the server stored (its blobs and its metadata).
    fn stored(&self) -> Vec<u8> {
        let mut all = Vec::new();
        let mut dirs = vec![self._data.path().to_path_buf()];
        while let Some(d) = dirs.pop() {
            for entry in fs::read_dir(d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    all.extend(fs::read(path).unwrap());
                }
            }
        }
        all
    }
}

impl Drop for AzureServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The same on Azure Blob Storage (Azurite): account and endpoint in the
/// pipeline file, the key in the environment only.
#[test]
fn shards_plus_a_commit_equal_one_run_on_azure_blob_storage() {
    let server = AzureServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let storage = format!(
        "\n[collection.storage]\nazure_storage_account_name = \"{AZURE_ACCOUNT}\"\nazure_storage_endpoint = \"{}\"\nallow_http = \"true\"\n",
        server.endpoint
    );
    let env = [("AZURE_STORAGE_ACCOUNT_KEY", AZURE_SECRET)];
    let access: Storage = [
        ("azure_storage_account_name", AZURE_ACCOUNT),
        ("azure_storage_endpoint", server.endpoint.as_str()),
        ("allow_http", "true"),
        ("azure_storage_account_key", AZURE_SECRET),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    shards_equal_one_run(
        dir,
        |name| format!("az://moulin/{name}"),
        &storage,
        &env,
        &access,
        &[1, 2],
    );

    // Search, the history and rollback there, with the environment's settings only.
    let azenv = [
        ("AZURE_STORAGE_ACCOUNT_KEY", AZURE_SECRET),
        ("AZURE_STORAGE_ACCOUNT_NAME", AZURE_ACCOUNT),
        ("AZURE_STORAGE_ENDPOINT", server.endpoint.as_str()),
        ("AZURE_ALLOW_HTTP", "true"),
    ];
    works_there(dir, "az://moulin/n2", &azenv, &access);

    // The key in the pipeline file (none in the environment) serves and is
    // never recorded; it is nowhere in what the server stored.
    pipeline(
        dir,
        "inline.toml",
        "az://moulin/inline",
        &format!(
            "[collection.storage]\nazure_storage_account_name = \"{AZURE_ACCOUNT}\"\nazure_storage_endpoint = \"{}\"\nallow_http = \"true\"\nazure_storage_account_key = \"{AZURE_SECRET}\"\n",
            server.endpoint
        ),
    );
    let out = run_env(
        dir,
        &["run", "inline.toml", "--quiet", "--report", "inline.json"],
        &[],
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let report = fs::read_to_string(dir.join("inline.json")).unwrap();
    assert!(report.contains(AZURE_ACCOUNT) && !report.contains(AZURE_SECRET));
    let stored = server.stored();
    assert!(stored.len() > 100_000, "{} bytes stored", stored.len());
    assert!(
        !stored
            .windows(AZURE_SECRET.len())
            .any(|w| w == AZURE_SECRET.as_bytes())
    );
}

/// On the 2-shard collection `shards_equal_one_run` left at `db`: search, the
/// runs' history, and a rollback to the first run then forward to the second.
fn works_there(dir: &Path, db: &str, env: &[(&str, &str)], access: &Storage) {
    let out = run_env(
        dir,
        &["search", "-c", "c", "--db", db, "période d'essai", "--json"],
        env,
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(!out.stdout.is_empty());
    let out = run_env(
        dir,
        &["collections", "runs", "-c", "c", "--db", db, "--json"],
        env,
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let runs = String::from_utf8_lossy(&out.stdout);
    assert!(runs.contains("r2-5") && runs.contains("r2-14"), "{runs}");

    let latest = rows(db, access);
    let rollback = |run: &str| {
        let out = run_env(
            dir,
            &["collections", "rollback", "-c", "c", "--db", db, run],
            env,
        );
        assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    };
    rollback("r2-5");
    let back = rows(db, access);
    let sources: Vec<&str> = back
        .1
        .values()
        .map(|d| d["source"].as_str().unwrap())
        .collect();
    assert!(
        sources.contains(&"fiches/fiche-002.md"),
        "the document the second run deleted is back: {sources:?}"
    );
    assert!(
        !sources.contains(&"fiches/fiche-010.md"),
        "the document the second run added is gone: {sources:?}"
    );
    rollback("r2-14");
    assert_same(
        &latest,
        &rows(db, access),
        &format!("rolled back and forward on {db}"),
    );
}

/// xorshift64 moments, from a seed printed so that a failure can be replayed.
fn moments() -> impl FnMut() -> u64 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill moments from seed {seed}");
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    common::moulin()
        .current_dir(dir)
        .args(args)
        .arg("--quiet")
        .env("NO_COLOR", "1")
        .env_remove("MOULIN_DB")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Run `args` and SIGKILL it after `at`, unless it ended first; whether it was killed.
fn kill_at(dir: &Path, args: &[&str], at: Duration) -> bool {
    let mut child = spawn(dir, args, &[]);
    let started = Instant::now();
    while started.elapsed() < at {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    true
}

#[test]
fn shards_and_commits_killed_at_random_moments_rerun_to_one_clean_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_fiches(&dir.join("src"), 12, 2500);
    let db = |name: &str| dir.join(name).to_string_lossy().into_owned();
    pipeline(dir, "one.toml", &db("one"), "");
    pipeline(dir, "p.toml", &db("db"), "");
    let started = Instant::now();
    let out = run_env(dir, &["run", "one.toml", "--quiet"], &[]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let length = started.elapsed();
    let one = rows(&db("one"), &Storage::new());
    let mut next = moments();

    for round in 0..2 {
        if round == 1 {
            change_corpus(dir);
            let out = run_env(dir, &["run", "one.toml", "--quiet"], &[]);
            assert_eq!(code(&out), Some(0), "{}", stderr(&out));
        }
        let one = if round == 0 {
            one.clone()
        } else {
            rows(&db("one"), &Storage::new())
        };
        let run_id = format!("k{round}");
        let before = (round == 1).then(|| rows(&db("db"), &Storage::new()));
        // Each shard killed at a random moment of its run, a few times, then run to the end.
        for i in 0..2 {
            let shard = format!("{i}/2");
            let args = [
                "run",
                "p.toml",
                "--shard",
                shard.as_str(),
                "--run-id",
                run_id.as_str(),
            ];
            for _ in 0..3 {
                let at = Duration::from_millis(next() % length.as_millis().max(1) as u64);
                let killed = kill_at(dir, &args, at);
                eprintln!("shard {shard} killed at {at:?}: {killed}");
                // A killed shard changes nothing readers see.
                if let Some(before) = &before {
                    assert_same(
                        before,
                        &rows(&db("db"), &Storage::new()),
                        "after a killed shard",
                    );
                }
            }
            let out = run_env(dir, &[&args[..], &["--quiet"]].concat(), &[]);
            assert_eq!(code(&out), Some(0), "{}", stderr(&out));
        }
        // A shard run twice: its second manifest replaces the first.
        let out = run_env(
            dir,
            &[
                "run", "p.toml", "--shard", "1/2", "--run-id", &run_id, "--quiet",
            ],
            &[],
        );
        assert_eq!(code(&out), Some(0), "{}", stderr(&out));
        // The commit killed at random moments: each time, readers see the run
        // entirely or not at all (checked on the chunks, which readers search).
        let commit_args = ["commit", run_id.as_str(), "p.toml"];
        for k in 0..6 {
            let at = Duration::from_millis(next() % 3000);
            let killed = kill_at(dir, &commit_args, at);
            let now = rows(&db("db"), &Storage::new());
            let whole = now.0.keys().eq(one.0.keys());
            let none = before
                .as_ref()
                .map_or(now.0.is_empty(), |b| now.0.keys().eq(b.0.keys()));
            assert!(
                whole || none,
                "commit killed at {at:?} (kill {k}, killed: {killed}): a half-applied run"
            );
        }
        // Two commits racing, then the result.
        let racing: Vec<Child> = (0..2).map(|_| spawn(dir, &commit_args, &[])).collect();
        for mut c in racing {
            assert!(c.wait().unwrap().success());
        }
        assert_same(
            &one,
            &rows(&db("db"), &Storage::new()),
            &format!("round {round}"),
        );
        let out = run_env(
            dir,
            &[
                "collections",
                "runs",
                "-c",
                "c",
                "--db",
                &db("db"),
                "--json",
            ],
            &[],
        );
        let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let complete = runs
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["run_id"] == run_id.as_str() && r["status"] == "complete")
            .count();
        assert_eq!(complete, 1, "{runs}");
    }
}

/// A TCP proxy on 127.0.0.1 in front of `target` that can be "restarted":
/// every connection cut and new ones refused for a while, as when the object
/// store restarts.
struct Proxy {
    port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    epoch: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));
        let (d, e) = (down.clone(), epoch.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if d.load(Ordering::SeqCst) {
                    // Refused: closed at once, before a byte is read.
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let mine = e.load(Ordering::SeqCst);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let e = e.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        from.set_read_timeout(Some(Duration::from_millis(50)))
                            .unwrap();
                        let mut buf = [0u8; 65536];
                        loop {
                            if e.load(Ordering::SeqCst) != mine {
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => {
                                    let _ = to.shutdown(std::net::Shutdown::Write);
                                    return;
                                }
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
            }
        });
        Proxy { port, down, epoch }
    }

    /// Cut every connection and refuse new ones for `pause`.
    fn restart(&self, pause: Duration) {
        use std::sync::atomic::Ordering;
        self.down.store(true, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(pause);
        self.down.store(false, Ordering::SeqCst);
    }
}

#[test]
fn an_object_store_restarting_mid_run_loses_nothing() {
    let server = S3Server::start();
    let target: u16 = server.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = Proxy::start(target);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_fiches(&dir.join("src"), 12, 2500);
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let storage = format!(
        "\n[collection.storage]\naws_endpoint = \"{endpoint}\"\naws_region = \"us-east-1\"\nallow_http = \"true\"\n"
    );
    pipeline(dir, "one.toml", "s3://moulin/one", &storage);
    pipeline(dir, "p.toml", "s3://moulin/db", &storage);
    let env = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
    ];
    let access = s3_access(&endpoint);
    let out = run_env(dir, &["run", "one.toml", "--quiet"], &env);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));

    // Each shard, then the commit, with the store going away under them: each
    // either goes through (the client retries) or fails; what failed is rerun.
    let mut next = moments();
    let mut attempt = |args: &[&str]| -> bool {
        let mut child = spawn(dir, args, &env);
        std::thread::sleep(Duration::from_millis(next() % 4000));
        proxy.restart(Duration::from_millis(1500));
        child.wait().unwrap().success()
    };
    for round in ["first", "after a change"] {
        let run_id = format!("outage-{}", round.len());
        if round != "first" {
            change_corpus(dir);
            let out = run_env(dir, &["run", "one.toml", "--quiet"], &env);
            assert_eq!(code(&out), Some(0), "{}", stderr(&out));
        }
        let one = rows("s3://moulin/one", &access);
        for i in 0..2 {
            let shard = format!("{i}/2");
            let args = [
                "run",
                "p.toml",
                "--shard",
                shard.as_str(),
                "--run-id",
                run_id.as_str(),
            ];
            let went_through = attempt(&args);
            eprintln!("{round}: shard {shard} through a restart: {went_through}");
            if !went_through {
                let out = run_env(dir, &args, &env);
                assert_eq!(code(&out), Some(0), "{}", stderr(&out));
            }
        }
        let args = ["commit", run_id.as_str(), "p.toml"];
        if round == "first" {
            // Two commits racing on object storage, where no lock file serves:
            // Lance's conditional writes and the run's key keep it single.
            let racing: Vec<Child> = (0..2).map(|_| spawn(dir, &args, &env)).collect();
            for mut c in racing {
                assert!(c.wait().unwrap().success());
            }
        } else {
            let went_through = attempt(&args);
            eprintln!("{round}: the commit through a restart: {went_through}");
            let out = run_env(dir, &args, &env);
            assert_eq!(code(&out), Some(0), "{}", stderr(&out));
        }
        assert_same(&one, &rows("s3://moulin/db", &access), round);
        let out = run_env(
            dir,
            &[
                "collections",
                "runs",
                "-c",
                "c",
                "--db",
                "s3://moulin/db",
                "--json",
            ],
            &s3_env(&endpoint),
        );
        let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let recorded = runs
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["run_id"] == run_id.as_str())
            .count();
        assert_eq!(recorded, 1, "{runs}");
    }
}

/// The settings with which the tests read the S3 server's collections.
fn s3_access(endpoint: &str) -> Storage {
    [
        ("aws_endpoint", endpoint),
        ("aws_region", "us-east-1"),
        ("allow_http", "true"),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", SECRET),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The environment that points moulin at the S3 server.
fn s3_env(endpoint: &str) -> [(&str, &str); 5] {
    [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", SECRET),
        ("AWS_ENDPOINT", endpoint),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
    ]
}
