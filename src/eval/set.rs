//! Evaluation sets: JSON Lines whose fields follow the ecosystem's names, so
//! that sets made for ragas, ragtime or evalap are read as they are.

use serde_json::{Map, Value};

use super::metrics::Relevant;
use crate::store::search::QUESTION_FIELDS;

/// Names of the reference answer: moulin's and ragas's, evalap's, SQuAD's.
const REFERENCE_FIELDS: &[&str] = &["reference", "output_true", "answers"];

/// One question of an evaluation set.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Given by the set (`id`), else the line number.
    pub id: String,
    pub line: usize,
    pub question: String,
    /// Acceptable answers; empty when the set scores retrieval only.
    pub references: Vec<String>,
    pub relevant: Relevant,
}

/// Read an evaluation set. A line that is not an item (or repeats an earlier
/// item's id) gets its own error with its number; the others are read.
pub fn read(text: &str) -> Vec<Result<Item, String>> {
    let items = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| parse(line, i + 1).map_err(|m| format!("line {}: {m}", i + 1)))
        .collect();
    crate::store::search::refuse_repeated_ids(items, |i| (i.id.as_str(), i.line))
}

fn parse(line: &str, number: usize) -> Result<Item, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("expected an object".into());
    };
    let question = first(&map, QUESTION_FIELDS)
        .ok_or_else(|| format!("no {} field", QUESTION_FIELDS.join(" or ")))?;
    let question = question
        .as_str()
        .filter(|q| !q.trim().is_empty())
        .ok_or("the question is empty or not a string")?
        .to_string();
    let references = match first(&map, REFERENCE_FIELDS) {
        None => Vec::new(),
        Some(v) => strings(v).map_err(|m| format!("reference: {m}"))?,
    };
    let list = |key: &str| -> Result<Vec<String>, String> {
        map.get(key)
            .map_or(Ok(Vec::new()), strings)
            .map_err(|m| format!("{key}: {m}"))
    };
    let relevant = Relevant {
        chunk_ids: list("relevant_chunk_ids")?,
        sources: list("relevant_sources")?,
        contexts: list("reference_contexts")?,
    };
    let id = match map.get("id") {
        None | Some(Value::Null) => number.to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    Ok(Item {
        id,
        line: number,
        question,
        references,
        relevant,
    })
}

fn first<'a>(map: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .find_map(|n| map.get(*n).filter(|v| !v.is_null()))
}

/// A string, a list of strings, or SQuAD's list of `{"text": …}` answers.
fn strings(value: &Value) -> Result<Vec<String>, String> {
    let one = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Object(o) => o
            .get("text")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| "expected a string or {\"text\": …}".to_string()),
        _ => Err("expected a string".to_string()),
    };
    match value {
        Value::Array(items) => items.iter().map(one).collect(),
        other => one(other).map(|s| vec![s]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ecosystems_field_names_are_read() {
        let text = r#"{"user_input": "Qui ?", "reference": "Marie", "relevant_chunk_ids": ["c1"]}
{"id": "e2", "query": "Quand ?", "output_true": "1789", "reference_contexts": "En 1789, …"}
{"question": "Où ?", "answers": [{"text": "Paris", "answer_start": 3}, {"text": "à Paris"}], "relevant_sources": ["squad/0001.txt"]}
{"reference": "orphan"}
"#;
        let read = read(text);
        let items: Vec<&Item> = read.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].id, "1");
        assert_eq!(items[0].references, ["Marie"]);
        assert_eq!(items[0].relevant.chunk_ids, ["c1"]);
        assert_eq!(items[1].id, "e2");
        assert_eq!(items[1].relevant.contexts, ["En 1789, …"]);
        assert_eq!(items[2].references, ["Paris", "à Paris"]);
        assert_eq!(items[2].relevant.sources, ["squad/0001.txt"]);
        assert_eq!(
            read[3].as_ref().unwrap_err(),
            "line 4: no query or question or user_input field"
        );
    }
}
