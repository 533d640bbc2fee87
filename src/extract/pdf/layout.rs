//! Reading order: positioned glyphs in, the page's text as a reader sees it out.
//!
//! Glyphs are grouped into lines by baseline and split into segments at wide
//! gaps; segments stacked closely with overlapping extents form blocks; blocks
//! are ordered by a recursive XY cut that prefers columns of running text and
//! otherwise reads top to bottom, so that a two-column article reads column by
//! column while a table still reads row by row.

/// One glyph, in a frame where the text runs along +x and y grows upwards.
#[derive(Debug, Clone)]
pub struct Glyph {
    pub x0: f32,
    pub x1: f32,
    /// Baseline.
    pub y: f32,
    pub size: f32,
    pub text: String,
}

#[derive(Debug, Clone)]
struct Segment {
    x0: f32,
    x1: f32,
    y: f32,
    size: f32,
    text: String,
    /// Where each glyph's text starts in `text`, left to right: right-to-left
    /// lines are put back in reading order from these.
    starts: Vec<usize>,
}

#[derive(Debug, Clone)]
struct Block {
    x0: f32,
    x1: f32,
    /// Top (highest y, baseline plus size) and bottom (lowest baseline).
    top: f32,
    bottom: f32,
    lines: Vec<Segment>,
}

impl Block {
    fn from(seg: Segment) -> Block {
        Block {
            x0: seg.x0,
            x1: seg.x1,
            top: seg.y + seg.size,
            bottom: seg.y,
            lines: vec![seg],
        }
    }

    fn chars(&self) -> usize {
        self.lines.iter().map(|l| l.text.chars().count()).sum()
    }
}

/// Word gaps wider than this fraction of the font size become spaces.
const WORD_GAP: f32 = 0.18;
/// Gaps wider than this many font sizes split a line into separate segments.
const SEGMENT_GAP: f32 = 1.0;

pub fn page_text(mut glyphs: Vec<Glyph>) -> String {
    glyphs.retain(|g| !g.text.is_empty() && g.size > 0.0 && g.x0.is_finite() && g.y.is_finite());
    if glyphs.is_empty() {
        return String::new();
    }
    let segments = segments(glyphs);
    let blocks = blocks(segments);
    let ordered = order(blocks);
    let mut out = String::new();
    for block in ordered {
        let mut text = String::new();
        for line in &block.lines {
            let t = line.text.trim();
            if t.is_empty() {
                continue;
            }
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(t);
        }
        if text.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        out.push_str(&text);
    }
    out
}

fn segments(mut glyphs: Vec<Glyph>) -> Vec<Segment> {
    // Lines: glyphs sorted top to bottom, clustered by baseline.
    glyphs.sort_by(|a, b| b.y.total_cmp(&a.y).then(a.x0.total_cmp(&b.x0)));
    let mut lines: Vec<Vec<Glyph>> = Vec::new();
    let mut line_y = f32::NAN;
    let mut line_size = 0.0f32;
    for g in glyphs {
        let tolerance = 0.45 * line_size.max(g.size).max(1.0);
        if lines.is_empty() || (line_y - g.y).abs() > tolerance {
            line_y = g.y;
            line_size = g.size;
            lines.push(vec![g]);
        } else {
            line_size = line_size.max(g.size);
            lines.last_mut().expect("a line").push(g);
        }
    }
    let mut out = Vec::new();
    for mut line in lines {
        line.sort_by(|a, b| a.x0.total_cmp(&b.x0));
        let mut seg: Option<Segment> = None;
        let mut last_x0 = f32::NEG_INFINITY;
        let mut last_text = String::new();
        for g in line {
            // Fake bold: the same glyph drawn again a hair to the right.
            if g.text == last_text && (g.x0 - last_x0).abs() < 0.15 * g.size {
                continue;
            }
            last_x0 = g.x0;
            last_text.clone_from(&g.text);
            match &mut seg {
                Some(s) if g.x0 - s.x1 <= SEGMENT_GAP * s.size.max(g.size) => {
                    let gap = g.x0 - s.x1;
                    let needs_space = gap > WORD_GAP * s.size.min(g.size)
                        && !s.text.ends_with(char::is_whitespace)
                        && !g.text.starts_with(char::is_whitespace);
                    if needs_space {
                        s.starts.push(s.text.len());
                        s.text.push(' ');
                    }
                    s.starts.push(s.text.len());
                    s.text.push_str(&g.text);
                    s.x1 = s.x1.max(g.x1);
                    s.size = s.size.max(g.size);
                    s.y = s.y.min(g.y);
                }
                _ => {
                    if let Some(s) = seg.take() {
                        out.push(s);
                    }
                    seg = Some(Segment {
                        x0: g.x0,
                        x1: g.x1,
                        y: g.y,
                        size: g.size,
                        text: g.text,
                        starts: vec![0],
                    });
                }
            }
        }
        out.extend(seg);
    }
    for s in &mut out {
        s.text = collapse_spaces(&logical_order(&s.text, &s.starts));
    }
    out.retain(|s| !s.text.trim().is_empty());
    out
}

