//! The rules-file policy: [`RulesFile`] grants secrets to peers by glob, from a YAML (or JSON)
//! file that [`RulesDriver`] reloads when it changes. The format, the globs and the reload
//! rules are documented on [`RulesFile`].

use std::{
    cell::Cell,
    fmt, fs,
    future::{self, Future},
    io::{self, Read as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::{BoxFuture, FutureExt as _};
use notify::{
    EventKind, RecommendedWatcher, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode},
};
use sds_core::{SecretName, Untrusted};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{MessageFormatter as _, Spanned};
use tokio::{
    sync::{mpsc, watch},
    time::{Instant, MissedTickBehavior},
};

use super::{Decision, Identity, Peer, Policy};
use crate::error::{Error, RulesError, RulesProblem};

/// Largest rules file read, in bytes.
const MAX_BYTES: u64 = 1024 * 1024;

/// Most rules a file may have.
const MAX_RULES: usize = 10_000;

/// How long the driver waits after a change in the directory before it reads the file, so
/// that one save (truncate, write, rename) is one reload.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// How often the driver reads the file even when no change was seen (a missed event, a
/// directory that cannot be watched, a symlink leading outside the directory).
const RECHECK: Duration = Duration::from_secs(30);

/// Most characters of text from the file (a pattern, a parser message) an error shows.
const SHOWN_CHARS: usize = 128;

/// Most characters of a path a log line shows.
const SHOWN_PATH_CHARS: usize = 256;

/// Most identities of a peer a denial names.
const SHOWN_IDENTITIES: usize = 4;

/// The rules-file policy: which peers may have which secrets, read from a YAML file and
/// reloaded while the server runs.
///
/// ```yaml
/// rules:
///   - peers: ["spiffe://cluster.local/ns/a/sa/*", "uid:1000"]
///     secrets: ["a-*", "kubernetes://a/*"]
///   - peers: ["dns:gateway.example.com", "gid:1337"]
///     secrets: ["*"]
/// ```
///
/// A peer may have a secret when a rule lists one of the peer's identities in `peers` and
/// the secret's name in `secrets`: a peer gets the union of what every rule that names it
/// grants, and a peer no rule grants a secret does not get it (denied with, e.g.,
/// `no rule grants "b-cred" to spiffe://cluster.local/ns/a/sa/gw`). The name is that of the
/// credential the service serves: for a requested `sds://NAME` it is `NAME`, and the service
/// grants `NAME-cacert` with `NAME`.
///
/// # The file
/// One YAML document (JSON is YAML too: `{"rules": [{"peers": [...], "secrets": [...]}]}`)
/// with one key, `rules`: a non-empty list of rules, each with exactly the keys `peers` and
/// `secrets`, each a non-empty list of patterns. A peer pattern is one identity form, with
/// globs in its name part only:
///
/// - `uid:N`, `gid:N`: a Unix-socket peer's user or group id (`uid:10*`, `uid:*` any Unix
///   peer);
/// - `dns:NAME`: a DNS SAN of the peer's verified client certificate;
/// - a URI with a scheme, `scheme://…` (a SPIFFE ID `spiffe://td/ns/a/sa/gw`): a URI SAN of
///   the peer's verified client certificate, as it is.
///
/// Each form matches its own kind of identity only: a certificate whose URI SAN is
/// `uid:0` is not uid 0. A secret pattern is a glob over the secret's name.
///
/// # Globs
/// `*` matches any run of characters, `/` included (`kubernetes://a/*` matches
/// `kubernetes://a/x/y`); `?` matches one character; every other character matches itself.
/// There are no character classes and no escapes: `[`, `]` and `\` are plain characters. A
/// plain YAML scalar cannot start with `*` (that is an alias): quote such patterns, `"*"`.
/// Matching takes time linear in the name for each `*`, never exponential.
///
/// # Refused files
/// [`RulesFile::load`] refuses a file, with its path, the rule, line and column, and what is
/// wrong (an [`Error::Rules`]), when it cannot be read, is larger than
/// [`MAX_BYTES`](Self::MAX_BYTES), is not UTF-8, is not YAML, has a key other than those
/// above, lacks one, has an empty list, has no rules or more than
/// [`MAX_RULES`](Self::MAX_RULES), or has a pattern of another form (`user:1000`, `uid:abc`).
///
/// # Reloading
/// [`RulesDriver`] watches the file's directory (edits in place, an editor's rename over the
/// file, a Kubernetes ConfigMap volume's `..data` symlink swap), waits 100 ms for a save to
/// settle, reads the file again, and reads it every 30 s anyway. A new valid file replaces
/// the rules (logged at INFO, `policy reloaded: N rules`) and makes [`Policy::changed`]
/// resolve, so every open stream asks again. A file that is refused, or gone, leaves the last
/// good rules in force and is logged at WARN with why, once for each content (or error); it
/// is used again once it is valid.
///
/// ```no_run
/// use sds_server::{SdsService, policy::RulesFile};
///
/// # async fn demo(reader: sds_core::Reader) -> Result<(), sds_server::Error> {
/// let (policy, driver) = RulesFile::load("/etc/sds/rules.yaml").await?;
/// tokio::spawn(driver); // reloads the file when it changes
/// let sds = SdsService::builder(reader).policy(policy).build();
/// # let _ = sds; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RulesFile {
    shared: Arc<Shared>,
}

/// What every clone of a [`RulesFile`] shares.
struct Shared {
    /// The file, absolute.
    path: PathBuf,
    /// The rules in force, replaced by the driver.
    rules: watch::Receiver<Arc<Rules>>,
}

