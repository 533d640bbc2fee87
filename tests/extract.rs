//! Extractors against real files with expected outputs.

mod common;

use std::path::Path;

use common::fixtures;
use moulin::extract::{self, ExtractOptions};
use moulin::{Document, Format};

fn extract_with(rel: &str, options: &ExtractOptions) -> Result<Document, String> {
    extract::extract_path(&fixtures().join(rel), options).map_err(|e| e.to_string())
}

fn extract(rel: &str) -> Document {
    extract_with(rel, &ExtractOptions::default()).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Pages separated by form feeds, as `pdftotext` writes them.
fn pages(doc: &Document) -> String {
    doc.sections
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join("\n\u{c}")
}

fn expected(rel: &str) -> String {
    std::fs::read_to_string(fixtures().join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .trim_end()
        .to_string()
}

#[test]
fn pdf_text_per_page_matches_the_expected_text() {
    // vertical-cjk: a TrueType CID font with no ToUnicode map (its characters
    // come from the Adobe-Japan1 collection), written top to bottom, columns
    // right to left; its pages 2 and 3 are empty.
    for name in [
        "french-diacritics",
        "ligatures",
        "libreoffice-writer",
        "vertical-cjk",
    ] {
        let doc = extract(&format!("pdf/{name}.pdf"));
        assert_eq!(doc.format, Format::Pdf);
        assert_eq!(
            pages(&doc),
            expected(&format!("pdf/{name}.expected.txt")),
            "{name}"
        );
    }
}

#[test]
fn pdf_accents_and_ligatures_are_text_a_query_can_match() {
    let doc = extract("pdf/french-diacritics.pdf");
    // The letters are set a word space apart on the page.
    assert!(
        doc.text()
            .contains("à À â Â ä Ä ç Ç é É è È ê Ê ë Ë î Î ï Ï ô Ô ù Ù û Û ü Ü"),
        "{}",
        doc.text()
    );
    // ﬀ ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ, split into their letters.
    let doc = extract("pdf/ligatures.pdf");
    assert!(
        doc.text().contains("abcdeffffiflffifflststghijklmno"),
        "{}",
        doc.text()
    );
}

#[test]
fn pdf_two_columns_read_column_by_column() {
    let doc = extract("pdf/two-columns.pdf");
    let page1 = &doc.sections[0];
    assert_eq!(page1.location.page, Some(1));
    let text = &page1.text;
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in page 1:\n{text}"))
    };
    assert!(at("Preemptive Information Extraction using") < at("Abstract"));
    assert!(at("Abstract") < at("Background"));
    // The end of the left column comes before the top of the right one.
    assert!(at("you need to repeat the whole process") < at("cles and adjust its patterns"));
    // No line runs across the gutter.
    for line in text.lines() {
        assert!(
            !(line.contains("human effort to tune") && line.contains("Every day")),
            "{line}"
        );
    }
    assert_eq!(doc.pages, 8);
    assert_eq!(
        doc.metadata.get("created").map(String::as_str),
        Some("2006-04-14T16:55:00+00:00")
    );
}

#[test]
fn encrypted_pdf_needs_its_password() {
    let err = extract_with(
        "pdf/encrypted-userpw-openpassword.pdf",
        &ExtractOptions::default(),
    )
    .unwrap_err();
    assert!(err.contains("password"), "{err}");
    let options = ExtractOptions {
        password: Some("openpassword".into()),
        ..Default::default()
    };
    let doc = extract_with("pdf/encrypted-userpw-openpassword.pdf", &options).unwrap();
    assert!(!doc.is_empty());
    let wrong = ExtractOptions {
        password: Some("nope".into()),
        ..Default::default()
    };
    let err = extract_with("pdf/encrypted-userpw-openpassword.pdf", &wrong).unwrap_err();
    assert!(err.contains("password"), "{err}");
}

#[test]
fn encrypt_dictionaries_written_inline_open_with_their_passwords() {
    // lopdf alone finds no encryption in these (the trailer holds the /Encrypt
    // dictionary itself, not a reference to it) and refuses every password.
    for (file, password, text) in [
        ("pdf/encrypted-userpw-baz.pdf", "baz", "Secret!"),
        ("pdf/encrypted-userpw-baz.pdf", "foo", "Secret!"),
        ("pdf/encrypted-r6-userpw-nonascii.pdf", "æøå", "Issue 6010"),
    ] {
        let options = ExtractOptions {
            password: Some(password.into()),
            ..Default::default()
        };
        let doc = extract_with(file, &options).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(doc.text().contains(text), "{file}: {:?}", doc.text());
    }
    for (file, password) in [
        ("pdf/encrypted-userpw-baz.pdf", None),
        ("pdf/encrypted-userpw-baz.pdf", Some("nope")),
        ("pdf/encrypted-r6-userpw-nonascii.pdf", None),
    ] {
        let options = ExtractOptions {
            password: password.map(str::to_string),
            ..Default::default()
        };
        let err = extract_with(file, &options).unwrap_err();
        let want = if password.is_some() {
            "the password given does not open it"
        } else {
            "it needs a password"
        };
        assert!(err.contains(want), "{file}: {err}");
    }
}

#[test]
fn broken_pdfs_are_reported_with_their_reason() {
    let err = extract_with("pdf/scanned.pdf", &ExtractOptions::default()).unwrap_err();
    assert!(err.contains("no text layer (scanned?)"), "{err}");
    let err = extract_with("pdf/pages-loop.pdf", &ExtractOptions::default()).unwrap_err();
    assert!(err.contains("loop"), "{err}");
    let err = extract::extract(
        "x.pdf",
        "x.pdf",
        b"%PDF-1.4\n",
        None,
        &ExtractOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("PDF"), "{err}");
    let err = extract::extract("x", "x", b"   \n", None, &ExtractOptions::default()).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}

#[test]
fn spreadsheets_become_markdown_tables_with_iso_dates() {
    // The same workbook saved with the 1900 and the 1904 date systems, and as BIFF8.
    for name in [
        "dates-1900.xlsx",
        "dates-1904.xlsx",
        "dates.xls",
        "dates.ods",
    ] {
        let doc = extract(&format!("sheets/{name}"));
        let want = if name.ends_with(".ods") {
            "sheets/dates-ods.expected.md"
        } else {
            "sheets/dates.expected.md"
        };
        assert_eq!(doc.text(), expected(want), "{name}");
        let section = &doc.sections[0];
        assert!(section.location.sheet.is_some());
        assert!(section.table.is_some());
    }
}

#[test]
fn encrypted_workbooks_open_with_their_password() {
    // Agile (AES-256, SHA-512; AES-128, SHA-1) and standard (AES-128 ECB) encryption.
    for file in [
        "sheets/encrypted-agile-userpw-password.xlsx",
        "sheets/encrypted-agile-userpw-password.xlsb",
        "sheets/encrypted-standard-userpw-password.xlsx",
    ] {
        let options = ExtractOptions {
            password: Some("password".into()),
            ..Default::default()
        };
        let doc = extract_with(file, &options).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(doc.format.is_spreadsheet(), "{file}");
        assert!(
            doc.text().contains("| Password: password |"),
            "{file}: {}",
            doc.text()
        );
        let err = extract_with(file, &ExtractOptions::default()).unwrap_err();
        assert!(err.contains("it needs a password"), "{file}: {err}");
        let wrong = ExtractOptions {
            password: Some("nope".into()),
            ..Default::default()
        };
        let err = extract_with(file, &wrong).unwrap_err();
        assert!(
            err.contains("the password given does not open it"),
            "{file}: {err}"
        );
    }
}

#[test]
fn hidden_sheets_are_marked() {
    let doc = extract("sheets/hidden-sheets.xls");
    let hidden: Vec<_> = doc.sections.iter().filter(|s| s.location.hidden).collect();
    assert!(!hidden.is_empty(), "{:#?}", doc.sections);
    assert!(hidden[0].text.contains("(hidden sheet)"));
}

#[test]
fn csv_encodings_and_delimiters_are_detected() {
    let doc = extract("sheets/cp1252.csv");
    assert_eq!(doc.text(), expected("sheets/cp1252.expected.md"));
    let doc = extract("sheets/utf16le.csv");
    assert_eq!(doc.text(), expected("sheets/utf16le.expected.md"));
}

/// Token-level F1 between two texts, SQuAD style (lowercase, words only).
fn f1(got: &str, want: &str) -> f64 {
    use std::collections::HashMap;
    let words = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    };
    let (g, w) = (words(got), words(want));
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &w {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0;
    for t in &g {
        if let Some(c) = counts.get_mut(t.as_str())
            && *c > 0
        {
            *c -= 1;
            common += 1;
        }
    }
    if common == 0 {
        return 0.0;
    }
    let p = common as f64 / g.len() as f64;
    let r = common as f64 / w.len() as f64;
    2.0 * p * r / (p + r)
}

fn html_text(path: &Path) -> String {
    let html = std::fs::read_to_string(path).unwrap();
    scraper::Html::parse_document(&html)
        .root_element()
        .text()
        .collect()
}

#[test]
fn web_pages_keep_the_main_content() {
    for case in ["normalize-spaces", "005-unescape-html-entities"] {
        let dir = fixtures().join("html").join(case);
        let doc = extract(&format!("html/{case}/source.html"));
        let score = f1(&doc.text(), &html_text(&dir.join("expected.html")));
        assert!(score > 0.9, "{case}: F1 {score:.2}\n{}", doc.text());
    }
    let doc = extract("demo/fiche-periode-essai.html");
    let text = doc.text();
    assert!(text.starts_with("# La période d'essai"), "{text}");
    for furniture in ["Accueil", "cookies", "25/09/2025"] {
        assert!(!text.contains(furniture), "{furniture} kept");
    }
    assert_eq!(doc.metadata["language"], "fr");
    assert_eq!(
        doc.metadata["canonical_url"],
        "https://travail-emploi.gouv.fr/la-periode-dessai"
    );
}

#[test]
fn readability_corpus_main_content() {
    let corpus = common::corpus();
    let mut scores = Vec::new();
    for entry in std::fs::read_dir(corpus.join("html/readability")).unwrap() {
        let dir = entry.unwrap().path();
        let source = dir.join("source.html");
        let Ok(doc) = extract::extract_path(&source, &ExtractOptions::default()) else {
            scores.push((dir.file_name().unwrap().to_string_lossy().to_string(), 0.0));
            continue;
        };
        let want = html_text(&dir.join("expected.html"));
        scores.push((
            dir.file_name().unwrap().to_string_lossy().to_string(),
            f1(&doc.text(), &want),
        ));
    }
    scores.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mean = scores.iter().map(|s| s.1).sum::<f64>() / scores.len() as f64;
    eprintln!(
        "readability: mean F1 {mean:.3} over {} pages; lowest: {:?}",
        scores.len(),
        &scores[..5]
    );
    assert!(mean > 0.85, "mean F1 {mean:.3}");
}
