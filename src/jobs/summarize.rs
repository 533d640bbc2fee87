//! Summaries: one per document, from the document's stored text in order.
//!
//! A document that fits the model's context with its prompt is summarized in
//! one request. A longer one is summarized map-reduce: cut (by the model's own
//! tokenizer, on Markdown boundaries) into parts that fit, each part
//! summarized, then the summaries merged with the `merge` prompt — in groups
//! that fit, again and again, until one summary is left. Budgets come from the
//! context and the tokens the prompt itself takes. Several documents are
//! decoded together, one level at a time.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use text_splitter::{ChunkConfig, MarkdownSplitter};

use super::config::ModelConfig;
use super::output::{self, Output};
use super::prompts::{Prompt, PromptId, as_data, render};
use super::usage::Usage;
use super::{ModelIdentity, blocking};
use crate::error::{Error, Result};
use crate::llm::{Llm, Request};
use crate::store::Collection;
use crate::store::search::source_matches;

/// One line of a summaries file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummaryLine {
    /// The document's id.
    pub id: String,
    pub source: String,
    pub uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// `ok` or `failed`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub summary: String,
    /// Parts the document was cut into (1 when it fit at once).
    pub parts: usize,
    /// Rounds of merging after the parts (0 when it fit at once).
    pub merges: usize,
    pub model: String,
    pub prompt: PromptId,
    pub key: String,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub seconds: f64,
}

pub struct Summarizer<'a> {
    pub llm: &'a Llm,
    pub model: &'a ModelIdentity,
    pub prompt: &'a Prompt,
    pub generation: &'a ModelConfig,
}

/// The messages for one piece of a summary: a document (`part` (i, n) of it),
/// or the summaries of its parts to merge.
pub fn messages(
    prompt: &Prompt,
    title: &str,
    merge: bool,
    part: (usize, usize),
    text: &str,
) -> Vec<crate::llm::Message> {
    let part = if part.1 > 1 {
        render(
            &prompt.part,
            &[("i", &part.0.to_string()), ("n", &part.1.to_string())],
        )
    } else {
        String::new()
    };
    let template = if merge { &prompt.merge } else { &prompt.user };
    let text = if merge {
        text.to_string()
    } else {
        as_data(text)
    };
    prompt.messages(
        template,
        &[("title", title), ("part", &part), ("text", &text)],
    )
}

/// A document on its way to one summary.
struct Work {
    line: SummaryLine,
    title: String,
    /// What is summarized at this level: (merge?, text), and the part labels.
    pieces: Vec<(bool, String)>,
    started: Instant,
}

/// Slack for a text tokenizing differently inside the template than alone.
const MARGIN: usize = 16;

