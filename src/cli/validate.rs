//! `moulin validate`: every problem of pipeline and job files, with file, line and key.
//! A file that says what `kind` of job it is, and has no sources, is a job file.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use moulin::pipeline::config;

use super::args;

#[derive(Args)]
pub struct ValidateArgs {
    /// Pipeline or job files (TOML) to check.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Print the problems as a JSON array of {file, line, column, key, message}.
    #[command(flatten)]
    json: args::Json,
}

/// Exit code 0 when every file is valid, 1 when one has problems.
pub fn command(args: ValidateArgs) -> Result<u8> {
    let mut all = Vec::new();
    let mut out = std::io::stdout().lock();
    for file in &args.files {
        let is_job =
            std::fs::read_to_string(file).is_ok_and(|text| moulin::jobs::config::is_job(&text));
        let loaded = if is_job {
            moulin::jobs::config::load(file).map(|_| ())
        } else {
            config::load(file).map(|_| ())
        };
        match loaded {
            Ok(_) if !args.json.json => writeln!(out, "{}: ok", file.display())?,
            Ok(_) => {}
            Err(problems) => {
                if !args.json.json {
                    for p in &problems.list {
                        writeln!(out, "{p}")?;
                    }
                    let n = problems.list.len();
                    writeln!(
                        out,
                        "{}: {n} problem{}",
                        file.display(),
                        if n == 1 { "" } else { "s" }
                    )?;
                }
                all.extend(problems.list);
            }
        }
    }
    if args.json.json {
        serde_json::to_writer_pretty(&mut out, &all)?;
        writeln!(out)?;
    }
    Ok(if all.is_empty() { 0 } else { 1 })
}
