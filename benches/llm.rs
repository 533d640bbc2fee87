//! The LLM runner on the CPU: prompt processing and generation tokens/s at batch
//! sizes 1, 4 and 16, and peak memory, side by side in one run with llama.cpp
//! (the `llama-cpp-python` package) on the same GGUF files, prompt tokens and
//! thread count. The files: the registry SmolLM2 Q4_1 and, made from it by
//! llama.cpp's quantizer (`scripts/requantize.py`, when llama-cpp-python is
//! there), its Q4_K_M and Q8_0 versions.
//!
//! Run: `source scripts/setup.sh && cargo bench --profile dev --bench llm`
//!
//! Every case runs in its own process (this binary re-executed, or
//! `scripts/llama_cpp_bench.py`), so its peak resident memory is its own.
//! Environment: `LLM_BENCH_THREADS` (default: all cores), `LLM_BENCH_PROMPT`
//! (prompt tokens per sequence, default 128), `LLM_BENCH_GEN` (new tokens per
//! sequence, default 64), `LLM_BENCH_BATCHES` (default "1 4 16"),
//! `LLM_BENCH_MODELS` (GGUF files, space-separated), `LLM_BENCH_REPEATS`
//! (runs of each case, default 3), `LLAMA_PYTHON` (a Python with llama-cpp-python, default
//! `/tmp/llamavenv/bin/python` when it exists; `LLAMA=0` skips llama.cpp).
//! With `MOULIN_LLM_PHASES=1`, a case's JSON line (`--case BATCH PROMPT GEN
//! IDS_FILE MODEL` runs one alone) also gives its milliseconds of work and of
//! waiting per phase of the forward pass ([`moulin::llm::phases`]).
//!
//! A case runs `LLM_BENCH_REPEATS` times, the two runners alternated, and the
//! summary gives the ratio of their medians and the range of the ratios of
//! runs side by side: on a shared 2-core machine one run of a case moves by
//! up to a quarter from the next, for both runners. Before each pair the
//! bench measures how long a cache line takes between two cores and back
//! (`trip ns`), which on a virtual machine changes as the host moves its
//! cores (see [`core_round_trip_ns`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use moulin::llm::{self, Llm, LoadOptions, Request};

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `batch` prompts of `len` tokens: a French administrative text, each row
/// starting further into it.
fn prompts(llm: &Llm, batch: usize, len: usize) -> Vec<Vec<u32>> {
    let text = "Le présent arrêté fixe les conditions dans lesquelles les services de l'État \
        instruisent les demandes de subvention présentées par les collectivités territoriales, \
        les établissements publics et les associations. La demande comporte une description du \
        projet, son budget prévisionnel, le calendrier de réalisation et la liste des autres \
        financements sollicités. ";
    let ids = llm.tokenizer.encode_plain(&text.repeat(40)).unwrap();
    (0..batch)
        .map(|b| ids[b * 7..b * 7 + len].to_vec())
        .collect()
}

/// One case in this process: write the prompt ids for llama.cpp to `ids_file`,
/// run, and print a JSON line with the figures.
fn run_case(batch: usize, prompt: usize, new_tokens: usize, ids_file: &Path, path: &Path) {
    let llm = Llm::load(path, &LoadOptions::default()).expect("model loads");
    let ids = prompts(&llm, batch, prompt);
    std::fs::write(ids_file, serde_json::to_string(&ids).unwrap()).unwrap();
    let requests: Vec<Request> = ids
        .into_iter()
        .map(|p| Request {
            prompt: p,
            max_new_tokens: new_tokens,
            ignore_eos: true,
            ..Request::default()
        })
        .collect();
    // Warm up (first-touch allocations), then measure.
    let _ = llm.generate(
        &requests[..1]
            .iter()
            .cloned()
            .map(|mut r| {
                r.max_new_tokens = 4;
                r
            })
            .collect::<Vec<_>>(),
    );
    moulin::llm::phases::reset();
    let (out, t) = llm.generate(&requests).expect("generation runs");
    // With `MOULIN_LLM_PHASES=1`: milliseconds of work and of waiting per
    // phase, summed over threads, the prompt pass and the decoding steps.
    let phases: serde_json::Map<String, serde_json::Value> = moulin::llm::phases::totals()
        .into_iter()
        .filter(|_| moulin::llm::phases::enabled())
        .map(|p| {
            let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
            (
                p.phase.name().to_string(),
                serde_json::json!([ms(p.work), ms(p.wait)]),
            )
        })
        .collect();
    assert!(out.iter().all(|c| c.tokens.len() == new_tokens));
    // The prompt pass gives the first token; the decoding passes the other new_tokens - 1.
    let decode_tokens = batch * (new_tokens - 1);
    println!(
        "{}",
        serde_json::json!({
            "pp_tps": t.prompt_tokens as f64 / t.prompt_seconds,
            "gen_tps": decode_tokens as f64 / t.generate_seconds,
            "prompt_seconds": t.prompt_seconds,
            "generate_seconds": t.generate_seconds,
            "load_seconds": llm.report.seconds,
            "phases": phases,
        })
    );
}