/// Right-to-left script (Hebrew, Arabic, Syriac, Thaana, NKo…, and their
/// presentation forms).
fn is_rtl(c: char) -> bool {
    matches!(c, '\u{0590}'..='\u{08FF}' | '\u{FB1D}'..='\u{FDFF}' | '\u{FE70}'..='\u{FEFF}')
}

/// A line's text in reading order. Glyphs are placed left to right; in a line
/// written mostly in a right-to-left script they are read right to left, except
/// runs of left-to-right text and numbers inside it, read left to right.
/// `starts` are the byte offsets of the glyphs (and inserted spaces) in `text`.
fn logical_order(text: &str, starts: &[usize]) -> String {
    let rtl = text.chars().filter(|&c| is_rtl(c)).count();
    let ltr = text
        .chars()
        .filter(|c| c.is_alphanumeric() && !is_rtl(*c))
        .count();
    if rtl <= ltr {
        return text.to_string();
    }
    let pieces: Vec<&str> = starts
        .iter()
        .enumerate()
        .map(|(i, &start)| &text[start..starts.get(i + 1).copied().unwrap_or(text.len())])
        .collect();
    let is_ltr = |p: &str| p.chars().any(|c| c.is_alphanumeric() && !is_rtl(c));
    let is_neutral = |p: &str| !p.chars().any(|c| c.is_alphanumeric());
    let mut out = String::with_capacity(text.len());
    let mut end = pieces.len();
    while end > 0 {
        let mut start = end - 1;
        if is_ltr(pieces[start]) {
            // Extend the run left over LTR pieces and the neutral ones between them.
            while start > 0
                && (is_ltr(pieces[start - 1])
                    || (start > 1 && is_neutral(pieces[start - 1]) && is_ltr(pieces[start - 2])))
            {
                start -= 1;
            }
        }
        for piece in &pieces[start..end] {
            out.push_str(piece);
        }
        end = start;
    }
    out
}

fn collapse_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c.is_whitespace() {
            space = true;
        } else {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.push(c);
        }
    }
    out
}

fn blocks(segments: Vec<Segment>) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    for seg in segments {
        let joins = blocks.iter_mut().rev().take(8).find(|b| {
            let last = b.lines.last().expect("a line");
            let gap = last.y - seg.y;
            let size = last.size.max(seg.size);
            let overlap = seg.x1.min(b.x1) - seg.x0.max(b.x0);
            gap > 0.0
                && gap <= 1.75 * size
                && overlap > 0.0
                && (last.size / seg.size).max(seg.size / last.size) < 1.35
        });
        match joins {
            Some(b) => {
                b.x0 = b.x0.min(seg.x0);
                b.x1 = b.x1.max(seg.x1);
                b.bottom = b.bottom.min(seg.y);
                b.lines.push(seg);
            }
            None => blocks.push(Block::from(seg)),
        }
    }
    blocks
}

/// Order blocks for reading: columns left to right when the page has columns of
/// running text, bands top to bottom otherwise.
fn order(mut blocks: Vec<Block>) -> Vec<Block> {
    if blocks.len() <= 1 {
        return blocks;
    }
    if let Some(columns) = split_columns(&blocks) {
        return columns.into_iter().flat_map(order).collect();
    }
    let bands = split_bands(&blocks);
    if bands.len() > 1 {
        // Bands cut by chance between paragraphs of the same columns are put back together.
        let mut merged: Vec<Vec<Block>> = Vec::new();
        for band in bands {
            if let Some(prev) = merged.last_mut()
                && has_columns(prev)
                && has_columns(&band)
            {
                prev.extend(band);
                continue;
            }
            merged.push(band);
        }
        if merged.len() > 1 {
            return merged.into_iter().flat_map(order).collect();
        }
        blocks = merged.pop().expect("one band");
    }
    // Short blocks side by side that are not columns of text: a table or a form, read by rows.
    if split_columns_any(&blocks).is_some() {
        return vec![rows(blocks)];
    }
    blocks.sort_by(|a, b| b.top.total_cmp(&a.top).then(a.x0.total_cmp(&b.x0)));
    blocks
}

/// Merge blocks into one whose lines are the rows across all of them.
fn rows(blocks: Vec<Block>) -> Block {
    let mut segs: Vec<Segment> = blocks.into_iter().flat_map(|b| b.lines).collect();
    segs.sort_by(|a, b| b.y.total_cmp(&a.y).then(a.x0.total_cmp(&b.x0)));
    let mut lines: Vec<Segment> = Vec::new();
    for seg in segs {
        match lines.last_mut() {
            Some(row) if (row.y - seg.y).abs() <= 0.45 * row.size.max(seg.size) => {
                row.text.push(' ');
                row.text.push_str(&seg.text);
                row.x0 = row.x0.min(seg.x0);
                row.x1 = row.x1.max(seg.x1);
            }
            _ => lines.push(seg),
        }
    }
    let mut block = Block::from(lines.remove(0));
    for line in lines {
        block.bottom = block.bottom.min(line.y);
        block.lines.push(line);
    }
    block
}

