//! How the inventory's foreign and std types are written with the `serde` feature: times as
//! whole Unix seconds, versions, names and sds-core enums as their `Display` text.

use std::{
    fmt::Display,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serializer;

/// Whole seconds since the Unix epoch; a time before it is 0.
pub(super) fn unix_seconds<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// [`unix_seconds`], or `null`.
pub(super) fn option_unix_seconds<S: Serializer>(
    time: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => unix_seconds(time, s),
        None => s.serialize_none(),
    }
}

/// The value's `Display` text.
pub(super) fn display<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// [`display`], or `null`.
pub(super) fn option_display<T: Display, S: Serializer>(
    value: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => s.collect_str(value),
        None => s.serialize_none(),
    }
}
