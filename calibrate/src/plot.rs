//! The SA–RA frontier: x = clean accuracy, y = worst-case robust accuracy, a line per
//! λ-conditioned model and width through its λ points, triangles for dedicated (one-λ)
//! models, and at every point its 95 % intervals (Wilson) as bars, so that a difference
//! smaller than the sampling error does not read as signal. One builder
//! ([`Frontier::build`]) serves calibration (`frontier.png` beside the manifest) and
//! `oats-compare`. Drawn with plotters.
//!
//! A fresh machine may have no system fonts, so DejaVu Sans is embedded and rendered with
//! plotters' `ab_glyph` feature (no font-kit / fontconfig). PNG encoding uses the `image`
//! crate the runtime already depends on.
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::error::{CalibrateError, Result};
use oats_runtime::OperatingPoint;

use crate::report::{write_atomic, CalibrationReport};

/// DejaVu Sans (Bitstream Vera licence, see assets/fonts/LICENSE-DejaVu.txt).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

pub const PNG_FILE: &str = "frontier.png";
pub const SVG_FILE: &str = "frontier.svg";
pub const SIZE: (u32, u32) = (1100, 760);

/// Okabe–Ito colours (distinguishable with colour-vision deficiencies), one per width.
pub(crate) const WIDTH_COLORS: [RGBColor; 6] = [
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(0, 114, 178),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(240, 228, 66),
];
/// Baselines: dark, distinct from the width colours.
const BASELINE_COLORS: [RGBColor; 3] = [
    RGBColor(40, 40, 40),
    RGBColor(213, 94, 0),
    RGBColor(120, 60, 160),
];

/// Makes the embedded font the "sans-serif" family of plotters (once per process).
pub fn register_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(CalibrateError::Plot {
            path: "assets/fonts/DejaVuSans.ttf".into(),
            message: "the embedded font could not be parsed".into(),
        })
    }
}

/// One labelled point, in percent, with its 95 % intervals.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub sa: f64,
    pub ra: f64,
    pub label: String,
    /// (low, high) of SA, percent.
    pub sa_ci: (f64, f64),
    /// (low, high) of RA, percent.
    pub ra_ci: (f64, f64),
}

impl Point {
    /// The point of a measurement (worst-case RA; 0 when no attack was run).
    pub fn of(p: &OperatingPoint, label: String) -> Point {
        let pct = |i: oats_runtime::Interval| (i.low * 100.0, i.high * 100.0);
        let ra = p.ra_worst.unwrap_or(0.0) * 100.0;
        Point {
            sa: p.sa * 100.0,
            ra,
            label,
            sa_ci: pct(p.sa_interval()),
            ra_ci: p.ra_worst_interval().map_or((ra, ra), pct),
        }
    }
}

/// A line (one model at one width, through its λ points) or a set of markers (dedicated
/// baseline models).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<Point>,
    /// Fixed colour (e.g. the same for a width's line and its baseline markers); `None`
    /// takes the next colour of the palette.
    pub color: Option<RGBColor>,
}

/// Everything drawn; built by [`Frontier::build`].
#[derive(Debug, Clone, PartialEq)]
pub struct Frontier {
    pub title: String,
    pub subtitle: String,
    pub x_desc: String,
    pub y_desc: String,
    /// Drawn as lines with round markers (one model, λ varying).
    pub lines: Vec<Series>,
    /// Drawn as triangles (dedicated baselines).
    pub markers: Vec<Series>,
}

/// "pgd-at" → "PGD-AT", "oats" → "OATS".
pub fn mode_label(mode: &str) -> String {
    mode.to_ascii_uppercase()
}

/// One model's measured configurations, as the frontier draws them.
#[derive(Debug, Clone)]
pub struct ModelPoints<'a> {
    /// "OATS (dual BN)", "PGD-AT (baseline)", …
    pub label: String,
    /// A dedicated model (one fixed λ): drawn as triangles, each labelled
    /// "`point_prefix` λ=…"; otherwise a line per width through its λ points.
    pub dedicated: bool,
    pub point_prefix: String,
    pub points: Vec<&'a OperatingPoint>,
    /// The training λ set of a conditioned model: other λ are labelled "(unseen)".
    pub trained_lambdas: Option<&'a [f64]>,
    /// Markers only: leave the points unlabelled (int8 twins sit on their float points,
    /// whose labels already say the λ).
    pub unlabelled: bool,
}

