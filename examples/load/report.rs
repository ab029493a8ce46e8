//! Figures of a load run: the markdown table (ours, bare, ours/bare) and the latency plot.

use std::{fmt::Write as _, path::Path, time::Duration};

use crate::serve::Kind;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum NodeKind {
    /// id, cluster and user agent only.
    Minimal,
    /// Envoy 1.40's whole `Node`, about 61 KB with some 500 extension entries.
    Envoy,
}

impl NodeKind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            NodeKind::Minimal => "minimal",
            NodeKind::Envoy => "envoy",
        }
    }
}

impl std::fmt::Display for NodeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// One rotation, as measured.
#[derive(Clone, Debug)]
pub(crate) struct Rotation {
    /// Streams subscribed to the rotated credential.
    pub(crate) expected: usize,
    /// Until every subscriber held the new version.
    pub(crate) all_hold: Option<Duration>,
    /// Until the server had sent its last message for it.
    pub(crate) sent: Duration,
    pub(crate) messages: u64,
    pub(crate) encodes: u64,
    /// Server CPU from the rotation until it was idle again (ACKs handled).
    pub(crate) cpu_ns: u64,
}

/// One server at one N with one node.
#[derive(Debug)]
pub(crate) struct Trial {
    pub(crate) kind: Kind,
    pub(crate) n: usize,
    pub(crate) node: NodeKind,
    pub(crate) conns: usize,
    /// Bytes of resident memory per connection (before any stream).
    pub(crate) mem_per_conn: f64,
    /// Bytes of resident memory per idle stream (subscribed and ACKed).
    pub(crate) mem_per_stream: f64,
    /// (rotation, RSS) early and at the end of the first phase.
    pub(crate) rss_early: Option<(usize, u64)>,
    pub(crate) rss_late: Option<(usize, u64)>,
    pub(crate) all: Vec<Rotation>,
    pub(crate) one_of_k: Vec<Rotation>,
    pub(crate) failed_streams: usize,
    pub(crate) errors: Vec<String>,
}

impl Trial {
    pub(crate) fn new(kind: Kind, n: usize, node: NodeKind) -> Trial {
        Trial {
            kind,
            n,
            node,
            conns: 0,
            mem_per_conn: 0.0,
            mem_per_stream: 0.0,
            rss_early: None,
            rss_late: None,
            all: Vec::new(),
            one_of_k: Vec::new(),
            failed_streams: 0,
            errors: Vec::new(),
        }
    }

    pub(crate) fn summary(&self) -> String {
        let mut s = format!(
            "all-hold p50 {} ms, p99 {} ms, cpu {} us/msg, {} KiB/stream, {} KiB/conn, {} rotations, {} one-of-K",
            fmt(self.all_hold(0.5)),
            fmt(self.all_hold(0.99)),
            fmt(cpu_per_message(&self.all)),
            fmt(Some(self.mem_per_stream / 1024.0)),
            fmt(Some(self.mem_per_conn / 1024.0)),
            self.all.len(),
            self.one_of_k.len()
        );
        for e in &self.errors {
            let _ = write!(s, "; ERROR: {e}");
        }
        s
    }

    fn all_hold(&self, q: f64) -> Option<f64> {
        quantile(self.all.iter().filter_map(|r| r.all_hold), q)
    }

    /// KiB of RSS growth between the early and the late reading.
    fn growth(&self) -> Option<f64> {
        let ((_, early), (_, late)) = (self.rss_early?, self.rss_late?);
        Some((late as f64 - early as f64) / 1024.0)
    }
}

