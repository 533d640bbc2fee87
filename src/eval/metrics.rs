//! Judge-free metrics: retrieval (hit, recall, precision, MRR, nDCG at k) and
//! answers (SQuAD exact match and token F1, ROUGE-L, reference in the cited passages).
//!
//! Retrieval is judged against what an evaluation item says is relevant: chunk
//! ids, sources, or reference passages matched by their text. Each judgment is
//! found at most once (a document cut into three retrieved chunks is one
//! relevant source found, not three), so recall and nDCG never exceed 1. Hits
//! are taken in the order given; equal scores are not reordered.

use serde::{Deserialize, Serialize};

/// The cut-offs every retrieval metric is computed at.
pub const KS: [usize; 4] = [1, 3, 5, 10];

/// What an evaluation item says is relevant. Any non-empty field judges.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Relevant {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunk_ids: Vec<String>,
    /// Sources (`name/relative/path`, a URL, or the end of one: `fiche.html`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Passages a relevant hit contains, or is contained in, or mostly shares words with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contexts: Vec<String>,
}

/// What a retrieval metric needs of a hit.
#[derive(Debug, Clone, Copy)]
pub struct Retrieved<'a> {
    pub chunk_id: &'a str,
    pub source: &'a str,
    pub text: &'a str,
}

impl Relevant {
    pub fn is_empty(&self) -> bool {
        self.chunk_ids.is_empty() && self.sources.is_empty() && self.contexts.is_empty()
    }

    /// How many things are relevant.
    pub fn len(&self) -> usize {
        self.chunk_ids.len() + self.sources.len() + self.contexts.len()
    }

    /// The judgments this hit satisfies, by their index in `chunk_ids`, then
    /// `sources`, then `contexts`.
    pub fn matches(&self, hit: &Retrieved) -> Vec<usize> {
        let mut out = Vec::new();
        let mut base = 0;
        for (i, id) in self.chunk_ids.iter().enumerate() {
            if id == hit.chunk_id {
                out.push(base + i);
            }
        }
        base += self.chunk_ids.len();
        for (i, source) in self.sources.iter().enumerate() {
            if same_source(source, hit.source) {
                out.push(base + i);
            }
        }
        base += self.sources.len();
        let hit_text = normalize_space(hit.text);
        for (i, context) in self.contexts.iter().enumerate() {
            if same_passage(&normalize_space(context), &hit_text) {
                out.push(base + i);
            }
        }
        out
    }
}

/// A source judgment names a stored source exactly, or its last path segments.
fn same_source(judged: &str, stored: &str) -> bool {
    judged == stored
        || stored
            .strip_suffix(judged)
            .is_some_and(|rest| rest.ends_with('/'))
}

fn normalize_space(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Two passages are the same when one holds the other, or when 80% of the
/// shorter one's words are in the longer (chunk boundaries rarely fall where a
/// reference passage was cut).
fn same_passage(a: &str, b: &str) -> bool {
    if a.is_empty() || b.is_empty() {
        return false;
    }
    if a.contains(b) || b.contains(a) {
        return true;
    }
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let long_words = tokens(long);
    let short_words = tokens(short);
    if short_words.is_empty() {
        return false;
    }
    common_words(&short_words, &long_words) * 5 >= short_words.len() * 4
}

/// Retrieval metrics at one cut-off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AtK {
    pub k: usize,
    /// 1 when a relevant hit is in the first k.
    pub hit: f64,
    /// Share of the relevant things found in the first k.
    pub recall: f64,
    /// Share of the first k places holding a relevant hit (divided by k even
    /// when fewer hits came back).
    pub precision: f64,
    /// Discounted gain of the first k, over the best possible.
    pub ndcg: f64,
}

/// Retrieval metrics of one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalScores {
    pub at: Vec<AtK>,
    /// 1 / the rank of the first relevant hit; 0 when none is relevant.
    pub mrr: f64,
    /// The rank (from 1) of the first relevant hit.
    pub first_relevant: Option<usize>,
}

