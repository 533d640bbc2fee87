//! End to end: `moulin ingest` on a corpus of 500+ pages, pages/s and peak memory, side
//! by side with the reference pipeline (`../shared/peers/peer_ingest.py`, OpenGateLLM's
//! recipe) on the same files, model and thread count, in the same run.
//!
//! Run: `source scripts/setup.sh && cargo bench --bench end_to_end`
//! Inputs: `MOULIN_BENCH_INPUTS` (space-separated paths), else a default set from
//! `../shared/corpus`. The peer runs when `PEER_PYTHON` names a Python with the peer's
//! requirements (default `/tmp/peervenv/bin/python` if it exists); `PEER=0` skips it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn default_inputs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("../shared/corpus");
    let mut v = vec![root.join("fixtures/demo")];
    for rel in [
        "pdf/french",
        "pdf/large",
        "pdf/multilingual/pypdf_009_GeoTopo_german_117p.pdf",
        "pdf/producers/pdfjs_tracemonkey_2col_acm.pdf",
        "spreadsheets/french/piaf-ml_time_report.ods",
        "html/gouv_fr",
    ] {
        let p = corpus.join(rel);
        if p.exists() {
            v.push(p);
        }
    }
    v
}

/// Run a command to its end: its exit code, wall seconds, stdout, and the peak resident
/// memory (MB) of it and of the processes it waited for (the extraction workers).
// The child is reaped by wait4, which std's wait cannot replace: it returns the rusage.
#[allow(clippy::zombie_processes)]
fn run_measured(cmd: &mut Command) -> (i32, f64, Vec<u8>, f64) {
    use std::io::Read;
    let t = Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the command starts");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).unwrap();
        buf
    });
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, writing into values we own.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert!(pid > 0, "wait4 failed");
    let seconds = t.elapsed().as_secs_f64();
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (
        code,
        seconds,
        reader.join().unwrap(),
        usage.ru_maxrss as f64 / 1024.0,
    )
}

struct Measure {
    seconds: f64,
    peak_mb: f64,
    pages: u64,
    chunks: u64,
    embed_seconds: f64,
}

fn main() {
    let inputs: Vec<PathBuf> = match std::env::var("MOULIN_BENCH_INPUTS") {
        Ok(s) => s.split_whitespace().map(PathBuf::from).collect(),
        Err(_) => default_inputs(),
    };
    let tmp = tempfile::tempdir().unwrap();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk_size = std::env::var("CHUNK_SIZE").unwrap_or_else(|_| "2048".into());
    println!(
        "inputs: {inputs:?}\nthreads: {threads}, chunks of {chunk_size} characters, no overlap (the peer's recipe)"
    );

    // moulin, as a user runs it.
    let report = tmp.path().join("report.json");
    let (code, seconds, _, peak_mb) = run_measured(
        Command::new(env!("CARGO_BIN_EXE_moulin"))
            .arg("ingest")
            .args(&inputs)
            .args(["--collection", "bench", "--db"])
            .arg(tmp.path().join("moulin-db"))
            .args([
                "--chunk-size",
                &chunk_size,
                "--overlap",
                "0",
                "--quiet",
                "--report",
            ])
            .arg(&report),
    );
    assert!((0..=1).contains(&code), "moulin failed: exit code {code}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let moulin = Measure {
        seconds,
        peak_mb,
        pages: r["totals"]["pages"].as_u64().unwrap_or(0),
        chunks: r["totals"]["chunks"].as_u64().unwrap_or(0),
        embed_seconds: r["seconds"]["embed"].as_f64().unwrap_or(0.0),
    };
    print_row("moulin", &moulin);

    let peer_python =
        std::env::var("PEER_PYTHON").unwrap_or_else(|_| "/tmp/peervenv/bin/python".into());
    let peer_script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/peers/peer_ingest.py");
    if std::env::var("PEER").as_deref() == Ok("0")
        || !Path::new(&peer_python).exists()
        || !peer_script.exists()
    {
        println!(
            "peer: skipped (set PEER_PYTHON to a Python with ../shared/peers/requirements.txt)"
        );
        return;
    }
    let model_dir = moulin::embed::model_folder(moulin::embed::DEFAULT_MODEL);
    let (_, seconds, stdout, peak_mb) = run_measured(
        Command::new(&peer_python)
            .arg(&peer_script)
            .args(&inputs)
            .arg("--model-dir")
            .arg(&model_dir)
            .arg("--db")
            .arg(tmp.path().join("peer-db"))
            .args([
                "--prefix",
                "passage: ",
                "--threads",
                &threads.to_string(),
                "--chunk-size",
                &chunk_size,
            ]),
    );
    let p: serde_json::Value = serde_json::from_slice(&stdout)
        .unwrap_or_else(|_| panic!("peer output: {}", String::from_utf8_lossy(&stdout)));
    let peer = Measure {
        seconds,
        peak_mb,
        pages: p["pages"].as_u64().unwrap_or(0),
        chunks: p["chunks"].as_u64().unwrap_or(0),
        embed_seconds: p["seconds"]["embed"].as_f64().unwrap_or(0.0),
    };
    print_row("peer", &peer);
    println!(
        "moulin / peer wall time: {:.2} (moulin {:.1} s, peer {:.1} s); peer failures: {}",
        moulin.seconds / peer.seconds,
        moulin.seconds,
        peer.seconds,
        p["failures"]
    );
}

fn print_row(name: &str, m: &Measure) {
    println!(
        "{name:>7}: {:.1} s, {} pages ({:.2} pages/s), {} chunks, embedding {:.1} s ({:.2} chunks/s), peak memory {:.0} MB",
        m.seconds,
        m.pages,
        m.pages as f64 / m.seconds,
        m.chunks,
        m.embed_seconds,
        m.chunks as f64 / m.embed_seconds.max(1e-9),
        m.peak_mb
    );
}
