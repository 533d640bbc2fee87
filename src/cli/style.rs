//! How the command speaks on stderr: `error:`, `Caused by:`, `warning:`, `hint:`,
//! in color on a terminal unless `NO_COLOR` is set.

use std::io::{IsTerminal, Write};

/// Whether to write colors to this stream.
pub fn color(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn label(name: &str, ansi: &str) -> String {
    if color(&std::io::stderr()) {
        format!("\x1b[{ansi}m{name}\x1b[0m")
    } else {
        name.to_string()
    }
}

/// An error that stops the command, its causes (each once), and a hint when one helps.
pub fn error(err: &anyhow::Error) {
    let mut out = std::io::stderr().lock();
    let top = err.to_string();
    let _ = writeln!(out, "{}: {top}", label("error", "1;31"));
    let mut said = top;
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        // Libraries often repeat their source's text in their own: say it once.
        if said.contains(&cause) {
            continue;
        }
        let _ = writeln!(out, "  Caused by: {cause}");
        said.push_str(&cause);
    }
    if let Some(h) = hint(err) {
        let _ = writeln!(out, "{}: {h}", label("hint", "1;36"));
    }
}

/// An error about one item of a batch that goes on.
pub fn error_line(message: &str) {
    eprintln!("{}: {message}", label("error", "1;31"));
}

pub fn warning(message: &str) {
    eprintln!("{}: {message}", label("warning", "1;33"));
}

fn hint(err: &anyhow::Error) -> Option<String> {
    match err.downcast_ref::<moulin::Error>()? {
        moulin::Error::CollectionNotFound { db, .. } => Some(format!(
            "`moulin collections list --db {db}` lists the collections there"
        )),
        _ => None,
    }
}
