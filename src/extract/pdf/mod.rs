//! PDF text extraction with lopdf: every page's text in reading order, with metadata.
//!
//! The content stream is interpreted (text and graphics state, `TJ` kerning,
//! Form XObjects) to place every glyph on the page; [`layout`] then orders them
//! as a reader would. Everything is bounded: decompression per stream, Form
//! XObject depth, and the number of operators run per page, so a decompression
//! bomb, a self-referencing XObject or a page-tree loop ends in an error or in a
//! truncated page, never in a hang.

mod cid;
mod font;
mod layout;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

use lopdf::content::Content;
use lopdf::{Dictionary, Document, LoadOptions, Object, ObjectId};

use crate::document::{Location, Section};
use crate::extract::{ExtractOptions, Extracted};
use font::Font;
use layout::Glyph;

/// Operators interpreted on one page, Form XObjects included.
const MAX_OPS_PER_PAGE: usize = 2_000_000;
const MAX_FORM_DEPTH: usize = 12;
/// Glyphs kept per page: more than any real page holds.
const MAX_GLYPHS_PER_PAGE: usize = 500_000;

pub fn extract(bytes: &[u8], options: &ExtractOptions) -> Result<Extracted, String> {
    let doc = load(bytes, options)?;
    let mut out = Extracted {
        metadata: metadata(&doc),
        ..Default::default()
    };
    out.title = out.metadata.get("title").cloned();
    let pages = page_ids(&doc).map_err(|e| {
        // Without the right password lopdf still loads the file, but nothing in it reads.
        if memchr::memmem::find(bytes, b"/Encrypt").is_some() {
            password_error(options)
        } else {
            e
        }
    })?;
    out.pages = pages.len() as u32;
    let limit = options.max_decompressed_bytes as usize;
    let mut fonts = FontCache::default();
    let mut failures = Vec::new();
    for (number, page_id) in pages.iter().take(options.max_pages as usize) {
        match page_text(&doc, *page_id, limit, &mut fonts) {
            Ok(text) => {
                if !text.trim().is_empty() {
                    out.sections.push(Section::new(
                        text,
                        Location {
                            page: Some(*number),
                            ..Default::default()
                        },
                    ));
                }
            }
            Err(e) => failures.push(format!("page {number}: {e}")),
        }
    }
    if let Some(form) = form_fields(&doc) {
        out.sections.push(Section::new(form, Location::default()));
    }
    if out.sections.is_empty() && !failures.is_empty() {
        return Err(failures.join("; "));
    }
    if !failures.is_empty() {
        out.metadata.insert("warnings".into(), failures.join("; "));
    }
    Ok(out)
}

fn load(bytes: &[u8], options: &ExtractOptions) -> Result<Document, String> {
    let opts = |password: Option<&str>| LoadOptions {
        password: password.map(str::to_string),
        max_decompressed_size: Some(options.max_decompressed_bytes as usize),
        ..Default::default()
    };
    let fixed;
    let bytes = match indirect_encrypt(bytes, &opts(None)) {
        Some(with_reference) => {
            fixed = with_reference;
            &fixed[..]
        }
        None => bytes,
    };
    let mut doc = Document::load_mem_with_options(bytes, opts(options.password.as_deref()))
        .or_else(|e| {
            if options.password.is_some() {
                Err(e)
            } else {
                Document::load_mem_with_options(bytes, opts(Some("")))
            }
        })
        .map_err(|e| match e {
            lopdf::Error::InvalidPassword => password_error(options),
            e => describe_load_error(e),
        })?;
    if doc.is_encrypted() {
        let password = options.password.clone().unwrap_or_default();
        doc.decrypt(&password)
            .map_err(|_| password_error(options))?;
    }
    Ok(doc)
}

