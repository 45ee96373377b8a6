//! Hand-written SVG line charts for the benchmark reports (the Figure 16
//! simulation here, raft-node's cluster benchmark through `#[path]`).
//!
//! A plotting crate would pull in font rendering and image codecs for what
//! is a few hundred lines of text: axes, ticks, polylines and a legend.
//! Charts are stacked vertically into one document by [`document`].

use std::fmt::Write as _;

/// How an axis maps values to pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    /// Evenly spaced values.
    Linear,
    /// Powers of ten evenly spaced (values must be positive).
    Log10,
}

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Shown in the legend.
    pub label: String,
    /// Points in data units, drawn in order.
    pub points: Vec<(f64, f64)>,
    /// Any SVG colour.
    pub color: String,
    /// Drawn dashed (used for the second system of a pair).
    pub dashed: bool,
    /// Draws a dot at every point (for sparse series such as throughput).
    pub dots: bool,
}

/// A labelled point drawn on top of the series (a reference figure).
#[derive(Clone, Debug)]
pub struct Marker {
    /// Position in data units.
    pub x: f64,
    /// Position in data units.
    pub y: f64,
    /// Text written beside the marker.
    pub label: String,
    /// Any SVG colour.
    pub color: String,
}

/// One chart: axes, series and markers.
#[derive(Clone, Debug)]
pub struct Chart {
    /// Written above the plot area.
    pub title: String,
    /// The horizontal axis' name, with its unit.
    pub x_label: String,
    /// The vertical axis' name, with its unit.
    pub y_label: String,
    /// The horizontal axis' scale.
    pub x_scale: Scale,
    /// The horizontal range shown, in data units.
    pub x_range: (f64, f64),
    /// The vertical range shown, in data units (always linear).
    pub y_range: (f64, f64),
    /// The lines.
    pub series: Vec<Series>,
    /// Reference points.
    pub markers: Vec<Marker>,
}

/// Width of one chart in pixels.
const WIDTH_PX: f64 = 860.0;
/// Height of one chart in pixels, legend included.
const HEIGHT_PX: f64 = 360.0;
/// Margins around the plot area: left, right, top, bottom.
const MARGIN_PX: (f64, f64, f64, f64) = (70.0, 270.0, 36.0, 50.0);

/// A colour per series index, distinguishable in print.
pub fn palette(index: usize) -> String {
    const COLORS: [&str; 10] = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
        "#bcbd22",
    ];
    COLORS[index % COLORS.len()].to_string()
}

/// The empirical CDF of `sorted_values` as chart points (value, percent),
/// thinned to at most `max_points` steps so the file stays small.
pub fn cdf_points(sorted_values: &[f64], max_points: usize) -> Vec<(f64, f64)> {
    let count = sorted_values.len();
    if count == 0 {
        return Vec::new();
    }
    let stride = count.div_ceil(max_points.max(1)).max(1);
    let mut points = Vec::with_capacity(count / stride + 2);
    points.push((sorted_values[0], 0.0));
    let mut rank = stride;
    while rank < count {
        points.push((sorted_values[rank - 1], 100.0 * rank as f64 / count as f64));
        rank += stride;
    }
    points.push((sorted_values[count - 1], 100.0));
    points
}

/// Stacks charts vertically into one SVG document.
pub fn document(charts: &[Chart]) -> String {
    let height = HEIGHT_PX * charts.len() as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH_PX}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH_PX} {height}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(out, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    for (index, chart) in charts.iter().enumerate() {
        let _ = writeln!(out, "<g transform=\"translate(0,{})\">", HEIGHT_PX * index as f64);
        chart.draw(&mut out);
        let _ = writeln!(out, "</g>");
    }
    out.push_str("</svg>\n");
    out
}

impl Chart {
    fn plot_width(&self) -> f64 {
        WIDTH_PX - MARGIN_PX.0 - MARGIN_PX.1
    }

    fn plot_height(&self) -> f64 {
        HEIGHT_PX - MARGIN_PX.2 - MARGIN_PX.3
    }

    /// The horizontal pixel of a value, clamped to the plot area.
    fn x_px(&self, x: f64) -> f64 {
        let (low, high) = self.x_range;
        let fraction = match self.x_scale {
            Scale::Linear => (x - low) / (high - low),
            Scale::Log10 => (x.max(f64::MIN_POSITIVE).log10() - low.log10()) / (high.log10() - low.log10()),
        };
        MARGIN_PX.0 + fraction.clamp(0.0, 1.0) * self.plot_width()
    }

    /// The vertical pixel of a value, clamped to the plot area.
    fn y_px(&self, y: f64) -> f64 {
        let (low, high) = self.y_range;
        let fraction = ((y - low) / (high - low)).clamp(0.0, 1.0);
        MARGIN_PX.2 + (1.0 - fraction) * self.plot_height()
    }