/// Colours of λ-conditioned models when all share one width (e.g. OAT dual vs normal BN):
/// blue, pink, green of the palette. With several widths colour encodes width instead, so a
/// width's line and its dedicated models share a colour.
const MODEL_COLORS: [RGBColor; 3] = [WIDTH_COLORS[2], WIDTH_COLORS[3], WIDTH_COLORS[1]];

impl Frontier {
    /// The plot of `models`. Lines: only the points worth reading get labels (every λ at
    /// full width, the ends at the others); points at one spot share a label.
    pub fn build(
        title: String,
        subtitle: &str,
        y_desc: String,
        models: &[ModelPoints],
    ) -> Frontier {
        let mut widths: Vec<f64> = models
            .iter()
            .flat_map(|m| m.points.iter().map(|p| p.width))
            .collect();
        widths.sort_by(f64::total_cmp);
        widths.dedup();
        let multi_width = widths.len() > 1;
        let width_color = |w: f64| {
            widths
                .iter()
                .position(|&x| x == w)
                .map(|i| WIDTH_COLORS[i % WIDTH_COLORS.len()])
        };
        let full_width = widths.last().copied().unwrap_or(1.0);
        let mut lines = Vec::new();
        let mut markers: Vec<Series> = Vec::new();
        let mut n_models = 0;
        for m in models {
            let lambda_label = |l: f64| match m.trained_lambdas {
                Some(ls) if !ls.iter().any(|&t| oats_train::config::same_setting(t, l)) => {
                    format!("{l} (unseen)")
                }
                _ => format!("{l}"),
            };
            for &w in &widths {
                let mut ps: Vec<&OperatingPoint> =
                    m.points.iter().copied().filter(|p| p.width == w).collect();
                if ps.is_empty() {
                    continue;
                }
                ps.sort_by(|a, b| a.lambda.total_cmp(&b.lambda));
                let suffix = if multi_width {
                    format!(" width {w}")
                } else {
                    String::new()
                };
                let label = format!("{}{suffix}", m.label);
                if m.dedicated {
                    let prefix = if m.point_prefix.is_empty() {
                        String::new()
                    } else {
                        format!("{} ", m.point_prefix)
                    };
                    let pts = ps.iter().map(|p| {
                        let text = if m.unlabelled {
                            String::new()
                        } else {
                            format!("{prefix}λ={}", p.lambda)
                        };
                        Point::of(p, text)
                    });
                    match markers.iter_mut().find(|s| s.label == label) {
                        Some(s) => s.points.extend(pts),
                        None => markers.push(Series {
                            label,
                            points: pts.collect(),
                            color: if multi_width { width_color(w) } else { None },
                        }),
                    }
                } else {
                    let color = if multi_width {
                        width_color(w)
                    } else {
                        Some(MODEL_COLORS[n_models % MODEL_COLORS.len()])
                    };
                    let last = ps.len() - 1;
                    let points = ps
                        .iter()
                        .enumerate()
                        .map(|(i, p)| {
                            let shown = w == full_width || i == 0 || i == last;
                            let text = if shown {
                                format!("λ={}", lambda_label(p.lambda))
                            } else {
                                String::new()
                            };
                            Point::of(p, text)
                        })
                        .collect();
                    lines.push(Series {
                        label,
                        points: merge_labels(points),
                        color,
                    });
                }
            }
            if !m.dedicated {
                n_models += 1;
            }
        }
        Frontier {
            title,
            subtitle: format!("{subtitle} · bars: 95 % intervals (Wilson)"),
            x_desc: "clean accuracy (%)".into(),
            y_desc,
            lines,
            markers,
        }
    }

