//! The LLM runner on the real default model (SmolLM2-135M-Instruct, Q4_1 GGUF,
//! installed by scripts/setup.sh): answers, batching, logits against an
//! independent NumPy forward pass, tokenizer, model files, and `moulin generate`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use moulin::llm::{self, Llm, LoadOptions, Message, Request, Sampling};

fn model_path() -> PathBuf {
    let path = llm::default_model_path();
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup.sh (the README's test command does)",
        path.display()
    );
    path
}

/// The model is loaded once for the tests of this file (its weights kept in
/// their Q4_1 and Q8_0 blocks). Questions that expect "Paris" ask for a
/// one-word answer: to the bare question, this 135M model's first token is a
/// near tie that llama.cpp itself answers "L'Étoile, la Cité…" (see
/// tests/quantized.rs for the comparison with llama.cpp).
fn smollm() -> &'static Llm {
    static LLM: OnceLock<Llm> = OnceLock::new();
    LLM.get_or_init(|| {
        Llm::load(&model_path(), &LoadOptions::default()).expect("the default model loads")
    })
}

/// The same file dequantized to f16 (`--dtype f16`).
fn smollm_f16() -> &'static Llm {
    static LLM: OnceLock<Llm> = OnceLock::new();
    LLM.get_or_init(|| {
        let options = LoadOptions {
            dtype: Some(llm::WeightDtype::F16),
            ..LoadOptions::default()
        };
        Llm::load(&model_path(), &options).expect("the default model loads in f16")
    })
}

fn greedy(prompt: Vec<u32>, max_new_tokens: usize) -> Request {
    Request {
        prompt,
        max_new_tokens,
        ..Request::default()
    }
}

fn chat(llm: &Llm, text: &str) -> Vec<u32> {
    llm.prompt_ids(&[Message::user(text)], false).unwrap()
}

#[test]
fn greedy_answer_to_the_capital_of_france_names_paris() {
    let llm = smollm();
    let prompt = chat(llm, "What is the capital of France? Answer in one word.");
    let (out, timings) = llm.generate(&[greedy(prompt, 32)]).unwrap();
    eprintln!("{:?} {timings:?}", out[0].text);
    assert!(out[0].text.contains("Paris"), "{:?}", out[0].text);
    // The model says its sentence and ends its turn.
    assert_eq!(out[0].finish, llm::Finish::Stop);
}

#[test]
fn batched_greedy_equals_one_at_a_time() {
    let llm = smollm();
    let prompts = [
        "What is the capital of France?",
        "Write one sentence about the sea.",
        "Quelle est la langue officielle de la France ? Réponds en une phrase.",
        "List three colours.",
    ];
    let requests: Vec<Request> = prompts.iter().map(|p| greedy(chat(llm, p), 24)).collect();
    let lengths: Vec<usize> = requests.iter().map(|r| r.prompt.len()).collect();
    assert!(
        lengths.windows(2).any(|w| w[0] != w[1]),
        "prompts of different lengths: {lengths:?}"
    );

    let (batched, _) = llm.generate(&requests).unwrap();
    for (request, together) in requests.iter().zip(&batched) {
        let (alone, _) = llm.generate(std::slice::from_ref(request)).unwrap();
        assert_eq!(
            together.tokens, alone[0].tokens,
            "{:?} vs {:?}",
            together.text, alone[0].text
        );
        assert!(!together.tokens.is_empty());
    }
}

#[test]
fn sampling_is_deterministic_for_a_seed() {
    let llm = smollm();
    let sampled = |seed| {
        let r = Request {
            prompt: chat(llm, "Tell me a word."),
            max_new_tokens: 12,
            sampling: Sampling {
                temperature: 1.0,
                top_k: 40,
                top_p: 0.95,
                seed,
            },
            ..Request::default()
        };
        llm.generate(&[r]).unwrap().0.remove(0).tokens
    };
    assert_eq!(sampled(7), sampled(7));
    let draws: std::collections::HashSet<Vec<u32>> = (0..4).map(sampled).collect();
    assert!(draws.len() > 1, "different seeds draw differently");
}

