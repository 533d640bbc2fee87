//! An evaluation report as one self-contained HTML page: styles and charts
//! inline (SVG), no network, readable offline and attachable to a ticket.
//! Charts: metrics by k, the distribution of the items' main score, and (for
//! answers) the answer metrics; then every item, the worst first, with the
//! passages it retrieved in an expandable block.

use serde_json::Value;

/// HTML-escape a text.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const COLORS: [&str; 5] = ["#3465a4", "#f57900", "#73d216", "#75507b", "#c17d11"];

/// A grouped bar chart of values in 0..=1: one group per label, one bar per series.
fn bars(title: &str, groups: &[(String, Vec<f64>)], series: &[&str]) -> String {
    let (w, h, left, bottom, top) = (560.0, 240.0, 40.0, 30.0, 24.0);
    let plot_h = h - bottom - top;
    let group_w = (w - left - 10.0) / groups.len().max(1) as f64;
    let bar_w = (group_w * 0.8) / series.len().max(1) as f64;
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption><svg class=\"chart\" viewBox=\"0 0 {w} {h}\" \
         width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{}\">",
        esc(title),
        esc(title)
    );
    for i in 0..=4 {
        let v = i as f64 / 4.0;
        let y = top + plot_h * (1.0 - v);
        svg.push_str(&format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" class=\"grid\"/>\
             <text x=\"{}\" y=\"{:.1}\" class=\"axis\" text-anchor=\"end\">{v:.2}</text>",
            w - 10.0,
            left - 4.0,
            y + 4.0
        ));
    }
    for (g, (label, values)) in groups.iter().enumerate() {
        let x0 = left + g as f64 * group_w + group_w * 0.1;
        for (s, v) in values.iter().enumerate() {
            let v = v.clamp(0.0, 1.0);
            let bh = plot_h * v;
            let x = x0 + s as f64 * bar_w;
            svg.push_str(&format!(
                "<rect class=\"bar\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" \
                 fill=\"{}\"><title>{} {}: {v:.3}</title></rect>",
                top + plot_h - bh,
                (bar_w - 2.0).max(1.0),
                COLORS[s % COLORS.len()],
                esc(series.get(s).copied().unwrap_or("")),
                esc(label)
            ));
        }
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" class=\"axis\" text-anchor=\"middle\">{}</text>",
            x0 + group_w * 0.4,
            h - bottom + 16.0,
            esc(label)
        ));
    }
    svg.push_str("</svg><div class=\"legend\">");
    for (s, name) in series.iter().enumerate() {
        svg.push_str(&format!(
            "<span><i style=\"background:{}\"></i>{}</span>",
            COLORS[s % COLORS.len()],
            esc(name)
        ));
    }
    svg.push_str("</div></figure>");
    svg
}

/// A histogram of scores in 0..=1, in ten bins.
fn histogram(title: &str, values: &[f64]) -> String {
    let mut bins = [0usize; 10];
    for v in values {
        bins[((v.clamp(0.0, 1.0) * 10.0) as usize).min(9)] += 1;
    }
    let most = *bins.iter().max().unwrap_or(&1).max(&1) as f64;
    let groups: Vec<(String, Vec<f64>)> = bins
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("{:.1}", i as f64 / 10.0), vec![*n as f64 / most]))
        .collect();
    let caption = format!(
        "{title} ({} items; bar height relative to the largest bin, {})",
        values.len(),
        most as usize
    );
    bars(&caption, &groups, &["items"])
}

fn number(v: &Value) -> String {
    v.as_f64().map_or("–".to_string(), |x| format!("{x:.3}"))
}