/// A case's JSON line, peak RSS in MB and wall seconds, when it ran.
type Measured = Option<(serde_json::Value, f64, f64)>;

/// Run a command; its stdout's last line as JSON, and its peak RSS in MB.
// The child is reaped by wait4, which returns its rusage.
#[allow(clippy::zombie_processes)]
fn measured(cmd: &mut Command) -> Measured {
    use std::io::Read;
    let started = Instant::now();
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().ok()?;
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, writing into values we own.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert!(pid > 0, "wait4 failed");
    let wall = started.elapsed().as_secs_f64();
    let out = reader.join().unwrap();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        eprintln!("case failed:\n{out}");
        return None;
    }
    let json = serde_json::from_str(out.lines().last()?).ok()?;
    Some((json, usage.ru_maxrss as f64 / 1024.0, wall))
}

fn llama_python() -> Option<PathBuf> {
    if std::env::var("LLAMA").as_deref() == Ok("0") {
        return None;
    }
    let p = std::env::var_os("LLAMA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/llamavenv/bin/python"));
    p.exists().then_some(p)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let n = |k: usize| args[i + k].parse::<usize>().unwrap();
        run_case(
            n(1),
            n(2),
            n(3),
            Path::new(&args[i + 4]),
            Path::new(&args[i + 5]),
        );
        return;
    }
    // cargo bench passes --bench; anything else is a filter we do not use.
    let threads = env_usize(
        "LLM_BENCH_THREADS",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let prompt = env_usize("LLM_BENCH_PROMPT", 128);
    let new_tokens = env_usize("LLM_BENCH_GEN", 64);
    let batches: Vec<usize> = std::env::var("LLM_BENCH_BATCHES")
        .unwrap_or_else(|_| "1 4 16".into())
        .split_whitespace()
        .filter_map(|b| b.parse().ok())
        .collect();
    let default = llm::default_model_path();
    assert!(
        default.is_file(),
        "{} missing: run scripts/setup.sh",
        default.display()
    );
    let exe = std::env::current_exe().unwrap();
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let python = llama_python();
    let models: Vec<PathBuf> = match std::env::var("LLM_BENCH_MODELS") {
        Ok(list) => list.split_whitespace().map(PathBuf::from).collect(),
        Err(_) => {
            let mut models = vec![default.clone()];
            for kind in ["Q4_K_M", "Q8_0"] {
                let path = default.with_file_name(
                    default
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .replace("Q4_1", kind),
                );
                if !path.is_file()
                    && let Some(py) = &python
                {
                    let ok = Command::new(py)
                        .arg(scripts.join("requantize.py"))
                        .args([&default, &path])
                        .arg(kind)
                        .output()
                        .is_ok_and(|o| o.status.success());
                    if !ok {
                        eprintln!("could not write {}", path.display());
                    }
                }
                if path.is_file() {
                    models.push(path);
                }
            }
            models
        }
    };
    println!(
        "LLM runner on cpu (weights in their file's blocks), {threads} threads, prompts of {prompt} tokens, {new_tokens} new tokens (greedy, EOS ignored)"
    );
    println!(
        "{:<34} {:<10} {:>6} {:>12} {:>12} {:>10} {:>9}",
        "model", "runner", "batch", "prompt t/s", "gen t/s", "peak MB", "trip ns"
    );
    let repeats = env_usize("LLM_BENCH_REPEATS", 3).max(1);
    let mut results = Vec::new();
    for model in &models {
        let file = model.file_name().unwrap().to_string_lossy().to_string();
        for &batch in &batches {
            // The prompt ids both runners get, written by our case (this process
            // never loads the model: a child's peak memory would count it).
            let ids_file = std::env::temp_dir().join(format!("moulin-llm-bench-{batch}.json"));
            let (mut runs, mut trips) = (Vec::new(), Vec::new());
            for _ in 0..repeats {
                let trip = core_round_trip_ns();
                let ours = measured(
                    Command::new(&exe)
                        .args([
                            "--case",
                            &batch.to_string(),
                            &prompt.to_string(),
                            &new_tokens.to_string(),
                        ])
                        .arg(&ids_file)
                        .arg(model)
                        .env("RAYON_NUM_THREADS", threads.to_string()),
                );
                let theirs = python.as_ref().and_then(|py| {
                    measured(
                        Command::new(py)
                            .arg(scripts.join("llama_cpp_bench.py"))
                            .arg(model)
                            .arg(&ids_file)
                            .args([&new_tokens.to_string(), &threads.to_string()]),
                    )
                });
                for (name, r) in [("moulin", &ours), ("llama.cpp", &theirs)] {
                    if let Some((json, rss, _)) = r {
                        println!(
                            "{file:<34} {name:<10} {batch:>6} {:>12.1} {:>12.1} {:>10.0} {:>9}",
                            json["pp_tps"].as_f64().unwrap_or(f64::NAN),
                            json["gen_tps"].as_f64().unwrap_or(f64::NAN),
                            rss,
                            trip.map_or("-".into(), |t| format!("{t:.0}"))
                        );
                    }
                }
                runs.push((ours, theirs));
                trips.extend(trip);
            }
            results.push((file.clone(), batch, runs, trips));
            let _ = std::fs::remove_file(&ids_file);
        }
    }
    println!();
    let gen_of = |r: &Measured| r.as_ref().and_then(|r| r.0["gen_tps"].as_f64());
    let pp_of = |r: &Measured| r.as_ref().and_then(|r| r.0["pp_tps"].as_f64());
    let mem_of = |r: &Measured| r.as_ref().map(|r| r.1);
    for (file, batch, runs, trips) in &results {
        // Per figure: the ratio of the runners' medians, and the lowest and
        // highest ratio of two runs side by side.
        let ratio = |f: &dyn Fn(&Measured) -> Option<f64>| {
            let ours: Vec<f64> = runs.iter().filter_map(|(o, _)| f(o)).collect();
            let theirs: Vec<f64> = runs.iter().filter_map(|(_, t)| f(t)).collect();
            let pairs: Vec<f64> = runs
                .iter()
                .filter_map(|(o, t)| f(o).zip(f(t)).map(|(a, b)| a / b))
                .collect();
            if pairs.is_empty() {
                return None;
            }
            let low = pairs.iter().copied().fold(f64::INFINITY, f64::min);
            let high = pairs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            Some((median(ours)? / median(theirs)?, low, high))
        };
        if let (Some(g), Some(p), Some(m)) = (ratio(&gen_of), ratio(&pp_of), ratio(&mem_of)) {
            let trips = match (
                trips.iter().copied().reduce(f64::min),
                trips.iter().copied().reduce(f64::max),
            ) {
                (Some(low), Some(high)) => format!(", core round trips {low:.0}–{high:.0} ns"),
                _ => String::new(),
            };
            println!(
                "{file} batch {batch}: moulin / llama.cpp over {} runs: generation {:.2} ({:.2}–{:.2}), prompt {:.2} ({:.2}–{:.2}), peak memory {:.2}{trips}",
                runs.len(),
                g.0,
                g.1,
                g.2,
                p.0,
                p.1,
                p.2,
                m.0
            );
        }
    }
}