impl RetrievalScores {
    pub fn at(&self, k: usize) -> Option<&AtK> {
        self.at.iter().find(|a| a.k == k)
    }
}

/// Score a ranked list of hits against what is relevant, at each of `ks`.
/// `None` when nothing is judged relevant: such an item cannot be scored.
pub fn retrieval(hits: &[Retrieved], relevant: &Relevant, ks: &[usize]) -> Option<RetrievalScores> {
    if relevant.is_empty() {
        return None;
    }
    let total = relevant.len();
    // For each rank: is the hit relevant, and does it find a judgment not found above it?
    let mut found = vec![false; total];
    let mut relevant_at = Vec::with_capacity(hits.len());
    let mut new_at = Vec::with_capacity(hits.len());
    for hit in hits {
        let m = relevant.matches(hit);
        relevant_at.push(!m.is_empty());
        let mut new = false;
        for j in m {
            if !found[j] {
                found[j] = true;
                new = true;
            }
        }
        new_at.push(new);
    }
    let first_relevant = relevant_at.iter().position(|&r| r).map(|i| i + 1);
    let at = ks
        .iter()
        .map(|&k| {
            let top = k.min(hits.len());
            let relevant_hits = relevant_at[..top].iter().filter(|&&r| r).count();
            // Judgments found within the first k (each once).
            let mut seen = vec![false; total];
            let mut found_k = 0;
            for hit in &hits[..top] {
                for j in relevant.matches(hit) {
                    if !seen[j] {
                        seen[j] = true;
                        found_k += 1;
                    }
                }
            }
            let dcg: f64 = new_at[..top]
                .iter()
                .enumerate()
                .filter(|(_, n)| **n)
                .map(|(i, _)| 1.0 / ((i + 2) as f64).log2())
                .sum();
            let ideal: f64 = (0..total.min(k))
                .map(|i| 1.0 / ((i + 2) as f64).log2())
                .sum();
            AtK {
                k,
                hit: f64::from(u8::from(relevant_hits > 0)),
                recall: found_k as f64 / total as f64,
                precision: relevant_hits as f64 / k as f64,
                ndcg: (dcg / ideal).min(1.0),
            }
        })
        .collect();
    Some(RetrievalScores {
        at,
        mrr: first_relevant.map_or(0.0, |r| 1.0 / r as f64),
        first_relevant,
    })
}

/// Words to drop before comparing answers: articles, as SQuAD's script drops
/// English ones and the French adaptations (FQuAD, PIAF) drop French ones.
const ARTICLES: &[&str] = &[
    "a", "an", "the", "le", "la", "les", "l", "un", "une", "des", "du", "de", "d",
];

/// SQuAD's normalisation, for French too: lower case, punctuation to spaces
/// (so `l'article` is `l article`), articles dropped, spaces collapsed.
pub fn normalize_answer(text: &str) -> String {
    tokens(text).join(" ")
}

/// The normalised words of a text.
pub fn tokens(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let spaced: String = lower
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect();
    spaced
        .split_whitespace()
        .filter(|w| !ARTICLES.contains(w))
        .map(str::to_string)
        .collect()
}

/// How many words two texts share, each counted as often as both have it.
fn common_words(a: &[String], b: &[String]) -> usize {
    let mut left: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for w in b {
        *left.entry(w.as_str()).or_insert(0) += 1;
    }
    a.iter()
        .filter(|w| match left.get_mut(w.as_str()) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        })
        .count()
}

/// 1 when the normalised answer equals a normalised reference.
pub fn exact_match(answer: &str, references: &[String]) -> f64 {
    let a = normalize_answer(answer);
    best(references, |r| {
        f64::from(u8::from(a == normalize_answer(r)))
    })
}