fn has_columns(blocks: &[Block]) -> bool {
    split_columns_any(blocks).is_some()
}

/// Split at vertical gaps that no block crosses, when every side holds running text.
fn split_columns(blocks: &[Block]) -> Option<Vec<Vec<Block>>> {
    let columns = split_columns_any(blocks)?;
    let prose = |col: &Vec<Block>| {
        let lines: usize = col.iter().map(|b| b.lines.len()).sum();
        let chars: usize = col.iter().map(Block::chars).sum();
        lines >= 2 && chars / lines.max(1) >= 25
    };
    columns.iter().all(prose).then_some(columns)
}

fn split_columns_any(blocks: &[Block]) -> Option<Vec<Vec<Block>>> {
    let mut sorted: Vec<&Block> = blocks.iter().collect();
    sorted.sort_by(|a, b| a.x0.total_cmp(&b.x0));
    let mut groups: Vec<Vec<Block>> = vec![vec![sorted[0].clone()]];
    let mut reach = sorted[0].x1;
    for b in &sorted[1..] {
        if b.x0 > reach {
            groups.push(Vec::new());
        }
        reach = reach.max(b.x1);
        groups.last_mut().expect("a group").push((*b).clone());
    }
    (groups.len() > 1).then_some(groups)
}

fn split_bands(blocks: &[Block]) -> Vec<Vec<Block>> {
    let mut sorted: Vec<&Block> = blocks.iter().collect();
    sorted.sort_by(|a, b| b.top.total_cmp(&a.top));
    let mut bands: Vec<Vec<Block>> = vec![vec![sorted[0].clone()]];
    let mut floor = sorted[0].bottom;
    for b in &sorted[1..] {
        if b.top < floor {
            bands.push(Vec::new());
        }
        floor = floor.min(b.bottom);
        bands.last_mut().expect("a band").push((*b).clone());
    }
    bands
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(x: f32, y: f32, text: &str) -> Glyph {
        Glyph {
            x0: x,
            x1: x + 5.0 * text.chars().count() as f32,
            y,
            size: 10.0,
            text: text.into(),
        }
    }

    /// One glyph per character, 5 units apart, as a right-to-left line is
    /// drawn: its first letter rightmost.
    fn glyphs_left_to_right(x: f32, y: f32, visual: &str) -> Vec<Glyph> {
        visual
            .chars()
            .enumerate()
            .filter(|(_, c)| *c != ' ')
            .map(|(i, c)| Glyph {
                x0: x + 5.0 * i as f32,
                x1: x + 5.0 * i as f32 + 4.0,
                y,
                size: 10.0,
                text: c.into(),
            })
            .collect()
    }

    #[test]
    fn right_to_left_lines_read_right_to_left_with_numbers_left_to_right() {
        // "قانون 2024 الجديد" ("the new law 2024"), drawn left to right as it
        // is seen: the last word leftmost, the number's digits in their order.
        let visual: String = "الجديد 2024 قانون"
            .split(' ')
            .map(|w| {
                if w.chars().all(|c| c.is_ascii_digit()) {
                    w.to_string()
                } else {
                    w.chars().rev().collect()
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        let glyphs = glyphs_left_to_right(10.0, 100.0, &visual);
        assert_eq!(page_text(glyphs), "قانون 2024 الجديد");
        // A Latin line is left alone, Arabic words inside it too.
        let glyphs = glyphs_left_to_right(10.0, 100.0, "Loi 2024 sur la laïcité");
        assert_eq!(page_text(glyphs), "Loi 2024 sur la laïcité");
    }

    #[test]
    fn words_and_lines_in_reading_order() {
        // Drawn bottom line first, words out of order.
        let glyphs = vec![
            word(10.0, 88.0, "ligne."),
            word(43.0, 88.0, "Seconde"),
            word(48.0, 100.0, "monde"),
            word(10.0, 100.0, "Bonjour"),
        ];
        assert_eq!(page_text(glyphs), "Bonjour monde\nligne. Seconde");
    }

    #[test]
    fn two_columns_read_column_by_column() {
        let mut glyphs = Vec::new();
        for i in 0..4 {
            let y = 700.0 - 12.0 * i as f32;
            glyphs.push(word(
                50.0,
                y,
                &format!("gauche ligne {i} avec du texte courant assez long"),
            ));
            glyphs.push(word(
                350.0,
                y,
                &format!("droite ligne {i} avec du texte courant assez long"),
            ));
        }
        let text = page_text(glyphs);
        let left = text.find("gauche ligne 3").unwrap();
        let right = text.find("droite ligne 0").unwrap();
        assert!(left < right, "{text}");
    }

    #[test]
    fn table_rows_stay_rows() {
        let glyphs = vec![
            word(50.0, 700.0, "Nom"),
            word(200.0, 700.0, "Âge"),
            word(50.0, 688.0, "Anne"),
            word(200.0, 688.0, "31"),
        ];
        let text = page_text(glyphs);
        assert!(
            text.find("Âge").unwrap() < text.find("Anne").unwrap(),
            "{text}"
        );
    }
}
