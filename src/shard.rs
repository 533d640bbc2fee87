//! Shards: one run split over many workers. Shard `I` of `N` takes the inputs
//! (or job items) whose stable id hashes to `I`, so that a rerun of shard `I`
//! takes the same ones, whichever machine it lands on.
//!
//! The index and count come from `--shard I/N`, or with `--shard auto` from the
//! scheduler's environment: Slurm job arrays (`SLURM_ARRAY_TASK_ID`,
//! `SLURM_ARRAY_TASK_COUNT`, `SLURM_ARRAY_TASK_MIN`) or Kubernetes Indexed Jobs
//! (`JOB_COMPLETION_INDEX`, with the count in `MOULIN_SHARDS`, since Kubernetes
//! does not give it to the pod).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The most shards a run can have.
pub const MAX_SHARDS: u32 = 65_536;

/// Shard `index` of `count` (from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub fn new(index: u32, count: u32) -> Result<Shard, String> {
        if count == 0 || count > MAX_SHARDS {
            return Err(format!("a run has 1 to {MAX_SHARDS} shards, not {count}"));
        }
        if index >= count {
            return Err(format!(
                "shard {index} does not exist in a run of {count} (they are numbered from 0 to {})",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }

    /// The shard an id belongs to: the first 8 bytes of its sha256, modulo the
    /// count (the same on every machine and in every version).
    pub fn of(id: &str, count: u32) -> u32 {
        let digest = Sha256::digest(id.as_bytes());
        let head = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        (head % u64::from(count)) as u32
    }

    pub fn contains(&self, id: &str) -> bool {
        Shard::of(id, self.count) == self.index
    }

    /// The shard the scheduler's environment describes (see the module's notes).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Shard, String> {
        let number = |name: &str| -> Result<Option<u32>, String> {
            match env(name) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<u32>()
                    .map(Some)
                    .map_err(|_| format!("{name}={v:?} is not a number")),
            }
        };
        if let Some(task) = number("SLURM_ARRAY_TASK_ID")? {
            let count = number("SLURM_ARRAY_TASK_COUNT")?
                .ok_or("SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT")?;
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let index = task.checked_sub(min).ok_or_else(|| {
                format!("SLURM_ARRAY_TASK_ID={task} is below SLURM_ARRAY_TASK_MIN={min}")
            })?;
            return Shard::new(index, count).map_err(|e| {
                format!(
                    "{e} (the array must be 0-{} or start at SLURM_ARRAY_TASK_MIN, step 1)",
                    count.saturating_sub(1)
                )
            });
        }
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = number("MOULIN_SHARDS")?.ok_or(
                "JOB_COMPLETION_INDEX is set but not MOULIN_SHARDS: give the Job's completions in MOULIN_SHARDS",
            )?;
            return Shard::new(index, count);
        }
        Err(
            "--shard auto: neither a Slurm job array (SLURM_ARRAY_TASK_ID) nor a Kubernetes \
             Indexed Job (JOB_COMPLETION_INDEX) is described by the environment; give --shard I/N"
                .into(),
        )
    }

    /// The run id the scheduler's environment gives all shards of one job, if any:
    /// a Slurm array's job id.
    pub fn run_id_from_env(env: impl Fn(&str) -> Option<String>) -> Option<String> {
        env("SLURM_ARRAY_JOB_ID").map(|id| format!("slurm-{}", id.trim()))
    }

    /// `shard-0003-of-0008`: how a shard names its files.
    pub fn file_stem(&self) -> String {
        format!("shard-{:05}-of-{:05}", self.index, self.count)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a shard: write I/N, as 0/4"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| format!("{s:?} is not a shard: write I/N, as 0/4"))
        };
        Shard::new(parse(i)?, parse(n)?)
    }
}

/// How a command is told its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardChoice {
    Given(Shard),
    /// From the scheduler's environment.
    Auto,
}

impl FromStr for ShardChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<ShardChoice, String> {
        if s == "auto" {
            Ok(ShardChoice::Auto)
        } else {
            s.parse().map(ShardChoice::Given)
        }
    }
}

impl ShardChoice {
    pub fn resolve(self) -> Result<Shard, String> {
        match self {
            ShardChoice::Given(s) => Ok(s),
            ShardChoice::Auto => Shard::from_env(|k| std::env::var(k).ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn shards_parse_and_refuse_what_does_not_exist() {
        assert_eq!(
            "2/4".parse::<Shard>().unwrap(),
            Shard { index: 2, count: 4 }
        );
        assert!(
            "4/4"
                .parse::<Shard>()
                .unwrap_err()
                .contains("numbered from 0 to 3")
        );
        assert!("0/0".parse::<Shard>().is_err());
        assert!("1".parse::<Shard>().is_err());
        assert!("a/2".parse::<Shard>().is_err());
        assert_eq!("auto".parse::<ShardChoice>().unwrap(), ShardChoice::Auto);
    }

    #[test]
    fn every_id_lands_in_exactly_one_shard_and_always_the_same() {
        let ids: Vec<String> = (0..2000).map(|i| format!("doc-{i}")).collect();
        for n in [1u32, 2, 3, 8] {
            let mut sizes = vec![0usize; n as usize];
            for id in &ids {
                let owners: Vec<u32> = (0..n)
                    .filter(|&i| Shard::new(i, n).unwrap().contains(id))
                    .collect();
                assert_eq!(owners.len(), 1);
                sizes[owners[0] as usize] += 1;
            }
            // Balanced to within 20% of the mean.
            let mean = ids.len() / n as usize;
            assert!(
                sizes.iter().all(|&s| s.abs_diff(mean) * 5 <= mean),
                "{sizes:?}"
            );
        }
        // Fixed forever: a rerun on another machine or version takes the same inputs.
        assert_eq!(Shard::of("doc-0", 8), Shard::of("doc-0", 8));
        assert_eq!(
            (0..8)
                .map(|i| Shard::of(&format!("doc-{i}"), 4))
                .collect::<Vec<_>>(),
            fixed_assignment()
        );
    }

    fn fixed_assignment() -> Vec<u32> {
        (0..8)
            .map(|i| {
                let d = Sha256::digest(format!("doc-{i}").as_bytes());
                (u64::from_be_bytes(d[..8].try_into().unwrap()) % 4) as u32
            })
            .collect()
    }

    #[test]
    fn schedulers_describe_the_shard() {
        let env = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |k: &str| m.get(k).cloned()
        };
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "3"),
            ("SLURM_ARRAY_JOB_ID", "991"),
        ]);
        assert_eq!(Shard::from_env(&slurm).unwrap(), Shard::new(2, 4).unwrap());
        assert_eq!(Shard::run_id_from_env(&slurm).as_deref(), Some("slurm-991"));
        let k8s = env(&[("JOB_COMPLETION_INDEX", "7"), ("MOULIN_SHARDS", "8")]);
        assert_eq!(Shard::from_env(&k8s).unwrap(), Shard::new(7, 8).unwrap());
        let k8s_no_count = env(&[("JOB_COMPLETION_INDEX", "7")]);
        assert!(
            Shard::from_env(&k8s_no_count)
                .unwrap_err()
                .contains("MOULIN_SHARDS")
        );
        assert!(
            Shard::from_env(env(&[]))
                .unwrap_err()
                .contains("--shard I/N")
        );
    }
}