    /// The frontier of one calibration: a line per width through its λ points, the
    /// baselines' points as triangles.
    pub fn of_calibration(report: &CalibrationReport, baselines: &[CalibrationReport]) -> Frontier {
        let mut models = vec![ModelPoints {
            label: mode_label(&report.mode),
            dedicated: false,
            point_prefix: String::new(),
            points: report
                .graphs
                .iter()
                .filter(|g| g.int8.is_none())
                .map(|g| &g.point)
                .collect(),
            trained_lambdas: None,
            unlabelled: false,
        }];
        // int8 configurations: markers beside their float twins, not part of the λ lines.
        let int8: Vec<&OperatingPoint> = report
            .graphs
            .iter()
            .filter(|g| g.int8.is_some())
            .map(|g| &g.point)
            .collect();
        if !int8.is_empty() {
            models.push(ModelPoints {
                label: format!("{} int8", mode_label(&report.mode)),
                dedicated: true,
                point_prefix: String::new(),
                points: int8,
                trained_lambdas: None,
                unlabelled: true,
            });
        }
        models.extend(baselines.iter().map(|b| ModelPoints {
            label: format!("{} (baseline)", mode_label(&b.mode)),
            dedicated: true,
            point_prefix: mode_label(&b.mode),
            points: b.graphs.iter().map(|g| &g.point).collect(),
            trained_lambdas: None,
            unlabelled: false,
        }));
        Frontier::build(
            format!("SA–RA frontier of {}", report.model_id),
            &format!(
                "{} {} split, n = {}, L∞ ε = {} · attacks run on the training-framework model and replayed through each exported graph · one line per width, points labelled by λ",
                report.dataset, report.split, report.samples, report.eps
            ),
            format!(
                "robust accuracy (%), worst of {}, ε = {}",
                report.attacks_pretty, report.eps
            ),
            &models,
        )
    }

    fn all_points(&self) -> impl Iterator<Item = &Point> {
        self.lines
            .iter()
            .chain(&self.markers)
            .flat_map(|s| s.points.iter())
    }

