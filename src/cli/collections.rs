//! `moulin collections list|show|delete`: what a database holds, read-only except `delete`.

use std::io::Write;

use anyhow::Result;
use clap::{Args, Subcommand};
use moulin::config::{Problem, Problems};
use moulin::store::{Access, CollectionStats, RunSummary, Store};

use super::args;

#[derive(Args)]
#[command(subcommand_required = true, arg_required_else_help = true)]
pub struct CollectionsArgs {
    #[command(subcommand)]
    command: CollectionsCommand,
}

#[derive(Subcommand)]
enum CollectionsCommand {
    /// List the collections of a database, with their counts and model.
    #[command(after_long_help = super::examples(&[
        ("The collections of ./data", "moulin collections list"),
        ("Of another database, as JSON", "moulin collections list --db /srv/moulin --json"),
    ]))]
    List {
        #[command(flatten)]
        db: args::Db,
        #[command(flatten)]
        json: args::Json,
    },
    /// Describe a collection: counts, version, size on disk, model and configuration.
    #[command(after_long_help = super::examples(&[
        ("Describe the collection demo", "moulin collections show -c demo"),
        ("As one JSON object, the configuration included", "moulin collections show -c demo --json"),
    ]))]
    Show {
        #[command(flatten)]
        collection: args::Collection,
        #[command(flatten)]
        json: args::Json,
    },
    /// List the runs kept: id, time, counts, version.
    #[command(after_long_help = super::examples(&[
        ("The runs of the collection demo", "moulin collections runs -c demo"),
        ("As JSON, with each run's configuration and report", "moulin collections runs -c demo --json"),
    ]))]
    Runs {
        #[command(flatten)]
        collection: args::Collection,
        #[command(flatten)]
        json: args::Json,
    },
    /// Bring a collection back to its state after a run, as a new version (so it can be undone).
    #[command(after_long_help = super::examples(&[
        ("Find the run to go back to", "moulin collections runs -c demo"),
        ("Go back to it", "moulin collections rollback -c demo 20261130T020000Z-3f9a1c"),
    ]))]
    Rollback {
        #[command(flatten)]
        collection: args::Collection,
        /// The run whose result to go back to, as `collections runs` lists it.
        #[arg(value_name = "RUN_ID")]
        run: String,
        #[command(flatten)]
        wait: args::Wait,
    },
    /// Delete a collection and everything in it: chunks, documents, history.
    #[command(after_long_help = super::examples(&[
        ("Delete the collection demo of ./data", "moulin collections delete -c demo"),
        ("Of another database", "moulin collections delete -c demo-test --db /tmp/moulin"),
    ]))]
    Delete {
        #[command(flatten)]
        collection: args::Collection,
        #[command(flatten)]
        wait: args::Wait,
    },
}

/// Check a database and, when given, a collection name; nothing is created.
fn check(db: &str, name: Option<&str>) -> Result<(), Problems> {
    let mut problems = Problems::new("moulin collections");
    if let Some(name) = name
        && let Err(m) = moulin::store::check_collection_name(name)
    {
        problems.list.push(Problem::flag("--collection", m));
    }
    if let Err(m) = moulin::store::check_db(db, Access::Read) {
        problems.list.push(Problem::flag("--db", m));
    }
    problems.into_result()
}

