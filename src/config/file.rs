//! Settings files: TOML read with the position of every key, and its shape checked
//! against the JSON Schema generated from the settings' types.
//!
//! The check walks the whole file and keeps going after a problem, so that one
//! pass lists them all: every unknown key (with a "did you mean" for near
//! misses), every missing key, every wrong type or out-of-range number, and
//! for tables tagged by `type` the problems of the variant the tag names.
//! It understands the part of JSON Schema that `schemars` writes for our
//! types: `$ref`, `type`, `properties`, `required`, `additionalProperties`,
//! `items`, `oneOf`/`anyOf`, `const`, `enum`, `minimum`, `maximum`, `format`.

use std::path::Path;

use serde_json::Value;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Origins, Problem, did_you_mean, join_key};

/// A settings file, read.
pub struct Read {
    /// The file's content as JSON, when it is valid TOML.
    pub value: Option<Value>,
    /// Where each key was written.
    pub origins: Origins,
    /// Syntax errors, or every problem of shape the schema finds.
    pub problems: Vec<Problem>,
}

/// Read `text` (the content of `path`) and check it against `schema`.
pub fn read(path: &Path, text: &str, schema: &Value) -> Read {
    let lines = Lines::new(text);
    let mut origins = Origins::for_file(path);
    let (table, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        let problems = errors
            .iter()
            .map(|e| {
                let (line, column) = e.span().map_or((1, 1), |s| lines.position(s.start));
                Problem {
                    key: String::new(),
                    message: format!("not valid TOML: {}", e.message().trim_end()),
                    origin: super::Origin::File {
                        file: path.to_path_buf(),
                        line,
                        column,
                    },
                }
            })
            .collect();
        return Read {
            value: None,
            origins,
            problems,
        };
    }
    origins.record("", (1, 1));
    let mut walker = Walker {
        root: schema,
        lines: &lines,
        origins,
        problems: Vec::new(),
    };
    let document = Spanned::new(table.span(), DeValue::Table(table.into_inner()));
    walker.walk(schema, &document, "");
    let Walker {
        origins,
        mut problems,
        ..
    } = walker;
    sort_by_position(&mut problems);
    Read {
        value: Some(to_json(document.get_ref())),
        origins,
        problems,
    }
}

/// Problems in the order of the file: line, then column.
pub fn sort_by_position(problems: &mut [Problem]) {
    problems.sort_by_key(|p| match &p.origin {
        super::Origin::File { line, column, .. } => (0, *line, *column),
        _ => (1, 0, 0),
    });
}

/// Byte offsets to 1-based lines and columns (in characters).
struct Lines<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Lines { text, starts }
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(1, |s| s.chars().count() + 1);
        (line, column)
    }
}

struct Walker<'a> {
    root: &'a Value,
    lines: &'a Lines<'a>,
    origins: Origins,
    problems: Vec<Problem>,
}

impl<'a> Walker<'a> {
    fn problem(&mut self, key: &str, message: String) {
        let problem = self.origins.problem(key, message);
        self.problems.push(problem);
    }

    fn record(&mut self, key: &str, span: std::ops::Range<usize>) {
        self.origins.record(key, self.lines.position(span.start));
    }

