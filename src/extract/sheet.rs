//! Spreadsheets (xlsx, xlsm, xlsb, xls, ods through calamine; CSV and TSV) as Markdown tables.
//!
//! Each non-empty sheet becomes one section: a `## sheet` title and a Markdown
//! table whose first non-empty row is the header. The section records that
//! header and every body row's sheet row number, so the chunker can repeat the
//! header at the top of every chunk and say which rows a chunk holds. Empty rows
//! and columns are dropped; dates are ISO dates whichever epoch (1900 or 1904)
//! the workbook uses; formulas show their cached values.

use std::io::Cursor;

use calamine::{Data, Reader, SheetVisible};

use crate::document::{Format, Location, Section, Table, TableRow};
use crate::extract::{ExtractOptions, Extracted, text};

pub fn extract_workbook(
    format: Format,
    bytes: &[u8],
    options: &ExtractOptions,
) -> Result<Extracted, String> {
    let cursor = Cursor::new(bytes);
    let mut workbook: calamine::Sheets<_> = match format {
        Format::Xlsx => calamine::Sheets::Xlsx(calamine::Xlsx::new(cursor).map_err(describe)?),
        Format::Xlsb => calamine::Sheets::Xlsb(calamine::Xlsb::new(cursor).map_err(describe)?),
        Format::Xls => calamine::Sheets::Xls(calamine::Xls::new(cursor).map_err(|e| {
            let reason = describe(e);
            if options.password.is_some() && reason.starts_with("password-protected") {
                // Excel 97-2003 encrypts record by record (RC4 or XOR obfuscation).
                "password-protected workbook: decrypting Excel 97-2003 (.xls) files is not supported"
                    .to_string()
            } else {
                reason
            }
        })?),
        Format::Ods => calamine::Sheets::Ods(calamine::Ods::new(cursor).map_err(describe)?),
        other => return Err(format!("not a workbook: {}", other.as_str())),
    };
    let sheets = workbook.sheets_metadata().to_vec();
    let mut out = Extracted {
        pages: sheets.len() as u32,
        ..Default::default()
    };
    let mut failures = Vec::new();
    for sheet in &sheets {
        let range = match workbook.worksheet_range(&sheet.name) {
            Ok(range) => range,
            Err(e) => {
                // Chart sheets and dialog sheets have no cells; anything else is worth saying.
                failures.push(format!("sheet {:?}: {}", sheet.name, describe(e)));
                continue;
            }
        };
        let (row0, _) = range.start().unwrap_or((0, 0));
        let rows = range
            .rows()
            .take(options.max_rows_per_sheet as usize)
            .enumerate()
            .map(|(i, cells)| {
                let row_number = row0 + i as u32 + 1;
                (
                    row_number,
                    cells.iter().map(render_cell).collect::<Vec<_>>(),
                )
            });
        let hidden = sheet.visible != SheetVisible::Visible;
        if let Some(section) = table_section(&sheet.name, hidden, rows) {
            out.sections.push(section);
        }
    }
    if out.sections.is_empty() && !failures.is_empty() {
        return Err(failures.join("; "));
    }
    if !failures.is_empty() {
        out.metadata.insert("warnings".into(), failures.join("; "));
    }
    Ok(out)
}

fn describe(e: impl std::fmt::Display) -> String {
    let msg = e.to_string();
    let lower = msg.to_ascii_lowercase();
    if lower.contains("password") || lower.contains("encrypt") {
        format!("password-protected workbook: {msg}")
    } else {
        msg
    }
}

