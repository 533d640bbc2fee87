//! Helpers shared by the integration tests: paths, the binary, a local web server.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// `../shared/corpus`, beside the checkout (CI has it): a test that needs it
/// fails without it rather than passing having checked nothing.
pub fn corpus() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    assert!(
        p.is_dir(),
        "{} is missing: the corpus tests need ../shared/corpus beside the checkout",
        p.display()
    );
    p
}

pub fn moulin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moulin"))
}

pub fn run(args: &[&str]) -> Output {
    run_in(Path::new(env!("CARGO_MANIFEST_DIR")), args)
}

/// Run moulin in `dir` with a fixed environment: no colors, no settings inherited
/// from the environment of whoever runs the tests.
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    run_env(dir, args, &[])
}

/// [`run_in`] with these environment variables set.
pub fn run_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = moulin()
        .current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .env_remove("MOULIN_DB")
        .env_remove("MOULIN_PASSWORD")
        .env_remove("MOULIN_EMBEDDING_MODEL")
        .env_remove("RUST_LOG")
        .output()
        .expect("moulin runs");
    eprintln!(
        "$ moulin {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A tiny HTTP server on 127.0.0.1 serving `routes` (path → (status, content type, body)),
/// and redirects for paths starting with `/redirect/N` (N hops before `/page`).
pub fn serve(routes: Vec<(&'static str, u16, &'static str, Vec<u8>)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(200) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .to_string();
            let (status, ctype, body, location) = if let Some(n) = path.strip_prefix("/redirect/") {
                let n: u32 = n.parse().unwrap_or(0);
                let next = if n <= 1 {
                    "/page".to_string()
                } else {
                    format!("/redirect/{}", n - 1)
                };
                (302, "text/plain", Vec::new(), Some(next))
            } else {
                match routes.iter().find(|r| r.0 == path) {
                    Some((_, status, ctype, body)) => (*status, *ctype, body.clone(), None),
                    None => (404, "text/plain", b"not found".to_vec(), None),
                }
            };
            let mut head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            if let Some(l) = location {
                head.push_str(&format!("Location: {l}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    format!("http://{addr}")
}

/// A port of 127.0.0.1 free now, for a server a test starts.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a local port")
        .port()
}

/// Wait (at most a minute) until something listens on `port` of 127.0.0.1.
pub fn wait_for_port(port: u16, what: &str) {
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{what} did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `n` Markdown files in `dir`, each a labour-ministry "fiche pratique" from
/// `../shared/corpus` (its title and the start of its text, about `chars`
/// characters): real French documents, small enough to embed quickly.
pub fn write_fiches(dir: &Path, n: usize, chars: usize) -> Vec<PathBuf> {
    let json = corpus().join("fr_admin_corpus/fiches-travail-data/fiches-travail.json");
    let fiches: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(json).expect("the fiches")).unwrap();
    assert!(fiches.len() >= n, "{} fiches, {n} wanted", fiches.len());
    std::fs::create_dir_all(dir).unwrap();
    fiches
        .iter()
        .take(n)
        .enumerate()
        .map(|(i, f)| {
            let title = f["title"].as_str().unwrap_or("Fiche");
            let mut text: String = f["sections"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n\n");
            if let Some((cut, _)) = text.char_indices().nth(chars) {
                text.truncate(cut);
            }
            let path = dir.join(format!("fiche-{i:03}.md"));
            std::fs::write(&path, format!("# {title}\n\n{text}\n")).unwrap();
            path
        })
        .collect()
}

/// A web server on 127.0.0.1 that answers every path with what the test set
/// last (status, content type, body), and counts the requests it got.
pub struct Switchable {
    pub base: String,
    answer: std::sync::Arc<std::sync::Mutex<(u16, &'static str, Vec<u8>)>>,
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Switchable {
    pub fn start() -> Self {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let answer = std::sync::Arc::new(std::sync::Mutex::new((404, "text/plain", Vec::new())));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (a, r) = (answer.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() || line == "\r\n" || line.is_empty() {
                        break;
                    }
                }
                r.fetch_add(1, Ordering::SeqCst);
                let (status, ctype, body) = a.lock().unwrap().clone();
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        Switchable {
            base,
            answer,
            requests,
        }
    }

    pub fn set(&self, status: u16, content_type: &'static str, body: Vec<u8>) {
        *self.answer.lock().unwrap() = (status, content_type, body);
        self.requests.store(0, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Rows of a collection's chunks table, read with the library: (chunk id,
/// document id, text, run id), sorted by chunk id.
pub fn chunk_rows(db: &Path, collection: &str) -> Vec<(String, String, String, String)> {
    use arrow_array::{Array, StringArray};
    use futures::TryStreamExt;
    use lancedb::query::{ExecutableQuery, QueryBase, Select};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store =
            moulin::store::Store::connect(db.to_str().unwrap(), moulin::store::Access::Read)
                .await
                .unwrap();
        let c = store.open(collection).await.unwrap();
        let batches: Vec<arrow_array::RecordBatch> = c
            .table
            .query()
            .select(Select::columns(&[
                "chunk_id",
                "document_id",
                "text",
                "run_id",
            ]))
            .execute()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut rows = Vec::new();
        for b in &batches {
            let col = |n: &str| {
                b.column_by_name(n)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone()
            };
            let (id, doc, text, run) = (
                col("chunk_id"),
                col("document_id"),
                col("text"),
                col("run_id"),
            );
            for i in 0..b.num_rows() {
                rows.push((
                    id.value(i).to_string(),
                    doc.value(i).to_string(),
                    text.value(i).to_string(),
                    run.value(i).to_string(),
                ));
            }
        }
        rows.sort();
        rows
    })
}

/// The stored documents of a collection, read with the library, by id.
pub fn document_rows(
    db: &Path,
    collection: &str,
) -> std::collections::BTreeMap<String, moulin::store::DocumentRow> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store =
            moulin::store::Store::connect(db.to_str().unwrap(), moulin::store::Access::Read)
                .await
                .unwrap();
        let c = store.open(collection).await.unwrap();
        let ids: Vec<String> = c.document_states().await.unwrap().into_keys().collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        c.load_documents(&ids)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.document_id.clone(), r))
            .collect()
    })
}

/// A run report written by `--report`.
pub fn read_report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("a report")).expect("JSON report")
}

