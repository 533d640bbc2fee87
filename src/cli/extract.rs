//! `moulin extract`: what extraction makes of one file or URL, without writing anything.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use moulin::config::{Problem, Problems};
use moulin::extract::ExtractOptions;
use moulin::pipeline::Isolation;
use moulin::pipeline::sources::{Input, check_path, check_url};

use super::{args, style};

#[derive(Args)]
pub struct ExtractArgs {
    /// A file or an http(s) URL.
    #[arg(value_name = "INPUT")]
    input: String,
    /// Password of an encrypted PDF or xlsx/xlsb workbook; never stored or logged.
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "MOULIN_PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
    /// Print the sections with their provenance and metadata as JSON.
    #[command(flatten)]
    json: args::Json,
}

pub async fn command(args: ExtractArgs) -> Result<u8> {
    let is_url = moulin::paths::has_scheme(&args.input);
    let checked = if is_url {
        check_url(&args.input)
    } else if std::path::Path::new(&args.input).is_dir() {
        Err(format!("{} is a folder: give one file", args.input))
    } else {
        check_path(&args.input)
    };
    if let Err(message) = checked {
        return Err(Problems {
            subject: "moulin extract".into(),
            list: vec![Problem::argument(message)],
        }
        .into());
    }
    let options = ExtractOptions {
        password: args.password,
        ..Default::default()
    };
    let input = if is_url {
        Input::Url(args.input)
    } else {
        Input::Path(PathBuf::from(args.input))
    };
    let client = moulin::extract::fetch::client(&options)?;
    let isolation = Isolation::Subprocess(std::env::current_exe()?);
    let doc = moulin::pipeline::extract_input(&isolation, &input, &client, &options).await?;
    for w in &doc.warnings {
        style::warning(w);
    }
    let mut out = std::io::stdout().lock();
    if args.json.json {
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", doc.text())?;
    }
    Ok(0)
}
