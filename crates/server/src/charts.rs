//! Small SVG charts for the dashboard, drawn on the server.
//!
//! Why not plotters' SVG backend: it writes fixed colours into the markup and lays text
//! out with font metrics, while the dashboard needs charts that follow the page's light
//! and dark themes (colours come from CSS classes), scale with the viewport (`viewBox`),
//! carry `<title>` tooltips and an accessible name, and contain no inline `style`
//! attributes (the Content-Security-Policy forbids them).
use std::fmt::Write;

const W: f64 = 480.0;
const H: f64 = 200.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// One series: a legend label, a CSS class (colour) and one value per day.
pub struct Series<'a> {
    pub label: &'a str,
    pub class: &'a str,
    pub values: Vec<Option<f64>>,
}

/// How values print on the axis and in tooltips.
#[derive(Clone, Copy)]
pub enum Unit {
    Count,
    Millis,
    /// Values in 0..=1 shown as percentages; the axis always spans 0-100 %.
    Ratio,
}

impl Unit {
    /// Axis labels: as short as the tick step allows.
    fn axis(self, v: f64, step: f64) -> String {
        match self {
            Unit::Millis if step >= 1.0 => format!("{v:.0} ms"),
            other => other.fmt(v),
        }
    }

    fn fmt(self, v: f64) -> String {
        match self {
            Unit::Count => format!("{}", v.round()),
            Unit::Millis if v >= 100.0 => format!("{v:.0} ms"),
            Unit::Millis => format!("{v:.1} ms"),
            Unit::Ratio => format!("{:.0} %", v * 100.0),
        }
    }
}

/// Escapes text for SVG/HTML content and attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Axis top and tick step for data up to `v`: a step of 1, 2 or 5 x 10^k (at least
/// `min_step`) and at most 5 intervals, so tick labels are round numbers.
fn nice_axis(v: f64, min_step: f64) -> (f64, f64) {
    let v = if v.is_finite() && v > 0.0 { v } else { 1.0 };
    let raw = (v / 5.0).max(min_step);
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * mag).find(|&m| m >= raw - 1e-12).unwrap_or(10.0 * mag);
    ((v / step).ceil().max(1.0) * step, step)
}

struct Frame {
    n: usize,
    y_max: f64,
    step: f64,
    unit: Unit,
}

impl Unit {
    /// Axis top and tick step for data whose largest value is `max`.
    fn axis_range(self, max: f64) -> (f64, f64) {
        match self {
            Unit::Ratio => (1.0, 0.25),
            Unit::Count => nice_axis(max, 1.0),
            Unit::Millis => nice_axis(max, 0.1),
        }
    }
}

impl Frame {
    fn x_slot(&self) -> f64 {
        (W - LEFT - RIGHT) / self.n.max(1) as f64
    }
    fn x_center(&self, i: usize) -> f64 {
        LEFT + self.x_slot() * (i as f64 + 0.5)
    }
    fn y(&self, v: f64) -> f64 {
        TOP + (H - TOP - BOTTOM) * (1.0 - (v / self.y_max).clamp(0.0, 1.0))
    }

    /// Opening tag, title, grid lines, axis labels and day labels.
    fn open(&self, out: &mut String, id: &str, title: &str, days: &[String], desc: &str) {
        let _ = write!(
            out,
            r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-labelledby="{id}-t {id}-d" preserveAspectRatio="xMidYMid meet"><title id="{id}-t">{}</title><desc id="{id}-d">{}</desc>"#,
            escape(title),
            escape(desc)
        );
        let ticks = (self.y_max / self.step).round() as u32;
        for k in 0..=ticks {
            let v = self.step * f64::from(k);
            let y = self.y(v);
            let _ = write!(
                out,
                r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="axis" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                W - RIGHT,
                LEFT - 6.0,
                y + 4.0,
                escape(&self.unit.axis(v, self.step))
            );
        }
        // At most ~7 day labels so they never overlap.
        let step = self.n.div_ceil(7).max(1);
        for (i, d) in days.iter().enumerate() {
            if i % step == 0 || i + 1 == self.n {
                let short = d.get(5..).unwrap_or(d);
                let _ = write!(
                    out,
                    r#"<text class="axis" x="{:.1}" y="{}" text-anchor="middle">{}</text>"#,
                    self.x_center(i),
                    H - 8.0,
                    escape(short)
                );
            }
        }
    }
}