/// How long a cache line takes to go from one core to another and back, in
/// ns: two threads on the first two cores this process may use hand an atomic
/// counter back and forth. Measured before each pair of runs because on a
/// virtual machine it is not a constant: on this development machine the
/// host moved the two virtual cores between about 60 ns apart (sharing a
/// last-level cache) and about 330 ns (not), for seconds at a time, and every
/// trip a forward pass makes between its threads costs accordingly. `None`
/// with fewer than two cores.
fn core_round_trip_ns() -> Option<f64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    // SAFETY: a zeroed cpu_set_t is an empty set, filled by the call.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: our own affinity, into a set we own, of its own size.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) } != 0 {
        return None;
    }
    // SAFETY: `cpu` below CPU_SETSIZE, in a set we own.
    let cores: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .take(2)
        .collect();
    let &[first, second] = cores.as_slice() else {
        return None;
    };
    let pin = |cpu: usize| {
        // SAFETY: as above, for the calling thread alone.
        unsafe {
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            libc::sched_setaffinity(0, std::mem::size_of_val(&one), &one);
        }
    };
    const TRIPS: u64 = 100_000;
    let ball = AtomicU64::new(0);
    // Both ends on threads of their own: this one's affinity, which the
    // runners' processes inherit, stays as it was.
    std::thread::scope(|s| {
        s.spawn(|| {
            pin(second);
            for i in 0..TRIPS {
                while ball.load(Ordering::Acquire) != 2 * i + 1 {
                    std::hint::spin_loop();
                }
                ball.store(2 * i + 2, Ordering::Release);
            }
        });
        s.spawn(|| {
            pin(first);
            let started = Instant::now();
            for i in 0..TRIPS {
                ball.store(2 * i + 1, Ordering::Release);
                while ball.load(Ordering::Acquire) != 2 * i + 2 {
                    std::hint::spin_loop();
                }
            }
            started.elapsed().as_secs_f64() * 1e9 / TRIPS as f64
        })
        .join()
        .ok()
    })
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}
