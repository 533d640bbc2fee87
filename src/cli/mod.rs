//! Command-line interface: argument parsing, output rendering, exit codes.
//!
//! Exit codes: 0 when everything went through, 1 when some inputs failed (the
//! report says which), 2 when the command itself could not proceed.

mod generate;
mod progress;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use moulin::embed::{Embedder, EmbedderConfig, OnnxEmbedder};
use moulin::extract::ExtractOptions;
use moulin::pipeline::config::{self, PipelineConfig};
use moulin::pipeline::report::RunReport;
use moulin::pipeline::{Isolation, Pipeline};
use moulin::progress::Reporter;
use moulin::store::search::{self, Filters, Mode};
use moulin::store::{DEFAULT_DB, Store};

#[derive(Parser)]
#[command(
    name = "moulin",
    version,
    about = "Turn documents (PDF, spreadsheets, web pages) into searchable LanceDB collections, offline.",
    after_help = "Models load from local files only. Run scripts/setup.sh once to install the default model."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More logs on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// No progress bars.
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Ingest files, folders and URLs into a collection, without a pipeline file.
    Ingest(IngestArgs),
    /// Run pipeline files.
    Run {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write the run report as JSON to this file.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Check pipeline files and list every problem found.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Search a collection.
    Search(SearchArgs),
    /// Print what extraction makes of a file or URL, without building a collection.
    Extract {
        input: String,
        /// Print the sections with their provenance and metadata as JSON.
        #[arg(long)]
        json: bool,
        /// Password of an encrypted PDF or xlsx/xlsb workbook.
        #[arg(long, env = "MOULIN_PASSWORD")]
        password: Option<String>,
    },
    /// List the collections of a database, or describe one.
    Collections {
        /// A collection to describe: its model, configuration and counts.
        name: Option<String>,
        #[arg(long, default_value = DEFAULT_DB, env = "MOULIN_DB")]
        db: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a collection.
    Drop {
        name: String,
        #[arg(long, default_value = DEFAULT_DB, env = "MOULIN_DB")]
        db: String,
    },
    /// Generate text with a local language model: one prompt, or a JSONL file of them.
    Generate(generate::GenerateArgs),
    /// Print the JSON Schema of pipeline files.
    Schema,
    /// Internal: extract one input read from stdin (used for isolation).
    #[command(name = "__extract", hide = true)]
    InternalExtract,
}

#[derive(Args)]
struct IngestArgs {
    /// Files, folders, globs or http(s) URLs.
    #[arg(required = true)]
    inputs: Vec<String>,
    #[arg(short, long)]
    collection: String,
    /// LanceDB database: a folder or any LanceDB URI.
    #[arg(long, default_value = DEFAULT_DB, env = "MOULIN_DB")]
    db: String,
    /// Embedding model: a folder, or a model name in moulin's cache.
    #[arg(long)]
    model: Option<String>,
    /// Largest chunk, in characters (or tokens with --tokens).
    #[arg(long)]
    chunk_size: Option<usize>,
    #[arg(long)]
    overlap: Option<usize>,
    /// Size chunks in the embedding model's tokens.
    #[arg(long)]
    tokens: bool,
    /// Password of encrypted PDFs and xlsx/xlsb workbooks.
    #[arg(long, env = "MOULIN_PASSWORD")]
    password: Option<String>,
    /// Delete documents of earlier runs that are not among these inputs.
    #[arg(long)]
    prune: bool,
    /// Write the run report as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(Args)]
struct SearchArgs {
    collection: String,
    query: String,
    #[arg(long, default_value = DEFAULT_DB, env = "MOULIN_DB")]
    db: String,
    #[arg(long, value_enum, default_value_t = Mode::Hybrid)]
    mode: Mode,
    #[arg(short = 'n', long, default_value_t = 5)]
    limit: usize,
    /// Only sources matching this pattern (`*` wildcards) or containing this text.
    #[arg(long)]
    source: Option<String>,
    /// Only documents of this format (pdf, xlsx, csv, html…).
    #[arg(long)]
    format: Option<String>,
    /// Only documents whose metadata has KEY=VALUE (repeatable).
    #[arg(long = "meta", value_parser = parse_key_value)]
    metadata: Vec<(String, String)>,
    /// A SQL predicate over the collection's columns, e.g. "page_start <= 3".
    #[arg(long = "where")]
    sql: Option<String>,
    /// The embedding model, when it is not the one recorded in the collection.
    #[arg(long)]
    model: Option<String>,
    /// Print the hits as a JSON array.
    #[arg(long)]
    json: bool,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::InternalExtract) {
        return match moulin::extract::isolate::serve() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    init_logging(cli.verbose);
    if let Command::Generate(args) = cli.command {
        // No async work: the model runs on rayon's threads.
        return match generate::command(args) {
            Ok(code) => ExitCode::from(code),
            Err(err) => report_error(&err),
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => report_error(&err),
    }
}

fn report_error(err: &anyhow::Error) -> ExitCode {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "error: {err}");
    for cause in err.chain().skip(1) {
        let _ = writeln!(stderr, "  Caused by: {cause}");
    }
    ExitCode::from(2)
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,lance=warn,lancedb=warn",
        _ => "debug,lance=info,lancedb=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
}

async fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Ingest(args) => {
            let mut config = PipelineConfig::quick(&args.collection, &args.db, &args.inputs);
            config.collection.prune = args.prune;
            config.extract.password = args.password;
            let EmbedderConfig::Onnx(onnx) = &mut config.embedder;
            if let Some(model) = args.model {
                onnx.model = model;
            }
            let split = match &mut config.chunker {
                moulin::chunk::ChunkerConfig::Markdown(s)
                | moulin::chunk::ChunkerConfig::Text(s) => s,
            };
            if args.tokens {
                split.unit = moulin::chunk::SizeUnit::Tokens;
                split.size = 400;
                split.overlap = 40;
            }
            if let Some(size) = args.chunk_size {
                split.size = size;
                split.overlap = split.overlap.min(size / 2);
            }
            if let Some(overlap) = args.overlap {
                split.overlap = overlap;
            }
            if let Some((key, problem)) = config.chunker.problems().into_iter().next() {
                bail!("chunker {key} {problem}");
            }
            run_pipeline(config, args.report, cli.quiet).await
        }
        Command::Run { files, report } => {
            let mut worst = 0;
            for file in files {
                let config = config::load_or_error(&file)?;
                worst = worst.max(run_pipeline(config, report.clone(), cli.quiet).await?);
            }
            Ok(worst)
        }
        Command::Validate { files } => {
            let mut bad = 0;
            for file in &files {
                match config::load(file) {
                    Ok(_) => println!("{}: ok", file.display()),
                    Err(problems) => {
                        bad += 1;
                        println!("{}: {} problem(s)", file.display(), problems.len());
                        for p in problems {
                            println!("  - {p}");
                        }
                    }
                }
            }
            Ok(if bad > 0 { 1 } else { 0 })
        }
        Command::Search(args) => search_command(args).await,
        Command::Extract {
            input,
            json,
            password,
        } => extract_command(&input, json, password).await,
        Command::Collections { name, db, json } => collections_command(name, &db, json).await,
        Command::Drop { name, db } => {
            let store = Store::connect(&db).await?;
            store.open(&name).await?;
            store.drop_collection(&name).await?;
            eprintln!("dropped {name} from {db}");
            Ok(0)
        }
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&config::json_schema())?);
            Ok(0)
        }
        Command::InternalExtract | Command::Generate(_) => {
            unreachable!("handled before the runtime starts")
        }
    }
}

