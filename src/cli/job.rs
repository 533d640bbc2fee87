//! `moulin job run`, `moulin ask`, `moulin summarize`: model work over a
//! collection, from a job file or from options; every setting checked before
//! the model loads.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Subcommand};
use moulin::config::{Origins, Problem, Problems};
use moulin::jobs::answer::{AnswerLine, Question};
use moulin::jobs::config::{JobConfig, Kind, ModelConfig, PromptConfig, RetrievalConfig};
use moulin::jobs::prompts::Language;
use moulin::jobs::{self, JobReport};
use moulin::store::search::{Mode, read_queries};

use super::{args, paths, style};

#[derive(Args)]
#[command(subcommand_required = true, arg_required_else_help = true)]
pub struct JobArgs {
    #[command(subcommand)]
    command: JobCommand,
}

#[derive(Subcommand)]
enum JobCommand {
    /// Run a job file: summaries, answers or an evaluation, resumable.
    #[command(after_long_help = super::examples(&[
        ("Answer the demo questions with their sources", "moulin job run jobs/demo-answers.toml"),
        ("Summarize the demo collection, with a report", "moulin job run jobs/demo-summaries.toml --report summaries.json"),
    ]))]
    Run(RunArgs),
    /// Merge the results of a job's shards into its output file, once every shard has run.
    #[command(after_long_help = super::examples(&[
        ("Two shards of a job, anywhere, then their results in one file", "moulin job run jobs/demo-answers.toml --shard 0/2\n  moulin job run jobs/demo-answers.toml --shard 1/2\n  moulin job merge jobs/demo-answers.toml --shards 2"),
    ]))]
    Merge(MergeArgs),
}

#[derive(Args)]
struct MergeArgs {
    /// The job file (TOML) the shards ran.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// How many shards the job was run as.
    #[arg(long, value_name = "N")]
    shards: u32,
}

#[derive(Args)]
struct RunArgs {
    /// The job file (TOML).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Write the job's report (JSON) here, over the file's `report`.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Run shard I of N (from 0): the items whose id hashes to I, into the output
    /// file's shard file (`answers.shard-00001-of-00004.jsonl`), resumable;
    /// `moulin job merge` joins them. `auto`: from a Slurm array or a Kubernetes Indexed Job.
    #[arg(long, value_name = "I/N|auto")]
    shard: Option<moulin::shard::ShardChoice>,
}

/// The language model options of `ask` and `summarize`.
#[derive(Args, Clone)]
pub struct LlmArgs {
    /// Language model: a GGUF file or a Hugging Face folder [default: the model setup.sh installs].
    #[arg(
        long,
        env = "MOULIN_LLM",
        hide_env_values = true,
        value_name = "FILE|DIR"
    )]
    llm: Option<String>,
    /// The prompts' language, and so the answers'.
    #[arg(long, value_enum, default_value_t = Language::Fr)]
    language: Language,
    /// A folder of prompt files replacing the built-in ones ({answer,summarize}.{fr,en}.toml).
    #[arg(
        long,
        env = "MOULIN_PROMPTS",
        hide_env_values = true,
        value_name = "DIR"
    )]
    prompts: Option<String>,
    /// Most tokens generated per answer or summary.
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_new_tokens: usize,
    /// Longest prompt + answer, in tokens (at most the model's own context).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    context: usize,
    /// Prompts decoded together.
    #[arg(long, default_value_t = 8, value_name = "N")]
    batch_size: usize,
}

impl LlmArgs {
    pub fn apply(&self, config: &mut JobConfig, origins: &mut Origins) {
        config.model = ModelConfig {
            llm: self.llm.clone(),
            context: self.context,
            max_new_tokens: self.max_new_tokens,
            batch_size: self.batch_size,
            ..Default::default()
        };
        config.prompt = PromptConfig {
            language: self.language,
            dir: self.prompts.clone(),
        };
        for (key, flag) in [
            ("model.llm", "--llm"),
            ("model.context", "--context"),
            ("model.max_new_tokens", "--max-new-tokens"),
            ("model.batch_size", "--batch-size"),
            ("prompt.dir", "--prompts"),
            ("collection", "--collection"),
            ("db", "--db"),
            ("retrieval.top_k", "--top-k"),
            ("retrieval.embedding_model", "--embedding-model"),
            ("output", "--output"),
            ("source", "--source"),
        ] {
            origins.set_flag(key, flag);
        }
    }
}