/// The phase clock behind `MOULIN_LLM_PHASES=1` (benches/llm.md) counts work
/// in every phase a short pass runs, so its totals say where a step goes.
/// Other tests' passes may add to the totals meanwhile; they only add.
#[test]
fn the_phase_clock_counts_every_phase_of_a_pass() {
    use moulin::llm::phases::{self, Phase};
    let llm = smollm();
    phases::enable();
    let before = phases::totals();
    let prompts = ["Bonjour", "Quelle est la capitale de la France ?"];
    let requests: Vec<Request> = prompts.iter().map(|p| greedy(chat(llm, p), 4)).collect();
    llm.generate(&requests).expect("generation runs");
    let after = phases::totals();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.phase, b.phase);
        // Prompts of one chunk prepare their heads inside the attention phase.
        if a.phase != Phase::Prepare {
            assert!(
                a.work > b.work,
                "{} counted no work: {:?} then {:?}",
                a.phase.name(),
                b.work,
                a.work
            );
        }
        assert!(a.wait >= b.wait);
    }
}

#[test]
fn stop_strings_and_max_new_tokens_end_a_sequence() {
    let llm = smollm();
    let prompt = chat(llm, "What is the capital of France? Answer in one word.");
    let mut r = greedy(prompt.clone(), 32);
    r.stop = vec!["France".into()];
    let (out, _) = llm.generate(&[r, greedy(prompt, 3)]).unwrap();
    assert!(!out[0].text.contains("France"), "{:?}", out[0].text);
    assert_eq!(out[0].finish, llm::Finish::Stop);
    assert_eq!(out[1].tokens.len(), 3);
    assert_eq!(out[1].finish, llm::Finish::Length);
}

