#!/usr/bin/env python3
"""Build fixtures/demo/ from ../shared/corpus: a few French labour-law fiches as web pages,
a Journal officiel decision (PDF) and a public-service question workbook (xlsx).

The fiches come from the labour ministry's "fiches pratiques" (travail-emploi.gouv.fr, as
published in the npm package @socialgouv/fiches-travail-data, Apache-2.0). Run from the
repository root; the output is committed, so that the demo needs nothing outside the repo.
"""
import ast, html, json, shutil, sys
from pathlib import Path

CORPUS = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/corpus")
OUT = Path("fixtures/demo")
TITLES = ["La période d'essai", "Le contrat à durée déterminée (CDD)", "La démission",
          "Les jours fériés et les ponts", "Les délégués syndicaux", "Le travail saisonnier"]
SLUGS = ["periode-essai", "cdd", "demission", "jours-feries", "delegues-syndicaux", "travail-saisonnier"]

fiches = {f["title"]: f for f in json.loads((CORPUS / "fr_admin_corpus/fiches-travail-data/fiches-travail.json").read_text())}
OUT.mkdir(parents=True, exist_ok=True)
for title, slug in zip(TITLES, SLUGS):
    f = fiches[title]
    sections = f["sections"]
    if isinstance(sections, str):
        sections = ast.literal_eval(sections)
    body = [f"<h1>{html.escape(f['title'])}</h1>", f["intro"]]
    for s in sections:
        if s.get("title"):
            body.append(f"<h2>{html.escape(s['title'])}</h2>")
        body.append(s.get("html", ""))
    page = f"""<!DOCTYPE html>
<html lang="fr"><head><meta charset="utf-8"><title>{html.escape(f['title'])} | Ministère du Travail</title>
<link rel="canonical" href="{f['url']}"><meta name="description" content="{html.escape(f['description'])}"></head>
<body><header><nav><a href="/">Accueil</a> <a href="/droit-du-travail">Droit du travail</a></nav></header>
<div class="cookie-banner">Ce site utilise des cookies. <button>Accepter</button></div>
<main>{''.join(body)}</main>
<footer><p>Publié le {f['date']}. travail-emploi.gouv.fr</p></footer></body></html>
"""
    (OUT / f"fiche-{slug}.html").write_text(page)
shutil.copy(CORPUS / "pdf/french/albert-api_jorf_2023-06-21_decision.pdf", OUT / "jorf-2023-06-21-decision.pdf")
shutil.copy(CORPUS / "spreadsheets/french/piaf-ml_CRPA-Chatbot-v0.xlsx", OUT / "crpa-questions.xlsx")
print(f"wrote {len(list(OUT.iterdir()))} files to {OUT}")