#[derive(Args)]
pub struct AskArgs {
    /// The question.
    #[arg(value_name = "QUESTION")]
    question: String,
    #[command(flatten)]
    collection: args::Collection,
    /// Passages given to the model (fewer when they do not fit its context).
    #[arg(short = 'k', long, default_value_t = 5, value_name = "K")]
    top_k: usize,
    /// How passages are found: semantic, lexical or hybrid.
    #[arg(long, value_enum, default_value_t = Mode::Hybrid)]
    mode: Mode,
    #[command(flatten)]
    llm: LlmArgs,
    #[command(flatten)]
    model: args::EmbeddingModel,
    #[command(flatten)]
    json: args::Json,
}

#[derive(Args)]
pub struct SummarizeArgs {
    #[command(flatten)]
    collection: args::Collection,
    /// Only documents whose source matches this pattern (`*` wildcards) or contains this text.
    #[arg(long, value_name = "PATTERN")]
    source: Option<String>,
    /// Results (JSON Lines), kept across runs: documents already summarized are skipped
    /// [default: summaries-NAME.jsonl].
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Write the job's report (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    #[command(flatten)]
    llm: LlmArgs,
}

pub async fn command(args: JobArgs, quiet: bool) -> Result<u8> {
    match args.command {
        JobCommand::Run(args) => run(args, quiet).await,
        JobCommand::Merge(args) => merge(args).await,
    }
}

fn quick(kind: Kind, collection: &args::Collection) -> JobConfig {
    JobConfig {
        kind,
        collection: collection.collection.clone(),
        db: collection.db.db.clone(),
        questions: None,
        source: None,
        output: String::new(),
        report: None,
        model: ModelConfig::default(),
        retrieval: RetrievalConfig::default(),
        prompt: PromptConfig::default(),
        energy: Default::default(),
    }
}

/// Problems with a job's settings and with the files it will write.
fn check(
    config: &JobConfig,
    origins: &Origins,
    report: Option<&Path>,
    subject: &str,
) -> Result<(), Problems> {
    let mut problems = Problems::new(subject);
    problems.list = config.check(origins);
    if let Err(m) = moulin::store::check_db(&config.db, moulin::store::Access::Read) {
        problems.list.push(origins.problem("db", m));
    }
    if !config.output.is_empty()
        && let Err(m) = paths::check_writable(Path::new(&config.output))
    {
        problems.list.push(origins.problem("output", m));
    }
    if let Some(report) = report
        && let Err(m) = paths::check_writable(report)
    {
        problems.list.push(Problem::flag("--report", m));
    }
    problems.into_result()
}

/// A progress callback on stderr: a line that rewrites itself on a terminal.
fn progress(quiet: bool, what: &'static str) -> impl FnMut(usize, usize) {
    let tty = std::io::stderr().is_terminal();
    move |done, total| match (quiet, tty) {
        (true, _) => {}
        (false, true) => {
            eprint!("\r{done}/{total} {what}   ");
            if done == total {
                eprintln!();
            }
        }
        (false, false) => eprintln!("{done}/{total} {what}"),
    }
}

fn finish(report: &JobReport, path: Option<&Path>) -> Result<()> {
    eprintln!("{}", report.usage.summary());
    if let Some(e) = &report.usage.energy {
        eprintln!("energy: {}", e.note);
    }
    if let Some(path) = path {
        paths::write_json(path, report)?;
    }
    Ok(())
}

