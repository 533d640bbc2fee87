//! An answering job, measured: 16 French questions on the demo collection,
//! answered by the default model (SmolLM2-135M on the CPU) with 3 passages each,
//! at batch size 1 and 8, side by side in one run: items/s, generated tokens/s,
//! prompt tokens, seconds per stage and the energy estimate, from the jobs'
//! own reports.
//!
//! Run: `source scripts/setup.sh && cargo bench --profile dev --bench jobs`

use std::path::Path;

mod common;
use common::moulin;

const QUESTIONS: &[&str] = &[
    "Quelle est la durée maximale de la période d'essai d'un cadre ?",
    "La période d'essai peut-elle être renouvelée ?",
    "Quel délai de prévenance l'employeur doit-il respecter pour rompre la période d'essai ?",
    "Quel jour férié est obligatoirement chômé ?",
    "Les jours fériés sont-ils payés ?",
    "Un CDD doit-il être écrit ?",
    "Combien de fois un CDD peut-il être renouvelé ?",
    "Quelle indemnité reçoit un salarié à la fin d'un CDD ?",
    "Comment démissionner d'un CDI ?",
    "Faut-il respecter un préavis en cas de démission ?",
    "Qu'est-ce qu'un emploi saisonnier ?",
    "Un travailleur saisonnier a-t-il droit à une prime de précarité ?",
    "Qui peut désigner un délégué syndical ?",
    "Quel est le rôle du délégué syndical ?",
    "Que décide le Journal officiel du 21 juin 2023 ?",
    "Comment saisir l'administration par voie électronique ?",
];

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo");
    moulin(
        dir,
        &[
            "ingest",
            demo.to_str().unwrap(),
            "-c",
            "demo",
            "--db",
            "db",
            "--chunk-size",
            "800",
            "--overlap",
            "80",
            "--quiet",
        ],
    );
    let questions: String = QUESTIONS
        .iter()
        .enumerate()
        .map(|(i, q)| serde_json::json!({"id": i + 1, "question": q}).to_string() + "\n")
        .collect();
    std::fs::write(dir.join("questions.jsonl"), questions).unwrap();
    println!(
        "# Answering job: {} questions, 3 passages each, at most 64 new tokens, default model, CPU",
        QUESTIONS.len()
    );
    println!(
        "| batch size | items/s | generated tokens/s | prompt tokens | generate s | total s | Wh |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut note = String::new();
    for batch in [1, 8] {
        let job = format!(
            "kind = \"answer\"\ncollection = \"demo\"\ndb = \"db\"\nquestions = \"questions.jsonl\"\n\
             output = \"answers-{batch}.jsonl\"\nreport = \"report-{batch}.json\"\n\n[model]\n\
             max_new_tokens = 64\nbatch_size = {batch}\n\n[retrieval]\ntop_k = 3\n"
        );
        std::fs::write(dir.join(format!("job-{batch}.toml")), job).unwrap();
        moulin(
            dir,
            &["job", "run", &format!("job-{batch}.toml"), "--quiet"],
        );
        let r: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("report-{batch}.json"))).unwrap(),
        )
        .unwrap();
        let u = &r["usage"];
        assert_eq!(u["done"], QUESTIONS.len());
        println!(
            "| {batch} | {:.3} | {:.1} | {} | {:.1} | {:.1} | {:.3} |",
            u["items_per_second"].as_f64().unwrap(),
            u["tokens_per_second"].as_f64().unwrap(),
            u["prompt_tokens"],
            u["seconds"]["generate"].as_f64().unwrap(),
            u["seconds"]["total"].as_f64().unwrap(),
            u["energy"]["wh"].as_f64().unwrap()
        );
        note = u["energy"]["note"].as_str().unwrap_or_default().to_string();
    }
    println!("\nenergy: {note}");
}
