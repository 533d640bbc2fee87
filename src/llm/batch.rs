//! JSONL batch files: one prompt per line in, one result per line out, safe to
//! kill and rerun.
//!
//! Input lines are objects with an `id` and a `prompt` (text) or `messages`
//! (`[{"role", "content"}]`), and optionally `max_new_tokens`, `temperature`,
//! `top_k`, `top_p`, `seed`, `stop` and `raw`. Results are appended to the
//! output as each batch finishes; ids already in the output are skipped, so a
//! rerun after a kill finishes the work once. A line cut short by a kill is
//! dropped from the output before appending.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Finish, Llm, Message, Request, Sampling};
use crate::error::{Error, Result};

/// One line of an input file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptLine {
    pub id: serde_json::Value,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<Message>>,
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stop: Vec<String>,
    /// Send the prompt as it is, without the chat template.
    #[serde(default)]
    pub raw: bool,
}

/// One line of an output file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultLine {
    pub id: serde_json::Value,
    pub text: String,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub finish: String,
    /// From the moment its prompt entered the running batch to its last token.
    pub seconds: f64,
}

/// Defaults for fields a line leaves out.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    pub batch_size: usize,
    pub max_new_tokens: usize,
    pub sampling: Sampling,
}

/// What a batch run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchReport {
    pub lines: usize,
    /// Ids found in the output from an earlier run.
    pub skipped: usize,
    pub completed: usize,
    /// Lines that could not run, with their line number and reason.
    pub failed: Vec<(usize, String)>,
    pub generated_tokens: usize,
    pub seconds: f64,
}

/// An input line ready to run.
struct Pending {
    id: serde_json::Value,
    request: Request,
}

/// Run every line of `input` not already in `output`. `progress` is called
/// after each batch with (done, to do, tokens/s of that batch).
pub fn run(
    llm: &Llm,
    input: &Path,
    output: &Path,
    options: &BatchOptions,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<BatchReport> {
    let started = Instant::now();
    let mut report = BatchReport::default();
    let done = completed_ids(output)?;
    let file = File::open(input).map_err(|e| Error::io(input, e))?;
    let mut seen = HashSet::new();
    let mut pending = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let number = n + 1;
        let line = line.map_err(|e| Error::io(input, e))?;
        if line.trim().is_empty() {
            continue;
        }
        report.lines += 1;
        let parsed: PromptLine = match serde_json::from_str(&line) {
            Ok(p) => p,
            Err(e) => {
                report
                    .failed
                    .push((number, format!("not a prompt line: {e}")));
                continue;
            }
        };
        let key = id_key(&parsed.id);
        if !seen.insert(key.clone()) {
            report
                .failed
                .push((number, format!("id {key} appears twice")));
            continue;
        }
        if done.contains(&key) {
            report.skipped += 1;
            continue;
        }
        match prepare(llm, parsed, options) {
            Ok(p) => pending.push(p),
            Err(reason) => report.failed.push((number, reason)),
        }
    }

    // Similar lengths together: less padding when prompts are prefilled together.
    pending.sort_by_key(|p| p.request.prompt.len());
    let total = pending.len();
    let mut out = open_for_append(output)?;
    let requests: Vec<Request> = pending.iter().map(|p| p.request.clone()).collect();
    // Continuous batching: `batch_size` sequences decode together and each
    // finished one is written (and flushed to disk: a kill loses at most the
    // line being written, repaired on the next run) while the next prompt
    // takes its place.
    let started_at = Instant::now();
    let mut generated = 0usize;
    llm.generate_each(&requests, options.batch_size.max(1), |i, c| {
        let p = &pending[i];
        generated += c.tokens.len();
        let line = ResultLine {
            id: p.id.clone(),
            text: c.text,
            prompt_tokens: c.prompt_tokens,
            generated_tokens: c.tokens.len(),
            finish: match c.finish {
                Finish::Stop => "stop".into(),
                Finish::Length => "length".into(),
            },
            seconds: c.seconds,
        };
        let mut text = serde_json::to_string(&line).expect("result serializes");
        text.push('\n');
        out.write_all(text.as_bytes())
            .and_then(|_| out.sync_data())
            .map_err(|e| Error::io(output, e))?;
        report.completed += 1;
        progress(
            report.completed,
            total,
            generated as f64 / started_at.elapsed().as_secs_f64().max(1e-9),
        );
        Ok(())
    })?;
    report.generated_tokens += generated;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn prepare(
    llm: &Llm,
    line: PromptLine,
    options: &BatchOptions,
) -> std::result::Result<Pending, String> {
    let messages = match (line.prompt, line.messages) {
        (Some(p), None) => vec![Message::user(p)],
        (None, Some(m)) if !m.is_empty() => m,
        (None, Some(_)) => return Err("messages is empty".into()),
        (Some(_), Some(_)) => return Err("give prompt or messages, not both".into()),
        (None, None) => return Err("no prompt or messages".into()),
    };
    let d = options.sampling;
    let sampling = Sampling {
        temperature: line.temperature.unwrap_or(d.temperature),
        top_k: line.top_k.unwrap_or(d.top_k),
        top_p: line.top_p.unwrap_or(d.top_p),
        seed: line.seed.unwrap_or(d.seed),
    };
    sampling.check()?;
    let prompt = llm
        .prompt_ids(&messages, line.raw)
        .map_err(|e| e.to_string())?;
    let max_new_tokens = line.max_new_tokens.unwrap_or(options.max_new_tokens);
    if prompt.len() + max_new_tokens > llm.context {
        return Err(format!(
            "{} prompt tokens + {max_new_tokens} new tokens exceed the context of {}",
            prompt.len(),
            llm.context
        ));
    }
    Ok(Pending {
        id: line.id,
        request: Request {
            prompt,
            max_new_tokens,
            sampling,
            stop: line.stop,
            ignore_eos: false,
        },
    })
}

/// Ids are compared by their JSON text: `1` and `"1"` are different ids.
fn id_key(id: &serde_json::Value) -> String {
    id.to_string()
}

/// Ids of the complete result lines already in `output`.
fn completed_ids(output: &Path) -> Result<HashSet<String>> {
    let mut text = String::new();
    match File::open(output) {
        Ok(mut f) => {
            f.read_to_string(&mut text)
                .map_err(|e| Error::io(output, e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(Error::io(output, e)),
    }
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<ResultLine>(l).ok())
        .map(|r| id_key(&r.id))
        .collect())
}

/// Open `output` for appending, first cutting a last line left incomplete by
/// a killed run.
fn open_for_append(output: &Path) -> Result<File> {
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(output)
        .map_err(|e| Error::io(output, e))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|e| Error::io(output, e))?;
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        tracing::warn!(
            "{}: dropping an incomplete last line ({} bytes) left by an interrupted run",
            output.display(),
            bytes.len() - keep
        );
        f.set_len(keep as u64).map_err(|e| Error::io(output, e))?;
        f.seek(SeekFrom::End(0)).map_err(|e| Error::io(output, e))?;
    }
    Ok(f)
}