async fn run(args: RunArgs, quiet: bool) -> Result<u8> {
    let loaded = jobs::config::load(&args.file)?;
    let config = loaded.config;
    let report_path = args
        .report
        .clone()
        .or(config.report.clone().map(PathBuf::from));
    check(
        &config,
        &loaded.origins,
        report_path.as_deref(),
        &args.file.display().to_string(),
    )?;
    let shard = match args.shard {
        Some(choice) => {
            if config.kind == Kind::Evaluate {
                anyhow::bail!(
                    "--shard: an evaluation scores the whole set at once; shard an answer job and evaluate its merged answers"
                );
            }
            Some(
                choice
                    .resolve()
                    .map_err(|e| anyhow::anyhow!("--shard: {e}"))?,
            )
        }
        None => None,
    };
    let output = match shard {
        Some(shard) => moulin::jobs::output::shard_path(Path::new(&config.output), shard),
        None => PathBuf::from(&config.output),
    };
    let mut unreadable = Vec::new();
    let failed = match config.kind {
        Kind::Answer => {
            let path = config.questions.clone().unwrap_or_default();
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))?;
            let mut questions = Vec::new();
            for q in read_queries(&text) {
                match q {
                    Ok(q) => questions.push(Question {
                        id: q.id,
                        text: q.text,
                    }),
                    Err(m) => unreadable.push(format!("{path}: {m}")),
                }
            }
            if let Some(shard) = shard {
                questions.retain(|q| shard.contains(&q.id));
            }
            let (_, report) = jobs::run_answers(
                &config,
                &questions,
                Some(&output),
                progress(quiet, "questions"),
            )
            .await?;
            finish(&report, report_path.as_deref())?;
            report.usage.failed
        }
        Kind::Summarize => {
            let (_, report) =
                jobs::run_summaries(&config, shard, Some(&output), progress(quiet, "documents"))
                    .await?;
            finish(&report, report_path.as_deref())?;
            report.usage.failed
        }
        Kind::Evaluate => {
            let path = config.questions.clone().unwrap_or_default();
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("cannot read {path}: {e}"))?;
            let mut items = Vec::new();
            for item in moulin::eval::set::read(&text) {
                match item {
                    Ok(i) => items.push(i),
                    Err(m) => unreadable.push(format!("{path}: {m}")),
                }
            }
            let (scored, report) =
                moulin::eval::evaluate(&config, &items, progress(quiet, "questions")).await?;
            finish(&report, None)?;
            if let Some(path) = &report_path {
                let mut value = serde_json::to_value(&report)?;
                value["items"] = serde_json::to_value(&scored)?;
                paths::write_json(path, &value)?;
            }
            let aggregate: moulin::eval::AnswerAggregate =
                serde_json::from_value(report.scores.clone().unwrap_or_default())?;
            print!(
                "{}",
                aggregate.markdown(&format!("Answers on {}: {path}", config.collection))
            );
            aggregate.failed
        }
    };
    for m in &unreadable {
        style::error_line(m);
    }
    if let Some(shard) = shard {
        eprintln!(
            "shard {shard}: results in {}; once every shard has run: moulin job merge {} --shards {}",
            output.display(),
            args.file.display(),
            shard.count
        );
    }
    Ok(u8::from(failed > 0 || !unreadable.is_empty()))
}

async fn merge(args: MergeArgs) -> Result<u8> {
    let loaded = jobs::config::load(&args.file)?;
    let output = PathBuf::from(&loaded.config.output);
    let merged = moulin::jobs::output::merge_shards(&output, args.shards)?;
    eprintln!(
        "{} results from {} shards in {}{}",
        merged.lines,
        args.shards,
        output.display(),
        if merged.failed > 0 {
            format!(
                "; {} failed: run their shards again, then merge again",
                merged.failed
            )
        } else {
            String::new()
        }
    );
    Ok(u8::from(merged.failed > 0))
}

