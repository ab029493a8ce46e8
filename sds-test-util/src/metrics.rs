//! Reading a `/metrics` page the way a Prometheus server does, to assert on samples.

use std::collections::HashMap;

/// Parses `body` (Prometheus text format 0.0.4) with a Prometheus text parser: each sample by
/// `name{k="v",...}`, its labels sorted by name (`name` alone without labels).
///
/// # Panics
/// If the text does not parse, or holds a sample that is not a counter, gauge or untyped
/// value (the SDS server exports no histograms or summaries).
pub fn samples(body: &str) -> HashMap<String, f64> {
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("/metrics does not parse ({e}):\n{body}"));
    parsed
        .samples
        .into_iter()
        .map(|sample| {
            let mut labels: Vec<String> = sample
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{v}\""))
                .collect();
            labels.sort();
            let key = if labels.is_empty() {
                sample.metric
            } else {
                format!("{}{{{}}}", sample.metric, labels.join(","))
            };
            let value = match sample.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("unexpected sample {other:?}"),
            };
            (key, value)
        })
        .collect()
}
