//! What a client is told when it is refused: the one mapping from the protocol's refusals to
//! gRPC statuses, and how client-supplied names are shown in text.

use std::{fmt, sync::Arc};

use sds_core::{Secret, SecretName, Untrusted, Version};
use sds_proto::SECRET_TYPE_URL;
use tonic::Status;

use crate::{
    limits::Exceeded,
    session::{NameView, Refusal, SHOWN_CHARS},
};

/// Most names listed in a log line or an error; the others are counted.
const MAX_NAMES_SHOWN: usize = 10;

/// Maps a refused request to the status that ends its stream (or answers its fetch). Every
/// text in it that came from the client is escaped and cut short already (see [`Refusal`]).
pub(crate) fn refusal(refusal: Refusal) -> Status {
    match refusal {
        Refusal::WrongType(type_url) => Status::invalid_argument(format!(
            "this server only serves {SECRET_TYPE_URL}, not \"{type_url}\""
        )),
        Refusal::InvalidName { shown, problem } => {
            Status::invalid_argument(format!("invalid secret name \"{shown}\": {problem}"))
        }
        Refusal::TooManyNames { count, max } => Status::resource_exhausted(format!(
            "{count} secret names on one stream; at most {max} are served per stream"
        )),
        Refusal::TooManyNameBytes { bytes, max } => Status::resource_exhausted(format!(
            "the secret names on one stream are {bytes} bytes long together; at most {max} \
             bytes are served per stream"
        )),
        Refusal::ServerFull(Exceeded::Names(max)) => Status::resource_exhausted(format!(
            "the server holds its limit of {max} subscriptions; try again later"
        )),
        Refusal::ServerFull(Exceeded::Bytes(max)) => Status::resource_exhausted(format!(
            "the server holds its limit of {max} bytes of subscribed names; try again later"
        )),
        Refusal::ServerFull(Exceeded::ConnectionNames(max)) => Status::resource_exhausted(format!(
            "this connection's streams hold their limit of {max} subscriptions"
        )),
        Refusal::ServerFull(Exceeded::ConnectionBytes(max)) => Status::resource_exhausted(format!(
            "this connection's streams hold their limit of {max} bytes of names"
        )),
    }
}

/// Ends streams, and refuses new ones, once the service shuts down.
pub(crate) fn shutting_down() -> Status {
    Status::unavailable("the SDS server is shutting down; reconnect")
}

/// Names for a log line or an error: the first [`MAX_NAMES_SHOWN`], each escaped and cut
/// short (a valid name is printable ASCII, but may be 1 KiB long and hold quotes), then how
/// many more.
pub(crate) fn shown_names<'a>(names: impl Iterator<Item = &'a SecretName>) -> String {
    let mut out = String::new();
    let mut more = 0usize;
    for (i, name) in names.enumerate() {
        if i >= MAX_NAMES_SHOWN {
            more += 1;
            continue;
        }
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&Untrusted::new(name.as_str(), SHOWN_CHARS).to_string());
    }
    if more > 0 {
        out.push_str(&format!(" and {more} more"));
    }
    out
}

/// The secrets of a response as `name@version, …` for a log line: the first
/// [`MAX_NAMES_SHOWN`], then how many more. Formatted only if the line is written.
pub(crate) struct ShownVersions<'a>(pub(crate) &'a [(SecretName, Arc<Secret>)]);

impl fmt::Display for ShownVersions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_versions(f, self.0.iter().map(|(n, s)| (n, s.version())))
    }
}

/// The versions a client ACKed, `name@version, …`, shown as [`ShownVersions`] shows them.
pub(crate) fn shown_acked<'a>(view: impl Iterator<Item = NameView<'a>>) -> String {
    let acked: Vec<(&SecretName, Version)> =
        view.filter_map(|v| Some((v.name, v.acked?))).collect();
    let mut out = String::new();
    let _ = write_versions(&mut out, acked.into_iter());
    out
}

fn write_versions<'a>(
    out: &mut impl fmt::Write,
    versions: impl ExactSizeIterator<Item = (&'a SecretName, Version)>,
) -> fmt::Result {
    let count = versions.len();
    for (i, (name, version)) in versions.take(MAX_NAMES_SHOWN).enumerate() {
        if i > 0 {
            out.write_str(", ")?;
        }
        write!(
            out,
            "{}@{version}",
            Untrusted::new(name.as_str(), SHOWN_CHARS)
        )?;
    }
    if count > MAX_NAMES_SHOWN {
        write!(out, " and {} more", count - MAX_NAMES_SHOWN)?;
    }
    Ok(())
}
