//! Prompts are files: `prompts/{name}.{language}.toml`, built into the binary,
//! replaced by a file of the same name in a folder the user gives.
//!
//! A prompt file has a `system` message and a `user` message, and the pieces
//! its kind needs: `passage` (how each numbered passage is written, for
//! answers), `merge` and `part` (for summaries of long documents). `{name}`
//! placeholders are filled in one pass, so a passage that contains `{question}`
//! stays as it is. Text from documents is handled as data: the delimiters the
//! templates put around it are taken out of it first, so a passage cannot close
//! its own quotation and speak as the prompt.

use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::llm::Message;

/// The language of the prompts (and so of the answers).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// French: the documents are French.
    #[default]
    Fr,
    En,
}

impl Language {
    pub fn code(self) -> &'static str {
        match self {
            Language::Fr => "fr",
            Language::En => "en",
        }
    }
}

const BUILT_IN: &[(&str, &str)] = &[
    ("answer.fr", include_str!("../../prompts/answer.fr.toml")),
    ("answer.en", include_str!("../../prompts/answer.en.toml")),
    (
        "summarize.fr",
        include_str!("../../prompts/summarize.fr.toml"),
    ),
    (
        "summarize.en",
        include_str!("../../prompts/summarize.en.toml"),
    ),
];

/// The prompt kinds moulin has, with the pieces each needs besides `system` and `user`.
const KINDS: &[(&str, &[&str])] = &[("answer", &["passage"]), ("summarize", &["merge", "part"])];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptFile {
    system: String,
    user: String,
    #[serde(default)]
    passage: Option<String>,
    #[serde(default)]
    merge: Option<String>,
    #[serde(default)]
    part: Option<String>,
}

/// A prompt, loaded.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub name: String,
    pub language: Language,
    /// The first 12 hex digits of the sha256 of the file: results made with
    /// another version of a prompt are not reused.
    pub version: String,
    /// `built-in` or the file it was read from.
    pub origin: String,
    pub system: String,
    pub user: String,
    pub passage: String,
    pub merge: String,
    pub part: String,
}

/// How a result records its prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptId {
    pub name: String,
    pub language: Language,
    pub version: String,
}

impl Prompt {
    /// The prompt `name` in `language`: from `dir` when it has
    /// `{name}.{language}.toml`, else built in.
    pub fn load(name: &str, language: Language, dir: Option<&Path>) -> Result<Prompt> {
        let key = format!("{name}.{}", language.code());
        let (text, origin) = match dir.map(|d| d.join(format!("{key}.toml"))) {
            Some(path) if path.is_file() => (
                std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?,
                path.display().to_string(),
            ),
            _ => {
                let text = BUILT_IN
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, t)| t.to_string())
                    .ok_or_else(|| Error::Job {
                        subject: format!("prompt {key}"),
                        reason: format!(
                            "no such prompt: moulin has {}",
                            BUILT_IN
                                .iter()
                                .map(|(k, _)| *k)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    })?;
                (text, "built-in".to_string())
            }
        };
        let bad = |reason: String| Error::Job {
            subject: format!("prompt {key} ({origin})"),
            reason,
        };
        let file: PromptFile = toml::from_str(&text).map_err(|e| bad(e.message().to_string()))?;
        let needs = KINDS
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, n)| *n)
            .unwrap_or(&[]);
        for piece in needs {
            let present = match *piece {
                "passage" => file.passage.is_some(),
                "merge" => file.merge.is_some(),
                _ => file.part.is_some(),
            };
            if !present {
                return Err(bad(format!("a {name} prompt needs `{piece}`")));
            }
        }
        Ok(Prompt {
            name: name.to_string(),
            language,
            version: crate::extract::content_hash(text.as_bytes())[..12].to_string(),
            origin,
            system: file.system,
            user: file.user,
            passage: file.passage.unwrap_or_default(),
            merge: file.merge.unwrap_or_default(),
            part: file.part.unwrap_or_default(),
        })
    }

    pub fn id(&self) -> PromptId {
        PromptId {
            name: self.name.clone(),
            language: self.language,
            version: self.version.clone(),
        }
    }

    /// The system message and a user message made from `template`.
    pub fn messages(&self, template: &str, values: &[(&str, &str)]) -> Vec<Message> {
        vec![
            Message {
                role: "system".into(),
                content: self.system.clone(),
            },
            // No line ends with spaces an empty placeholder left.
            Message::user(
                render(template, values)
                    .lines()
                    .map(str::trim_end)
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        ]
    }
}

/// The folder of prompt overrides: the one given, else `MOULIN_PROMPTS`.
pub fn override_dir(given: Option<&str>) -> Option<PathBuf> {
    given
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("MOULIN_PROMPTS").map(PathBuf::from))
}

/// Fill `{name}` placeholders in one pass; an unknown one is left as it is.
pub fn render(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after.find('}').and_then(|close| {
            let name = &after[..close];
            values
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v, close))
        });
        match value {
            Some((v, close)) => {
                out.push_str(v);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Document text as data: the quotation marks the templates put around it are
/// replaced inside it, so that it cannot end its own quotation.
pub fn as_data(text: &str) -> String {
    text.replace(['«', '»'], "\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_prompt_loads_with_what_its_kind_needs() {
        for (name, _) in KINDS {
            for language in [Language::Fr, Language::En] {
                let p = Prompt::load(name, language, None).unwrap();
                assert_eq!(p.origin, "built-in");
                assert_eq!(p.version.len(), 12);
            }
        }
        assert!(
            Prompt::load("answer", Language::Fr, None).unwrap().version
                != Prompt::load("answer", Language::En, None).unwrap().version
        );
    }

    #[test]
    fn placeholders_are_filled_once() {
        let t = "Q: {question}\n{passages}\n{unknown} {";
        let out = render(t, &[("question", "{passages}?"), ("passages", "P")]);
        assert_eq!(out, "Q: {passages}?\nP\n{unknown} {");
    }

    #[test]
    fn a_folder_replaces_a_prompt_and_a_broken_one_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("answer.fr.toml"),
            "system = \"S\"\nuser = \"{question}\"\npassage = \"[{n}] {text}\"\n",
        )
        .unwrap();
        let p = Prompt::load("answer", Language::Fr, Some(tmp.path())).unwrap();
        assert_eq!(
            (p.system.as_str(), p.origin.ends_with("answer.fr.toml")),
            ("S", true)
        );
        // Not in the folder: built in.
        assert_eq!(
            Prompt::load("answer", Language::En, Some(tmp.path()))
                .unwrap()
                .origin,
            "built-in"
        );
        std::fs::write(
            tmp.path().join("summarize.fr.toml"),
            "system = \"S\"\nuser = \"U\"\n",
        )
        .unwrap();
        let err = Prompt::load("summarize", Language::Fr, Some(tmp.path())).unwrap_err();
        assert!(err.to_string().contains("needs `merge`"), "{err}");
    }
}