/// Watches a [`RulesFile`]'s file and reloads it when it changes. Created by
/// [`RulesFile::load`]; the library spawns nothing, so spawn it (e.g. `tokio::spawn`). It
/// finishes when every clone of the [`RulesFile`] has been dropped; until it runs, the rules
/// stay as loaded.
#[must_use = "the rules file is reloaded only while the driver is polled"]
pub struct RulesDriver {
    path: PathBuf,
    inner: Pin<Box<dyn Future<Output = ()> + Send + 'static>>,
}

/// The rules in force: what a file said when it was last read and valid.
#[derive(Debug)]
struct Rules {
    rules: Vec<Rule>,
}

/// One rule: its peers may have its secrets.
#[derive(Debug)]
struct Rule {
    peers: Vec<PeerPattern>,
    secrets: Vec<Glob>,
}

/// A peer pattern: a kind of identity, and a glob over its name (for a URI, the whole URI).
#[derive(Debug)]
struct PeerPattern {
    kind: Kind,
    name: Glob,
}

/// The kinds of [`Identity`] a peer pattern matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Uid,
    Gid,
    Uri,
    Dns,
}

/// A glob: `*` any run of characters, `?` one character, anything else itself.
#[derive(Debug)]
struct Glob(Box<str>);

// === impl ParsedRules ===

/// A rules file's content, parsed and compiled as [`RulesFile::load`] does, without a file or a
/// driver: for the workspace's fuzz targets (feature `__bench`), not an API.
#[cfg(feature = "__bench")]
#[doc(hidden)]
#[derive(Debug)]
pub struct ParsedRules(Rules);

#[cfg(feature = "__bench")]
impl ParsedRules {
    /// Parses `content`; errors name the file `rules.yaml`.
    pub fn parse(content: &[u8]) -> Result<Self, RulesError> {
        Rules::parse(Path::new("rules.yaml"), content).map(Self)
    }

    /// How many rules the file has.
    pub fn len(&self) -> usize {
        self.0.rules.len()
    }

    /// Whether the file has no rules (never: such a file is refused).
    pub fn is_empty(&self) -> bool {
        self.0.rules.is_empty()
    }

    /// What [`RulesFile`] would decide for `peer` and `name` with these rules.
    pub fn decide(&self, peer: &Peer, name: &SecretName) -> Decision {
        self.0.decide(peer, name)
    }
}

// === impl RulesFile ===

impl RulesFile {
    /// Largest rules file read, in bytes (1 MiB).
    pub const MAX_BYTES: u64 = MAX_BYTES;

    /// Most rules a file may have.
    pub const MAX_RULES: usize = MAX_RULES;

    /// Reads and validates the rules file at `path` (off the runtime, with
    /// `spawn_blocking`). Spawns nothing: run the returned [`RulesDriver`] for the file to be
    /// reloaded when it changes.
    ///
    /// # Errors
    ///
    /// An [`Error::Rules`] naming the file, the place in it and the problem, when the file
    /// cannot be used: see [Refused files](RulesFile#refused-files).
    pub async fn load(path: impl AsRef<Path>) -> Result<(RulesFile, RulesDriver), Error> {
        let path = path.as_ref().to_owned();
        let given = path.clone();
        let loaded = blocking(move || load_blocking(&path))
            .await
            .unwrap_or_else(|| {
                let stopped = io::Error::other("the runtime shut down before the file was read");
                Err(RulesError::new(&given, RulesProblem::unreadable(stopped)))
            });
        let (path, content, rules) = loaded.map_err(|error| Error::Rules(Box::new(error)))?;
        let (sender, receiver) = watch::channel(Arc::new(rules));
        let (events_tx, events_rx) = mpsc::channel(1);
        let reload = Reload {
            dir: path.parent().unwrap_or(Path::new("/")).to_owned(),
            path: path.clone(),
            active: Arc::clone(&content),
            seen: Seen::Content(content),
            events: events_tx,
            watcher: None,
            watched: None,
            watch_failure: None,
        };
        let policy = RulesFile {
            shared: Arc::new(Shared {
                path: path.clone(),
                rules: receiver,
            }),
        };
        let driver = RulesDriver {
            path,
            inner: Box::pin(drive(reload, events_rx, sender)),
        };
        Ok((policy, driver))
    }

    /// The rules file, as an absolute path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// How many rules are in force.
    pub fn rule_count(&self) -> usize {
        self.current().rules.len()
    }

    /// The rules in force; the lock is let go at once.
    fn current(&self) -> Arc<Rules> {
        Arc::clone(&self.shared.rules.borrow())
    }
}

impl fmt::Debug for RulesFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RulesFile")
            .field("path", &self.shared.path)
            .field("rules", &self.rule_count())
            .finish()
    }
}

impl Policy for RulesFile {
    fn decide<'a>(&'a self, peer: &'a Peer, name: &'a SecretName) -> BoxFuture<'a, Decision> {
        future::ready(self.current().decide(peer, name)).boxed()
    }

    fn changed(&self) -> BoxFuture<'static, ()> {
        // Subscribed now: the future resolves at the next reload after this call.
        let mut rules = self.shared.rules.clone();
        rules.mark_unchanged();
        async move {
            if rules.changed().await.is_err() {
                // The driver is gone: the rules never change again.
                future::pending::<()>().await;
            }
        }
        .boxed()
    }
}

/// Reads, validates and compiles the file at `path` (made absolute). Blocking.
fn load_blocking(path: &Path) -> Result<(PathBuf, Arc<[u8]>, Rules), RulesError> {
    let path = std::path::absolute(path)
        .map_err(|error| RulesError::new(path, RulesProblem::unreadable(error)))?;
    let content = read(&path).map_err(|problem| RulesError::new(&path, problem))?;
    let rules = Rules::parse(&path, &content)?;
    Ok((path, content, rules))
}

