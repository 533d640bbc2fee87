//! Files the command line names: checked before any work, written atomically, shown short.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The folder a file would be written in.
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Whether `path` can be written (created or replaced), without writing it.
pub fn check_writable(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!("{} is a folder, not a file", path.display()));
    }
    let dir = parent(path);
    if !dir.is_dir() {
        return Err(format!(
            "cannot write {}: the folder {} does not exist",
            path.display(),
            dir.display()
        ));
    }
    tempfile::NamedTempFile::new_in(dir)
        .map(drop)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    if path.exists() {
        OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Whether `path` is a folder files can be written in.
pub fn check_writable_folder(path: &Path) -> Result<(), String> {
    if !path.is_dir() {
        return Err(format!(
            "{}: no such folder (with several pipeline files, --report names a folder)",
            path.display()
        ));
    }
    tempfile::NamedTempFile::new_in(path)
        .map(drop)
        .map_err(|e| format!("cannot write in {}: {e}", path.display()))
}

/// Whether `path` is a file that can be read.
pub fn check_readable(path: &Path) -> Result<(), String> {
    match std::fs::File::open(path) {
        Ok(_) if path.is_dir() => Err(format!("{} is a folder, not a file", path.display())),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("{}: no such file", path.display()))
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Write `value` as pretty JSON to `path` in one step: a reader never sees half a file.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut tmp = tempfile::NamedTempFile::new_in(parent(path))?;
    serde_json::to_writer_pretty(&mut tmp, value)?;
    writeln!(tmp)?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}

/// A source as a person would type it: relative to the current folder when inside it.
pub fn short(source: &str) -> String {
    let Ok(cwd) = std::env::current_dir() else {
        return source.to_string();
    };
    match Path::new(source).strip_prefix(&cwd) {
        Ok(rel) if !moulin::paths::has_scheme(source) => rel.display().to_string(),
        _ => source.to_string(),
    }
}

/// Where each pipeline's report goes: `PATH` for one pipeline, `PATH/<name>.json` for several.
pub fn report_paths(report: Option<&Path>, files: &[PathBuf]) -> Vec<Option<PathBuf>> {
    match report {
        None => vec![None; files.len()],
        Some(p) if files.len() == 1 => vec![Some(p.to_path_buf())],
        Some(dir) => files
            .iter()
            .map(|f| {
                let stem = f.file_stem().unwrap_or_default().to_string_lossy();
                Some(dir.join(format!("{stem}.json")))
            })
            .collect(),
    }
}
