//! Charts as inline SVG, drawn here on the server: stacked areas and stacked bars over time,
//! lines, horizontal bars, a scatter on a logarithmic x axis (the market) and burn-downs.
//!
//! Values arrive as integers in their unit ([`Unit`]: nano-USD, counts, milliseconds,
//! per-mille) and are placed with floats; the exact integer of every point is kept on it as
//! `data-y` (and its x as `data-x`), with a `<title>` tooltip showing it formatted exactly.
//! Each `<svg>` says what it is (`data-chart`) and how many points it draws (`data-points`),
//! and each point carries `data-point` and `data-series`: the tests count and sum them against
//! the ledger, and a reader can inspect them. Colours are CSS classes (`c0`…`c7`, and a
//! class per region), so the light and dark themes restyle every chart without touching it,
//! and no inline style is needed (the pages' CSP allows none).

use super::html::{count, esc, usd};
use std::fmt::Write as _;

/// What a chart's integers measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Nano-USD.
    Usd,
    Count,
    Ms,
    /// Tenths of a percent.
    Permille,
}

impl Unit {
    /// The exact figure, for tooltips and tables.
    pub fn exact(self, v: i64) -> String {
        match self {
            Unit::Usd => usd(v),
            Unit::Count => count(v),
            Unit::Ms => format!("{} ms", count(v)),
            Unit::Permille => format!("{}.{}%", v / 10, (v % 10).abs()),
        }
    }

    /// A short label for an axis tick.
    fn tick(self, v: f64) -> String {
        match self {
            Unit::Usd => format!("${}", sig3(v / 1e9)),
            Unit::Count => sig3(v),
            Unit::Ms if v >= 1000.0 => format!("{} s", sig3(v / 1000.0)),
            Unit::Ms => format!("{} ms", sig3(v)),
            Unit::Permille => format!("{}%", sig3(v / 10.0)),
        }
    }
}

/// About three significant digits, `k`/`M` above a thousand, no trailing zeros.
fn sig3(x: f64) -> String {
    let a = x.abs();
    let (v, suffix) = if a >= 1e6 {
        (x / 1e6, "M")
    } else if a >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    let a = v.abs();
    let decimals = if a == 0.0 || a >= 100.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        (-a.log10()).ceil() as usize + 2
    };
    let mut s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.truncate(s.trim_end_matches('0').trim_end_matches('.').len());
    }
    s.push_str(suffix);
    s
}

/// One stacked series: a value per bucket.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub values: Vec<i64>,
}

/// One line: a value per bucket, `None` where there is none (a gap).
#[derive(Clone, Debug)]
pub struct Line {
    pub name: String,
    pub values: Vec<Option<i64>>,
    pub dashed: bool,
}

/// The buckets a time chart spans: their starts, evenly spaced by `bucket_ms`.
#[derive(Clone, Debug)]
pub struct TimeAxis {
    pub starts: Vec<i64>,
    pub bucket_ms: i64,
}

impl TimeAxis {
    /// A tick label for a time: clock time for buckets under an hour, date and time under a
    /// day, the date otherwise (all UTC).
    fn label(&self, ms: i64) -> String {
        let t = crate::timespec::rfc3339(ms - ms.rem_euclid(1000));
        let (date, time) = (t.get(5..10).unwrap_or(""), t.get(11..16).unwrap_or(""));
        if self.bucket_ms < 3_600_000 {
            time.to_string()
        } else if self.bucket_ms < 86_400_000 {
            format!("{date} {time}")
        } else {
            date.to_string()
        }
    }
}

const W: f64 = 760.0;
const H: f64 = 250.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 18.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 30.0;