/// The file's content, at most [`MAX_BYTES`]. Blocking.
fn read(path: &Path) -> Result<Arc<[u8]>, RulesProblem> {
    let file = fs::File::open(path).map_err(RulesProblem::unreadable)?;
    let len = file.metadata().map_err(RulesProblem::unreadable)?.len();
    if len > MAX_BYTES {
        return Err(RulesProblem::TooLarge {
            len,
            max: MAX_BYTES,
        });
    }
    let mut content = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut content)
        .map_err(RulesProblem::unreadable)?;
    if content.len() as u64 > MAX_BYTES {
        // It grew while it was read.
        return Err(RulesProblem::TooLarge {
            len: content.len() as u64,
            max: MAX_BYTES,
        });
    }
    Ok(content.into())
}

/// Runs `f` off the runtime. `None` when the runtime shuts down before it runs; a panic in
/// `f` is carried on.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => Some(value),
        Err(error) => match error.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_cancelled) => None,
        },
    }
}

// === impl RulesProblem ===

impl RulesProblem {
    fn unreadable(error: io::Error) -> Self {
        RulesProblem::Unreadable {
            source: Arc::new(error),
        }
    }
}

// === impl Rules ===

impl Rules {
    /// Validates and compiles a rules file's content; errors name `path`.
    fn parse(path: &Path, content: &[u8]) -> Result<Self, RulesError> {
        let text = std::str::from_utf8(content).map_err(|error| {
            let (line, column) = position(content, error.valid_up_to());
            RulesError::new(path, RulesProblem::NotUtf8).at(line, column)
        })?;
        if text.trim().is_empty() {
            return Err(RulesError::new(path, RulesProblem::NoRules));
        }
        let in_rule = Cell::new(None);
        let options = serde_saphyr::options! { with_snippet: false };
        let raw = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
            FileSeed { in_rule: &in_rule }.deserialize(de)
        })
        .map_err(|error| {
            let message = serde_saphyr::DefaultMessageFormatter.format_message(&error);
            let message = Untrusted::new(&message, SHOWN_CHARS).to_string();
            let mut refused = RulesError::new(path, RulesProblem::Yaml { message });
            if let Some(location) = error.location() {
                refused = at(refused, location);
            }
            match in_rule.get() {
                Some(index) => refused.in_rule(index + 1),
                None => refused,
            }
        })?;
        if raw.is_empty() {
            return Err(RulesError::new(path, RulesProblem::NoRules));
        }
        if let Some(over) = raw.get(MAX_RULES) {
            let problem = RulesProblem::TooManyRules {
                count: raw.len(),
                max: MAX_RULES,
            };
            let refused = RulesError::new(path, problem).in_rule(MAX_RULES + 1);
            return Err(at(refused, over.referenced));
        }
        let rules = raw
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                Rule::compile(&rule.value).map_err(|(location, problem)| {
                    at(RulesError::new(path, problem), location).in_rule(index + 1)
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Rules { rules })
    }

    fn decide(&self, peer: &Peer, name: &SecretName) -> Decision {
        let identities = peer.identities();
        let named: Vec<(Kind, String)> = identities.iter().map(Kind::of).collect();
        if self.rules.iter().any(|rule| rule.grants(&named, name)) {
            return Decision::Allow;
        }
        let mut who = identities
            .iter()
            .take(SHOWN_IDENTITIES)
            .map(Identity::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        if identities.is_empty() {
            who = "a peer with no identity".to_owned();
        } else if identities.len() > SHOWN_IDENTITIES {
            who.push_str(&format!(
                " (and {} more)",
                identities.len() - SHOWN_IDENTITIES
            ));
        }
        Decision::deny(format!(
            "no rule grants \"{}\" to {who}",
            Untrusted::new(name.as_str(), SHOWN_CHARS)
        ))
    }
}

/// `error`, at `location` when it is a known one.
fn at(error: RulesError, location: serde_saphyr::Location) -> RulesError {
    if location.line() == 0 {
        return error;
    }
    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    error.at(count(location.line()), count(location.column()))
}

