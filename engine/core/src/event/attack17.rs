//! Attacks on the hand-rolled event scanner (`scan.rs`): hostile inputs on
//! which it must agree with serde_json exactly (the same event, the same
//! reason, the same error text, the same price bits).

use proptest::prelude::*;

use super::Event;

fn agree(bytes: &[u8]) -> Result<(), TestCaseError> {
    let fast = Event::from_json(bytes);
    let slow = Event::from_json_serde(bytes);
    prop_assert_eq!(&fast, &slow, "{:?}", String::from_utf8_lossy(bytes));
    if let (Ok(a), Ok(b)) = (&fast, &slow) {
        prop_assert_eq!(a.price.to_bits(), b.price.to_bits());
    }
    Ok(())
}

const HEAD: &str = r#""shop":"s","visitor":"v","action":"purchase","item":"i""#;

/// Hand-picked hostile events.
#[test]
fn hostile_events_decode_as_serde_json_decodes_them() {
    let mut cases: Vec<Vec<u8>> = Vec::new();
    let with = |cases: &mut Vec<Vec<u8>>, tail: &str| cases.push(format!("{{{HEAD},{tail}}}").into_bytes());
    for price in [
        "1e400",
        "-1e400",
        "1e-400",
        "-0",
        "-0.0",
        "0e0",
        "0E+0",
        "1.0",
        "1.",
        ".5",
        "+1",
        "01",
        "00",
        "1e",
        "1e+",
        "4.9e-324",
        "2.2250738585072014e-308",
        "1.7976931348623157e308",
        "1.7976931348623159e308",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "0.1000000000000000055511151231257827",
        "NaN",
        "Infinity",
        "-Infinity",
        "true",
        "null",
        "\"1\"",
        "[1]",
        "{}",
        "1 2",
        "1,",
        "9007199254740993",
    ] {
        with(&mut cases, &format!(r#""price":{price},"ts":1"#));
    }
    for int in [
        "0",
        "-0",
        "-1",
        "1.0",
        "1e0",
        "1E2",
        "01",
        "-01",
        "999999999999999999",
        "-999999999999999999",
        "1000000000000000000",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "4294967295",
        "4294967296",
        "253402300799999",
        "253402300800000",
        "null",
        "\"1\"",
        "true",
        "1e400",
        "-",
        "- 1",
        "1-",
        "0x10",
        "1_000",
    ] {
        for field in ["ts", "quantity", "tier"] {
            let rest = if field == "ts" {
                String::new()
            } else {
                ",\"ts\":1".to_string()
            };
            with(&mut cases, &format!(r#""price":1,"{field}":{int}{rest}"#));
        }
        cases.push(format!(r#"{{"shop":"s","visitor":"v","action":"member","tier":{int},"ts":1}}"#).into_bytes());
    }
    for tail in [
        // Escapes, unicode and surrogates, in values and keys.
        r#""price":1,"ts":1,"id":"\ud83d\ude00""#,
        r#""price":1,"ts":1,"id":"\ud83d""#,
        r#""price":1,"ts":1,"id":"\udc00\ud800""#,
        r#""price":1,"ts":1,"id":"\u0000""#,
        r#""price":1,"ts":1,"id":"\/""#,
        r#""price":1,"ts":1,"id":"\x""#,
        r#""price":1,"ts":1,"id":"é😀""#,
        r#""price":1,"ts":1,"\u0069d":"x""#,
        r#""price":1,"ts":1,"t\u0073":2"#,
        // Unknown fields of every shape, repeated, and named like known ones.
        r#""price":1,"ts":1,"x":1e99999,"x":-0,"x":"a","x":null"#,
        r#""price":1,"ts":1,"Ts":5,"TS":5,"ts ":5," ts":5,"tsx":5,"t":5"#,
        r#""price":1,"ts":1,"categorys":"c","quantit":2,"":3"#,
        r#""price":1,"ts":1,"x":tRue"#,
        r#""price":1,"ts":1,"x":nan"#,
        r#""price":1,"ts":1,"x":[]"#,
        r#""price":1,"ts":1,"x":"\n""#,
        // Duplicates of known fields, also after an unknown one between.
        r#""price":1,"ts":1,"x":0,"ts":2"#,
        r#""price":1,"price":2,"ts":1"#,
        r#""price":1,"ts":1,"id":null,"id":"a""#,
        r#""price":null,"ts":1"#,
    ] {
        with(&mut cases, tail);
    }
    let long = "x".repeat(513);
    for (k, v) in [("id", long.as_str()), ("item", ""), ("category", ""), ("visitor", "")] {
        cases.push(
            format!(r#"{{"shop":"s","visitor":"v","action":"view","item":"i","ts":1,"{k}":"{v}"}}"#).into_bytes(),
        );
    }
    let ok = format!("{{{HEAD},\"price\":1,\"ts\":1}}");
    for (before, after) in [
        ("", "x"),
        ("", "}"),
        ("", "{}"),
        ("", "\0"),
        ("\0", ""),
        ("\x0c", ""),
        ("", "\x0c"),
        ("\u{a0}", ""),
        ("", "\u{feff}"),
        ("\u{feff}", ""),
        (" \t\r\n", " \t\r\n"),
        ("", "\n\n"),
    ] {
        cases.push(format!("{before}{ok}{after}").into_bytes());
    }
    // Whitespace of every kind (and one that is not JSON's) between tokens.
    for ws in [" ", "\t", "\n", "\r", "\x0c", "\x0b", "\u{a0}", "\u{2028}"] {
        cases.push(
            ok.replace(',', &format!("{ws},{ws}"))
                .replace(':', &format!("{ws}:{ws}"))
                .into_bytes(),
        );
    }
    // Raw control characters, NUL and DEL inside strings.
    for c in ['\0', '\x01', '\x1f', '\x7f', '\t'] {
        cases.push(format!(r#"{{"shop":"s{c}","visitor":"v","action":"view","item":"i","ts":1}}"#).into_bytes());
    }
    // Deep nesting in an unknown field: serde_json's recursion limit.
    for depth in [1, 127, 128, 129, 1_000] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        cases.push(
            format!(r#"{{"shop":"s","visitor":"v","action":"view","item":"i","ts":1,"x":{nested}}}"#).into_bytes(),
        );
    }
    // Invalid UTF-8 and overlong forms, in values and keys.
    for bad in [
        &b"\xc0\xaf"[..],
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"\xff",
        b"\xe2\x82",
    ] {
        for template in [
            &b"{\"shop\":\"s@\",\"visitor\":\"v\",\"action\":\"view\",\"item\":\"i\",\"ts\":1}"[..],
            b"{\"@\":1,\"shop\":\"s\",\"visitor\":\"v\",\"action\":\"view\",\"item\":\"i\",\"ts\":1}",
        ] {
            let at = template.iter().position(|&b| b == b'@').unwrap();
            let mut bytes = template[..at].to_vec();
            bytes.extend_from_slice(bad);
            bytes.extend_from_slice(&template[at + 1..]);
            cases.push(bytes);
        }
    }
    for case in cases {
        agree(&case).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Any bytes at all: the two paths agree.
    #[test]
    fn arbitrary_bytes_decode_alike(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        agree(&bytes)?;
    }

    /// Valid events with their numbers and strings replaced by arbitrary
    /// JSON-ish text: the two paths agree.
    #[test]
    fn events_with_arbitrary_values_decode_alike(
        action in prop::sample::select(vec!["view", "purchase", "member", "tag"]),
        price in "[-+0-9.eE]{1,12}|[0-9]{15,25}|-?[0-9]{1,3}\\.[0-9]{15,20}(e-?[0-9]{1,3})?",
        int in "-?[0-9]{1,20}|[-+0-9.eE]{1,6}",
        text in "([a-z\\\\\"/]|\\\\u[0-9a-fA-F]{4}|[\u{80}-\u{10ffff}]){0,6}",
        field in prop::sample::select(vec!["ts", "quantity", "tier", "price", "x"]),
    ) {
        let json = format!(
            r#"{{"shop":"{text}","visitor":"v","action":"{action}","item":"i","tag":"t","price":{price},"{field}":{int},"ts":1}}"#
        );
        agree(json.as_bytes())?;
        let json = format!(r#"{{"shop":"s","visitor":"v","action":"{action}","item":"i","tag":"t","tier":1,"price":{price},"ts":{int}}}"#);
        agree(json.as_bytes())?;
    }
}