/// A step of 1, 2, 2.5 or 5 × 10ⁿ giving about four ticks up to `max`.
fn nice_step(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 2.5 {
        2.5
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Maps values to the plot area: x over `[x0, x1]`, y over `[0, ymax]`.
struct Frame {
    x0: f64,
    x1: f64,
    ymax: f64,
}

impl Frame {
    fn x(&self, v: f64) -> f64 {
        let span = (self.x1 - self.x0).max(f64::MIN_POSITIVE);
        LEFT + (v - self.x0) / span * (W - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        H - BOTTOM - v / self.ymax * (H - TOP - BOTTOM)
    }
}

fn open_svg(out: &mut String, id: &str, label: &str, points: usize, height: f64) {
    let _ = write!(
        out,
        "<svg class=\"chart\" viewBox=\"0 0 {W} {height}\" role=\"img\" aria-label=\"{}\" data-chart=\"{}\" data-points=\"{points}\">",
        esc(label),
        esc(id)
    );
}

fn empty_note(out: &mut String, height: f64) {
    let _ = write!(
        out,
        "<text class=\"empty\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">No data in this window</text>",
        W / 2.0,
        height / 2.0
    );
}

/// Horizontal grid lines and y tick labels from 0 to the frame's top.
fn y_axis(out: &mut String, f: &Frame, step: f64, unit: Unit) {
    let mut v = 0.0;
    while v <= f.ymax + step * 1e-9 {
        let y = f.y(v);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text class=\"tick\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            esc(&unit.tick(v))
        );
        v += step;
    }
}

/// Up to seven time labels along the bottom.
fn x_axis(out: &mut String, f: &Frame, axis: &TimeAxis) {
    let n = axis.starts.len();
    let every = n.div_ceil(7).max(1);
    for (i, t) in axis.starts.iter().enumerate() {
        if i % every == 0 {
            let _ = write!(
                out,
                "<text class=\"tick\" x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                f.x(*t as f64),
                H - 10.0,
                esc(&axis.label(*t))
            );
        }
    }
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{}\" y2=\"{}\"/>",
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM
    );
}

/// A point at `(cx, cy)` carrying its series, its x as text and its exact y.
fn point(out: &mut String, class: &str, (cx, cy): (f64, f64), series: &str, x: &str, y: i64, title: &str) {
    let _ = write!(
        out,
        "<circle class=\"pt {class}\" cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"3\" data-point=\"\" data-series=\"{}\" data-x=\"{}\" data-y=\"{y}\"><title>{}</title></circle>",
        esc(series),
        esc(x),
        esc(title)
    );
}

fn legend(out: &mut String, names: &[&str]) {
    if names.is_empty() {
        return;
    }
    out.push_str("<ul class=\"legend\">");
    for (i, n) in names.iter().enumerate() {
        let _ = write!(out, "<li><span class=\"sw c{}\"></span>{}</li>", i % 8, esc(n));
    }
    out.push_str("</ul>");
}

fn time_frame(axis: &TimeAxis, ymax: f64) -> (Frame, f64) {
    let step = nice_step(ymax);
    let top = (ymax / step).ceil().max(1.0) * step;
    let x0 = axis.starts.first().copied().unwrap_or(0) as f64;
    let last = axis.starts.last().copied().unwrap_or(0) as f64;
    (Frame { x0, x1: if last > x0 { last } else { x0 + 1.0 }, ymax: top }, step)
}

/// Series stacked as areas over time, first series at the bottom.
pub fn stacked_area(id: &str, label: &str, axis: &TimeAxis, series: &[Series], unit: Unit) -> String {
    stacked(id, label, axis, series, unit, false)
}

/// Series stacked as bars per bucket, first series at the bottom.
pub fn stacked_bars(id: &str, label: &str, axis: &TimeAxis, series: &[Series], unit: Unit) -> String {
    stacked(id, label, axis, series, unit, true)
}

fn stacked(id: &str, label: &str, axis: &TimeAxis, series: &[Series], unit: Unit, bars: bool) -> String {
    let n = axis.starts.len();
    let mut out = String::with_capacity(2048 + n * series.len() * 200);
    let totals: Vec<i64> = (0..n).map(|i| series.iter().map(|s| s.values.get(i).copied().unwrap_or(0)).sum()).collect();
    let max = totals.iter().copied().max().unwrap_or(0).max(0) as f64;
    let points = if series.is_empty() { 0 } else { n * series.len() };
    open_svg(&mut out, id, label, points, H);
    let (f, step) = time_frame(axis, max);
    y_axis(&mut out, &f, step, unit);
    let slot = (W - LEFT - RIGHT) / n.max(1) as f64;
    // With bars, each bucket is a slot and x marks its middle; the area's x is the start.
    let frame = if bars {
        Frame { x0: -0.5, x1: n.saturating_sub(1) as f64 + 0.5, ymax: f.ymax }
    } else {
        Frame { x0: f.x0, x1: f.x1, ymax: f.ymax }
    };
    let xs: Vec<f64> = if bars {
        (0..n).map(|i| frame.x(i as f64)).collect()
    } else {
        axis.starts.iter().map(|t| frame.x(*t as f64)).collect()
    };
    let mut base = vec![0i64; n];
    let mut marks = String::new();
    for (k, s) in series.iter().enumerate() {
        let class = format!("c{}", k % 8);
        let tops: Vec<i64> = (0..n).map(|i| base[i] + s.values.get(i).copied().unwrap_or(0)).collect();
        if bars {
            for i in 0..n {
                let (y_top, y_base) = (frame.y(tops[i] as f64), frame.y(base[i] as f64));
                let _ = write!(
                    out,
                    "<rect class=\"bar {class}\" x=\"{:.1}\" y=\"{y_top:.1}\" width=\"{:.1}\" height=\"{:.1}\"/>",
                    xs[i] - slot * 0.4,
                    slot * 0.8,
                    (y_base - y_top).max(0.0)
                );
            }
        } else if n > 0 {
            let _ = write!(out, "<path class=\"area {class}\" d=\"M");
            for i in 0..n {
                let _ = write!(out, "{:.1},{:.1} ", xs[i], frame.y(tops[i] as f64));
            }
            for i in (0..n).rev() {
                let _ = write!(out, "{:.1},{:.1} ", xs[i], frame.y(base[i] as f64));
            }
            out.push_str("Z\"/>");
        }
        for i in 0..n {
            let v = s.values.get(i).copied().unwrap_or(0);
            let title = format!("{} · {} · {}", s.name, axis.label(axis.starts[i]), unit.exact(v));
            point(
                &mut marks,
                &class,
                (xs[i], frame.y(tops[i] as f64)),
                &s.name,
                &axis.starts[i].to_string(),
                v,
                &title,
            );
        }
        base = tops;
    }
    out.push_str(&marks);
    if points == 0 || max == 0.0 {
        empty_note(&mut out, H);
    }
    let labels = Frame { x0: f.x0, x1: f.x1, ymax: f.ymax };
    if bars {
        x_axis_slots(&mut out, &frame, axis);
    } else {
        x_axis(&mut out, &labels, axis);
    }
    out.push_str("</svg>");
    legend(&mut out, &series.iter().map(|s| s.name.as_str()).collect::<Vec<_>>());
    out
}

/// Time labels under bar slots (x is the bucket's index).
fn x_axis_slots(out: &mut String, f: &Frame, axis: &TimeAxis) {
    let n = axis.starts.len();
    let every = n.div_ceil(7).max(1);
    for (i, t) in axis.starts.iter().enumerate() {
        if i % every == 0 {
            let _ = write!(
                out,
                "<text class=\"tick\" x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                f.x(i as f64),
                H - 10.0,
                esc(&axis.label(*t))
            );
        }
    }
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{}\" y2=\"{}\"/>",
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM
    );
}

