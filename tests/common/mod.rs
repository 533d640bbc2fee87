//! Helpers shared by the integration tests: paths, the binary, a local web server.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// `../shared/corpus`, beside the checkout (CI has it): a test that needs it
/// fails without it rather than passing having checked nothing.
pub fn corpus() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    assert!(
        p.is_dir(),
        "{} is missing: the corpus tests need ../shared/corpus beside the checkout",
        p.display()
    );
    p
}

pub fn moulin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_moulin"))
}

pub fn run(args: &[&str]) -> Output {
    run_in(Path::new(env!("CARGO_MANIFEST_DIR")), args)
}

/// Run moulin in `dir` with a fixed environment: no colors, no settings inherited
/// from the environment of whoever runs the tests.
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    let out = moulin()
        .current_dir(dir)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("MOULIN_DB")
        .env_remove("MOULIN_PASSWORD")
        .env_remove("MOULIN_EMBEDDING_MODEL")
        .env_remove("RUST_LOG")
        .output()
        .expect("moulin runs");
    eprintln!(
        "$ moulin {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A tiny HTTP server on 127.0.0.1 serving `routes` (path → (status, content type, body)),
/// and redirects for paths starting with `/redirect/N` (N hops before `/page`).
pub fn serve(routes: Vec<(&'static str, u16, &'static str, Vec<u8>)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a local port");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(200) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .to_string();
            let (status, ctype, body, location) = if let Some(n) = path.strip_prefix("/redirect/") {
                let n: u32 = n.parse().unwrap_or(0);
                let next = if n <= 1 {
                    "/page".to_string()
                } else {
                    format!("/redirect/{}", n - 1)
                };
                (302, "text/plain", Vec::new(), Some(next))
            } else {
                match routes.iter().find(|r| r.0 == path) {
                    Some((_, status, ctype, body)) => (*status, *ctype, body.clone(), None),
                    None => (404, "text/plain", b"not found".to_vec(), None),
                }
            };
            let mut head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            if let Some(l) = location {
                head.push_str(&format!("Location: {l}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    format!("http://{addr}")
}