async fn run_pipeline(
    config: PipelineConfig,
    report_path: Option<PathBuf>,
    quiet: bool,
) -> Result<u8> {
    let exe = std::env::current_exe().context("cannot find the moulin executable")?;
    let pipeline = Pipeline::new(config, Isolation::Subprocess(exe));
    let bars = progress::Bars::new(quiet);
    let reporter: &dyn Reporter = match &bars {
        Some(b) => b,
        None => &progress::Plain,
    };
    let report = pipeline.run(reporter).await?;
    if let Some(path) = &report_path {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
        serde_json::to_writer_pretty(file, &report)?;
    }
    summary(&report, report_path.is_some());
    Ok(report.exit_code() as u8)
}

fn summary(report: &RunReport, has_report: bool) {
    let t = &report.totals;
    let s = &report.seconds;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "{}: {} ingested, {} skipped, {} failed of {} inputs; {} pages, {} chunks in {:.1} s \
         (extract {:.1} s, embed {:.1} s, write {:.1} s)",
        report.collection,
        t.ingested,
        t.skipped,
        t.failed,
        t.inputs,
        t.pages,
        t.chunks,
        s.total,
        s.extract,
        s.embed,
        s.write
    );
    if t.pruned > 0 {
        let _ = writeln!(err, "pruned {} documents whose source is gone", t.pruned);
    }
    let failures: Vec<_> = report
        .inputs
        .iter()
        .filter(|i| i.status == moulin::pipeline::report::Status::Failed)
        .collect();
    for f in failures.iter().take(10) {
        let _ = writeln!(
            err,
            "  failed {}: {}",
            f.path,
            f.reason.as_deref().unwrap_or("")
        );
    }
    if failures.len() > 10 {
        let more = failures.len() - 10;
        let hint = if has_report {
            "see the report"
        } else {
            "use --report FILE to see all"
        };
        let _ = writeln!(err, "  … and {more} more ({hint})");
    }
}