pub async fn command(args: CollectionsArgs) -> Result<u8> {
    match args.command {
        CollectionsCommand::List { db, json } => {
            check(&db.db, None)?;
            let store = Store::connect(&db.db, Access::Read).await?;
            let mut all = Vec::new();
            for name in store.collections().await? {
                match store.open(&name).await {
                    Ok(c) => all.push(c.stats().await?),
                    // A table that moulin did not write: not a collection.
                    Err(e) => tracing::debug!("{name}: {e}"),
                }
            }
            let mut out = std::io::stdout().lock();
            if json.json {
                serde_json::to_writer_pretty(&mut out, &all)?;
                writeln!(out)?;
            } else if all.is_empty() {
                eprintln!("no collections in {}", db.db);
            } else {
                list(&mut out, &all)?;
            }
            Ok(0)
        }
        CollectionsCommand::Show { collection, json } => {
            check(&collection.db.db, Some(&collection.collection))?;
            let store = Store::connect(&collection.db.db, Access::Read).await?;
            let stats = store.open(&collection.collection).await?.stats().await?;
            let mut out = std::io::stdout().lock();
            if json.json {
                serde_json::to_writer_pretty(&mut out, &stats)?;
                writeln!(out)?;
            } else {
                show(&mut out, &stats, &collection.db.db)?;
            }
            Ok(0)
        }
        CollectionsCommand::Runs { collection, json } => {
            check(&collection.db.db, Some(&collection.collection))?;
            let store = Store::connect(&collection.db.db, Access::Read).await?;
            let runs = store.open(&collection.collection).await?.runs().await?;
            let mut out = std::io::stdout().lock();
            if json.json {
                serde_json::to_writer_pretty(&mut out, &runs)?;
                writeln!(out)?;
            } else {
                let summaries: Vec<RunSummary> = runs.iter().map(RunSummary::from).collect();
                list_runs(&mut out, &summaries)?;
            }
            Ok(0)
        }
        CollectionsCommand::Rollback {
            collection,
            run,
            wait,
        } => {
            let (name, db) = (&collection.collection, &collection.db.db);
            check(db, Some(name))?;
            let store = Store::connect(db, Access::Read).await?;
            let record = store.rollback(name, &run, wait.duration()).await?;
            eprintln!(
                "{name} is back to its state after run {run}: chunks version {}, recorded as run {}",
                record.chunks_after.unwrap_or_default(),
                record.run_id
            );
            Ok(0)
        }
        CollectionsCommand::Delete { collection, wait } => {
            let (name, db) = (&collection.collection, &collection.db.db);
            check(db, Some(name))?;
            let store = Store::connect(db, Access::Read).await?;
            let stats = store.open(name).await?.stats().await?;
            {
                // Not while a run writes it.
                let _lock = store.lock(name, "delete", wait.duration())?;
                store.delete_collection(name).await?;
            }
            eprintln!(
                "deleted {name} from {db} ({} documents, {} chunks)",
                stats.documents, stats.chunks
            );
            Ok(0)
        }
    }
}

fn list_runs(out: &mut impl Write, runs: &[RunSummary]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<24}  {:<8}  {:<8}  {:<20}  {:>5}  {:>7}  {:>9}  {:>9}  {:>7}  {:>6}  {:>7}",
        "run",
        "kind",
        "status",
        "started",
        "added",
        "updated",
        "rechunked",
        "unchanged",
        "deleted",
        "failed",
        "version"
    )?;
    for r in runs {
        let c = &r.counts;
        writeln!(
            out,
            "{:<24}  {:<8}  {:<8}  {:<20}  {:>5}  {:>7}  {:>9}  {:>9}  {:>7}  {:>6}  {:>7}",
            r.run_id,
            format!("{:?}", r.kind).to_lowercase(),
            format!("{:?}", r.status).to_lowercase(),
            r.started_at,
            c.added,
            c.updated,
            c.rechunked,
            c.unchanged,
            c.deleted,
            c.failed,
            r.version.map_or("-".to_string(), |v| v.to_string())
        )?;
        if let Some(note) = &r.note {
            writeln!(out, "  {note}")?;
        }
    }
    Ok(())
}

fn list(out: &mut impl Write, all: &[CollectionStats]) -> std::io::Result<()> {
    let width = all.iter().map(|c| c.name.len()).max().unwrap_or(4).max(4);
    writeln!(
        out,
        "{:<width$}  {:>9}  {:>8}  model",
        "name", "documents", "chunks"
    )?;
    for c in all {
        writeln!(
            out,
            "{:<width$}  {:>9}  {:>8}  {}",
            c.name, c.documents, c.chunks, c.model.name
        )?;
    }
    Ok(())
}

fn show(out: &mut impl Write, c: &CollectionStats, db: &str) -> std::io::Result<()> {
    writeln!(out, "{} (in {db})", c.name)?;
    writeln!(out, "  documents      {}", c.documents)?;
    writeln!(out, "  chunks         {}", c.chunks)?;
    writeln!(out, "  version        {}", c.version)?;
    if let Some(bytes) = c.size_bytes {
        writeln!(out, "  size on disk   {:.1} MB", bytes as f64 / 1e6)?;
    }
    let m = &c.model;
    writeln!(
        out,
        "  model          {} ({} dimensions, hash {})",
        m.name,
        m.dimension,
        &m.hash[..m.hash.len().min(12)]
    )?;
    writeln!(
        out,
        "  prefixes       passage {:?}, query {:?}",
        m.passage_prefix, m.query_prefix
    )?;
    writeln!(
        out,
        "  created        {} by moulin {}",
        c.created_at, c.moulin_version
    )?;
    if !c.runs.is_empty() {
        writeln!(out, "  last runs")?;
        let mut runs = Vec::new();
        list_runs(&mut runs, &c.runs)?;
        for line in String::from_utf8_lossy(&runs).lines() {
            writeln!(out, "    {line}")?;
        }
    }
    writeln!(out, "  configuration (of the last complete run)")?;
    let config = serde_json::to_string_pretty(&c.config).unwrap_or_default();
    for line in config.lines() {
        writeln!(out, "    {line}")?;
    }
    Ok(())
}
