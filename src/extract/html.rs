//! Web pages: keep the main content, drop the page furniture, write Markdown-like text.
//!
//! The main content is `<main>` (or `role="main"`) when the page has one, a
//! single `<article>` otherwise, and else the block that a Readability-style
//! score prefers: paragraphs vote for their ancestors, weighted by length and
//! commas, discounted by link density and by class names that smell of
//! navigation. Navigation, headers, footers, menus, cookie banners, forms,
//! scripts, styles and hidden elements never reach the output.

use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use ego_tree::NodeId;
use regex::Regex;
use scraper::node::Node;
use scraper::{ElementRef, Html, Selector};

use crate::document::{Location, Section};
use crate::extract::{Extracted, text};

/// Elements whose whole subtree is furniture or not text.
const SKIP_TAGS: &[&str] = &[
    "script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form",
    "button", "select", "option", "textarea", "input", "iframe", "svg", "canvas", "object",
    "embed", "dialog", "menu", "head", "link", "meta", "audio", "video", "map",
];

static NEGATIVE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)(^|[-_ ])(cookie|consent|gdpr|rgpd|banner|breadcrumbs?|menu|nav|navbar|navigation|footer|header|masthead|sidebar|sidenav|skip|share|sharing|social|popup|modal|newsletter|subscribe|advert|ads?|promo|sponsor|related|comments?|pagination|toolbar|print|outbrain|taboola|disqus|widget|hidden)([-_ ]|$)",
    )
    .expect("valid regex")
});
static POSITIVE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)article|body|content|entry|hentry|main|page|post|text|blog|story|prose")
        .expect("valid regex")
});

thread_local! {
    /// Whether class and id names of furniture remove elements. Readability's
    /// heuristic: on when looking for the content, off again when that leaves
    /// too little, since a layout class such as "two-col-sidebar" can wrap it all.
    static STRICT: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

pub fn extract(bytes: &[u8], source: &str) -> Result<Extracted, String> {
    let raw = text::decode(bytes);
    let html = Html::parse_document(&raw);
    STRICT.set(true);
    let first = extract_parsed(&html, source);
    if first.sections[0].text.chars().count() >= 200 {
        return Ok(first);
    }
    STRICT.set(false);
    let second = extract_parsed(&html, source);
    STRICT.set(true);
    Ok(
        if second.sections[0].text.len() > first.sections[0].text.len() {
            second
        } else {
            first
        },
    )
}

fn extract_parsed(html: &Html, source: &str) -> Extracted {
    let metadata = read_metadata(html, source);
    let root = main_content(html);
    let mut writer = Markdown::default();
    match root {
        Some(roots) => {
            for el in roots {
                writer.block(el);
            }
        }
        None => {
            if let Some(body) = html.select(&sel("body")).next() {
                writer.block(body);
            }
        }
    }
    let body = writer.finish();
    let title = metadata.get("title").cloned();
    Extracted {
        title,
        metadata,
        pages: 1,
        sections: vec![Section::new(body, Location::default())],
    }
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).expect("valid selector")
}