/// lopdf decrypts only files whose trailer names the `/Encrypt` dictionary by
/// reference; with the dictionary written inline (cpdf does this) it finds no
/// encryption, rejects every password and loads nothing. For such a file,
/// the bytes with an incremental update appended that moves the dictionary
/// into an object of its own; `None` for every other file.
fn indirect_encrypt(bytes: &[u8], options: &LoadOptions) -> Option<Vec<u8>> {
    let inline = memchr::memmem::find_iter(bytes, b"/Encrypt").any(|at| {
        bytes[at + b"/Encrypt".len()..]
            .trim_ascii_start()
            .starts_with(b"<<")
    });
    if !inline {
        return None;
    }
    let doc = Document::load_mem_with_options(bytes, options.clone()).ok()?;
    let Ok(Object::Dictionary(encrypt)) = doc.trailer.get(b"Encrypt") else {
        return None;
    };
    let prev = doc.xref_start;
    let number = doc
        .trailer
        .get(b"Size")
        .and_then(Object::as_i64)
        .ok()
        .and_then(|size| u32::try_from(size).ok())?
        .max(doc.max_id + 1);
    let mut encrypt = Object::Dictionary(encrypt.clone());
    hex_strings(&mut encrypt);
    let mut out = bytes.to_vec();
    out.extend_from_slice(b"\n");
    let offset = out.len();
    out.extend_from_slice(format!("{number} 0 obj\n").as_bytes());
    lopdf::Writer::write_object(&mut out, &encrypt).ok()?;
    out.extend_from_slice(b"\nendobj\n");
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n{number} 1\n{offset:010} 00000 n\r\ntrailer\n<<").as_bytes(),
    );
    for key in [b"Root".as_slice(), b"Info", b"ID"] {
        if let Ok(value) = doc.trailer.get(key) {
            out.push(b'/');
            out.extend_from_slice(key);
            out.push(b' ');
            lopdf::Writer::write_object(&mut out, value).ok()?;
        }
    }
    let size = number + 1;
    out.extend_from_slice(
        format!("/Size {size}/Prev {prev}/Encrypt {number} 0 R>>\nstartxref\n{xref}\n%%EOF\n")
            .as_bytes(),
    );
    Some(out)
}

/// Strings written as hex: binary hashes survive any writer's escaping.
fn hex_strings(object: &mut Object) {
    match object {
        Object::String(_, format) => *format = lopdf::StringFormat::Hexadecimal,
        Object::Array(items) => items.iter_mut().for_each(hex_strings),
        Object::Dictionary(dict) => dict.iter_mut().for_each(|(_, v)| hex_strings(v)),
        _ => {}
    }
}

fn password_error(options: &ExtractOptions) -> String {
    if options.password.is_some() {
        "password-protected PDF: the password given does not open it".to_string()
    } else {
        "password-protected PDF: it needs a password (extract.password or --password)".to_string()
    }
}

fn describe_load_error(e: lopdf::Error) -> String {
    let msg = e.to_string();
    let lower = msg.to_ascii_lowercase();
    if lower.contains("password") || lower.contains("decrypt") || lower.contains("encrypt") {
        "password-protected PDF: it needs a password (extract.password or --password)".into()
    } else if lower.contains("limit") {
        format!("decompression limit exceeded (a decompression bomb?): {msg}")
    } else {
        format!("corrupt or truncated PDF: {msg}")
    }
}

/// Pages in order, refusing page trees that loop or nest absurdly deep.
fn page_ids(doc: &Document) -> Result<Vec<(u32, ObjectId)>, String> {
    let root = doc
        .catalog()
        .and_then(|c| c.get(b"Pages"))
        .and_then(Object::as_reference)
        .map_err(|e| format!("corrupt PDF: no page tree ({e})"))?;
    let mut pages = Vec::new();
    let mut seen = HashSet::new();
    let mut stack = vec![(root, 0usize)];
    // Depth-first, children in order: push them reversed.
    while let Some((id, depth)) = stack.pop() {
        if !seen.insert(id) {
            return Err("corrupt PDF: the page tree loops back on itself".into());
        }
        if depth > 64 {
            return Err("corrupt PDF: the page tree is nested too deep".into());
        }
        let Ok(dict) = doc.get_dictionary(id) else {
            continue;
        };
        match dict.get(b"Type").and_then(Object::as_name) {
            Ok(b"Page") => pages.push(id),
            _ => {
                if let Ok(kids) = dict.get(b"Kids").and_then(Object::as_array) {
                    for kid in kids.iter().rev() {
                        if let Ok(kid) = kid.as_reference() {
                            stack.push((kid, depth + 1));
                        }
                    }
                } else if dict.has(b"Contents") {
                    pages.push(id);
                }
            }
        }
    }
    Ok(pages
        .into_iter()
        .enumerate()
        .map(|(i, id)| (i as u32 + 1, id))
        .collect())
}

