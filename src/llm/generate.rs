//! Batched generation with continuous batching: each sequence has its own row
//! of the KV cache, sampling, stop tokens and stop strings; it leaves the batch
//! as soon as it is done and the next request waiting takes its row. The
//! chosen tokens are read back every step (free on the CPU; on a GPU one
//! synchronisation per step).

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::Llm;
use super::model::StepInput;
use crate::error::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    /// 0 means greedy: always the most likely token.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: no limit).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probabilities add up to `top_p`.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl Sampling {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }

    /// Problems with these settings, each with its key (`temperature`, `top_p`).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            out.push(("temperature".into(), "must be 0 or more".into()));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            out.push(("top_p".into(), "must be more than 0 and at most 1".into()));
        }
        out
    }

    pub fn check(&self) -> std::result::Result<(), String> {
        match self.problems().into_iter().next() {
            Some((key, problem)) => Err(format!("{key} {problem}")),
            None => Ok(()),
        }
    }
}

/// One prompt to complete.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Generation ends when the text contains one of these; it is cut before it.
    pub stop: Vec<String>,
    /// Go on past the model's end-of-sequence tokens, up to `max_new_tokens`
    /// (benchmarks).
    pub ignore_eos: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// A stop token or stop string.
    Stop,
    /// `max_new_tokens` reached.
    Length,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub finish: Finish,
    /// From the moment its prompt entered the batch to its last token.
    pub seconds: f64,
}

/// Time spent, for tokens/s figures. The prompt pass gives each sequence its
/// first token; the decoding passes the others.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub prompt_tokens: usize,
    pub prompt_seconds: f64,
    pub generated_tokens: usize,
    pub generate_seconds: f64,
}

struct Sequence {
    /// Index in the caller's requests.
    index: usize,
    started: Instant,
    tokens: Vec<u32>,
    rng: StdRng,
    done: Option<Finish>,
    text: String,
}

impl Sequence {
    fn new(index: usize, request: &Request) -> Self {
        Sequence {
            index,
            started: Instant::now(),
            tokens: Vec::new(),
            rng: StdRng::seed_from_u64(request.sampling.seed),
            done: None,
            text: String::new(),
        }
    }
}

/// A sequence decoding in a row of the KV cache.
struct Live {
    seq: Sequence,
    row: usize,
    /// Which slots of the row hold its tokens (padding of a prefill group does not).
    valid: Vec<bool>,
    /// Its position for the next token: prompt length + tokens fed back so far.
    position: usize,
    /// The token chosen last, fed at the next step.
    next: u32,
}

impl Llm {
    /// Complete every request, all decoding together (one KV cache row each).
    /// Outputs are in request order.
    pub fn generate(&self, requests: &[Request]) -> Result<(Vec<Completion>, Timings)> {
        let mut out: Vec<Option<Completion>> = (0..requests.len()).map(|_| None).collect();
        let timings = self.generate_each(requests, requests.len(), |i, c| {
            out[i] = Some(c);
            Ok(())
        })?;
        let out = out
            .into_iter()
            .map(|c| c.expect("every request completes"))
            .collect();
        Ok((out, timings))
    }