/// The line and column (from 1, the column in characters) of byte `offset` of `content`, which
/// is UTF-8 up to there.
fn position(content: &[u8], offset: usize) -> (usize, usize) {
    let before = &content[..offset];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |newline| newline + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

// === impl Rule ===

impl Rule {
    /// Validates and compiles a rule as written; an error says where in the file.
    fn compile(raw: &RawRule) -> Result<Self, (serde_saphyr::Location, RulesProblem)> {
        for (field, list) in [("peers", &raw.peers), ("secrets", &raw.secrets)] {
            if list.value.is_empty() {
                return Err((list.referenced, RulesProblem::EmptyList { field }));
            }
        }
        let shown = |pattern: &str| Untrusted::new(pattern, SHOWN_CHARS).to_string();
        let peers = raw
            .peers
            .value
            .iter()
            .map(|pattern| {
                PeerPattern::parse(&pattern.value).map_err(|problem| {
                    let pattern_shown = shown(&pattern.value);
                    let problem = RulesProblem::PeerPattern {
                        pattern: pattern_shown,
                        problem,
                    };
                    (pattern.referenced, problem)
                })
            })
            .collect::<Result<_, _>>()?;
        let secrets = raw
            .secrets
            .value
            .iter()
            .map(|pattern| match text_problem(&pattern.value) {
                None => Ok(Glob::new(&pattern.value)),
                Some(problem) => Err((
                    pattern.referenced,
                    RulesProblem::SecretPattern {
                        pattern: shown(&pattern.value),
                        problem,
                    },
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(Rule { peers, secrets })
    }

    /// Whether this rule grants `name` to a peer with the identities `named`.
    fn grants(&self, named: &[(Kind, String)], name: &SecretName) -> bool {
        self.secrets.iter().any(|glob| glob.matches(name.as_str()))
            && self.peers.iter().any(|pattern| {
                named
                    .iter()
                    .any(|(kind, text)| pattern.kind == *kind && pattern.name.matches(text))
            })
    }
}

/// Why a pattern can never match: empty, or with characters no name or identity has.
fn text_problem(pattern: &str) -> Option<&'static str> {
    if pattern.is_empty() {
        Some("is empty")
    } else if !pattern.bytes().all(|b| b.is_ascii_graphic()) {
        Some("has whitespace, control or non-ASCII characters")
    } else {
        None
    }
}

// === impl PeerPattern ===

impl PeerPattern {
    /// The pattern `text`, or what is wrong with it.
    fn parse(text: &str) -> Result<Self, &'static str> {
        const FORMS: &str = "is not uid:N, gid:N, dns:NAME or a URI";
        if let Some(problem) = text_problem(text) {
            return Err(problem);
        }
        let (kind, name) = if let Some(id) = text.strip_prefix("uid:") {
            if !is_id(id) {
                return Err("is not uid:N with N a number (or a glob of digits, `*` and `?`)");
            }
            (Kind::Uid, id)
        } else if let Some(id) = text.strip_prefix("gid:") {
            if !is_id(id) {
                return Err("is not gid:N with N a number (or a glob of digits, `*` and `?`)");
            }
            (Kind::Gid, id)
        } else if let Some(name) = text.strip_prefix("dns:") {
            if name.is_empty() {
                return Err("has no name after `dns:`");
            }
            (Kind::Dns, name)
        } else if is_uri(text) {
            (Kind::Uri, text)
        } else {
            return Err(FORMS);
        };
        Ok(PeerPattern {
            kind,
            name: Glob::new(name),
        })
    }
}

/// Whether `id` is a user or group id, or a glob of digits that may match one.
fn is_id(id: &str) -> bool {
    let is_glob = id.contains(['*', '?']);
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'*' || b == b'?')
        && (is_glob || id.parse::<u32>().is_ok())
}

/// Whether `text` is `scheme://…` with a valid scheme (RFC 3986: a letter, then letters,
/// digits, `+`, `-` and `.`) and something after `://`.
fn is_uri(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
}

// === impl Kind ===

impl Kind {
    /// The kind of `identity`, and its name as patterns match it.
    fn of(identity: &Identity) -> (Kind, String) {
        match identity {
            Identity::Uid(uid) => (Kind::Uid, uid.to_string()),
            Identity::Gid(gid) => (Kind::Gid, gid.to_string()),
            Identity::Uri(uri) => (Kind::Uri, uri.clone()),
            Identity::Dns(name) => (Kind::Dns, name.clone()),
        }
    }
}

// === impl Glob ===

impl Glob {
    /// The glob `pattern`; runs of `*` are one `*`.
    fn new(pattern: &str) -> Self {
        let mut glob = String::with_capacity(pattern.len());
        for c in pattern.chars() {
            if !(c == '*' && glob.ends_with('*')) {
                glob.push(c);
            }
        }
        Glob(glob.into())
    }

    /// Whether `text` matches, whole.
    ///
    /// The two-pointer wildcard match: walk pattern and text together; at a `*`, remember
    /// where it is and let it match nothing; on a mismatch, go back to the last `*` and let it
    /// take one more character. Only the last `*` is ever retried (an earlier one could only
    /// take more of what the later one would), so the time is at most pattern length times
    /// text length, never exponential.
    fn matches(&self, text: &str) -> bool {
        let pattern = &*self.0;
        let (mut p, mut t) = (0, 0);
        // After the last `*` seen: where the pattern goes on, and where in the text it goes on
        // on the next retry.
        let mut star: Option<(usize, usize)> = None;
        loop {
            let want = pattern[p..].chars().next();
            let have = text[t..].chars().next();
            match (want, have) {
                (Some('*'), _) => {
                    p += 1;
                    star = Some((p, t));
                    continue;
                }
                (Some('?'), Some(c)) => {
                    p += 1;
                    t += c.len_utf8();
                    continue;
                }
                (Some(w), Some(c)) if w == c => {
                    p += w.len_utf8();
                    t += c.len_utf8();
                    continue;
                }
                (None, None) => return true,
                _ => {}
            }
            // A mismatch: the last `*` takes one more character, if there is one.
            let Some((star_p, star_t)) = star else {
                return false;
            };
            let Some(c) = text[star_t..].chars().next() else {
                return false;
            };
            p = star_p;
            t = star_t + c.len_utf8();
            star = Some((p, t));
        }
    }
}

// === the file's shape ===

/// A rule as written, with where each part is.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    peers: Spanned<Vec<Spanned<String>>>,
    secrets: Spanned<Vec<Spanned<String>>>,
}

/// The top-level keys.
const TOP_KEYS: &[&str] = &["rules"];

/// Deserializes the whole file: a mapping with one key, `rules`. While a rule is being read,
/// `in_rule` holds its index, so that an error inside it names the rule.
struct FileSeed<'a> {
    in_rule: &'a Cell<Option<usize>>,
}

/// Deserializes the `rules` list, noting the index of the rule being read.
struct RulesSeed<'a> {
    in_rule: &'a Cell<Option<usize>>,
}

