//! SVG line charts (plotters, SVG backend only): the training curves `train` writes next
//! to `metrics.jsonl`, and the experiment plots (accuracy vs a swept setting, overlays of
//! validation accuracy per epoch). Every file is rendered to a string first and written
//! atomically, so a reader never sees half a chart.

use crate::util::write_atomic;
use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use std::path::Path;

/// One named line of a chart; non-finite points are left out when drawing.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// Palette index; lines of one panel default to their position.
    pub color: Option<usize>,
    /// A thin dashed line without markers (reference levels such as a baseline).
    pub dashed: bool,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            color: None,
            dashed: false,
        }
    }

    /// Pins the palette colour, so one thing keeps its colour across panels.
    pub fn with_color(mut self, index: usize) -> Self {
        self.color = Some(index);
        self
    }

    pub fn dashed(mut self) -> Self {
        self.dashed = true;
        self
    }

    fn finite_points(&self) -> Vec<(f64, f64)> {
        self.points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect()
    }
}

/// One chart: axes, labels and its lines.
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Label only whole numbers on the x axis (epochs, layers, token counts).
    pub integer_x: bool,
}

const PANEL_WIDTH: u32 = 560;

/// Tableau 10: distinct colours that stay readable on white.
const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

fn palette(index: usize) -> RGBColor {
    let (r, g, b) = PALETTE[index % PALETTE.len()];
    RGBColor(r, g, b)
}
const PANEL_HEIGHT: u32 = 400;

/// `[lo, hi]` of `values` widened by 5% (or a small fixed margin when all are equal), so
/// points do not sit on the frame and a single point still gets a non-empty range.
fn padded_range(values: impl Iterator<Item = f64>, integer: bool) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let pad = if integer {
        // Half a unit keeps the first and last whole number inside the frame.
        0.5f64.max(span * 0.05)
    } else if span > 0.0 {
        span * 0.05
    } else {
        (lo.abs() * 0.05).max(1e-3)
    };
    (lo - pad, hi + pad)
}

/// Decimals that tell a range's ticks apart without noise (about two significant digits
/// of the span).
fn tick_decimals((lo, hi): (f64, f64)) -> usize {
    let span = (hi - lo).abs();
    if span > 0.0 && span.is_finite() {
        (1.0 - span.log10().floor()).clamp(0.0, 6.0) as usize
    } else {
        2
    }
}

/// The corner of the plot whose quarter holds the fewest points, for the legend.
fn emptiest_corner(
    points: impl Iterator<Item = (f64, f64)>,
    (x0, x1): (f64, f64),
    (y0, y1): (f64, f64),
) -> SeriesLabelPosition {
    let (xm, ym) = ((x0 + x1) / 2.0, (y0 + y1) / 2.0);
    // Upper left, upper right, lower left, lower right.
    let mut counts = [0usize; 4];
    for (x, y) in points {
        let corner = usize::from(y < ym) * 2 + usize::from(x >= xm);
        counts[corner] += 1;
    }
    // Ties go to the later corner: lower right, then lower left, ...
    let best = (0..4).rev().min_by_key(|&c| counts[c]).unwrap_or(3);
    match best {
        0 => SeriesLabelPosition::UpperLeft,
        1 => SeriesLabelPosition::UpperRight,
        2 => SeriesLabelPosition::LowerLeft,
        _ => SeriesLabelPosition::LowerRight,
    }
}

/// Draws `panel` on `area`.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    // (palette index, series, its finite points), empty series dropped.
    type Drawn<'a> = (usize, &'a Series, Vec<(f64, f64)>);
    let drawn: Vec<Drawn> = panel
        .series
        .iter()
        .enumerate()
        .map(|(i, s)| (s.color.unwrap_or(i), s, s.finite_points()))
        .filter(|(_, _, p)| !p.is_empty())
        .collect();
    let all_points = || drawn.iter().flat_map(|(_, _, p)| p.iter().copied());
    let x_range = padded_range(all_points().map(|q| q.0), panel.integer_x);
    let y_range = padded_range(all_points().map(|q| q.1), false);
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("drawing {:?}: {e}", panel.title);

    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x_range.0..x_range.1, y_range.0..y_range.1)
        .map_err(err)?;
    let integer_x = panel.integer_x;
    let (x_decimals, y_decimals) = (tick_decimals(x_range), tick_decimals(y_range));
    let x_format = move |v: &f64| {
        if !integer_x {
            format!("{v:.x_decimals$}")
        } else if (v - v.round()).abs() < 1e-6 {
            format!("{:.0}", v.round())
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .x_label_formatter(&x_format)
        .y_label_formatter(&|v| format!("{v:.y_decimals$}"))
        .draw()
        .map_err(err)?;
    let legend_at = emptiest_corner(all_points(), x_range, y_range);
    for (color_index, series, points) in drawn {
        let color = palette(color_index);
        let width = if series.dashed { 1 } else { 2 };
        let drawn = if series.dashed {
            chart.draw_series(DashedLineSeries::new(
                points,
                6,
                4,
                color.stroke_width(width),
            ))
        } else {
            // Markers only where they can be told apart (not on per-step curves).
            let marker = if points.len() > 40 { 0 } else { 3 };
            chart.draw_series(LineSeries::new(points, color.stroke_width(width)).point_size(marker))
        };
        drawn
            .map_err(err)?
            .label(series.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(width))
            });
    }
    if !panel.series.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(legend_at)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// Renders `panels` side by side under `title` as an SVG document.