/// Write the GGUF model as a Hugging Face folder: config.json, one f32
/// safetensors file with Hugging Face names (Q/K rows back in "rotate half"
/// order), tokenizer.json and tokenizer_config.json; biases, per-head norms
/// and a separate head when the model has them.
pub fn write_hf_folder(llm: &moulin::llm::Llm, gguf_path: &Path, dir: &Path) {
    use moulin::llm::gguf::{Gguf, Value};
    use moulin::llm::weights::{Weight, WeightSource};
    let gguf = Gguf::open(gguf_path).unwrap();
    let c = moulin::llm::LlamaConfig::from_gguf(&gguf).unwrap();
    let source = WeightSource::Gguf(gguf);
    let (h, hd, f) = (c.hidden_size, c.head_dim, c.intermediate_size);
    let mut weights: Vec<(String, Weight, Vec<usize>)> = vec![
        (
            "model.embed_tokens.weight".into(),
            Weight::Embed,
            vec![c.vocab_size, h],
        ),
        ("model.norm.weight".into(), Weight::FinalNorm, vec![h]),
    ];
    if !c.tie_word_embeddings {
        weights.push(("lm_head.weight".into(), Weight::Head, vec![c.vocab_size, h]));
    }
    for i in 0..c.num_layers {
        let p = format!("model.layers.{i}.");
        weights.extend([
            (
                format!("{p}input_layernorm.weight"),
                Weight::AttnNorm(i),
                vec![h],
            ),
            (
                format!("{p}self_attn.q_proj.weight"),
                Weight::Q(i),
                vec![c.num_heads * hd, h],
            ),
            (
                format!("{p}self_attn.k_proj.weight"),
                Weight::K(i),
                vec![c.num_kv_heads * hd, h],
            ),
            (
                format!("{p}self_attn.v_proj.weight"),
                Weight::V(i),
                vec![c.num_kv_heads * hd, h],
            ),
            (
                format!("{p}self_attn.o_proj.weight"),
                Weight::O(i),
                vec![h, c.num_heads * hd],
            ),
            (
                format!("{p}post_attention_layernorm.weight"),
                Weight::MlpNorm(i),
                vec![h],
            ),
            (
                format!("{p}mlp.gate_proj.weight"),
                Weight::Gate(i),
                vec![f, h],
            ),
            (format!("{p}mlp.up_proj.weight"), Weight::Up(i), vec![f, h]),
            (
                format!("{p}mlp.down_proj.weight"),
                Weight::Down(i),
                vec![h, f],
            ),
        ]);
        if c.qkv_bias {
            weights.extend([
                (
                    format!("{p}self_attn.q_proj.bias"),
                    Weight::QBias(i),
                    vec![c.num_heads * hd],
                ),
                (
                    format!("{p}self_attn.k_proj.bias"),
                    Weight::KBias(i),
                    vec![c.num_kv_heads * hd],
                ),
                (
                    format!("{p}self_attn.v_proj.bias"),
                    Weight::VBias(i),
                    vec![c.num_kv_heads * hd],
                ),
            ]);
        }
        if c.qk_norm {
            weights.extend([
                (
                    format!("{p}self_attn.q_norm.weight"),
                    Weight::QNorm(i),
                    vec![hd],
                ),
                (
                    format!("{p}self_attn.k_norm.weight"),
                    Weight::KNorm(i),
                    vec![hd],
                ),
            ]);
        }
    }
    let tensors: Vec<(String, Vec<u8>, Vec<usize>)> = weights
        .into_iter()
        .map(|(name, w, shape)| {
            let t = source.get(&c, w, &shape).unwrap();
            let bytes = t.values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, bytes, shape)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, bytes, shape)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .unwrap();
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let (arch, model_type) = match c.architecture.as_str() {
        "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
        "qwen3" => ("Qwen3ForCausalLM", "qwen3"),
        "mistral" => ("MistralForCausalLM", "mistral"),
        _ => ("LlamaForCausalLM", "llama"),
    };
    let config = serde_json::json!({
        "architectures": [arch], "model_type": model_type, "head_dim": hd,
        "vocab_size": c.vocab_size, "hidden_size": h, "intermediate_size": f,
        "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads, "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_norm_eps, "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings, "hidden_act": "silu",
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    llm.tokenizer.save(&dir.join("tokenizer.json")).unwrap();
    let WeightSource::Gguf(gguf) = &source else {
        unreachable!()
    };
    let tokenizer_config = match gguf.get("tokenizer.chat_template").and_then(Value::as_str) {
        Some(template) => serde_json::json!({
            "chat_template": template, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
            "add_bos_token": false,
        }),
        None => serde_json::json!({"add_bos_token": false}),
    };
    std::fs::write(
        dir.join("tokenizer_config.json"),
        tokenizer_config.to_string(),
    )
    .unwrap();
}

/// The largest difference between the logits two models give after `ids`.
pub fn last_logits_diff(a: &moulin::llm::Llm, b: &moulin::llm::Llm, ids: &[u32]) -> f32 {
    let a = a.logits_by_chunks(ids, ids.len()).unwrap();
    let b = b.logits_by_chunks(ids, ids.len()).unwrap();
    a.last()
        .unwrap()
        .iter()
        .zip(b.last().unwrap())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}
