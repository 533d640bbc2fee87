//! A job's results file: JSON Lines, one line per item, each with the item's
//! `id`, `status` and `key` (the hash of everything the result depends on).
//!
//! Opening it keeps only the lines that are still good — a finished result
//! (`status` `ok`) whose key is the key the item has now — and rewrites the file
//! with them (through a temporary file and a rename, so a kill leaves the old
//! file or the new one). Stale results (another model, prompt, setting or
//! input), failures (tried again) and a last line cut short by a kill go away.
//! Results are then appended as they finish, each batch flushed to disk.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

pub struct Output {
    path: PathBuf,
    file: File,
}

/// The lines of a results file that are still good, by id.
fn good_lines(path: &Path, wanted: &HashMap<String, String>) -> Result<Vec<(String, String)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(id), Some(key)) = (value["id"].as_str(), value["key"].as_str()) else {
            continue;
        };
        if value["status"] == "ok"
            && wanted.get(id).is_some_and(|k| k == key)
            && seen.insert(id.to_string())
        {
            out.push((id.to_string(), line.to_string()));
        }
    }
    Ok(out)
}

impl Output {
    /// Open `path` for items whose current keys are `wanted` (id → key):
    /// returns the file, ready to append, and the lines of the items already
    /// done (id, line).
    pub fn open(
        path: &Path,
        wanted: &HashMap<String, String>,
    ) -> Result<(Output, Vec<(String, String)>)> {
        let kept = good_lines(path, wanted)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let tmp = path.with_extension("jsonl.tmp");
        let mut text = String::new();
        for (_, line) in &kept {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok((
            Output {
                path: path.to_path_buf(),
                file,
            },
            kept,
        ))
    }

    /// Append results and flush them to disk.
    pub fn append<T: Serialize>(&mut self, lines: &[T]) -> Result<()> {
        let mut text = String::new();
        for line in lines {
            text.push_str(&serde_json::to_string(line).expect("serializable result"));
            text.push('\n');
        }
        let err = |e| Error::io(&self.path, e);
        self.file.write_all(text.as_bytes()).map_err(err)?;
        self.file.sync_data().map_err(err)
    }
}

/// Where shard `shard` of a job writes its results: `answers.jsonl` →
/// `answers.shard-00001-of-00004.jsonl`, beside it.
pub fn shard_path(path: &Path, shard: crate::shard::Shard) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{}.{}", shard.file_stem(), ext.to_string_lossy()),
        None => format!("{stem}.{}", shard.file_stem()),
    };
    path.with_file_name(name)
}

/// What merging a job's shards gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub lines: usize,
    /// Items whose result failed, in some shard (to run that shard again).
    pub failed: usize,
}

/// Merge the result files of the `count` shards of a job into `path`: every
/// shard's file must be there; one line per item (a finished result over a
/// failed one), sorted by id; written through a temporary file and a rename.
pub fn merge_shards(path: &Path, count: u32) -> Result<Merged> {
    let shards: Vec<crate::shard::Shard> = (0..count)
        .map(|i| crate::shard::Shard::new(i, count))
        .collect::<std::result::Result<_, _>>()
        .map_err(|reason| Error::Job {
            subject: path.display().to_string(),
            reason,
        })?;
    let missing: Vec<String> = shards
        .iter()
        .filter(|s| !shard_path(path, **s).exists())
        .map(|s| s.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Job {
            subject: path.display().to_string(),
            reason: format!(
                "{} of {count} shards have no results yet: run them with --shard {}",
                missing.len(),
                missing.join(", ")
            ),
        });
    }
    let mut by_id: std::collections::BTreeMap<String, (bool, String)> = Default::default();
    for shard in shards {
        let file = shard_path(path, shard);
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
        for line in text.lines() {
            // A last line cut short by a kill is not a result.
            let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let Some(id) = value["id"].as_str() else {
                continue;
            };
            let ok = value["status"] == "ok";
            match by_id.get(id) {
                Some((true, _)) => {}
                Some((false, _)) if !ok => {}
                _ => {
                    by_id.insert(id.to_string(), (ok, line.to_string()));
                }
            }
        }
    }
    let mut text = String::new();
    for (_, line) in by_id.values() {
        text.push_str(line);
        text.push('\n');
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(Merged {
        lines: by_id.len(),
        failed: by_id.values().filter(|(ok, _)| !ok).count(),
    })
}

/// The hash of everything a result depends on, as a key.
pub fn key(parts: &impl Serialize) -> String {
    let json = serde_json::to_vec(parts).expect("serializable key");
    crate::extract::content_hash(&json)[..24].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_into_one_file_without_duplicates() {
        use crate::shard::Shard;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("answers.jsonl");
        let s = |i| Shard::new(i, 2).unwrap();
        assert_eq!(
            shard_path(&path, s(1)),
            tmp.path().join("answers.shard-00001-of-00002.jsonl")
        );
        std::fs::write(
            shard_path(&path, s(0)),
            "{\"id\":\"b\",\"status\":\"failed\"}\n{\"id\":\"b\",\"status\":\"ok\",\"n\":1}\n{\"id\":\"a\",\"status\":\"ok\"}\n{\"id\":\"c\",\"sta",
        )
        .unwrap();
        let missing = merge_shards(&path, 2).unwrap_err().to_string();
        assert!(missing.contains("--shard 1/2"), "{missing}");
        std::fs::write(
            shard_path(&path, s(1)),
            "{\"id\":\"d\",\"status\":\"failed\"}\n{\"id\":\"b\",\"status\":\"ok\",\"n\":2}\n",
        )
        .unwrap();
        let merged = merge_shards(&path, 2).unwrap();
        assert_eq!(
            merged,
            Merged {
                lines: 3,
                failed: 1
            }
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(ids, ["a", "b", "d"]);
        assert!(
            text.contains("\"n\":1"),
            "the first finished result is kept: {text}"
        );
    }

    #[test]
    fn only_finished_results_with_the_current_key_survive() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("out.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"id":"a","key":"k1","status":"ok","text":"A"}"#,
                "\n",
                r#"{"id":"b","key":"old","status":"ok","text":"stale"}"#,
                "\n",
                r#"{"id":"c","key":"k3","status":"failed","reason":"too long"}"#,
                "\n",
                r#"{"id":"gone","key":"k","status":"ok"}"#,
                "\n",
                r#"{"id":"d","key":"k4","sta"#
            ),
        )
        .unwrap();
        let wanted: HashMap<String, String> = [("a", "k1"), ("b", "k2"), ("c", "k3"), ("d", "k4")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let (mut out, done) = Output::open(&path, &wanted).unwrap();
        let ids: Vec<&str> = done.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["a"]);
        out.append(&[serde_json::json!({"id": "b", "key": "k2", "status": "ok"})])
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains(r#""text":"A""#) && !text.contains("stale"));
        assert_ne!(key(&("m", 1)), key(&("m", 2)));
    }
}
