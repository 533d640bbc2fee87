//! Command-line interface: argument parsing, settings checks, output rendering, exit codes.
//!
//! Each command resolves and checks all its settings before it loads a model or
//! touches a collection, and reports every problem at once (see
//! [`moulin::config`]). Data goes to stdout; errors, warnings, progress and
//! summaries to stderr. Exit codes: 0 when everything went through, 1 when
//! some inputs or items failed (the report says which), 2 when the command
//! could not proceed (bad settings, a missing collection, a usage error).

mod args;
mod collections;
mod commit;
mod docs;
mod eval;
mod extract;
mod generate;
mod ingest;
mod job;
mod paths;
mod progress;
mod reindex;
mod search;
mod style;
mod validate;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "moulin",
    version,
    about = "Turn documents (PDF, spreadsheets, web pages) into searchable LanceDB collections, \
             and run a local language model, offline.",
    long_about = None,
    max_term_width = 100,
    after_help = "Models load from local files only: scripts/setup.sh installs the default ones.\n\
                  Exit codes: 0 all went through, 1 some inputs failed, 2 the command could not proceed.",
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More logs on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// No progress bars or progress lines.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// How logs on stderr are written: text for people, json (one object per line) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Ingest files, folders, globs and URLs into a collection, without a pipeline file.
    #[command(
        mut_arg("collection", |a| a.required(true)),
        after_long_help = examples(&[
            ("Ingest the demo corpus into the collection demo of ./data", "moulin ingest fixtures/demo -c demo"),
            ("A folder and a web page", "moulin ingest fixtures/demo https://www.service-public.fr/particuliers/vosdroits/F2208 -c fiches"),
            ("Chunks of 400 tokens, documents whose file is gone removed, a report", "moulin ingest fixtures/demo -c demo --tokens --prune --report report.json"),
        ]),
    )]
    Ingest(ingest::IngestArgs),
    /// Run pipeline files: the sources, stages and collection each describes.
    #[command(after_long_help = examples(&[
        ("Run the demo pipeline", "moulin run pipelines/demo.toml"),
        ("Into another collection and database, with a report", "moulin run pipelines/demo.toml -c demo-test --db /tmp/moulin --report report.json"),
        ("Several pipelines, one report each in reports/", "moulin run pipelines/demo.toml pipelines/example-full.toml --report reports"),
    ]))]
    Run(ingest::RunArgs),
    /// Make a run over many workers visible at once, when every shard has finished.
    #[command(after_long_help = examples(&[
        ("Four shards of one run, then its commit", "moulin run pipelines/demo.toml --shard 0/4 --run-id nightly-1\n  …  (shards 1/4, 2/4, 3/4, anywhere)\n  moulin commit nightly-1 pipelines/demo.toml"),
    ]))]
    Commit(commit::CommitArgs),
    /// Chunk and embed a collection again from its stored documents, in place or into a new one.
    #[command(after_long_help = examples(&[
        ("Chunks of 800 characters, in place (a new version)", "moulin reindex -c demo --chunk-size 800"),
        ("Another embedding model, into a new collection", "moulin reindex -c demo --embedding-model ./models/bge-m3 --into demo-bge"),
        ("The stages of a pipeline file, replacing the model in place", "moulin reindex -c demo --pipeline pipelines/example-full.toml --replace-model"),
    ]))]
    Reindex(reindex::ReindexArgs),
    /// Check pipeline files and list every problem, with its line and key.
    #[command(after_long_help = examples(&[
        ("Check every pipeline file", "moulin validate pipelines/*.toml"),
        ("The problems as JSON, for an editor or CI", "moulin validate pipelines/demo.toml --json"),
    ]))]
    Validate(validate::ValidateArgs),
    /// Search a collection: semantic, lexical (BM25) or hybrid.
    #[command(after_long_help = examples(&[
        ("Hybrid search, the 5 best passages", "moulin search -c demo \"Quelle est la durée de la période d'essai ?\""),
        ("Filter by source and by a column", "moulin search -c demo \"préavis\" --source '*fiche-*' --where \"page_start <= 3\" -n 3"),
        ("Queries from a JSON Lines file, one model load, hits as JSON Lines", "moulin search -c demo --queries questions.jsonl --json"),
    ]))]
    Search(search::SearchArgs),
    /// Evaluate retrieval on a set of questions; import SQuAD-format QA data.
    #[command(after_long_help = examples(&[
        ("PIAF as an evaluation set and a collection", "moulin eval import-squad piaf-v1.1.json -c piaf --questions 300"),
        ("Its retrieval scores", "moulin eval run piaf-v1.1.eval.jsonl -c piaf --retrieval-only"),
    ]))]
    Eval(eval::EvalArgs),
    /// Answer a question from a collection, with its numbered sources.
    #[command(after_long_help = examples(&[
        ("Ask the demo collection", "moulin ask -c demo \"Combien de temps dure la période d'essai d'un CDI ?\""),
        ("Ten passages, lexical search, the answer and its passages as JSON", "moulin ask -c demo \"préavis de démission\" -k 10 --mode lexical --json"),
    ]))]
    Ask(job::AskArgs),
    /// Summarize every document of a collection (or those whose source matches), resumable.
    #[command(after_long_help = examples(&[
        ("Summaries of the demo collection, in summaries-demo.jsonl", "moulin summarize -c demo"),
        ("Only the PDFs, in English, into a chosen file", "moulin summarize -c demo --source '*.pdf' --language en --output pdf.jsonl"),
    ]))]
    Summarize(job::SummarizeArgs),
    /// Run job files: summaries, answers with citations, evaluations.
    #[command(after_long_help = examples(&[
        ("Answer the demo questions", "moulin job run jobs/demo-answers.toml"),
        ("Check a job file first", "moulin validate jobs/demo-answers.toml"),
    ]))]
    Job(job::JobArgs),
    /// Show what extraction makes of a file or URL, without writing anything.
    #[command(after_long_help = examples(&[
        ("The text of a PDF, as it will be chunked", "moulin extract fixtures/demo/jorf-2023-06-21-decision.pdf"),
        ("Sections with page, sheet and rows, as JSON", "moulin extract fixtures/demo/crpa-questions.xlsx --json"),
        ("An encrypted PDF", "moulin extract fixtures/pdf/encrypted-userpw-baz.pdf --password baz"),
    ]))]
    Extract(extract::ExtractArgs),
    /// List, describe and delete collections.
    #[command(after_long_help = examples(&[
        ("The collections of ./data", "moulin collections list"),
        ("One collection: model, configuration, counts, as JSON", "moulin collections show -c demo --json"),
        ("Delete a collection", "moulin collections delete -c demo-test --db /tmp/moulin"),
    ]))]
    Collections(collections::CollectionsArgs),
    /// Generate text with a local language model: one prompt, or a JSONL file of them.
    #[command(after_long_help = examples(&[
        ("One prompt with the default model", "moulin generate \"Quelle est la capitale de la France ?\""),
        ("Sampling, at most 200 new tokens", "moulin generate \"Résume le contrat.\" --max-new-tokens 200 --temperature 0.7 --seed 1"),
        ("A batch file, resumable", "moulin generate --input prompts.jsonl --output answers.jsonl --batch-size 8"),
    ]))]
    Generate(generate::GenerateArgs),
    /// Print the JSON Schema of pipeline files (or of job files).
    #[command(after_long_help = examples(&[
        ("Refresh the committed schema", "moulin schema > schemas/pipeline.schema.json"),
        ("The schema of job files", "moulin schema job > schemas/job.schema.json"),
        ("Give it to an editor's TOML language server", "moulin schema > ~/.config/moulin/pipeline.schema.json"),
    ]))]
    Schema(docs::SchemaArgs),
    /// Print shell completions.
    #[command(after_long_help = examples(&[
        ("Bash, for the current user", "moulin completions bash > ~/.local/share/bash-completion/completions/moulin"),
        ("Zsh", "moulin completions zsh > ~/.zfunc/_moulin"),
        ("Fish", "moulin completions fish > ~/.config/fish/completions/moulin.fish"),
    ]))]
    Completions(docs::CompletionsArgs),
    /// Print the man page, or write one page per command into a folder.
    #[command(after_long_help = examples(&[
        ("Read it", "moulin man | man -l -"),
        ("Install the pages of every command", "moulin man --dir ~/.local/share/man/man1"),
    ]))]
    Man(docs::ManArgs),
    /// Internal: extract one input read from stdin (used for isolation).
    #[command(name = "__extract", hide = true)]
    InternalExtract,
}

