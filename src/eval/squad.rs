//! SQuAD-format QA data (SQuAD, PIAF, FQuAD) as an evaluation set and a corpus:
//! each context becomes a text file, each question a line of the set that names
//! its context's file as the relevant source.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Deserialize)]
struct File {
    data: Vec<Article>,
}

#[derive(Deserialize)]
struct Article {
    #[serde(default)]
    title: String,
    paragraphs: Vec<Paragraph>,
}

#[derive(Deserialize)]
struct Paragraph {
    context: String,
    qas: Vec<Qa>,
}

#[derive(Deserialize)]
struct Qa {
    #[serde(default)]
    id: Option<serde_json::Value>,
    question: String,
    #[serde(default)]
    answers: Vec<Answer>,
}

#[derive(Deserialize)]
struct Answer {
    text: String,
}

/// A context, with the file name it is written under.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    /// `{article:04}-{paragraph:03}.txt`: stable when the file is imported again.
    pub file: String,
    pub title: String,
    pub text: String,
}

/// A question, with the index of its context.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub id: String,
    pub question: String,
    pub answers: Vec<String>,
    pub context: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Squad {
    pub contexts: Vec<Context>,
    pub questions: Vec<Question>,
}

impl Squad {
    /// Read a SQuAD-format file; with `questions`, keep that many questions,
    /// spread evenly over the file (every context is kept: the others are the
    /// distractors retrieval must see past).
    pub fn read(path: &Path, questions: Option<usize>) -> Result<Squad> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let file: File = serde_json::from_str(&text).map_err(|e| {
            Error::extract(
                path.display().to_string(),
                format!("not a SQuAD-format file: {e}"),
            )
        })?;
        let mut squad = Squad {
            contexts: Vec::new(),
            questions: Vec::new(),
        };
        for (a, article) in file.data.into_iter().enumerate() {
            for (p, paragraph) in article.paragraphs.into_iter().enumerate() {
                let context = squad.contexts.len();
                squad.contexts.push(Context {
                    file: format!("{:04}-{:03}.txt", a + 1, p + 1),
                    title: article.title.clone(),
                    text: paragraph.context,
                });
                for (q, qa) in paragraph.qas.into_iter().enumerate() {
                    let id = match qa.id {
                        Some(serde_json::Value::String(s)) => s,
                        Some(other) if !other.is_null() => other.to_string(),
                        _ => format!("{}-{}-{}", a + 1, p + 1, q + 1),
                    };
                    let mut answers: Vec<String> = Vec::new();
                    for answer in qa.answers {
                        if !answers.contains(&answer.text) {
                            answers.push(answer.text);
                        }
                    }
                    squad.questions.push(Question {
                        id,
                        question: qa.question,
                        answers,
                        context,
                    });
                }
            }
        }
        if let Some(n) = questions
            && n < squad.questions.len()
        {
            let total = squad.questions.len();
            let keep: Vec<Question> = (0..n)
                .map(|i| squad.questions[i * total / n].clone())
                .collect();
            squad.questions = keep;
        }
        Ok(squad)
    }

    /// Write the contexts as text files under `dir` (a file already holding the
    /// same text is left alone, so a rerun of the ingest finds it unchanged) and
    /// the questions as an evaluation set whose relevant sources are
    /// `{source}/{file}`.
    pub fn write(&self, dir: &Path, set: &Path, source: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for context in &self.contexts {
            let path = dir.join(&context.file);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(context.text.as_str()) {
                std::fs::write(&path, &context.text).map_err(|e| Error::io(&path, e))?;
            }
        }
        let mut out = String::new();
        for q in &self.questions {
            let line = serde_json::json!({
                "id": q.id,
                "question": q.question,
                "reference": q.answers,
                "relevant_sources": [format!("{source}/{}", self.contexts[q.context].file)],
                "title": self.contexts[q.context].title,
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
        if let Some(parent) = set.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        std::fs::write(set, out).map_err(|e| Error::io(set, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_squad_file_becomes_contexts_and_an_evaluation_set() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("qa.json");
        std::fs::write(
            &file,
            r#"{"version": "1.1", "data": [{"title": "Paris", "paragraphs": [
                {"context": "Paris est la capitale de la France.", "qas": [
                    {"id": "q1", "question": "Quelle est la capitale ?", "answers": [
                        {"text": "Paris", "answer_start": 0}, {"text": "Paris", "answer_start": 0}]},
                    {"id": "q2", "question": "De quel pays ?", "answers": [{"text": "la France", "answer_start": 25}]}]},
                {"context": "La Seine traverse Paris.", "qas": [
                    {"id": 3, "question": "Quel fleuve ?", "answers": [{"text": "La Seine", "answer_start": 0}]}]}]}]}"#,
        )
        .unwrap();
        let squad = Squad::read(&file, None).unwrap();
        assert_eq!(squad.contexts.len(), 2);
        assert_eq!(squad.contexts[1].file, "0001-002.txt");
        assert_eq!(squad.questions[0].answers, ["Paris"], "duplicates merged");
        assert_eq!(squad.questions[2].id, "3");
        let set = tmp.path().join("set.jsonl");
        squad.write(&tmp.path().join("ctx"), &set, "piaf").unwrap();
        let items: Vec<crate::eval::set::Item> =
            crate::eval::set::read(&std::fs::read_to_string(&set).unwrap())
                .into_iter()
                .map(|r| r.unwrap())
                .collect();
        assert_eq!(items.len(), 3);
        assert_eq!(items[2].relevant.sources, ["piaf/0001-002.txt"]);
        assert_eq!(items[1].references, ["la France"]);
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("ctx/0001-002.txt")).unwrap(),
            "La Seine traverse Paris."
        );
        // Two questions of three, spread: the first and the second.
        assert_eq!(Squad::read(&file, Some(2)).unwrap().questions.len(), 2);
        assert!(Squad::read(&tmp.path().join("set.jsonl"), None).is_err());
    }
}
