//! `moulin eval run|import-squad|compare`: score a collection's retrieval and
//! answers on an evaluation set; turn SQuAD-format QA data into a set and a
//! collection; compare two runs.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use moulin::config::{Problem, Problems};
use moulin::eval::{self, RetrievalSettings, squad::Squad};
use moulin::pipeline::config::PipelineConfig;
use moulin::store::search::{Mode, Searcher};
use moulin::store::{Access, DEFAULT_DB, Store};

use super::{args, paths, style};

#[derive(Args)]
#[command(subcommand_required = true, arg_required_else_help = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    command: EvalCommand,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Ask every question of an evaluation set and score what the collection retrieves.
    #[command(after_long_help = super::examples(&[
        ("Retrieval scores of the default (hybrid) search", "moulin eval run piaf.eval.jsonl -c piaf --retrieval-only"),
        ("Lexical only, per-item results and a Markdown report", "moulin eval run set.jsonl -c demo --retrieval-only --mode lexical --output r.jsonl --markdown r.md"),
        ("Answers generated and scored (exact match, F1, ROUGE-L, citations)", "moulin eval run set.jsonl -c demo --report eval.json"),
    ]))]
    Run(RunArgs),
    /// Turn a SQuAD-format file (PIAF, FQuAD) into an evaluation set and its contexts into a collection.
    #[command(after_long_help = super::examples(&[
        ("PIAF: 300 questions, all its contexts ingested", "moulin eval import-squad piaf-v1.1.json -c piaf --questions 300"),
        ("Where the contexts and the set go", "moulin eval import-squad fquad.json -c fquad --contexts corpus/fquad --set fquad.eval.jsonl"),
    ]))]
    ImportSquad(ImportArgs),
    /// Compare two evaluation reports: each metric's difference, the items that got worse.
    #[command(after_long_help = super::examples(&[
        ("Last week's run against today's", "moulin eval compare last-week.json today.json"),
        ("In CI: fail when a metric drops by more than 0.01", "moulin eval compare main.json branch.json --threshold 0.01"),
    ]))]
    Compare(CompareArgs),
}

#[derive(Args)]
struct CompareArgs {
    /// The reference run's report (`moulin eval run --report`).
    #[arg(value_name = "RUN_A")]
    a: PathBuf,
    /// The run compared with it.
    #[arg(value_name = "RUN_B")]
    b: PathBuf,
    /// Exit with 1 when a metric is worse in B by more than this (absolute, 0 to 1).
    #[arg(long, default_value_t = 0.02, value_name = "DROP")]
    threshold: f64,
    /// How many of the items that got worse to list.
    #[arg(long, default_value_t = 20, value_name = "N")]
    items: usize,
    #[command(flatten)]
    json: args::Json,
}

#[derive(Args)]
struct RunArgs {
    /// The evaluation set: JSON Lines with `question` (or `user_input`, `query`),
    /// optional `reference`, `relevant_sources`, `relevant_chunk_ids`, `reference_contexts`.
    #[arg(value_name = "SET")]
    set: PathBuf,
    #[command(flatten)]
    collection: args::Collection,
    /// Score retrieval only: no answer is generated (fast).
    #[arg(long)]
    retrieval_only: bool,
    /// How to retrieve: semantic, lexical or hybrid.
    #[arg(long, value_enum, default_value_t = Mode::Hybrid)]
    mode: Mode,
    /// Passages retrieved per question (given to the model when answering); metrics
    /// are computed at 1, 3, 5 and 10 up to it [default: 10, or 5 when answering].
    #[arg(short = 'k', long, value_name = "K")]
    top_k: Option<usize>,
    /// Retrieval only: each item's scores and passages (JSON Lines). Answering: the
    /// answers, kept across runs [default: SET's name + `.answers.jsonl`].
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Write the scores, counts and settings as JSON to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Write the scores as a Markdown table to this file (for a merge request).
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Write the report as a self-contained HTML page with charts to this file.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    #[command(flatten)]
    model: args::EmbeddingModel,
    #[command(flatten)]
    llm: super::job::LlmArgs,
    #[command(flatten)]
    json: args::Json,
}