    /// Axis ranges in percent, padded (more to the right and top, where labels go).
    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let range = |vals: Vec<f64>| {
            let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let (lo, hi) = if lo.is_finite() {
                (lo, hi)
            } else {
                (0.0, 100.0)
            };
            let span = (hi - lo).max(4.0);
            ((lo - 0.08 * span).max(0.0), (hi + 0.15 * span).min(100.0))
        };
        let finite = |v: f64| v.is_finite().then_some(v);
        (
            range(
                self.all_points()
                    .flat_map(|p| [p.sa, p.sa_ci.0, p.sa_ci.1])
                    .filter_map(finite)
                    .collect(),
            ),
            range(
                self.all_points()
                    .flat_map(|p| [p.ra, p.ra_ci.0, p.ra_ci.1])
                    .filter_map(finite)
                    .collect(),
            ),
        )
    }

    /// The corner of the plot with the fewest points, for the legend.
    fn legend_corner(&self) -> SeriesLabelPosition {
        let ((x0, x1), (y0, y1)) = self.ranges();
        let corners = [
            (SeriesLabelPosition::UpperRight, true, true),
            (SeriesLabelPosition::UpperLeft, false, true),
            (SeriesLabelPosition::LowerRight, true, false),
            (SeriesLabelPosition::LowerLeft, false, false),
        ];
        let count = |right: bool, top: bool| {
            self.all_points()
                .filter(|p| {
                    let fx = (p.sa - x0) / (x1 - x0);
                    let fy = (p.ra - y0) / (y1 - y0);
                    (if right { fx > 0.55 } else { fx < 0.45 })
                        && (if top { fy > 0.6 } else { fy < 0.4 })
                })
                .count()
        };
        corners
            .into_iter()
            .min_by_key(|&(_, r, t)| count(r, t))
            .map_or(SeriesLabelPosition::UpperRight, |c| c.0)
    }

    /// Draws onto any plotters backend.
    pub fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let body = header(root, &self.title, &self.subtitle)?;
        let ((x0, x1), (y0, y1)) = self.ranges();
        let mut chart = ChartBuilder::on(&body)
            .margin_left(12)
            .margin_right(28)
            .margin_bottom(8)
            .margin_top(6)
            .x_label_area_size(58)
            .y_label_area_size(78)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        let fmt_x = |v: &f64| {
            if x1 - x0 < 8.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        };
        let fmt_y = |v: &f64| {
            if y1 - y0 < 8.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        };
        chart
            .configure_mesh()
            .x_desc(self.x_desc.clone())
            .y_desc(self.y_desc.clone())
            .axis_desc_style((FAMILY, 17))
            .label_style((FAMILY, 14))
            .x_label_formatter(&fmt_x)
            .y_label_formatter(&fmt_y)
            .bold_line_style(RGBColor(215, 215, 215))
            .light_line_style(RGBColor(242, 242, 242))
            .draw()?;
        // 95 % intervals first, thin and light, so the markers stay on top.
        let series_colors = self
            .lines
            .iter()
            .enumerate()
            .map(|(i, s)| (s, s.color.unwrap_or(WIDTH_COLORS[i % WIDTH_COLORS.len()])))
            .chain(self.markers.iter().enumerate().map(|(i, s)| {
                (
                    s,
                    s.color
                        .unwrap_or(BASELINE_COLORS[i % BASELINE_COLORS.len()]),
                )
            }));
        for (s, color) in series_colors {
            let style = color.mix(0.45).stroke_width(1);
            for p in &s.points {
                chart.draw_series([
                    PathElement::new(vec![(p.sa_ci.0, p.ra), (p.sa_ci.1, p.ra)], style),
                    PathElement::new(vec![(p.sa, p.ra_ci.0), (p.sa, p.ra_ci.1)], style),
                ])?;
            }
        }
        let label_font = |c: RGBColor| (FAMILY, 14).into_font().color(&darker(c));
        let mut labels: Vec<(BackendCoord, String, RGBColor)> = Vec::new();
        for (i, s) in self.lines.iter().enumerate() {
            let color = s.color.unwrap_or(WIDTH_COLORS[i % WIDTH_COLORS.len()]);
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().map(|p| (p.sa, p.ra)),
                    color.stroke_width(2),
                ))?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(-2, 0), (22, 0)], color.stroke_width(2))
                        + Circle::new((10, 0), 5, color.filled())
                });
            chart.draw_series(
                s.points
                    .iter()
                    .map(|p| Circle::new((p.sa, p.ra), 5, color.filled())),
            )?;
            labels.extend(
                s.points
                    .iter()
                    .map(|p| (chart.backend_coord(&(p.sa, p.ra)), p.label.clone(), color)),
            );
        }
        for (i, s) in self.markers.iter().enumerate() {
            let color = s
                .color
                .unwrap_or(BASELINE_COLORS[i % BASELINE_COLORS.len()]);
            chart
                .draw_series(
                    s.points
                        .iter()
                        .map(|p| TriangleMarker::new((p.sa, p.ra), 8, color.filled())),
                )?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y)) + TriangleMarker::new((10, 0), 8, color.filled())
                });
            labels.extend(
                s.points
                    .iter()
                    .map(|p| (chart.backend_coord(&(p.sa, p.ra)), p.label.clone(), color)),
            );
        }
        // Labels last, each placed where it covers no marker and no other label if possible.
        let (xr, yr) = chart.plotting_area().get_pixel_range();
        let mut placer = Placer {
            taken: labels.iter().map(|l| marker_box(l.0)).collect(),
            area: (xr.start, yr.start, xr.end, yr.end),
        };
        for (at, text, color) in labels.iter().filter(|l| !l.1.is_empty()) {
            let font = label_font(*color);
            let (w, h) = root.estimate_text_size(text, &font)?;
            let pos = placer.place(*at, w as i32, h as i32);
            root.draw(&Text::new(text.clone(), pos, font))?;
        }
        chart
            .configure_series_labels()
            .position(self.legend_corner())
            .margin(12)
            .label_font((FAMILY, 15))
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(160, 160, 160))
            .draw()?;
        root.present()
    }

    /// Writes `<dir>/frontier.png` and `<dir>/frontier.svg` (each atomically).
    pub fn write(&self, dir: &Path) -> Result<()> {
        self.write_as(&dir.join(PNG_FILE), &dir.join(SVG_FILE))
    }

    /// Writes the plot as PNG to `png` and as SVG to `svg` (each atomically).
    pub fn write_as(&self, png: &Path, svg: &Path) -> Result<()> {
        write_plot(self, png, svg)
    }
}

impl Drawable for Frontier {
    fn draw_on<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        self.draw(root)
    }
}