fn read_metadata(html: &Html, source: &str) -> BTreeMap<String, String> {
    let mut meta = BTreeMap::new();
    let mut put = |key: &str, value: Option<String>| {
        if let Some(v) = value.map(|v| crate::extract::squeeze_spaces(&v))
            && !v.is_empty()
            && !meta.contains_key(key)
        {
            meta.insert(key.to_string(), v);
        }
    };
    let meta_content = |names: &[&str]| {
        names.iter().find_map(|name| {
            html.select(&sel(&format!(
                r#"meta[property="{name}"], meta[name="{name}"], meta[itemprop="{name}"]"#
            )))
            .find_map(|m| m.value().attr("content").map(str::to_string))
        })
    };
    put(
        "title",
        meta_content(&["og:title", "twitter:title", "dc.title", "DC.title"]),
    );
    put(
        "title",
        html.select(&sel("title"))
            .next()
            .map(|t| t.text().collect::<String>()),
    );
    put(
        "title",
        html.select(&sel("h1"))
            .next()
            .map(|t| t.text().collect::<String>()),
    );
    put(
        "language",
        html.select(&sel("html"))
            .next()
            .and_then(|h| h.value().attr("lang").or(h.value().attr("xml:lang")))
            .map(str::to_string),
    );
    put(
        "language",
        meta_content(&["og:locale", "language", "dc.language"]),
    );
    put(
        "canonical_url",
        html.select(&sel(r#"link[rel="canonical"]"#))
            .next()
            .and_then(|l| l.value().attr("href"))
            .map(|href| resolve(source, href)),
    );
    put("canonical_url", meta_content(&["og:url"]));
    put(
        "author",
        meta_content(&["author", "article:author", "dc.creator", "parsely-author"]),
    );
    put(
        "author",
        html.select(&sel(
            r#"[rel="author"], [itemprop="author"], .author, .byline"#,
        ))
        .next()
        .map(|a| a.text().collect::<String>()),
    );
    put(
        "description",
        meta_content(&["description", "og:description", "twitter:description"]),
    );
    put(
        "published",
        meta_content(&[
            "article:published_time",
            "date",
            "dc.date",
            "parsely-pub-date",
        ]),
    );
    put("site_name", meta_content(&["og:site_name"]));
    meta
}

fn resolve(base: &str, href: &str) -> String {
    url::Url::parse(base)
        .and_then(|b| b.join(href))
        .map(|u| u.to_string())
        .unwrap_or_else(|_| href.to_string())
}

fn is_skipped(el: &ElementRef) -> bool {
    let e = el.value();
    let name = e.name();
    if SKIP_TAGS.contains(&name) {
        return true;
    }
    if e.attr("hidden").is_some() || e.attr("aria-hidden") == Some("true") {
        return true;
    }
    if let Some(style) = e.attr("style") {
        let style = style.replace(' ', "").to_ascii_lowercase();
        if style.contains("display:none") || style.contains("visibility:hidden") {
            return true;
        }
    }
    if matches!(
        e.attr("role"),
        Some(
            "navigation"
                | "banner"
                | "contentinfo"
                | "complementary"
                | "dialog"
                | "alertdialog"
                | "menu"
                | "menubar"
                | "search"
        )
    ) {
        return true;
    }
    // Class and id names of furniture; never on the elements that hold the text.
    if STRICT.get()
        && !matches!(
            name,
            "body" | "main" | "article" | "p" | "h1" | "h2" | "h3" | "table" | "pre"
        )
    {
        let names = format!(
            "{} {}",
            e.attr("class").unwrap_or(""),
            e.attr("id").unwrap_or("")
        );
        if NEGATIVE.is_match(&names) && !POSITIVE.is_match(&names) {
            return true;
        }
    }
    false
}

/// The elements holding the main content, in document order.
fn main_content(html: &Html) -> Option<Vec<ElementRef<'_>>> {
    for s in ["main", r#"[role="main"]"#] {
        let found: Vec<_> = html.select(&sel(s)).collect();
        if found.len() == 1 && text_len(found[0]) > 200 {
            return Some(found);
        }
    }
    let articles: Vec<_> = html.select(&sel("article")).collect();
    if articles.len() == 1 && text_len(articles[0]) > 500 {
        return Some(articles);
    }
    readability(html)
}

fn text_len(el: ElementRef) -> usize {
    visible_text(el)
        .chars()
        .filter(|c| !c.is_whitespace())
        .count()
}

fn visible_text(el: ElementRef) -> String {
    let mut out = String::new();
    collect_text(el, &mut out);
    out
}

fn collect_text(el: ElementRef, out: &mut String) {
    for child in el.children() {
        match child.value() {
            Node::Text(t) => out.push_str(t),
            Node::Element(_) => {
                if let Some(c) = ElementRef::wrap(child)
                    && !is_skipped(&c)
                {
                    collect_text(c, out);
                }
            }
            _ => {}
        }
    }
}

fn link_density(el: ElementRef) -> f32 {
    let total = text_len(el).max(1) as f32;
    let links: usize = el.select(&sel("a")).map(text_len).sum();
    links as f32 / total
}

fn class_weight(el: &ElementRef) -> f32 {
    let e = el.value();
    let names = format!(
        "{} {}",
        e.attr("class").unwrap_or(""),
        e.attr("id").unwrap_or("")
    );
    let mut w = 0.0;
    if NEGATIVE.is_match(&names) {
        w -= 25.0;
    }
    if POSITIVE.is_match(&names) {
        w += 25.0;
    }
    w
}

fn tag_weight(name: &str) -> f32 {
    match name {
        "div" | "article" | "section" => 5.0,
        "pre" | "td" | "blockquote" => 3.0,
        "address" | "ol" | "ul" | "dl" | "dd" | "dt" | "li" | "form" => -3.0,
        "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "th" => -5.0,
        _ => 0.0,
    }
}

fn ancestors_skipped(el: ElementRef) -> bool {
    el.ancestors()
        .filter_map(ElementRef::wrap)
        .any(|a| is_skipped(&a))
}

fn readability(html: &Html) -> Option<Vec<ElementRef<'_>>> {
    let mut scores: HashMap<NodeId, f32> = HashMap::new();
    let selector = sel("p, pre, td, blockquote, div, section, li");
    for p in html.select(&selector) {
        let name = p.value().name();
        // A div or section votes only when it holds text directly, like a paragraph.
        if matches!(name, "div" | "section" | "li")
            && p.children().any(|c| {
                ElementRef::wrap(c).is_some_and(|e| {
                    matches!(
                        e.value().name(),
                        "p" | "div"
                            | "section"
                            | "article"
                            | "table"
                            | "ul"
                            | "ol"
                            | "pre"
                            | "blockquote"
                    )
                })
            })
        {
            continue;
        }
        if is_skipped(&p) || ancestors_skipped(p) {
            continue;
        }
        let text = visible_text(p);
        let len = text.trim().chars().count();
        if len < 25 {
            continue;
        }
        let score =
            1.0 + text.matches([',', '،', '，']).count() as f32 + (len as f32 / 100.0).min(3.0);
        let mut ancestors = p.ancestors().filter_map(ElementRef::wrap);
        // The parent gets the whole score, the grandparent half, the next a third.
        for divider in [1.0f32, 2.0, 3.0] {
            let Some(a) = ancestors.next() else { break };
            if matches!(a.value().name(), "html" | "body") {
                break;
            }
            let entry = scores
                .entry(a.id())
                .or_insert_with(|| tag_weight(a.value().name()) + class_weight(&a));
            *entry += score / divider;
        }
    }
    let mut best: Option<(NodeId, f32)> = None;
    for (&id, &score) in &scores {
        let node = html.tree.get(id)?;
        let el = ElementRef::wrap(node)?;
        let final_score = score * (1.0 - link_density(el));
        if best.is_none_or(|(_, s)| final_score > s) {
            best = Some((id, final_score));
        }
    }
    let (best_id, best_score) = best?;
    let top = ElementRef::wrap(html.tree.get(best_id)?)?;
    // Siblings that look like more of the same content join the top candidate.
    let threshold = (best_score * 0.2).max(10.0);
    let mut out = Vec::new();
    let Some(parent) = top.parent() else {
        return Some(vec![top]);
    };
    for sibling in parent.children().filter_map(ElementRef::wrap) {
        if sibling.id() == top.id() {
            out.push(sibling);
            continue;
        }
        if is_skipped(&sibling) {
            continue;
        }
        let score =
            scores.get(&sibling.id()).copied().unwrap_or(0.0) * (1.0 - link_density(sibling));
        let joins = score >= threshold
            || (sibling.value().name() == "p" && {
                let len = text_len(sibling);
                let density = link_density(sibling);
                (len > 80 && density < 0.25)
                    || (len > 0
                        && len <= 80
                        && density == 0.0
                        && visible_text(sibling).contains(". "))
            });
        if joins {
            out.push(sibling);
        }
    }
    Some(out)
}

