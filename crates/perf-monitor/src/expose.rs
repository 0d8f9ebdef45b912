//! Exposition: the Prometheus text format (0.0.4) and OpenMetrics 1.0.
//!
//! Each histogram appears twice: as a `histogram` family with cumulative buckets over the
//! registry's whole life (bounds at powers of four of the base unit: 1.024 µs to 68.7 s for
//! durations), and as a `summary` family named `<name>_window` with the 0.5, 0.95 and 0.99
//! quantiles, `_sum` and `_count` over the window. Sums are estimated from the buckets (within
//! 6.25%); counts are exact.

use std::fmt::Write;

use crate::histogram::{BUCKETS, bucket_range, estimated_sum};
use crate::registry::{Kind, Labels, Registry, Series, Unit};

/// Which text format to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4.
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    /// The format a client asks for in its `Accept` header: OpenMetrics when it names it.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }
}

/// The power-of-two exponents (of the base unit) where histogram buckets end: every other
/// power of two from 2^10 to 2^36.
const BOUND_EXPONENTS: std::ops::RangeInclusive<u32> = 5..=18;

impl Registry {
    /// Renders every metric in `format`. Ticks first, so that windows are current.
    pub fn render(&self, format: Format) -> String {
        self.tick();
        let families = self.inner.families.read();
        let series: usize = families.values().map(|family| family.series.len()).sum();
        let mut out = String::with_capacity(256 + series * 1024);
        for (name, family) in families.iter() {
            match family.kind {
                Kind::Counter => {
                    // The 0.0.4 format names the family by its samples (`_total` included);
                    // OpenMetrics names it without the suffix.
                    let total = format!("{name}_total");
                    let family_name = match format {
                        Format::Prometheus => total.as_str(),
                        Format::OpenMetrics => name.as_str(),
                    };
                    header(&mut out, format, family_name, "counter", &family.help);
                    for (labels, series) in &family.series {
                        if let Series::Counter(value) = series {
                            let value = value.load(std::sync::atomic::Ordering::Relaxed);
                            let labels = label_text(labels);
                            line(&mut out, &total, &labels, None, Value::Count(value));
                        }
                    }
                }
                Kind::Gauge => {
                    header(&mut out, format, name, "gauge", &family.help);
                    for (labels, series) in &family.series {
                        if let Series::Gauge(bits) = series {
                            let value =
                                f64::from_bits(bits.load(std::sync::atomic::Ordering::Relaxed));
                            line(&mut out, name, &label_text(labels), None, Value::Real(value));
                        }
                    }
                }
                Kind::Histogram(unit) => {
                    histogram(&mut out, format, name, &family.help, unit, &family.series)
                }
            }
        }
        if format == Format::OpenMetrics {
            out.push_str("# EOF\n");
        }
        out
    }
}

/// A sample's value: counts are written as integers.
#[derive(Clone, Copy)]
enum Value {
    Count(u64),
    Real(f64),
}

fn histogram(
    out: &mut String,
    format: Format,
    name: &str,
    help: &str,
    unit: Unit,
    series: &std::collections::BTreeMap<Labels, Series>,
) {
    let scale = unit.scale();
    // The bounds' text, the bucket each bound ends after, and the names: once per family.
    let mut bounds = Vec::new();
    let mut index = 0;
    for exponent in BOUND_EXPONENTS {
        let bound = 1u64 << (2 * exponent);
        // Buckets are exact at powers of two: every bucket below `bound` ends below it.
        while index < BUCKETS && bucket_range(index).1 < bound {
            index += 1;
        }
        bounds.push((index, number(bound as f64 / scale)));
    }
    let (bucket, sum, count) =
        (format!("{name}_bucket"), format!("{name}_sum"), format!("{name}_count"));
    header(out, format, name, "histogram", help);
    for (labels, series) in series {
        let Series::Histogram(core) = series else { continue };
        let labels = label_text(labels);
        let counts = core.cumulative();
        let mut cumulative = 0u64;
        let mut done = 0;
        for (end, bound) in &bounds {
            cumulative += counts[done..*end].iter().sum::<u64>();
            done = *end;
            line(out, &bucket, &labels, Some(("le", bound)), Value::Count(cumulative));
        }
        let total: u64 = cumulative + counts[done..].iter().sum::<u64>();
        line(out, &bucket, &labels, Some(("le", "+Inf")), Value::Count(total));
        line(out, &sum, &labels, None, Value::Real(estimated_sum(&counts) / scale));
        line(out, &count, &labels, None, Value::Count(total));
    }
    let window = format!("{name}_window");
    let (window_sum, window_count) = (format!("{window}_sum"), format!("{window}_count"));
    header(out, format, &window, "summary", &format!("{help} (over the window)"));
    for (labels, series) in series {
        let Series::Histogram(core) = series else { continue };
        let labels = label_text(labels);
        let merged = core.window();
        for (q, text) in [(0.5, "0.5"), (0.95, "0.95"), (0.99, "0.99")] {
            let value = Value::Real(merged.quantile(q) as f64 / scale);
            line(out, &window, &labels, Some(("quantile", text)), value);
        }
        let total = Value::Real(estimated_sum(&merged.buckets) / scale);
        line(out, &window_sum, &labels, None, total);
        line(out, &window_count, &labels, None, Value::Count(merged.count));
    }
}

/// A series' labels as they appear between the braces: `a="x",b="y"`, escaped.
fn label_text(labels: &Labels) -> String {
    let mut text = String::new();
    for (label, value) in labels {
        if !text.is_empty() {
            text.push(',');
        }
        text.push_str(label);
        text.push_str("=\"");
        escape_label_into(&mut text, value);
        text.push('"');
    }
    text
}

fn line(out: &mut String, name: &str, labels: &str, extra: Option<(&str, &str)>, value: Value) {
    out.push_str(name);
    if !labels.is_empty() || extra.is_some() {
        out.push('{');
        out.push_str(labels);
        if let Some((label, text)) = extra {
            if !labels.is_empty() {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            out.push_str(text);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    match value {
        Value::Count(count) => {
            let _ = write!(out, "{count}");
        }
        Value::Real(real) => write_number(out, real),
    }
    out.push('\n');
}

fn header(out: &mut String, format: Format, name: &str, kind: &str, help: &str) {
    if !help.is_empty() {
        let _ = writeln!(out, "# HELP {name} {}", escape_help(help, format));
    }
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A number as both formats write it: `+Inf`, `-Inf`, `NaN`, or Rust's shortest round-trip
/// form.
fn write_number(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value == f64::INFINITY {
        out.push_str("+Inf");
    } else if value == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{value}");
    }
}

fn number(value: f64) -> String {
    let mut text = String::new();
    write_number(&mut text, value);
    text
}

fn escape_label_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(help: &str, format: Format) -> String {
    let mut escaped = String::with_capacity(help.len());
    for c in help.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '\n' => escaped.push_str("\\n"),
            '"' if format == Format::OpenMetrics => escaped.push_str("\\\""),
            c => escaped.push(c),
        }
    }
    escaped
}
