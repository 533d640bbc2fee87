//! Usage accounting, as Albert API's account page shows it: tokens, time per
//! stage, throughput, and an energy estimate with its CO₂e — measured from the
//! CPU's RAPL counters where the machine exposes them, else from a stated
//! power figure; the method and its factors are written in every report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How energy is estimated. Every figure is in the report beside its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct EnergySettings {
    /// Read the CPU packages' RAPL energy counters when they are readable.
    pub rapl: bool,
    /// Power drawn while the job runs, in watts, when RAPL is not used
    /// [default: 5 W per core used].
    pub watts: Option<f64>,
    /// Grams of CO₂e per kWh of electricity [default: 52, the French mix
    /// in ADEME's Base Empreinte].
    pub grams_co2e_per_kwh: f64,
}

/// Watts per core of the stated-power estimate: a server CPU's power over its cores.
pub const WATTS_PER_CORE: f64 = 5.0;

impl Default for EnergySettings {
    fn default() -> Self {
        EnergySettings {
            rapl: true,
            watts: None,
            grams_co2e_per_kwh: 52.0,
        }
    }
}

impl EnergySettings {
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(w) = self.watts
            && !(w.is_finite() && w > 0.0)
        {
            out.push(("watts".into(), "must be more than 0".into()));
        }
        if !(self.grams_co2e_per_kwh.is_finite() && self.grams_co2e_per_kwh >= 0.0) {
            out.push(("grams_co2e_per_kwh".into(), "must be 0 or more".into()));
        }
        out
    }
}

/// The energy a job used, with how it was estimated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Energy {
    /// `rapl` (measured, the whole CPU packages) or `stated power`.
    pub method: String,
    /// The power used by the stated-power estimate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watts: Option<f64>,
    pub seconds: f64,
    pub wh: f64,
    pub grams_co2e_per_kwh: f64,
    pub grams_co2e: f64,
    pub note: String,
}

/// Measures a job's energy from its start.
pub struct Meter {
    settings: EnergySettings,
    started: Instant,
    rapl: Option<Vec<(PathBuf, u64, u64)>>,
}

impl Meter {
    pub fn start(settings: &EnergySettings) -> Meter {
        let rapl = settings.rapl.then(rapl_counters).flatten();
        Meter {
            settings: settings.clone(),
            started: Instant::now(),
            rapl,
        }
    }

    pub fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn stop(&self) -> Energy {
        let seconds = self.seconds();
        let factor = self.settings.grams_co2e_per_kwh;
        let measured = self.rapl.as_ref().and_then(|start| {
            let mut joules = 0.0;
            for (path, before, range) in start {
                let now = read_u64(&path.join("energy_uj"))?;
                // The counter wraps at max_energy_range_uj.
                let delta = if now >= *before {
                    now - before
                } else {
                    now + range - before
                };
                joules += delta as f64 / 1e6;
            }
            Some(joules)
        });
        let (method, watts, wh, note) = match measured {
            Some(joules) => (
                "rapl".to_string(),
                None,
                joules / 3600.0,
                "RAPL counters of the CPU packages: the whole CPU, other processes included, \
                 memory and the rest of the machine excluded"
                    .to_string(),
            ),
            None => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                let (watts, note) = match self.settings.watts {
                    Some(w) => (w, format!("stated power: {w} W (energy.watts)")),
                    None => (
                        WATTS_PER_CORE * cores as f64,
                        format!(
                            "stated power: {WATTS_PER_CORE} W per core × {cores} cores \
                             (no readable RAPL counters; set energy.watts for this machine)"
                        ),
                    ),
                };
                (
                    "stated power".to_string(),
                    Some(watts),
                    watts * seconds / 3600.0,
                    note,
                )
            }
        };
        Energy {
            method,
            watts,
            seconds,
            wh,
            grams_co2e_per_kwh: factor,
            grams_co2e: wh / 1000.0 * factor,
            note,
        }
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The package-level RAPL domains (`intel-rapl:N`, not their sub-domains),
/// each with its counter now and its range, when every one is readable.
fn rapl_counters() -> Option<Vec<(PathBuf, u64, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/sys/class/powercap").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix("intel-rapl:") else {
            continue;
        };
        if rest.contains(':') {
            continue;
        }
        let path = entry.path();
        let now = read_u64(&path.join("energy_uj"))?;
        let range = read_u64(&path.join("max_energy_range_uj")).unwrap_or(u64::MAX / 2);
        out.push((path, now, range));
    }
    (!out.is_empty()).then_some(out)
}

/// Seconds spent in each stage of a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StageSeconds {
    pub load: f64,
    pub retrieve: f64,
    pub generate: f64,
    pub total: f64,
}

/// What a job did and what it cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Items the job had: questions, documents.
    pub items: usize,
    /// Done by this run.
    pub done: usize,
    /// Found done by an earlier run with the same model, prompt, settings and input.
    pub skipped: usize,
    /// Recorded with their reason.
    pub failed: usize,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Generation requests sent to the model (a long document's summary takes several).
    pub requests: usize,
    pub seconds: StageSeconds,
    pub items_per_second: f64,
    /// Generated tokens per second of generation.
    pub tokens_per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy: Option<Energy>,
}

impl Usage {
    /// The rates, once the counts and seconds are in.
    pub fn finish(&mut self, energy: Energy) {
        self.seconds.total = energy.seconds;
        self.items_per_second = self.done as f64 / energy.seconds.max(1e-9);
        self.tokens_per_second = self.generated_tokens as f64 / self.seconds.generate.max(1e-9);
        self.energy = Some(energy);
    }

    /// One line for a person.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} items: {} done, {} already done, {} failed; {} prompt + {} generated tokens; \
             {:.1} s (load {:.1}, retrieve {:.1}, generate {:.1}); {:.2} items/s, {:.1} tokens/s",
            self.items,
            self.done,
            self.skipped,
            self.failed,
            self.prompt_tokens,
            self.generated_tokens,
            self.seconds.total,
            self.seconds.load,
            self.seconds.retrieve,
            self.seconds.generate,
            self.items_per_second,
            self.tokens_per_second
        );
        if let Some(e) = &self.energy {
            s.push_str(&format!(
                "; {:.3} Wh, {:.3} g CO₂e ({})",
                e.wh, e.grams_co2e, e.method
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stated_power_gives_energy_and_carbon() {
        let settings = EnergySettings {
            rapl: false,
            watts: Some(36.0),
            grams_co2e_per_kwh: 50.0,
        };
        let meter = Meter::start(&settings);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let e = meter.stop();
        assert_eq!(e.method, "stated power");
        // 36 W for s seconds: 0.01 Wh per second; 50 g per kWh.
        assert!((e.wh - 0.01 * e.seconds).abs() < 1e-9, "{e:?}");
        assert!((e.grams_co2e - e.wh * 0.05).abs() < 1e-12);
        assert!(e.note.contains("36 W"));
        assert_eq!(
            EnergySettings {
                watts: Some(0.0),
                ..Default::default()
            }
            .problems()
            .len(),
            1
        );
    }
}