fn metadata(doc: &Document) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::new();
    let info = doc
        .trailer
        .get(b"Info")
        .ok()
        .and_then(|o| doc.dereference(o).ok())
        .and_then(|(_, o)| o.as_dict().ok());
    let Some(info) = info else { return meta };
    for (key, name) in [
        (&b"Title"[..], "title"),
        (b"Author", "author"),
        (b"Subject", "subject"),
        (b"Keywords", "keywords"),
        (b"Creator", "creator"),
        (b"Producer", "producer"),
        (b"CreationDate", "created"),
        (b"ModDate", "modified"),
    ] {
        let Some(value) = info
            .get(key)
            .ok()
            .and_then(|o| doc.dereference(o).ok())
            .map(|(_, o)| o)
        else {
            continue;
        };
        let text = match value {
            Object::String(bytes, _) => decode_text_string(bytes),
            _ => continue,
        };
        let text = if name == "created" || name == "modified" {
            pdf_date(&text).unwrap_or(text)
        } else {
            text
        };
        let text = crate::extract::squeeze_spaces(&text);
        if !text.is_empty() {
            meta.insert(name.to_string(), text);
        }
    }
    meta
}

/// PDF text strings: UTF-16BE with a byte-order mark, UTF-8 with one, else PDFDocEncoding.
fn decode_text_string(bytes: &[u8]) -> String {
    if bytes.starts_with(&[0xFE, 0xFF]) {
        let units: Vec<u16> = bytes[2..]
            .chunks(2)
            .map(|c| ((c[0] as u16) << 8) | *c.get(1).unwrap_or(&0) as u16)
            .collect();
        return String::from_utf16_lossy(&units);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        return String::from_utf8_lossy(rest).to_string();
    }
    // PDFDocEncoding matches Latin-1 for the characters French needs.
    bytes.iter().map(|&b| b as char).collect()
}

/// `D:YYYYMMDDHHmmSS+HH'mm'` as an ISO 8601 date or date-time.
fn pdf_date(s: &str) -> Option<String> {
    let d = s.trim().strip_prefix("D:").unwrap_or(s.trim());
    let digits: String = d.chars().take_while(char::is_ascii_digit).collect();
    if digits.len() < 4 {
        return None;
    }
    let part = |from: usize, len: usize, default: &str| {
        digits.get(from..from + len).unwrap_or(default).to_string()
    };
    let (y, mo, da) = (part(0, 4, ""), part(4, 2, "01"), part(6, 2, "01"));
    if digits.len() <= 8 {
        return Some(format!("{y}-{mo}-{da}"));
    }
    let (h, mi, se) = (part(8, 2, "00"), part(10, 2, "00"), part(12, 2, "00"));
    let rest = &d[digits.len()..];
    let tz = match rest.chars().next() {
        Some('Z') => "Z".to_string(),
        Some(sign @ ('+' | '-')) => {
            let tz: String = rest[1..].chars().filter(char::is_ascii_digit).collect();
            format!(
                "{sign}{}:{}",
                tz.get(0..2).unwrap_or("00"),
                tz.get(2..4).unwrap_or("00")
            )
        }
        _ => String::new(),
    };
    Some(format!("{y}-{mo}-{da}T{h}:{mi}:{se}{tz}"))
}

