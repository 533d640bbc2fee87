//! The model's tokenizer (the `tokenizers` crate) and its chat template (minijinja).
//!
//! A Hugging Face folder brings `tokenizer.json` and `tokenizer_config.json`; a
//! GGUF file carries the vocabulary, merges, special tokens and template in its
//! metadata, from which an equivalent `tokenizer.json` is built. A
//! `tokenizer.json` beside a GGUF file takes precedence.

use std::path::Path;

use serde::Serialize;
use serde_json::json;
use tokenizers::Tokenizer;

use super::gguf::{Gguf, Value};
use crate::error::{Error, Result};

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn user(content: impl Into<String>) -> Self {
        Message {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// A tokenizer with what generation needs to know about its special tokens.
pub struct TextTokenizer {
    model: String,
    inner: Tokenizer,
    template: Option<String>,
    bos: Option<String>,
    eos: Option<String>,
    /// Tokens that end a generation: the end-of-sequence token and the
    /// end-of-turn tokens chat templates use.
    pub stop_ids: Vec<u32>,
    /// Whether a raw prompt (no chat template) starts with the BOS token.
    add_bos: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("model", &self.model)
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("stop_ids", &self.stop_ids)
            .finish()
    }
}

/// End-of-turn tokens of the common chat formats, besides the model's EOS.
const END_OF_TURN: &[&str] = &["<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "</s>"];

impl TextTokenizer {
    /// From a Hugging Face folder: `tokenizer.json` and, when present,
    /// `tokenizer_config.json` (chat template, BOS/EOS).
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let model = dir.display().to_string();
        let fail = |reason: String| Error::Llm {
            model: model.clone(),
            reason,
        };
        let path = dir.join("tokenizer.json");
        let inner =
            Tokenizer::from_file(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let config: serde_json::Value =
            match std::fs::read_to_string(dir.join("tokenizer_config.json")) {
                Ok(text) => serde_json::from_str(&text)
                    .map_err(|e| fail(format!("tokenizer_config.json: {e}")))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Value::Null,
                Err(e) => return Err(Error::io(dir.join("tokenizer_config.json"), e)),
            };
        // Special tokens are strings or {"content": ...} objects.
        let token = |key: &str| -> Option<String> {
            let v = config.get(key)?;
            v.as_str()
                .or_else(|| v.get("content").and_then(|c| c.as_str()))
                .map(str::to_string)
        };
        let template = match config.get("chat_template") {
            Some(serde_json::Value::String(t)) => Some(t.clone()),
            // A list of named templates: take the default one.
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        };
        let template =
            template.or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
        let add_bos = config
            .get("add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        Ok(Self::new(
            model,
            inner,
            template,
            token("bos_token"),
            token("eos_token"),
            add_bos,
        ))
    }

    /// From a GGUF file's `tokenizer.*` metadata (byte-level BPE, as Llama 3,
    /// SmolLM2, Qwen and GPT-2 style models use, or SentencePiece BPE with
    /// byte fallback, as Llama 2 and Mistral 7B use), or from a
    /// `tokenizer.json` beside the file.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let model = gguf.path().display().to_string();
        let fail = |reason: String| Error::Llm {
            model: model.clone(),
            reason,
        };
        let strings = |key: &str| -> Result<Vec<&str>> {
            gguf.get(key)
                .and_then(Value::as_array)
                .ok_or_else(|| fail(format!("{key} is missing")))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| fail(format!("{key}: not strings")))
                })
                .collect()
        };
        let id = |key: &str| -> Option<usize> {
            gguf.get(key).and_then(Value::as_u64).map(|v| v as usize)
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let name = |id: Option<usize>| id.and_then(|i| tokens.get(i)).map(|t| t.to_string());
        let bos = name(id("tokenizer.ggml.bos_token_id"));
        let eos = name(id("tokenizer.ggml.eos_token_id"));
        let template = gguf
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .map(str::to_string);
        let add_bos = matches!(
            gguf.get("tokenizer.ggml.add_bos_token"),
            Some(Value::Bool(true))
        );

        let beside = gguf.path().with_file_name("tokenizer.json");
        if beside.is_file() {
            let inner = Tokenizer::from_file(&beside)
                .map_err(|e| fail(format!("{}: {e}", beside.display())))?;
            return Ok(Self::new(model, inner, template, bos, eos, add_bos));
        }

        let kind = gguf
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .unwrap_or("(none)");
        let types: Vec<u64> = gguf
            .get("tokenizer.ggml.token_type")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
            .unwrap_or_default();
        let json = match kind {
            "gpt2" => {
                let merges = strings("tokenizer.ggml.merges")?;
                let pre = gguf
                    .get("tokenizer.ggml.pre")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                gpt2_tokenizer_json(&tokens, &merges, &types, pre).map_err(fail)?
            }
            "llama" => {
                let scores: Vec<f64> = gguf
                    .get("tokenizer.ggml.scores")
                    .and_then(Value::as_array)
                    .ok_or_else(|| fail("tokenizer.ggml.scores is missing".into()))?
                    .iter()
                    .map(|v| v.as_f64().unwrap_or(0.0))
                    .collect();
                let space_prefix = !matches!(
                    gguf.get("tokenizer.ggml.add_space_prefix"),
                    Some(Value::Bool(false))
                );
                spm_tokenizer_json(&tokens, &scores, &types, space_prefix).map_err(fail)?
            }
            other => {
                return Err(fail(format!(
                    "tokenizer model {other:?} in GGUF metadata is not supported (byte-level BPE \"gpt2\" \
                     and SentencePiece \"llama\" are); put the model's tokenizer.json beside the file"
                )));
            }
        };
        let inner = json
            .to_string()
            .parse::<Tokenizer>()
            .map_err(|e| Error::Llm {
                model: model.clone(),
                reason: format!("tokenizer from GGUF metadata: {e}"),
            })?;
        Ok(Self::new(model, inner, template, bos, eos, add_bos))
    }

    fn new(
        model: String,
        inner: Tokenizer,
        template: Option<String>,
        bos: Option<String>,
        eos: Option<String>,
        add_bos: bool,
    ) -> Self {
        let mut stop_ids: Vec<u32> = eos
            .iter()
            .map(String::as_str)
            .chain(END_OF_TURN.iter().copied())
            .filter_map(|t| inner.token_to_id(t))
            .collect();
        stop_ids.sort_unstable();
        stop_ids.dedup();
        TextTokenizer {
            model,
            inner,
            template,
            bos,
            eos,
            stop_ids,
            add_bos,
        }
    }

    /// The tokenizer as a `tokenizer.json` file.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, false).map_err(|e| Error::Llm {
            model: self.model.clone(),
            reason: format!("cannot write {}: {e}", path.display()),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// The `tokenizers` tokenizer, to measure texts (chunk sizers take it).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner
    }

    /// Token ids of a raw text, with the BOS token when the model wants one.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode_plain(text)?;
        if self.add_bos
            && let Some(bos) = self.bos.as_deref().and_then(|b| self.inner.token_to_id(b))
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Token ids of a text as it is: special tokens written in it are matched,
    /// nothing is added.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, false).map_err(|e| Error::Llm {
            model: self.model.clone(),
            reason: format!("tokenizing: {e}"),
        })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of generated ids, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Llm {
            model: self.model.clone(),
            reason: format!("decoding: {e}"),
        })
    }

    /// The conversation as the model was trained to see it, ending with the
    /// start of the assistant's turn.
    pub fn apply_chat_template(&self, messages: &[Message]) -> Result<String> {
        let Some(template) = &self.template else {
            return Err(Error::Llm {
                model: self.model.clone(),
                reason: "the model has no chat template: give a raw prompt".into(),
            });
        };
        render_chat(
            template,
            messages,
            self.bos.as_deref().unwrap_or(""),
            self.eos.as_deref().unwrap_or(""),
        )
        .map_err(|reason| Error::Llm {
            model: self.model.clone(),
            reason: format!("chat template: {reason}"),
        })
    }

    /// Token ids of a conversation, through the chat template.
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.encode_plain(&self.apply_chat_template(messages)?)
    }
}

