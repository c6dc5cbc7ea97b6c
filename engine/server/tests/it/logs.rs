//! What an SRE ships and probes: the log lines of the real binary (JSON
//! that parses line by line, no colour codes off a terminal) and
//! `vitrine health`'s exit codes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use vitrine::commands::serve;

use crate::support::{connect, temp_dir, test_config, wait_for, WAIT};

const BIN: &str = env!("CARGO_BIN_EXE_vitrine");

/// Runs `vitrine serve` on ephemeral ports with `extra` flags and `env`,
/// standard error piped; returns its lines up to "vitrine serving".
fn serve_lines(name: &str, extra: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let dir = temp_dir(name);
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(["--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
        .arg("--rules-dir")
        .arg(dir.path().join("rules"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(extra)
        .env_remove("VITRINE_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .env("VITRINE_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(WAIT) {
            Ok(Ok(line)) => {
                let done = line.contains("vitrine serving");
                lines.push(line);
                if done {
                    break;
                }
            }
            other => {
                let _ = child.kill();
                panic!("no `vitrine serving` line ({other:?}); got {lines:#?}");
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    lines
}

#[test]
fn json_logs_parse_line_by_line_with_stable_fields_and_no_colour() {
    let lines = serve_lines("json-logs", &["--log-format", "json"], &[]);
    let mut replayed = 0;
    for line in &lines {
        assert!(!line.contains("\x1b["), "an escape code off a terminal: {line}");
        let event: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let object = event.as_object().unwrap_or_else(|| panic!("not an object: {line}"));
        for field in ["timestamp", "level", "target", "message"] {
            assert!(object[field].is_string(), "`{field}` missing or not a string: {line}");
        }
        // Recovery summaries are flat fields a pipeline can query, not a
        // Rust `Debug` dump.
        if object["message"]
            .as_str()
            .is_some_and(|m| m.ends_with("journal replayed"))
        {
            assert!(object["records"].is_u64(), "{line}");
            assert!(object["batches"].is_u64(), "{line}");
            assert!(!line.contains("Recovery {"), "{line}");
            replayed += 1;
        }
    }
    assert_eq!(replayed, 2, "the events and claims journals: {lines:#?}");
    let serving: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(serving["level"], "INFO");
    assert!(serving["grpc_addr"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
}

#[test]
fn text_logs_off_a_terminal_have_no_colour() {
    // The environment variable says text (also the default).
    let lines = serve_lines("text-logs", &[], &[("VITRINE_LOG_FORMAT", "text")]);
    assert!(lines.len() > 1, "{lines:#?}");
    for line in &lines {
        assert!(!line.contains("\x1b["), "an escape code off a terminal: {line}");
        assert!(!line.starts_with('{'), "text, not JSON: {line}");
    }
}

/// `vitrine health` with `args`: its exit code and standard output.
async fn health(args: Vec<String>) -> (Option<i32>, String) {
    let out = tokio::task::spawn_blocking(move || Command::new(BIN).arg("health").args(args).output().unwrap())
        .await
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn health_exits_0_when_serving_1_when_not_and_2_when_unreachable() {
    let dir = temp_dir("health");
    let server = serve::start(test_config(dir.path())).await.unwrap();
    let c = connect(server.grpc_addr).await;
    wait_for("Decision SERVING", || {
        let mut h = c.health.clone();
        async move {
            let request = HealthCheckRequest {
                service: "vitrine.v1.Decision".to_string(),
            };
            h.check(request)
                .await
                .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
        }
    })
    .await;
    let addr = server.grpc_addr.to_string();
    // A wildcard host is asked on loopback: the listen address works as is.
    let wildcard = format!("0.0.0.0:{}", server.grpc_addr.port());
    assert_eq!(
        health(vec!["--addr".into(), addr.clone()]).await,
        (Some(0), "SERVING\n".into())
    );
    assert_eq!(health(vec!["--addr".into(), wildcard]).await.0, Some(0));
    let unknown = vec!["--addr".into(), addr, "--service".into(), "no.such.Service".into()];
    assert_eq!(health(unknown).await.0, Some(1), "a service the server does not know");

    // A server whose service is NOT_SERVING.
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("vitrine.v1.Decision", tonic_health::ServingStatus::NotServing)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let not_serving = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    assert_eq!(health(vec!["--addr".into(), not_serving]).await.0, Some(1));

    // A closed port.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    assert_eq!(
        health(vec!["--addr".into(), closed, "--timeout".into(), "1s".into()])
            .await
            .0,
        Some(2)
    );
    assert_eq!(
        health(vec!["--timeout".into(), "soon".into()]).await.0,
        Some(2),
        "a bad flag"
    );
    server.shutdown().await.unwrap();
}