/// Clears `root`, draws the title and the subtitle (wrapped at its " · " separators onto a
/// second line when wider than the picture) and returns the area below them.
fn header<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    subtitle: &str,
) -> std::result::Result<DrawingArea<DB, Shift>, DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(78);
    top.draw(&Text::new(
        title.to_string(),
        (24, 14),
        (FAMILY, 26).into_font().color(&BLACK),
    ))?;
    let sub_font = (FAMILY, 14).into_font().color(&RGBColor(80, 80, 80));
    let max_w = root.dim_in_pixel().0.saturating_sub(48);
    let mut lines: Vec<String> = vec![String::new()];
    for p in subtitle.split(" · ") {
        let last = lines.last_mut().map_or(String::new(), |l| l.clone());
        let joined = if last.is_empty() {
            p.to_string()
        } else {
            format!("{last} · {p}")
        };
        if root.estimate_text_size(&joined, &sub_font)?.0 <= max_w || last.is_empty() {
            if let Some(l) = lines.last_mut() {
                *l = joined;
            }
        } else {
            lines.push(p.to_string());
        }
    }
    for (i, l) in lines.iter().take(2).enumerate() {
        top.draw(&Text::new(
            l.clone(),
            (24, 44 + 18 * i as i32),
            sub_font.clone(),
        ))?;
    }
    Ok(body)
}

/// A figure that draws itself onto any plotters backend, so that one function writes every
/// figure as PNG and SVG.
pub trait Drawable {
    fn draw_on<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>>;
}

/// Writes `fig` as PNG to `png` and as SVG to `svg` ([`SIZE`], each atomically).
pub fn write_plot(fig: &impl Drawable, png: &Path, svg: &Path) -> Result<()> {
    register_font()?;
    let (w, h) = SIZE;
    let plot_err = |path: &Path, e: String| CalibrateError::Plot {
        path: path.into(),
        message: e,
    };
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        fig.draw_on(&root)
            .map_err(|e| plot_err(png, e.to_string()))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| plot_err(png, "bitmap buffer has the wrong size".into()))?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|e| plot_err(png, e.to_string()))?;
    write_atomic(png, bytes.get_ref())?;
    let mut text = String::new();
    {
        let root = SVGBackend::with_string(&mut text, (w, h)).into_drawing_area();
        fig.draw_on(&root)
            .map_err(|e| plot_err(svg, e.to_string()))?;
    }
    write_atomic(svg, text.as_bytes())
}

/// The shortfall ([`crate::gap`]) against capacity, one small panel per comparison (e.g. each
/// dedicated λ, then the worst of them), so that a partial study already shows where the gap
/// lies: in each panel one line per series (e.g. a λ sampling), x = channel multiplier on a
/// log₂ axis, y = gap in accuracy points with its 95 % interval as a bar, and the 1-point line
/// of "no worse". Every panel has the same y range, so panels compare at a glance; the legend
/// takes the grid's last free cell.
pub struct GapPlot {
    pub title: String,
    pub subtitle: String,
    /// The panels, row by row (three to a row).
    pub panels: Vec<GapPanel>,
    /// The capacities the axes span (and label), e.g. [1, 2, 4], whatever has data yet.
    pub capacities: Vec<f64>,
}

/// One panel of a [`GapPlot`]: its title and its series, (label, [(capacity multiplier,
/// gap)]). A series keeps its colour across panels by its label.
pub struct GapPanel {
    pub title: String,
    pub series: Vec<(String, Vec<(f64, crate::gap::Est)>)>,
}

const GAP_COLUMNS: usize = 3;

impl GapPlot {
    /// Every series label, in first-seen order: its index is its colour.
    fn labels(&self) -> Vec<&str> {
        let mut labels: Vec<&str> = Vec::new();
        for (label, _) in self.panels.iter().flat_map(|p| p.series.iter()) {
            if !labels.contains(&label.as_str()) {
                labels.push(label);
            }
        }
        labels
    }
}

