//! The README's batch scripts (`examples/batch.sh`: bash + curl; `examples/batch.py`: Python +
//! requests) run against a gateway and the simulator, and see 100 jobs complete.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::harness::{Harness, Options};

/// Jobs each script queues.
const JOBS: usize = 100;

/// The longest a script may run.
const DEADLINE: Duration = Duration::from_secs(240);

/// A gateway whose simulator takes no time per step, accepting the whole batch at once.
fn gateway() -> Harness {
    let mut options = Options::step_ms(0);
    options.vars = vec![("MAX_QUEUED_JOBS", "1000".to_string())];
    Harness::with(options)
}

/// Whether `program args...` runs and exits 0.
fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs the script with the batch's settings, within [`DEADLINE`]; returns its stdout.
fn run_script(h: &Harness, program: &str, script: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(script);
    let child = Command::new(program)
        .arg(&path)
        .env("GATEWAY", h.url(""))
        .env("COUNT", JOBS.to_string())
        .env(
            "JOB_JSON",
            r#"{"prompt": "batch study @N@", "seed": @N@, "steps": 2, "width": 64, "height": 64}"#,
        )
        .env("POLL_SECONDS", "0.2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} {}: {e}", path.display()));
    common::finish_script(child, script, DEADLINE).0
}

/// The script's report, checked against the gateway: every job completed with an image.
fn assert_all_completed(h: &Harness, out: &str) {
    assert!(
        out.contains(&format!("completed: {JOBS} of {JOBS}")),
        "{out}"
    );
    let done: HashSet<&str> = out
        .lines()
        .filter_map(|line| {
            let mut words = line.split(' ');
            let id = words.next()?;
            let url = (words.next()? == "completed").then(|| words.next())??;
            url.starts_with("http://").then_some(id)
        })
        .collect();
    assert_eq!(done.len(), JOBS, "{out}");
    assert_eq!(h.finished_count("completed", JOBS as u64), JOBS as u64);
    for id in done {
        let (status, job) = h.get_json(&format!("/jobs/{id}"));
        assert_eq!((status, job["state"].as_str()), (200, Some("completed")));
    }
}

#[test]
fn the_bash_batch_script_queues_100_jobs_and_sees_them_complete() {
    assert!(
        works("bash", &["--version"]) && works("curl", &["--version"]),
        "this test runs examples/batch.sh: install bash and curl (apt-get install curl)"
    );
    let h = gateway();
    let out = run_script(&h, "bash", "batch.sh");
    assert_all_completed(&h, &out);
}

#[test]
fn the_python_batch_script_queues_100_jobs_and_sees_them_complete() {
    assert!(
        works("python3", &["-c", "import requests"]),
        "this test runs examples/batch.py: install Python 3 and requests \
         (pip install requests, or apt-get install python3-requests)"
    );
    let h = gateway();
    let out = run_script(&h, "python3", "batch.py");
    assert_all_completed(&h, &out);
}

#[test]
fn the_readme_quotes_both_scripts_as_they_are() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    for (script, fence) in [("batch.sh", "```bash\n"), ("batch.py", "```python\n")] {
        let text = std::fs::read_to_string(root.join("examples").join(script)).expect("script");
        assert!(
            readme.contains(&format!("{fence}{text}```\n")),
            "README.md must quote examples/{script} exactly"
        );
    }
}