/// Writes an element tree as Markdown-like text.
#[derive(Default)]
struct Markdown {
    out: String,
    /// Text of the current paragraph, whitespace not yet collapsed.
    line: String,
    list_depth: usize,
    quote: bool,
}

impl Markdown {
    fn finish(mut self) -> String {
        self.flush();
        let mut text = String::with_capacity(self.out.len());
        let mut blank = 0;
        for line in self.out.lines() {
            let line = line.trim_end();
            if line.trim().is_empty() {
                blank += 1;
                continue;
            }
            if !text.is_empty() {
                text.push_str(if blank > 0 { "\n\n" } else { "\n" });
            }
            blank = 0;
            text.push_str(line);
        }
        text
    }

    /// Ends the current paragraph.
    fn flush(&mut self) {
        let squeezed = crate::extract::squeeze_spaces(&self.line);
        self.line.clear();
        if squeezed.is_empty() {
            return;
        }
        if self.quote {
            self.out.push_str("> ");
        }
        self.out.push_str(&squeezed);
        self.out.push_str("\n\n");
    }

    fn block(&mut self, el: ElementRef) {
        if is_skipped(&el) {
            return;
        }
        let name = el.value().name();
        match name {
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                self.flush();
                let level = (name.as_bytes()[1] - b'0') as usize;
                let title = crate::extract::squeeze_spaces(&visible_text(el));
                if !title.is_empty() {
                    self.out.push_str(&"#".repeat(level));
                    self.out.push(' ');
                    self.out.push_str(&title);
                    self.out.push_str("\n\n");
                }
            }
            "p" | "div" | "section" | "article" | "main" | "body" | "figure" | "figcaption"
            | "address" | "details" | "summary" | "center" | "dl" | "dt" | "dd" | "fieldset" => {
                self.flush();
                self.children(el);
                self.flush();
            }
            "br" => {
                let current = std::mem::take(&mut self.line);
                let squeezed = crate::extract::squeeze_spaces(&current);
                if !squeezed.is_empty() {
                    self.out.push_str(&squeezed);
                    self.out.push('\n');
                }
            }
            "hr" => {
                self.flush();
            }
            "ul" | "ol" => {
                self.flush();
                self.list_depth += 1;
                let mut n = 0;
                for item in el.children().filter_map(ElementRef::wrap) {
                    if item.value().name() != "li" {
                        self.block(item);
                        continue;
                    }
                    n += 1;
                    let marker = if name == "ol" {
                        format!("{n}. ")
                    } else {
                        "- ".to_string()
                    };
                    let mut inner = Markdown {
                        list_depth: self.list_depth,
                        ..Default::default()
                    };
                    inner.children(item);
                    let body = inner.finish();
                    let indent = "  ".repeat(self.list_depth - 1);
                    for (i, line) in body.lines().filter(|l| !l.trim().is_empty()).enumerate() {
                        self.out.push_str(&indent);
                        if i == 0 {
                            self.out.push_str(&marker);
                        } else if !line.starts_with("  ") {
                            self.out.push_str("  ");
                        }
                        self.out.push_str(line);
                        self.out.push('\n');
                    }
                }
                self.list_depth -= 1;
                self.out.push('\n');
            }
            "pre" => {
                self.flush();
                let code: String = el.text().collect();
                self.out.push_str("```\n");
                self.out.push_str(code.trim_end());
                self.out.push_str("\n```\n\n");
            }
            "blockquote" => {
                self.flush();
                let before = self.quote;
                self.quote = true;
                self.children(el);
                self.flush();
                self.quote = before;
            }
            "table" => {
                self.flush();
                self.table(el);
            }
            "img" => {
                if let Some(alt) = el.value().attr("alt").filter(|a| !a.trim().is_empty()) {
                    self.line.push(' ');
                    self.line.push_str(alt.trim());
                    self.line.push(' ');
                }
            }
            _ => self.children(el),
        }
    }

    fn children(&mut self, el: ElementRef) {
        for child in el.children() {
            match child.value() {
                Node::Text(t) => self.line.push_str(t),
                Node::Element(_) => {
                    if let Some(c) = ElementRef::wrap(child) {
                        self.block(c);
                    }
                }
                _ => {}
            }
        }
    }

    fn table(&mut self, table: ElementRef) {
        let mut rows: Vec<Vec<String>> = Vec::new();
        let mut header_rows = 0;
        for tr in table.select(&sel("tr")) {
            // Rows of nested tables belong to those tables.
            if tr
                .ancestors()
                .filter_map(ElementRef::wrap)
                .find(|a| a.value().name() == "table")
                .is_some_and(|t| t.id() != table.id())
            {
                continue;
            }
            let cells: Vec<String> = tr
                .children()
                .filter_map(ElementRef::wrap)
                .filter(|c| matches!(c.value().name(), "td" | "th"))
                .map(|c| {
                    let mut inner = Markdown::default();
                    inner.children(c);
                    crate::extract::squeeze_spaces(&inner.finish()).replace('|', "\\|")
                })
                .collect();
            if cells.iter().all(|c| c.is_empty()) {
                continue;
            }
            if rows.is_empty()
                && tr
                    .children()
                    .filter_map(ElementRef::wrap)
                    .all(|c| c.value().name() == "th")
            {
                header_rows = 1;
            }
            rows.push(cells);
        }
        if rows.is_empty() {
            return;
        }
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        // A one-column "table" is layout, not data: write it as paragraphs.
        if width <= 1 {
            for row in rows {
                for cell in row {
                    self.out.push_str(&cell);
                    self.out.push_str("\n\n");
                }
            }
            return;
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for i in 0..width {
                s.push(' ');
                s.push_str(cells.get(i).map(String::as_str).unwrap_or(""));
                s.push_str(" |");
            }
            s.push('\n');
            s
        };
        let header = if header_rows == 1 {
            rows.remove(0)
        } else {
            vec![String::new(); width]
        };
        self.out.push_str(&line(&header));
        self.out.push('|');
        self.out.push_str(&"---|".repeat(width));
        self.out.push('\n');
        for row in &rows {
            self.out.push_str(&line(row));
        }
        self.out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_main_content_and_drops_furniture() {
        let page = r#"<!doctype html><html lang="fr"><head><title>Aides au logement</title>
            <link rel="canonical" href="https://example.gouv.fr/aides"></head>
            <body><header><nav><a href="/">Accueil</a><a href="/x">Menu</a></nav></header>
            <div id="cookie-banner">Nous utilisons des cookies.</div>
            <main><h1>Aides au logement</h1><p>Les aides au logement, versées par la CAF, réduisent le loyer.</p>
            <ul><li>APL</li><li>ALF</li></ul>
            <table><tr><th>Aide</th><th>Montant</th></tr><tr><td>APL</td><td>200 €</td></tr></table></main>
            <footer>Mentions légales</footer><script>var x = 1;</script></body></html>"#;
        let doc = extract(page.as_bytes(), "https://example.gouv.fr/aides?x").unwrap();
        let text = &doc.sections[0].text;
        assert!(text.starts_with("# Aides au logement"), "{text}");
        assert!(text.contains("- APL\n- ALF"), "{text}");
        assert!(
            text.contains("| Aide | Montant |\n|---|---|\n| APL | 200 € |"),
            "{text}"
        );
        for furniture in ["cookies", "Accueil", "Mentions", "var x"] {
            assert!(!text.contains(furniture), "{furniture} in {text}");
        }
        assert_eq!(doc.metadata["language"], "fr");
        assert_eq!(
            doc.metadata["canonical_url"],
            "https://example.gouv.fr/aides"
        );
        assert_eq!(doc.title.as_deref(), Some("Aides au logement"));
    }
}