    /// Continuous batching: at most `max_batch` sequences decode together; when
    /// one finishes, the next request waiting takes its row of the KV cache at
    /// once (its prompt is prefilled, then it decodes with the others), so a
    /// batch never waits for its longest answer. Requests are taken in the
    /// order given; `done(index, completion)` is called as each finishes.
    pub fn generate_each(
        &self,
        requests: &[Request],
        max_batch: usize,
        mut done: impl FnMut(usize, Completion) -> Result<()>,
    ) -> Result<Timings> {
        let fail = |reason: String| Error::Llm {
            model: self.name.clone(),
            reason,
        };
        let mut timings = Timings::default();
        if requests.is_empty() {
            return Ok(timings);
        }
        for r in requests {
            if r.prompt.is_empty() {
                return Err(fail("empty prompt".into()));
            }
            r.sampling.check().map_err(&fail)?;
            if let Some(&t) = r
                .prompt
                .iter()
                .find(|&&t| t as usize >= self.model.config.vocab_size)
            {
                return Err(fail(format!("token id {t} is outside the vocabulary")));
            }
        }
        // A row holds the longest prompt and answer of any one request; a
        // prefill group only takes requests whose padding still fits (below).
        if let Some(r) = requests
            .iter()
            .find(|r| r.prompt.len() + r.max_new_tokens > self.context)
        {
            return Err(fail(format!(
                "a prompt of {} tokens and {} new tokens exceed the context of {} tokens",
                r.prompt.len(),
                r.max_new_tokens,
                self.context
            )));
        }
        let capacity = requests
            .iter()
            .map(|r| r.prompt.len() + r.max_new_tokens)
            .max()
            .unwrap_or(0);
        let rows = max_batch.clamp(1, requests.len());
        let mut cache = self.model.cache(rows, capacity)?;
        let mut free: Vec<usize> = (0..rows).rev().collect();
        let mut waiting: std::collections::VecDeque<usize> = (0..requests.len()).collect();
        let mut live: Vec<Live> = Vec::new();
        let vocab = self.model.config.vocab_size;

        loop {
            // Free rows take the next requests: their prompts are prefilled
            // together, left-padded to the longest of them.
            // A request whose padding to the group's longest prompt would
            // overflow a row waits for the next group.
            let mut joining: Vec<(usize, usize)> = Vec::new();
            let (mut group_prompt, mut group_new) = (0, 0);
            while !free.is_empty() {
                let Some(&index) = waiting.front() else {
                    break;
                };
                let r = &requests[index];
                if r.max_new_tokens == 0 {
                    waiting.pop_front();
                    let seq = Sequence::new(index, r);
                    self.finish(seq, requests, &mut done, Finish::Length)?;
                    continue;
                }
                let prompt = group_prompt.max(r.prompt.len());
                let new = group_new.max(r.max_new_tokens);
                if !joining.is_empty() && prompt + new > capacity {
                    break;
                }
                (group_prompt, group_new) = (prompt, new);
                waiting.pop_front();
                let row = free.pop().expect("a free row");
                cache.reset(row);
                joining.push((index, row));
            }
            if !joining.is_empty() {
                let started = Instant::now();
                let group_len = joining
                    .iter()
                    .map(|&(i, _)| requests[i].prompt.len())
                    .max()
                    .unwrap_or(0);
                let mut ids = Vec::with_capacity(joining.len() * group_len);
                let mut positions = Vec::with_capacity(joining.len() * group_len);
                let mut valid = Vec::with_capacity(joining.len());
                for &(i, _) in &joining {
                    let prompt = &requests[i].prompt;
                    let pad = group_len - prompt.len();
                    ids.extend(std::iter::repeat_n(0i64, pad));
                    ids.extend(prompt.iter().map(|&t| i64::from(t)));
                    positions.extend((0..group_len).map(|j| j.saturating_sub(pad)));
                    valid.push(
                        (0..capacity)
                            .map(|j| j >= pad && j < group_len)
                            .collect::<Vec<_>>(),
                    );
                }
                let row_ids: Vec<usize> = joining.iter().map(|&(_, r)| r).collect();
                let logits = self.step(&mut cache, ids, group_len, &positions, &row_ids, &valid)?;
                timings.prompt_tokens += joining
                    .iter()
                    .map(|&(i, _)| requests[i].prompt.len())
                    .sum::<usize>();
                for ((&(index, row), row_logits), valid) in
                    joining.iter().zip(logits.chunks_exact(vocab)).zip(valid)
                {
                    let mut seq = Sequence::new(index, &requests[index]);
                    let t = sample(row_logits, &requests[index].sampling, &mut seq.rng);
                    self.accept(&mut seq, &requests[index], t, &mut timings)?;
                    match seq.done {
                        Some(finish) => {
                            free.push(row);
                            self.finish(seq, requests, &mut done, finish)?;
                        }
                        None => live.push(Live {
                            seq,
                            row,
                            valid,
                            position: requests[index].prompt.len(),
                            next: t,
                        }),
                    }
                }
                timings.prompt_seconds += started.elapsed().as_secs_f64();
                // Rows freed at once (answers of one token) go to the next waiting.
                if live.is_empty() || (!free.is_empty() && !waiting.is_empty()) {
                    if live.is_empty() && waiting.is_empty() {
                        break;
                    }
                    continue;
                }
            }
            if live.is_empty() {
                break;
            }

            // One decoding step for every live sequence.
            let started = Instant::now();
            let ids: Vec<i64> = live.iter().map(|l| i64::from(l.next)).collect();
            let positions: Vec<usize> = live.iter().map(|l| l.position).collect();
            let row_ids: Vec<usize> = live.iter().map(|l| l.row).collect();
            for l in &mut live {
                let slot = cache.len_of(l.row);
                l.valid[slot] = true;
            }
            let valid: Vec<Vec<bool>> = live.iter().map(|l| l.valid.clone()).collect();
            let logits = self.step(&mut cache, ids, 1, &positions, &row_ids, &valid)?;
            let mut still = Vec::with_capacity(live.len());
            for (mut l, row_logits) in live.into_iter().zip(logits.chunks_exact(vocab)) {
                let r = &requests[l.seq.index];
                let t = sample(row_logits, &r.sampling, &mut l.seq.rng);
                self.accept(&mut l.seq, r, t, &mut timings)?;
                l.position += 1;
                l.next = t;
                match l.seq.done {
                    Some(finish) => {
                        free.push(l.row);
                        self.finish(l.seq, requests, &mut done, finish)?;
                    }
                    None => still.push(l),
                }
            }
            live = still;
            timings.generate_seconds += started.elapsed().as_secs_f64();
            if live.is_empty() && waiting.is_empty() {
                break;
            }
        }
        Ok(timings)
    }

