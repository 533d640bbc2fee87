//! Search a collection: semantic (vectors), lexical (full-text index) or hybrid (both, fused).

use std::collections::HashMap;

use arrow_array::{Array, Float32Array, RecordBatch, UInt32Array, UInt64Array};
use futures::{StreamExt, TryStreamExt};
use lancedb::DistanceType;
use lancedb::index::scalar::FullTextSearchQuery;
use lancedb::query::{ExecutableQuery, QueryBase, Select};
use serde::{Deserialize, Serialize};

use crate::embed::{Embedder, OnnxEmbedder};
use crate::error::{Error, Result};
use crate::store::{Collection, sql_string, string_column};

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Nearest vectors to the embedded query.
    Semantic,
    /// BM25 over the full-text index (French stemming, stop words, accents folded).
    Lexical,
    /// Both, merged by reciprocal rank fusion.
    #[default]
    Hybrid,
}

/// The constant of reciprocal rank fusion, as in OpenGateLLM and the RRF paper.
const RRF_K: f32 = 60.0;

/// Once a collection has a vector index (IVF-PQ), the nearest `limit × this`
/// candidates are re-ranked by their exact distance: on 50 000 clustered vectors
/// recall@10 goes from 0.21 to 1.00 for 5 ms a query instead of 2 (exact search:
/// 34 ms). `cargo bench --bench collections` measures it.
const VECTOR_REFINE: u32 = 20;

#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// Sources matching this pattern (`*` and `?` wildcards; a plain string matches a substring).
    pub source: Option<String>,
    pub format: Option<String>,
    /// `key=value` pairs the document metadata must hold.
    pub metadata: Vec<(String, String)>,
    /// A raw SQL predicate over the collection's columns.
    pub sql: Option<String>,
}

impl Filters {
    pub fn to_sql(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(source) = &self.source {
            let pattern = if source.contains(['*', '?']) {
                sql_string(source).replace('*', "%").replace('?', "_")
            } else {
                format!("%{}%", sql_string(source))
            };
            parts.push(format!("source LIKE '{pattern}'"));
        }
        if let Some(format) = &self.format {
            parts.push(format!("format = '{}'", sql_string(format)));
        }
        for (key, value) in &self.metadata {
            // Metadata is stored as compact JSON, so a key/value pair has one spelling.
            let pair =
                serde_json::to_string(&serde_json::json!({ key: value })).expect("serializable");
            let pair = pair.trim_start_matches('{').trim_end_matches('}');
            parts.push(format!("metadata LIKE '%{}%'", sql_string(pair)));
        }
        if let Some(sql) = &self.sql {
            parts.push(format!("({sql})"));
        }
        (!parts.is_empty()).then(|| parts.join(" AND "))
    }
}

/// Whether a source matches a pattern as `--source` means it: `*` and `?`
/// wildcards over the whole source, else a substring.
pub fn source_matches(pattern: &str, source: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return source.contains(pattern);
    }
    let mut regex = String::from("^");
    for c in pattern.chars() {
        match c {
            '*' => regex.push_str(".*"),
            '?' => regex.push('.'),
            c => regex.push_str(&regex::escape(&c.to_string())),
        }
    }
    regex.push('$');
    regex::Regex::new(&regex).is_ok_and(|r| r.is_match(source))
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub chunk_id: String,
    pub document_id: String,
    pub score: f32,
    /// `{source name}/{relative path}`, or the URL: the document's stable name.
    pub source: String,
    /// Where a person can open it: the absolute path when it was read, or the URL.
    pub uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub page: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_end: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sheet: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<[u32; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headings: Option<String>,
    /// The chunk's byte range in its document's extracted text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<[u64; 2]>,
    pub text: String,
}

const COLUMNS: &[&str] = &[
    "chunk_id",
    "document_id",
    "source",
    "title",
    "page_start",
    "page_end",
    "sheet",
    "row_start",
    "row_end",
    "headings",
    "text",
];

/// The columns a search reads, with its score: `uri` where the collection has it.
fn with<'a>(collection: &Collection, score: &'a str) -> Vec<&'a str> {
    let mut v = COLUMNS.to_vec();
    if collection.info.schema_version >= crate::store::schema::SCHEMA_VERSION {
        v.extend(["uri", "byte_start", "byte_end"]);
    }
    v.push(score);
    v
}

/// One search: the query, how to match it, how many hits, which rows.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub text: String,
    pub mode: Mode,
    pub limit: usize,
    pub filters: Filters,
}

impl Query {
    /// Problems with this query, each with its key (`query`, `limit`).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.text.trim().is_empty() {
            out.push(("query".into(), "the query is empty".into()));
        }
        if self.limit == 0 {
            out.push(("limit".into(), "must be at least 1".into()));
        }
        out
    }
}