/// The one top-level key, `rules`.
struct TopKey;

impl<'de> DeserializeSeed<'de> for FileSeed<'_> {
    type Value = Vec<Spanned<RawRule>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_struct("RulesFile", TOP_KEYS, self)
    }
}

impl<'de> Visitor<'de> for FileSeed<'_> {
    type Value = Vec<Spanned<RawRule>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping with the key `rules`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut rules = None;
        while let Some(TopKey) = map.next_key()? {
            if rules.is_some() {
                return Err(de::Error::duplicate_field("rules"));
            }
            rules = Some(map.next_value_seed(RulesSeed {
                in_rule: self.in_rule,
            })?);
        }
        rules.ok_or_else(|| de::Error::missing_field("rules"))
    }
}

impl<'de> DeserializeSeed<'de> for RulesSeed<'_> {
    type Value = Vec<Spanned<RawRule>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RulesSeed<'_> {
    type Value = Vec<Spanned<RawRule>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of rules")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut rules = Vec::new();
        loop {
            self.in_rule.set(Some(rules.len()));
            match seq.next_element()? {
                Some(rule) => rules.push(rule),
                None => break,
            }
        }
        self.in_rule.set(None);
        Ok(rules)
    }
}

impl<'de> serde::Deserialize<'de> for TopKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl Visitor<'_> for KeyVisitor {
            type Value = TopKey;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`rules`")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<TopKey, E> {
                match key {
                    "rules" => Ok(TopKey),
                    other => Err(E::unknown_field(other, TOP_KEYS)),
                }
            }
        }

        deserializer.deserialize_identifier(KeyVisitor)
    }
}

// === impl RulesDriver ===

impl Future for RulesDriver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for RulesDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RulesDriver")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Reloads the file on every (debounced) change in its directory and every [`RECHECK`], until
/// every [`RulesFile`] is gone.
async fn drive(
    mut reload: Reload,
    mut events: mpsc::Receiver<()>,
    rules: watch::Sender<Arc<Rules>>,
) {
    let mut recheck = tokio::time::interval_at(Instant::now() + RECHECK, RECHECK);
    recheck.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // First: watch the directory, and read what changed since `load` read the file. Then
    // again after every change and every `RECHECK`.
    loop {
        let Some((back, new)) = blocking(move || {
            let new = reload.check();
            (reload, new)
        })
        .await
        else {
            return;
        };
        reload = back;
        if let Some(new) = new {
            rules.send_replace(new);
        }
        tokio::select! {
            () = rules.closed() => return,
            Some(()) = events.recv() => {
                // Let the save settle: one save is one read.
                tokio::time::sleep(DEBOUNCE).await;
                while events.try_recv().is_ok() {}
            }
            _ = recheck.tick() => {}
        }
    }
}

/// The driver's state: what it watches and what it last read.
struct Reload {
    /// The file, absolute.
    path: PathBuf,
    /// Its directory, watched.
    dir: PathBuf,
    /// The content of the rules in force.
    active: Arc<[u8]>,
    /// What the last read found, so that each content or error is reported once.
    seen: Seen,
    /// Wakes the driver: given to the watcher.
    events: mpsc::Sender<()>,
    /// The watcher, once started.
    watcher: Option<RecommendedWatcher>,
    /// The directory (device and inode) the watcher watches, if any.
    watched: Option<(u64, u64)>,
    /// Why the directory cannot be watched, as reported.
    watch_failure: Option<String>,
}

/// What the last read of the file found.
#[derive(PartialEq, Eq)]
enum Seen {
    /// This content (valid or not).
    Content(Arc<[u8]>),
    /// It could not be read, for this reason.
    Unreadable(String),
}

// === impl Reload ===

impl Reload {
    /// Watches the directory as it is now, then reads the file: the new rules if it changed
    /// and is valid. Blocking.
    fn check(&mut self) -> Option<Arc<Rules>> {
        self.watch_dir();
        self.reread()
    }

