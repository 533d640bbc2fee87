//! Format detection from the content's first bytes, with the name as a tie-breaker only.

use std::io::Cursor;

use crate::document::Format;

const OLE_MAGIC: &[u8] = &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1];

/// Why some bytes are not extracted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// Not a format moulin reads; the text says what it looked like.
    Unsupported(String),
    /// A format moulin reads, in a state it cannot read (corrupt, encrypted).
    Unreadable(String),
}

/// Detect the format of `bytes`, or say why it is not read.
pub fn detect(bytes: &[u8], name: &str, content_type: Option<&str>) -> Result<Format, Rejected> {
    let head = &bytes[..bytes.len().min(1024)];
    // PDF readers accept junk before the header; so do we, within the first kilobyte.
    if memchr::memmem::find(head, b"%PDF-").is_some() {
        return Ok(Format::Pdf);
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return detect_zip(bytes);
    }
    if bytes.starts_with(OLE_MAGIC) {
        return detect_ole(bytes);
    }
    // Excel 2.x–4.x worksheets: a BIFF BOF record outside any OLE container.
    if bytes.len() > 4 && matches!((bytes[0], bytes[1]), (0x09, 0x00 | 0x02 | 0x04)) {
        return Err(Rejected::Unsupported(
            "an Excel 2.x–4.x worksheet (BIFF2–4), older than the reader handles; \
             save it again as .xlsx"
                .into(),
        ));
    }
    let ext = extension(name);
    // A PDF whose header is damaged may still hold readable objects.
    if ext == "pdf" && memchr::memmem::find(bytes, b"endobj").is_some() {
        return Ok(Format::Pdf);
    }
    if looks_binary(head) && !is_utf16(bytes) {
        let named = if ext.is_empty() {
            String::new()
        } else {
            format!(", named .{ext}")
        };
        return Err(Rejected::Unsupported(format!(
            "{}{named}",
            describe_binary(bytes)
        )));
    }
    if looks_like_html(head) || content_type.is_some_and(|c| c.contains("html")) {
        return Ok(Format::Html);
    }
    Ok(match ext.as_str() {
        "csv" | "tsv" | "tab" => Format::Csv,
        "md" | "markdown" => Format::Markdown,
        "html" | "htm" | "xhtml" => Format::Html,
        _ if content_type.is_some_and(|c| c.contains("csv")) => Format::Csv,
        _ if content_type.is_some_and(|c| c.contains("markdown")) => Format::Markdown,
        _ => Format::Text,
    })
}

/// What binary content that moulin does not read looks like, from its magic numbers.
fn describe_binary(bytes: &[u8]) -> String {
    let Some(kind) = infer::get(bytes) else {
        return "binary data, not a PDF, a spreadsheet or text".into();
    };
    let what = match kind.matcher_type() {
        infer::MatcherType::Image => "an image",
        infer::MatcherType::Video => "a video",
        infer::MatcherType::Audio => "an audio file",
        infer::MatcherType::Archive => "an archive",
        infer::MatcherType::Book => "an e-book",
        infer::MatcherType::Doc => "an office document",
        infer::MatcherType::Font => "a font",
        infer::MatcherType::App => "a program",
        _ => "a binary file",
    };
    format!("{what} ({})", kind.mime_type())
}

/// A note when the file's name says another format than its content, e.g. a text
/// file named `.pdf`: the content decides, and the note says the name lied.
pub fn name_mismatch(format: Format, name: &str) -> Option<String> {
    let ext = extension(name);
    let named = match ext.as_str() {
        "pdf" => Format::Pdf,
        "xlsx" | "xlsm" => Format::Xlsx,
        "xlsb" => Format::Xlsb,
        "xls" => Format::Xls,
        "ods" => Format::Ods,
        "csv" | "tsv" | "tab" => Format::Csv,
        "html" | "htm" | "xhtml" => Format::Html,
        // Plain text and Markdown may hold anything textual.
        _ => return None,
    };
    (named != format).then(|| {
        format!(
            "named .{ext} but read as {}: the content decides the format",
            format.as_str()
        )
    })
}

fn extension(name: &str) -> String {
    let name = name.rsplit('/').next().unwrap_or(name);
    let name = name.split(['?', '#']).next().unwrap_or(name);
    match name.rsplit_once('.') {
        Some((_, ext)) => ext.to_ascii_lowercase(),
        None => String::new(),
    }
}