/// Filled-in AcroForm fields, as `name: value` lines.
fn form_fields(doc: &Document) -> Option<String> {
    let acro = doc
        .catalog()
        .ok()?
        .get(b"AcroForm")
        .ok()
        .and_then(|o| doc.dereference(o).ok())
        .and_then(|(_, o)| o.as_dict().ok())?;
    let fields = acro
        .get(b"Fields")
        .ok()
        .and_then(|o| doc.dereference(o).ok())?
        .1
        .as_array()
        .ok()?;
    let mut lines = Vec::new();
    let mut stack: Vec<(String, &Object, usize)> =
        fields.iter().rev().map(|f| (String::new(), f, 0)).collect();
    let mut seen = HashSet::new();
    while let Some((prefix, field, depth)) = stack.pop() {
        if depth > 16 || lines.len() > 10_000 {
            break;
        }
        if let Ok(id) = field.as_reference()
            && !seen.insert(id)
        {
            continue;
        }
        let Some(dict) = doc
            .dereference(field)
            .ok()
            .and_then(|(_, o)| o.as_dict().ok())
        else {
            continue;
        };
        let name = match dict.get(b"T") {
            Ok(Object::String(b, _)) => decode_text_string(b),
            _ => String::new(),
        };
        let full = match (prefix.is_empty(), name.is_empty()) {
            (true, _) => name.clone(),
            (false, true) => prefix.clone(),
            (false, false) => format!("{prefix}.{name}"),
        };
        let value = match dict
            .get(b"V")
            .ok()
            .and_then(|o| doc.dereference(o).ok())
            .map(|(_, o)| o)
        {
            Some(Object::String(b, _)) => decode_text_string(b),
            Some(Object::Name(n)) if n != b"Off" => String::from_utf8_lossy(n).to_string(),
            _ => String::new(),
        };
        let value = crate::extract::squeeze_spaces(&value);
        if !value.is_empty() {
            let label = if full.is_empty() {
                "field".to_string()
            } else {
                full.clone()
            };
            lines.push(format!("{label}: {value}"));
        }
        if let Ok(kids) = dict.get(b"Kids").and_then(Object::as_array) {
            for kid in kids.iter().rev() {
                stack.push((full.clone(), kid, depth + 1));
            }
        }
    }
    (!lines.is_empty()).then(|| lines.join("\n"))
}

#[derive(Default)]
struct FontCache {
    by_id: HashMap<ObjectId, Rc<Font>>,
}

impl FontCache {
    fn get(&mut self, doc: &Document, obj: &Object, limit: usize) -> Option<Rc<Font>> {
        match obj {
            Object::Reference(id) => {
                if let Some(f) = self.by_id.get(id) {
                    return Some(f.clone());
                }
                let dict = doc.get_dictionary(*id).ok()?;
                let font = Rc::new(Font::load(doc, dict, limit));
                self.by_id.insert(*id, font.clone());
                Some(font)
            }
            Object::Dictionary(dict) => Some(Rc::new(Font::load(doc, dict, limit))),
            _ => None,
        }
    }
}

type Matrix = [f32; 6];
const IDENTITY: Matrix = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0];

fn mul(m: &Matrix, n: &Matrix) -> Matrix {
    [
        m[0] * n[0] + m[1] * n[2],
        m[0] * n[1] + m[1] * n[3],
        m[2] * n[0] + m[3] * n[2],
        m[2] * n[1] + m[3] * n[3],
        m[4] * n[0] + m[5] * n[2] + n[4],
        m[4] * n[1] + m[5] * n[3] + n[5],
    ]
}

#[derive(Clone)]
struct State {
    ctm: Matrix,
    font: Option<Rc<Font>>,
    size: f32,
    char_spacing: f32,
    word_spacing: f32,
    scale: f32,
    leading: f32,
    rise: f32,
}

