//! Documents generated from the command's own definition: shell completions, man
//! pages, and the JSON Schemas of pipeline and job files.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use clap_complete::Shell;

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Write one page per command (moulin.1, moulin-ingest.1, …) into this folder instead.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> Result<u8> {
    let mut cmd = super::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "moulin", &mut std::io::stdout());
    Ok(0)
}

pub fn man(args: ManArgs) -> Result<u8> {
    let cmd = super::Cli::command();
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
            eprintln!("wrote the man pages into {}", dir.display());
        }
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
    }
    Ok(0)
}

#[derive(Args)]
pub struct SchemaArgs {
    /// Which files: pipelines or jobs.
    #[arg(value_enum, default_value_t = SchemaOf::Pipeline)]
    of: SchemaOf,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SchemaOf {
    Pipeline,
    Job,
}

pub fn schema(args: SchemaArgs) -> Result<u8> {
    let mut out = std::io::stdout().lock();
    let schema = match args.of {
        SchemaOf::Pipeline => moulin::pipeline::config::json_schema(),
        SchemaOf::Job => moulin::jobs::config::json_schema(),
    };
    serde_json::to_writer_pretty(&mut out, &schema)?;
    writeln!(out)?;
    Ok(0)
}
