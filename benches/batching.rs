//! Continuous against static batching on a mixed-length batch: 64 prompts
//! (32 to 128 tokens) asking for 16 to 256 new tokens (end-of-sequence
//! ignored, greedy), 16 sequences at a time, in one run on the default model.
//! Static: groups of 16 in turn, each waiting for its longest answer.
//! Continuous: `generate_each`, a finished sequence's row taken at once by the
//! next prompt.
//!
//! Run: `source scripts/setup.sh && cargo bench --profile dev --bench batching`
//! (`BATCHING_PROMPTS`, `BATCHING_ROWS` change the 64 and the 16).

use std::time::Instant;

use moulin::llm::{self, Llm, LoadOptions, Request};

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let n = env_usize("BATCHING_PROMPTS", 64);
    let rows = env_usize("BATCHING_ROWS", 16);
    let llm = Llm::load(&llm::default_model_path(), &LoadOptions::default()).expect("model loads");
    let text = "Le présent arrêté fixe les conditions dans lesquelles les services de l'État \
        instruisent les demandes de subvention présentées par les collectivités territoriales, \
        les établissements publics et les associations. ";
    let ids = llm.tokenizer.encode_plain(&text.repeat(30)).unwrap();
    // Lengths spread evenly but shuffled (a fixed permutation): a batch file
    // mixes short and long answers.
    let requests: Vec<Request> = (0..n)
        .map(|i| {
            let j = (i * 37) % n;
            let prompt = 32 + (j * 96) / n.max(1);
            let new = 16 + (((j * 53) % n) * 240) / n.max(1);
            Request {
                prompt: ids[i..i + prompt].to_vec(),
                max_new_tokens: new,
                ignore_eos: true,
                ..Request::default()
            }
        })
        .collect();
    let tokens: usize = requests.iter().map(|r| r.max_new_tokens).sum();
    println!(
        "{n} prompts of 32-128 tokens, 16-256 new tokens each ({tokens} in all), {rows} sequences at a time, {}",
        llm.report.weight_dtype
    );

    let started = Instant::now();
    let mut static_out = Vec::new();
    for group in requests.chunks(rows) {
        let (out, _) = llm.generate(group).expect("static batch");
        static_out.extend(out.into_iter().map(|c| c.tokens));
    }
    let static_seconds = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut continuous_out = vec![Vec::new(); n];
    llm.generate_each(&requests, rows, |i, c| {
        continuous_out[i] = c.tokens;
        Ok(())
    })
    .expect("continuous batch");
    let continuous_seconds = started.elapsed().as_secs_f64();
    assert_eq!(static_out, continuous_out, "the same answers either way");

    println!("| batching | seconds | generated tokens/s |");
    println!("|---|---|---|");
    for (name, s) in [
        ("static", static_seconds),
        ("continuous", continuous_seconds),
    ] {
        println!("| {name} | {s:.1} | {:.1} |", tokens as f64 / s);
    }
    println!(
        "continuous / static throughput: {:.2}",
        static_seconds / continuous_seconds
    );
}
