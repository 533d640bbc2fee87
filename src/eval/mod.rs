//! Evaluation: run an evaluation set against a collection and score it.
//!
//! [`set`] reads the questions, [`metrics`] scores one item, [`run_retrieval`]
//! asks every question of a set through one [`Searcher`] and aggregates the
//! scores with the counts of items scored, unjudged and failed (none dropped),
//! [`squad`] turns SQuAD-format QA data into a set and a corpus, [`html`]
//! writes a report as a page, and [`compare`] compares two runs.

pub mod compare;
pub mod html;
pub mod metrics;
pub mod set;
pub mod squad;

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::store::search::{Filters, Mode, Query, Searcher};
use metrics::{AtK, KS, RetrievalScores, Retrieved};
use set::Item;

/// How an evaluation retrieves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetrievalSettings {
    pub mode: Mode,
    /// Hits retrieved per question: at least the largest k scored.
    pub top_k: usize,
    #[serde(skip)]
    pub filters: Filters,
}

impl Default for RetrievalSettings {
    fn default() -> Self {
        RetrievalSettings {
            mode: Mode::Hybrid,
            top_k: 10,
            filters: Filters::default(),
        }
    }
}

/// What happened to one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    /// Retrieved and scored.
    Scored,
    /// Retrieved, but the set says nothing is relevant: no retrieval score.
    Unjudged,
    /// Could not be retrieved: the reason is in `error`.
    Failed,
}

/// A hit as an evaluation records it: enough to see what was retrieved and why it counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievedHit {
    pub rank: usize,
    pub chunk_id: String,
    pub source: String,
    pub score: f32,
    pub relevant: bool,
    pub text: String,
}

/// One item's result, a line of the results file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ItemResult {
    pub id: String,
    pub line: usize,
    pub question: String,
    pub status: ItemStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrieval: Option<RetrievalScores>,
    pub retrieved: Vec<RetrievedHit>,
}

/// Means over the scored items at one k.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Aggregate {
    pub items: usize,
    pub scored: usize,
    pub unjudged: usize,
    pub failed: usize,
    /// Means of hit, recall, precision and nDCG at each k over the scored items.
    pub at: Vec<AtK>,
    pub mrr: f64,
    pub seconds: f64,
    pub questions_per_second: f64,
}

/// Ask every item's question through `searcher` and score what comes back.
pub async fn run_retrieval(
    searcher: &Searcher,
    items: &[Item],
    settings: &RetrievalSettings,
) -> (Vec<ItemResult>, Aggregate) {
    let started = Instant::now();
    let limit = settings.top_k.max(1);
    let queries: Vec<Query> = items
        .iter()
        .map(|item| Query {
            text: item.question.clone(),
            mode: settings.mode,
            limit,
            filters: settings.filters.clone(),
        })
        .collect();
    let answers = searcher.search_many(&queries).await;
    let ks: Vec<usize> = KS.iter().copied().filter(|&k| k <= limit).collect();
    let results: Vec<ItemResult> = items
        .iter()
        .zip(answers)
        .map(|(item, answer)| {
            let mut result = ItemResult {
                id: item.id.clone(),
                line: item.line,
                question: item.question.clone(),
                status: ItemStatus::Failed,
                error: None,
                retrieval: None,
                retrieved: Vec::new(),
            };
            let hits = match answer {
                Ok(hits) => hits,
                Err(e) => {
                    result.error = Some(e.to_string());
                    return result;
                }
            };
            let retrieved: Vec<Retrieved> = hits
                .iter()
                .map(|h| Retrieved {
                    chunk_id: &h.chunk_id,
                    source: &h.source,
                    text: &h.text,
                })
                .collect();
            result.retrieval = metrics::retrieval(&retrieved, &item.relevant, &ks);
            result.status = match result.retrieval {
                Some(_) => ItemStatus::Scored,
                None => ItemStatus::Unjudged,
            };
            result.retrieved = hits
                .iter()
                .zip(&retrieved)
                .enumerate()
                .map(|(i, (hit, r))| RetrievedHit {
                    rank: i + 1,
                    chunk_id: hit.chunk_id.clone(),
                    source: hit.source.clone(),
                    score: hit.score,
                    relevant: !item.relevant.matches(r).is_empty(),
                    text: hit.text.clone(),
                })
                .collect();
            result
        })
        .collect();
    let seconds = started.elapsed().as_secs_f64();
    let aggregate = aggregate(&results, &ks, seconds);
    (results, aggregate)
}

