//! The command line: `comfyui-gateway` serves (configured by the environment), and
//! `comfyui-gateway convert WORKFLOW [--comfyui URL | --object-info FILE]` prints the API-format
//! graph of a workflow as ComfyUI saves it (JSON, or a PNG or WebP that ComfyUI wrote).

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::comfyui::{ClientOptions, ComfyClient};
use crate::workflow::ui::{self, NodeDefs};

/// The usage text `--help` prints.
pub const USAGE: &str = "\
usage: comfyui-gateway                 serve (configured by environment variables, see README)
       comfyui-gateway convert WORKFLOW [--comfyui URL | --object-info FILE]
       comfyui-gateway --help | --version

convert: print the API-format graph (what ComfyUI's /prompt takes) of WORKFLOW, a workflow as
ComfyUI saves it (.json) or a PNG or WebP that ComfyUI wrote (- reads the standard input). The node definitions come from
the ComfyUI at URL (default: COMFYUI_URL's first entry, else http://127.0.0.1:8188) or from
FILE, a saved GET /object_info answer.";

/// Answers every command line but the one that serves: `Some(exit code)` after printing help,
/// the version, a conversion (stdout) or what went wrong (stderr, 2 for a bad command line);
/// `None` when there are no arguments and the caller should serve.
pub fn run(args: impl IntoIterator<Item = OsString>) -> Option<ExitCode> {
    match parse(args, &default_comfyui()) {
        Ok(Command::Serve) => None,
        Ok(Command::Help) => {
            println!("{USAGE}");
            Some(ExitCode::SUCCESS)
        }
        Ok(Command::Version) => {
            println!("comfyui-gateway {}", env!("CARGO_PKG_VERSION"));
            Some(ExitCode::SUCCESS)
        }
        Ok(Command::Convert { workflow, defs }) => Some(
            match convert(&workflow, &defs, &mut std::io::stdout().lock()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    eprintln!("comfyui-gateway convert: {message}");
                    ExitCode::FAILURE
                }
            },
        ),
        Err(UsageError(message)) => {
            eprintln!("comfyui-gateway: {message}");
            eprintln!("{}", USAGE.lines().take(3).collect::<Vec<_>>().join("\n"));
            Some(ExitCode::from(2))
        }
    }
}

/// The first `COMFYUI_URL` entry, else ComfyUI's usual address.
fn default_comfyui() -> String {
    std::env::var("COMFYUI_URL")
        .ok()
        .and_then(|urls| urls.split(',').next().map(|u| u.trim().to_owned()))
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:8188".into())
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// No arguments: run the gateway.
    Serve,
    /// `--help` / `-h`.
    Help,
    /// `--version` / `-V`.
    Version,
    /// `convert`.
    Convert {
        /// The workflow file.
        workflow: PathBuf,
        /// Where the node definitions come from.
        defs: DefsSource,
    },
}

/// Where `convert` reads node definitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefsSource {
    /// `GET /object_info` of the ComfyUI at this URL.
    ComfyUi(String),
    /// A saved `/object_info` answer.
    File(PathBuf),
}

/// A command line that makes no sense; the message says why, and the caller adds the usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError(pub String);

/// Reads the arguments (without the program name). `default_comfyui` is the URL `convert` uses
/// when given neither `--comfyui` nor `--object-info`.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    default_comfyui: &str,
) -> Result<Command, UsageError> {
    let mut args = args.into_iter().map(|a| a.to_string_lossy().into_owned());
    let Some(first) = args.next() else {
        return Ok(Command::Serve);
    };
    let rest: Vec<String> = args.collect();
    let alone = |command: Command| match rest.first() {
        Some(extra) => Err(UsageError(format!("unexpected argument {extra:?}"))),
        None => Ok(command),
    };
    match first.as_str() {
        "-h" | "--help" | "help" => alone(Command::Help),
        "-V" | "--version" => alone(Command::Version),
        "convert" => parse_convert(&rest, default_comfyui),
        other => Err(UsageError(format!("unknown argument {other:?}"))),
    }
}