pub fn render_svg(title: &str, panels: &[Panel]) -> Result<String> {
    let columns = panels.len().max(1) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (PANEL_WIDTH * columns, PANEL_HEIGHT + 40))
            .into_drawing_area();
        let err = |e| anyhow!("drawing {title:?}: {e}");
        root.fill(&WHITE).map_err(err)?;
        let body = root.titled(title, ("sans-serif", 22)).map_err(err)?;
        let areas = body.split_evenly((1, columns as usize));
        for (area, panel) in areas.iter().zip(panels) {
            draw_panel(area, panel)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// Renders and writes `panels` to `out_svg` atomically.
pub fn write_svg(out_svg: &Path, title: &str, panels: &[Panel]) -> Result<()> {
    let svg = render_svg(title, panels)?;
    write_atomic(out_svg, svg.as_bytes())
}

/// The texts of an SVG document's `<text>` elements, trimmed and unescaped (legend
/// entries, titles, tick labels), for checks that a chart shows what it should.
pub fn svg_texts(svg: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find("<text") {
        rest = &rest[start..];
        let Some(open_end) = rest.find('>') else {
            break;
        };
        let Some(close) = rest.find("</text>") else {
            break;
        };
        if close > open_end {
            let raw = rest[open_end + 1..close].trim();
            out.push(
                raw.replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&quot;", "\"")
                    .replace("&apos;", "'")
                    .replace("&amp;", "&"),
            );
        }
        rest = &rest[close + "</text>".len()..];
    }
    out
}

/// Checks that `svg` looks like a complete SVG document: it starts with `<svg` (after an
/// optional XML declaration) and its tags are balanced and properly nested. A parse-level
/// check for tests and for callers that want to validate before trusting a file.
pub fn check_svg_structure(svg: &str) -> Result<()> {
    let body = svg.trim_start();
    let body = if body.starts_with("<?xml") {
        let end = body.find("?>").context("unterminated XML declaration")?;
        body[end + 2..].trim_start()
    } else {
        body
    };
    anyhow::ensure!(
        body.starts_with("<svg"),
        "does not start with <svg or <?xml"
    );
    let mut stack: Vec<&str> = Vec::new();
    let mut rest = body;
    let mut roots = 0;
    while let Some(open) = rest.find('<') {
        rest = &rest[open..];
        if rest.starts_with("<!--") {
            let end = rest.find("-->").context("unterminated comment")?;
            rest = &rest[end + 3..];
            continue;
        }
        let end = rest.find('>').context("unterminated tag")?;
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let name = name.trim();
            match stack.pop() {
                Some(open) if open == name => {}
                other => anyhow::bail!("closing </{name}> does not match {other:?}"),
            }
        } else {
            let name = tag
                .split(|c: char| c.is_whitespace() || c == '/')
                .next()
                .unwrap_or("");
            anyhow::ensure!(!name.is_empty(), "empty tag name");
            if stack.is_empty() {
                roots += 1;
            }
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
    }
    anyhow::ensure!(stack.is_empty(), "unclosed tags {stack:?}");
    anyhow::ensure!(roots == 1, "{roots} root elements");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_point_and_empty_series_still_render() {
        let panels = vec![Panel {
            title: "one epoch".into(),
            x_label: "epoch".into(),
            y_label: "accuracy".into(),
            series: vec![
                Series::new("only", vec![(1.0, 0.5)]),
                Series::new("nan", vec![(1.0, f64::NAN)]),
            ],
            integer_x: true,
        }];
        let svg = render_svg("t <&> t", &panels).unwrap();
        check_svg_structure(&svg).unwrap();
        assert!(svg.contains("t &lt;&amp;&gt; t"), "title escaped");
        let texts = svg_texts(&svg);
        assert!(texts.contains(&"only".to_string()) && texts.contains(&"t <&> t".to_string()));
        // Integer axes label whole numbers only: the single epoch is "1".
        assert!(texts.contains(&"1".to_string()), "{texts:?}");
        assert!(!texts.iter().any(|t| t == "1.2" || t == "0.5"), "{texts:?}");
        assert_eq!(padded_range([1.0].into_iter(), true), (0.5, 1.5));
        assert_eq!(padded_range(std::iter::empty(), false), (0.0, 1.0));
    }

    #[test]
    fn dense_series_are_drawn_without_markers() {
        let panel = |n: usize| Panel {
            title: "steps".into(),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: vec![Series::new(
                "train loss",
                (0..n).map(|i| (i as f64, 1.0 / (1 + i) as f64)).collect(),
            )],
            integer_x: true,
        };
        let circles = |n| {
            render_svg("t", &[panel(n)])
                .unwrap()
                .matches("<circle")
                .count()
        };
        assert_eq!(circles(40), 40);
        assert_eq!(circles(41), 0);
    }

    #[test]
    fn structure_check_rejects_broken_documents() {
        assert!(check_svg_structure("<svg><g></g></svg>").is_ok());
        assert!(check_svg_structure(
            "<?xml version=\"1.0\"?>\n<svg a=\"1\"><path d=\"M0\"/></svg>"
        )
        .is_ok());
        assert!(check_svg_structure("<html></html>").is_err());
        assert!(check_svg_structure("<svg><g></svg>").is_err());
        assert!(check_svg_structure("<svg><g>").is_err());
        assert!(check_svg_structure("<svg></svg><svg></svg>").is_err());
    }
}
