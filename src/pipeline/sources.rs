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
    /// Where the input is, as recorded and reported: its absolute path, or its
    /// URL without credentials ([`crate::paths::redact_url`]).
    pub fn source(&self) -> String {
        match self {
            Input::Path(p) => crate::paths::source_uri(p),
            Input::Url(u) => crate::paths::redact_url(u),
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

/// An input to read, with its stable identity, and whether the user named it
/// (a file or URL given as such) rather than it being found by walking a folder
/// or matching a glob.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listed {
    pub input: Input,
    /// `{source name}/{path relative to the source's root}`, or the URL: the same
    /// wherever the folder is mounted. The document's id is derived from it.
    pub source: String,
    /// The name of the pipeline source that listed it.
    pub origin: String,
    pub named: bool,
}

impl Listed {
    pub fn document_id(&self) -> String {
        crate::document::Document::id_for(&self.source)
    }
}

/// What the sources of a pipeline list.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Every input, sorted, each once.
    pub inputs: Vec<Listed>,
    /// Sources that list nothing (an empty folder, a glob matching no file).
    pub warnings: Vec<String>,
    /// What `prune` may remove: the documents of these sources (folders, globs,
    /// URL lists; by name) that are no longer listed. A source that listed
    /// nothing is left out (a folder that is not mounted is not a folder emptied),
    /// and so is a single file (it names itself only).
    pub prune_scope: Vec<String>,
}

/// The name of a `urls` source when the pipeline gives it none.
pub const DEFAULT_URLS_NAME: &str = "urls";

/// The name a `files` source goes by when the pipeline gives it none: the name of
/// its root folder, so that the same folder mounted elsewhere keeps its identity.
pub fn default_name(root: &Path) -> String {
    let named = |p: &Path| p.file_name().map(|n| n.to_string_lossy().to_string());
    named(root)
        .or_else(|| std::path::absolute(root).ok().and_then(|a| named(&a)))
        .or_else(|| std::fs::canonicalize(root).ok().and_then(|a| named(&a)))
        .unwrap_or_else(|| "files".into())
}

/// Whether a source name can stand in document identities, with the reason if not.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() || name.contains('/') {
        Err(format!(
            "{name:?}: a source name is not empty and has no '/'"
        ))
    } else {
        Ok(())
    }
}

/// Whether a `files` source's path can be walked, with the reason if not.
pub fn check_path(path: &str) -> Result<(), String> {
    if is_glob(path) {
        return Glob::new(path)
            .map(drop)
            .map_err(|e| format!("bad glob {path:?}: {e}"));
    }
    if Path::new(path).exists() {
        Ok(())
    } else {
        Err(format!("{path}: no such file or folder"))
    }
}

/// Whether a URL can be fetched, with the reason if not.
pub fn check_url(u: &str) -> Result<(), String> {
    match url::Url::parse(u) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(()),
        Ok(_) => Err(format!("{u}: only http and https URLs are fetched")),
        Err(e) => Err(format!("{u}: not a URL ({e})")),
    }
}

fn is_glob(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

/// Every input the sources name. Sources are expected to have passed
/// [`check_path`] and [`check_url`]; one that cannot be walked anyway (a folder
/// removed since) is a problem, keyed like the pipeline file's, and so are two
/// inputs that would have the same identity.
pub fn expand(sources: &[SourceConfig]) -> Result<Listing, Vec<(String, String)>> {
    let mut listing = Listing::default();
    let mut problems = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        match source {
            SourceConfig::Urls { name, urls } => {
                let origin = name.clone().unwrap_or_else(|| DEFAULT_URLS_NAME.into());
                if !urls.is_empty() {
                    listing.prune_scope.push(origin.clone());
                }
                listing.inputs.extend(urls.iter().map(|u| Listed {
                    input: Input::Url(u.clone()),
                    source: crate::paths::redact_url(u),
                    origin: origin.clone(),
                    named: true,
                }))
            }
            SourceConfig::Files {
                name,
                path,
                include,
                exclude,
            } => match files(path, include, exclude) {
                Ok((_, found)) if found.is_empty() => listing.warnings.push(if is_glob(path) {
                    format!("{path}: no file matches")
                } else if include.is_empty() && exclude.is_empty() {
                    format!("{path}: no files found")
                } else {
                    format!("{path}: no file matches its include and exclude patterns")
                }),
                Ok((root, found)) => {
                    let named = !is_glob(path) && Path::new(path).is_file();
                    let name = name.clone().unwrap_or_else(|| default_name(&root));
                    if !named {
                        listing.prune_scope.push(name.clone());
                    }
                    listing.inputs.extend(found.into_iter().map(|p| {
                        let relative = p.strip_prefix(&root).unwrap_or(&p);
                        let relative: Vec<String> = relative
                            .components()
                            .map(|c| c.as_os_str().to_string_lossy().to_string())
                            .collect();
                        Listed {
                            source: format!("{name}/{}", relative.join("/")),
                            origin: name.clone(),
                            input: Input::Path(p),
                            named,
                        }
                    }))
                }
                Err(e) => problems.push((format!("sources[{i}].path"), e)),
            },
        }
    }
    // Named first, so that an input both named and found in a folder counts as named.
    listing
        .inputs
        .sort_by(|a, b| a.input.cmp(&b.input).then(b.named.cmp(&a.named)));
    listing.inputs.dedup_by(|a, b| a.input == b.input);
    listing.prune_scope.sort();
    listing.prune_scope.dedup();
    let mut by_source: std::collections::HashMap<&str, &Input> = Default::default();
    for l in &listing.inputs {
        if let Some(other) = by_source.insert(&l.source, &l.input) {
            problems.push((
                "sources".into(),
                format!(
                    "{} and {} would both be {}: give their sources different names (`name = …` in a pipeline file)",
                    other.source(),
                    l.input.source(),
                    l.source
                ),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(listing)
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

/// The files a `files` source lists, with the root their identity is relative to.
fn files(
    path: &str,
    include: &[String],
    exclude: &[String],
) -> Result<(PathBuf, Vec<PathBuf>), String> {
    let include = globset(include)?;
    let exclude = globset(exclude)?;
    let keep = |rel: &Path| {
        include.as_ref().is_none_or(|g| g.is_match(rel))
            && exclude.as_ref().is_none_or(|g| !g.is_match(rel))
    };
    if is_glob(path) {
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
        let found = walk(&base)
            .into_iter()
            .filter(|p| pattern.is_match(p) || pattern.is_match(p.strip_prefix("./").unwrap_or(p)))
            .filter(|p| keep(p.strip_prefix(&base).unwrap_or(p)))
            .collect();
        return Ok((base, found));
    }
    let root = Path::new(path);
    if root.is_file() {
        let parent = match root.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        return Ok((parent, vec![root.to_path_buf()]));
    }
    if !root.is_dir() {
        return Err(format!("{path}: no such file or folder"));
    }
    let found = walk(root)
        .into_iter()
        .filter(|p| keep(p.strip_prefix(root).unwrap_or(p)))
        .collect();
    Ok((root.to_path_buf(), found))
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
