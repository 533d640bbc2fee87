//! PDF fonts: from character codes to Unicode text and glyph widths.
//!
//! The Unicode of a code comes from the font's `ToUnicode` CMap when it has one,
//! else from its encoding (a base encoding plus `Differences` glyph names, read
//! through the Adobe Glyph List), else from predefined Unicode CMaps, else, for
//! CID fonts with Identity encodings, from the character collection they name
//! (Adobe-Japan1, GB1, CNS1, Korea1). Widths come
//! from `Widths`/`FirstChar` (simple fonts) or `W`/`DW` (CID fonts).

use std::collections::HashMap;

use lopdf::{Dictionary, Document, Object};

use super::cid::Collection;

/// What one character code shows.
pub struct Glyph {
    pub text: String,
    /// Advance in text-space units per unit of font size (already divided by 1000).
    pub width: f32,
    /// The code is the single byte 32, which word spacing (`Tw`) applies to.
    pub is_space_code: bool,
}

pub struct Font {
    /// Byte lengths a code may have, with their ranges, from the CMap's codespace.
    codespace: Codespace,
    to_unicode: HashMap<u32, String>,
    /// For simple fonts: the text of each byte.
    encoding: Option<Box<[Option<String>; 256]>>,
    /// For Type0 fonts with a predefined Unicode CMap (UCS-2 / UTF-16).
    utf16_codes: bool,
    /// For Type0 fonts with an Identity encoding (codes are CIDs): the
    /// character collection their CID font names, if moulin knows it.
    collection: Option<Collection>,
    widths: HashMap<u32, f32>,
    default_width: f32,
    /// Glyph-space to text-space scale (1/1000 except for Type3 fonts).
    scale: f32,
    pub vertical: bool,
}

fn name_of(obj: &Object) -> Option<&[u8]> {
    obj.as_name().ok()
}

fn resolve<'a>(doc: &'a Document, obj: &'a Object) -> &'a Object {
    doc.dereference(obj).map(|(_, o)| o).unwrap_or(obj)
}

fn number(obj: &Object) -> Option<f32> {
    match obj {
        Object::Integer(i) => Some(*i as f32),
        Object::Real(r) => Some(*r),
        _ => None,
    }
}

impl Font {
    pub fn load(doc: &Document, dict: &Dictionary, max_stream: usize) -> Font {
        let subtype = dict.get(b"Subtype").ok().and_then(name_of).unwrap_or(b"");
        let is_type0 = subtype == b"Type0";
        let mut font = Font {
            codespace: vec![(1, 0, 0xFF)],
            to_unicode: HashMap::new(),
            encoding: None,
            utf16_codes: false,
            collection: None,
            widths: HashMap::new(),
            default_width: 0.5,
            scale: 0.001,
            vertical: false,
        };
        if subtype == b"Type3"
            && let Ok(Object::Array(m)) = dict.get(b"FontMatrix").map(|o| resolve(doc, o))
            && let Some(a) = m.first().and_then(number)
        {
            font.scale = a.abs();
        }
        if is_type0 {
            font.load_type0(doc, dict);
        } else {
            font.load_simple(doc, dict);
        }
        if let Ok(obj) = dict.get(b"ToUnicode")
            && let Object::Stream(stream) = resolve(doc, obj)
            && let Ok(data) = stream
                .decompressed_content_with_limit(max_stream)
                .or_else(|_| Ok::<_, lopdf::Error>(stream.content.clone()))
        {
            let (map, codespace) = parse_cmap(&data);
            // A ToUnicode map's codespace is a better guide than a guess, for simple fonts too.
            if !codespace.is_empty() && is_type0 {
                font.codespace = codespace;
            }
            font.to_unicode = map;
        }
        font
    }