/// The fields a line of a questions file may name its text with: moulin's own,
/// ragas/ragtime's and evalap's.
pub const QUESTION_FIELDS: &[&str] = &["query", "question", "user_input"];

/// A query read from a JSON Lines file: its id (given, else its line number) and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryLine {
    pub id: String,
    pub line: usize,
    pub text: String,
}

/// Read a JSON Lines file of queries: each line an object with `query`,
/// `question` or `user_input` (and an optional `id`), or a JSON string. Blank
/// lines are skipped; a line that is not a query gets its own error, with its
/// number, and the others are read.
pub fn read_queries(text: &str) -> Vec<std::result::Result<QueryLine, String>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse_query_line(line, number).map_err(|m| format!("line {number}: {m}")));
    }
    refuse_repeated_ids(out, |q| (q.id.as_str(), q.line))
}

/// A line whose id an earlier line has becomes an error: results are kept by id,
/// so two questions with one id would share one answer.
pub fn refuse_repeated_ids<T>(
    lines: Vec<std::result::Result<T, String>>,
    id: impl Fn(&T) -> (&str, usize),
) -> Vec<std::result::Result<T, String>> {
    let mut first: HashMap<String, usize> = HashMap::new();
    lines
        .into_iter()
        .map(|line| {
            let item = line?;
            let (key, number) = id(&item);
            match first.get(key) {
                Some(earlier) => Err(format!(
                    "line {number}: id {key} is already the id of line {earlier}"
                )),
                None => {
                    first.insert(key.to_string(), number);
                    Ok(item)
                }
            }
        })
        .collect()
}

fn parse_query_line(line: &str, number: usize) -> std::result::Result<QueryLine, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let (id, text) = match &value {
        serde_json::Value::String(s) => (None, s.clone()),
        serde_json::Value::Object(map) => {
            let text = QUESTION_FIELDS
                .iter()
                .find_map(|f| map.get(*f))
                .ok_or_else(|| format!("no {} field", QUESTION_FIELDS.join(" or ")))?;
            let text = text
                .as_str()
                .ok_or_else(|| "the question is not a string".to_string())?;
            let id = match map.get("id") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(other) => Some(other.to_string()),
            };
            (id, text.to_string())
        }
        _ => return Err("expected an object with a query, or a string".into()),
    };
    Ok(QueryLine {
        id: id.unwrap_or_else(|| number.to_string()),
        line: number,
        text,
    })
}

/// A collection opened for searching, with its embedding model loaded once for
/// every query that follows.
pub struct Searcher {
    collection: Collection,
    embedder: Option<OnnxEmbedder>,
}

impl Searcher {
    /// Search `collection`; `model` replaces the embedding model it records, and
    /// no model is loaded when only lexical searches will run.
    pub async fn open(
        collection: Collection,
        model: Option<String>,
        lexical_only: bool,
    ) -> Result<Self> {
        if lexical_only {
            return Ok(Searcher {
                collection,
                embedder: None,
            });
        }
        let info = collection.info.clone();
        let onnx = crate::embed::OnnxConfig {
            model: model.unwrap_or_else(|| info.model.clone()),
            query_prefix: Some(info.query_prefix.clone()),
            passage_prefix: Some(info.passage_prefix.clone()),
            ..Default::default()
        };
        let embedder = tokio::task::spawn_blocking(move || OnnxEmbedder::load(&onnx))
            .await
            .expect("model loading does not panic")?;
        info.check_model(&collection.name, embedder.info())?;
        Ok(Searcher {
            collection,
            embedder: Some(embedder),
        })
    }

    pub fn collection(&self) -> &Collection {
        &self.collection
    }

    /// One query.
    pub async fn search(&self, query: &Query) -> Result<Vec<Hit>> {
        self.search_many(std::slice::from_ref(query))
            .await
            .pop()
            .expect("one answer per query")
    }

