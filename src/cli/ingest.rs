//! `moulin ingest` and `moulin run`: a pipeline from options or from files, every
//! setting checked before any work, then the run, its summary and its report.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use moulin::config::{Problem, Problems};
use moulin::pipeline::config::{self, Loaded, PipelineConfig};
use moulin::pipeline::report::{RunReport, Status};
use moulin::pipeline::sources::Listing;
use moulin::pipeline::{Isolation, Pipeline, RunOptions};
use moulin::progress::Reporter;
use moulin::shard::Shard;
use moulin::store::DEFAULT_DB;

use super::{args, paths, progress, style};

#[derive(Args)]
pub struct IngestArgs {
    /// Files, folders, globs or http(s) URLs to ingest.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<String>,
    #[command(flatten)]
    pipeline: args::Pipeline,
}

#[derive(Args)]
pub struct RunArgs {
    /// Pipeline files (TOML) to run, one after the other; options given here override theirs.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    pipeline: args::Pipeline,
    #[command(flatten)]
    sharding: args::Sharding,
}

/// One pipeline, checked and listed, ready to run.
struct Job {
    loaded: Loaded,
    listing: Listing,
    report: Option<PathBuf>,
}

/// How the jobs of one command run.
struct Mode {
    quiet: bool,
    dry_run: bool,
    options: RunOptions,
    /// One shard of a run over many workers: its shard and the run's id.
    shard: Option<(Shard, String)>,
}

impl Mode {
    fn new(args: &args::Pipeline, quiet: bool) -> Self {
        Mode {
            quiet,
            dry_run: args.dry_run,
            options: RunOptions {
                wait: args.wait.duration(),
            },
            shard: None,
        }
    }
}

pub async fn ingest(args: IngestArgs, quiet: bool) -> Result<u8> {
    let name = args.pipeline.collection.as_deref().unwrap_or_default();
    let loaded = PipelineConfig::quick(name, DEFAULT_DB, &args.inputs);
    ingest_loaded(loaded, &args.pipeline, quiet, "moulin ingest").await
}

/// Run a pipeline another command built (`ingest`, `eval import-squad`), with the
/// shared options over it: checked, then run (or planned, with `--dry-run`).
pub async fn ingest_loaded(
    mut loaded: Loaded,
    options: &args::Pipeline,
    quiet: bool,
    subject: &str,
) -> Result<u8> {
    options.overrides().apply(&mut loaded);
    let job = prepare(loaded, options.report.clone()).map_err(|list| Problems {
        subject: subject.into(),
        list,
    })?;
    Ok(execute(vec![job], &Mode::new(options, quiet)).await)
}

pub async fn run(args: RunArgs, quiet: bool) -> Result<u8> {
    // Every file is read and checked before the first one runs.
    let mut reports = paths::report_paths(args.pipeline.report.as_deref(), &args.files);
    let mut problems = Vec::new();
    if let (Some(dir), true) = (&args.pipeline.report, args.files.len() > 1) {
        if let Err(m) = paths::check_writable_folder(dir) {
            problems.push(Problem::flag("--report", m));
            reports = vec![None; args.files.len()];
        }
        let mut seen = HashSet::new();
        for (file, report) in args.files.iter().zip(&reports) {
            if let Some(report) = report
                && !seen.insert(report)
            {
                problems.push(Problem::flag(
                    "--report",
                    format!(
                        "{} would overwrite the report of another pipeline file with the same name",
                        file.display()
                    ),
                ));
            }
        }
    }
    let mut jobs = Vec::new();
    for (file, report) in args.files.iter().zip(reports) {
        let mut loaded = match config::load(file) {
            Ok(loaded) => loaded,
            Err(p) => {
                problems.extend(p.list);
                continue;
            }
        };
        args.pipeline.overrides().apply(&mut loaded);
        match prepare(loaded, report) {
            Ok(job) => jobs.push(job),
            Err(list) => problems.extend(list),
        }
    }
    if !problems.is_empty() {
        // An option at fault is said once, not once per file.
        let mut seen = HashSet::new();
        problems.retain(|p| seen.insert(p.to_string()));
        let subject = match args.files.as_slice() {
            [one] => one.display().to_string(),
            many => format!("{} pipeline files", many.len()),
        };
        return Err(Problems {
            subject,
            list: problems,
        }
        .into());
    }
    let mut mode = Mode::new(&args.pipeline, quiet);
    mode.shard = args.sharding.resolve(jobs.len())?;
    Ok(execute(jobs, &mode).await)
}

/// Check everything a pipeline needs before it runs, and list its inputs.
fn prepare(loaded: Loaded, report: Option<PathBuf>) -> Result<Job, Vec<Problem>> {
    let mut problems = loaded.config.check(&loaded.origins);
    if let Some(path) = &report
        && let Err(m) = paths::check_writable(path)
    {
        problems.push(Problem::flag("--report", m));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let listing = loaded.list()?;
    Ok(Job {
        loaded,
        listing,
        report,
    })
}

/// Run the jobs one after the other; the exit code is the worst of theirs.
async fn execute(jobs: Vec<Job>, mode: &Mode) -> u8 {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            style::error(&anyhow::anyhow!("cannot find the moulin executable: {e}"));
            return 2;
        }
    };
    let mut worst = 0;
    for job in jobs {
        let outcome = if mode.dry_run {
            dry_run(job).await
        } else {
            run_one(job, &exe, mode).await
        };
        let code = match outcome {
            Ok(code) => code,
            Err(err) => {
                // The next pipeline still runs; this one is reported and the exit code says so.
                style::error(&err);
                2
            }
        };
        worst = worst.max(code);
    }
    worst
}