    /// Reads the file: the new rules if it changed and is valid; logs what it finds. Blocking.
    fn reread(&mut self) -> Option<Arc<Rules>> {
        let content = match read(&self.path) {
            Ok(content) => content,
            Err(problem) => {
                let error = RulesError::new(&self.path, problem);
                let reason = with_sources(&error);
                if self.seen != Seen::Unreadable(reason.clone()) {
                    let error: &(dyn std::error::Error + 'static) = &error;
                    tracing::warn!(
                        error,
                        "cannot read the policy rules file; keeping the last good rules"
                    );
                    self.seen = Seen::Unreadable(reason);
                }
                return None;
            }
        };
        if self.seen == Seen::Content(Arc::clone(&content)) {
            return None;
        }
        self.seen = Seen::Content(Arc::clone(&content));
        let path = self.path.to_string_lossy();
        let path = Untrusted::new(&path, SHOWN_PATH_CHARS);
        if content == self.active {
            tracing::info!(%path, "policy rules file is back as it was; the rules are unchanged");
            return None;
        }
        match Rules::parse(&self.path, &content) {
            Ok(rules) => {
                let count = rules.rules.len();
                tracing::info!(%path, rules = count, "policy reloaded: {count} rules");
                self.active = content;
                Some(Arc::new(rules))
            }
            Err(error) => {
                let error: &(dyn std::error::Error + 'static) = &error;
                tracing::warn!(
                    error,
                    "policy rules file refused; keeping the last good rules"
                );
                None
            }
        }
    }

    /// Starts the watcher if it is not, and watches the directory if it is not watched as it
    /// is now (it was replaced, or it is back). Failures are logged once; the periodic read
    /// goes on. Blocking.
    fn watch_dir(&mut self) {
        let watcher = match &mut self.watcher {
            Some(watcher) => watcher,
            None => match notify::recommended_watcher(on_event(self.events.clone())) {
                Ok(watcher) => self.watcher.insert(watcher),
                Err(error) => {
                    self.watch_failed(&error);
                    return;
                }
            },
        };
        let now = fs::metadata(&self.dir)
            .ok()
            .filter(fs::Metadata::is_dir)
            .map(|metadata| (metadata.dev(), metadata.ino()));
        if now == self.watched {
            return;
        }
        if self.watched.take().is_some() {
            // Gone with the directory already, if it was removed.
            let _ = watcher.unwatch(&self.dir);
        }
        if now.is_none() {
            // No directory: the file cannot be read either, and that is reported.
            return;
        }
        match watcher.watch(&self.dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.watched = now;
                if self.watch_failure.take().is_some() {
                    let dir = self.dir.to_string_lossy();
                    tracing::info!(
                        dir = %Untrusted::new(&dir, SHOWN_PATH_CHARS),
                        "watching the policy rules file's directory again"
                    );
                }
            }
            Err(error) => self.watch_failed(&error),
        }
    }

    /// Logs, once for each reason, that the directory cannot be watched.
    fn watch_failed(&mut self, error: &notify::Error) {
        // notify's message may name the path: outside text.
        let reason = Untrusted::new(&error.to_string(), SHOWN_PATH_CHARS).to_string();
        if self.watch_failure.as_ref() == Some(&reason) {
            return;
        }
        let dir = self.dir.to_string_lossy();
        tracing::warn!(
            dir = %Untrusted::new(&dir, SHOWN_PATH_CHARS),
            error = %reason,
            every = ?RECHECK,
            "cannot watch the policy rules file's directory; reading the file periodically"
        );
        self.watch_failure = Some(reason);
    }
}

/// The notify callback (on notify's thread): wakes the driver on anything but reads.
fn on_event(events: mpsc::Sender<()>) -> impl FnMut(notify::Result<notify::Event>) + Send {
    move |event| {
        let relevant = match &event {
            // Opening and reading files, which every check does, changes nothing.
            Ok(event) => match event.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                EventKind::Access(_) => false,
                _ => true,
            },
            // Lost events: anything may have changed.
            Err(_) => true,
        };
        if relevant {
            // Full: a wake-up is pending already.
            let _ = events.try_send(());
        }
    }
}