    /// Many queries, one answer each, in order: the queries that need vectors
    /// are embedded together in batches, and the searches run a few at a time.
    /// A bad query gets its own error; the others are answered.
    pub async fn search_many(&self, queries: &[Query]) -> Vec<Result<Vec<Hit>>> {
        let invalid = |query: &Query| {
            query
                .problems()
                .into_iter()
                .next()
                .map(|(key, problem)| format!("search {key}: {problem}"))
        };
        let to_embed: Vec<usize> = (0..queries.len())
            .filter(|&i| queries[i].mode != Mode::Lexical && invalid(&queries[i]).is_none())
            .collect();
        let mut vectors: Vec<Option<std::result::Result<Vec<f32>, String>>> =
            vec![None; queries.len()];
        if !to_embed.is_empty() {
            match &self.embedder {
                None => {
                    for &i in &to_embed {
                        vectors[i] = Some(Err("semantic search needs the embedding model".into()));
                    }
                }
                Some(embedder) => {
                    let texts: Vec<&str> =
                        to_embed.iter().map(|&i| queries[i].text.as_str()).collect();
                    match embedder.embed_queries(&texts) {
                        Ok(embedded) => {
                            for (&i, v) in to_embed.iter().zip(embedded) {
                                vectors[i] = Some(Ok(v));
                            }
                        }
                        Err(e) => {
                            for &i in &to_embed {
                                vectors[i] = Some(Err(e.to_string()));
                            }
                        }
                    }
                }
            }
        }
        let fail = |reason: String| Error::Collection {
            collection: self.collection.name.clone(),
            reason,
        };
        futures::stream::iter(queries.iter().zip(vectors))
            .map(|(query, vector)| async move {
                if let Some(reason) = invalid(query) {
                    return Err(fail(reason));
                }
                let vector = vector.transpose().map_err(fail)?;
                self.run(query, vector).await
            })
            .buffered(SEARCHES_AT_ONCE)
            .collect()
            .await
    }

    async fn run(&self, query: &Query, vector: Option<Vec<f32>>) -> Result<Vec<Hit>> {
        let filter = query.filters.to_sql();
        let (collection, text, limit) = (&self.collection, query.text.as_str(), query.limit);
        let vector = || vector.clone().expect("semantic queries are embedded");
        match query.mode {
            Mode::Semantic => semantic(collection, vector(), limit, filter.as_deref()).await,
            Mode::Lexical => lexical(collection, text, limit, filter.as_deref()).await,
            Mode::Hybrid => {
                let (a, b) = futures::join!(
                    semantic(collection, vector(), 2 * limit, filter.as_deref()),
                    lexical(collection, text, 2 * limit, filter.as_deref())
                );
                Ok(fuse(&[a?, b?], limit))
            }
        }
    }
}

/// How many searches of a batch run at once: LanceDB spreads each one over the
/// cores already, a few more keep them busy while others wait on files.
const SEARCHES_AT_ONCE: usize = 4;

/// Reciprocal rank fusion, keyed by chunk id (never by adding ids together).
pub fn fuse(lists: &[Vec<Hit>], limit: usize) -> Vec<Hit> {
    let mut scores: HashMap<&str, (f32, &Hit)> = HashMap::new();
    for list in lists {
        for (rank, hit) in list.iter().enumerate() {
            let entry = scores.entry(hit.chunk_id.as_str()).or_insert((0.0, hit));
            entry.0 += 1.0 / (RRF_K + rank as f32 + 1.0);
        }
    }
    let mut fused: Vec<Hit> = scores
        .into_values()
        .map(|(score, hit)| Hit {
            score,
            ..hit.clone()
        })
        .collect();
    fused.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.chunk_id.cmp(&b.chunk_id))
    });
    fused.truncate(limit);
    fused
}

async fn semantic(
    collection: &Collection,
    vector: Vec<f32>,
    limit: usize,
    filter: Option<&str>,
) -> Result<Vec<Hit>> {
    let err = |e: lancedb::Error| Error::Collection {
        collection: collection.name.clone(),
        reason: crate::store::describe(&e),
    };
    let mut q = collection
        .table
        .vector_search(vector)
        .map_err(err)?
        .distance_type(DistanceType::Cosine)
        .refine_factor(VECTOR_REFINE)
        .select(Select::columns(&with(collection, "_distance")))
        .limit(limit);
    if let Some(f) = filter {
        q = q.only_if(f);
    }
    let batches: Vec<RecordBatch> = q
        .execute()
        .await
        .map_err(err)?
        .try_collect()
        .await
        .map_err(err)?;
    Ok(hits(&batches, "_distance", |d| 1.0 - d))
}

async fn lexical(
    collection: &Collection,
    query: &str,
    limit: usize,
    filter: Option<&str>,
) -> Result<Vec<Hit>> {
    let err = |e: lancedb::Error| Error::Collection {
        collection: collection.name.clone(),
        reason: format!("full-text search: {}", crate::store::describe(&e)),
    };
    let mut q = collection
        .table
        .query()
        .full_text_search(FullTextSearchQuery::new(query.to_string()))
        .select(Select::columns(&with(collection, "_score")))
        .limit(limit);
    if let Some(f) = filter {
        q = q.only_if(f);
    }
    let batches: Vec<RecordBatch> = q
        .execute()
        .await
        .map_err(err)?
        .try_collect()
        .await
        .map_err(err)?;
    let mut out = hits(&batches, "_score", |s| s);
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(out)
}