/// Render a Hugging Face chat template (Jinja) the way `apply_chat_template` does.
pub fn render_chat(
    template: &str,
    messages: &[Message],
    bos: &str,
    eos: &str,
) -> std::result::Result<String, String> {
    let mut env = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    // Llama 3.2's template dates its system prompt.
    env.add_function("strftime_now", |format: String| {
        chrono::Local::now().format(&format).to_string()
    });
    env.add_template("chat", template)
        .map_err(|e| e.to_string())?;
    let tmpl = env.get_template("chat").map_err(|e| e.to_string())?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => true,
        bos_token => bos,
        eos_token => eos,
    })
    .map_err(|e| e.to_string())
}

/// A `tokenizer.json` for a GGUF byte-level BPE vocabulary. The pre-tokenizer
/// follows llama.cpp's `tokenizer.ggml.pre` names.
fn gpt2_tokenizer_json(
    tokens: &[&str],
    merges: &[&str],
    types: &[u64],
    pre: &str,
) -> std::result::Result<serde_json::Value, String> {
    const GPT2_SPLIT: &str =
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
    const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    let pre_tokenizer = match pre {
        // Digits one by one, then GPT-2's split (SmolLM, StarCoder and kin).
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)]})
        }
        "llama-bpe" | "llama3" | "smaug-bpe" | "dbrx" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]})
        }
        // Llama 3's split with digits one by one.
        "qwen2" | "deepseek-r1-qwen" => {
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]})
        }
        "gpt-2" | "gpt2" | "default" => {
            json!({"type": "Sequence", "pretokenizers": [split(GPT2_SPLIT), byte_level(false)]})
        }
        other => {
            return Err(format!(
                "pre-tokenizer {other:?} in GGUF metadata is not known; put the model's tokenizer.json beside the file"
            ));
        }
    };
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    // Control (3) and user-defined (4) tokens are matched whole in the text.
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(3 | 4)))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": types[i] == 3})
        })
        .collect();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        }
    }))
}