/// SQuAD's token F1, the best over the references.
pub fn token_f1(answer: &str, references: &[String]) -> f64 {
    let a = tokens(answer);
    best(references, |r| {
        let r = tokens(r);
        if a.is_empty() || r.is_empty() {
            return f64::from(u8::from(a == r));
        }
        let common = common_words(&a, &r);
        if common == 0 {
            return 0.0;
        }
        let precision = common as f64 / a.len() as f64;
        let recall = common as f64 / r.len() as f64;
        2.0 * precision * recall / (precision + recall)
    })
}

/// ROUGE-L F1 over normalised words (longest common subsequence), the best over the references.
pub fn rouge_l(answer: &str, references: &[String]) -> f64 {
    let a = tokens(answer);
    best(references, |r| {
        let r = tokens(r);
        if a.is_empty() || r.is_empty() {
            return f64::from(u8::from(a == r));
        }
        let lcs = lcs(&a, &r);
        if lcs == 0 {
            return 0.0;
        }
        let precision = lcs as f64 / a.len() as f64;
        let recall = lcs as f64 / r.len() as f64;
        2.0 * precision * recall / (precision + recall)
    })
}

fn lcs(a: &[String], b: &[String]) -> usize {
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diagonal = 0;
        for (j, y) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if x == y {
                diagonal + 1
            } else {
                above.max(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// 1 when a reference answer appears, normalised, in one of the passages.
pub fn reference_in(passages: &[&str], references: &[String]) -> f64 {
    let passages: Vec<String> = passages.iter().map(|p| normalize_answer(p)).collect();
    best(references, |r| {
        let r = normalize_answer(r);
        let found = !r.is_empty()
            && passages
                .iter()
                .any(|p| format!(" {p} ").contains(&format!(" {r} ")));
        f64::from(u8::from(found))
    })
}

fn best(references: &[String], score: impl Fn(&str) -> f64) -> f64 {
    references.iter().map(|r| score(r)).fold(0.0, f64::max)
}

/// The mean of some scores, `None` for none.
pub fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values
        .into_iter()
        .fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits<'a>(ids: &[&'a str]) -> Vec<Retrieved<'a>> {
        ids.iter()
            .map(|id| Retrieved {
                chunk_id: id,
                source: "",
                text: "",
            })
            .collect()
    }

    fn ids(ids: &[&str]) -> Relevant {
        Relevant {
            chunk_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-9, "{a} != {b}");
    }

    #[test]
    fn retrieval_metrics_by_hand() {
        // Relevant: a and c. Ranking: x a y c z.
        let s = retrieval(&hits(&["x", "a", "y", "c", "z"]), &ids(&["a", "c"]), &KS).unwrap();
        assert_eq!(s.first_relevant, Some(2));
        close(s.mrr, 0.5);
        let at1 = s.at(1).unwrap();
        assert_eq!(
            (at1.hit, at1.recall, at1.precision, at1.ndcg),
            (0.0, 0.0, 0.0, 0.0)
        );
        let at3 = s.at(3).unwrap();
        close(at3.hit, 1.0);
        close(at3.recall, 0.5);
        close(at3.precision, 1.0 / 3.0);
        // DCG = 1/log2(3); ideal = 1 + 1/log2(3).
        let l3 = 1.0 / 3f64.log2();
        close(at3.ndcg, l3 / (1.0 + l3));
        let at5 = s.at(5).unwrap();
        close(at5.recall, 1.0);
        close(at5.precision, 0.4);
        close(at5.ndcg, (l3 + 1.0 / 5f64.log2()) / (1.0 + l3));
    }

    #[test]
    fn k_beyond_the_list_divides_precision_by_k() {
        let s = retrieval(&hits(&["a", "b"]), &ids(&["a"]), &KS).unwrap();
        let at10 = s.at(10).unwrap();
        close(at10.precision, 0.1);
        close(at10.recall, 1.0);
        close(at10.ndcg, 1.0);
        close(s.mrr, 1.0);
    }

    #[test]
    fn empty_retrieval_scores_zero_and_nothing_judged_is_not_scored() {
        let s = retrieval(&[], &ids(&["a"]), &KS).unwrap();
        assert!(
            s.at.iter()
                .all(|a| a.hit == 0.0 && a.recall == 0.0 && a.ndcg == 0.0)
        );
        assert_eq!((s.mrr, s.first_relevant), (0.0, None));
        assert!(retrieval(&hits(&["a"]), &Relevant::default(), &KS).is_none());
    }

    #[test]
    fn ties_keep_the_order_given_and_a_source_is_found_once() {
        // Three chunks of the same relevant document: one judgment found, at rank 1.
        let three: Vec<Retrieved> = ["c1", "c2", "c3"]
            .iter()
            .map(|id| Retrieved {
                chunk_id: id,
                source: "docs/guide.pdf",
                text: "",
            })
            .collect();
        let relevant = Relevant {
            sources: vec!["guide.pdf".into(), "docs/autre.pdf".into()],
            ..Default::default()
        };
        let s = retrieval(&three, &relevant, &[3]).unwrap();
        let at3 = s.at(3).unwrap();
        close(at3.precision, 1.0);
        close(at3.recall, 0.5);
        // Only the first of the three gains: DCG 1, ideal 1 + 1/log2(3).
        close(at3.ndcg, 1.0 / (1.0 + 1.0 / 3f64.log2()));
        // `guide.pdf` is the end of a path, `uide.pdf` is not.
        let partial = Relevant {
            sources: vec!["uide.pdf".into()],
            ..Default::default()
        };
        assert_eq!(retrieval(&three, &partial, &[1]).unwrap().mrr, 0.0);
    }

    #[test]
    fn reference_passages_match_by_text() {
        let relevant = Relevant {
            contexts: vec![
                "La période d'essai   permet à l'employeur d'évaluer le salarié.".into(),
            ],
            ..Default::default()
        };
        let inside = Retrieved {
            chunk_id: "1",
            source: "s",
            text: "Titre\nLa période d'essai permet à l'employeur d'évaluer le salarié. Suite.",
        };
        let cut = Retrieved {
            chunk_id: "2",
            source: "s",
            text: "période d'essai permet à l'employeur d'évaluer",
        };
        let other = Retrieved {
            chunk_id: "3",
            source: "s",
            text: "Le préavis de démission dépend de la convention collective.",
        };
        assert_eq!(relevant.matches(&inside), vec![0]);
        assert_eq!(relevant.matches(&cut), vec![0]);
        assert!(relevant.matches(&other).is_empty());
    }

    #[test]
    fn answer_metrics_by_hand() {
        let refs = vec!["la Révolution française".to_string(), "1789".to_string()];
        assert_eq!(
            normalize_answer("L'article 3, de la loi !"),
            "article 3 loi"
        );
        close(exact_match("Révolution française.", &refs), 1.0);
        close(exact_match("en 1789 ?", &refs), 0.0);
        // "en 1789" vs "1789": precision 1/2, recall 1 → 2/3.
        close(token_f1("en 1789", &refs), 2.0 / 3.0);
        close(token_f1("rien", &refs), 0.0);
        // LCS of "révolution de 1789 française" (→ révolution 1789 française)
        // and "révolution française" is 2: P 2/3, R 1 → 0.8.
        close(rouge_l("la révolution de 1789 française", &refs[..1]), 0.8);
        close(token_f1("", &[String::new()]), 1.0);
        close(
            reference_in(&["Elle commence en 1789 à Paris."], &refs),
            1.0,
        );
        // A number inside a longer one is not the answer.
        close(reference_in(&["en 17890"], &refs[1..]), 0.0);
        assert_eq!(mean([1.0, 0.0, 0.5]), Some(0.5));
        assert_eq!(mean([]), None);
    }
}
