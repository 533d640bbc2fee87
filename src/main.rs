//! The `moulin` command: parse, resolve settings, call the library, render.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