/// Means over the scored items, with the counts of each status.
pub fn aggregate(results: &[ItemResult], ks: &[usize], seconds: f64) -> Aggregate {
    let count = |s: ItemStatus| results.iter().filter(|r| r.status == s).count();
    let scored: Vec<&RetrievalScores> = results
        .iter()
        .filter_map(|r| r.retrieval.as_ref())
        .collect();
    let mean_of = |k: usize, f: fn(&AtK) -> f64| {
        metrics::mean(scored.iter().filter_map(|s| s.at(k)).map(f)).unwrap_or(0.0)
    };
    Aggregate {
        items: results.len(),
        scored: scored.len(),
        unjudged: count(ItemStatus::Unjudged),
        failed: count(ItemStatus::Failed),
        at: ks
            .iter()
            .map(|&k| AtK {
                k,
                hit: mean_of(k, |a| a.hit),
                recall: mean_of(k, |a| a.recall),
                precision: mean_of(k, |a| a.precision),
                ndcg: mean_of(k, |a| a.ndcg),
            })
            .collect(),
        mrr: metrics::mean(scored.iter().map(|s| s.mrr)).unwrap_or(0.0),
        seconds,
        questions_per_second: results.len() as f64 / seconds.max(1e-9),
    }
}

impl Aggregate {
    /// The scores as a Markdown table, for a merge request.
    pub fn markdown(&self, title: &str) -> String {
        let mut out = format!("## {title}\n\n");
        out.push_str(&format!(
            "{} items: {} scored, {} unjudged, {} failed; {:.1} questions/s\n\n",
            self.items, self.scored, self.unjudged, self.failed, self.questions_per_second
        ));
        out.push_str("| k | hit | recall | precision | nDCG |\n|---|---|---|---|---|\n");
        for a in &self.at {
            out.push_str(&format!(
                "| {} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
                a.k, a.hit, a.recall, a.precision, a.ndcg
            ));
        }
        out.push_str(&format!("\nMRR: {:.3}\n", self.mrr));
        out
    }
}

/// Answer metrics of one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerScores {
    pub exact_match: f64,
    pub f1: f64,
    pub rouge_l: f64,
    /// A reference answer is in one of the passages the answer cites.
    pub reference_in_citations: f64,
    /// A reference answer is in one of the passages the model was given.
    pub reference_in_passages: f64,
}

/// One evaluated item: its answer, its citations and its scores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScoredAnswer {
    pub id: String,
    pub line: usize,
    pub question: String,
    pub status: ItemStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub answer: String,
    pub references: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scores: Option<AnswerScores>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrieval: Option<RetrievalScores>,
    /// Chunk ids of the passages the answer cites.
    pub cited: Vec<String>,
    pub invalid_citations: Vec<usize>,
    /// The passages the model was given, and whether each counted as relevant.
    pub retrieved: Vec<RetrievedHit>,
}

/// Means over the items with a reference (answers) and with judgments (retrieval).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnswerAggregate {
    pub items: usize,
    /// Answers scored against a reference.
    pub scored: usize,
    /// Answered, but the set gives no reference.
    pub unjudged: usize,
    pub failed: usize,
    pub exact_match: f64,
    pub f1: f64,
    pub rouge_l: f64,
    pub reference_in_citations: f64,
    pub reference_in_passages: f64,
    /// Share of answers citing a passage that was not given.
    pub invalid_citations: f64,
    /// Share of answers citing nothing.
    pub uncited: f64,
    /// Retrieval metrics over the passages the model was given.
    pub retrieval: Aggregate,
}

