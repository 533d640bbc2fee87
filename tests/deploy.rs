//! The recipes in `deploy/`, checked without a cluster: the Kubernetes Jobs are
//! parsed as YAML and checked against the fields of the batch/v1 Job schema they
//! rely on, then their pods' command lines are run here with the environment
//! Kubernetes would give each index; the Slurm scripts are checked by bash and
//! submitted to a stand-in `sbatch` that runs the array's tasks with Slurm's
//! variables, then the dependent commit. Both end with the run committed.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{document_rows, write_fiches};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn python() -> PathBuf {
    let dir = std::env::var_os("MOULIN_TEST_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").expect("HOME")).join(".cache/moulin/test-tools")
        });
    let python = dir.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: run the tests with scripts/test.sh, which installs the test tools",
        python.display()
    );
    python
}

/// A Kubernetes manifest with its `${VAR}`s replaced, as JSON.
fn manifest(file: &str, vars: &[(&str, &str)]) -> Value {
    let mut text = fs::read_to_string(repo().join("deploy/kubernetes").join(file)).unwrap();
    for (k, v) in vars {
        text = text.replace(&format!("${{{k}}}"), v);
    }
    assert!(!text.contains("${"), "{file}: a variable is left: {text}");
    let out = Command::new(python())
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{file} is not YAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The fields of a batch/v1 Job the recipes depend on, with the types the schema gives them.
fn check_job(job: &Value, file: &str) {
    assert_eq!(job["apiVersion"], "batch/v1", "{file}");
    assert_eq!(job["kind"], "Job", "{file}");
    let name = job["metadata"]["name"].as_str().expect("metadata.name");
    // A DNS-1123 subdomain.
    assert!(
        name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'),
        "{file}: metadata.name {name:?}"
    );
    let spec = &job["spec"];
    for key in ["completions", "parallelism"] {
        assert!(spec[key].is_u64(), "{file}: spec.{key} is an integer");
    }
    let pod = &spec["template"]["spec"];
    assert!(
        matches!(pod["restartPolicy"].as_str(), Some("Never" | "OnFailure")),
        "{file}: a Job's pods restart Never or OnFailure"
    );
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "{file}");
    let c = &containers[0];
    assert!(c["name"].is_string() && c["image"].is_string(), "{file}");
    assert!(
        c["args"].as_array().unwrap().iter().all(Value::is_string),
        "{file}"
    );
    for e in c["env"].as_array().into_iter().flatten() {
        assert!(
            e["name"].is_string() && e["value"].is_string(),
            "{file}: env {e}"
        );
    }
    for v in c["volumeMounts"].as_array().into_iter().flatten() {
        let name = &v["name"];
        assert!(
            pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|vol| &vol["name"] == name),
            "{file}: volume {name} mounted but not declared"
        );
    }
}

/// A container's command line, run here: the pipeline file mounted at
/// /etc/moulin is `pipeline`, and the pod's environment is given.
fn run_pod(
    dir: &Path,
    job: &Value,
    pipeline: &Path,
    extra_env: &[(String, String)],
) -> std::process::Output {
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("/etc/moulin/pipeline.toml", pipeline.to_str().unwrap())
        })
        .collect();
    let mut env: Vec<(String, String)> = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    env.extend(extra_env.iter().cloned());
    let out = common::moulin()
        .current_dir(dir)
        .args(&args)
        .env("NO_COLOR", "1")
        .env_remove("MOULIN_DB")
        .env_remove("MOULIN_RUN_ID")
        .envs(env)
        .output()
        .unwrap();
    eprintln!(
        "$ moulin {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn pipeline(dir: &Path) -> PathBuf {
    write_fiches(&dir.join("src"), 6, 400);
    let file = dir.join("pipeline.toml");
    fs::write(
        &file,
        "[collection]\nname = \"c\"\ndb = \"db\"\n\n[[sources]]\ntype = \"files\"\npath = \"src\"\n",
    )
    .unwrap();
    file
}

