//! `moulin collections list|show|delete`: what a database holds, read-only except `delete`.

use std::io::Write;

use anyhow::Result;
use clap::{Args, Subcommand};
use moulin::config::{Problem, Problems};
use moulin::store::{Access, CollectionStats, Store};

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
    /// Delete a collection and everything in it.
    #[command(after_long_help = super::examples(&[
        ("Delete the collection demo of ./data", "moulin collections delete -c demo"),
        ("Of another database", "moulin collections delete -c demo-test --db /tmp/moulin"),
    ]))]
    Delete {
        #[command(flatten)]
        collection: args::Collection,
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
        CollectionsCommand::Delete { collection } => {
            let (name, db) = (&collection.collection, &collection.db.db);
            check(db, Some(name))?;
            let store = Store::connect(db, Access::Read).await?;
            let stats = store.open(name).await?.stats().await?;
            store.drop_collection(name).await?;
            eprintln!(
                "deleted {name} from {db} ({} documents, {} chunks)",
                stats.documents, stats.chunks
            );
            Ok(0)
        }
    }
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
    writeln!(out, "  configuration")?;
    let config = serde_json::to_string_pretty(&c.config).unwrap_or_default();
    for line in config.lines() {
        writeln!(out, "    {line}")?;
    }
    Ok(())
}
