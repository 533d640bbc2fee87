//! `moulin search`: checks its options, opens the collection read-only, renders the hits.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use moulin::config::{Problem, Problems};
use moulin::store::search::{Filters, Mode, Query, Searcher};
use moulin::store::{Access, Store};

use super::args;

#[derive(Args)]
pub struct SearchArgs {
    /// What to look for, in any language the embedding model knows.
    #[arg(value_name = "QUERY")]
    query: String,
    #[command(flatten)]
    collection: args::Collection,
    /// How to match: semantic (vectors), lexical (BM25, French stemming) or hybrid (both, fused).
    #[arg(long, value_enum, default_value_t = Mode::Hybrid)]
    mode: Mode,
    /// How many hits to print, at least 1.
    #[arg(short = 'n', long, default_value_t = 5, value_name = "N")]
    limit: usize,
    /// Only sources matching this pattern (`*` wildcards) or containing this text.
    #[arg(long, value_name = "PATTERN")]
    source: Option<String>,
    /// Only documents of this format (pdf, xlsx, csv, html…).
    #[arg(long, value_name = "FORMAT")]
    format: Option<String>,
    /// Only documents whose metadata has KEY=VALUE (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    metadata: Vec<(String, String)>,
    /// A SQL predicate over the collection's columns, e.g. "page_start <= 3".
    #[arg(long = "where", value_name = "SQL")]
    sql: Option<String>,
    #[command(flatten)]
    model: args::EmbeddingModel,
    #[command(flatten)]
    json: args::Json,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

pub async fn command(args: SearchArgs) -> Result<u8> {
    let query = Query {
        text: args.query,
        mode: args.mode,
        limit: args.limit,
        filters: Filters {
            source: args.source,
            format: args.format,
            metadata: args.metadata,
            sql: args.sql,
        },
    };
    let name = &args.collection.collection;
    let db = &args.collection.db.db;
    // Every option is checked before the database is opened or a model loaded.
    let mut problems = Problems::new("moulin search");
    let list = &mut problems.list;
    if let Err(m) = moulin::store::check_collection_name(name) {
        list.push(Problem::flag("--collection", m));
    }
    if let Err(m) = moulin::store::check_db(db, Access::Read) {
        list.push(Problem::flag("--db", m));
    }
    for (key, message) in query.problems() {
        list.push(match key.as_str() {
            "limit" => Problem::flag("--limit", message),
            _ => Problem::argument(message),
        });
    }
    if query.mode != Mode::Lexical
        && let Some(model) = &args.model.embedding_model
        && let Err(m) = moulin::embed::check_model(model)
    {
        list.push(Problem::flag("--embedding-model", m));
    }
    problems.into_result()?;

    let store = Store::connect(db, Access::Read).await?;
    let collection = store.open(name).await?;
    if let Some(filter) = query.filters.to_sql() {
        collection.check_filter(&filter).await?;
    }
    let searcher = Searcher::open(
        collection,
        args.model.embedding_model,
        query.mode == Mode::Lexical,
    )
    .await?;
    let hits = searcher.search(&query).await?;

    let mut out = std::io::stdout().lock();
    if args.json.json {
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
        writeln!(
            out,
            "{}. [{:.3}] {}{}",
            i + 1,
            hit.score,
            super::paths::short(&hit.uri),
            place
        )?;
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