async fn run_one(job: Job, exe: &std::path::Path, mode: &Mode) -> Result<u8> {
    let pipeline = Pipeline::new(job.loaded.config, Isolation::Subprocess(exe.to_path_buf()));
    let bars = progress::Bars::new(mode.quiet);
    let reporter: &dyn Reporter = match &bars {
        Some(b) => b,
        None => &progress::Plain,
    };
    if let Some((shard, run_id)) = &mode.shard {
        let report = pipeline
            .run_shard(job.listing, *shard, run_id, reporter)
            .await?;
        let code = finish(&report, job.report.as_deref())?;
        eprintln!(
            "shard {shard} of run {run_id} staged; once every shard has, make the run visible with: moulin commit {run_id} FILE"
        );
        return Ok(code);
    }
    let report = pipeline.run(job.listing, &mode.options, reporter).await?;
    finish(&report, job.report.as_deref())
}

/// After a run: its report written (when asked), its summary said; its exit code.
pub fn finish(report: &RunReport, path: Option<&std::path::Path>) -> Result<u8> {
    if let Some(path) = path {
        paths::write_json(path, report).with_context(|| {
            format!(
                "the run went through, but its report could not be written to {}",
                path.display()
            )
        })?;
    }
    let mut err = std::io::stderr().lock();
    let _ = summary(&mut err, report, path);
    Ok(report.exit_code() as u8)
}

/// What the run would do, on stdout; nothing is written.
async fn dry_run(job: Job) -> Result<u8> {
    let name = job.loaded.config.collection.name.clone();
    let pipeline = Pipeline::new(job.loaded.config, Isolation::InProcess);
    let plan = pipeline.dry_run(&job.listing).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{name} (dry run, nothing written): {} to add, {} to update, {} to re-chunk, {} unchanged, {} to delete, {} unreadable",
        plan.add.len(),
        plan.update.len(),
        plan.rechunk.len(),
        plan.unchanged.len(),
        plan.delete.len(),
        plan.unreadable.len()
    )?;
    for (what, list) in [
        ("add", &plan.add),
        ("update", &plan.update),
        ("re-chunk", &plan.rechunk),
        ("delete", &plan.delete),
    ] {
        for item in list {
            writeln!(out, "  {what:<9} {}", paths::short(item))?;
        }
    }
    for (item, reason) in &plan.unreadable {
        writeln!(
            out,
            "  {:<9} {}: {reason}",
            "unreadable",
            paths::short(item)
        )?;
    }
    Ok(if plan.unreadable.is_empty() { 0 } else { 1 })
}

/// Inputs named in the summary, at most; the report has them all.
const SUMMARY_LINES: usize = 20;

/// The summary on stderr: counts and times, then every input that was not
/// ingested with its reason (failed first), then warnings.
pub fn summary(
    out: &mut impl Write,
    report: &RunReport,
    report_path: Option<&std::path::Path>,
) -> std::io::Result<()> {
    let t = &report.totals;
    let s = &report.seconds;
    writeln!(
        out,
        "{}: {} ingested ({} added, {} updated, {} re-chunked), {} unchanged, {} unsupported, \
         {} failed, of {} inputs; {} pages, {} chunks in {:.1} s (extract {:.1} s, embed {:.1} s, \
         write {:.1} s)",
        report.collection,
        t.ingested,
        t.added,
        t.updated,
        t.rechunked,
        t.unchanged,
        t.unsupported,
        t.failed,
        t.inputs,
        t.pages,
        t.chunks,
        s.total,
        s.extract,
        s.embed,
        s.write
    )?;
    writeln!(
        out,
        "run {}: chunks version {} → {}, documents version {} → {}",
        report.run_id,
        report.versions_before.chunks,
        report.versions_after.chunks,
        report.versions_before.documents,
        report.versions_after.documents
    )?;
    if t.pruned > 0 {
        writeln!(out, "pruned {} documents whose source is gone", t.pruned)?;
    }
    let order = [Status::Failed, Status::Unsupported, Status::Unchanged];
    let mut listed: Vec<_> = report
        .inputs
        .iter()
        .filter(|i| i.status != Status::Ingested)
        .collect();
    listed.sort_by_key(|i| order.iter().position(|s| *s == i.status));
    for input in listed.iter().take(SUMMARY_LINES) {
        writeln!(
            out,
            "  {:<11}  {}: {}",
            input.status.as_str(),
            paths::short(&input.path),
            input.reason.as_deref().unwrap_or("")
        )?;
    }
    if listed.len() > SUMMARY_LINES {
        let more = listed.len() - SUMMARY_LINES;
        match report_path {
            Some(p) => writeln!(out, "  … and {more} more, see {}", p.display())?,
            None => writeln!(out, "  … and {more} more, see --report FILE")?,
        }
    }
    for input in &report.inputs {
        for w in &input.warnings {
            writeln!(out, "warning: {}: {w}", paths::short(&input.path))?;
        }
    }
    for w in &report.warnings {
        writeln!(out, "warning: {w}")?;
    }
    Ok(())
}
