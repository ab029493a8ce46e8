//! No error message, `Debug` output, error source or log line ever holds bytes of a private
//! key, however the key was mangled on its way to sds: line breaks folded to spaces or lost
//! (pasted into YAML or an environment variable), CR line endings, a character replaced, cut
//! short, junk after the BEGIN line, pasted into the certificate input, END label changed.
//!
//! Every supported kind of key (SEC1 P-256 and P-384, PKCS#8 EC, Ed25519, RSA PKCS#1 and
//! PKCS#8) goes through [`CertifiedKey::from_pem`] (as the key, and as the chain),
//! [`TrustBundle::from_pem`], and [`sds_core::publish`], whose driver logs every rejection,
//! under a subscriber that captures everything at each level from TRACE to ERROR. No
//! 12-character window of the key's base64 body, or of its DER in hex, may appear anywhere.

use std::{
    error::Error as _,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use futures_util::stream;
use sds_core::{CertifiedKey, Error, Input, Secret, SecretName, TrustBundle, UnixTime, Update};
use sds_test_util::{
    certs::{Ca, KeyKind, Leaf, Validity},
    leak::KeyBytes,
    logs::Captured,
};
use tracing::Level;

const NOW_SECS: u64 = 2_000_000_000; // 2033-05-18
const CHAIN: &str = "/d/leak/tls.crt";
const KEY: &str = "/d/leak/tls.key";

/// Every kind of key sds serves, in every encoding.
const KINDS: [KeyKind; 7] = [
    KeyKind::EcP256Sec1,
    KeyKind::EcP384Sec1,
    KeyKind::EcP256Pkcs8,
    KeyKind::EcP384Pkcs8,
    KeyKind::Ed25519,
    KeyKind::RsaPkcs1(2048),
    KeyKind::RsaPkcs8(2048),
];

const LEVELS: [Level; 5] = [
    Level::TRACE,
    Level::DEBUG,
    Level::INFO,
    Level::WARN,
    Level::ERROR,
];

fn now() -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(NOW_SECS))
}

fn now_sys() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW_SECS)
}

// === the secret ===

// === mangling ===

/// The key's PEM with every line break replaced by `with`.
fn fold(pem: &str, with: &str) -> String {
    pem.trim_end().replace('\n', with)
}

/// `pem` with the byte at `at` replaced by `with`.
fn replace_at(pem: &str, at: usize, with: char) -> String {
    let mut out = pem.to_owned();
    out.replace_range(at..at + 1, &with.to_string());
    out
}