/// Milliseconds at quantile `q` (nearest rank).
fn quantile(samples: impl Iterator<Item = Duration>, q: f64) -> Option<f64> {
    let mut v: Vec<f64> = samples.map(|d| d.as_secs_f64() * 1e3).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

fn cpu_per_message(rotations: &[Rotation]) -> Option<f64> {
    let messages: u64 = rotations.iter().map(|r| r.messages).sum();
    let cpu: u64 = rotations.iter().map(|r| r.cpu_ns).sum();
    (messages > 0).then(|| cpu as f64 / messages as f64 / 1e3)
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// Messages per rotation: "N" when every rotation sent the same count, else "min–max".
fn messages(rotations: &[Rotation]) -> Option<String> {
    let min = rotations.iter().map(|r| r.messages).min()?;
    let max = rotations.iter().map(|r| r.messages).max()?;
    let exact = rotations.iter().all(|r| r.messages == r.expected as u64);
    let mark = if exact { "" } else { " (≠ subscribers)" };
    Some(if min == max {
        format!("{min}{mark}")
    } else {
        format!("{min}–{max}{mark}")
    })
}

/// A metric: its name, unit, and how to read it off a trial.
struct Metric {
    name: &'static str,
    value: fn(&Trial) -> Option<f64>,
    /// Shown as text (counts) rather than as a ratio.
    text: Option<fn(&Trial) -> Option<String>>,
}

fn metrics() -> Vec<Metric> {
    fn m(name: &'static str, value: fn(&Trial) -> Option<f64>) -> Metric {
        Metric {
            name,
            value,
            text: None,
        }
    }
    vec![
        m("all hold new version, p50 (ms)", |t| t.all_hold(0.5)),
        m("all hold new version, p99 (ms)", |t| t.all_hold(0.99)),
        m("server sent last message, p50 (ms)", |t| {
            quantile(t.all.iter().map(|r| r.sent), 0.5)
        }),
        m("server sent last message, p99 (ms)", |t| {
            quantile(t.all.iter().map(|r| r.sent), 0.99)
        }),
        m("server CPU per pushed message (µs)", |t| {
            cpu_per_message(&t.all)
        }),
        m("memory per idle stream (KiB)", |t| {
            Some(t.mem_per_stream / 1024.0)
        }),
        m("memory per connection (KiB)", |t| {
            Some(t.mem_per_conn / 1024.0)
        }),
        m("RSS growth, rotation 20 → last (KiB)", Trial::growth),
        Metric {
            name: "messages per rotation",
            value: |t| {
                let r = &t.all;
                (!r.is_empty())
                    .then(|| r.iter().map(|r| r.messages).sum::<u64>() as f64 / r.len() as f64)
            },
            text: Some(|t| messages(&t.all)),
        },
        Metric {
            name: "encodes per rotation",
            value: |t| {
                let r = &t.all;
                (!r.is_empty())
                    .then(|| r.iter().map(|r| r.encodes).sum::<u64>() as f64 / r.len() as f64)
            },
            text: Some(|t| {
                let r = &t.all;
                (!r.is_empty()).then(|| {
                    let total: u64 = r.iter().map(|r| r.encodes).sum();
                    format!("{total}/{}", r.len())
                })
            }),
        },
        Metric {
            name: "1 of K: messages per rotation",
            value: |t| {
                let r = &t.one_of_k;
                (!r.is_empty())
                    .then(|| r.iter().map(|r| r.messages).sum::<u64>() as f64 / r.len() as f64)
            },
            text: Some(|t| messages(&t.one_of_k)),
        },
        Metric {
            name: "1 of K: encodes per rotation",
            value: |t| {
                let r = &t.one_of_k;
                (!r.is_empty())
                    .then(|| r.iter().map(|r| r.encodes).sum::<u64>() as f64 / r.len() as f64)
            },
            text: Some(|t| {
                let r = &t.one_of_k;
                (!r.is_empty()).then(|| {
                    let total: u64 = r.iter().map(|r| r.encodes).sum();
                    format!("{total}/{}", r.len())
                })
            }),
        },
        m("1 of K: all hold, p50 (ms)", |t| {
            quantile(t.one_of_k.iter().filter_map(|r| r.all_hold), 0.5)
        }),
        m("1 of K: server CPU per rotation (µs)", |t| {
            let r = &t.one_of_k;
            (!r.is_empty())
                .then(|| r.iter().map(|r| r.cpu_ns).sum::<u64>() as f64 / r.len() as f64 / 1e3)
        }),
        m("1 of K: server CPU per message (µs)", |t| {
            cpu_per_message(&t.one_of_k)
        }),
    ]
}

/// The markdown table: one row per metric and N; per node, ours, bare and ours/bare.
pub(crate) fn table(trials: &[Trial], servers: &[Kind]) -> String {
    let find = |kind, n, node| {
        trials
            .iter()
            .find(|t| t.kind == kind && t.n == n && t.node == node)
    };
    let mut ns: Vec<usize> = trials.iter().map(|t| t.n).collect();
    ns.sort_unstable();
    ns.dedup();
    let mut nodes: Vec<NodeKind> = Vec::new();
    for t in trials {
        if !nodes.contains(&t.node) {
            nodes.push(t.node);
        }
    }
    let both = servers.contains(&Kind::Ours) && servers.contains(&Kind::Bare);
    let mut out = String::new();
    let _ = write!(out, "| metric | N |");
    for node in &nodes {
        for kind in servers {
            let _ = write!(out, " {kind} ({node} node) |");
        }
        if both {
            let _ = write!(out, " ours/bare |");
        }
    }
    out.push('\n');
    let _ = write!(out, "|---|---:|");
    for _ in &nodes {
        for _ in servers {
            out.push_str("---:|");
        }
        if both {
            out.push_str("---:|");
        }
    }
    out.push('\n');
    for metric in metrics() {
        for &n in &ns {
            let _ = write!(out, "| {} | {n} |", metric.name);
            for &node in &nodes {
                for &kind in servers {
                    let cell =
                        find(kind, n, node).map_or("–".to_owned(), |t| match metric.text {
                            Some(text) => text(t).unwrap_or_else(|| "–".to_owned()),
                            None => fmt((metric.value)(t)),
                        });
                    let _ = write!(out, " {cell} |");
                }
                if both {
                    let ours = find(Kind::Ours, n, node).and_then(|t| (metric.value)(t));
                    let bare = find(Kind::Bare, n, node).and_then(|t| (metric.value)(t));
                    let ratio = match (ours, bare) {
                        (Some(o), Some(b)) if b.abs() > f64::EPSILON => format!("{:.2}", o / b),
                        _ => "–".to_owned(),
                    };
                    let _ = write!(out, " {ratio} |");
                }
            }
            out.push('\n');
        }
    }
    let errors: Vec<String> = trials
        .iter()
        .flat_map(|t| {
            t.errors
                .iter()
                .map(move |e| format!("- {} N={} {} node: {e}", t.kind, t.n, t.node))
        })
        .chain(trials.iter().filter(|t| t.failed_streams > 0).map(|t| {
            format!(
                "- {} N={} {} node: {} streams failed",
                t.kind, t.n, t.node, t.failed_streams
            )
        }))
        .collect();
    if !errors.is_empty() {
        out.push_str("\nProblems:\n");
        for e in errors {
            out.push_str(&e);
            out.push('\n');
        }
    }
    out
}

/// A font for the plot's text, if the machine has one of these.
fn font() -> Option<&'static [u8]> {
    const CANDIDATES: [&str; 3] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ];
    let bytes = CANDIDATES.iter().find_map(|p| std::fs::read(p).ok())?;
    Some(Box::leak(bytes.into_boxed_slice()))
}