fn hits(batches: &[RecordBatch], score_column: &str, score: impl Fn(f32) -> f32) -> Vec<Hit> {
    let mut out = Vec::new();
    for batch in batches {
        let s = |name| string_column(batch, name);
        let u = |name| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<UInt32Array>())
        };
        let scores = batch
            .column_by_name(score_column)
            .and_then(|c| c.as_any().downcast_ref::<Float32Array>());
        let opt_str = |col: Option<&arrow_array::StringArray>, i: usize| {
            col.filter(|c| !c.is_null(i))
                .map(|c| c.value(i).to_string())
        };
        let opt_u32 =
            |col: Option<&UInt32Array>, i: usize| col.filter(|c| !c.is_null(i)).map(|c| c.value(i));
        let u64s = |name| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
        };
        for i in 0..batch.num_rows() {
            let rows = match (opt_u32(u("row_start"), i), opt_u32(u("row_end"), i)) {
                (Some(a), Some(b)) => Some([a, b]),
                _ => None,
            };
            let page = opt_u32(u("page_start"), i);
            let page_end = opt_u32(u("page_end"), i).filter(|e| Some(*e) != page);
            out.push(Hit {
                chunk_id: opt_str(s("chunk_id"), i).unwrap_or_default(),
                document_id: opt_str(s("document_id"), i).unwrap_or_default(),
                score: scores.map(|c| score(c.value(i))).unwrap_or(0.0),
                source: opt_str(s("source"), i).unwrap_or_default(),
                uri: opt_str(s("uri"), i)
                    .or_else(|| opt_str(s("source"), i))
                    .unwrap_or_default(),
                title: opt_str(s("title"), i),
                page,
                page_end,
                sheet: opt_str(s("sheet"), i),
                rows,
                headings: opt_str(s("headings"), i),
                bytes: u64s("byte_start")
                    .zip(u64s("byte_end"))
                    .map(|(a, b)| [a.value(i), b.value(i)]),
                text: opt_str(s("text"), i).unwrap_or_default(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(id: &str) -> Hit {
        Hit {
            chunk_id: id.into(),
            document_id: String::new(),
            score: 0.0,
            source: String::new(),
            uri: String::new(),
            title: None,
            page: None,
            page_end: None,
            sheet: None,
            rows: None,
            headings: None,
            bytes: None,
            text: String::new(),
        }
    }

    #[test]
    fn fusion_rewards_agreement_and_never_merges_distinct_ids() {
        // Ids that would collide if ids were added together, as OpenGateLLM's merge does.
        let a = vec![hit("5-3"), hit("6-2"), hit("1-1")];
        let b = vec![hit("6-2"), hit("9-9")];
        let fused = fuse(&[a, b], 10);
        assert_eq!(fused[0].chunk_id, "6-2");
        assert_eq!(fused.len(), 4);
    }

    #[test]
    fn query_files_take_the_ecosystems_field_names_and_keep_going() {
        let text = r#"{"id": "q1", "query": "préavis"}

{"question": "période d'essai", "id": 7}
"démission"
{"user_input": "congés"}
{"reference": "no question here"}
not json
{"id": "q1", "query": "again"}
"#;
        let read = read_queries(text);
        let ok: Vec<(&str, usize, &str)> = read
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|q| (q.id.as_str(), q.line, q.text.as_str()))
            .collect();
        assert_eq!(
            ok,
            [
                ("q1", 1, "préavis"),
                ("7", 3, "période d'essai"),
                ("4", 4, "démission"),
                ("5", 5, "congés"),
            ]
        );
        let errors: Vec<&String> = read.iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(errors.len(), 3);
        assert!(
            errors[0].starts_with("line 6: no query or question"),
            "{}",
            errors[0]
        );
        assert!(errors[1].starts_with("line 7: not JSON"), "{}", errors[1]);
        assert_eq!(errors[2], "line 8: id q1 is already the id of line 1");
    }

    #[test]
    fn source_patterns_match_as_the_sql_filter_does() {
        assert!(source_matches("*.pdf", "demo/a.pdf"));
        assert!(!source_matches("*.pdf", "demo/a.pdf.txt"));
        assert!(source_matches("fiche", "demo/fiche-cdd.html"));
        assert!(source_matches("demo/fiche-???.html", "demo/fiche-cdd.html"));
    }

    #[test]
    fn filters_become_sql() {
        let f = Filters {
            source: Some("*.pdf".into()),
            metadata: vec![("language".into(), "fr".into())],
            ..Default::default()
        };
        assert_eq!(
            f.to_sql().unwrap(),
            r#"source LIKE '%.pdf' AND metadata LIKE '%"language":"fr"%'"#
        );
    }
}