/// The key, mangled in every way we can think of: (case, text).
fn mangled(leaf: &Leaf) -> Vec<(String, Vec<u8>)> {
    let pem = leaf.key_pem.as_str();
    let label = pem
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("-----BEGIN "))
        .and_then(|l| l.strip_suffix("-----"))
        .expect("a BEGIN line");
    let body_start = pem.find('\n').expect("more than one line") + 1;
    let body_end = pem.rfind("-----END").expect("an END line");
    let body: String = pem[body_start..body_end].lines().collect();

    let mut cases: Vec<(String, String)> = vec![
        ("one line, spaces".into(), fold(pem, " ")),
        ("one line, no separator".into(), fold(pem, "")),
        ("one line, literal \\n".into(), fold(pem, "\\n")),
        ("one line, tabs".into(), fold(pem, "\t")),
        ("CR line endings".into(), pem.replace('\n', "\r")),
        ("CRLF line endings".into(), pem.replace('\n', "\r\n")),
        (
            "body on one line".into(),
            format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"),
        ),
        (
            "body folded to spaces, own BEGIN and END lines".into(),
            format!(
                "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
                fold(&pem[body_start..body_end], " ")
            ),
        ),
        (
            "first body line joined to BEGIN".into(),
            pem.replacen(&format!("{label}-----\n"), &format!("{label}-----"), 1),
        ),
        (
            "END joined to the body".into(),
            pem.replacen("\n-----END", " -----END", 1),
        ),
        (
            "junk after BEGIN".into(),
            pem.replacen(&format!("{label}-----"), &format!("{label}----- junk"), 1),
        ),
        (
            "body in the BEGIN label".into(),
            pem.replacen(
                &format!("{label}-----"),
                &format!("{label} {}-----", &body[..40]),
                1,
            ),
        ),
        (
            "body in the BEGIN label, no closing dashes".into(),
            pem.replacen(
                &format!("{label}-----"),
                &format!("{label} {}", &body[..40]),
                1,
            ),
        ),
        (
            "body in the END label".into(),
            pem.replacen(
                &format!("END {label}"),
                &format!("END {label} {}", &body[..40]),
                1,
            ),
        ),
        (
            "END label mismatched".into(),
            pem.replacen(&format!("END {label}"), "END CERTIFICATE", 1),
        ),
        (
            "END label unknown".into(),
            pem.replacen(&format!("END {label}"), "END SOMETHING ELSE", 1),
        ),
        (
            "relabelled as a certificate".into(),
            pem.replace(label, "CERTIFICATE"),
        ),
        (
            "relabelled with an unknown label".into(),
            pem.replace(label, "MY SECRET KEY"),
        ),
        ("body only".into(), format!("{body}\n")),
        (
            "nested BEGIN".into(),
            pem.replacen("\n", &format!("\n-----BEGIN {label}-----\n"), 2),
        ),
        ("twice".into(), format!("{pem}{pem}")),
        (
            "a body line deleted".into(),
            pem.replacen(&pem[body_start..body_start + 65], "", 1),
        ),
        (
            "a body line doubled".into(),
            format!("{}{}", &pem[..body_start + 65], &pem[body_start..]),
        ),
    ];
    // One character replaced: by characters that are not base64, and by one that is.
    let stride = (body_end - body_start) / 7;
    for at in (body_start..body_end)
        .step_by(stride.max(1))
        .chain([body_start + 1, body_end - 2])
    {
        if pem.as_bytes()[at] == b'\n' {
            continue;
        }
        for with in ['!', '-', '=', ' ', 'A', 'z'] {
            cases.push((format!("{with:?} at {at}"), replace_at(pem, at, with)));
        }
    }
    // Cut short, anywhere (and at every byte around the END line).
    let mut cuts: Vec<usize> = (1..pem.len()).step_by(pem.len() / 23).collect();
    cuts.extend(body_end.saturating_sub(3)..pem.len());
    for at in cuts {
        cases.push((format!("cut at {at}"), pem[..at].to_owned()));
    }

    let mut cases: Vec<(String, Vec<u8>)> = cases
        .into_iter()
        .map(|(c, t)| (c, t.into_bytes()))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(&body)
        .expect("valid base64");
    cases.push(("DER".into(), der.clone()));
    cases.push(("DER in a PEM frame".into(), {
        let mut framed = format!("-----BEGIN {label}-----\n").into_bytes();
        framed.extend(&der);
        framed.extend(format!("\n-----END {label}-----\n").as_bytes());
        framed
    }));
    cases
}

// === running ===

/// Every text an error shows: `Display`, `Debug`, and those of its whole `source()` chain.
fn texts(error: &Error) -> Vec<String> {
    let mut out = vec![
        error.to_string(),
        format!("{error:?}"),
        format!("{error:#?}"),
    ];
    let mut next = error.source();
    while let Some(source) = next {
        out.push(source.to_string());
        out.push(format!("{source:?}"));
        next = source.source();
    }
    out
}

/// Every mangled key through every way it reaches sds, parsed once.
struct Parsed {
    /// (case, name, what parsing gave).
    results: Vec<(String, SecretName, Result<Arc<Secret>, Error>)>,
    /// The unmangled credential.
    good: Arc<Secret>,
}

fn name(n: usize) -> SecretName {
    SecretName::new(format!("leak-{n}")).expect("a valid name")
}

fn parse_all(leaf: &Leaf, cases: &[(String, Vec<u8>)]) -> Parsed {
    let load = |chain: &[u8], key: &[u8]| {
        CertifiedKey::from_pem(
            &name(0),
            Input::new(CHAIN, chain),
            Input::new(KEY, key),
            now(),
        )
        .map(Secret::from)
    };
    let (chain, key) = (leaf.chain_pem.as_bytes(), leaf.key_pem.as_bytes());
    let chain_with_root = leaf.chain_with_root_pem().into_bytes();
    let mut results = Vec::new();
    for (case, text) in cases {
        let appended = [&chain_with_root[..], text].concat();
        let bundle = [leaf.root_pem.as_bytes(), text].concat();
        for (way, result) in [
            ("key", load(chain, text)),
            ("chain", load(text, key)),
            ("after the chain", load(&appended, key)),
            (
                "CA bundle",
                TrustBundle::from_pem(&name(0), Input::new(CHAIN, &bundle), None, now())
                    .map(Secret::from),
            ),
        ] {
            let n = results.len() + 1;
            results.push((format!("{case} ({way})"), name(n), result.map(Arc::new)));
        }
    }
    let good = load(chain, key).expect("the unmangled key loads");
    Parsed {
        results,
        good: Arc::new(good),
    }
}