    /// One forward pass of `seq` tokens for each of `rows.len()` sequences;
    /// the logits of each one's last token, row after row, on the host.
    fn step(
        &self,
        cache: &mut super::model::KvCache,
        ids: Vec<i64>,
        seq: usize,
        positions: &[usize],
        rows: &[usize],
        valid: &[Vec<bool>],
    ) -> Result<Vec<f32>> {
        let ids: Vec<u32> = ids.into_iter().map(|t| t as u32).collect();
        self.model.forward(
            StepInput {
                tokens: &ids,
                batch: rows.len(),
                seq,
                positions,
                rows,
                valid,
            },
            cache,
        )
    }

    /// Hand a finished sequence to the caller.
    fn finish(
        &self,
        s: Sequence,
        requests: &[Request],
        done: &mut impl FnMut(usize, Completion) -> Result<()>,
        finish: Finish,
    ) -> Result<()> {
        let r = &requests[s.index];
        let text = if r.stop.is_empty() {
            self.tokenizer.decode(&s.tokens)?
        } else {
            s.text
        };
        done(
            s.index,
            Completion {
                text,
                tokens: s.tokens,
                prompt_tokens: r.prompt.len(),
                finish,
                seconds: s.started.elapsed().as_secs_f64(),
            },
        )
    }
}

impl Llm {
    /// Take token `t` for sequence `s`, unless it is already done.
    fn accept(&self, s: &mut Sequence, r: &Request, t: u32, timings: &mut Timings) -> Result<()> {
        if s.done.is_some() {
            return Ok(());
        }
        if !r.ignore_eos && self.tokenizer.stop_ids.contains(&t) {
            s.done = Some(Finish::Stop);
            return Ok(());
        }
        s.tokens.push(t);
        timings.generated_tokens += 1;
        if !r.stop.is_empty() {
            s.text = self.tokenizer.decode(&s.tokens)?;
            if let Some(cut) = r.stop.iter().filter_map(|p| s.text.find(p.as_str())).min() {
                s.text.truncate(cut);
                s.done = Some(Finish::Stop);
                return Ok(());
            }
        }
        if s.tokens.len() >= r.max_new_tokens {
            s.done = Some(Finish::Length);
        }
        Ok(())
    }
}

/// Draw a token from one row of logits.
pub fn sample(logits: &[f32], sampling: &Sampling, rng: &mut StdRng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 { (i, v) } else { best }
            })
            .0 as u32
    };
    if sampling.is_greedy() {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    let k = if sampling.top_k == 0 {
        logits.len()
    } else {
        sampling.top_k.min(logits.len())
    };
    let by_logit = |&a: &usize, &b: &usize| logits[b].total_cmp(&logits[a]);
    if k < order.len() {
        order.select_nth_unstable_by(k - 1, by_logit);
        order.truncate(k);
    }
    order.sort_unstable_by(by_logit);
    let max = logits[order[0]];
    let mut probs: Vec<f64> = order
        .iter()
        .map(|&i| (f64::from(logits[i] - max) / f64::from(sampling.temperature)).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    // Nucleus: the smallest prefix reaching top_p.
    let mut cumulative = 0.0;
    let mut cut = probs.len();
    for (i, p) in probs.iter().enumerate() {
        cumulative += p;
        if cumulative >= f64::from(sampling.top_p) {
            cut = i + 1;
            break;
        }
    }
    let mass: f64 = probs[..cut].iter().sum();
    let mut draw = rng.random::<f64>() * mass;
    for (i, p) in probs[..cut].iter().enumerate() {
        draw -= p;
        if draw <= 0.0 {
            return order[i] as u32;
        }
    }
    order[cut - 1] as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_deterministic_for_a_seed_and_respects_top_k() {
        let logits: Vec<f32> = (0..100).map(|i| (i % 7) as f32 * 0.3).collect();
        let s = Sampling {
            temperature: 1.0,
            top_k: 5,
            top_p: 1.0,
            seed: 42,
        };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50)
                .map(|_| sample(&logits, &s, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(42), draw(42));
        assert_ne!(draw(42), draw(43));
        // The five best logits are all 1.8 (i % 7 == 6): only those are drawn.
        assert!(draw(42).iter().all(|&t| t % 7 == 6));
    }

    #[test]
    fn top_p_keeps_the_nucleus() {
        let mut logits = vec![0.0f32; 10];
        logits[3] = 10.0; // ~all the mass
        let s = Sampling {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.5,
            seed: 1,
        };
        let mut rng = StdRng::seed_from_u64(1);
        assert!((0..100).all(|_| sample(&logits, &s, &mut rng) == 3));
    }
}