    /// Follow `$ref`s to the schema they name.
    fn resolve(&self, mut schema: &'a Value) -> &'a Value {
        for _ in 0..32 {
            let Some(r) = schema.get("$ref").and_then(Value::as_str) else {
                break;
            };
            match self.root.pointer(r.trim_start_matches('#')) {
                Some(target) => schema = target,
                None => break,
            }
        }
        schema
    }

    fn walk(&mut self, schema: &'a Value, value: &Spanned<DeValue<'_>>, key: &str) {
        let schema = self.resolve(schema);
        if let Some(alternatives) = schema
            .get("oneOf")
            .or_else(|| schema.get("anyOf"))
            .and_then(Value::as_array)
        {
            return self.one_of(alternatives, value, key);
        }
        if let Some(expected) = schema.get("const") {
            return self.choice(std::slice::from_ref(expected), value, key);
        }
        if let Some(Value::Array(choices)) = schema.get("enum") {
            return self.choice(choices, value, key);
        }
        let types = types(schema);
        if !types.is_empty() && !types.iter().any(|t| is_of_type(value.get_ref(), t)) {
            let expected: Vec<&str> = types.iter().map(|t| describe_type(t)).collect();
            return self.problem(
                key,
                format!(
                    "expected {}, found {}",
                    expected.join(" or "),
                    describe_value(value.get_ref())
                ),
            );
        }
        match value.get_ref() {
            DeValue::Table(table) => self.table(schema, table, key),
            DeValue::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        let k = format!("{key}[{i}]");
                        self.record(&k, item.span());
                        self.walk(item_schema, item, &k);
                    }
                }
            }
            DeValue::Integer(_) => self.integer(schema, value.get_ref(), key),
            _ => {}
        }
    }

    fn table(&mut self, schema: &'a Value, table: &DeTable<'_>, key: &str) {
        let properties = schema.get("properties").and_then(Value::as_object);
        let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
        for (k, v) in table.iter() {
            let child = join_key(key, k.get_ref());
            self.record(&child, k.span());
            match properties.and_then(|p| p.get(k.get_ref().as_ref())) {
                Some(s) => self.walk(s, v, &child),
                None if closed => {
                    let known = properties
                        .map(|p| p.keys().map(String::as_str).collect::<Vec<_>>())
                        .unwrap_or_default();
                    let message = match did_you_mean(k.get_ref(), known.iter().copied()) {
                        Some(near) => format!("unknown key; did you mean `{near}`?"),
                        None if known.is_empty() => "unknown key".to_string(),
                        None => format!("unknown key (known keys: {})", known.join(", ")),
                    };
                    self.problem(&child, message);
                }
                None => {}
            }
        }
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !table.contains_key(required) {
                self.problem(
                    &join_key(key, required),
                    "missing: this key is required".into(),
                );
            }
        }
    }

    fn integer(&mut self, schema: &Value, value: &DeValue<'_>, key: &str) {
        let Some(n) = integer_value(value) else {
            return;
        };
        let (format_min, format_max) = match schema.get("format").and_then(Value::as_str) {
            Some("uint8") => (0, u8::MAX as i128),
            Some("uint16") => (0, u16::MAX as i128),
            Some("uint32") => (0, u32::MAX as i128),
            Some("uint" | "uint64") => (0, u64::MAX as i128),
            Some("int32") => (i32::MIN as i128, i32::MAX as i128),
            _ => (i64::MIN as i128, i64::MAX as i128),
        };
        let min = schema
            .get("minimum")
            .and_then(Value::as_f64)
            .map_or(format_min, |m| (m.ceil() as i128).max(format_min));
        let max = schema
            .get("maximum")
            .and_then(Value::as_f64)
            .map_or(format_max, |m| (m.floor() as i128).min(format_max));
        if n < min {
            let message = if min == 0 {
                "must not be negative".to_string()
            } else {
                format!("must be at least {min}")
            };
            self.problem(key, message);
        } else if n > max {
            self.problem(key, format!("must be at most {max}"));
        }
    }

    /// A value that must be one of a few constants.
    fn choice(&mut self, choices: &[Value], value: &Spanned<DeValue<'_>>, key: &str) {
        let names: Vec<&str> = choices.iter().filter_map(Value::as_str).collect();
        match value.get_ref() {
            DeValue::String(s) if names.contains(&s.as_ref()) => {}
            DeValue::String(s) => {
                let list = quoted(&names);
                let message = match did_you_mean(s, names.iter().copied()) {
                    Some(near) => format!("{s:?} is not one of {list}; did you mean {near:?}?"),
                    None => format!("{s:?} is not one of {list}"),
                };
                self.problem(key, message);
            }
            other => self.problem(
                key,
                format!(
                    "expected one of {}, found {}",
                    quoted(&names),
                    describe_value(other)
                ),
            ),
        }
    }

    fn one_of(&mut self, alternatives: &'a [Value], value: &Spanned<DeValue<'_>>, key: &str) {
        let alternatives: Vec<&'a Value> = alternatives.iter().map(|a| self.resolve(a)).collect();
        // A string enum: every alternative is a constant.
        if alternatives.iter().all(|a| a.get("const").is_some()) {
            let choices: Vec<Value> = alternatives.iter().map(|a| a["const"].clone()).collect();
            return self.choice(&choices, value, key);
        }
        // A table tagged by `type`: the tag chooses the alternative.
        let tags: Vec<&'a str> = alternatives
            .iter()
            .filter_map(|a| a.pointer("/properties/type/const").and_then(Value::as_str))
            .collect();
        if tags.len() == alternatives.len() {
            let DeValue::Table(table) = value.get_ref() else {
                return self.problem(
                    key,
                    format!(
                        "expected a table, found {}",
                        describe_value(value.get_ref())
                    ),
                );
            };
            let Some((tag_key, tag)) = table.iter().find(|(k, _)| k.get_ref() == "type") else {
                return self.problem(
                    &join_key(key, "type"),
                    format!("missing: this key is required (one of {})", quoted(&tags)),
                );
            };
            let type_key = join_key(key, "type");
            self.record(&type_key, tag_key.span());
            match tag.get_ref() {
                DeValue::String(s) => match tags.iter().position(|t| *t == s.as_ref()) {
                    Some(i) => self.walk(alternatives[i], value, key),
                    None => self.choice(
                        &tags.iter().map(|t| Value::from(*t)).collect::<Vec<_>>(),
                        tag,
                        &type_key,
                    ),
                },
                other => self.problem(
                    &type_key,
                    format!(
                        "expected one of {}, found {}",
                        quoted(&tags),
                        describe_value(other)
                    ),
                ),
            }
            return;
        }
        // Otherwise: the alternative that fits best.
        let mut best: Option<Walker<'a>> = None;
        for alternative in alternatives {
            let mut trial = Walker {
                root: self.root,
                lines: self.lines,
                origins: self.origins.clone(),
                problems: Vec::new(),
            };
            trial.walk(alternative, value, key);
            if best
                .as_ref()
                .is_none_or(|b| trial.problems.len() < b.problems.len())
            {
                best = Some(trial);
            }
        }
        if let Some(best) = best {
            self.origins = best.origins;
            self.problems.extend(best.problems);
        }
    }
}