fn summary(series: &[Series<'_>], unit: Unit) -> String {
    series
        .iter()
        .map(|s| {
            let vals: Vec<f64> = s.values.iter().flatten().copied().collect();
            match vals.last() {
                Some(&last) => format!("{}: latest {}", s.label, unit.fmt(last)),
                None => format!("{}: no data", s.label),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Stacked bars, one stack per day (e.g. successful and failed predictions).
pub fn stacked_bars(id: &str, title: &str, days: &[String], series: &[Series<'_>], unit: Unit) -> String {
    let totals: Vec<f64> =
        (0..days.len()).map(|i| series.iter().filter_map(|s| s.values.get(i).copied().flatten()).sum()).collect();
    let (y_max, step) = unit.axis_range(totals.iter().copied().fold(0.0, f64::max));
    let f = Frame { n: days.len(), y_max, step, unit };
    let mut out = String::new();
    f.open(&mut out, id, title, days, &summary(series, unit));
    let bar_w = (f.x_slot() * 0.7).max(1.0);
    for (i, day) in days.iter().enumerate() {
        let mut base = 0.0;
        for s in series {
            let Some(v) = s.values.get(i).copied().flatten().filter(|v| *v > 0.0) else { continue };
            let (y0, y1) = (f.y(base), f.y(base + v));
            let _ = write!(
                out,
                r#"<rect class="{}" x="{:.1}" y="{y1:.1}" width="{bar_w:.1}" height="{:.1}"><title>{} {}: {}</title></rect>"#,
                escape(s.class),
                f.x_center(i) - bar_w / 2.0,
                (y0 - y1).max(0.5),
                escape(day),
                escape(s.label),
                escape(&unit.fmt(v))
            );
            base += v;
        }
    }
    out.push_str("</svg>");
    out
}

/// Lines with a dot per day; days without a value leave a gap.
pub fn lines(id: &str, title: &str, days: &[String], series: &[Series<'_>], unit: Unit) -> String {
    let (y_max, step) =
        unit.axis_range(series.iter().flat_map(|s| s.values.iter().flatten().copied()).fold(0.0, f64::max));
    let f = Frame { n: days.len(), y_max, step, unit };
    let mut out = String::new();
    f.open(&mut out, id, title, days, &summary(series, unit));
    for s in series {
        let mut path = String::new();
        let mut pen_down = false;
        for (i, v) in s.values.iter().enumerate() {
            match v {
                Some(v) => {
                    let _ = write!(path, "{}{:.1},{:.1} ", if pen_down { "L" } else { "M" }, f.x_center(i), f.y(*v));
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        if !path.is_empty() {
            let _ = write!(out, r#"<path class="line {}" d="{}"/>"#, escape(s.class), path.trim_end());
        }
        for (i, (v, day)) in s.values.iter().zip(days).enumerate() {
            if let Some(v) = v {
                let _ = write!(
                    out,
                    r#"<circle class="dot {}" cx="{:.1}" cy="{:.1}" r="3"><title>{} {}: {}</title></circle>"#,
                    escape(s.class),
                    f.x_center(i),
                    f.y(*v),
                    escape(day),
                    escape(s.label),
                    escape(&unit.fmt(*v))
                );
            }
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn days(n: usize) -> Vec<String> {
        (1..=n).map(|d| format!("2026-11-{d:02}")).collect()
    }

    #[test]
    fn round_axis_ticks() {
        assert_eq!(nice_axis(0.0, 1.0), (1.0, 1.0));
        assert_eq!(nice_axis(4.0, 1.0), (4.0, 1.0));
        assert_eq!(nice_axis(7.0, 1.0), (8.0, 2.0));
        assert_eq!(nice_axis(12.0, 1.0), (15.0, 5.0));
        assert_eq!(nice_axis(50.0, 1.0), (50.0, 10.0));
        assert_eq!(nice_axis(51.0, 1.0), (60.0, 20.0));
        assert_eq!(nice_axis(f64::NAN, 1.0), (1.0, 1.0));
        let (top, step) = nice_axis(0.42, 0.1);
        assert!((top - 0.5).abs() < 1e-9 && (step - 0.1).abs() < 1e-9);
    }

    #[test]
    fn bars_stack_and_scale() {
        let s = [
            Series { label: "ok", class: "s-ok", values: vec![Some(6.0), Some(2.0)] },
            Series { label: "errors", class: "s-err", values: vec![Some(4.0), None] },
        ];
        let svg = stacked_bars("v", "Volume", &days(2), &s, Unit::Count);
        assert_eq!(svg.matches("<rect").count(), 3, "{svg}");
        // The tallest stack (10) reaches the top of the plot area.
        assert!(svg.contains(&format!(r#"y="{TOP:.1}""#)), "{svg}");
        assert!(svg.contains("<title>2026-11-01 errors: 4</title>"));
        assert!(svg.contains(r#"role="img""#));
    }

    #[test]
    fn lines_break_at_missing_days_and_escape_text() {
        let s = [Series { label: "p50 <ms>", class: "s-p50", values: vec![Some(10.0), None, Some(12.0)] }];
        let svg = lines("l", "Latency & more", &days(3), &s, Unit::Millis);
        assert!(svg.contains(r#"d="M"#) && svg.matches(" M").count() == 1, "two segments: {svg}");
        assert!(!svg.contains(" L"), "no line across the gap: {svg}");
        assert!(svg.contains("Latency &amp; more"));
        assert!(svg.contains("p50 &lt;ms&gt;"));
        assert!(!svg.contains("<ms>"));
        assert_eq!(svg.matches("<circle").count(), 2);
    }

    #[test]
    fn ratios_span_zero_to_hundred_percent() {
        let s = [Series { label: "errors", class: "s-err", values: vec![Some(0.25)] }];
        let svg = lines("r", "Error rate", &days(1), &s, Unit::Ratio);
        assert!(svg.contains(">100 %<") && svg.contains(">0 %<"), "{svg}");
    }
}