fn detect_zip(bytes: &[u8]) -> Result<Format, Rejected> {
    let archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| Rejected::Unreadable(format!("corrupt or truncated ZIP container: {e}")))?;
    let names: Vec<String> = archive
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.to_string()))
        .collect();
    let has = |n: &str| names.iter().any(|x| x.eq_ignore_ascii_case(n));
    if has("xl/workbook.bin") {
        return Ok(Format::Xlsb);
    }
    if has("xl/workbook.xml") || names.iter().any(|n| n.starts_with("xl/")) {
        return Ok(Format::Xlsx);
    }
    if has("mimetype") {
        let mime = zip_entry(bytes, "mimetype").unwrap_or_default();
        if mime.contains("opendocument.spreadsheet") {
            return Ok(Format::Ods);
        }
        return Err(Rejected::Unsupported(format!(
            "an OpenDocument {}",
            mime.trim_start_matches("application/vnd.oasis.opendocument.")
        )));
    }
    if has("word/document.xml") {
        return Err(Rejected::Unsupported("a Word document (DOCX)".into()));
    }
    if has("ppt/presentation.xml") {
        return Err(Rejected::Unsupported(
            "a PowerPoint presentation (PPTX)".into(),
        ));
    }
    if names.is_empty() {
        return Err(Rejected::Unsupported("an empty ZIP archive".into()));
    }
    Err(Rejected::Unsupported(
        "a ZIP archive that is not a workbook".into(),
    ))
}

fn zip_entry(bytes: &[u8], name: &str) -> Option<String> {
    use std::io::Read;
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).ok()?;
    let mut file = archive.by_name(name).ok()?;
    let mut s = String::new();
    file.by_ref().take(256).read_to_string(&mut s).ok()?;
    Some(s)
}

/// An OLE compound file: a legacy workbook, or an encrypted OOXML file, or a Word document.
fn detect_ole(bytes: &[u8]) -> Result<Format, Rejected> {
    // Directory entries are UTF-16LE names; looking for them is enough to tell the kinds apart.
    let has = |name: &str| {
        let pattern: Vec<u8> = name.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        memchr::memmem::find(bytes, &pattern).is_some()
    };
    if has("EncryptionInfo") && has("EncryptedPackage") {
        return Err(Rejected::Unreadable(
            "password-protected workbook: it needs a password (extract.password or --password)"
                .into(),
        ));
    }
    if has("WordDocument") {
        return Err(Rejected::Unsupported(
            "a Word 97-2003 document (DOC)".into(),
        ));
    }
    if has("PowerPoint Document") {
        return Err(Rejected::Unsupported(
            "a PowerPoint 97-2003 presentation (PPT)".into(),
        ));
    }
    Ok(Format::Xls)
}

fn is_utf16(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xFE]) || bytes.starts_with(&[0xFE, 0xFF])
}

fn looks_binary(head: &[u8]) -> bool {
    let controls = head
        .iter()
        .filter(|&&b| b == 0 || (b < 0x09) || (0x0E..0x1A).contains(&b))
        .count();
    controls > 0 && controls * 100 > head.len()
}

fn looks_like_html(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    trimmed.starts_with("<!doctype html")
        || trimmed.starts_with("<html")
        || trimmed.starts_with("<head")
        || trimmed.starts_with("<body")
        || (trimmed.starts_with("<?xml") && text.contains("<html"))
        || (trimmed.starts_with("<!--") && text.contains("<html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_wins_over_extension() {
        assert_eq!(detect(b"%PDF-1.4\n...", "notes.txt", None), Ok(Format::Pdf));
        assert_eq!(
            detect(b"<!DOCTYPE html><html></html>", "page.txt", None),
            Ok(Format::Html)
        );
        assert_eq!(detect(b"a;b\n1;2\n", "data.csv", None), Ok(Format::Csv));
        assert_eq!(
            detect(b"# Titre\n", "lisez-moi.md", None),
            Ok(Format::Markdown)
        );
        assert_eq!(detect(b"bonjour", "x", None), Ok(Format::Text));
    }

    #[test]
    fn binary_junk_is_refused_with_what_it_looks_like() {
        let err = detect(&[0u8, 1, 2, 3, 0, 0, 7, 8], "x.bin", None).unwrap_err();
        assert_eq!(
            err,
            Rejected::Unsupported(
                "binary data, not a PDF, a spreadsheet or text, named .bin".into()
            )
        );
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0";
        assert_eq!(
            detect(png, "page.html", None),
            Err(Rejected::Unsupported(
                "an image (image/png), named .html".into()
            ))
        );
        let bmp = b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0\x28\0\0\0\x01\0\0\0\x01\0\0\0\x01\0\x18\0\0\0\0\0\x04\0\0\0";
        assert_eq!(
            detect(bmp, "sheet.xls", None),
            Err(Rejected::Unsupported(
                "an image (image/bmp), named .xls".into()
            ))
        );
    }

    #[test]
    fn a_text_file_named_pdf_is_read_as_text_and_the_name_noted() {
        assert_eq!(detect(b"Bonjour.\n", "notes.pdf", None), Ok(Format::Text));
        assert_eq!(
            name_mismatch(Format::Text, "notes.pdf").as_deref(),
            Some("named .pdf but read as text: the content decides the format")
        );
        assert_eq!(name_mismatch(Format::Markdown, "notes.txt"), None);
        assert_eq!(name_mismatch(Format::Xlsx, "a.xlsm"), None);
    }
}