/// The "Examples:" section that ends a command's long help.
fn examples(list: &[(&str, &str)]) -> String {
    let mut out = String::from("Examples:\n");
    for (i, (what, command)) in list.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("  # {what}\n  {command}\n"));
    }
    out
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
    init_logging(cli.verbose, cli.log_format);
    let quiet = cli.quiet;
    let outcome = match cli.command {
        // No async work: the model runs on rayon's threads.
        Command::Generate(args) => generate::command(args, quiet),
        Command::Validate(args) => validate::command(args),
        Command::Schema(args) => docs::schema(args),
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
        command => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(run(command, quiet))),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        // The reader of stdout went away (`moulin … | head`): stop quietly, as Unix tools do.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            style::error(&err);
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    let broken = Some(std::io::ErrorKind::BrokenPipe);
    err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().map(|e| e.kind()) == broken
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(|e| e.io_error_kind())
                == broken
    })
}

async fn run(command: Command, quiet: bool) -> Result<u8> {
    match command {
        Command::Ingest(args) => ingest::ingest(args, quiet).await,
        Command::Run(args) => ingest::run(args, quiet).await,
        Command::Commit(args) => commit::command(args, quiet).await,
        Command::Reindex(args) => reindex::command(args, quiet).await,
        Command::Search(args) => search::command(args).await,
        Command::Eval(args) => eval::command(args, quiet).await,
        Command::Ask(args) => job::ask(args, quiet).await,
        Command::Summarize(args) => job::summarize(args, quiet).await,
        Command::Job(args) => job::command(args, quiet).await,
        Command::Extract(args) => extract::command(args).await,
        Command::Collections(args) => collections::command(args).await,
        Command::Generate(_)
        | Command::Validate(_)
        | Command::Schema(_)
        | Command::Completions(_)
        | Command::Man(_)
        | Command::InternalExtract => unreachable!("handled without the async runtime"),
    }
}

