//! Expanding a pipeline's sources into the list of inputs to read.

use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::pipeline::config::SourceConfig;

/// One thing to ingest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Input {
    Path(PathBuf),
    Url(String),
}

impl Input {
    /// The URI recorded as the document's source.
    pub fn source(&self) -> String {
        match self {
            Input::Path(p) => crate::paths::source_uri(p),
            Input::Url(u) => u.clone(),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Input::Path(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
            Input::Url(u) => url::Url::parse(u)
                .map(|u| u.path().to_string())
                .unwrap_or_default(),
        }
    }
}

/// Every input the sources name, sorted and without duplicates. Problems with a
/// source (a missing folder, a bad glob) come back as messages.
pub fn expand(sources: &[SourceConfig]) -> (Vec<Input>, Vec<String>) {
    let mut inputs = Vec::new();
    let mut problems = Vec::new();
    for source in sources {
        match source {
            SourceConfig::Urls { urls } => inputs.extend(urls.iter().cloned().map(Input::Url)),
            SourceConfig::Files {
                path,
                include,
                exclude,
            } => match files(path, include, exclude) {
                Ok(found) => inputs.extend(found.into_iter().map(Input::Path)),
                Err(e) => problems.push(e),
            },
        }
    }
    inputs.sort();
    inputs.dedup();
    (inputs, problems)
}

fn globset(globs: &[String]) -> Result<Option<GlobSet>, String> {
    if globs.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for g in globs {
        b.add(Glob::new(g).map_err(|e| format!("bad glob {g:?}: {e}"))?);
    }
    b.build().map(Some).map_err(|e| e.to_string())
}

fn files(path: &str, include: &[String], exclude: &[String]) -> Result<Vec<PathBuf>, String> {
    let include = globset(include)?;
    let exclude = globset(exclude)?;
    let keep = |rel: &Path| {
        include.as_ref().is_none_or(|g| g.is_match(rel))
            && exclude.as_ref().is_none_or(|g| !g.is_match(rel))
    };
    if path.contains(['*', '?', '[']) {
        // A glob: walk from its literal prefix.
        let base: PathBuf = Path::new(path)
            .components()
            .take_while(|c| !c.as_os_str().to_string_lossy().contains(['*', '?', '[']))
            .collect();
        let pattern = Glob::new(path)
            .map_err(|e| format!("bad glob {path:?}: {e}"))?
            .compile_matcher();
        let base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base
        };
        return Ok(walk(&base)
            .into_iter()
            .filter(|p| pattern.is_match(p) || pattern.is_match(p.strip_prefix("./").unwrap_or(p)))
            .filter(|p| keep(p.strip_prefix(&base).unwrap_or(p)))
            .collect());
    }
    let root = Path::new(path);
    if root.is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    if !root.is_dir() {
        return Err(format!("{path}: no such file or folder"));
    }
    Ok(walk(root)
        .into_iter()
        .filter(|p| keep(p.strip_prefix(root).unwrap_or(p)))
        .collect())
}

/// Regular files under `root`, hidden ones left out, in a stable order.
fn walk(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .collect()
}