/// Score answers (in item order, one per item) against the set's references and judgments.
pub fn score_answers(
    items: &[Item],
    answers: &[crate::jobs::answer::AnswerLine],
    top_k: usize,
    seconds: f64,
) -> (Vec<ScoredAnswer>, AnswerAggregate) {
    let ks: Vec<usize> = KS.iter().copied().filter(|&k| k <= top_k.max(1)).collect();
    let by_id: std::collections::HashMap<&str, &crate::jobs::answer::AnswerLine> =
        answers.iter().map(|a| (a.id.as_str(), a)).collect();
    let mut scored = Vec::new();
    let mut retrieval_results = Vec::new();
    for item in items {
        let answer = by_id.get(item.id.as_str());
        let mut s = ScoredAnswer {
            id: item.id.clone(),
            line: item.line,
            question: item.question.clone(),
            status: ItemStatus::Failed,
            error: None,
            answer: String::new(),
            references: item.references.clone(),
            scores: None,
            retrieval: None,
            cited: Vec::new(),
            invalid_citations: Vec::new(),
            retrieved: Vec::new(),
        };
        match answer {
            None => s.error = Some("no answer".into()),
            Some(a) if a.status != "ok" => s.error = a.reason.clone(),
            Some(a) => {
                s.answer = a.answer.clone();
                s.cited = a.citations.iter().map(|c| c.chunk_id.clone()).collect();
                s.invalid_citations = a.invalid_citations.clone();
                let retrieved: Vec<Retrieved> = a
                    .passages
                    .iter()
                    .map(|p| Retrieved {
                        chunk_id: &p.chunk_id,
                        source: &p.source,
                        text: &p.text,
                    })
                    .collect();
                s.retrieval = metrics::retrieval(&retrieved, &item.relevant, &ks);
                s.retrieved = a
                    .passages
                    .iter()
                    .zip(&retrieved)
                    .map(|(p, r)| RetrievedHit {
                        rank: p.n,
                        chunk_id: p.chunk_id.clone(),
                        source: p.source.clone(),
                        score: p.score,
                        relevant: !item.relevant.matches(r).is_empty(),
                        text: p.text.clone(),
                    })
                    .collect();
                if item.references.is_empty() {
                    s.status = ItemStatus::Unjudged;
                } else {
                    let cited: Vec<&str> = a.citations.iter().map(|c| c.text.as_str()).collect();
                    let given: Vec<&str> = a.passages.iter().map(|p| p.text.as_str()).collect();
                    s.scores = Some(AnswerScores {
                        exact_match: metrics::exact_match(&a.answer, &item.references),
                        f1: metrics::token_f1(&a.answer, &item.references),
                        rouge_l: metrics::rouge_l(&a.answer, &item.references),
                        reference_in_citations: metrics::reference_in(&cited, &item.references),
                        reference_in_passages: metrics::reference_in(&given, &item.references),
                    });
                    s.status = ItemStatus::Scored;
                }
            }
        }
        retrieval_results.push(ItemResult {
            id: s.id.clone(),
            line: s.line,
            question: s.question.clone(),
            status: match (&s.status, &s.retrieval) {
                (ItemStatus::Failed, _) => ItemStatus::Failed,
                (_, Some(_)) => ItemStatus::Scored,
                (_, None) => ItemStatus::Unjudged,
            },
            error: None,
            retrieval: s.retrieval.clone(),
            retrieved: Vec::new(),
        });
        scored.push(s);
    }
    let with_scores: Vec<&AnswerScores> = scored.iter().filter_map(|s| s.scores.as_ref()).collect();
    let answered: Vec<&ScoredAnswer> = scored
        .iter()
        .filter(|s| s.status != ItemStatus::Failed)
        .collect();
    let mean_of = |f: fn(&AnswerScores) -> f64| {
        metrics::mean(with_scores.iter().map(|s| f(s))).unwrap_or(0.0)
    };
    let share = |f: &dyn Fn(&ScoredAnswer) -> bool| {
        metrics::mean(answered.iter().map(|s| f64::from(u8::from(f(s))))).unwrap_or(0.0)
    };
    let count = |st: ItemStatus| scored.iter().filter(|s| s.status == st).count();
    let aggregate = AnswerAggregate {
        items: scored.len(),
        scored: with_scores.len(),
        unjudged: count(ItemStatus::Unjudged),
        failed: count(ItemStatus::Failed),
        exact_match: mean_of(|s| s.exact_match),
        f1: mean_of(|s| s.f1),
        rouge_l: mean_of(|s| s.rouge_l),
        reference_in_citations: mean_of(|s| s.reference_in_citations),
        reference_in_passages: mean_of(|s| s.reference_in_passages),
        invalid_citations: share(&|s| !s.invalid_citations.is_empty()),
        uncited: share(&|s| s.cited.is_empty()),
        retrieval: aggregate(&retrieval_results, &ks, seconds),
    };
    (scored, aggregate)
}

impl AnswerAggregate {
    /// The scores as Markdown, for a merge request.
    pub fn markdown(&self, title: &str) -> String {
        let mut out = format!("## {title}\n\n");
        out.push_str(&format!(
            "{} items: {} scored, {} without a reference, {} failed\n\n",
            self.items, self.scored, self.unjudged, self.failed
        ));
        out.push_str("| metric | value |\n|---|---|\n");
        for (name, v) in [
            ("exact match", self.exact_match),
            ("token F1", self.f1),
            ("ROUGE-L", self.rouge_l),
            (
                "reference in the cited passages",
                self.reference_in_citations,
            ),
            (
                "reference in the passages given",
                self.reference_in_passages,
            ),
            ("answers citing a passage not given", self.invalid_citations),
            ("answers citing nothing", self.uncited),
        ] {
            out.push_str(&format!("| {name} | {v:.3} |\n"));
        }
        out.push('\n');
        out.push_str(
            &self
                .retrieval
                .markdown("Retrieval (the passages given to the model)")
                .replacen("## ", "### ", 1),
        );
        out
    }
}

/// Run an evaluate job: answer the set's questions (resumable, in the job's
/// output), then score them.
pub async fn evaluate(
    config: &crate::jobs::config::JobConfig,
    items: &[Item],
    progress: impl FnMut(usize, usize),
) -> crate::error::Result<(Vec<ScoredAnswer>, crate::jobs::JobReport)> {
    let questions: Vec<crate::jobs::answer::Question> = items
        .iter()
        .map(|i| crate::jobs::answer::Question {
            id: i.id.clone(),
            text: i.question.clone(),
        })
        .collect();
    let (answers, mut report) = crate::jobs::run_answers(
        config,
        &questions,
        Some(std::path::Path::new(&config.output)),
        progress,
    )
    .await?;
    let (scored, aggregate) = score_answers(
        items,
        &answers,
        config.retrieval.top_k,
        report.usage.seconds.total,
    );
    report.scores = Some(serde_json::to_value(&aggregate).expect("serializable scores"));
    Ok((scored, report))
}
