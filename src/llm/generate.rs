//! Batched generation: prompts of different lengths decoded together, each
//! sequence with its own sampling, stop tokens and stop strings, and leaving the
//! batch as soon as it is done.

use std::time::Instant;

use burn::tensor::{Int, Tensor, TensorData};
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
    /// Padding slots before the prompt.
    pad: usize,
    tokens: Vec<u32>,
    rng: StdRng,
    done: Option<Finish>,
    text: String,
}

impl Llm {
    /// Complete every request, batched together. Outputs are in request order.
    pub fn generate(&self, requests: &[Request]) -> Result<(Vec<Completion>, Timings)> {
        let fail = |reason: String| Error::Llm {
            model: self.name.clone(),
            reason,
        };
        if requests.is_empty() {
            return Ok((Vec::new(), Timings::default()));
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
        let device = self.model.device().clone();
        let longest = requests.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
        let most_new = requests.iter().map(|r| r.max_new_tokens).max().unwrap_or(0);
        // The cache holds the longest prompt and the longest answer, no more.
        let capacity = longest + most_new;
        if capacity > self.context {
            return Err(fail(format!(
                "a prompt of {longest} tokens and {most_new} new tokens exceed the context of {} tokens",
                self.context
            )));
        }
        let mut cache = self.model.cache(requests.len(), capacity)?;
        let mut seqs: Vec<Sequence> = requests
            .iter()
            .enumerate()
            .map(|(index, r)| Sequence {
                index,
                pad: longest - r.prompt.len(),
                tokens: Vec::new(),
                rng: StdRng::seed_from_u64(r.sampling.seed),
                done: (r.max_new_tokens == 0).then_some(Finish::Length),
                text: String::new(),
            })
            .collect();
        let mut finished: Vec<Option<Sequence>> = (0..requests.len()).map(|_| None).collect();
        let valid_row = |pad: usize| -> Vec<bool> { (0..capacity).map(|j| j >= pad).collect() };

        // Prefill: every prompt, left-padded (the pad token is never seen).
        let mut ids = Vec::with_capacity(requests.len() * longest);
        let mut positions = Vec::with_capacity(requests.len() * longest);
        for (s, r) in seqs.iter().zip(requests) {
            ids.extend(std::iter::repeat_n(0i64, s.pad));
            ids.extend(r.prompt.iter().map(|&t| i64::from(t)));
            positions.extend((0..longest).map(|j| j.saturating_sub(s.pad)));
        }
        let valid: Vec<Vec<bool>> = seqs.iter().map(|s| valid_row(s.pad)).collect();
        let started = Instant::now();
        let mut logits = self.model.forward(
            StepInput {
                tokens: int_tensor(ids, &device),
                batch: seqs.len(),
                seq: longest,
                positions: &positions,
                valid: &valid,
            },
            &mut cache,
        )?;
        let mut timings = Timings {
            prompt_tokens: requests.iter().map(|r| r.prompt.len()).sum(),
            ..Timings::default()
        };

        let greedy = requests.iter().all(|r| r.sampling.is_greedy());
        // Greedy ids stay on the device and feed the next step directly; they are
        // read back every `sync_every` steps (on the CPU that costs nothing, so
        // every step), or sooner when a sequence may reach its token limit.
        let sync_every = if self.report.device == super::DeviceKind::Cpu {
            1
        } else {
            SYNC_EVERY_ON_GPU
        };
        let mut unread: Vec<Tensor<1, Int>> = Vec::new();
        let mut first_step = true;
        let mut decode_started = started;
        loop {
            // The next token of every live sequence.
            let next: Tensor<1, Int> = if greedy {
                logits.argmax(1).reshape([seqs.len()])
            } else {
                let vocab = self.model.config.vocab_size;
                let data = logits.into_data();
                let values: Vec<f32> = data.iter::<f32>().collect();
                let ids = seqs
                    .iter_mut()
                    .zip(values.chunks_exact(vocab))
                    .map(|(s, row)| i64::from(sample(row, &requests[s.index].sampling, &mut s.rng)))
                    .collect();
                int_tensor(ids, &device)
            };
            unread.push(next.clone());
            let headroom = seqs
                .iter()
                .map(|s| requests[s.index].max_new_tokens - s.tokens.len())
                .min()
                .unwrap_or(0);
            let must_read = first_step
                || !greedy
                || unread.len() >= sync_every
                || unread.len() >= headroom
                || seqs.iter().any(|s| !requests[s.index].stop.is_empty());
            let mut next = next;
            if must_read {
                let steps = unread.len();
                let data = Tensor::cat(std::mem::take(&mut unread), 0).into_data();
                let ids: Vec<u32> = data.iter::<i64>().map(|t| t as u32).collect();
                if first_step {
                    timings.prompt_seconds = started.elapsed().as_secs_f64();
                    decode_started = Instant::now();
                    first_step = false;
                }
                for step in ids.chunks_exact(seqs.len()).take(steps) {
                    for (s, &t) in seqs.iter_mut().zip(step) {
                        self.accept(s, &requests[s.index], t, &mut timings)?;
                    }
                }
                // Finished sequences leave the batch; the cache keeps the others.
                let keep: Vec<usize> = (0..seqs.len())
                    .filter(|&i| seqs[i].done.is_none())
                    .collect();
                if keep.len() < seqs.len() {
                    if !keep.is_empty() {
                        cache.retain(&keep, &device);
                        let rows = int_tensor(keep.iter().map(|&i| i as i64).collect(), &device);
                        next = next.select(0, rows);
                    }
                    let mut kept = Vec::with_capacity(keep.len());
                    for (i, s) in seqs.into_iter().enumerate() {
                        if keep.contains(&i) {
                            kept.push(s);
                        } else {
                            let index = s.index;
                            finished[index] = Some(s);
                        }
                    }
                    seqs = kept;
                }
            }
            if seqs.is_empty() {
                break;
            }
            let slot = cache.len();
            let positions: Vec<usize> = seqs.iter().map(|s| slot - s.pad).collect();
            let valid: Vec<Vec<bool>> = seqs.iter().map(|s| valid_row(s.pad)).collect();
            logits = self.model.forward(
                StepInput {
                    tokens: next,
                    batch: seqs.len(),
                    seq: 1,
                    positions: &positions,
                    valid: &valid,
                },
                &mut cache,
            )?;
        }
        timings.generate_seconds = decode_started.elapsed().as_secs_f64();

        let mut out = Vec::with_capacity(requests.len());
        for (r, s) in requests.iter().zip(finished) {
            let s = s.expect("every sequence finishes");
            let text = if r.stop.is_empty() {
                self.tokenizer.decode(&s.tokens)?
            } else {
                s.text
            };
            out.push(Completion {
                text,
                tokens: s.tokens,
                prompt_tokens: r.prompt.len(),
                finish: s.done.unwrap_or(Finish::Length),
            });
        }
        Ok((out, timings))
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

/// Steps decoded between two reads of the chosen ids on a GPU.
const SYNC_EVERY_ON_GPU: usize = 8;

fn int_tensor(values: Vec<i64>, device: &burn::tensor::Device) -> Tensor<1, Int> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
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