fn parse_convert(args: &[String], default_comfyui: &str) -> Result<Command, UsageError> {
    let mut workflow = None;
    let mut comfyui = None;
    let mut object_info = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| {
            iter.next()
                .cloned()
                .ok_or_else(|| UsageError(format!("{name} needs a value")))
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--comfyui" => comfyui = Some(value("--comfyui")?),
            "--object-info" => object_info = Some(PathBuf::from(value("--object-info")?)),
            flag if flag.starts_with('-') && flag != "-" => {
                return Err(UsageError(format!("unknown option {flag:?}")));
            }
            path if workflow.is_none() => workflow = Some(PathBuf::from(path)),
            extra => return Err(UsageError(format!("unexpected argument {extra:?}"))),
        }
    }
    let Some(workflow) = workflow else {
        return Err(UsageError("convert needs a WORKFLOW file".into()));
    };
    let defs = match (comfyui, object_info) {
        (Some(_), Some(_)) => {
            return Err(UsageError(
                "give --comfyui or --object-info, not both".into(),
            ));
        }
        (Some(url), None) => DefsSource::ComfyUi(url),
        (None, Some(file)) => DefsSource::File(file),
        (None, None) => DefsSource::ComfyUi(default_comfyui.to_owned()),
    };
    Ok(Command::Convert { workflow, defs })
}

/// Runs `convert`: the API graph as pretty JSON on `out`, or the reasons it could not be made.
/// A workflow already in the API format is printed as it is.
pub fn convert(workflow: &PathBuf, defs: &DefsSource, out: &mut dyn Write) -> Result<(), String> {
    let bytes = if workflow.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)
            .map_err(|e| format!("cannot read the standard input: {e}"))?;
        bytes
    } else {
        std::fs::read(workflow).map_err(|e| format!("cannot read {}: {e}", workflow.display()))?
    };
    let saved =
        ui::workflow_from_file(&bytes).map_err(|e| format!("{}: {e}", workflow.display()))?;
    let api = if ui::is_ui_format(&saved) {
        let defs = load_defs(defs)?;
        serde_json::Value::Object(
            ui::convert(&saved, &defs).map_err(|e| conversion_failure(workflow, &e))?,
        )
    } else {
        saved
    };
    let text = serde_json::to_string_pretty(&api).map_err(|e| e.to_string())?;
    writeln!(out, "{text}").map_err(|e| format!("cannot write the result: {e}"))
}

/// The reasons, one node per line.
fn conversion_failure(workflow: &std::path::Path, error: &ui::ConvertError) -> String {
    match error {
        ui::ConvertError::Nodes(nodes) => {
            let s = if nodes.len() == 1 { "" } else { "s" };
            let mut text = format!(
                "{}: {} node{s} cannot be converted:",
                workflow.display(),
                nodes.len()
            );
            for node in nodes {
                text.push_str(&format!("\n  {node}"));
            }
            text
        }
        other => format!("{}: {other}", workflow.display()),
    }
}

fn load_defs(source: &DefsSource) -> Result<NodeDefs, String> {
    let object_info = match source {
        DefsSource::File(file) => {
            let text =
                std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            serde_json::from_slice(&text).map_err(|e| {
                format!("{} is not an /object_info JSON answer: {e}", file.display())
            })?
        }
        DefsSource::ComfyUi(url) => {
            let options = ClientOptions {
                request_timeout: Duration::from_secs(120),
                ..ClientOptions::default()
            };
            let client = ComfyClient::new(url, options).map_err(|e| format!("{url}: {e}"))?;
            client.object_info().map_err(|e| {
                format!(
                    "cannot read the node definitions from ComfyUI at {url}: {e} (start it, give \
                     its URL with --comfyui, or a saved /object_info with --object-info)"
                )
            })?
        }
    };
    let defs = NodeDefs::from_object_info(&object_info);
    if defs.is_empty() {
        return Err("the node definitions hold no node class".into());
    }
    Ok(defs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from), "http://127.0.0.1:8188")
    }

    #[test]
    fn no_arguments_serve_and_convert_takes_one_source_of_definitions() {
        assert_eq!(parsed(&[]), Ok(Command::Serve));
        assert_eq!(parsed(&["-V"]), Ok(Command::Version));
        assert_eq!(parsed(&["convert", "--help"]), Ok(Command::Help));
        assert_eq!(
            parsed(&["convert", "w.json"]),
            Ok(Command::Convert {
                workflow: PathBuf::from("w.json"),
                defs: DefsSource::ComfyUi("http://127.0.0.1:8188".into()),
            })
        );
        assert_eq!(
            parsed(&["convert", "--object-info", "oi.json", "w.png"]),
            Ok(Command::Convert {
                workflow: PathBuf::from("w.png"),
                defs: DefsSource::File(PathBuf::from("oi.json")),
            })
        );
        for bad in [
            &["convert", "w.json", "--comfyui", "u", "--object-info", "f"][..],
            &["convert", "w.json", "--comfyui"],
            &["convert", "--verbose", "w.json"],
            &["--version", "extra"],
            &["serve"],
        ] {
            assert!(parsed(bad).is_err(), "{bad:?}");
        }
    }
}
