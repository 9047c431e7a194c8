//! `comfyui-sim`: the ComfyUI stand-in as a process, for demos and manual testing.
//!
//! ```text
//! comfyui-sim [--listen ADDR] [--step-ms N] [--previews] [--preview-format png|jpeg]
//! ```
//! Listens on `127.0.0.1:8188` (ComfyUI's default) unless told otherwise, logs through
//! `env_logger` (`RUST_LOG=info` by default) and runs until killed. After a simulated crash
//! (`POST /sim/fail_next {"failure": "crash_at", ...}`) it comes back, empty, 3 s later.

use std::process::ExitCode;
use std::time::Duration;

use comfyui_sim::{ComfySim, PreviewFormat, SimEvent, SimOptions};

/// How long a crashed simulator stays down before it restarts (empty, like a restarted ComfyUI).
const RESTART_AFTER: Duration = Duration::from_secs(3);

const USAGE: &str =
    "usage: comfyui-sim [--listen ADDR] [--step-ms N] [--previews] [--preview-format png|jpeg]";

/// Reads the command line into options; `Err` carries the message for the user.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<SimOptions, String> {
    let mut opts = SimOptions {
        listen: "127.0.0.1:8188".into(),
        ..SimOptions::default()
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                opts.listen = args
                    .next()
                    .ok_or("--listen needs an address such as 127.0.0.1:8188")?;
            }
            "--step-ms" => {
                let value = args
                    .next()
                    .ok_or("--step-ms needs a number of milliseconds")?;
                let ms: u64 = value
                    .parse()
                    .map_err(|_| format!("--step-ms expects milliseconds, got {value:?}"))?;
                opts.step_delay = Duration::from_millis(ms);
            }
            "--previews" => opts.send_previews = true,
            "--preview-format" => {
                opts.preview_format = match args.next().as_deref() {
                    Some("png") => PreviewFormat::Png,
                    Some("jpeg") => PreviewFormat::Jpeg,
                    _ => return Err("--preview-format expects png or jpeg".into()),
                };
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(opts) => opts,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let listen = opts.listen.clone();
    let sim = match ComfySim::start(opts) {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("comfyui-sim: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("comfyui-sim listening on {}", sim.url());
    // Serve until the process is killed; the simulator's own threads do all the work. Like a
    // supervised ComfyUI, come back (empty) a little after a simulated crash.
    for event in sim.events() {
        if event == SimEvent::Crashed {
            std::thread::sleep(RESTART_AFTER);
            match sim.restart() {
                Ok(()) => log::info!("comfyui-sim restarted after a simulated crash"),
                Err(e) => {
                    eprintln!("comfyui-sim: cannot listen again after the crash: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_to_comfyuis_port() {
        let opts = parse_args(args(&[])).expect("no arguments is fine");
        assert_eq!(opts.listen, "127.0.0.1:8188");
        assert!(!opts.send_previews);
    }

    #[test]
    fn reads_every_flag() {
        let opts = parse_args(args(&[
            "--listen",
            "0.0.0.0:9000",
            "--step-ms",
            "5",
            "--previews",
            "--preview-format",
            "jpeg",
        ]))
        .expect("valid arguments");
        assert_eq!(opts.listen, "0.0.0.0:9000");
        assert_eq!(opts.step_delay, Duration::from_millis(5));
        assert!(opts.send_previews);
        assert_eq!(opts.preview_format, PreviewFormat::Jpeg);
    }

    #[test]
    fn explains_bad_arguments() {
        let err = parse_args(args(&["--step-ms", "fast"])).expect_err("not a number");
        assert!(err.contains("milliseconds"), "{err}");
        assert!(parse_args(args(&["--bogus"])).is_err());
    }
}
