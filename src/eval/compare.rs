//! Compare two evaluation reports (`moulin eval run --report`): the difference
//! of every metric, the items that got worse, and whether a metric dropped by
//! more than a threshold (for CI).

use serde::Serialize;
use serde_json::Value;

/// One metric in both runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricDiff {
    pub metric: String,
    pub a: f64,
    pub b: f64,
    /// `b - a`.
    pub delta: f64,
    /// Whether a larger value is better (false for shares of bad answers).
    pub higher_is_better: bool,
    /// Worse by more than the threshold.
    pub regression: bool,
}

/// An item whose score went down.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemDiff {
    pub id: String,
    pub question: String,
    /// The item's main score: answer F1, else retrieval MRR.
    pub a: f64,
    pub b: f64,
    pub delta: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub metrics: Vec<MetricDiff>,
    /// Items in both runs whose main score dropped, the largest drop first.
    pub worse_items: Vec<ItemDiff>,
    /// Items only in one of the runs.
    pub only_in_a: usize,
    pub only_in_b: usize,
    pub threshold: f64,
    pub regressions: usize,
}

/// The metrics of a report, with whether higher is better.
pub fn metrics(report: &Value) -> Result<Vec<(String, f64, bool)>, String> {
    let scores = &report["scores"];
    let mut out = Vec::new();
    let retrieval = |agg: &Value, prefix: &str, out: &mut Vec<(String, f64, bool)>| {
        for at in agg["at"].as_array().into_iter().flatten() {
            let k = at["k"].as_u64().unwrap_or(0);
            for m in ["hit", "recall", "precision", "ndcg"] {
                if let Some(v) = at[m].as_f64() {
                    out.push((format!("{prefix}{m}@{k}"), v, true));
                }
            }
        }
        if let Some(v) = agg["mrr"].as_f64() {
            out.push((format!("{prefix}mrr"), v, true));
        }
    };
    if scores["f1"].is_number() {
        for (m, higher) in [
            ("exact_match", true),
            ("f1", true),
            ("rouge_l", true),
            ("reference_in_citations", true),
            ("reference_in_passages", true),
            ("invalid_citations", false),
            ("uncited", false),
        ] {
            if let Some(v) = scores[m].as_f64() {
                out.push((m.to_string(), v, higher));
            }
        }
        retrieval(&scores["retrieval"], "retrieval ", &mut out);
    } else if scores["at"].is_array() {
        retrieval(scores, "", &mut out);
    } else {
        return Err(
            "not an evaluation report (no scores): write one with `moulin eval run --report`"
                .into(),
        );
    }
    Ok(out)
}

/// The main score of an item: its answer F1, else its retrieval MRR.
fn item_score(item: &Value) -> Option<f64> {
    item["scores"]["f1"]
        .as_f64()
        .or_else(|| item["retrieval"]["mrr"].as_f64())
}

/// Compare run `b` with run `a`.
pub fn compare(a: &Value, b: &Value, threshold: f64) -> Result<Comparison, String> {
    let (ma, mb) = (metrics(a)?, metrics(b)?);
    let mut out = Vec::new();
    for (name, va, higher) in &ma {
        let Some((_, vb, _)) = mb.iter().find(|(n, _, _)| n == name) else {
            continue;
        };
        let delta = vb - va;
        let drop = if *higher { -delta } else { delta };
        out.push(MetricDiff {
            metric: name.clone(),
            a: *va,
            b: *vb,
            delta,
            higher_is_better: *higher,
            regression: drop > threshold + 1e-12,
        });
    }
    if out.is_empty() {
        return Err("the two reports have no metric in common".into());
    }
    let items = |r: &Value| -> Vec<(String, String, Option<f64>)> {
        r["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                (
                    i["id"].as_str().unwrap_or_default().to_string(),
                    i["question"].as_str().unwrap_or_default().to_string(),
                    item_score(i),
                )
            })
            .collect()
    };
    let (ia, ib) = (items(a), items(b));
    let mut worse = Vec::new();
    for (id, question, sa) in &ia {
        if let Some((_, _, sb)) = ib.iter().find(|(i, _, _)| i == id) {
            let (sa, sb) = (sa.unwrap_or(0.0), sb.unwrap_or(0.0));
            if sb < sa {
                worse.push(ItemDiff {
                    id: id.clone(),
                    question: question.clone(),
                    a: sa,
                    b: sb,
                    delta: sb - sa,
                });
            }
        }
    }
    worse.sort_by(|x, y| x.delta.total_cmp(&y.delta).then(x.id.cmp(&y.id)));
    let only_in_a = ia
        .iter()
        .filter(|(i, _, _)| !ib.iter().any(|(j, _, _)| j == i))
        .count();
    let only_in_b = ib
        .iter()
        .filter(|(i, _, _)| !ia.iter().any(|(j, _, _)| j == i))
        .count();
    let regressions = out.iter().filter(|m| m.regression).count();
    Ok(Comparison {
        metrics: out,
        worse_items: worse,
        only_in_a,
        only_in_b,
        threshold,
        regressions,
    })
}

