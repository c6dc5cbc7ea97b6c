//! librdkafka properties passed through to every Kafka client
//! (`--kafka-option KEY=VALUE`, `--kafka-options-file PATH`): what a
//! cluster with SASL, TLS or its own tuning needs, applied after Vitrine's
//! own settings.
//!
//! Keys Vitrine's guarantees rest on are refused ([`REFUSED`]); every other
//! key and value is checked by librdkafka itself at start-up, so a typo is
//! reported with the other configuration problems, not at the first
//! connection. Values are never echoed in errors: they may be passwords.

use std::io::Read;
use std::path::Path;

use rdkafka::ClientConfig;

/// Most options, file and flags together.
pub const MAX_OPTIONS: usize = 256;
/// Largest options file, in bytes.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Longest key (librdkafka's longest is under 50 bytes).
pub const MAX_KEY_BYTES: usize = 128;
/// Longest value (a JAAS line, a list of cipher suites, a path).
pub const MAX_VALUE_BYTES: usize = 16 << 10;
/// Problems listed for one file; more are counted.
const MAX_PROBLEMS: usize = 20;

/// Keys refused, and why: each would break what Vitrine promises.
pub const REFUSED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set it with --kafka-brokers"),
    ("metadata.broker.list", "set it with --kafka-brokers"),
    (
        "group.id",
        "set it with --kafka-group (the cluster readers use their own per-topic groups)",
    ),
    (
        "group.instance.id",
        "every client of the process would share one static member id and fence the others",
    ),
    (
        "enable.auto.offset.store",
        "an offset is stored only after its event is applied (at-least-once, state first)",
    ),
    (
        "enable.auto.commit",
        "the behavior consumer commits only offsets it stored; the cluster readers never commit",
    ),
    (
        "auto.offset.reset",
        "a partition without a position is read from its beginning; --kafka-start decides the rest",
    ),
    (
        "enable.partition.eof",
        "the end of each partition marks a topic caught up (readiness)",
    ),
    (
        "enable.idempotence",
        "rule and claim records must be written once and in order",
    ),
    ("acks", "rule and claim records must be acknowledged by every in-sync replica"),
    (
        "request.required.acks",
        "rule and claim records must be acknowledged by every in-sync replica",
    ),
    (
        "transactional.id",
        "Vitrine's producers are not transactional: every write would fail",
    ),
    (
        "message.timeout.ms",
        "derived from --cluster-timeout: a record outliving its call could land after the call was answered UNAVAILABLE",
    ),
    (
        "delivery.timeout.ms",
        "derived from --cluster-timeout: a record outliving its call could land after the call was answered UNAVAILABLE",
    ),
    (
        "statistics.interval.ms",
        "the Kafka lag and connection metrics (and the alerts on them) come from the statistics",
    ),
];

/// Why `key` is refused, if it is.
pub fn refused(key: &str) -> Option<&'static str> {
    REFUSED.iter().find(|(k, _)| *k == key).map(|(_, why)| *why)
}

/// Parses and checks one `KEY=VALUE`; the error names the key, never the value.
pub fn parse(text: &str) -> Result<(String, String), String> {
    let Some((key, value)) = text.split_once('=') else {
        return Err("not KEY=VALUE".to_string());
    };
    let (key, value) = (key.trim(), value.trim());
    check(key, value)?;
    Ok((key.to_string(), value.to_string()))
}

/// Checks a key and its value: shape, [`REFUSED`], and librdkafka's own check.
pub fn check(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("empty key".to_string());
    }
    if key.len() > MAX_KEY_BYTES
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        let shown: String = key.chars().take(40).collect();
        return Err(format!("`{shown}` is not a librdkafka property name"));
    }
    if let Some(why) = refused(key) {
        return Err(format!("`{key}` is refused: {why}"));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!("`{key}`: value longer than {MAX_VALUE_BYTES} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("`{key}`: value holds a control character"));
    }
    match ClientConfig::new().set(key, value).create_native_config() {
        Ok(_) => Ok(()),
        // librdkafka's description names the key (and, for enumerations
        // and numbers, the value it refused; secrets are free-form strings
        // librdkafka accepts as they are).
        Err(rdkafka::error::KafkaError::ClientConfig(_, description, _, _)) => {
            Err(format!("`{key}`: librdkafka: {description}"))
        }
        Err(e) => Err(format!("`{key}`: librdkafka: {e}")),
    }
}