/// Lines over time; a point for every value present.
pub fn lines(id: &str, label: &str, axis: &TimeAxis, lines: &[Line], unit: Unit) -> String {
    let n = axis.starts.len();
    let mut out = String::with_capacity(2048 + n * lines.len() * 200);
    let max = lines.iter().flat_map(|l| l.values.iter().flatten()).copied().max().unwrap_or(0).max(0) as f64;
    let points: usize = lines.iter().map(|l| l.values.iter().flatten().count()).sum();
    open_svg(&mut out, id, label, points, H);
    let (f, step) = time_frame(axis, max);
    y_axis(&mut out, &f, step, unit);
    let mut marks = String::new();
    for (k, l) in lines.iter().enumerate() {
        let class = format!("c{}", k % 8);
        let dash = if l.dashed { " dashed" } else { "" };
        let mut d = String::new();
        let mut pen_down = false;
        for (i, v) in l.values.iter().enumerate() {
            let Some(v) = v else {
                pen_down = false;
                continue;
            };
            let (x, y) = (f.x(axis.starts[i] as f64), f.y(*v as f64));
            let _ = write!(d, "{}{x:.1},{y:.1} ", if pen_down { "L" } else { "M" });
            pen_down = true;
            let title = format!("{} · {} · {}", l.name, axis.label(axis.starts[i]), unit.exact(*v));
            point(&mut marks, &class, (x, y), &l.name, &axis.starts[i].to_string(), *v, &title);
        }
        if !d.is_empty() {
            let _ = write!(out, "<path class=\"line {class}{dash}\" d=\"{}\"/>", d.trim_end());
        }
    }
    out.push_str(&marks);
    if points == 0 {
        empty_note(&mut out, H);
    }
    x_axis(&mut out, &f, axis);
    out.push_str("</svg>");
    legend(&mut out, &lines.iter().map(|l| l.name.as_str()).collect::<Vec<_>>());
    out
}

