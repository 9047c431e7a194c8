//! The real `comfyui-gateway` binary's front door: it survives (or exits for a supervisor) a
//! flood of connections under a low open-files limit, refuses numbers that would overflow, logs
//! what an operator needs (and nothing RUST_LOG did not ask for), and reconciles what a crash
//! left in DATA_DIR.

mod common;

use comfyui_sim::{ComfySim, SimOptions};
use common::gateway_process::{Gateway, free_port};
use common::harness::{TestDir, agent};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Whether `GET /health` answers 200 within a second.
fn serves(port: u16) -> bool {
    let Ok(mut socket) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1))
    else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(1)));
    if socket
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = [0u8; 12];
    socket.read_exact(&mut answer).is_ok() && answer.starts_with(b"HTTP/1.1 200")
}

#[test]
fn a_flood_under_a_low_open_files_limit_never_leaves_a_live_process_that_refuses_everyone() {
    let sim = ComfySim::start(SimOptions::default()).expect("simulator");
    let dir = TestDir::new();
    // Hard and soft limits both at 64, so the start-up raise cannot escape it.
    let mut gateway = Gateway::start(
        dir.path(),
        &[("COMFYUI_URL", sim.url())],
        Some("ulimit -S -n 64 && ulimit -H -n 64"),
    );
    gateway.wait_until_serving();
    assert!(serves(gateway.port));

    // Connections that each hold a socket and a thread: a request head never finished.
    let addr = ([127, 0, 0, 1], gateway.port).into();
    let mut flood = Vec::new();
    let mut refused = false;
    for i in 0..400 {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(mut socket) => {
                let _ = socket.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n");
                flood.push(socket);
            }
            Err(_) => {
                refused = true;
                break;
            }
        }
        if i % 20 == 19 && !serves(gateway.port) {
            refused = true;
            break;
        }
    }
    assert!(
        refused || flood.len() >= 400,
        "the flood went on until refused"
    );
    drop(flood);

    // Released: within a bounded time the gateway serves again, or it has exited non-zero
    // (for a supervisor to restart it). Alive and refusing is the one outcome not allowed.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        if let Some(status) = gateway.wait_for_exit(Duration::ZERO) {
            assert!(!status.success(), "exited, but with success: {status}");
            let log = gateway.log();
            assert!(
                log.iter()
                    .any(|l| l.contains("stopped accepting connections")),
                "the reason is logged: {log:#?}"
            );
            return;
        }
        if serves(gateway.port) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway is alive but refuses connections: {:#?}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_number_that_would_overflow_stops_start_up_with_one_line() {
    let dir = TestDir::new();
    let mut gateway = Gateway::start(
        dir.path(),
        &[("MAX_BODY_BYTES", "18446744073709551615".into())],
        None,
    );
    let status = gateway
        .wait_for_exit(Duration::from_secs(30))
        .expect("start-up refused");
    assert!(!status.success());
    let log = gateway.log();
    assert_eq!(log.len(), 1, "one line: {log:#?}");
    assert!(
        log[0].contains("MAX_BODY_BYTES=\"18446744073709551615\"") && log[0].contains("at most"),
        "{}",
        log[0]
    );
}

#[test]
fn start_up_logs_the_open_files_limit_and_warns_when_reachable_without_a_proxy() {
    let sim = ComfySim::start(SimOptions::default()).expect("simulator");
    let dir = TestDir::new();
    let mut gateway = Gateway::start(
        dir.path(),
        &[("COMFYUI_URL", sim.url())],
        Some("ulimit -S -n 256"),
    );
    let line = gateway.wait_for_line("open-files limit");
    assert!(line.contains("raised from 256"), "{line}");
    gateway.wait_until_serving();
    assert!(
        !gateway.log().iter().any(|l| l.contains("TRUSTED_PROXY")),
        "loopback needs no proxy"
    );
    drop(gateway);

    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let mut open = Gateway::start(
        dir.path(),
        &[("COMFYUI_URL", sim.url()), ("LISTEN_ADDR", listen.clone())],
        None,
    );
    let warning = open.wait_for_line("TRUSTED_PROXY");
    assert!(
        warning.contains("WARN") && warning.contains(&listen),
        "{warning}"
    );
    drop(open);

    let mut proxied = Gateway::start(
        dir.path(),
        &[
            ("COMFYUI_URL", sim.url()),
            ("LISTEN_ADDR", format!("0.0.0.0:{}", free_port())),
            ("TRUSTED_PROXY", "127.0.0.1".into()),
        ],
        None,
    );
    proxied.wait_until_serving();
    assert!(
        !proxied.log().iter().any(|l| l.contains("no TRUSTED_PROXY")),
        "{:#?}",
        proxied.log()
    );
}

#[test]
fn the_client_address_is_taken_from_a_trusted_proxy_only() {
    let sim = ComfySim::start(SimOptions::default()).expect("simulator");
    let dir = TestDir::new();
    let call = |gateway: &Gateway, path: &str| {
        agent()
            .get(&format!("{}{path}", gateway.base()))
            .header("X-Forwarded-For", "198.51.100.1, 203.0.113.9")
            .call()
            .expect("answers");
    };
    let mut trusting = Gateway::start(
        dir.path(),
        &[
            ("COMFYUI_URL", sim.url()),
            ("TRUSTED_PROXY", "127.0.0.1".into()),
        ],
        None,
    );
    trusting.wait_until_serving();
    call(&trusting, "/health?trusted");
    let line = trusting.wait_for_line("/health");
    assert!(line.contains("203.0.113.9 (via 127.0.0.1:"), "{line}");
    drop(trusting);

    let mut direct = Gateway::start(dir.path(), &[("COMFYUI_URL", sim.url())], None);
    direct.wait_until_serving();
    call(&direct, "/health?direct");
    let line = direct.wait_for_line("/health");
    assert!(
        line.contains("127.0.0.1:") && !line.contains("203.0.113.9"),
        "a header from anyone else is not believed: {line}"
    );
}