/// Parses an options file: `KEY=VALUE` lines; blank lines and lines
/// starting with `#` are skipped; key and value are trimmed. Errors are
/// `PATH:LINE: problem`, every one (up to a bound, then counted).
pub fn parse_file(path: &Path) -> Result<Vec<(String, String)>, Vec<String>> {
    let shown = path.display();
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes));
    if let Err(e) = read {
        return Err(vec![format!("{shown}: {e}")]);
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(vec![format!("{shown}: larger than {MAX_FILE_BYTES} bytes")]);
    }
    let Ok(text) = String::from_utf8(bytes) else {
        return Err(vec![format!("{shown}: not UTF-8")]);
    };
    let mut options = Vec::new();
    let mut problems = Vec::new();
    let mut more = 0usize;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let problem = if options.len() == MAX_OPTIONS {
            Some(format!("more than {MAX_OPTIONS} options"))
        } else {
            match parse(line) {
                Ok(option) => {
                    options.push(option);
                    None
                }
                Err(e) => Some(e),
            }
        };
        if let Some(p) = problem {
            if problems.len() < MAX_PROBLEMS {
                problems.push(format!("{shown}:{}: {p}", n + 1));
            } else {
                more += 1;
            }
        }
    }
    if more > 0 {
        problems.push(format!("{shown}: ... and {more} more problems"));
    }
    if problems.is_empty() {
        Ok(options)
    } else {
        Err(problems)
    }
}

/// The options of `--kafka-options-file` then `--kafka-option` (a flag
/// wins over the file: librdkafka keeps the last value set). Empty flag
/// values (a blank line of `VITRINE_KAFKA_OPTIONS`) and `#` lines are skipped.
pub fn collect(file: Option<&Path>, flags: &[String]) -> Result<Vec<(String, String)>, Vec<String>> {
    let mut problems = Vec::new();
    let mut options = match file.map(parse_file) {
        Some(Ok(o)) => o,
        Some(Err(p)) => {
            problems.extend(p);
            Vec::new()
        }
        None => Vec::new(),
    };
    let flags: Vec<&str> = flags
        .iter()
        .map(|f| f.trim())
        .filter(|f| !f.is_empty() && !f.starts_with('#'))
        .collect();
    for (i, flag) in flags.iter().enumerate() {
        match parse(flag) {
            Ok(o) => options.push(o),
            Err(e) => problems.push(format!("--kafka-option #{}: {e}", i + 1)),
        }
    }
    if options.len() > MAX_OPTIONS {
        problems.push(format!(
            "--kafka-option: {} options, more than {MAX_OPTIONS}",
            options.len()
        ));
    }
    if problems.is_empty() {
        Ok(options)
    } else {
        Err(problems)
    }
}