async fn search_command(args: SearchArgs) -> Result<u8> {
    let store = Store::connect(&args.db).await?;
    let collection = store.open(&args.collection).await?;
    let embedder = if args.mode == Mode::Lexical {
        None
    } else {
        let info = &collection.info;
        let model = args.model.clone().unwrap_or_else(|| info.model.clone());
        let onnx = moulin::embed::OnnxConfig {
            model,
            query_prefix: Some(info.query_prefix.clone()),
            passage_prefix: Some(info.passage_prefix.clone()),
            ..Default::default()
        };
        let embedder = tokio::task::spawn_blocking(move || OnnxEmbedder::load(&onnx)).await??;
        info.check_model(&args.collection, embedder.info())?;
        Some(embedder)
    };
    let filters = Filters {
        source: args.source,
        format: args.format,
        metadata: args.metadata,
        sql: args.sql,
    };
    let hits = search::search(
        &collection,
        embedder.as_ref().map(|e| e as &dyn Embedder),
        &args.query,
        args.mode,
        args.limit,
        &filters,
    )
    .await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &hits)?;
        writeln!(out)?;
        return Ok(0);
    }
    if hits.is_empty() {
        eprintln!("no results");
    }
    for (i, hit) in hits.iter().enumerate() {
        let mut place = String::new();
        if let Some(p) = hit.page {
            place.push_str(&format!(" p.{p}"));
        }
        if let Some(sheet) = &hit.sheet {
            place.push_str(&format!(" sheet {sheet:?}"));
        }
        if let Some([a, b]) = hit.rows {
            place.push_str(&format!(" rows {a}-{b}"));
        }
        writeln!(out, "{}. [{:.3}] {}{}", i + 1, hit.score, hit.source, place)?;
        if let Some(h) = &hit.headings {
            writeln!(out, "   § {h}")?;
        }
        let snippet: String = hit.text.chars().take(400).collect();
        for line in snippet.lines().filter(|l| !l.trim().is_empty()).take(6) {
            writeln!(out, "   {line}")?;
        }
        writeln!(out)?;
    }
    Ok(0)
}

async fn extract_command(input: &str, json: bool, password: Option<String>) -> Result<u8> {
    let options = ExtractOptions {
        password,
        ..Default::default()
    };
    let input = if moulin::paths::is_url(input) {
        moulin::pipeline::sources::Input::Url(input.to_string())
    } else {
        moulin::pipeline::sources::Input::Path(PathBuf::from(input))
    };
    let client = moulin::extract::fetch::client(&options)?;
    let isolation = Isolation::Subprocess(std::env::current_exe()?);
    let doc = moulin::pipeline::extract_input(&isolation, &input, &client, &options).await?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", doc.text())?;
    }
    Ok(0)
}

async fn collections_command(name: Option<String>, db: &str, json: bool) -> Result<u8> {
    let store = Store::connect(db).await?;
    let names = match &name {
        Some(n) => vec![n.clone()],
        None => store.collections().await?,
    };
    let mut all = Vec::new();
    for n in names {
        match store.open(&n).await {
            Ok(c) => all.push(c.stats().await?),
            Err(e) if name.is_none() => tracing::debug!("{n}: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &all)?;
        writeln!(out)?;
        return Ok(0);
    }
    for c in &all {
        writeln!(
            out,
            "{}\t{} documents\t{} chunks\t{} ({} dims)\tmoulin {}\tcreated {}",
            c.name,
            c.documents,
            c.chunks,
            c.info.model,
            c.info.dimension,
            c.info.moulin_version,
            c.info.created_at
        )?;
    }
    if all.is_empty() {
        eprintln!("no collections in {db}");
    }
    Ok(0)
}