    fn x_ticks(&self) -> Vec<f64> {
        let (low, high) = self.x_range;
        match self.x_scale {
            Scale::Log10 => {
                let mut ticks = Vec::new();
                let mut decade = 10f64.powf(low.log10().floor());
                while decade <= high * 1.0001 {
                    for step in [1.0, 2.0, 5.0] {
                        let tick = decade * step;
                        if tick >= low * 0.9999 && tick <= high * 1.0001 {
                            ticks.push(tick);
                        }
                    }
                    decade *= 10.0;
                }
                ticks
            }
            Scale::Linear => linear_ticks(low, high),
        }
    }

    fn draw(&self, out: &mut String) {
        let (left, _, top, _) = MARGIN_PX;
        let (width, height) = (self.plot_width(), self.plot_height());
        let _ = writeln!(
            out,
            "<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\" font-weight=\"bold\">{}</text>",
            left + width / 2.0,
            escape(&self.title)
        );
        // Grid and ticks.
        for tick in self.x_ticks() {
            let x = self.x_px(tick);
            let _ = writeln!(
                out,
                "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#e5e5e5\"/>\
                 <text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                top + height,
                top + height + 16.0,
                number(tick)
            );
        }
        for tick in linear_ticks(self.y_range.0, self.y_range.1) {
            let y = self.y_px(tick);
            let _ = writeln!(
                out,
                "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e5e5e5\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                left + width,
                left - 6.0,
                y + 4.0,
                number(tick)
            );
        }
        let _ = writeln!(
            out,
            "<rect x=\"{left}\" y=\"{top}\" width=\"{width}\" height=\"{height}\" fill=\"none\" stroke=\"#333\"/>"
        );
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            left + width / 2.0,
            top + height + 36.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            out,
            "<text transform=\"translate(18,{:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
            top + height / 2.0,
            escape(&self.y_label)
        );
        // Lines, then the legend beside the plot.
        for (index, series) in self.series.iter().enumerate() {
            let mut path = String::new();
            for (x, y) in &series.points {
                let _ = write!(path, "{:.1},{:.1} ", self.x_px(*x), self.y_px(*y));
            }
            let dash = if series.dashed { " stroke-dasharray=\"6 4\"" } else { "" };
            let _ = writeln!(
                out,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\"{dash}/>",
                path.trim_end(),
                series.color
            );
            if series.dots {
                for (x, y) in &series.points {
                    let _ = writeln!(
                        out,
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>",
                        self.x_px(*x),
                        self.y_px(*y),
                        series.color
                    );
                }
            }
            let legend_y = top + 8.0 + 18.0 * index as f64;
            let legend_x = left + width + 14.0;
            let _ = writeln!(
                out,
                "<line x1=\"{legend_x}\" y1=\"{legend_y}\" x2=\"{:.1}\" y2=\"{legend_y}\" stroke=\"{}\" \
                 stroke-width=\"2\"{dash}/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                legend_x + 22.0,
                series.color,
                legend_x + 28.0,
                legend_y + 4.0,
                escape(&series.label)
            );
        }
        for (index, marker) in self.markers.iter().enumerate() {
            let (x, y) = (self.x_px(marker.x), self.y_px(marker.y));
            // Markers are drawn as an outlined diamond, unlike any series.
            let _ = writeln!(
                out,
                "<path d=\"M {x:.1} {:.1} L {:.1} {y:.1} L {x:.1} {:.1} L {:.1} {y:.1} Z\" fill=\"white\" \
                 stroke=\"{}\" stroke-width=\"2\"/>",
                y - 6.0,
                x + 6.0,
                y + 6.0,
                x - 6.0,
                marker.color
            );
            let legend_y = top + 8.0 + 18.0 * (self.series.len() + index) as f64 + 6.0;
            let legend_x = left + width + 14.0;
            let _ = writeln!(
                out,
                "<path d=\"M {:.1} {:.1} l 5 5 l -5 5 l -5 -5 Z\" fill=\"white\" stroke=\"{}\" \
                 stroke-width=\"2\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                legend_x + 11.0,
                legend_y - 5.0,
                marker.color,
                legend_x + 28.0,
                legend_y + 4.0,
                escape(&marker.label)
            );
        }
    }
}

/// About five round ticks between `low` and `high`.
fn linear_ticks(low: f64, high: f64) -> Vec<f64> {
    let span = (high - low).abs().max(f64::MIN_POSITIVE);
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * magnitude);
    let mut ticks = Vec::new();
    let mut tick = (low / step).ceil() * step;
    while tick <= high + step * 1e-9 {
        ticks.push(tick);
        tick += step;
    }
    ticks
}

/// A tick label: integers without decimals, thousands as "k".
fn number(value: f64) -> String {
    if value.abs() >= 10_000.0 && (value / 1000.0).fract() == 0.0 {
        format!("{}k", value / 1000.0)
    } else if value.fract() == 0.0 {
        format!("{value}")
    } else {
        format!("{value:.1}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