/// Sets `options` on `client`, after the settings already there.
pub fn apply(client: &mut ClientConfig, options: &[(String, String)]) {
    for (key, value) in options {
        client.set(key, value);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn a_flag_is_key_equals_value_trimmed() {
        assert_eq!(
            parse(" sasl.username = vitrine "),
            Ok(("sasl.username".to_string(), "vitrine".to_string()))
        );
        // The value may hold `=` and `,` (a JAAS line, a debug list).
        assert_eq!(parse("debug=broker,topic").unwrap().1, "broker,topic");
        assert_eq!(parse("sasl.password=a=b").unwrap().1, "a=b");
        assert_eq!(parse("sasl.username"), Err("not KEY=VALUE".to_string()));
        assert_eq!(parse("=x"), Err("empty key".to_string()));
    }

    #[test]
    fn the_guarantees_keys_are_refused_with_the_reason() {
        for (key, _) in REFUSED {
            let e = parse(&format!("{key}=x")).unwrap_err();
            assert!(e.starts_with(&format!("`{key}` is refused: ")), "{e}");
        }
        assert!(parse("enable.auto.offset.store=true")
            .unwrap_err()
            .contains("state first"));
    }

    #[test]
    fn librdkafka_checks_keys_and_values_without_echoing_secrets() {
        let e = parse("no.such.property=1").unwrap_err();
        assert!(e.starts_with("`no.such.property`: librdkafka: "), "{e}");
        let e = parse("socket.timeout.ms=soon").unwrap_err();
        assert!(e.contains("socket.timeout.ms"), "{e}");
        assert!(parse("sasl.password=hunter2=").is_ok());
        assert!(parse("sasl.password=\u{7}x").unwrap_err().contains("control"));
        assert!(!parse("bad key=hunter2").unwrap_err().contains("hunter2"));
        assert!(parse(&format!("sasl.password={}", "x".repeat(MAX_VALUE_BYTES + 1))).is_err());
    }

    #[test]
    fn tls_and_sasl_settings_are_accepted() {
        // librdkafka is built with OpenSSL (rdkafka's ssl-vendored): without
        // it, `ssl` and `sasl_ssl` are refused at start-up.
        for option in [
            "security.protocol=sasl_ssl",
            "security.protocol=ssl",
            "sasl.mechanism=SCRAM-SHA-512",
            "sasl.mechanism=PLAIN",
            "ssl.ca.location=probe",
            "ssl.endpoint.identification.algorithm=https",
        ] {
            assert!(parse(option).is_ok(), "{option}: {:?}", parse(option));
        }
    }

    #[test]
    fn a_file_reports_every_bad_line_with_its_number() {
        let f = file("# SASL\n\nsecurity.protocol=sasl_plaintext\n  sasl.mechanism = PLAIN\nacks=0\nnonsense\n");
        let e = parse_file(f.path()).unwrap_err();
        let p = f.path().display();
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(e[0].starts_with(&format!("{p}:5: `acks` is refused")), "{e:?}");
        assert_eq!(e[1], format!("{p}:6: not KEY=VALUE"));
        let f = file("# SASL\r\nsecurity.protocol=sasl_plaintext\r\nsasl.mechanism=PLAIN\r\n");
        assert_eq!(
            parse_file(f.path()).unwrap(),
            [
                ("security.protocol".to_string(), "sasl_plaintext".to_string()),
                ("sasl.mechanism".to_string(), "PLAIN".to_string())
            ]
        );
    }

    #[test]
    fn a_file_is_bounded() {
        let f = file(&"#".repeat(MAX_FILE_BYTES as usize + 1));
        assert!(parse_file(f.path()).unwrap_err()[0].contains("larger than"));
        let f = file(&"client.rack=a\n".repeat(MAX_OPTIONS + 5));
        let e = parse_file(f.path()).unwrap_err();
        assert_eq!(e.len(), 5, "{e:?}");
        assert!(e[0].contains(&format!(":{}: more than", MAX_OPTIONS + 1)), "{e:?}");
        let f = file(&"x\n".repeat(100));
        let e = parse_file(f.path()).unwrap_err();
        assert_eq!(e.len(), MAX_PROBLEMS + 1);
        assert!(e[MAX_PROBLEMS].ends_with("... and 80 more problems"), "{e:?}");
        assert!(parse_file(Path::new("/nonexistent/kafka.properties")).is_err());
    }

    #[test]
    fn flags_come_after_the_file_and_blank_lines_are_skipped() {
        let f = file("client.rack=a\n");
        let flags = ["client.rack=b".to_string(), String::new(), "# note".to_string()];
        assert_eq!(
            collect(Some(f.path()), &flags).unwrap(),
            [
                ("client.rack".to_string(), "a".to_string()),
                ("client.rack".to_string(), "b".to_string())
            ]
        );
        let e = collect(None, &["acks=all".to_string(), "x".to_string()]).unwrap_err();
        assert_eq!(e.len(), 2);
        assert!(e[1].starts_with("--kafka-option #2: "), "{e:?}");
    }
}