/// The page for a report written by `moulin eval run` (its `scores` and `items`).
pub fn page(title: &str, report: &Value) -> String {
    let scores = &report["scores"];
    let answers = scores["f1"].is_number();
    let retrieval = if answers {
        &scores["retrieval"]
    } else {
        scores
    };
    let items: Vec<&Value> = report["items"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let main = |i: &Value| -> Option<f64> {
        if answers {
            i["scores"]["f1"].as_f64()
        } else {
            i["retrieval"]["mrr"].as_f64()
        }
    };
    let mut body = String::new();
    body.push_str(&format!("<h1>{}</h1>", esc(title)));
    let counts = if answers { scores } else { retrieval };
    body.push_str(&format!(
        "<p class=\"counts\">{} items: {} scored, {} unjudged, {} failed</p>",
        counts["items"], counts["scored"], counts["unjudged"], counts["failed"]
    ));
    if answers {
        let names = [
            ("exact_match", "exact match"),
            ("f1", "token F1"),
            ("rouge_l", "ROUGE-L"),
            ("reference_in_citations", "reference in cited"),
            ("reference_in_passages", "reference in given"),
        ];
        let groups: Vec<(String, Vec<f64>)> = names
            .iter()
            .map(|(k, label)| (label.to_string(), vec![scores[*k].as_f64().unwrap_or(0.0)]))
            .collect();
        body.push_str(&bars("Answer metrics", &groups, &["mean"]));
    }
    let at: Vec<(String, Vec<f64>)> = retrieval["at"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                format!("k = {}", a["k"]),
                ["hit", "recall", "precision", "ndcg"]
                    .iter()
                    .map(|m| a[*m].as_f64().unwrap_or(0.0))
                    .collect(),
            )
        })
        .collect();
    body.push_str(&bars(
        &format!("Retrieval by k (MRR {})", number(&retrieval["mrr"])),
        &at,
        &["hit", "recall", "precision", "nDCG"],
    ));
    let values: Vec<f64> = items.iter().filter_map(|i| main(i)).collect();
    body.push_str(&histogram(
        if answers {
            "Distribution of answer F1"
        } else {
            "Distribution of MRR"
        },
        &values,
    ));

    // Items, the worst first; failed ones before all.
    let mut sorted = items.clone();
    sorted.sort_by(|a, b| {
        main(a)
            .unwrap_or(-1.0)
            .total_cmp(&main(b).unwrap_or(-1.0))
            .then(a["id"].to_string().cmp(&b["id"].to_string()))
    });
    body.push_str(&format!(
        "<h2>Items, the worst first</h2><table id=\"items\"><thead><tr><th>id</th><th>question</th>\
         <th>{}</th><th>first relevant</th><th>status</th></tr></thead><tbody>",
        if answers { "F1" } else { "MRR" }
    ));
    for item in sorted {
        let passages = item["retrieved"]
            .as_array()
            .or_else(|| item["passages"].as_array())
            .cloned()
            .unwrap_or_default();
        let mut details = String::new();
        if answers {
            details.push_str(&format!(
                "<p><b>Answer:</b> {}</p><p><b>Reference:</b> {}</p>",
                esc(item["answer"].as_str().unwrap_or_default()),
                esc(&item["references"]
                    .as_array()
                    .map(|r| r
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" | "))
                    .unwrap_or_default())
            ));
        }
        if let Some(e) = item["error"].as_str() {
            details.push_str(&format!("<p class=\"error\">{}</p>", esc(e)));
        }
        details.push_str("<ol>");
        for p in &passages {
            let mark = if p["relevant"] == true {
                " class=\"relevant\""
            } else {
                ""
            };
            let text: String = p["text"]
                .as_str()
                .unwrap_or_default()
                .chars()
                .take(600)
                .collect();
            details.push_str(&format!(
                "<li{mark}><span class=\"source\">{}</span> <span class=\"score\">{}</span><pre>{}</pre></li>",
                esc(p["source"].as_str().unwrap_or_default()),
                number(&p["score"]),
                esc(&text)
            ));
        }
        details.push_str("</ol>");
        body.push_str(&format!(
            "<tr><td>{}</td><td><details><summary>{}</summary>{details}</details></td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(item["id"].as_str().unwrap_or_default()),
            esc(item["question"].as_str().unwrap_or_default()),
            main(item).map_or("–".to_string(), |v| format!("{v:.3}")),
            item["retrieval"]["first_relevant"]
                .as_u64()
                .map_or("–".to_string(), |r| r.to_string()),
            esc(item["status"].as_str().unwrap_or_default())
        ));
    }
    body.push_str("</tbody></table>");
    format!(
        "<!DOCTYPE html>\n<html lang=\"fr\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>{body}<script>{SCRIPT}</script></body></html>\n",
        esc(title)
    )
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem;color:#222}\
h1{font-size:1.4rem}figure{display:inline-block;margin:0 1rem 1rem 0;vertical-align:top}\
figcaption{font-weight:600;margin-bottom:.3rem}.grid{stroke:#ddd}.axis{font-size:11px;fill:#555}\
.legend span{margin-right:1rem;font-size:.85rem}.legend i{display:inline-block;width:.8rem;\
height:.8rem;margin-right:.3rem;vertical-align:middle}table{border-collapse:collapse;width:100%}\
th,td{border-bottom:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}\
th{cursor:pointer;background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}\
li.relevant{background:#eaf6e4}pre{white-space:pre-wrap;font-size:.8rem;margin:.2rem 0}\
.source{font-family:monospace}.score{color:#777}.error{color:#a40000}";

/// Click a column header to sort the table by it.
const SCRIPT: &str = "document.querySelectorAll('#items th').forEach(function(th,col){\
th.addEventListener('click',function(){var body=document.querySelector('#items tbody');\
var rows=Array.prototype.slice.call(body.rows);var up=th.dataset.up!=='1';th.dataset.up=up?'1':'0';\
rows.sort(function(a,b){var x=a.cells[col].textContent,y=b.cells[col].textContent;\
var nx=parseFloat(x),ny=parseFloat(y);var c=(isNaN(nx)||isNaN(ny))?x.localeCompare(y):nx-ny;\
return up?c:-c;});rows.forEach(function(r){body.appendChild(r);});});});";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_text_and_draws_its_charts() {
        let report = serde_json::json!({
            "scores": {"items": 2, "scored": 2, "unjudged": 0, "failed": 0, "mrr": 0.75,
                "at": [{"k": 1, "hit": 0.5, "recall": 0.5, "precision": 0.5, "ndcg": 0.5}]},
            "items": [
                {"id": "a", "question": "<script>alert(1)</script>", "status": "scored",
                 "retrieval": {"mrr": 1.0, "first_relevant": 1},
                 "retrieved": [{"rank": 1, "source": "s/a.txt", "score": 0.9, "relevant": true, "text": "x & y"}]},
                {"id": "b", "question": "q", "status": "scored", "retrieval": {"mrr": 0.5, "first_relevant": 2}, "retrieved": []}
            ]
        });
        let html = page("Retrieval", &report);
        assert!(!html.contains("<script>alert"));
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && html.contains("x &amp; y")
        );
        assert_eq!(html.matches("<svg").count(), 2);
        // The worst item first.
        assert!(html.find("<td>b</td>").unwrap() < html.find("<td>a</td>").unwrap());
        assert!(!html.contains("http"), "nothing fetched from the network");
    }
}