fn render_cell(cell: &Data) -> String {
    let s = match cell {
        Data::Empty => return String::new(),
        Data::String(s) => s.replace("_x000D_", "").trim().to_string(),
        Data::Int(i) => i.to_string(),
        Data::Float(f) => render_number(*f),
        Data::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
        Data::DateTime(dt) => {
            if dt.is_duration() {
                match dt.as_duration() {
                    Some(d) => render_duration(d),
                    None => render_number(dt.as_f64()),
                }
            } else {
                match dt.as_datetime() {
                    Some(t) => {
                        if t.time() == chrono::NaiveTime::MIN {
                            t.date().to_string()
                        } else if dt.as_f64() < 1.0 {
                            t.time().format("%H:%M:%S").to_string()
                        } else {
                            t.format("%Y-%m-%dT%H:%M:%S").to_string()
                        }
                    }
                    None => render_number(dt.as_f64()),
                }
            }
        }
        Data::DateTimeIso(s) => s.trim_end_matches("T00:00:00").to_string(),
        Data::DurationIso(s) => iso_duration(s).unwrap_or_else(|| s.clone()),
        Data::Error(e) => format!("#{e:?}"),
    };
    // Cells become table cells: one line, no pipes.
    s.replace(['\n', '\r'], " ").replace('|', "\\|")
}

/// `PT10H10M10S` (as OpenDocument stores durations) as `10:10:10`.
fn iso_duration(s: &str) -> Option<String> {
    let rest = s.strip_prefix("PT")?;
    let (mut h, mut m, mut sec) = (0f64, 0f64, 0f64);
    let mut num = String::new();
    for c in rest.chars() {
        match c {
            'H' => h = num.parse().ok()?,
            'M' => m = num.parse().ok()?,
            'S' => sec = num.parse().ok()?,
            c if c.is_ascii_digit() || c == '.' => {
                num.push(c);
                continue;
            }
            _ => return None,
        }
        num.clear();
    }
    let secs = (h * 3600.0 + m * 60.0 + sec).round() as i64;
    Some(format!(
        "{}:{:02}:{:02}",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    ))
}

fn render_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds();
    format!("{}:{:02}:{:02}", secs / 3600, (secs % 3600) / 60, secs % 60)
}

/// A number as a spreadsheet shows it by default: integers without a decimal
/// point, others with at most 15 significant digits (no binary noise).
pub fn render_number(f: f64) -> String {
    if !f.is_finite() {
        return f.to_string();
    }
    if f.fract() == 0.0 && f.abs() < 1e15 {
        return format!("{}", f as i64);
    }
    let s = format!("{:.*e}", 14, f);
    let parsed: f64 = s.parse().unwrap_or(f);
    let mut out = format!("{parsed}");
    if out.contains('e') {
        out = format!("{parsed:e}");
    }
    out
}

/// Build a table section from numbered rows of rendered cells, or `None` when all are empty.
pub fn table_section(
    name: &str,
    hidden: bool,
    rows: impl Iterator<Item = (u32, Vec<String>)>,
) -> Option<Section> {
    let rows: Vec<(u32, Vec<String>)> = rows
        .filter(|(_, cells)| cells.iter().any(|c| !c.is_empty()))
        .collect();
    if rows.is_empty() {
        return None;
    }
    let width = rows.iter().map(|(_, c)| c.len()).max().unwrap_or(0);
    let kept: Vec<usize> = (0..width)
        .filter(|&col| {
            rows.iter()
                .any(|(_, c)| c.get(col).is_some_and(|v| !v.is_empty()))
        })
        .collect();
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for &col in &kept {
            s.push(' ');
            s.push_str(cells.get(col).map(String::as_str).unwrap_or(""));
            s.push_str(" |");
        }
        s.push('\n');
        s
    };
    let mut header = String::new();
    if !name.is_empty() {
        header.push_str("## ");
        header.push_str(name);
        if hidden {
            header.push_str(" (hidden sheet)");
        }
        header.push_str("\n\n");
    }
    header.push_str(&line(&rows[0].1));
    header.push('|');
    header.push_str(&"---|".repeat(kept.len()));
    header.push('\n');
    let mut text = header.clone();
    let mut table_rows = Vec::with_capacity(rows.len());
    // The header row is row `rows[0].0`; it is part of every chunk anyway.
    table_rows.push(TableRow {
        row: rows[0].0,
        offset: 0,
    });
    for (row, cells) in &rows[1..] {
        table_rows.push(TableRow {
            row: *row,
            offset: text.len(),
        });
        text.push_str(&line(cells));
    }
    let text = text.trim_end().to_string();
    Some(Section {
        text,
        location: Location {
            page: None,
            sheet: (!name.is_empty()).then(|| name.to_string()),
            hidden,
        },
        table: Some(Table {
            header,
            rows: table_rows,
        }),
    })
}