/// `error` and each of its sources, `: `-separated.
fn with_sources(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::time::Instant as StdInstant;

    use futures_util::FutureExt as _;
    use sds_test_util::logs::Captured;

    use super::*;
    use crate::policy::{CertificateIdentity, UnixCredentials};

    const PATH: &str = "/etc/sds/rules.yaml";

    fn parse(text: &str) -> Result<Rules, RulesError> {
        Rules::parse(Path::new(PATH), text.as_bytes())
    }

    fn refused(text: &str) -> RulesError {
        match parse(text) {
            Ok(rules) => panic!("accepted {} rules of {text:?}", rules.rules.len()),
            Err(error) => error,
        }
    }

    fn unix(uid: u32, gid: u32) -> Peer {
        Peer::unix(UnixCredentials {
            uid,
            gid,
            pid: Some(7),
        })
    }

    fn tls(uris: &[&str], dns_names: &[&str]) -> Peer {
        Peer::tcp("127.0.0.1:5000".parse().expect("an address")).with_certificate(
            CertificateIdentity {
                uris: uris.iter().map(|s| (*s).to_owned()).collect(),
                dns_names: dns_names.iter().map(|s| (*s).to_owned()).collect(),
            },
        )
    }

    fn decide(rules: &Rules, peer: &Peer, name: &str) -> Decision {
        rules.decide(peer, &SecretName::new(name).expect("a valid name"))
    }

    const EXAMPLE: &str = r#"
rules:
  - peers: ["spiffe://cluster.local/ns/a/sa/*", "uid:1000"]   # globs over peer identities
    secrets: ["a-*", "kubernetes://a/*"]
  - peers: ["dns:gateway.example.com", "gid:1337"]
    secrets: ["*"]
"#;

    #[test]
    fn grants_the_union_of_matching_rules() {
        let rules = parse(EXAMPLE).expect("valid");
        assert_eq!(rules.rules.len(), 2);
        let gw = tls(&["spiffe://cluster.local/ns/a/sa/gw"], &[]);
        assert!(decide(&rules, &gw, "a-cred").is_allowed());
        assert!(decide(&rules, &gw, "kubernetes://a/x/y").is_allowed());
        assert_eq!(
            decide(&rules, &gw, "b-cred"),
            Decision::deny("no rule grants \"b-cred\" to spiffe://cluster.local/ns/a/sa/gw")
        );
        // uid 1000 by the first rule; with gid 1337, everything by the second too.
        assert!(decide(&rules, &unix(1000, 1), "a-x").is_allowed());
        assert!(!decide(&rules, &unix(1000, 1), "b-x").is_allowed());
        assert!(decide(&rules, &unix(1000, 1337), "b-x").is_allowed());
        assert!(decide(&rules, &unix(5, 1337), "anything").is_allowed());
        let both = tls(&["spiffe://other/x"], &["gateway.example.com"]);
        assert!(decide(&rules, &both, "b-cred").is_allowed());
        assert_eq!(
            decide(&rules, &unix(5, 6), "a-x"),
            Decision::deny("no rule grants \"a-x\" to uid:5 gid:6")
        );
        let nobody = Peer::tcp("127.0.0.1:1".parse().expect("an address"));
        assert_eq!(
            decide(&rules, &nobody, "a-x"),
            Decision::deny("no rule grants \"a-x\" to a peer with no identity")
        );
    }

    #[test]
    fn each_identity_form_matches_its_own_kind_only() {
        let rules =
            parse(r#"{"rules": [{"peers": ["uid:0", "dns:*.example.com"], "secrets": ["root"]}]}"#)
                .expect("valid JSON");
        assert!(decide(&rules, &unix(0, 0), "root").is_allowed());
        assert!(!decide(&rules, &unix(1, 0), "root").is_allowed());
        // A certificate naming `uid:0` (a valid URI) or a DNS SAN `uid:0` is not uid 0.
        assert!(!decide(&rules, &tls(&["uid:0"], &["uid:0"]), "root").is_allowed());
        assert!(decide(&rules, &tls(&[], &["gw.example.com"]), "root").is_allowed());
        assert!(!decide(&rules, &tls(&["dns:gw.example.com"], &[]), "root").is_allowed());
    }

    #[test]
    fn a_denial_names_a_few_identities_escaped() {
        let rules = parse("rules: [{peers: [uid:1], secrets: [x]}]").expect("valid");
        let many = tls(
            &["spiffe://a\n", "b://1", "c://2", "d://3", "e://4"],
            &["f"],
        );
        assert_eq!(
            decide(&rules, &many, "y"),
            Decision::deny("no rule grants \"y\" to spiffe://a\\n b://1 c://2 d://3 (and 2 more)")
        );
    }

    #[test]
    fn refusals_name_the_rule_line_and_problem() {
        let cases: &[(&str, &str)] = &[
            (
                "rules:\n  - peers: [uid:1]\n    secrets: [a]\n  - peers: [\"user:1000\"]\n    secrets: [a]\n",
                "policy rules file /etc/sds/rules.yaml, rule 2 (line 4, column 13): peer pattern \
                 `user:1000` is not uid:N, gid:N, dns:NAME or a URI",
            ),
            (
                "rules:\n  - peers: [uid:abc]\n    secrets: [a]\n",
                "rule 1 (line 2, column 13): peer pattern `uid:abc` is not uid:N with N a number",
            ),
            (
                "rules:\n  - peers: [gid:99999999999]\n    secrets: [a]\n",
                "rule 1 (line 2, column 13): peer pattern `gid:99999999999` is not gid:N",
            ),
            (
                "rules:\n  - peers: [\"dns:\"]\n    secrets: [a]\n",
                "peer pattern `dns:` has no name after `dns:`",
            ),
            (
                "rules:\n  - peers: [\"*://x\"]\n    secrets: [a]\n",
                "peer pattern `*://x` is not uid:N",
            ),
            (
                "rules:\n  - peers: [uid:1]\n    secrets: [\"a b\"]\n",
                "rule 1 (line 3, column 15): secret pattern `a b` has whitespace",
            ),
            (
                "rules:\n  - peers: [uid:1]\n    secrets: [\"\"]\n",
                "secret pattern `` is empty",
            ),
            (
                "rules:\n  - peers: [uid:1]\n    secrets: [a]\n  - peers: [uid:1]\n    secret: [a]\n",
                "rule 2 (line 5, column 5): unknown field `secret`, expected one of peers, secrets",
            ),
            (
                "rules:\n  - peers: [uid:1]\n",
                "rule 1 (line 2, column 5): missing field `secrets`",
            ),
            (
                "rules:\n  - peers: []\n    secrets: [a]\n",
                "rule 1 (line 2, column 12): `peers` is empty",
            ),
            (
                "rules: []\nextra: 1\n",
                "line 2, column 1: unknown field `extra`",
            ),
            (
                "rules: []\n",
                "policy rules file /etc/sds/rules.yaml: it has no rules",
            ),
            ("  \n", "it has no rules"),
            (
                "rules:\n  - peers: [a\n    secrets: [b]\n",
                "rule 1 (line 3, column 12): ",
            ),
            (
                "rule:\n",
                "line 1, column 1: unknown field `rule`, expected one of rules",
            ),
            (
                "rules: []\n---\nrules: []\n",
                "line 3, column 1: multiple YAML documents",
            ),
        ];
        for (text, expected) in cases {
            let error = refused(text).to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
        let not_utf8 =
            Rules::parse(Path::new(PATH), b"rules:\n  - peers: [\xff]\n").expect_err("refused");
        assert_eq!(
            not_utf8.to_string(),
            "policy rules file /etc/sds/rules.yaml, line 2, column 13: it is not UTF-8 text"
        );
        assert_eq!((not_utf8.line(), not_utf8.column()), (Some(2), Some(13)));
    }

    #[test]
    fn refusals_quote_little_of_the_file_escaped() {
        let long = format!(
            "rules:\n  - peers: [\"user:{}\\n\"]\n    secrets: [a]\n",
            "x".repeat(5000)
        );
        let error = refused(&long).to_string();
        assert!(error.len() < 400, "{error}");
        assert!(
            error.contains("more bytes)") && !error.contains('\n'),
            "{error}"
        );
        let key = format!("rules: []\n\"{}\\u001b\": 1\n", "k".repeat(5000));
        let error = refused(&key).to_string();
        assert!(error.len() < 400 && !error.contains('\u{1b}'), "{error}");
    }

    #[test]
    fn too_many_rules_names_the_first_over_the_limit() {
        let mut text = String::from("rules:\n");
        for _ in 0..=MAX_RULES {
            text.push_str("- {peers: [uid:1], secrets: [a]}\n");
        }
        let error = refused(&text);
        assert_eq!(error.rule(), Some(MAX_RULES + 1));
        assert_eq!(error.line(), Some(MAX_RULES + 2));
        assert!(
            error
                .to_string()
                .ends_with("it has 10001 rules, more than the limit of 10000")
        );
    }

    #[test]
    fn an_alias_bomb_is_refused() {
        let mut text = String::from("x: &a0 [a, a, a, a, a, a, a, a, a, a]\n");
        for i in 1..10 {
            let prior = format!("*a{}", i - 1);
            text.push_str(&format!("x{i}: &a{i} [{}]\n", vec![prior; 10].join(", ")));
        }
        text = format!("rules:\n  - peers: *a9\n    secrets: [a]\n{text}");
        assert!(parse(&text).is_err());
    }

    #[test]
    fn globs() {
        let matches = |pattern: &str, text: &str| Glob::new(pattern).matches(text);
        assert!(matches("*", ""));
        assert!(matches("*", "kubernetes://a/b/c"));
        assert!(matches("kubernetes://a/*", "kubernetes://a/x"));
        assert!(matches("kubernetes://a/*", "kubernetes://a/x/y"));
        assert!(!matches("kubernetes://a/*", "kubernetes://b/x"));
        assert!(matches("a-?", "a-1") && !matches("a-?", "a-") && !matches("a-?", "a-12"));
        assert!(matches("?", "é") && !matches("??", "é"));
        assert!(matches("a*b*c", "abc") && matches("a*b*c", "aXbYbZc"));
        assert!(!matches("a*b*c", "aXbYbZ"));
        assert!(matches("*.example.com", "gw.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(matches("[a]", "[a]") && !matches("[a]", "a"));
        assert!(matches("a\\*", "a\\xyz"));
        assert!(matches("***a**", "bab") && !matches("***a**", "bbb"));
        assert!(!matches("", "a") && matches("", ""));
        assert!(matches("uid", "uid") && !matches("uid", "uidx") && !matches("uidx", "uid"));
    }

    #[test]
    fn pathological_globs_are_fast() {
        let text = "a".repeat(100_000);
        let started = StdInstant::now();
        assert!(!Glob::new("*a*a*a*a*b").matches(&text));
        assert!(!Glob::new("*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b").matches(&text));
        assert!(Glob::new("*a*a*a*a*a").matches(&text));
        assert!(!Glob::new(&"*a".repeat(50).replace("a*", "a*?")).matches(&text[..60]));
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    }

    #[test]
    fn peer_patterns() {
        for ok in [
            "uid:1000",
            "uid:1*",
            "uid:*",
            "gid:?",
            "dns:*",
            "spiffe://td/*",
            "x-y.z+1://a",
        ] {
            assert!(PeerPattern::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "user:1000",
            "uid:abc",
            "uid:",
            "uid:4294967296",
            "gid:-1",
            "spiffe:/x",
            "1a://x",
            "://x",
            "spiffe://",
            "*",
            "UID:1",
            "dns:",
            "uid:1 ",
        ] {
            assert!(PeerPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn changed_resolves_at_the_next_reload_only() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("rules.yaml");
        fs::write(&path, "rules: [{peers: [uid:1], secrets: [a]}]").expect("write");
        let (policy, _driver) = RulesFile::load(&path).await.expect("valid");
        assert_eq!(policy.rule_count(), 1);
        let debug = format!("{policy:?}");
        assert!(
            debug.contains("rules: 1") && !debug.contains("uid"),
            "{debug}"
        );
        // Not run: nothing changes, and a later `changed` is not woken by an earlier change.
        assert!(policy.changed().now_or_never().is_none());
    }

    #[test]
    fn a_reload_logs_once_per_content() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("rules.yaml");
        let good = "rules: [{peers: [uid:1], secrets: [a]}]\n";
        fs::write(&path, good).expect("write");
        let (path, content, _rules) = load_blocking(&path).expect("valid");
        let (events, _rx) = mpsc::channel(1);
        let mut reload = Reload {
            dir: dir.path().to_owned(),
            path: path.clone(),
            active: Arc::clone(&content),
            seen: Seen::Content(content),
            events,
            watcher: None,
            watched: None,
            watch_failure: None,
        };
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            assert!(reload.reread().is_none(), "unchanged");
            fs::write(&path, "rules:\n  - peers: [user:1]\n    secrets: [a]\n").expect("write");
            assert!(reload.reread().is_none(), "refused");
            assert!(reload.reread().is_none(), "refused again");
            let text = captured.text();
            assert_eq!(text.matches("WARN").count(), 1, "{text}");
            assert!(
                text.contains("rule 1 (line 2, column 13): peer pattern `user:1000`")
                    || text.contains("rule 1 (line 2, column 13): peer pattern `user:1`"),
                "{text}"
            );
            fs::remove_file(&path).expect("remove");
            assert!(reload.reread().is_none(), "gone");
            assert!(reload.reread().is_none(), "still gone");
            let text = captured.text();
            assert_eq!(
                text.matches("cannot read the policy rules file").count(),
                1,
                "{text}"
            );
            fs::write(&path, good).expect("write");
            assert!(reload.reread().is_none(), "back as it was");
            assert!(captured.text().contains("back as it was"));
            fs::write(
                &path,
                "rules: [{peers: [uid:1, uid:2], secrets: [a]}, {peers: [uid:3], secrets: [b]}]",
            )
            .expect("write");
            let new = reload.reread().expect("reloaded");
            assert_eq!(new.rules.len(), 2);
            assert!(captured.text().contains("policy reloaded: 2 rules"));
            assert!(reload.reread().is_none(), "unchanged");
        });
    }
}