pub async fn ask(args: AskArgs, quiet: bool) -> Result<u8> {
    let mut config = quick(Kind::Answer, &args.collection);
    let mut origins = Origins::default();
    args.llm.apply(&mut config, &mut origins);
    config.retrieval = RetrievalConfig {
        mode: args.mode,
        top_k: args.top_k,
        embedding_model: args.model.embedding_model.clone(),
    };
    // `ask` has no questions file: it asks one.
    config.questions = Some(String::new());
    let mut problems = Problems::new("moulin ask");
    problems.list = config
        .check(&origins)
        .into_iter()
        .filter(|p| p.key != "questions" && p.key != "output")
        .collect();
    if args.question.trim().is_empty() {
        problems
            .list
            .push(Problem::argument("the question is empty"));
    }
    if let Err(m) = moulin::store::check_db(&config.db, moulin::store::Access::Read) {
        problems.list.push(Problem::flag("--db", m));
    }
    problems.into_result()?;
    let question = Question {
        id: "1".into(),
        text: args.question.clone(),
    };
    let (mut lines, report) =
        jobs::run_answers(&config, std::slice::from_ref(&question), None, |_, _| {}).await?;
    let line = lines.pop().expect("one answer");
    let mut out = std::io::stdout().lock();
    if args.json.json {
        let mut value = serde_json::to_value(&line)?;
        value["usage"] = serde_json::to_value(&report.usage)?;
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
    } else {
        write_answer(&mut out, &line, config.prompt.language)?;
    }
    if !quiet {
        eprintln!("{}", report.usage.summary());
    }
    if line.status != "ok" {
        style::error_line(&format!(
            "no answer: {}",
            line.reason.as_deref().unwrap_or_default()
        ));
        return Ok(1);
    }
    Ok(0)
}

/// The answer, then its numbered sources, cited ones marked.
fn write_answer(
    out: &mut impl Write,
    line: &AnswerLine,
    language: Language,
) -> std::io::Result<()> {
    if line.status != "ok" {
        return Ok(());
    }
    writeln!(out, "{}\n", line.answer)?;
    writeln!(
        out,
        "{}",
        match language {
            Language::Fr => "Sources :",
            Language::En => "Sources:",
        }
    )?;
    for p in &line.passages {
        let mark = if line.citations.iter().any(|c| c.n == p.n) {
            "*"
        } else {
            " "
        };
        writeln!(
            out,
            "{mark}[{}] {}{}",
            p.n,
            super::paths::short(&p.uri),
            p.place(language)
        )?;
    }
    if !line.invalid_citations.is_empty() {
        let list: Vec<String> = line
            .invalid_citations
            .iter()
            .map(|n| format!("[{n}]"))
            .collect();
        writeln!(
            out,
            "{}",
            match language {
                Language::Fr => format!(
                    "Attention : la réponse cite {} qui n'a pas été fourni.",
                    list.join(", ")
                ),
                Language::En => format!(
                    "Warning: the answer cites {}, which was not given.",
                    list.join(", ")
                ),
            }
        )?;
    }
    Ok(())
}

pub async fn summarize(args: SummarizeArgs, quiet: bool) -> Result<u8> {
    let mut config = quick(Kind::Summarize, &args.collection);
    let mut origins = Origins::default();
    args.llm.apply(&mut config, &mut origins);
    config.source = args.source.clone();
    config.output = args
        .output
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("summaries-{}.jsonl", config.collection)))
        .display()
        .to_string();
    check(
        &config,
        &origins,
        args.report.as_deref(),
        "moulin summarize",
    )?;
    let output = PathBuf::from(&config.output);
    let (lines, report) =
        jobs::run_summaries(&config, None, Some(&output), progress(quiet, "documents")).await?;
    finish(&report, args.report.as_deref())?;
    for line in lines.iter().filter(|l| l.status != "ok") {
        style::error_line(&format!(
            "{}: {}",
            line.source,
            line.reason.as_deref().unwrap_or_default()
        ));
    }
    eprintln!("summaries in {}", output.display());
    Ok(u8::from(report.usage.failed > 0))
}
