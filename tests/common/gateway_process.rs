//! The real `comfyui-gateway` binary as a child process, its log lines on a channel.

use crossbeam_channel::Receiver;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::harness::workflows_dir;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// The gateway binary running as a child, its stderr lines arriving on a channel.
pub struct Gateway {
    /// The process.
    pub child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    /// The port it listens on.
    pub port: u16,
}

impl Gateway {
    /// Starts the binary with `vars` (over a minimal environment), through `sh -c PREFIX`
    /// when a shell prefix such as a `ulimit` is given.
    pub fn start(dir: &Path, vars: &[(&str, String)], shell_prefix: Option<&str>) -> Gateway {
        let port = free_port();
        let binary = env!("CARGO_BIN_EXE_comfyui-gateway");
        let mut command = match shell_prefix {
            Some(prefix) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("{prefix} && exec \"$0\""))
                    .arg(binary);
                c
            }
            None => Command::new(binary),
        };
        command
            .current_dir(dir) // no stray .env
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("WORKFLOWS_DIR", workflows_dir())
            .env("DATA_DIR", dir.join("data"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in vars {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("the gateway binary starts");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Gateway {
            child,
            lines,
            seen: Vec::new(),
            port,
        }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits (bounded) for a log line containing `needle`.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.lines.recv_deadline(deadline) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(e) => panic!("no log line with {needle:?} ({e}); seen: {:#?}", self.seen),
            }
        }
    }

    /// Every line logged so far; once the process has exited, every line it logged.
    pub fn log(&mut self) -> Vec<String> {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            // The reader ends at end-of-file, which comes right after the exit.
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Ok(line) = self.lines.recv_deadline(deadline) {
                self.seen.push(line);
            }
        }
        self.seen.extend(self.lines.try_iter());
        self.seen.clone()
    }

    pub fn wait_until_serving(&mut self) {
        self.wait_for_line("listening on");
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_for_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("waitable") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