/// Labelled horizontal bars, one per item, longest label cut to fit (the tooltip and the
/// table keep it whole).
pub fn hbars(id: &str, label: &str, items: &[(String, i64)], unit: Unit) -> String {
    const ROW: f64 = 24.0;
    const LABEL_W: f64 = 250.0;
    let height = TOP + ROW * items.len().max(1) as f64 + 10.0;
    let mut out = String::with_capacity(1024 + items.len() * 400);
    open_svg(&mut out, id, label, items.len(), height);
    let max = items.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1) as f64;
    // Room after the longest bar for its value.
    let span = W - RIGHT - LABEL_W - 110.0;
    for (i, (name, v)) in items.iter().enumerate() {
        let y = TOP + i as f64 * ROW;
        let w = (*v).max(0) as f64 / max * span;
        let shown: String = if name.chars().count() > 36 {
            name.chars().take(35).chain(std::iter::once('…')).collect()
        } else {
            name.clone()
        };
        let _ = write!(
            out,
            "<text class=\"label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LABEL_W - 8.0,
            y + ROW * 0.62,
            esc(&shown)
        );
        let _ = write!(
            out,
            "<rect class=\"bar c{}\" x=\"{LABEL_W}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" data-point=\"\" data-series=\"{}\" data-x=\"{}\" data-y=\"{v}\"><title>{} · {}</title></rect>",
            i % 8,
            y + 3.0,
            ROW - 6.0,
            esc(label),
            esc(name),
            esc(name),
            esc(&unit.exact(*v))
        );
        let _ = write!(
            out,
            "<text class=\"value\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            LABEL_W + w + 6.0,
            y + ROW * 0.62,
            esc(&unit.exact(*v))
        );
    }
    if items.is_empty() {
        empty_note(&mut out, height);
    }
    out.push_str("</svg>");
    out
}

/// One model on the market chart.
#[derive(Clone, Debug)]
pub struct Dot {
    /// `provider/model`.
    pub id: String,
    /// Blended USD per 1M tokens, above zero (placed on the log axis).
    pub price: f64,
    /// The same price as exact text, for `data-x`.
    pub price_text: String,
    pub quality: i64,
    /// Colour class (`r-us`, `r-cn`, …) and what it means, for the tooltip.
    pub region_class: &'static str,
    pub region: &'static str,
    pub open_weights: bool,
    /// Removed by the chosen policy (drawn faded).
    pub removed: bool,
    pub reference: bool,
    /// Named on the chart (frontier members and the reference).
    pub tagged: bool,
}

/// A staircase through some of the dots (indices into the dot list, cheapest first).
#[derive(Clone, Debug)]
pub struct Frontier {
    pub name: String,
    pub members: Vec<usize>,
    pub dashed: bool,
}