/// A `tokenizer.json` for a GGUF SentencePiece vocabulary (`tokenizer.ggml.model
/// = "llama"`): BPE over the pieces with byte fallback (`<0xXX>` pieces), spaces
/// as `▁`, a space put before the text when the model says so. GGUF keeps a
/// score per piece, not merges: a merge is every split of a piece into two
/// pieces of the vocabulary, ranked by the merged piece's score (higher first),
/// which is the order llama.cpp's tokenizer merges pairs in.
fn spm_tokenizer_json(
    tokens: &[&str],
    scores: &[f64],
    types: &[u64],
    space_prefix: bool,
) -> std::result::Result<serde_json::Value, String> {
    if scores.len() != tokens.len() {
        return Err(format!(
            "{} scores for {} tokens",
            scores.len(),
            tokens.len()
        ));
    }
    let ids: std::collections::HashMap<&str, usize> =
        tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let normal = |i: usize| matches!(types.get(i), None | Some(1));
    let mut merges: Vec<(f64, usize, usize, &str, &str)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate().filter(|(i, _)| normal(*i)) {
        for (cut, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(cut);
            if let (Some(&l), Some(&r)) = (ids.get(left), ids.get(right))
                && normal(l)
                && normal(r)
            {
                merges.push((scores[i], l, r, left, right));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
    let merges: Vec<serde_json::Value> = merges.iter().map(|m| json!([m.3, m.4])).collect();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), json!(i)))
        .collect();
    let unk = tokens
        .iter()
        .enumerate()
        .find(|(i, _)| types.get(*i) == Some(&2))
        .map(|(_, t)| t.to_string());
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(2..=4)))
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": types[i] != 4})
        })
        .collect();
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if space_prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]})
    } else {
        replace
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_template_renders_a_question() {
        let text = render_chat(CHATML, &[Message::user("Bonjour ?")], "", "").unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nBonjour ?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn template_errors_and_python_methods() {
        let t = "{% if messages[0].role == 'system' %}{{ raise_exception('no system') }}{% endif %}{{ messages[0].content.strip() }}";
        assert_eq!(
            render_chat(t, &[Message::user("  x ")], "", "").unwrap(),
            "x"
        );
        let sys = Message {
            role: "system".into(),
            content: "s".into(),
        };
        let err = render_chat(t, &[sys], "", "").unwrap_err();
        assert!(err.contains("no system"), "{err}");
    }
}