pub fn extract_csv(bytes: &[u8], options: &ExtractOptions) -> Result<Extracted, String> {
    let decoded = text::decode(bytes);
    let delimiter = sniff_delimiter(&decoded);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(decoded.as_bytes());
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        if i as u32 >= options.max_rows_per_sheet {
            break;
        }
        let record = record.map_err(|e| format!("CSV line {}: {e}", i + 1))?;
        let cells = record
            .iter()
            .map(|c| c.trim().replace(['\n', '\r'], " ").replace('|', "\\|"))
            .collect();
        rows.push((i as u32 + 1, cells));
    }
    let mut out = Extracted {
        pages: 1,
        ..Default::default()
    };
    out.metadata.insert(
        "delimiter".into(),
        (delimiter as char).escape_default().to_string(),
    );
    out.sections
        .extend(table_section("", false, rows.into_iter()));
    Ok(out)
}

/// The delimiter that splits the first lines into the same, largest number of fields.
fn sniff_delimiter(text: &str) -> u8 {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(30)
        .collect();
    let mut best = (b',', 0usize, 0usize);
    for d in [b',', b';', b'\t', b'|'] {
        let counts: Vec<usize> = lines
            .iter()
            .map(|l| count_outside_quotes(l, d as char))
            .collect();
        let Some(&first) = counts.first() else {
            continue;
        };
        if first == 0 {
            continue;
        }
        let consistent = counts.iter().filter(|&&c| c == first).count();
        if (consistent, first) > (best.1, best.2) {
            best = (d, consistent, first);
        }
    }
    best.0
}

fn count_outside_quotes(line: &str, delimiter: char) -> usize {
    let mut quoted = false;
    let mut n = 0;
    for c in line.chars() {
        if c == '"' {
            quoted = !quoted;
        } else if c == delimiter && !quoted {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_render_as_shown() {
        assert_eq!(render_number(3.0), "3");
        assert_eq!(render_number(0.1 + 0.2), "0.3");
        assert_eq!(render_number(-12.5), "-12.5");
        assert_eq!(render_number(1234567.891), "1234567.891");
    }

    #[test]
    fn csv_delimiters_are_sniffed() {
        assert_eq!(sniff_delimiter("a;b;c\n1;2;3\n"), b';');
        assert_eq!(sniff_delimiter("a\tb\n1\t2\n"), b'\t');
        assert_eq!(sniff_delimiter("\"x, y\",b\n1,2\n"), b',');
        assert_eq!(sniff_delimiter("a|b\n1|2\n"), b'|');
    }

    #[test]
    fn table_drops_empty_rows_and_columns_and_keeps_row_numbers() {
        let rows = vec![
            (1, vec!["Nom".into(), "".into(), "Ville".into()]),
            (2, vec!["".into(), "".into(), "".into()]),
            (3, vec!["Dupont".into(), "".into(), "Lyon".into()]),
        ];
        let s = table_section("Feuil1", false, rows.into_iter()).unwrap();
        assert_eq!(
            s.text,
            "## Feuil1\n\n| Nom | Ville |\n|---|---|\n| Dupont | Lyon |"
        );
        let table = s.table.unwrap();
        assert_eq!(table.rows.last().unwrap().row, 3);
        assert_eq!(&s.text[table.rows[1].offset..], "| Dupont | Lyon |");
    }
}