#[derive(Args)]
struct ImportArgs {
    /// A SQuAD-format JSON file: `data[].paragraphs[].context` and `.qas[]`.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Where the contexts are written, one text file each [default: FILE's name + `-contexts`].
    #[arg(long, value_name = "DIR")]
    contexts: Option<PathBuf>,
    /// Where the evaluation set is written [default: FILE's name + `.eval.jsonl`].
    #[arg(long, value_name = "FILE")]
    set: Option<PathBuf>,
    /// Keep this many questions, spread over the file (every context is still ingested).
    #[arg(long, value_name = "N")]
    questions: Option<usize>,
    /// The source name of the contexts in the collection, and in the set's `relevant_sources`.
    #[arg(long, value_name = "NAME", default_value = "squad")]
    name: String,
    #[command(flatten)]
    pipeline: args::Pipeline,
}

pub async fn command(args: EvalArgs, quiet: bool) -> Result<u8> {
    match args.command {
        EvalCommand::Run(args) if !args.retrieval_only => answers(args, quiet).await,
        EvalCommand::Run(args) => retrieval(args).await,
        EvalCommand::ImportSquad(args) => import_squad(args, quiet).await,
        EvalCommand::Compare(args) => compare(args),
    }
}

/// `eval run --retrieval-only`: every question searched, the hits scored.
async fn retrieval(args: RunArgs) -> Result<u8> {
    let name = &args.collection.collection;
    let db = &args.collection.db.db;
    let mut problems = Problems::new("moulin eval run");
    let list = &mut problems.list;
    if let Err(m) = moulin::store::check_collection_name(name) {
        list.push(Problem::flag("--collection", m));
    }
    if let Err(m) = moulin::store::check_db(db, Access::Read) {
        list.push(Problem::flag("--db", m));
    }
    let top_k = args.top_k.unwrap_or(10);
    if top_k == 0 {
        list.push(Problem::flag("--top-k", "must be at least 1"));
    }
    for (flag, path) in [
        ("--output", &args.output),
        ("--report", &args.report),
        ("--markdown", &args.markdown),
        ("--html", &args.html),
    ] {
        if let Some(path) = path
            && let Err(m) = paths::check_writable(path)
        {
            list.push(Problem::flag(flag, m));
        }
    }
    if args.mode != Mode::Lexical
        && let Some(model) = &args.model.embedding_model
        && let Err(m) = moulin::embed::check_model(model)
    {
        list.push(Problem::flag("--embedding-model", m));
    }
    let set = match read_set(&args.set) {
        Ok(set) => Some(set),
        Err(m) => {
            list.push(Problem::argument(m));
            None
        }
    };
    problems.into_result()?;
    let (items, unreadable) = set.expect("read");

    let store = Store::connect(db, Access::Read).await?;
    let collection = store.open(name).await?;
    let searcher = Searcher::open(
        collection,
        args.model.embedding_model.clone(),
        args.mode == Mode::Lexical,
    )
    .await?;
    let settings = RetrievalSettings {
        mode: args.mode,
        top_k,
        ..Default::default()
    };
    let (results, aggregate) = eval::run_retrieval(&searcher, &items, &settings).await;

    for message in &unreadable {
        style::error_line(message);
    }
    for r in results.iter().filter(|r| r.error.is_some()) {
        style::error_line(&format!(
            "{} line {}: {}",
            args.set.display(),
            r.line,
            r.error.as_deref().unwrap_or_default()
        ));
    }
    if let Some(path) = &args.output {
        let mut text = String::new();
        for r in &results {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        std::fs::write(path, text)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    let title = format!(
        "Retrieval on {name} ({}, top {}): {}",
        serde_json::to_value(args.mode)?
            .as_str()
            .unwrap_or_default(),
        top_k,
        args.set.display()
    );
    let report = serde_json::json!({
        "set": args.set.display().to_string(),
        "collection": name,
        "unreadable_lines": unreadable.len(),
        "retrieval": settings,
        "model": searcher.collection().info.model,
        "scores": aggregate,
        "items": results,
    });
    if let Some(path) = &args.report {
        paths::write_json(path, &report)?;
    }
    if let Some(path) = &args.html {
        write_text(path, &eval::html::page(&title, &report))?;
    }
    let markdown = aggregate.markdown(&title);
    if let Some(path) = &args.markdown {
        std::fs::write(path, &markdown)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if args.json.json {
        // The items are in --report and --output; stdout gets the scores.
        let mut brief = report.clone();
        if let Some(o) = brief.as_object_mut() {
            o.remove("items");
        }
        serde_json::to_writer_pretty(&mut out, &brief)?;
        writeln!(out)?;
    } else {
        write!(out, "{markdown}")?;
    }
    Ok(u8::from(aggregate.failed > 0 || !unreadable.is_empty()))
}

fn compare(args: CompareArgs) -> Result<u8> {
    let mut problems = Problems::new("moulin eval compare");
    if !(0.0..=1.0).contains(&args.threshold) {
        problems
            .list
            .push(Problem::flag("--threshold", "must be between 0 and 1"));
    }
    let mut read = |path: &std::path::Path| -> Option<serde_json::Value> {
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))
            .and_then(|t| {
                serde_json::from_str(&t).map_err(|e| format!("{}: not JSON: {e}", path.display()))
            });
        match parsed {
            Ok(v) => Some(v),
            Err(m) => {
                problems.list.push(Problem::argument(m));
                None
            }
        }
    };
    let (a, b) = (read(&args.a), read(&args.b));
    problems.into_result()?;
    let (a, b) = (a.expect("read"), b.expect("read"));
    let comparison = eval::compare::compare(&a, &b, args.threshold)
        .map_err(|m| anyhow::anyhow!("{} and {}: {m}", args.a.display(), args.b.display()))?;
    let mut out = std::io::stdout().lock();
    if args.json.json {
        serde_json::to_writer_pretty(&mut out, &comparison)?;
        writeln!(out)?;
    } else {
        writeln!(out, "A: {}\nB: {}\n", args.a.display(), args.b.display())?;
        write!(out, "{}", comparison.text(args.items))?;
    }
    if comparison.regressions > 0 {
        style::error_line(&format!(
            "{} metrics are worse by more than {}",
            comparison.regressions, args.threshold
        ));
        return Ok(1);
    }
    Ok(0)
}

fn write_text(path: &std::path::Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// Read an evaluation set: its items, and its lines that are not items.
fn read_set(
    path: &std::path::Path,
) -> std::result::Result<(Vec<eval::set::Item>, Vec<String>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut items = Vec::new();
    let mut unreadable = Vec::new();
    for item in eval::set::read(&text) {
        match item {
            Ok(item) => items.push(item),
            Err(m) => unreadable.push(format!("{}: {m}", path.display())),
        }
    }
    if items.is_empty() && unreadable.is_empty() {
        return Err(format!("{} holds no questions", path.display()));
    }
    Ok((items, unreadable))
}

/// `eval run` without `--retrieval-only`: answers generated (resumable), then scored.
async fn answers(args: RunArgs, quiet: bool) -> Result<u8> {
    use moulin::jobs::config::{JobConfig, Kind, RetrievalConfig};
    let stem = args
        .set
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "set".into());
    let mut config = JobConfig {
        kind: Kind::Evaluate,
        collection: args.collection.collection.clone(),
        db: args.collection.db.db.clone(),
        questions: Some(args.set.display().to_string()),
        source: None,
        output: args
            .output
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{stem}.answers.jsonl")))
            .display()
            .to_string(),
        report: None,
        model: Default::default(),
        retrieval: RetrievalConfig::default(),
        prompt: Default::default(),
        energy: Default::default(),
    };
    let mut origins = moulin::config::Origins::default();
    args.llm.apply(&mut config, &mut origins);
    origins.set_argument("questions");
    config.retrieval = RetrievalConfig {
        mode: args.mode,
        top_k: args.top_k.unwrap_or(5),
        embedding_model: args.model.embedding_model.clone(),
    };
    let mut problems = Problems::new("moulin eval run");
    // The set is read below, and its problems said there.
    problems.list = config
        .check(&origins)
        .into_iter()
        .filter(|p| p.key != "questions")
        .collect();
    if let Err(m) = moulin::store::check_db(&config.db, Access::Read) {
        problems.list.push(Problem::flag("--db", m));
    }
    for (flag, path) in [
        ("--output", Some(PathBuf::from(&config.output))),
        ("--report", args.report.clone()),
        ("--markdown", args.markdown.clone()),
        ("--html", args.html.clone()),
    ] {
        if let Some(path) = path
            && let Err(m) = paths::check_writable(&path)
        {
            problems.list.push(Problem::flag(flag, m));
        }
    }
    let set = match read_set(&args.set) {
        Ok(set) => Some(set),
        Err(m) => {
            problems.list.push(Problem::argument(m));
            None
        }
    };
    problems.into_result()?;
    let (items, unreadable) = set.expect("read");
    let tty = std::io::stderr().is_terminal();
    let (scored, report) = eval::evaluate(&config, &items, |done, total| match (quiet, tty) {
        (true, _) => {}
        (false, true) => eprint!("\r{done}/{total} questions   "),
        (false, false) => eprintln!("{done}/{total} questions"),
    })
    .await?;
    if tty && !quiet {
        eprintln!();
    }
    for message in &unreadable {
        style::error_line(message);
    }
    for s in scored
        .iter()
        .filter(|s| s.status == eval::ItemStatus::Failed)
    {
        style::error_line(&format!(
            "{} line {}: {}",
            args.set.display(),
            s.line,
            s.error.as_deref().unwrap_or_default()
        ));
    }
    eprintln!("{}", report.usage.summary());
    let aggregate: eval::AnswerAggregate =
        serde_json::from_value(report.scores.clone().unwrap_or_default())?;
    let markdown = aggregate.markdown(&format!(
        "Answers on {} ({}, top {}): {}",
        config.collection,
        report.model.name,
        config.retrieval.top_k,
        args.set.display()
    ));
    let mut full = serde_json::to_value(&report)?;
    full["set"] = args.set.display().to_string().into();
    full["unreadable_lines"] = unreadable.len().into();
    full["items"] = serde_json::to_value(&scored)?;
    if let Some(path) = &args.report {
        paths::write_json(path, &full)?;
    }
    if let Some(path) = &args.html {
        let title = markdown
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("## ");
        write_text(path, &eval::html::page(title, &full))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, &markdown)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    let mut out = std::io::stdout().lock();
    if args.json.json {
        let mut value = serde_json::to_value(&report)?;
        value["unreadable_lines"] = unreadable.len().into();
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
    } else {
        write!(out, "{markdown}")?;
    }
    Ok(u8::from(aggregate.failed > 0 || !unreadable.is_empty()))
}

async fn import_squad(args: ImportArgs, quiet: bool) -> Result<u8> {
    let stem = args
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "squad".into());
    let contexts = args
        .contexts
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{stem}-contexts")));
    let set = args
        .set
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{stem}.eval.jsonl")));
    let mut problems = Problems::new("moulin eval import-squad");
    match args.pipeline.collection.as_deref() {
        None => problems.list.push(Problem::flag(
            "--collection",
            "name the collection the contexts go into",
        )),
        Some(name) => {
            if let Err(m) = moulin::store::check_collection_name(name) {
                problems.list.push(Problem::flag("--collection", m));
            }
        }
    }
    if let Err(m) = moulin::pipeline::sources::check_name(&args.name) {
        problems.list.push(Problem::flag("--name", m));
    }
    if let Err(m) = paths::check_writable(&set) {
        problems.list.push(Problem::flag("--set", m));
    }
    if args.questions == Some(0) {
        problems
            .list
            .push(Problem::flag("--questions", "must be at least 1"));
    }
    let squad = match Squad::read(&args.file, args.questions) {
        Ok(squad) => Some(squad),
        Err(e) => {
            problems.list.push(Problem::argument(e.to_string()));
            None
        }
    };
    problems.into_result()?;
    let squad = squad.expect("read");
    squad.write(&contexts, &set, &args.name)?;
    eprintln!(
        "{} questions written to {}, {} contexts to {}",
        squad.questions.len(),
        set.display(),
        squad.contexts.len(),
        contexts.display()
    );
    let collection = args.pipeline.collection.as_deref().unwrap_or_default();
    let mut loaded =
        PipelineConfig::quick(collection, DEFAULT_DB, &[contexts.display().to_string()]);
    if let Some(moulin::pipeline::config::SourceConfig::Files { name, .. }) =
        loaded.config.sources.first_mut()
    {
        *name = Some(args.name.clone());
    }
    super::ingest::ingest_loaded(loaded, &args.pipeline, quiet, "moulin eval import-squad").await
}