impl Drawable for GapPlot {
    fn draw_on<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        let body = header(root, &self.title, &self.subtitle)?;
        let pts = self
            .panels
            .iter()
            .flat_map(|p| p.series.iter())
            .flat_map(|(_, v)| v.iter());
        let (mut lo, mut hi) = (-1.0f64, 2.0f64);
        let mut xmax = self.capacities.iter().copied().fold(2.0f64, f64::max);
        for (x, e) in pts {
            lo = lo.min(e.value - e.half_width);
            hi = hi.max(e.value + e.half_width);
            xmax = xmax.max(*x);
        }
        let (lo, hi) = (lo - 0.5, hi + 0.5);
        let labels = self.labels();
        let color_of = |label: &str| {
            let i = labels.iter().position(|l| *l == label).unwrap_or(0);
            WIDTH_COLORS[i % WIDTH_COLORS.len()]
        };
        let xs = |x: f64| x.log2();
        let x_end = xs(xmax) + 0.25;
        let grey = RGBColor(150, 150, 150);
        // One cell more than the panels, for the legend.
        let rows = (self.panels.len() + 1).div_ceil(GAP_COLUMNS).max(1);
        let cells = body.split_evenly((rows, GAP_COLUMNS));
        for (k, (panel, area)) in self.panels.iter().zip(cells.iter()).enumerate() {
            let (row, col) = (k / GAP_COLUMNS, k % GAP_COLUMNS);
            let mut chart = ChartBuilder::on(area)
                .margin(10)
                .caption(&panel.title, (FAMILY, 17))
                .x_label_area_size(if row + 1 == rows { 44 } else { 26 })
                .y_label_area_size(if col == 0 { 62 } else { 40 })
                .build_cartesian_2d(-0.25..x_end, lo..hi)?;
            let mut mesh = chart.configure_mesh();
            mesh.x_labels((xs(xmax) as usize) + 1)
                .disable_x_mesh()
                .x_label_formatter(&|v| format!("×{}", 2f64.powf(*v).round()))
                .label_style((FAMILY, 13))
                .axis_desc_style((FAMILY, 14));
            if row + 1 == rows {
                mesh.x_desc("capacity (× channels)");
            }
            if col == 0 {
                mesh.y_desc("shortfall (points)");
            }
            mesh.draw()?;
            chart.draw_series(LineSeries::new(
                [(-0.25, 1.0), (x_end, 1.0)],
                ShapeStyle::from(&grey).stroke_width(2),
            ))?;
            chart.draw_series(LineSeries::new(
                [(-0.25, 0.0), (x_end, 0.0)],
                ShapeStyle::from(&RGBColor(210, 210, 210)).stroke_width(1),
            ))?;
            for (i, (label, v)) in panel.series.iter().enumerate() {
                let color = color_of(label);
                // Series side by side around each capacity, so that their bars do not hide
                // each other.
                let dx = (i as f64 - (panel.series.len() as f64 - 1.0) / 2.0) * 0.08;
                let line: Vec<(f64, f64)> = v.iter().map(|(x, e)| (xs(*x) + dx, e.value)).collect();
                chart.draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?;
                chart.draw_series(line.iter().map(|&p| Circle::new(p, 5, color.filled())))?;
                chart.draw_series(v.iter().map(|(x, e)| {
                    let x = xs(*x) + dx;
                    PathElement::new(
                        [(x, e.value - e.half_width), (x, e.value + e.half_width)],
                        color.stroke_width(2),
                    )
                }))?;
            }
            if panel.series.is_empty() {
                let (w, h) = area.dim_in_pixel();
                area.draw(&Text::new(
                    "no data yet",
                    (w as i32 / 2 - 40, h as i32 / 2),
                    (FAMILY, 15).into_font().color(&grey),
                ))?;
            }
        }
        // The legend, in the first cell after the panels.
        if let Some(area) = cells.get(self.panels.len()) {
            let mut entries: Vec<(String, RGBColor, u32)> = labels
                .iter()
                .map(|l| (l.to_string(), color_of(l), 3))
                .collect();
            entries.push(("1 point: \"no worse\" within it".into(), grey, 2));
            let font = (FAMILY, 15).into_font().color(&BLACK);
            for (i, (label, color, stroke)) in entries.into_iter().enumerate() {
                let y = 40 + 28 * i as i32;
                area.draw(&PathElement::new(
                    [(24, y), (54, y)],
                    color.stroke_width(stroke),
                ))?;
                area.draw(&Text::new(label, (64, y - 9), font.clone()))?;
            }
            let note = (FAMILY, 13).into_font().color(&RGBColor(80, 80, 80));
            let y = 52 + 28 * (labels.len() as i32 + 1);
            for (i, line) in [
                "dots: mean over the seeds present;",
                "bars: 95 % interval; > 0: the",
                "dedicated model is better",
            ]
            .iter()
            .enumerate()
            {
                area.draw(&Text::new(*line, (24, y + 18 * i as i32), note.clone()))?;
            }
        }
        Ok(())
    }
}