fn types(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            // TOML has no null: an optional value is one left out.
            .filter(|t| *t != "null")
            .collect(),
        _ => Vec::new(),
    }
}

fn is_of_type(value: &DeValue<'_>, t: &str) -> bool {
    matches!(
        (t, value),
        ("string", DeValue::String(_))
            | ("integer", DeValue::Integer(_))
            | ("number", DeValue::Integer(_) | DeValue::Float(_))
            | ("boolean", DeValue::Boolean(_))
            | ("array", DeValue::Array(_))
            | ("object", DeValue::Table(_))
    )
}

fn describe_type(t: &str) -> &'static str {
    match t {
        "string" => "a string",
        "integer" => "a whole number",
        "number" => "a number",
        "boolean" => "true or false",
        "array" => "a list",
        "object" => "a table",
        _ => "a value",
    }
}

fn describe_value(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => format!("the string {s:?}"),
        DeValue::Integer(i) => format!("the number {i}"),
        DeValue::Float(f) => format!("the number {f}"),
        DeValue::Boolean(b) => format!("{b}"),
        DeValue::Datetime(d) => format!("the date {d}"),
        DeValue::Array(_) => "a list".into(),
        DeValue::Table(_) => "a table".into(),
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn integer_value(value: &DeValue<'_>) -> Option<i128> {
    let DeValue::Integer(i) = value else {
        return None;
    };
    i128::from_str_radix(i.as_str(), i.radix()).ok()
}

fn to_json(value: &DeValue<'_>) -> Value {
    match value {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(_) => match integer_value(value) {
            Some(n) => i64::try_from(n)
                .map(Value::from)
                .or_else(|_| u64::try_from(n).map(Value::from))
                .unwrap_or(Value::Null),
            None => Value::Null,
        },
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::String(d.to_string()),
        DeValue::Array(items) => Value::Array(items.iter().map(|v| to_json(v.get_ref())).collect()),
        DeValue::Table(table) => Value::Object(
            table
                .iter()
                .map(|(k, v)| (k.get_ref().to_string(), to_json(v.get_ref())))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["name", "items"],
            "properties": {
                "name": {"type": "string"},
                "count": {"type": "integer", "format": "uint32", "minimum": 0},
                "unit": {"$ref": "#/$defs/Unit"},
                "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}
            },
            "$defs": {
                "Unit": {"oneOf": [{"const": "chars"}, {"const": "tokens"}]},
                "Item": {"oneOf": [
                    {"type": "object", "additionalProperties": false, "required": ["type", "path"],
                     "properties": {"type": {"const": "file"}, "path": {"type": "string"}}},
                    {"type": "object", "additionalProperties": false, "required": ["type"],
                     "properties": {"type": {"const": "url"}, "url": {"type": "string"}}}
                ]}
            }
        })
    }

    fn problems(text: &str) -> Vec<String> {
        read(Path::new("f.toml"), text, &schema())
            .problems
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn every_problem_with_its_line_and_key() {
        let text = "nme = 'x'\ncount = -1\nunit = 'char'\n\n[[items]]\ntype = 'file'\npth = 'a'\n\n[[items]]\ntype = 'ftp'\n";
        assert_eq!(
            problems(text),
            vec![
                "f.toml:1:1: nme: unknown key; did you mean `name`?",
                "f.toml:1:1: name: missing: this key is required",
                "f.toml:2:1: count: must not be negative",
                "f.toml:3:1: unit: \"char\" is not one of \"chars\", \"tokens\"; did you mean \"chars\"?",
                "f.toml:5:1: items[0].path: missing: this key is required",
                "f.toml:7:1: items[0].pth: unknown key; did you mean `path`?",
                "f.toml:10:1: items[1].type: \"ftp\" is not one of \"file\", \"url\"",
            ]
        );
    }

    #[test]
    fn wrong_types_and_ranges() {
        let text = "name = 3\ncount = 5000000000\nitems = 'x'\n";
        assert_eq!(
            problems(text),
            vec![
                "f.toml:1:1: name: expected a string, found the number 3",
                "f.toml:2:1: count: must be at most 4294967295",
                "f.toml:3:1: items: expected a list, found the string \"x\"",
            ]
        );
    }

    #[test]
    fn syntax_errors_have_a_line_and_column() {
        let p = problems("name = 'x'\nitems = [\ncount = = 2\n");
        assert!(!p.is_empty());
        assert!(p[0].starts_with("f.toml:3:"), "{p:?}");
        assert!(p[0].contains("not valid TOML"), "{p:?}");
    }

    #[test]
    fn a_valid_file_becomes_json() {
        let r = read(
            Path::new("f.toml"),
            "name = 'x'\ncount = 0x10\n[[items]]\ntype = 'url'\nurl = 'u'\n",
            &schema(),
        );
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(
            r.value.unwrap(),
            serde_json::json!({"name": "x", "count": 16, "items": [{"type": "url", "url": "u"}]})
        );
    }
}