impl Default for State {
    fn default() -> Self {
        State {
            ctm: IDENTITY,
            font: None,
            size: 0.0,
            char_spacing: 0.0,
            word_spacing: 0.0,
            scale: 1.0,
            leading: 0.0,
            rise: 0.0,
        }
    }
}

/// A glyph on the page, in device space, before orientation is normalised.
struct Placed {
    x: f32,
    y: f32,
    end_x: f32,
    end_y: f32,
    size: f32,
    text: String,
}

struct Interpreter<'a> {
    doc: &'a Document,
    limit: usize,
    fonts: &'a mut FontCache,
    ops: usize,
    glyphs: Vec<Placed>,
    forms: Vec<ObjectId>,
    decoded: Vec<font::Glyph>,
}

fn page_text(
    doc: &Document,
    page_id: ObjectId,
    limit: usize,
    fonts: &mut FontCache,
) -> Result<String, String> {
    let content = doc
        .get_page_content_with_limit(page_id, limit)
        .map_err(|e| format!("cannot read the page content: {e}"))?;
    let resources = page_resources(doc, page_id);
    let mut interp = Interpreter {
        doc,
        limit,
        fonts,
        ops: 0,
        glyphs: Vec::new(),
        forms: Vec::new(),
        decoded: Vec::new(),
    };
    interp.run(&content, &resources, State::default(), 0)?;
    Ok(layout::page_text(orient(interp.glyphs)))
}

/// The page's resources, inherited from the page tree where the page has none.
fn page_resources(doc: &Document, page_id: ObjectId) -> Dictionary {
    let mut id = Some(page_id);
    for _ in 0..32 {
        let Some(current) = id else { break };
        let Ok(dict) = doc.get_dictionary(current) else {
            break;
        };
        if let Ok(res) = dict.get(b"Resources")
            && let Ok((_, Object::Dictionary(d))) = doc.dereference(res)
        {
            return d.clone();
        }
        id = dict.get(b"Parent").and_then(Object::as_reference).ok();
    }
    Dictionary::new()
}