/// Quality against blended price on a log₁₀ axis: circles for closed weights, diamonds for
/// open weights, faded where the policy removes them, a ring on the reference, and the
/// frontiers as staircases (for a price between two frontier models, the best quality is
/// the cheaper one's).
pub fn market(id: &str, label: &str, dots: &[Dot], frontiers: &[Frontier]) -> String {
    const MH: f64 = 420.0;
    let mut out = String::with_capacity(4096 + dots.len() * 500);
    open_svg(&mut out, id, label, dots.len(), MH);
    if dots.is_empty() {
        empty_note(&mut out, MH);
        out.push_str("</svg>");
        return out;
    }
    let (lo, hi) = dots.iter().fold((f64::MAX, f64::MIN), |(lo, hi), d| (lo.min(d.price), hi.max(d.price)));
    let (dlo, mut dhi) = (lo.log10().floor(), hi.log10().ceil());
    if dhi <= dlo {
        dhi = dlo + 1.0;
    }
    let (qlo, qhi) = dots.iter().fold((i64::MAX, i64::MIN), |(lo, hi), d| (lo.min(d.quality), hi.max(d.quality)));
    let (ylo, yhi) = ((qlo - 10).div_euclid(50) * 50, (qhi + 10 + 49).div_euclid(50) * 50);
    let plot_h = MH - TOP - BOTTOM;
    let x = |p: f64| LEFT + (p.log10() - dlo) / (dhi - dlo) * (W - LEFT - RIGHT);
    let y = |q: i64| MH - BOTTOM - (q - ylo) as f64 / (yhi - ylo).max(1) as f64 * plot_h;
    let mut q = ylo;
    while q <= yhi {
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\"/><text class=\"tick\" x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{q}</text>",
            W - RIGHT,
            y(q),
            y(q),
            LEFT - 6.0,
            y(q) + 4.0
        );
        q += 50;
    }
    let mut d = dlo;
    while d <= dhi {
        let px = LEFT + (d - dlo) / (dhi - dlo) * (W - LEFT - RIGHT);
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{TOP}\" y2=\"{}\"/><text class=\"tick\" x=\"{px:.1}\" y=\"{}\" text-anchor=\"middle\">${}</text>",
            MH - BOTTOM,
            MH - 10.0,
            sig3(10f64.powf(d))
        );
        d += 1.0;
    }
    let _ = write!(
        out,
        "<text class=\"tick\" x=\"{}\" y=\"{}\" text-anchor=\"end\">blended USD per 1M tokens (3 in : 1 out), log scale</text><text class=\"tick\" x=\"{}\" y=\"{}\">quality</text>",
        W - RIGHT,
        MH - BOTTOM - 6.0,
        LEFT + 6.0,
        TOP + 10.0
    );
    for (k, fr) in frontiers.iter().enumerate() {
        let mut path = String::new();
        for (j, i) in fr.members.iter().enumerate() {
            let dot = &dots[*i];
            let (px, py) = (x(dot.price), y(dot.quality));
            if j == 0 {
                let _ = write!(path, "M{px:.1},{py:.1}");
            } else {
                let _ = write!(path, " H{px:.1} V{py:.1}");
            }
        }
        let dash = if fr.dashed { " dashed" } else { "" };
        let _ = write!(
            out,
            "<path class=\"frontier f{k}{dash}\" d=\"{path}\" data-frontier=\"{}\" data-members=\"{}\"><title>{}</title></path>",
            esc(&fr.name),
            fr.members.len(),
            esc(&fr.name)
        );
    }
    let mut tagged = 0;
    for dot in dots {
        let (px, py) = (x(dot.price), y(dot.quality));
        let mut class = format!("pt {}", dot.region_class);
        if dot.removed {
            class.push_str(" removed");
        }
        let shape = if dot.open_weights {
            format!("<path class=\"{class}\" d=\"M{px:.1},{:.1} l6,6 l-6,6 l-6,-6 Z\"", py - 6.0)
        } else {
            format!("<circle class=\"{class}\" cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"5\"")
        };
        let _ = write!(
            out,
            "{shape} data-point=\"\" data-series=\"{}\" data-x=\"{}\" data-y=\"{}\" data-label=\"{}\"{}{}{}><title>{} · {} · {} · quality {}{}{}</title>{}",
            dot.region,
            esc(&dot.price_text),
            dot.quality,
            esc(&dot.id),
            if dot.open_weights { " data-open=\"\"" } else { "" },
            if dot.removed { " data-removed=\"\"" } else { "" },
            if dot.reference { " data-reference=\"\"" } else { "" },
            esc(&dot.id),
            dot.region,
            esc(&format!("${}/1M", dot.price_text)),
            dot.quality,
            if dot.open_weights { " · open weights" } else { "" },
            if dot.removed { " · removed by the policy" } else { "" },
            if dot.open_weights { "</path>" } else { "</circle>" }
        );
        if dot.reference {
            let _ = write!(out, "<circle class=\"ref\" cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"10\"/>");
        }
        if dot.tagged {
            let name = dot.id.split_once('/').map_or(dot.id.as_str(), |(_, m)| m);
            let shown: String = name.chars().take(28).collect();
            let tag = if dot.reference { format!("{shown} (reference)") } else { shown };
            // Neighbours on the frontier sit close together: their names alternate above
            // and below.
            let dy = if tagged % 2 == 0 { -8.0 } else { 16.0 };
            tagged += 1;
            let _ = write!(out, "<text class=\"tag\" x=\"{:.1}\" y=\"{:.1}\">{}</text>", px + 8.0, py + dy, esc(&tag));
        }
    }
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{}\" y2=\"{}\"/>",
        W - RIGHT,
        MH - BOTTOM,
        MH - BOTTOM
    );
    out.push_str("</svg>");
    out
}