impl Parsed {
    fn errors(&self) -> impl Iterator<Item = (&str, &Error)> {
        self.results
            .iter()
            .filter_map(|(case, _, result)| Some((case.as_str(), result.as_ref().err()?)))
    }
}

/// Publishes the unmangled credential, then an ambient error, then every result (the
/// unmangled credential's name rejected too: "still serving the last good version"), and
/// drives the publisher to the end of its source.
fn publish(parsed: &Parsed) {
    let (_, first_error) = parsed.errors().next().expect("some case is rejected");
    let mut kept = Update::new();
    kept.insert_shared(name(0), Arc::clone(&parsed.good));
    let mut update = Update::new();
    for (_, name, result) in &parsed.results {
        match result {
            Ok(secret) => update.insert_shared(name.clone(), Arc::clone(secret)),
            Err(error) => update.reject(name.clone(), error.clone()),
        }
    }
    update.reject(name(0), first_error.clone());
    let items = [Ok(kept), Err(first_error.clone()), Ok(update)];
    let (reader, driver) = sds_core::publish(sds_core::from_stream(stream::iter(items)));
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime")
        .block_on(driver);
    drop(reader);
}

/// Runs `f` with a subscriber that captures every event up to `level`; returns the log too.
fn captured<T>(level: Level, f: impl FnOnce() -> T) -> (T, String) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(level)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let log = captured.text();
    (out, log)
}

#[test]
fn no_error_or_log_line_holds_key_bytes() {
    let root = Ca::new("Leak Test Root");
    let leaves: Vec<Leaf> = KINDS
        .iter()
        .map(|kind| root.issue(&["leak.example.com"], *kind, Validity::around(now_sys())))
        .collect();
    // One thread per kind of key: each captures its own log (the subscriber is the thread's).
    std::thread::scope(|scope| {
        for leaf in &leaves {
            scope.spawn(move || check(leaf));
        }
    });
}

fn check(leaf: &Leaf) {
    let kind = leaf.key.kind();
    let secret = KeyBytes::of([leaf.key_pem.as_str()]);
    let cases = mangled(leaf);

    // Parsing logs only warnings about CA certificates, whatever the level: parse once,
    // capturing everything.
    let (parsed, log) = captured(Level::TRACE, || parse_all(leaf, &cases));
    secret.assert_absent(&format!("{kind:?}: the parsers' log"), &log);
    let rejected = parsed.errors().count();
    // Most cases are rejected (a valid key appended to a CA bundle or a chain is ignored).
    assert!(
        rejected > cases.len() * 5 / 2,
        "{kind:?}: {rejected} rejections of {} cases",
        cases.len()
    );
    for (case, error) in parsed.errors() {
        for text in texts(error) {
            secret.assert_absent(&format!("{kind:?}, {case}: the error"), &text);
        }
    }

    for level in LEVELS {
        let ((), log) = captured(level, || publish(&parsed));
        secret.assert_absent(&format!("{kind:?} at {level}: the log"), &log);
        // The publisher did log every rejection (so the check above saw them).
        if level >= Level::WARN {
            let logged = log.matches("rejected").count();
            assert!(
                logged > rejected,
                "{kind:?} at {level}: {rejected} rejections, {logged} logged:\n{log}"
            );
        }
    }
}

#[test]
fn lost_line_breaks_are_explained() {
    let root = Ca::new("Leak Test Root");
    for kind in [KeyKind::EcP256Sec1, KeyKind::Ed25519] {
        let leaf = root.issue(&["leak.example.com"], kind, Validity::around(now_sys()));
        for with in [" ", ""] {
            let error = CertifiedKey::from_pem(
                &name(0),
                Input::new(CHAIN, leaf.chain_pem.as_bytes()),
                Input::new(KEY, fold(&leaf.key_pem, with).as_bytes()),
                now(),
            )
            .expect_err("a key on one line is refused");
            let label = kind.label();
            assert_eq!(
                error.to_string(),
                format!("credential `leak-0`: {KEY}: PEM block 1 ({label}) at line 1 is malformed")
            );
            assert_eq!(
                error.source().map(ToString::to_string).as_deref(),
                Some(
                    "line 1: the block is on one line; its line breaks were lost (pasted into \
                     YAML or an environment variable?): restore them"
                )
            );
        }
    }
}
