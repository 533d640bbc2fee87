//! `moulin search`: checks its options and queries, opens the collection read-only,
//! answers every query with one loaded model, renders the hits.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use moulin::config::{Problem, Problems};
use moulin::store::search::{Filters, Hit, Mode, Query, Searcher, read_queries};
use moulin::store::{Access, Store};

use super::args;

#[derive(Args)]
pub struct SearchArgs {
    /// What to look for, in any language the embedding model knows; several
    /// queries are answered in one process, the model loaded once.
    #[arg(value_name = "QUERY", required_unless_present = "queries")]
    query: Vec<String>,
    /// Read queries from a JSON Lines file (`-` for stdin): one object per line
    /// with `query`, `question` or `user_input` and an optional `id`, or a string.
    #[arg(long, value_name = "FILE")]
    queries: Option<std::path::PathBuf>,
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

/// A query to answer, named as the user will see it in the output.
struct Asked {
    id: String,
    query: Query,
}

pub async fn command(args: SearchArgs) -> Result<u8> {
    let filters = Filters {
        source: args.source,
        format: args.format,
        metadata: args.metadata,
        sql: args.sql,
    };
    let ask = |id: String, text: String| Asked {
        id,
        query: Query {
            text,
            mode: args.mode,
            limit: args.limit,
            filters: filters.clone(),
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
    // One query as an argument keeps the plain output: a list of hits.
    let single = args.query.len() == 1 && args.queries.is_none();
    let mut asked: Vec<Asked> = Vec::new();
    for (i, text) in args.query.into_iter().enumerate() {
        asked.push(ask((i + 1).to_string(), text));
    }
    let mut unreadable = Vec::new();
    if let Some(path) = &args.queries {
        match read_file(path) {
            Err(m) => list.push(Problem::flag("--queries", m)),
            Ok(text) => {
                let before = asked.len();
                for line in read_queries(&text) {
                    match line {
                        Ok(q) => asked.push(ask(q.id, q.text)),
                        Err(m) => unreadable.push(format!("{}: {m}", path.display())),
                    }
                }
                if asked.len() == before && unreadable.is_empty() {
                    list.push(Problem::flag(
                        "--queries",
                        format!("{} holds no queries", path.display()),
                    ));
                }
            }
        }
    }
    // The query's own problems are said for an argument given alone; in a
    // batch, an empty query is that query's error and the others go on.
    if let Some(first) = asked.first() {
        for (key, message) in first.query.problems() {
            match key.as_str() {
                "limit" => list.push(Problem::flag("--limit", message)),
                _ if single => list.push(Problem::argument(message)),
                _ => {}
            }
        }
    }
    if args.mode != Mode::Lexical
        && let Some(model) = &args.model.embedding_model
        && let Err(m) = moulin::embed::check_model(model)
    {
        list.push(Problem::flag("--embedding-model", m));
    }
    problems.into_result()?;

    let store = Store::connect(db, Access::Read).await?;
    let collection = store.open(name).await?;
    if let Some(filter) = filters.to_sql() {
        collection.check_filter(&filter).await?;
    }
    let searcher = Searcher::open(
        collection,
        args.model.embedding_model,
        args.mode == Mode::Lexical,
    )
    .await?;
    let queries: Vec<Query> = asked.iter().map(|a| a.query.clone()).collect();
    let answers = searcher.search_many(&queries).await;

    let mut failed = unreadable.len();
    for message in &unreadable {
        super::style::error_line(message);
    }
    let mut out = std::io::stdout().lock();
    if single {
        let hits = answers.into_iter().next().expect("one answer")?;
        if args.json.json {
            serde_json::to_writer_pretty(&mut out, &hits)?;
            writeln!(out)?;
        } else {
            if hits.is_empty() {
                eprintln!("no results");
            }
            write_hits(&mut out, &hits)?;
        }
        return Ok(0);
    }
    for (asked, answer) in asked.iter().zip(answers) {
        if let Err(e) = &answer {
            failed += 1;
            super::style::error_line(&format!("query {}: {e}", asked.id));
        }
        if args.json.json {
            let mut line = serde_json::json!({ "id": asked.id, "query": asked.query.text });
            match answer {
                Ok(hits) => line["hits"] = serde_json::to_value(hits)?,
                Err(e) => line["error"] = e.to_string().into(),
            }
            serde_json::to_writer(&mut out, &line)?;
            writeln!(out)?;
        } else if let Ok(hits) = answer {
            writeln!(out, "query {}: {}", asked.id, asked.query.text)?;
            if hits.is_empty() {
                writeln!(out, "   no results")?;
            }
            write_hits(&mut out, &hits)?;
        }
    }
    Ok(u8::from(failed > 0))
}

fn read_file(path: &std::path::Path) -> std::result::Result<String, String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
        return Ok(text);
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn write_hits(out: &mut impl Write, hits: &[Hit]) -> std::io::Result<()> {
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
    Ok(())
}