/// Points of one series at the same spot share one label: "λ=0, 0.1, 0.2".
fn merge_labels(mut points: Vec<Point>) -> Vec<Point> {
    for i in 0..points.len() {
        if let Some(j) = (0..i).find(|&j| {
            points[j].sa == points[i].sa
                && points[j].ra == points[i].ra
                && !points[j].label.is_empty()
        }) {
            let extra = points[i].label.trim_start_matches("λ=").to_string();
            points[j].label = format!("{}, {extra}", points[j].label);
            points[i].label.clear();
        }
    }
    points
}

/// Pixel position on the drawing backend.
type BackendCoord = (i32, i32);
type PixelBox = (i32, i32, i32, i32);

fn marker_box((x, y): BackendCoord) -> PixelBox {
    (x - 6, y - 6, x + 6, y + 6)
}

/// Greedy label placement around a point: the first candidate position that overlaps no
/// marker or earlier label and stays inside the plot, else the first candidate.
struct Placer {
    taken: Vec<PixelBox>,
    area: PixelBox,
}

impl Placer {
    fn place(&mut self, (x, y): BackendCoord, w: i32, h: i32) -> BackendCoord {
        let candidates = [
            (8, -h - 2),
            (8, 4),
            (-8 - w, -h - 2),
            (-8 - w, 4),
            (9, -h / 2),
            (-9 - w, -h / 2),
            (8, -2 * h - 4),
            (8, h + 6),
            (-8 - w, -2 * h - 4),
            (-8 - w, h + 6),
        ];
        let boxed = |(dx, dy): (i32, i32)| (x + dx, y + dy, x + dx + w, y + dy + h);
        let overlaps =
            |a: &PixelBox, b: &PixelBox| a.0 < b.2 && b.0 < a.2 && a.1 < b.3 && b.1 < a.3;
        let inside = |b: &PixelBox| {
            b.0 >= self.area.0 && b.1 >= self.area.1 && b.2 <= self.area.2 && b.3 <= self.area.3
        };
        let chosen = candidates
            .iter()
            .map(|&c| boxed(c))
            .find(|b| inside(b) && !self.taken.iter().any(|t| overlaps(t, b)))
            .unwrap_or_else(|| boxed(candidates[0]));
        self.taken.push(chosen);
        (chosen.0, chosen.1)
    }
}

fn darker(c: RGBColor) -> RGBColor {
    let f = |v: u8| (v as f64 * 0.7) as u8;
    RGBColor(f(c.0), f(c.1), f(c.2))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gap::Est;

    /// A gap figure draws every panel's title, its series once in the legend, and says so
    /// when a panel has no data yet (a partial study), without failing on empty panels.
    #[test]
    fn gap_plot_draws_panels_and_one_legend() {
        register_font().expect("font");
        let e = |value| Est {
            value,
            half_width: 2.0,
        };
        let fig = GapPlot {
            title: "t".into(),
            subtitle: "s".into(),
            panels: vec![
                GapPanel {
                    title: "against λ = 0".into(),
                    series: vec![
                        ("sampling A".into(), vec![(1.0, e(3.0)), (4.0, e(0.5))]),
                        ("sampling B".into(), vec![(4.0, e(-0.5))]),
                    ],
                },
                GapPanel {
                    title: "against λ = 1".into(),
                    series: vec![],
                },
                GapPanel {
                    title: "worst".into(),
                    series: vec![("sampling A".into(), vec![(2.0, e(9.0))])],
                },
            ],
            capacities: vec![1.0, 2.0, 4.0],
        };
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
            fig.draw_on(&root).expect("draw");
        }
        for text in [
            "against λ = 0",
            "against λ = 1",
            "worst",
            "no data yet",
            "×4",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert_eq!(svg.matches("sampling A").count(), 1, "one legend entry");
        assert_eq!(svg.matches("sampling B").count(), 1);
        assert_eq!(svg.matches("no data yet").count(), 1);
    }
}