/// Time until every subscriber holds the new version (p50, and p99 dashed) against N, ours
/// against bare, for each node.
pub(crate) fn plot(trials: &[Trial], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let text = font().is_some_and(|f| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, f).is_ok()
    });
    let points = |kind: Kind, node: NodeKind, q: f64| -> Vec<(f64, f64)> {
        let mut v: Vec<(f64, f64)> = trials
            .iter()
            .filter(|t| t.kind == kind && t.node == node)
            .filter_map(|t| Some((t.n as f64, t.all_hold(q)?)))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    };
    let all: Vec<(f64, f64)> = trials
        .iter()
        .filter_map(|t| Some((t.n as f64, t.all_hold(0.99)?)))
        .collect();
    if all.is_empty() {
        return Err("nothing measured".into());
    }
    let (xmin, xmax) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let ymin = trials
        .iter()
        .filter_map(|t| t.all_hold(0.5))
        .fold(f64::MAX, f64::min);
    let ymax = all.iter().map(|p| p.1).fold(f64::MIN, f64::max);

    let root = BitMapBackend::new(path, (960, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption(
                "Rotation: time until every subscriber holds the new version",
                ("sans-serif", 22),
            )
            .x_label_area_size(45)
            .y_label_area_size(60);
    }
    let mut chart = builder.build_cartesian_2d(
        (xmin * 0.8..xmax * 1.25).log_scale(),
        (ymin * 0.7..ymax * 1.4).log_scale(),
    )?;
    if text {
        chart
            .configure_mesh()
            .x_desc("subscribed streams N")
            .y_desc("ms (solid: p50, dashed: p99)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| {
                if *y >= 10.0 {
                    format!("{y:.0}")
                } else {
                    format!("{y:.1}")
                }
            })
            .draw()?;
    } else {
        chart.configure_mesh().disable_mesh().draw()?;
    }
    let series = [
        (
            Kind::Ours,
            NodeKind::Minimal,
            RGBColor(0, 90, 200),
            "ours, minimal node",
        ),
        (
            Kind::Bare,
            NodeKind::Minimal,
            RGBColor(120, 120, 120),
            "bare tonic, minimal node",
        ),
        (
            Kind::Ours,
            NodeKind::Envoy,
            RGBColor(220, 80, 0),
            "ours, Envoy-sized node",
        ),
        (
            Kind::Bare,
            NodeKind::Envoy,
            RGBColor(0, 0, 0),
            "bare tonic, Envoy-sized node",
        ),
    ];
    for (kind, node, color, label) in series {
        let p50 = points(kind, node, 0.5);
        if p50.is_empty() {
            continue;
        }
        let style = color.stroke_width(3);
        let drawn = chart.draw_series(LineSeries::new(p50.clone(), style))?;
        if text {
            drawn.label(label).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        }
        chart.draw_series(p50.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        let p99 = points(kind, node, 0.99);
        for pair in p99.windows(2) {
            chart.draw_series(DashedLineSeries::new(
                pair.to_vec(),
                6,
                4,
                color.stroke_width(1),
            ))?;
        }
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