/// A budget's burn-down: what was left after each bucket (a point each, at the bucket's end
/// or at `now_ms` for the bucket still running), starting from `left_at_start` at the first
/// bucket's start; the limit and zero as guides; and the projection from now to when the
/// budget runs out at the recent rate (dashed), if that comes before the chart's end.
pub fn burndown(
    id: &str,
    label: &str,
    axis: &TimeAxis,
    (left_at_start, left): (i64, &[i64]),
    limit: i64,
    now_ms: i64,
    projection: Option<i64>,
) -> String {
    let n = axis.starts.len();
    let mut out = String::with_capacity(2048 + n * 200);
    open_svg(&mut out, id, label, n, H);
    let start = axis.starts.first().copied().unwrap_or(now_ms);
    let end = projection.unwrap_or(now_ms).max(now_ms).max(start + axis.bucket_ms);
    let step = nice_step(limit.max(1) as f64);
    let f = Frame { x0: start as f64, x1: end as f64, ymax: (limit.max(1) as f64 / step).ceil() * step };
    y_axis(&mut out, &f, step, Unit::Usd);
    let yl = f.y(limit as f64);
    let _ = write!(
        out,
        "<line class=\"limit\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{yl:.1}\" y2=\"{yl:.1}\"><title>limit {}</title></line>",
        W - RIGHT,
        esc(&usd(limit))
    );
    let mut d = format!("M{:.1},{:.1} ", f.x(start as f64), f.y(left_at_start.max(0) as f64));
    let mut marks = String::new();
    let mut last = (f.x(start as f64), f.y(left_at_start.max(0) as f64));
    for (i, v) in left.iter().enumerate().take(n) {
        let t = (axis.starts[i] + axis.bucket_ms).min(now_ms);
        last = (f.x(t as f64), f.y((*v).max(0) as f64));
        let _ = write!(d, "L{:.1},{:.1} ", last.0, last.1);
        let title = format!("left at {} UTC · {}", super::html::utc(t), usd(*v));
        point(&mut marks, "c0", last, "left", &t.to_string(), *v, &title);
    }
    let _ = write!(out, "<path class=\"line c0\" d=\"{}\"/>", d.trim_end());
    if let Some(to_ms) = projection {
        let _ = write!(
            out,
            "<path class=\"line c1 dashed\" d=\"M{:.1},{:.1} L{:.1},{:.1}\" data-projection=\"{to_ms}\"><title>runs out {} UTC at the last 7 days' rate</title></path>",
            last.0,
            last.1,
            f.x(to_ms as f64),
            f.y(0.0),
            esc(&super::html::utc(to_ms))
        );
    }
    out.push_str(&marks);
    // Six labels evenly over the span, whole buckets apart.
    let every = ((end - start) / 6).max(axis.bucket_ms) / axis.bucket_ms.max(1) * axis.bucket_ms.max(1);
    let mut t = start;
    while t <= end {
        // A label at the right edge ends there rather than running past it.
        let anchor = if f.x(t as f64) > W - RIGHT - 40.0 { "end" } else { "middle" };
        let _ = write!(
            out,
            "<text class=\"tick\" x=\"{:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{}</text>",
            f.x(t as f64),
            H - 10.0,
            esc(&axis.label(t))
        );
        t += every.max(1);
    }
    let _ = write!(
        out,
        "<line class=\"axis\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{}\" y2=\"{}\"/>",
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM
    );
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(n: usize) -> TimeAxis {
        TimeAxis { starts: (0..n as i64).map(|i| 1_772_323_200_000 + i * 60_000).collect(), bucket_ms: 60_000 }
    }

    fn attr_count(svg: &str, needle: &str) -> usize {
        svg.matches(needle).count()
    }

    #[test]
    fn every_value_is_a_point_with_its_exact_figure() {
        let s = [
            Series { name: "alpha".into(), values: vec![1_000_000_000, 0, 5] },
            Series { name: "<b>".into(), values: vec![2, 3, 4] },
        ];
        let svg = stacked_area("spend", "Spend", &axis(3), &s, Unit::Usd);
        assert!(svg.contains("data-chart=\"spend\" data-points=\"6\""), "{svg}");
        assert_eq!(attr_count(&svg, "data-point=\"\""), 6);
        assert!(svg.contains("data-series=\"alpha\" data-x=\"1772323200000\" data-y=\"1000000000\""));
        assert!(svg.contains("data-series=\"&lt;b&gt;\""), "names are escaped");
        assert!(!svg.contains("<b>"));
        let bars = stacked_bars("req", "Requests", &axis(3), &s, Unit::Count);
        assert_eq!(attr_count(&bars, "<rect class=\"bar"), 6);
        let empty = stacked_area("none", "None", &axis(3), &[], Unit::Usd);
        assert!(empty.contains("data-points=\"0\"") && empty.contains("No data in this window"));
    }

    #[test]
    fn lines_skip_gaps_and_hbars_cut_long_labels() {
        let l = [Line { name: "p50".into(), values: vec![Some(10), None, Some(30)], dashed: false }];
        let svg = lines("ttfb", "TTFB", &axis(3), &l, Unit::Ms);
        assert!(svg.contains("data-points=\"2\""));
        assert_eq!(svg.matches(" M").count() + svg.matches("\"M").count(), 2, "two separate segments: {svg}");
        let long = "x".repeat(50);
        let h = hbars("mix", "Mix", &[(long.clone(), 3), ("b".into(), 1)], Unit::Count);
        assert!(h.contains(&format!("{}…", "x".repeat(35))) && h.contains(&format!("data-x=\"{long}\"")));
    }

    #[test]
    fn market_marks_kinds_and_draws_the_frontier() {
        let dot = |id: &str, price: f64, quality: i64, open: bool| Dot {
            id: id.into(),
            price,
            price_text: price.to_string(),
            quality,
            region_class: "r-us",
            region: "US",
            open_weights: open,
            removed: false,
            reference: false,
            tagged: true,
        };
        let mut dots =
            vec![dot("a/cheap", 0.1, 1300, true), dot("b/mid", 1.0, 1400, false), dot("c/top", 20.0, 1450, false)];
        dots[1].removed = true;
        dots[2].reference = true;
        let svg = market(
            "market",
            "Market",
            &dots,
            &[Frontier { name: "all".into(), members: vec![0, 1, 2], dashed: false }],
        );
        assert!(svg.contains("data-points=\"3\""));
        assert_eq!(svg.matches("data-open=\"\"").count(), 1);
        assert_eq!(svg.matches("data-removed=\"\"").count(), 1);
        assert_eq!(svg.matches("data-reference=\"\"").count(), 1);
        assert!(svg.contains("data-members=\"3\""));
        for tick in ["$0.1<", "$1<", "$10<", "$100<"] {
            assert!(svg.contains(tick), "{tick}: {svg}");
        }
    }

    #[test]
    fn ticks_read_well() {
        assert_eq!(sig3(0.0), "0");
        assert_eq!(sig3(0.05), "0.05");
        assert_eq!(sig3(0.0123), "0.0123");
        assert_eq!(sig3(1.5), "1.5");
        assert_eq!(sig3(12.0), "12");
        assert_eq!(sig3(2500.0), "2.5k");
        assert_eq!(Unit::Usd.tick(2_500_000_000.0), "$2.5");
        assert_eq!(Unit::Ms.tick(1500.0), "1.5 s");
        assert_eq!(Unit::Permille.exact(125), "12.5%");
        assert_eq!(nice_step(100.0), 25.0);
        assert_eq!(nice_step(7.0), 2.0);
    }
}