#[test]
fn rust_log_is_honoured_and_only_ureq_protos_trace_is_capped() {
    let sim = ComfySim::start(SimOptions::default()).expect("simulator");
    let dir = TestDir::new();
    // At the default level the HTTP client's internals stay quiet.
    let mut quiet = Gateway::start(dir.path(), &[("COMFYUI_URL", sim.url())], None);
    quiet.wait_until_serving();
    agent()
        .get(&format!("{}/ready", quiet.base()))
        .call()
        .expect("answers");
    quiet.wait_for_line("GET /ready");
    drop(quiet.child.kill());
    let _ = quiet.wait_for_exit(Duration::from_secs(10));
    let log = quiet.log();
    assert!(
        !log.iter().any(|l| l.contains("ureq_proto")),
        "RUST_LOG=info shows no ureq_proto lines: {log:#?}"
    );
    assert!(
        log.iter().all(|l| l.starts_with("[20")),
        "lines start with an RFC 3339 timestamp: {log:#?}"
    );

    // Asked for everything, it gets everything but ureq_proto's raw dumps.
    let mut loud = Gateway::start(
        dir.path(),
        &[
            ("COMFYUI_URL", sim.url()),
            ("RUST_LOG", "trace".into()),
            ("API_KEYS", "never-logged-key".into()),
        ],
        None,
    );
    loud.wait_until_serving();
    agent()
        .get(&format!("{}/ready", loud.base()))
        .header("Authorization", "Bearer never-logged-key")
        .call()
        .expect("answers");
    loud.wait_for_line("GET /ready");
    let _ = loud.child.kill();
    let _ = loud.wait_for_exit(Duration::from_secs(10));
    let log = loud.log();
    assert!(log.iter().any(|l| l.contains("DEBUG")), "{log:#?}");
    assert!(
        !log.iter()
            .any(|l| l.contains("TRACE") && l.contains("ureq_proto")),
        "ureq_proto's trace is capped: {log:#?}"
    );
    assert!(!log.iter().any(|l| l.contains("never-logged-key")));
}

#[test]
fn start_up_removes_crash_leftovers_and_writes_missing_rows() {
    let sim = ComfySim::start(SimOptions::default()).expect("simulator");
    let dir = TestDir::new();
    let job = "3f2a9c1e-8b7d-4e6f-a5c4-0123456789ab";
    let images = dir.path().join("data/images").join(job);
    std::fs::create_dir_all(&images).expect("writable");
    std::fs::write(images.join("0.png"), common::tiny_png(8, 4)).expect("writable");
    let stray = images.join(".1.png.tmp-5b1f4c2e-0000-4000-8000-000000000000");
    std::fs::write(&stray, b"half").expect("writable");
    let spool_temp = dir.path().join("data/spool/.tmp-job-uuid");
    std::fs::create_dir_all(&spool_temp).expect("writable");

    let mut gateway = Gateway::start(dir.path(), &[("COMFYUI_URL", sim.url())], None);
    gateway.wait_until_serving();
    assert!(
        !stray.exists(),
        "the interrupted save's temporary file is gone"
    );
    assert!(!spool_temp.exists(), "the spool's too");
    let rows = std::fs::read_to_string(dir.path().join("data/generations.jsonl")).expect("rows");
    let row: serde_json::Value =
        serde_json::from_str(rows.lines().next().expect("a row")).expect("JSON");
    assert_eq!(row["job_id"], job);
    assert_eq!(row["storage_key"], format!("{job}/0.png"));
    assert_eq!(
        (row["width"].as_u64(), row["height"].as_u64()),
        (Some(8), Some(4))
    );
    assert_eq!(row["params"]["reconciled"], true);
    gateway.wait_for_line("(reconciled)");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| p.is_file())
    else {
        eprintln!(
            "\nsystemd-analyze is not installed: deploy/comfyui-gateway.service NOT verified\n"
        );
        return;
    };
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/comfyui-gateway.service"),
    )
    .expect("the unit is readable");
    for needed in [
        "Restart=on-failure",
        "LimitNOFILE=",
        "EnvironmentFile=",
        "User=comfyui-gateway",
        "ProtectSystem=strict",
        "ReadWritePaths=",
        "NoNewPrivileges=true",
        "PrivateTmp=true",
    ] {
        assert!(unit.contains(needed), "the unit sets {needed}");
    }
    // verify wants the executable to exist: point it at the one just built.
    let dir = TestDir::new();
    let path = dir.path().join("comfyui-gateway.service");
    let unit = unit.replace(
        "/usr/local/bin/comfyui-gateway",
        env!("CARGO_BIN_EXE_comfyui-gateway"),
    );
    std::fs::write(&path, unit).expect("writable");
    let output = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_gateway_left_idle_longer_than_its_idle_timeout_still_accepts() {
    let sim = ComfySim::start(SimOptions::default()).expect("simulator");
    let dir = TestDir::new();
    // The listener's read timeout bounds accept() too: nobody connecting for longer than it
    // must not end the accept loop.
    let mut gateway = Gateway::start(
        dir.path(),
        &[
            ("COMFYUI_URL", sim.url()),
            ("IDLE_TIMEOUT_SECS", "1".into()),
        ],
        None,
    );
    gateway.wait_until_serving();
    let quiet_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < quiet_until {
        assert!(
            gateway.wait_for_exit(Duration::from_millis(200)).is_none(),
            "the gateway exited while idle: {:#?}",
            gateway.log()
        );
    }
    assert!(serves(gateway.port), "{:#?}", gateway.log());
}