impl Summarizer<'_> {
    fn context(&self) -> usize {
        self.llm.context.min(self.generation.context)
    }

    fn messages(
        &self,
        title: &str,
        merge: bool,
        part: (usize, usize),
        text: &str,
    ) -> Vec<crate::llm::Message> {
        messages(self.prompt, title, merge, part, text)
    }

    /// Tokens left for the text of a piece, once the prompt and the answer are counted.
    fn budget(&self, title: &str, merge: bool) -> Result<usize> {
        let empty = self
            .llm
            .prompt_ids(&self.messages(title, merge, (99, 99), ""), false)?
            .len();
        let used = empty + self.generation.max_new_tokens + MARGIN;
        self.context().checked_sub(used).filter(|b| *b >= 64).ok_or_else(|| Error::Job {
            subject: format!("prompt {}", self.prompt.name),
            reason: format!(
                "the prompt takes {empty} tokens and the answer {}: nothing is left for the text \
                 in a context of {}",
                self.generation.max_new_tokens,
                self.context()
            ),
        })
    }

    fn tokens(&self, text: &str) -> Result<usize> {
        Ok(self.llm.tokenizer.encode_plain(text)?.len())
    }

    /// Cut a text into pieces of at most `budget` tokens.
    fn split(&self, text: &str, budget: usize) -> Vec<String> {
        let config = ChunkConfig::new(budget).with_sizer(self.llm.tokenizer.tokenizer());
        MarkdownSplitter::new(config)
            .chunks(text)
            .map(str::to_string)
            .collect()
    }

    /// Summarize the documents of `collection` whose source matches `source`
    /// (and whose id falls in `shard`, when given).
    pub async fn run(
        &self,
        collection: &Collection,
        source: Option<&str>,
        shard: Option<crate::shard::Shard>,
        output_path: Option<&Path>,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<(Vec<SummaryLine>, Usage)> {
        let mut states: Vec<_> = collection
            .document_states()
            .await?
            .into_values()
            .filter(|s| source.is_none_or(|p| source_matches(p, &s.source)))
            .filter(|s| shard.is_none_or(|shard| shard.contains(&s.document_id)))
            .collect();
        states.sort_by(|a, b| a.source.cmp(&b.source));
        let mut usage = Usage {
            items: states.len(),
            ..Default::default()
        };
        let context = self.context();

        // Each document's text and key.
        let mut works = Vec::new();
        for group in states.chunks(64) {
            let ids: Vec<&str> = group.iter().map(|s| s.document_id.as_str()).collect();
            for row in collection.load_documents(&ids).await? {
                let document = row.document()?;
                let text = document.text();
                let key = output::key(&(
                    &self.model.hash,
                    &self.prompt.version,
                    self.generation.sampling(),
                    self.generation.max_new_tokens,
                    context,
                    crate::extract::content_hash(text.as_bytes()),
                ));
                let title = document.title.clone().unwrap_or_else(|| row.source.clone());
                let line = SummaryLine {
                    id: row.document_id.clone(),
                    source: row.source.clone(),
                    uri: row.uri.clone(),
                    title: document.title.clone(),
                    status: "ok".into(),
                    reason: None,
                    summary: String::new(),
                    parts: 1,
                    merges: 0,
                    model: self.model.name.clone(),
                    prompt: self.prompt.id(),
                    key,
                    prompt_tokens: 0,
                    generated_tokens: 0,
                    seconds: 0.0,
                };
                works.push((line, title, text));
            }
        }
        works.sort_by(|a, b| a.0.source.cmp(&b.0.source));
        let order: Vec<String> = works.iter().map(|w| w.0.id.clone()).collect();
        let wanted: HashMap<String, String> = works
            .iter()
            .map(|w| (w.0.id.clone(), w.0.key.clone()))
            .collect();
        let mut results: HashMap<String, SummaryLine> = HashMap::new();
        let mut out = match output_path {
            Some(path) => {
                let (out, kept) = Output::open(path, &wanted)?;
                for (id, line) in kept {
                    if let Ok(line) = serde_json::from_str::<SummaryLine>(&line) {
                        results.insert(id, line);
                        usage.skipped += 1;
                    }
                }
                Some(out)
            }
            None => None,
        };
        works.retain(|w| !results.contains_key(&w.0.id));

        let total = works.len();
        let mut finished = 0;
        for group in works.chunks(self.generation.batch_size.max(1)) {
            let mut batch: Vec<Work> = Vec::new();
            let mut failed: Vec<SummaryLine> = Vec::new();
            for (line, title, text) in group {
                let mut line = line.clone();
                if text.trim().is_empty() {
                    line.status = "failed".into();
                    line.reason = Some("the document has no text".into());
                    failed.push(line);
                    continue;
                }
                let fits = self
                    .budget(title, false)
                    .and_then(|budget| Ok((budget, self.tokens(text)? <= budget)));
                let pieces = match fits {
                    Ok((_, true)) => vec![(false, text.clone())],
                    Ok((budget, false)) => self
                        .split(text, budget)
                        .into_iter()
                        .map(|p| (false, p))
                        .collect(),
                    Err(e) => {
                        line.status = "failed".into();
                        line.reason = Some(e.to_string());
                        failed.push(line);
                        continue;
                    }
                };
                line.parts = pieces.len();
                batch.push(Work {
                    line,
                    title: title.clone(),
                    pieces,
                    started: Instant::now(),
                });
            }
            let done = self.reduce(batch, &mut usage)?;
            usage.failed += failed.len() + done.iter().filter(|l| l.status != "ok").count();
            usage.done += done.iter().filter(|l| l.status == "ok").count();
            let lines: Vec<SummaryLine> = failed.into_iter().chain(done).collect();
            if let Some(out) = out.as_mut() {
                out.append(&lines)?;
            }
            for line in lines {
                results.insert(line.id.clone(), line);
            }
            finished += group.len();
            progress(finished, total);
        }
        let lines = order
            .into_iter()
            .filter_map(|id| results.remove(&id))
            .collect();
        Ok((lines, usage))
    }

    /// Generate every piece of every document, level by level, until each has one summary.
    fn reduce(&self, mut works: Vec<Work>, usage: &mut Usage) -> Result<Vec<SummaryLine>> {
        let mut done = Vec::new();
        const MOST_MERGES: usize = 8;
        while !works.is_empty() {
            let mut requests = Vec::new();
            let mut owners = Vec::new();
            let mut broken: Vec<usize> = Vec::new();
            for (w, work) in works.iter().enumerate() {
                let n = work.pieces.len();
                for (i, (merge, text)) in work.pieces.iter().enumerate() {
                    match self
                        .llm
                        .prompt_ids(&self.messages(&work.title, *merge, (i + 1, n), text), false)
                    {
                        Ok(ids) if ids.len() + self.generation.max_new_tokens <= self.context() => {
                            requests.push(Request {
                                prompt: ids,
                                max_new_tokens: self.generation.max_new_tokens,
                                sampling: self.generation.sampling(),
                                stop: Vec::new(),
                                ignore_eos: false,
                            });
                            owners.push(w);
                        }
                        Ok(ids) => {
                            broken.push(w);
                            tracing::debug!("piece of {} tokens does not fit", ids.len());
                        }
                        Err(_) => broken.push(w),
                    }
                }
            }
            let mut outputs: Vec<Vec<String>> = vec![Vec::new(); works.len()];
            let mut errors: Vec<Option<String>> = vec![None; works.len()];
            for w in broken {
                errors[w] = Some("a part does not fit the context once in its prompt".into());
            }
            // Continuous batching over every piece of this level; each text is
            // kept at its request's place, so a document's pieces stay in order.
            let mut texts: Vec<Option<String>> = vec![None; requests.len()];
            let t = Instant::now();
            let generated = blocking(|| {
                self.llm
                    .generate_each(&requests, self.generation.batch_size.max(1), |k, c| {
                        let w = owners[k];
                        let prompt = requests[k].prompt.len();
                        usage.prompt_tokens += prompt;
                        usage.generated_tokens += c.tokens.len();
                        works[w].line.prompt_tokens += prompt;
                        works[w].line.generated_tokens += c.tokens.len();
                        texts[k] = Some(c.text.trim().to_string());
                        Ok(())
                    })
            });
            usage.seconds.generate += t.elapsed().as_secs_f64();
            usage.requests += requests.len();
            if let Err(e) = generated {
                for (text, &w) in texts.iter().zip(&owners) {
                    if text.is_none() {
                        errors[w] = Some(format!("generation: {e}"));
                    }
                }
            }
            for (text, &w) in texts.into_iter().zip(&owners) {
                if let Some(text) = text {
                    outputs[w].push(text);
                }
            }
            let mut next = Vec::new();
            for (w, mut work) in works.into_iter().enumerate() {
                if let Some(reason) = errors[w].take() {
                    work.line.status = "failed".into();
                    work.line.reason = Some(reason);
                    work.line.seconds = work.started.elapsed().as_secs_f64();
                    done.push(work.line);
                    continue;
                }
                let summaries = std::mem::take(&mut outputs[w]);
                if summaries.len() == 1 {
                    work.line.summary = summaries.into_iter().next().unwrap_or_default();
                    work.line.seconds = work.started.elapsed().as_secs_f64();
                    done.push(work.line);
                    continue;
                }
                if work.line.merges == MOST_MERGES {
                    work.line.status = "failed".into();
                    work.line.reason = Some(format!(
                        "still {} summaries after {MOST_MERGES} merges",
                        summaries.len()
                    ));
                    done.push(work.line);
                    continue;
                }
                work.line.merges += 1;
                work.pieces = self.groups(&work.title, summaries)?;
                next.push(work);
            }
            works = next;
        }
        Ok(done)
    }

    /// Summaries to merge, in groups whose joined text fits the merge prompt;
    /// never one group per summary (which would not shrink): at least pairs.
    fn groups(&self, title: &str, summaries: Vec<String>) -> Result<Vec<(bool, String)>> {
        let budget = self.budget(title, true)?;
        let count = summaries.len();
        let mut groups: Vec<Vec<String>> = Vec::new();
        let mut used = 0;
        for s in summaries {
            let n = self.tokens(&s)? + 4;
            match groups.last_mut() {
                Some(g) if used + n <= budget => {
                    g.push(s);
                    used += n;
                }
                _ => {
                    groups.push(vec![s]);
                    used = n;
                }
            }
        }
        if groups.len() == count {
            // Each summary fills the budget alone: pair them, and cut each pair to fit.
            let flat: Vec<String> = groups.into_iter().flatten().collect();
            groups = flat.chunks(2).map(|c| c.to_vec()).collect();
        }
        let mut out = Vec::new();
        for group in groups {
            let joined = group
                .iter()
                .enumerate()
                .map(|(i, s)| format!("{}. {}", i + 1, as_data(s)))
                .collect::<Vec<_>>()
                .join("\n\n");
            let text = if self.tokens(&joined)? > budget {
                self.split(&joined, budget)
                    .into_iter()
                    .next()
                    .unwrap_or_default()
            } else {
                joined
            };
            out.push((true, text));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::prompts::Language;

    #[test]
    fn the_summary_prompts_as_the_model_sees_them() {
        for language in [Language::Fr, Language::En] {
            let prompt = Prompt::load("summarize", language, None).unwrap();
            let mut text = String::new();
            for (merge, part, body) in [
                (false, (1, 1), "Le CDD doit être écrit. « Fin » {title}"),
                (false, (2, 3), "Deuxième partie du document."),
                (
                    true,
                    (1, 1),
                    "1. Résumé de la partie 1.\n\n2. Résumé de la partie 2.",
                ),
            ] {
                for m in messages(&prompt, "Le CDD", merge, part, body) {
                    text.push_str(&format!("<{}>\n{}\n", m.role, m.content));
                }
                text.push_str("----\n");
            }
            insta::assert_snapshot!(format!("summarize_{}", language.code()), text);
        }
    }
}
