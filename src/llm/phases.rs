//! Where the CPU forward pass ([`crate::llm::model`]'s host pass) spends its
//! time, phase by phase: each team member's time working in a phase and
//! waiting at the barrier that ends it, summed over members and passes.
//!
//! Off unless `MOULIN_LLM_PHASES=1` is set when the first pass runs (or
//! [`enable`] is called); then a barrier costs two clock reads more.
//! `cargo bench --bench llm` adds the totals of a case to its JSON line when
//! it is on (see `benches/llm.md`).
//! A phase's waits are the imbalance between threads (or a thread the host
//! took away); its work, the time to cut down.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::llm::team::Member;

/// Environment variable that turns the phase clock on.
pub const PHASES_ENV: &str = "MOULIN_LLM_PHASES";

/// The phases of a layer (then the head's), in the order a pass runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    AttentionNorm,
    Qkv,
    /// Biases, Q/K norms, the rotary embedding and the KV cache's writes,
    /// when a prompt is long enough to be split into chunks (otherwise part
    /// of `Attention`).
    Prepare,
    Attention,
    AttentionQuantize,
    Output,
    MlpNorm,
    GateUp,
    SiluQuantize,
    Down,
    FinalNorm,
    Head,
}

impl Phase {
    pub const ALL: [Phase; 12] = [
        Phase::AttentionNorm,
        Phase::Qkv,
        Phase::Prepare,
        Phase::Attention,
        Phase::AttentionQuantize,
        Phase::Output,
        Phase::MlpNorm,
        Phase::GateUp,
        Phase::SiluQuantize,
        Phase::Down,
        Phase::FinalNorm,
        Phase::Head,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::AttentionNorm => "attention_norm",
            Phase::Qkv => "qkv",
            Phase::Prepare => "prepare",
            Phase::Attention => "attention",
            Phase::AttentionQuantize => "attention_quantize",
            Phase::Output => "output",
            Phase::MlpNorm => "mlp_norm",
            Phase::GateUp => "gate_up",
            Phase::SiluQuantize => "silu_quantize",
            Phase::Down => "down",
            Phase::FinalNorm => "final_norm",
            Phase::Head => "head",
        }
    }
}

/// Nanoseconds of work and of waiting, per phase.
static TOTALS: [[AtomicU64; 2]; Phase::ALL.len()] =
    [const { [const { AtomicU64::new(0) }, const { AtomicU64::new(0) }] }; Phase::ALL.len()];

/// Set by [`enable`].
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether the clock runs: [`PHASES_ENV`] (read once) or [`enable`].
pub fn enabled() -> bool {
    static FROM_ENV: OnceLock<bool> = OnceLock::new();
    ENABLED.load(Ordering::Relaxed)
        || *FROM_ENV.get_or_init(|| std::env::var(PHASES_ENV).is_ok_and(|v| v == "1"))
}

/// Turn the clock on for the passes that start from now on.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// A phase's totals since the last [`reset`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseTime {
    pub phase: Phase,
    /// Summed over the team's threads.
    pub work: Duration,
    /// Time spent at the barrier ending the phase, summed over the threads.
    pub wait: Duration,
}

/// Every phase's totals since the last [`reset`] (zeros when off).
pub fn totals() -> Vec<PhaseTime> {
    Phase::ALL
        .iter()
        .zip(&TOTALS)
        .map(|(&phase, [work, wait])| PhaseTime {
            phase,
            work: Duration::from_nanos(work.load(Ordering::Relaxed)),
            wait: Duration::from_nanos(wait.load(Ordering::Relaxed)),
        })
        .collect()
}

/// Start the totals again from zero.
pub fn reset() {
    for t in TOTALS.iter().flatten() {
        t.store(0, Ordering::Relaxed);
    }
}

/// One team member's clock through one pass: [`Clock::sync`] in place of
/// [`Member::sync`] at the end of each phase.
pub struct Clock {
    /// When this member's current phase began; `None` when off.
    since: Option<Instant>,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            since: enabled().then(Instant::now),
        }
    }

    /// End `phase` at the team's barrier, counting this member's work in it
    /// and its wait there.
    pub fn sync(&mut self, m: &Member<'_>, phase: Phase) {
        let Some(since) = self.since else {
            return m.sync();
        };
        let arrived = Instant::now();
        m.sync();
        let left = Instant::now();
        let [work, wait] = &TOTALS[phase as usize];
        work.fetch_add(nanos(arrived - since), Ordering::Relaxed);
        wait.fetch_add(nanos(left - arrived), Ordering::Relaxed);
        self.since = Some(left);
    }

    /// End the pass's last phase, which no barrier ends.
    pub fn end(&mut self, phase: Phase) {
        if let Some(since) = self.since.take() {
            TOTALS[phase as usize][0].fetch_add(nanos(since.elapsed()), Ordering::Relaxed);
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