    fn load_simple(&mut self, doc: &Document, dict: &Dictionary) {
        let first = dict
            .get(b"FirstChar")
            .ok()
            .and_then(|o| number(resolve(doc, o)))
            .unwrap_or(0.0) as u32;
        if let Ok(Object::Array(ws)) = dict.get(b"Widths").map(|o| resolve(doc, o)) {
            for (i, w) in ws.iter().enumerate() {
                if let Some(w) = number(resolve(doc, w)) {
                    self.widths.insert(first + i as u32, w);
                }
            }
        }
        let descriptor = dict
            .get(b"FontDescriptor")
            .ok()
            .and_then(|o| resolve(doc, o).as_dict().ok());
        let base_font = dict
            .get(b"BaseFont")
            .ok()
            .and_then(name_of)
            .map(|n| String::from_utf8_lossy(n).to_string())
            .unwrap_or_default();
        self.default_width = descriptor
            .and_then(|d| d.get(b"MissingWidth").ok())
            .and_then(|o| number(resolve(doc, o)))
            .filter(|w| *w > 0.0)
            .map(|w| w * self.scale)
            .unwrap_or(if base_font.contains("Courier") {
                0.6
            } else {
                0.5
            });
        let symbolic = descriptor
            .and_then(|d| d.get(b"Flags").ok())
            .and_then(|o| resolve(doc, o).as_i64().ok())
            .is_some_and(|f| f & 4 != 0);
        let subtype = dict.get(b"Subtype").ok().and_then(name_of).unwrap_or(b"");
        // The built-in encoding of a font program is not read: Standard for Type1,
        // WinAnsi-like for TrueType is what readers assume when nothing is said.
        let default_base: &[u8] = if base_font.contains("Symbol") {
            b"Symbol"
        } else if base_font.contains("ZapfDingbats") || base_font.contains("Dingbats") {
            b"ZapfDingbats"
        } else if subtype == b"TrueType" || symbolic {
            b"WinAnsiEncoding"
        } else {
            b"StandardEncoding"
        };
        let mut table = base_encoding(default_base);
        match dict.get(b"Encoding").map(|o| resolve(doc, o)) {
            Ok(Object::Name(name)) => table = base_encoding(name),
            Ok(Object::Dictionary(enc)) => {
                if let Ok(name) = enc.get(b"BaseEncoding").and_then(Object::as_name) {
                    table = base_encoding(name);
                }
                if let Ok(Object::Array(diffs)) = enc.get(b"Differences").map(|o| resolve(doc, o)) {
                    let mut code = 0usize;
                    for item in diffs {
                        match resolve(doc, item) {
                            Object::Integer(i) => code = (*i).clamp(0, 255) as usize,
                            Object::Name(glyph) => {
                                if code < 256 {
                                    table[code] = glyph_to_text(glyph);
                                }
                                code += 1;
                            }
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
        self.encoding = Some(table);
    }

    fn load_type0(&mut self, doc: &Document, dict: &Dictionary) {
        self.codespace = vec![(2, 0, 0xFFFF)];
        self.default_width = 1.0;
        let mut identity = false;
        match dict.get(b"Encoding").map(|o| resolve(doc, o)) {
            Ok(Object::Name(name)) => {
                identity = matches!(name.as_slice(), b"Identity-H" | b"Identity-V");
                let name = String::from_utf8_lossy(name);
                self.vertical = name.ends_with("-V");
                if name.starts_with("Uni") && (name.contains("UCS2") || name.contains("UTF16")) {
                    self.utf16_codes = true;
                }
            }
            Ok(Object::Stream(stream)) => {
                if let Ok(data) = stream.decompressed_content_with_limit(1 << 20) {
                    let (_, codespace) = parse_cmap(&data);
                    if !codespace.is_empty() {
                        self.codespace = codespace;
                    }
                }
                if let Ok(w) = stream.dict.get(b"WMode").and_then(Object::as_i64) {
                    self.vertical = w == 1;
                }
            }
            _ => {}
        }
        let descendant = dict
            .get(b"DescendantFonts")
            .ok()
            .map(|o| resolve(doc, o))
            .and_then(|o| o.as_array().ok())
            .and_then(|a| a.first())
            .and_then(|o| resolve(doc, o).as_dict().ok());
        let Some(cid_font) = descendant else { return };
        if identity
            && let Ok(Object::Dictionary(info)) =
                cid_font.get(b"CIDSystemInfo").map(|o| resolve(doc, o))
        {
            let field = |key: &[u8]| match info.get(key).map(|o| resolve(doc, o)) {
                Ok(Object::String(s, _)) => s.clone(),
                _ => Vec::new(),
            };
            self.collection = Collection::named(&field(b"Registry"), &field(b"Ordering"));
        }
        if let Some(dw) = cid_font
            .get(b"DW")
            .ok()
            .and_then(|o| number(resolve(doc, o)))
        {
            self.default_width = dw / 1000.0;
        }
        if let Ok(Object::Array(w)) = cid_font.get(b"W").map(|o| resolve(doc, o)) {
            let items: Vec<&Object> = w.iter().map(|o| resolve(doc, o)).collect();
            let mut i = 0;
            while i < items.len() {
                let Some(start) = number(items[i]) else { break };
                match items.get(i + 1) {
                    Some(Object::Array(list)) => {
                        for (k, w) in list.iter().enumerate() {
                            if let Some(w) = number(resolve(doc, w)) {
                                self.widths.insert(start as u32 + k as u32, w);
                            }
                        }
                        i += 2;
                    }
                    Some(end) => {
                        let (Some(end), Some(w)) =
                            (number(end), items.get(i + 2).and_then(|o| number(o)))
                        else {
                            break;
                        };
                        // Bounded: a hostile range must not allocate millions of entries.
                        let end = end.min(start + 65_535.0);
                        for cid in start as u32..=end as u32 {
                            self.widths.insert(cid, w);
                        }
                        i += 3;
                    }
                    None => break,
                }
            }
        }
    }

    /// Split a string operand into codes and decode each one.
    pub fn decode(&self, bytes: &[u8], out: &mut Vec<Glyph>) {
        let mut i = 0;
        while i < bytes.len() {
            let (code, len) = self.next_code(&bytes[i..]);
            i += len;
            let text = self.text_of(code, len);
            let width = self
                .widths
                .get(&code)
                .map(|w| w * self.scale)
                .unwrap_or(self.default_width);
            out.push(Glyph {
                text,
                width,
                is_space_code: len == 1 && code == 32,
            });
        }
    }

    fn next_code(&self, bytes: &[u8]) -> (u32, usize) {
        let mut code = 0u32;
        for len in 1..=4.min(bytes.len()) {
            code = (code << 8) | bytes[len - 1] as u32;
            if self
                .codespace
                .iter()
                .any(|&(l, lo, hi)| l == len && code >= lo && code <= hi)
            {
                return (code, len);
            }
        }
        // Not in any codespace range: take the shortest declared length.
        let len = self
            .codespace
            .iter()
            .map(|c| c.0)
            .min()
            .unwrap_or(1)
            .min(bytes.len())
            .max(1);
        let code = bytes[..len].iter().fold(0u32, |c, &b| (c << 8) | b as u32);
        (code, len)
    }

    fn text_of(&self, code: u32, len: usize) -> String {
        if let Some(t) = self.to_unicode.get(&code) {
            return t.clone();
        }
        if let Some(table) = &self.encoding
            && len == 1
        {
            if let Some(t) = &table[code as usize] {
                return t.clone();
            }
            return String::new();
        }
        if self.utf16_codes {
            return char::from_u32(code).map(String::from).unwrap_or_default();
        }
        if let Some(collection) = self.collection {
            return collection.char(code).map(String::from).unwrap_or_default();
        }
        String::new()
    }
}

/// Ligatures are split and presentation forms flattened, so that words match queries.
pub fn normalize_glyph_text(text: &str, out: &mut String) {
    use unicode_normalization::UnicodeNormalization;
    for c in text.chars() {
        match c {
            // Arabic presentation forms (contextual shapes, lam-alef and
            // other ligatures): the letters a query is typed with.
            '\u{FB50}'..='\u{FDFF}' | '\u{FE70}'..='\u{FEFC}' => {
                out.extend(std::iter::once(c).nfkc())
            }
            '\u{FB00}' => out.push_str("ff"),
            '\u{FB01}' => out.push_str("fi"),
            '\u{FB02}' => out.push_str("fl"),
            '\u{FB03}' => out.push_str("ffi"),
            '\u{FB04}' => out.push_str("ffl"),
            '\u{FB05}' | '\u{FB06}' => out.push_str("st"),
            '\u{00A0}' | '\u{2002}'..='\u{200A}' | '\u{202F}' | '\u{3000}' => out.push(' '),
            '\u{00AD}' => {}
            '\u{0}'..='\u{8}' | '\u{B}'..='\u{1F}' | '\u{FFFD}' | '\u{FEFF}' => {}
            c => out.push(c),
        }
    }
}

fn base_encoding(name: &[u8]) -> Box<[Option<String>; 256]> {
    let map = match name {
        b"WinAnsiEncoding" => Some(&pdf_encoding::WINANSI),
        b"MacRomanEncoding" => Some(&pdf_encoding::MACROMAN),
        b"MacExpertEncoding" => Some(&pdf_encoding::MACEXPERT),
        b"StandardEncoding" => Some(&pdf_encoding::STANDARD),
        b"Symbol" => Some(&pdf_encoding::SYMBOL),
        b"ZapfDingbats" => Some(&pdf_encoding::ZDINGBAT),
        _ => None,
    };
    let mut table: Box<[Option<String>; 256]> = Box::new(std::array::from_fn(|_| None));
    for (code, slot) in table.iter_mut().enumerate() {
        *slot = match map {
            Some(m) => m.get(code as u8).map(String::from),
            None => (code >= 32).then(|| char::from(code as u8).to_string()),
        };
    }
    // WinAnsi shows the space glyph for 32 and the bullet for unused codes; keep spaces plain.
    table[32] = Some(" ".into());
    table
}

/// The text of a glyph name: Adobe Glyph List names, `uniXXXX`, `uXXXX[XX]`,
/// and compound names (`f_f_i`, `e.sc`).
pub fn glyph_to_text(name: &[u8]) -> Option<String> {
    let name = std::str::from_utf8(name).ok()?;
    let base = name.split('.').next().unwrap_or(name);
    if base.is_empty() {
        return None;
    }
    if base.contains('_') {
        let parts: Option<String> = base
            .split('_')
            .map(|p| glyph_to_text(p.as_bytes()))
            .collect();
        return parts;
    }
    if let Some(s) = pdf_encoding::glyphname_to_unicode(base) {
        return Some(s.to_string());
    }
    if let Some(hex) = base.strip_prefix("uni")
        && hex.len() >= 4
        && hex.len() % 4 == 0
    {
        let units: Option<Vec<u16>> = (0..hex.len())
            .step_by(4)
            .map(|i| u16::from_str_radix(&hex[i..i + 4], 16).ok())
            .collect();
        return units.map(|u| String::from_utf16_lossy(&u));
    }
    if let Some(hex) = base.strip_prefix('u')
        && (4..=6).contains(&hex.len())
    {
        return u32::from_str_radix(hex, 16)
            .ok()
            .and_then(char::from_u32)
            .map(String::from);
    }
    // TeX's Type3 fonts name glyphs after their code ("a224" is code 224): read the
    // code in the Latin-1-like WinAnsi table, as other readers do.
    if let Some(digits) = base.strip_prefix('a')
        && (2..=3).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && let Ok(code) = digits.parse::<u16>()
        && (32..256).contains(&code)
    {
        return pdf_encoding::WINANSI.get(code as u8).map(String::from);
    }
    // Names like "g3" or "cid45" carry no text.
    None
}

/// Byte lengths of codes with their ranges: `(length, low, high)`.
type Codespace = Vec<(usize, u32, u32)>;

/// Parse a CMap: its `bfchar`/`bfrange` mappings to Unicode and its codespace ranges.
pub fn parse_cmap(data: &[u8]) -> (HashMap<u32, String>, Codespace) {
    let mut map = HashMap::new();
    let mut codespace = Vec::new();
    let tokens = cmap_tokens(data);
    let mut i = 0;
    let hex = |t: &CmapToken| match t {
        CmapToken::Hex(b) => Some(b.clone()),
        _ => None,
    };
    let code_of = |b: &[u8]| b.iter().take(4).fold(0u32, |c, &x| (c << 8) | x as u32);
    while i < tokens.len() {
        match &tokens[i] {
            CmapToken::Word(w) if w == "begincodespacerange" => {
                i += 1;
                while i + 1 < tokens.len() && !matches!(&tokens[i], CmapToken::Word(_)) {
                    if let (Some(lo), Some(hi)) = (hex(&tokens[i]), hex(&tokens[i + 1])) {
                        codespace.push((lo.len().clamp(1, 4), code_of(&lo), code_of(&hi)));
                    }
                    i += 2;
                }
            }
            CmapToken::Word(w) if w == "beginbfchar" => {
                i += 1;
                while i + 1 < tokens.len() && !matches!(&tokens[i], CmapToken::Word(_)) {
                    if let (Some(src), Some(dst)) = (hex(&tokens[i]), hex(&tokens[i + 1])) {
                        map.insert(code_of(&src), utf16be(&dst));
                    }
                    i += 2;
                }
            }
            CmapToken::Word(w) if w == "beginbfrange" => {
                i += 1;
                while i + 2 < tokens.len() && !matches!(&tokens[i], CmapToken::Word(_)) {
                    let (Some(lo), Some(hi)) = (hex(&tokens[i]), hex(&tokens[i + 1])) else {
                        i += 1;
                        continue;
                    };
                    let (lo, hi) = (code_of(&lo), code_of(&hi));
                    // Bounded: a hostile range must not allocate without end.
                    let hi = hi.min(lo.saturating_add(65_535));
                    match &tokens[i + 2] {
                        CmapToken::Hex(dst) => {
                            let units: Vec<u16> = dst
                                .chunks(2)
                                .map(|c| ((c[0] as u16) << 8) | *c.get(1).unwrap_or(&0) as u16)
                                .collect();
                            for (k, code) in (lo..=hi).enumerate() {
                                let mut u = units.clone();
                                if let Some(last) = u.last_mut() {
                                    *last = last.wrapping_add(k as u16);
                                }
                                map.insert(code, String::from_utf16_lossy(&u));
                            }
                        }
                        CmapToken::Array(items) => {
                            for (code, dst) in (lo..=hi).zip(items) {
                                map.insert(code, utf16be(dst));
                            }
                        }
                        _ => {}
                    }
                    i += 3;
                }
            }
            _ => i += 1,
        }
    }
    (map, codespace)
}

fn utf16be(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks(2)
        .map(|c| ((c[0] as u16) << 8) | *c.get(1).unwrap_or(&0) as u16)
        .collect();
    String::from_utf16_lossy(&units)
}

#[derive(Debug)]
enum CmapToken {
    Hex(Vec<u8>),
    Array(Vec<Vec<u8>>),
    Word(String),
    Other,
}

fn cmap_tokens(data: &[u8]) -> Vec<CmapToken> {
    let mut out = Vec::new();
    let mut i = 0;
    let read_hex = |i: &mut usize| {
        let mut digits = Vec::new();
        *i += 1;
        while *i < data.len() && data[*i] != b'>' {
            if data[*i].is_ascii_hexdigit() {
                digits.push(data[*i]);
            }
            *i += 1;
        }
        *i += 1;
        if digits.len() % 2 == 1 {
            digits.push(b'0');
        }
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap_or("0"), 16).unwrap_or(0))
            .collect::<Vec<u8>>()
    };
    while i < data.len() {
        let c = data[i];
        match c {
            b'%' => {
                while i < data.len() && data[i] != b'\n' && data[i] != b'\r' {
                    i += 1;
                }
            }
            b'<' if data.get(i + 1) == Some(&b'<') => {
                i += 2;
                out.push(CmapToken::Other);
            }
            b'<' => out.push(CmapToken::Hex(read_hex(&mut i))),
            b'[' => {
                i += 1;
                let mut items = Vec::new();
                while i < data.len() && data[i] != b']' {
                    if data[i] == b'<' {
                        items.push(read_hex(&mut i));
                    } else {
                        i += 1;
                    }
                }
                i += 1;
                out.push(CmapToken::Array(items));
            }
            b'(' => {
                // A literal string in a CMap is rare; skip it balanced.
                let mut depth = 0;
                while i < data.len() {
                    match data[i] {
                        b'\\' => i += 1,
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                out.push(CmapToken::Other);
            }
            c if c.is_ascii_alphabetic() => {
                let start = i;
                while i < data.len() && (data[i].is_ascii_alphanumeric() || data[i] == b'_') {
                    i += 1;
                }
                out.push(CmapToken::Word(
                    String::from_utf8_lossy(&data[start..i]).to_string(),
                ));
            }
            c if c.is_ascii_digit() => {
                while i < data.len() && data[i].is_ascii_digit() {
                    i += 1;
                }
                out.push(CmapToken::Other);
            }
            _ => i += 1,
        }
    }
    // Counts before begin* keywords are "Other" tokens; drop them so pairs line up.
    out.retain(|t| !matches!(t, CmapToken::Other));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmap_ranges_and_chars() {
        let cmap = b"1 begincodespacerange <0000> <FFFF> endcodespacerange
            2 beginbfchar <0003> <0020> <0011> <00E9> endbfchar
            1 beginbfrange <0024> <0026> <0041> endbfrange
            1 beginbfrange <0030> <0031> [<0066006C> <FB01>] endbfrange";
        let (map, codespace) = parse_cmap(cmap);
        assert_eq!(codespace, vec![(2, 0, 0xFFFF)]);
        assert_eq!(map[&0x11], "é");
        assert_eq!(map[&0x25], "B");
        assert_eq!(map[&0x30], "fl");
        let mut s = String::new();
        normalize_glyph_text(&map[&0x31], &mut s);
        assert_eq!(s, "fi");
    }

    #[test]
    fn glyph_names() {
        assert_eq!(glyph_to_text(b"eacute").as_deref(), Some("é"));
        assert_eq!(glyph_to_text(b"uni00E0").as_deref(), Some("à"));
        assert_eq!(glyph_to_text(b"f_i").as_deref(), Some("fi"));
        assert_eq!(glyph_to_text(b"a224").as_deref(), Some("à"));
        assert_eq!(glyph_to_text(b"g123"), None);
    }
}