#[test]
fn a_request_longer_than_the_context_is_refused() {
    let llm = smollm();
    let err = llm
        .generate(&[greedy(vec![1; 10], llm.context)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("exceed the context"), "{err}");
}

/// Logits of the first forward pass against `scripts/llm_reference.py`, an
/// independent NumPy reading of the same GGUF file in float64: with f32
/// weights within 1e-3 (measured: about 1e-4 on logits of about ±30), with f16
/// weights within 0.1 and the same most likely tokens. (The default, products
/// on the quantized blocks with 8-bit inputs as llama.cpp computes them, is
/// checked against llama.cpp itself in tests/quantized.rs.)
#[test]
fn logits_match_the_numpy_reference() {
    let text =
        std::fs::read_to_string(common::fixtures().join("llm/reference_logits.json")).unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<u32> = reference["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let positions: Vec<Vec<f64>> = serde_json::from_value(reference["positions"].clone()).unwrap();
    let top10: Vec<(u32, f64)> = serde_json::from_value(reference["last_top10"].clone()).unwrap();

    // f32 weights and an f32 KV cache: the float64 reference to 1e-3.
    let f32_model = Llm::load(
        &model_path(),
        &LoadOptions {
            dtype: Some(llm::WeightDtype::F32),
            kv_cache: llm::KvDtype::F32,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    for (llm, tolerance) in [(&f32_model, 1e-3), (smollm_f16(), 0.1)] {
        // The whole prompt at once, then the same prompt token by token through
        // the KV cache: both must give the reference's logits.
        let all = llm.logits_by_chunks(&ids, ids.len()).unwrap();
        let stepped = llm.logits_by_chunks(&ids, 1).unwrap();
        let mut worst: f64 = 0.0;
        for (p, expected) in positions.iter().enumerate() {
            for (j, e) in expected.iter().enumerate() {
                worst = worst.max((f64::from(stepped[p][j]) - e).abs());
            }
        }
        let last = all.last().unwrap();
        for &(id, value) in &top10 {
            worst = worst.max((f64::from(last[id as usize]) - value).abs());
            worst = worst.max((f64::from(stepped.last().unwrap()[id as usize]) - value).abs());
        }
        eprintln!(
            "{}: largest difference from the reference {worst:.2e} (tolerance {tolerance})",
            llm.report.weight_dtype
        );
        assert!(
            worst < tolerance,
            "logits differ from the reference by {worst}"
        );
        // Same ranking of the most likely next tokens.
        let mut order: Vec<usize> = (0..last.len()).collect();
        order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
        let ours: Vec<u32> = order[..3].iter().map(|&i| i as u32).collect();
        let theirs: Vec<u32> = top10[..3].iter().map(|t| t.0).collect();
        assert_eq!(ours, theirs);
    }
}

#[test]
fn french_text_round_trips_through_the_tokenizer() {
    let llm = smollm();
    let text = "L'État garantit l'égalité d'accès à l'œuvre « publique » : 3,5 % des crédits, déjà votés — voilà. Où ? Ça, là-bas !";
    let ids = llm.tokenizer.encode_plain(text).unwrap();
    assert!(ids.len() > 20);
    assert_eq!(llm.tokenizer.decode(&ids).unwrap(), text);
    // Special tokens written in a prompt are single tokens.
    let ids = llm.tokenizer.encode_plain("<|im_start|>user").unwrap();
    assert_eq!(ids[0], 1);
}

#[test]
fn chat_template_is_chatml_with_the_default_system_prompt() {
    let llm = smollm();
    let text = llm
        .tokenizer
        .apply_chat_template(&[Message::user("Bonjour")])
        .unwrap();
    assert!(text.starts_with("<|im_start|>system\n"), "{text}");
    assert!(
        text.ends_with("<|im_start|>user\nBonjour<|im_end|>\n<|im_start|>assistant\n"),
        "{text}"
    );
}

fn load_error(path: &Path) -> String {
    Llm::load(path, &LoadOptions::default())
        .map(|_| ())
        .expect_err("a broken model must not load")
        .to_string()
}

#[test]
fn corrupt_and_truncated_model_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(model_path()).unwrap();

    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_error(&truncated);
    assert!(err.contains("truncated"), "{err}");

    let header_only = dir.path().join("header.gguf");
    std::fs::write(&header_only, &bytes[..100]).unwrap();
    let err = load_error(&header_only);
    assert!(err.contains("truncated"), "{err}");

    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a model").unwrap();
    let err = load_error(&garbage);
    assert!(err.contains("not a GGUF file"), "{err}");

    // A corrupt count in the header: 2^60 tensors.
    let mut bad = bytes[..4096].to_vec();
    bad[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let bad_count = dir.path().join("count.gguf");
    std::fs::write(&bad_count, &bad).unwrap();
    let err = load_error(&bad_count);
    assert!(err.contains("tensor count 1152921504606846976"), "{err}");
    assert!(err.contains("corrupt header"), "{err}");

    let hf = dir.path().join("gemma");
    std::fs::create_dir(&hf).unwrap();
    std::fs::write(
        hf.join("config.json"),
        r#"{"architectures": ["Gemma3ForCausalLM"], "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}"#,
    )
    .unwrap();
    let err = load_error(&hf);
    assert!(
        err.contains("unsupported architecture Gemma3ForCausalLM"),
        "{err}"
    );
}

/// The same weights as a Hugging Face folder (config.json, safetensors,
/// tokenizer.json) give the same logits as the GGUF file.
#[test]
fn hugging_face_folder_gives_the_gguf_logits() {
    // Both in f16: the folder's safetensors are floats.
    let llm = smollm_f16();
    let dir = tempfile::tempdir().unwrap();
    common::write_hf_folder(llm, &model_path(), dir.path());
    let hf = Llm::load(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(hf.report.weight_bytes, llm.report.weight_bytes);
    assert_eq!(hf.report.parameters, llm.report.parameters);
    let ids = chat(llm, "What is the capital of France?");
    assert_eq!(chat(&hf, "What is the capital of France?"), ids);
    let diff = common::last_logits_diff(llm, &hf, &ids);
    assert!(diff < 1e-3, "{diff}");
}

#[test]
fn generate_command_prints_the_answer() {
    let out = common::run(&[
        "generate",
        "What is the capital of France? Answer in one word.",
        "--max-new-tokens",
        "24",
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Paris"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tokens/s"), "{stderr}");
    assert!(stderr.contains("134.5 M parameters"), "{stderr}");
}

#[test]
fn batch_file_resumes_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("prompts.jsonl");
    let mut lines = String::new();
    for i in 0..6 {
        lines.push_str(&format!(
            "{{\"id\": \"q{i}\", \"prompt\": \"Give me the number {i} in words.\", \"max_new_tokens\": 12}}\n"
        ));
    }
    lines.push_str("{\"id\": \"msg\", \"messages\": [{\"role\": \"user\", \"content\": \"Say hello.\"}], \"max_new_tokens\": 8, \"temperature\": 0.7, \"seed\": 3}\n");
    lines.push_str("not json\n");
    std::fs::write(&input, lines).unwrap();

    let run = |output: &Path| {
        common::moulin()
            .args(["generate", "--batch-size", "1", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(output)
            .output()
            .unwrap()
    };
    // A run to the end, for comparison.
    let clean = dir.path().join("clean.jsonl");
    let out = run(&clean);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the bad line fails the run: {out:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("prompts.jsonl:8: not a prompt line"),
        "{stderr}"
    );

    // Killed after its first result, then rerun.
    let output = dir.path().join("answers.jsonl");
    let mut child = common::moulin()
        .args(["generate", "--batch-size", "1", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&output).map_or(0, |t| t.lines().count()) < 2 {
        assert!(started.elapsed().as_secs() < 120, "no result written");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // A line cut in the middle, as a kill during a write leaves it.
    let mut text = std::fs::read_to_string(&output).unwrap();
    let kept = text.lines().count();
    assert!(kept < 7, "killed before the end ({kept} results)");
    text.push_str("{\"id\": \"q5\", \"te");
    std::fs::write(&output, text).unwrap();

    let out = run(&output);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{kept} already done")), "{stderr}");

    let parse = |p: &Path| -> std::collections::BTreeMap<String, String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value =
                    serde_json::from_str(l).expect("every line is complete JSON");
                (
                    v["id"].as_str().unwrap().to_string(),
                    v["text"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let resumed = parse(&output);
    assert_eq!(
        std::fs::read_to_string(&output).unwrap().lines().count(),
        7,
        "each id once"
    );
    assert_eq!(resumed, parse(&clean));
}

/// Continuous batching: with 3 rows for 7 requests of different prompt and
/// answer lengths, each request joins as a row frees up, and every answer is
/// the one it gets alone (greedy).
#[test]
fn continuous_batching_gives_each_answer_it_gets_alone() {
    let llm = smollm();
    let questions = [
        "What is the capital of France?",
        "Name three colours.",
        "Écris une phrase sur la mer.",
        "2 + 2 = ?",
        "Give me a long list of fruits, one per line.",
        "Who wrote Les Misérables?",
        "Dis bonjour.",
    ];
    let requests: Vec<Request> = questions
        .iter()
        .enumerate()
        .map(|(i, q)| greedy(chat(llm, q), 4 + 7 * i))
        .collect();
    let mut finished = Vec::new();
    let mut together = vec![None; requests.len()];
    llm.generate_each(&requests, 3, |i, c| {
        finished.push(i);
        together[i] = Some(c.tokens);
        Ok(())
    })
    .unwrap();
    assert_eq!(finished.len(), requests.len());
    // Short answers finished before longer ones that started earlier.
    assert_ne!(
        finished,
        (0..requests.len()).collect::<Vec<_>>(),
        "{finished:?}"
    );
    for (i, r) in requests.iter().enumerate() {
        let (alone, _) = llm.generate(std::slice::from_ref(r)).unwrap();
        assert_eq!(
            together[i].as_ref().unwrap(),
            &alone[0].tokens,
            "request {i} ({:?})",
            questions[i]
        );
    }
}

/// Requests that each fit the context run together even when the longest
/// prompt plus the longest answer would not: a request whose padding would
/// overflow its row waits for the next prefill group.
#[test]
fn each_request_needs_only_its_own_room_in_the_context() {
    let options = LoadOptions {
        context: 128,
        ..LoadOptions::default()
    };
    let llm = Llm::load(&model_path(), &options).unwrap();
    let long: Vec<u32> = chat(
        &llm,
        "Résume ce texte : le présent arrêté fixe les conditions dans lesquelles les services instruisent les demandes de subvention.",
    );
    let short = chat(&llm, "Dis bonjour.");
    let room = 128 - short.len();
    // Together, the longest prompt and the longest answer overflow the context.
    assert!(
        long.len() + 4 <= 128 && long.len() + room > 128,
        "{}",
        long.len()
    );
    let mut short_answer = greedy(long, 4);
    short_answer.ignore_eos = true;
    let mut long_answer = greedy(short, room);
    long_answer.ignore_eos = true;
    let requests = [short_answer, long_answer];
    let (together, _) = llm.generate(&requests).unwrap();
    for (r, c) in requests.iter().zip(&together) {
        assert_eq!(c.tokens.len(), r.max_new_tokens);
        let (alone, _) = llm.generate(std::slice::from_ref(r)).unwrap();
        assert_eq!(c.tokens, alone[0].tokens);
    }
}