impl Comparison {
    /// For a person: the metrics, then the items that got worse (at most `items`).
    pub fn text(&self, items: usize) -> String {
        let mut out = String::from("| metric | A | B | Δ |\n|---|---|---|---|\n");
        for m in &self.metrics {
            out.push_str(&format!(
                "| {}{} | {:.3} | {:.3} | {:+.3} |\n",
                m.metric,
                if m.regression { " (worse)" } else { "" },
                m.a,
                m.b,
                m.delta
            ));
        }
        if !self.worse_items.is_empty() {
            out.push_str(&format!(
                "\n{} items got worse (main score: answer F1, else MRR):\n",
                self.worse_items.len()
            ));
            for i in self.worse_items.iter().take(items) {
                out.push_str(&format!(
                    "  {:+.3}  {} ({:.3} → {:.3}): {}\n",
                    i.delta, i.id, i.a, i.b, i.question
                ));
            }
            if self.worse_items.len() > items {
                out.push_str(&format!(
                    "  … and {} more\n",
                    self.worse_items.len() - items
                ));
            }
        }
        if self.only_in_a + self.only_in_b > 0 {
            out.push_str(&format!(
                "\n{} items only in A, {} only in B\n",
                self.only_in_a, self.only_in_b
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(hit1: f64, mrr: f64, items: &[(&str, f64)]) -> Value {
        serde_json::json!({
            "scores": {"at": [{"k": 1, "hit": hit1, "recall": hit1, "precision": hit1, "ndcg": hit1}], "mrr": mrr},
            "items": items.iter().map(|(id, m)| serde_json::json!({"id": id, "question": "q", "retrieval": {"mrr": m}})).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn drops_beyond_the_threshold_are_regressions_and_worse_items_are_listed() {
        let a = report(0.80, 0.85, &[("1", 1.0), ("2", 0.5), ("3", 1.0)]);
        let b = report(0.70, 0.84, &[("1", 0.5), ("2", 1.0), ("4", 1.0)]);
        let c = compare(&a, &b, 0.02).unwrap();
        let hit = c.metrics.iter().find(|m| m.metric == "hit@1").unwrap();
        assert!(hit.regression && (hit.delta + 0.1).abs() < 1e-9);
        let mrr = c.metrics.iter().find(|m| m.metric == "mrr").unwrap();
        assert!(!mrr.regression, "a drop of 0.01 is within 0.02");
        assert_eq!(c.regressions, 4, "hit, recall, precision, nDCG at 1");
        assert_eq!(c.worse_items.len(), 1);
        assert_eq!(c.worse_items[0].id, "1");
        assert_eq!((c.only_in_a, c.only_in_b), (1, 1));
        // Lower is better for the share of answers citing a passage not given.
        let a = serde_json::json!({"scores": {"f1": 0.5, "invalid_citations": 0.1}});
        let b = serde_json::json!({"scores": {"f1": 0.5, "invalid_citations": 0.3}});
        let c = compare(&a, &b, 0.05).unwrap();
        assert_eq!(c.regressions, 1);
        assert!(compare(&serde_json::json!({}), &b, 0.0).is_err());
    }
}
