//! The real `bourse` binary, for tests where signals, exit codes or the process's own output
//! matter: started with no proxy variables and no `BOURSE_CONFIG`, in the temp dir, with
//! every line it writes (stdout and stderr) kept for the test to read.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// `bourse` with a clean environment; `RUST_LOG` is the caller's to set.
pub fn command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_bourse"));
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "BOURSE_CONFIG",
        "RUST_LOG",
    ] {
        c.env_remove(var);
    }
    c.current_dir(std::env::temp_dir());
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    c
}

/// Every line a process wrote so far, stdout and stderr interleaved as they were read.
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<Vec<String>>>);

impl Output {
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits up to `within` for a line containing `needle`; returns it.
    pub async fn wait_for(&self, needle: &str, within: Duration) -> Option<String> {
        let until = tokio::time::Instant::now() + within;
        loop {
            if let Some(l) = self.0.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            if tokio::time::Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn keep(&self, pipe: impl AsyncRead + Unpin + Send + 'static) {
        let out = self.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                out.0.lock().unwrap().push(line);
            }
        });
    }
}

/// A `bourse` process and what it wrote.
pub struct Process {
    pub child: Child,
    pub output: Output,
}

impl Process {
    /// Starts `cmd`, reading its output from then on.
    pub fn spawn(cmd: &mut Command) -> Process {
        let mut child = cmd.spawn().unwrap();
        let output = Output::default();
        output.keep(child.stdout.take().unwrap());
        output.keep(child.stderr.take().unwrap());
        Process { child, output }
    }

    /// Runs `cmd` to its end; returns its exit status and output.
    pub async fn run(cmd: &mut Command) -> (std::process::ExitStatus, Vec<String>) {
        let mut p = Process::spawn(cmd);
        let status = tokio::time::timeout(Duration::from_secs(30), p.child.wait()).await.unwrap().unwrap();
        // The readers reach the pipes' ends just after the exit.
        tokio::time::sleep(Duration::from_millis(50)).await;
        (status, p.output.lines())
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("still running").to_string();
        assert!(std::process::Command::new("kill").args([&format!("-{name}"), &pid]).status().unwrap().success());
    }
}

/// `bourse serve` started and listening; `url` is `http://ADDR`.
pub struct Served {
    pub process: Process,
    pub url: String,
}

/// Starts `cmd` (a `bourse serve` with `--listen 127.0.0.1:0`) and waits for its
/// "listening" line.
pub async fn serve(cmd: &mut Command) -> Served {
    let process = Process::spawn(cmd);
    let line = match process.output.wait_for("listening on http://", Duration::from_secs(30)).await {
        Some(l) => l,
        None => panic!("bourse did not start:\n{}", process.output.lines().join("\n")),
    };
    let at = line.find("listening on ").unwrap() + "listening on ".len();
    let url = line[at..].split_whitespace().next().unwrap().to_string();
    Served { process, url }
}