impl Interpreter<'_> {
    fn run(
        &mut self,
        content: &[u8],
        resources: &Dictionary,
        state: State,
        depth: usize,
    ) -> Result<(), String> {
        let ops = Content::decode(content)
            .map(|c| c.operations)
            .map_err(|e| format!("cannot parse the content stream: {e}"))?;
        let mut stack: Vec<State> = Vec::new();
        let mut gs = state;
        let mut tm = IDENTITY;
        let mut tlm = IDENTITY;
        let font_dict = resources
            .get(b"Font")
            .ok()
            .and_then(|o| self.doc.dereference(o).ok())
            .and_then(|(_, o)| o.as_dict().ok().cloned())
            .unwrap_or_default();
        for op in ops {
            self.ops += 1;
            if self.ops > MAX_OPS_PER_PAGE || self.glyphs.len() > MAX_GLYPHS_PER_PAGE {
                // Keep what was read: a page this heavy is truncated, not failed.
                return Ok(());
            }
            let nums: Vec<f32> = op
                .operands
                .iter()
                .filter_map(|o| match o {
                    Object::Integer(i) => Some(*i as f32),
                    Object::Real(r) => Some(*r),
                    _ => None,
                })
                .collect();
            let n = |i: usize| nums.get(i).copied().unwrap_or(0.0);
            match op.operator.as_str() {
                "q" if stack.len() < 256 => stack.push(gs.clone()),
                "Q" => {
                    if let Some(s) = stack.pop() {
                        gs = s;
                    }
                }
                "cm" if nums.len() == 6 => {
                    gs.ctm = mul(&[n(0), n(1), n(2), n(3), n(4), n(5)], &gs.ctm);
                }
                "BT" => {
                    tm = IDENTITY;
                    tlm = IDENTITY;
                }
                "Tf" => {
                    if let Some(Object::Name(name)) = op.operands.first()
                        && let Ok(obj) = font_dict.get(name)
                    {
                        gs.font = self.fonts.get(self.doc, obj, self.limit);
                    }
                    gs.size = n(0);
                }
                "Tc" => gs.char_spacing = n(0),
                "Tw" => gs.word_spacing = n(0),
                "Tz" => gs.scale = n(0) / 100.0,
                "TL" => gs.leading = n(0),
                "Ts" => gs.rise = n(0),
                "Td" => {
                    tlm = mul(&[1.0, 0.0, 0.0, 1.0, n(0), n(1)], &tlm);
                    tm = tlm;
                }
                "TD" => {
                    gs.leading = -n(1);
                    tlm = mul(&[1.0, 0.0, 0.0, 1.0, n(0), n(1)], &tlm);
                    tm = tlm;
                }
                "Tm" if nums.len() == 6 => {
                    tlm = [n(0), n(1), n(2), n(3), n(4), n(5)];
                    tm = tlm;
                }
                "T*" => {
                    tlm = mul(&[1.0, 0.0, 0.0, 1.0, 0.0, -gs.leading], &tlm);
                    tm = tlm;
                }
                "Tj" => {
                    if let Some(Object::String(bytes, _)) = op.operands.first() {
                        self.show(bytes, &gs, &mut tm);
                    }
                }
                "'" | "\"" => {
                    if op.operator == "\"" {
                        gs.word_spacing = n(0);
                        gs.char_spacing = n(1);
                    }
                    tlm = mul(&[1.0, 0.0, 0.0, 1.0, 0.0, -gs.leading], &tlm);
                    tm = tlm;
                    if let Some(Object::String(bytes, _)) = op.operands.last() {
                        self.show(bytes, &gs, &mut tm);
                    }
                }
                "TJ" => {
                    if let Some(Object::Array(items)) = op.operands.first() {
                        for item in items {
                            match item {
                                Object::String(bytes, _) => self.show(bytes, &gs, &mut tm),
                                Object::Integer(_) | Object::Real(_) => {
                                    let adjust = match item {
                                        Object::Integer(i) => *i as f32,
                                        Object::Real(r) => *r,
                                        _ => 0.0,
                                    };
                                    let tx = -adjust / 1000.0 * gs.size * gs.scale;
                                    let vertical = gs.font.as_ref().is_some_and(|f| f.vertical);
                                    let shift = if vertical {
                                        [1.0, 0.0, 0.0, 1.0, 0.0, -adjust / 1000.0 * gs.size]
                                    } else {
                                        [1.0, 0.0, 0.0, 1.0, tx, 0.0]
                                    };
                                    tm = mul(&shift, &tm);
                                }
                                _ => {}
                            }
                        }
                    }
                }
                "Do" => {
                    if depth < MAX_FORM_DEPTH
                        && let Some(Object::Name(name)) = op.operands.first()
                    {
                        self.form(name, resources, &gs, depth)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn form(
        &mut self,
        name: &[u8],
        resources: &Dictionary,
        gs: &State,
        depth: usize,
    ) -> Result<(), String> {
        let Some(xobjects) = resources
            .get(b"XObject")
            .ok()
            .and_then(|o| self.doc.dereference(o).ok())
            .and_then(|(_, o)| o.as_dict().ok())
        else {
            return Ok(());
        };
        let Ok(Object::Reference(id)) = xobjects.get(name) else {
            return Ok(());
        };
        if self.forms.contains(id) {
            return Ok(()); // a form drawing itself
        }
        let Ok(Object::Stream(stream)) = self.doc.get_object(*id) else {
            return Ok(());
        };
        if stream.dict.get(b"Subtype").and_then(Object::as_name).ok() != Some(b"Form") {
            return Ok(());
        }
        let Ok(content) = stream
            .decompressed_content_with_limit(self.limit)
            .or_else(|e| {
                if stream.dict.has(b"Filter") {
                    Err(e)
                } else {
                    Ok(stream.content.clone())
                }
            })
        else {
            return Ok(());
        };
        let inner_resources = stream
            .dict
            .get(b"Resources")
            .ok()
            .and_then(|o| self.doc.dereference(o).ok())
            .and_then(|(_, o)| o.as_dict().ok().cloned())
            .unwrap_or_else(|| resources.clone());
        let mut state = gs.clone();
        if let Ok(Object::Array(m)) = stream.dict.get(b"Matrix") {
            let v: Vec<f32> = m
                .iter()
                .filter_map(|o| match o {
                    Object::Integer(i) => Some(*i as f32),
                    Object::Real(r) => Some(*r),
                    _ => None,
                })
                .collect();
            if v.len() == 6 {
                state.ctm = mul(&[v[0], v[1], v[2], v[3], v[4], v[5]], &state.ctm);
            }
        }
        self.forms.push(*id);
        let result = self.run(&content, &inner_resources, state, depth + 1);
        self.forms.pop();
        result
    }

    fn show(&mut self, bytes: &[u8], gs: &State, tm: &mut Matrix) {
        let Some(font) = gs.font.clone() else { return };
        self.decoded.clear();
        font.decode(bytes, &mut self.decoded);
        for g in std::mem::take(&mut self.decoded) {
            let trm = mul(
                &mul(&[gs.size * gs.scale, 0.0, 0.0, gs.size, 0.0, gs.rise], tm),
                &gs.ctm,
            );
            let spacing = gs.char_spacing
                + if g.is_space_code {
                    gs.word_spacing
                } else {
                    0.0
                };
            let shift = if font.vertical {
                [1.0, 0.0, 0.0, 1.0, 0.0, -(g.width * gs.size) + spacing]
            } else {
                [
                    1.0,
                    0.0,
                    0.0,
                    1.0,
                    (g.width * gs.size + spacing) * gs.scale,
                    0.0,
                ]
            };
            let next = mul(&shift, tm);
            let end = mul(
                &mul(
                    &[gs.size * gs.scale, 0.0, 0.0, gs.size, 0.0, gs.rise],
                    &next,
                ),
                &gs.ctm,
            );
            let size = (trm[2] * trm[2] + trm[3] * trm[3]).sqrt();
            if !g.text.is_empty() {
                let mut text = String::with_capacity(g.text.len());
                font::normalize_glyph_text(&g.text, &mut text);
                self.glyphs.push(Placed {
                    x: trm[4],
                    y: trm[5],
                    end_x: end[4],
                    end_y: end[5],
                    size,
                    text,
                });
            }
            *tm = next;
        }
    }
}

/// Rotate glyphs into the frame of the page's main writing direction, so that
/// lines run along +x; glyphs written in other directions are kept in theirs.
fn orient(placed: Vec<Placed>) -> Vec<Glyph> {
    let direction = |p: &Placed| {
        let (dx, dy) = (p.end_x - p.x, p.end_y - p.y);
        if dx.abs() >= dy.abs() {
            if dx >= 0.0 { 0 } else { 2 }
        } else if dy > 0.0 {
            1
        } else {
            3
        }
    };
    let mut counts = [0usize; 4];
    for p in &placed {
        counts[direction(p)] += 1;
    }
    let main = (0..4).max_by_key(|&d| counts[d]).unwrap_or(0);
    placed
        .into_iter()
        .map(|p| {
            // Rotate so that `main` becomes +x; y stays "up" relative to the text.
            let rot = |x: f32, y: f32| match main {
                0 => (x, y),
                1 => (y, -x),
                2 => (-x, -y),
                _ => (-y, x),
            };
            let (x0, y) = rot(p.x, p.y);
            let (x1, _) = rot(p.end_x, p.end_y);
            Glyph {
                x0: x0.min(x1),
                x1: x0.max(x1),
                y,
                size: p.size,
                text: p.text,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdf_dates() {
        assert_eq!(
            pdf_date("D:20230621101500+02'00'").as_deref(),
            Some("2023-06-21T10:15:00+02:00")
        );
        assert_eq!(pdf_date("D:20230621").as_deref(), Some("2023-06-21"));
        assert_eq!(pdf_date("garbage"), None);
    }
}