fn init_logging(verbose: u8, format: LogFormat) {
    let default = match verbose {
        0 => "warn",
        1 => "info,lance=warn,lancedb=warn",
        _ => "debug,lance=info,lancedb=info,datafusion=info",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(style::color(&std::io::stderr())).init(),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every visible subcommand, as its path of names (`["collections", "show"]`).
    fn commands() -> Vec<(Vec<String>, clap::Command)> {
        fn walk(
            path: Vec<String>,
            cmd: &clap::Command,
            out: &mut Vec<(Vec<String>, clap::Command)>,
        ) {
            // `help` is clap's own, with a copy of the tree under it.
            for sub in cmd
                .get_subcommands()
                .filter(|s| !s.is_hide_set() && s.get_name() != "help")
            {
                let mut p = path.clone();
                p.push(sub.get_name().to_string());
                out.push((p.clone(), sub.clone()));
                walk(p, sub, out);
            }
        }
        let mut out = Vec::new();
        let mut root = Cli::command();
        root.build();
        out.push((Vec::new(), root.clone()));
        walk(Vec::new(), &root, &mut out);
        out
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_argument_and_command_has_help() {
        for (path, cmd) in commands() {
            let name = format!("moulin {}", path.join(" "));
            assert!(cmd.get_about().is_some(), "{name} has no help line");
            for arg in cmd.get_arguments() {
                if arg.is_hide_set() || ["help", "version"].contains(&arg.get_id().as_str()) {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{name}: {} has no help line",
                    arg.get_id()
                );
            }
        }
    }

    /// Every command's long help ends with examples, and every example parses.
    #[test]
    fn every_command_ends_with_examples_that_parse() {
        for (path, cmd) in commands() {
            if path.is_empty() || cmd.has_subcommands() {
                continue;
            }
            let name = format!("moulin {}", path.join(" "));
            let after = cmd
                .get_after_long_help()
                .unwrap_or_else(|| panic!("{name} has no examples"))
                .to_string();
            let lines: Vec<&str> = after
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("moulin "))
                .collect();
            assert!(
                (2..=3).contains(&lines.len()),
                "{name}: {} examples",
                lines.len()
            );
            for line in lines {
                // Indented by two, an example must fit the help's 100 columns to be copied whole.
                assert!(
                    line.chars().count() <= 98,
                    "{name}: too long to fit: {line}"
                );
                // What the shell passes to moulin: the words before a pipe or redirection.
                let command = line.split(['|', '>']).next().unwrap();
                let words = shlex::split(command).unwrap();
                if let Err(e) = Cli::try_parse_from(&words) {
                    panic!("{name}: example {words:?} does not parse:\n{e}");
                }
            }
        }
    }

    /// A change to any command's help is a reviewed snapshot diff.
    #[test]
    fn help_snapshots() {
        for (path, cmd) in commands() {
            let name = if path.is_empty() {
                "moulin".to_string()
            } else {
                format!("moulin {}", path.join(" "))
            };
            let help = cmd.term_width(100).render_long_help().to_string();
            insta::assert_snapshot!(name.replace(' ', "_"), help, &format!("{name} --help"));
        }
    }
}
