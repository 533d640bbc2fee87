//! Every document of `../shared/corpus` (PDFs, spreadsheets, web pages) is either
//! extracted or reported with a reason: no crash, no hang, no silent empty document.
//! Extraction runs as the pipeline runs it, in a child process under limits.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use moulin::extract::ExtractOptions;
use moulin::extract::isolate::{self, Request};

fn corpus_files(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.into_path())
        .filter(|p| {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
            let ext = p
                .extension()
                .map(|e| e.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            (rel.starts_with("pdf/")
                || rel.starts_with("spreadsheets/")
                || rel.starts_with("html/"))
                && !rel.contains("/expected/")
                && !matches!(ext.as_str(), "json" | "md")
                && !p.ends_with("expected.html")
        })
        .collect();
    out.sort();
    out
}

/// Known passwords, from the corpus's own lists.
fn passwords(root: &Path) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let lists = [
        "pdf/expected/pdf_passwords.tsv",
        "spreadsheets/expected/spreadsheet_passwords.tsv",
    ];
    for tsv in lists
        .iter()
        .filter_map(|l| std::fs::read_to_string(root.join(l)).ok())
    {
        for line in tsv.lines().skip(1) {
            let cols: Vec<&str> = line.split('\t').collect();
            if cols.len() < 2 || matches!(cols[1], "(empty)" | "unknown") {
                continue;
            }
            // `Sª\u00ADSLprep (SASLprep-normalised: SaSLprep)`: the password as
            // typed is the part before any comment, with `\uXXXX` escapes.
            let typed = cols[1].split(" (").next().unwrap_or_default();
            let mut password = String::new();
            let mut rest = typed;
            while let Some(at) = rest.find("\\u") {
                password.push_str(&rest[..at]);
                let code = rest
                    .get(at + 2..at + 6)
                    .and_then(|h| u32::from_str_radix(h, 16).ok());
                match code.and_then(char::from_u32) {
                    Some(c) => {
                        password.push(c);
                        rest = &rest[at + 6..];
                    }
                    None => {
                        password.push_str("\\u");
                        rest = &rest[at + 2..];
                    }
                }
            }
            password.push_str(rest);
            out.insert(cols[0].to_string(), password);
        }
    }
    out
}

#[test]
fn every_corpus_document_is_extracted_or_reported() {
    let root = common::corpus();
    let files = corpus_files(&root);
    assert!(
        files.len() > 200,
        "the corpus has its {} files",
        files.len()
    );
    let passwords = passwords(&root);
    let exe = Path::new(env!("CARGO_BIN_EXE_moulin"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let results: Vec<(String, Result<moulin::Document, moulin::Error>)> = runtime.block_on(async {
        use futures::StreamExt;
        futures::stream::iter(files.iter())
            .map(|path| {
                let rel = path
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                let options = ExtractOptions {
                    password: passwords.get(&rel).cloned(),
                    timeout_seconds: 120,
                    memory_limit_mb: 3072,
                    ..Default::default()
                };
                async move {
                    let bytes = std::fs::read(path).unwrap();
                    let request = Request {
                        source: path.display().to_string(),
                        name: path.file_name().unwrap().to_string_lossy().to_string(),
                        content_type: None,
                        options,
                    };
                    (rel, isolate::extract(exe, request, &bytes).await)
                }
            })
            .buffer_unordered(2)
            .collect()
            .await
    });
    let mut ok = 0;
    let mut reasons: Vec<String> = Vec::new();
    for (rel, result) in &results {
        match result {
            Ok(doc) => {
                ok += 1;
                assert!(!doc.is_empty(), "{rel}: extracted but empty");
            }
            Err(moulin::Error::Extract { reason, .. }) => {
                assert!(!reason.trim().is_empty(), "{rel}: no reason");
                assert!(
                    !reason.contains("signal"),
                    "{rel}: the extractor died: {reason}"
                );
                reasons.push(format!("{rel}: {reason}"));
            }
            Err(moulin::Error::Unsupported { what, .. }) => {
                assert!(
                    !what.trim().is_empty(),
                    "{rel}: unsupported, but not said why"
                );
                reasons.push(format!("{rel}: unsupported format: {what}"));
            }
            Err(other) => panic!("{rel}: not an extraction error: {other}"),
        }
    }
    eprintln!("{ok} extracted, {} reported:", reasons.len());
    for r in &reasons {
        eprintln!("  {r}");
    }
    let reason_of = |name: &str| {
        results
            .iter()
            .find(|(rel, _)| rel.ends_with(name))
            .map(|(_, r)| match r {
                Ok(_) => "ok".to_string(),
                Err(e) => e.to_string(),
            })
            .unwrap_or_else(|| panic!("{name} is in the corpus"))
    };
    // What a user must be told, for the hazards the corpus documents.
    assert!(reason_of("pypdf_007_imagemagick-CCITTFaxDecode.pdf").contains("no text layer"));
    assert!(reason_of("opf_encryption_openpassword_unknownpw.pdf").contains("password"));
    assert!(
        reason_of("qpdf_pages-loop.pdf").contains("loop")
            || reason_of("qpdf_pages-loop.pdf") == "ok"
    );
    assert_eq!(
        reason_of("qpdf_enc-R3V2_userpw-view.pdf"),
        "ok",
        "opens with its password"
    );
    assert_eq!(
        reason_of("pdfminer_aes-256-r6_userpw-usersecret.pdf"),
        "ok",
        "AES-256 with its password"
    );
    for (file, what) in [
        (
            "pdfminer_rc4-40_userpw-baz_ownerpw-foo.pdf",
            "RC4 40-bit, /Encrypt inline",
        ),
        (
            "pdfjs_issue6010_2_userpw-nonascii.pdf",
            "non-ASCII R6 password",
        ),
        (
            "pdfjs_saslprep-r6_userpw-saslprep.pdf",
            "R6 password needing SASLprep",
        ),
    ] {
        assert_eq!(reason_of(file), "ok", "{what}");
    }
    assert_eq!(
        reason_of("lopdf_encrypted_aes128_emptypw.pdf"),
        "ok",
        "empty user password"
    );
    assert!(reason_of("calamine_pass_protected.xlsx").contains("password"));
    // Five bytes of text named .pdf: the content decides, and the name is noted.
    let (_, bad1) = results
        .iter()
        .find(|(rel, _)| rel.ends_with("qpdf_bad1_5bytes.pdf"))
        .expect("qpdf_bad1_5bytes.pdf is in the corpus");
    let bad1 = bad1.as_ref().expect("read as text");
    assert_eq!(bad1.format, moulin::Format::Text);
    assert_eq!(
        bad1.warnings,
        ["named .pdf but read as text: the content decides the format"]
    );
    // Most of the corpus is readable.
    assert!(
        ok * 100 / results.len() >= 75,
        "only {ok} of {} extracted",
        results.len()
    );
}
