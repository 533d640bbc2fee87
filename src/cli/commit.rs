//! `moulin commit`: make a run over many workers visible, once all its shards are staged.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use moulin::pipeline::config;
use moulin::pipeline::{Isolation, Pipeline, RunOptions};
use moulin::progress::Reporter;

use super::{args, ingest, progress};

#[derive(Args)]
pub struct CommitArgs {
    /// The run's id, as its shards were given it (--run-id).
    #[arg(value_name = "RUN_ID")]
    run_id: String,
    /// The pipeline file the shards ran (its collection, database and upkeep).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The collection, when the shards were given -c.
    #[arg(short, long, value_name = "NAME")]
    collection: Option<String>,
    /// LanceDB database, when the shards were given --db.
    #[arg(long, value_name = "URI", env = "MOULIN_DB", hide_env_values = true)]
    db: Option<String>,
    /// Write the run's report (JSON, merged from its shards') to this file.
    #[arg(long, value_name = "PATH")]
    report: Option<PathBuf>,
    #[command(flatten)]
    wait: args::Wait,
}

pub async fn command(args: CommitArgs, quiet: bool) -> Result<u8> {
    let mut loaded = config::load(&args.file)?;
    let overrides = moulin::pipeline::config::Overrides {
        collection: args.collection.clone(),
        db: args.db.clone(),
        ..Default::default()
    };
    // Only the collection matters here: the coordinator need not see the sources.
    overrides.apply(&mut loaded);
    let pipeline = Pipeline::new(loaded.config, Isolation::InProcess);
    let bars = progress::Bars::new(quiet);
    let reporter: &dyn Reporter = match &bars {
        Some(b) => b,
        None => &progress::Plain,
    };
    // A commit is short, and another commit of the same run may hold the lock:
    // wait for it (10 minutes unless --wait says otherwise).
    let options = RunOptions {
        wait: args
            .wait
            .duration()
            .or(Some(std::time::Duration::from_secs(600))),
    };
    let outcome = pipeline.commit(&args.run_id, &options, reporter).await?;
    match outcome.report {
        Some(report) => {
            if !outcome.committed {
                eprintln!(
                    "run {} was already visible (an earlier commit made it so); its record is complete now",
                    args.run_id
                );
            }
            ingest::finish(&report, args.report.as_deref())
        }
        None => {
            eprintln!("run {} is already committed: nothing to do", args.run_id);
            Ok(0)
        }
    }
}