#[test]
fn the_kubernetes_recipe_is_a_valid_indexed_job_whose_pods_and_commit_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = pipeline(dir);
    let vars = [("RUN_ID", "nightly-20261130"), ("SHARDS", "3")];
    let shards = manifest("shards.yaml", &vars);
    let commit = manifest("commit.yaml", &vars);
    check_job(&shards, "shards.yaml");
    check_job(&commit, "commit.yaml");
    let spec = &shards["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!(spec["completions"], 3);
    assert_eq!(spec["parallelism"], 3);
    assert!(spec["backoffLimitPerIndex"].is_u64());
    assert_eq!(commit["spec"]["completions"], 1);

    // The commit before every pod finished: refused, naming the missing shards.
    for index in [0, 2] {
        let out = run_pod(
            dir,
            &shards,
            &file,
            &[("JOB_COMPLETION_INDEX".into(), index.to_string())],
        );
        assert!(out.status.success());
    }
    let out = run_pod(dir, &commit, &file, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--shard 1/3"));
    // The retried index, then the commit Job again.
    let out = run_pod(
        dir,
        &shards,
        &file,
        &[("JOB_COMPLETION_INDEX".into(), "1".into())],
    );
    assert!(out.status.success());
    let out = run_pod(dir, &commit, &file, &[]);
    assert!(out.status.success());
    assert_eq!(document_rows(&dir.join("db"), "c").len(), 6);
}

#[test]
fn the_slurm_recipe_submits_an_array_and_a_commit_that_waits_for_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = pipeline(dir);
    let slurm = repo().join("deploy/slurm");
    for script in ["submit.sh", "shards.sbatch", "commit.sbatch"] {
        let out = Command::new("bash")
            .arg("-n")
            .arg(slurm.join(script))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A stand-in sbatch: an array runs its tasks one after the other with the
    // variables Slurm sets; a job depending on it runs after it (afterok).
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_moulin"), bin.join("moulin")).unwrap();
    let sbatch = bin.join("sbatch");
    fs::write(
        &sbatch,
        r#"#!/usr/bin/env bash
set -euo pipefail
array=""; dependency=""
while [[ $1 == --* ]]; do
  case $1 in
    --array=*) array=${1#--array=} ;;
    --dependency=*) dependency=${1#--dependency=} ;;
    --parsable) ;;
    *) echo "sbatch stand-in: unknown option $1" >&2; exit 1 ;;
  esac
  shift
done
script=$1; shift
grep -q '^#SBATCH --job-name=' "$script"
echo "$script $* array=$array dependency=$dependency" >> "$SBATCH_LOG"
if [ -n "$array" ]; then
  first=${array%-*}; last=${array#*-}
  for ((i = first; i <= last; i++)); do
    SLURM_ARRAY_JOB_ID=4242 SLURM_ARRAY_TASK_ID=$i SLURM_ARRAY_TASK_MIN=$first \
      SLURM_ARRAY_TASK_COUNT=$((last - first + 1)) bash "$script" "$@" >&2
  done
  echo 4242
else
  [[ $dependency == afterok:4242 ]]
  bash "$script" "$@" >&2
  echo 4243
fi
"#,
    )
    .unwrap();
    fs::set_permissions(&sbatch, fs::Permissions::from_mode(0o755)).unwrap();
    let log = dir.join("sbatch.log");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = Command::new("bash")
        .arg(slurm.join("submit.sh"))
        .arg(&file)
        .arg("3")
        .current_dir(dir)
        .env("PATH", path)
        .env("SBATCH_LOG", &log)
        .env("NO_COLOR", "1")
        .env_remove("MOULIN_DB")
        .env_remove("MOULIN_RUN_ID")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("run slurm-4242: 3 shards"));
    let submitted = fs::read_to_string(&log).unwrap();
    assert!(
        submitted.contains("shards.sbatch") && submitted.contains("array=0-2"),
        "{submitted}"
    );
    assert!(submitted.contains("commit.sbatch 4242"), "{submitted}");
    assert_eq!(document_rows(&dir.join("db"), "c").len(), 6);
    // The run is recorded under the array's id.
    let out = common::run_in(
        dir,
        &["collections", "runs", "-c", "c", "--db", "db", "--json"],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("slurm-4242"));
}

/// A Ray cluster on 127.0.0.1 (a head node with 2 CPUs), stopped when dropped.
struct RayCluster {
    ray: PathBuf,
    address: String,
    temp: tempfile::TempDir,
}

impl RayCluster {
    fn start() -> RayCluster {
        let ray = python().with_file_name("ray");
        assert!(
            ray.exists(),
            "{} is missing: scripts/test.sh installs ray",
            ray.display()
        );
        let port = common::free_port();
        // Ray's session folder path must stay short (it holds Unix sockets).
        let temp = tempfile::Builder::new()
            .prefix("ray")
            .tempdir_in("/tmp")
            .unwrap();
        let out = Command::new(&ray)
            .args([
                "start",
                "--head",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
            ])
            .arg(port.to_string())
            .args([
                "--num-cpus",
                "2",
                "--include-dashboard",
                "false",
                "--disable-usage-stats",
            ])
            .arg(format!("--temp-dir={}", temp.path().display()))
            .env("RAY_USAGE_STATS_ENABLED", "0")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ray start: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        RayCluster {
            ray,
            address: format!("127.0.0.1:{port}"),
            temp,
        }
    }
}

impl Drop for RayCluster {
    fn drop(&mut self) {
        let _ = Command::new(&self.ray).args(["stop", "--force"]).output();
        let _ = &self.temp;
    }
}

#[test]
fn the_ray_driver_runs_shards_as_tasks_on_a_local_cluster_then_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let file = pipeline(dir);
    let cluster = RayCluster::start();
    let out = Command::new(python())
        .arg(repo().join("scripts/moulin_ray.py"))
        .arg(&file)
        .args([
            "--shards",
            "3",
            "--address",
            &cluster.address,
            "--run-id",
            "ray-test",
        ])
        .args(["--cpus", "0.5", "--moulin", env!("CARGO_BIN_EXE_moulin")])
        .arg("--cwd")
        .arg(dir)
        .env("NO_COLOR", "1")
        .env("RAY_USAGE_STATS_ENABLED", "0")
        .env_remove("MOULIN_DB")
        .env_remove("MOULIN_RUN_ID")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(out.status.success(), "{stderr}");
    for i in 0..3 {
        assert!(stderr.contains(&format!("shard {i}/3: ")), "{stderr}");
    }
    assert_eq!(document_rows(&dir.join("db"), "c").len(), 6);
    let out = common::run_in(
        dir,
        &["collections", "runs", "-c", "c", "--db", "db", "--json"],
    );
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    assert_eq!(runs[0]["run_id"], "ray-test");
    assert_eq!(runs[0]["status"], "complete");
    assert_eq!(runs[0]["added"], 6);
}
