//! `moulin generate`: one prompt, or a JSONL batch file with resume.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use moulin::config::{Problem, Problems};
use moulin::llm::batch::{self, BatchOptions};
use moulin::llm::{DeviceKind, KvDtype, Llm, LoadOptions, Message, Request, Sampling, WeightDtype};

#[derive(Args)]
pub struct GenerateArgs {
    /// The prompt, sent through the model's chat template (unless --raw).
    #[arg(
        required_unless_present = "input",
        conflicts_with = "input",
        value_name = "PROMPT"
    )]
    prompt: Option<String>,
    /// A JSONL file of prompts: one {"id", "prompt" | "messages", ...} per line.
    #[arg(long, requires = "output", value_name = "FILE")]
    input: Option<PathBuf>,
    /// Where to append results (JSONL); ids already there are skipped.
    #[arg(long, requires = "input", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Language model: a GGUF file or a Hugging Face folder [default: the model setup.sh installs].
    #[arg(
        long,
        env = "MOULIN_LLM",
        hide_env_values = true,
        value_name = "FILE|DIR"
    )]
    llm: Option<PathBuf>,
    /// Where the model runs; GPUs need a build with the matching cargo feature.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Dequantize every weight to this precision. Default: on the CPU, quantized
    /// weights stay in their file's blocks (Q4_K, Q8_0, …) and float weights
    /// become f16; on a GPU, everything is f16.
    #[arg(long, value_enum)]
    dtype: Option<Dtype>,
    /// Precision of the keys and values kept for each token on the CPU: f16
    /// takes half the memory and bandwidth (as llama.cpp keeps them); f32
    /// keeps them exactly.
    #[arg(long, value_enum, default_value_t = Dtype::F16, value_name = "DTYPE")]
    kv_cache: Dtype,
    /// Most tokens generated per answer, at least 1.
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_new_tokens: usize,
    /// Sampling temperature; 0 for greedy decoding.
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    temperature: f32,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0, value_name = "K")]
    top_k: usize,
    /// Sample among the most likely tokens whose probabilities add up to P (0 < P ≤ 1).
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    top_p: f32,
    /// Seed of the sampler: the same seed gives the same answer.
    #[arg(long, default_value_t = 0, value_name = "N")]
    seed: u64,
    /// Stop when the answer contains this text (repeatable).
    #[arg(long, value_name = "TEXT")]
    stop: Vec<String>,
    /// A system message before the prompt.
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Send the prompt as it is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Sequences decoded together (batch files), at least 1: as one ends, the
    /// next prompt takes its place (continuous batching).
    #[arg(long, default_value_t = 8, value_name = "N")]
    batch_size: usize,
    /// Print the answer as JSON with its token counts and timings.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Dtype {
    F32,
    F16,
}

/// Every option checked before the model loads (it takes seconds to minutes).
fn check(
    args: &GenerateArgs,
    model: &std::path::Path,
    sampling: &Sampling,
) -> Result<(), Problems> {
    let mut problems = Problems::new("moulin generate");
    let mut push = |flag: &str, message: String| problems.list.push(Problem::flag(flag, message));
    if !model.exists() {
        push(
            "--llm",
            format!(
                "no language model at {}: run scripts/setup.sh to install the default one, or give a GGUF file or a Hugging Face folder",
                model.display()
            ),
        );
    }
    if let Some(input) = &args.input
        && let Err(m) = super::paths::check_readable(input)
    {
        push("--input", m);
    }
    if let Some(output) = &args.output
        && let Err(m) = super::paths::check_writable(output)
    {
        push("--output", m);
    }
    if args.max_new_tokens == 0 {
        push("--max-new-tokens", "must be at least 1".into());
    }
    if args.batch_size == 0 {
        push("--batch-size", "must be at least 1".into());
    }
    for (key, message) in sampling.problems() {
        push(&format!("--{}", key.replace('_', "-")), message);
    }
    problems.into_result()
}

pub fn command(args: GenerateArgs, quiet: bool) -> Result<u8> {
    let path = args
        .llm
        .clone()
        .unwrap_or_else(moulin::llm::default_model_path);
    let sampling = Sampling {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
    };
    check(&args, &path, &sampling)?;
    let options = LoadOptions {
        device: args.device,
        dtype: args.dtype.map(|d| match d {
            Dtype::F32 => WeightDtype::F32,
            Dtype::F16 => WeightDtype::F16,
        }),
        kv_cache: match args.kv_cache {
            Dtype::F32 => KvDtype::F32,
            Dtype::F16 => KvDtype::F16,
        },
        ..LoadOptions::default()
    };
    let llm = Llm::load(&path, &options)?;
    eprintln!("{}", llm.report);

    if let (Some(input), Some(output)) = (&args.input, &args.output) {
        let options = BatchOptions {
            batch_size: args.batch_size,
            max_new_tokens: args.max_new_tokens,
            sampling,
        };
        let tty = std::io::stderr().is_terminal();
        let report = batch::run(&llm, input, output, &options, |done, total, rate| {
            match (quiet, tty) {
                (true, _) => {}
                (false, true) => eprint!("\r{done}/{total} prompts, {rate:.1} tokens/s   "),
                (false, false) => eprintln!("{done}/{total} prompts, {rate:.1} tokens/s"),
            }
        })
        .with_context(|| format!("batch {}", input.display()))?;
        if tty && !quiet && report.completed > 0 {
            eprintln!();
        }
        for (line, reason) in &report.failed {
            eprintln!("{}:{line}: {reason}", input.display());
        }
        eprintln!(
            "{} lines: {} completed, {} already done, {} failed; {} tokens in {:.1} s ({:.1} tokens/s)",
            report.lines,
            report.completed,
            report.skipped,
            report.failed.len(),
            report.generated_tokens,
            report.seconds,
            report.generated_tokens as f64 / report.seconds.max(1e-9)
        );
        return Ok(if report.failed.is_empty() { 0 } else { 1 });
    }

    let prompt = args.prompt.expect("clap requires a prompt without --input");
    let mut messages = Vec::new();
    if let Some(system) = args.system {
        messages.push(Message {
            role: "system".into(),
            content: system,
        });
    }
    messages.push(Message::user(prompt));
    let ids = llm.prompt_ids(&messages, args.raw)?;
    let request = Request {
        prompt: ids,
        max_new_tokens: args.max_new_tokens,
        sampling,
        stop: args.stop,
        ignore_eos: false,
    };
    let (mut out, timings) = llm.generate(std::slice::from_ref(&request))?;
    let completion = out.pop().expect("one completion per request");
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let value = serde_json::json!({
            "text": completion.text,
            "prompt_tokens": completion.prompt_tokens,
            "generated_tokens": completion.tokens.len(),
            "finish": completion.finish,
            "prompt_seconds": timings.prompt_seconds,
            "generate_seconds": timings.generate_seconds,
        });
        writeln!(stdout, "{value}")?;
    } else {
        writeln!(stdout, "{}", completion.text)?;
    }
    eprintln!(
        "prompt: {} tokens in {:.2} s ({:.1} tokens/s); answer: {} tokens in {:.2} s ({:.1} tokens/s)",
        timings.prompt_tokens,
        timings.prompt_seconds,
        timings.prompt_tokens as f64 / timings.prompt_seconds.max(1e-9),
        timings.generated_tokens,
        timings.generate_seconds,
        timings.generated_tokens as f64 / timings.generate_seconds.max(1e-9),
    );
    Ok(0)
}
