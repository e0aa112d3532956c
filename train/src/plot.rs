//! Curves as PNG images, drawn with `plotters` into a pixel buffer and encoded with `png`.
//!
//! Text uses a font bundled with this crate (DejaVu Sans, `assets/`), so plots look the
//! same everywhere and need no system fonts. [`RunLogger::plot`](crate::RunLogger::plot)
//! draws a run's history; [`plot_panels`] draws any series.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Result, TrainError};

/// DejaVu Sans (licence: `assets/DejaVuSans-LICENSE`).
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Line colours, one per series of a panel in order (the "tab10" palette).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Series with at most this many finite points also get a marker on each point (a single
/// point draws no line).
const MARKERS_UP_TO: usize = 30;

/// Size and title of a plot.
///
/// ```
/// use flint_train::plot::PlotOptions;
/// let opts = PlotOptions { width: 640, panel_height: 240, ..PlotOptions::default() };
/// assert_eq!(opts.title, None);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct PlotOptions {
    /// Width of the image in pixels (at least 200).
    pub width: u32,
    /// Height of each panel in pixels (at least 150): the image is `panel_height` times
    /// the number of panels tall, plus 40 for a title.
    pub panel_height: u32,
    /// A title above all panels.
    pub title: Option<String>,
}

impl Default for PlotOptions {
    /// 900 pixels wide, 320 per panel, no title.
    ///
    /// ```
    /// let o = flint_train::plot::PlotOptions::default();
    /// assert_eq!((o.width, o.panel_height), (900, 320));
    /// ```
    fn default() -> Self {
        PlotOptions {
            width: 900,
            panel_height: 320,
            title: None,
        }
    }
}

impl PlotOptions {
    /// The size in pixels `(width, height)` of an image with `panels` panels.
    ///
    /// ```
    /// use flint_train::plot::PlotOptions;
    /// assert_eq!(PlotOptions::default().image_size(2), (900, 640));
    /// let titled = PlotOptions { title: Some("digits".into()), ..PlotOptions::default() };
    /// assert_eq!(titled.image_size(1), (900, 360));
    /// ```
    pub fn image_size(&self, panels: usize) -> (u32, u32) {
        let title = if self.title.is_some() {
            TITLE_HEIGHT
        } else {
            0
        };
        (
            self.width,
            self.panel_height.saturating_mul(panels as u32) + title,
        )
    }
}

const TITLE_HEIGHT: u32 = 40;

/// One line of a panel: a legend label and its `(step, value)` points.
///
/// ```
/// use flint_train::plot::Series;
/// let pts = [(0, 1.0), (1, 0.5)];
/// let s = Series { label: "train/loss", points: &pts };
/// assert_eq!(s.points.len(), 2);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Series<'a> {
    /// The legend entry.
    pub label: &'a str,
    /// The points, in any order (drawn sorted by step). Non-finite values are skipped.
    pub points: &'a [(u64, f64)],
}

/// Draws `panels` (stacked top to bottom, one line per series, a legend, the x axis
/// labelled "step") into a PNG file at `path`. The file is written to a temporary name
/// beside it and renamed, so a reader never sees half an image.
///
/// ```
/// use flint_train::plot::{plot_panels, PlotOptions, Series};
/// let loss = [(0, 2.3), (1, 1.1), (2, 0.6)];
/// let acc = [(0, 0.2), (1, 0.7), (2, 0.9)];
/// let path = std::env::temp_dir().join(format!("flint-train-doc-plot-{}.png", std::process::id()));
/// plot_panels(
///     &path,
///     &[
///         vec![Series { label: "loss", points: &loss }],
///         vec![Series { label: "accuracy", points: &acc }],
///     ],
///     &PlotOptions::default(),
/// )?;
/// assert!(std::fs::read(&path).unwrap().starts_with(b"\x89PNG"));
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), flint_train::TrainError>(())
/// ```
pub fn plot_panels(
    path: impl AsRef<Path>,
    panels: &[Vec<Series<'_>>],
    opts: &PlotOptions,
) -> Result<()> {
    let path = path.as_ref();
    const OP: &str = "plot";
    if panels.is_empty() {
        return Err(TrainError::invalid(OP, "no panels to draw"));
    }
    if let Some(i) = panels.iter().position(|p| p.is_empty()) {
        return Err(TrainError::invalid(OP, format!("panel {i} has no series")));
    }
    if opts.width < 200 || opts.panel_height < 150 {
        return Err(TrainError::invalid(
            OP,
            format!(
                "a plot needs width >= 200 and panel_height >= 150, got {}x{}",
                opts.width, opts.panel_height
            ),
        ));
    }
    let (w, h) = opts.image_size(panels.len());
    if (w as u64) * (h as u64) > 100_000_000 {
        return Err(TrainError::invalid(
            OP,
            format!("an image of {w}x{h} pixels is too large"),
        ));
    }
    register_font().map_err(|msg| TrainError::Plot {
        path: path.to_path_buf(),
        msg,
    })?;
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    draw(&mut rgb, (w, h), panels, opts).map_err(|msg| TrainError::Plot {
        path: path.to_path_buf(),
        msg,
    })?;
    write_png(path, &rgb, (w, h))
}

fn register_font() -> std::result::Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err("the bundled font (DejaVu Sans) could not be loaded".into())
    }
}

/// `(lo, hi)` of the finite values, padded by 5% (a flat line gets a band around it).
fn value_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.05
    } else if lo != 0.0 {
        lo.abs() * 0.05
    } else {
        1.0
    };
    (lo - pad, hi + pad)
}

/// The legend goes where the lines are not at the right end of the panel: a falling
/// loss ends low (legend upper right), a rising accuracy ends high (legend lower right).
fn legend_position(
    series: &[Vec<(u64, f64)>],
    x: (u64, u64),
    y: (f64, f64),
) -> SeriesLabelPosition {
    let x_cut = x.0 as f64 + 0.6 * (x.1 - x.0) as f64;
    let mid = 0.5 * (y.0 + y.1);
    let (mut above, mut below) = (0usize, 0usize);
    for s in series {
        for &(sx, sy) in s {
            if sx as f64 >= x_cut {
                if sy > mid {
                    above += 1;
                } else {
                    below += 1;
                }
            }
        }
    }
    if above > below {
        SeriesLabelPosition::LowerRight
    } else {
        SeriesLabelPosition::UpperRight
    }
}

/// The y-axis description: the last path component shared by all labels ("loss" for
/// `train/loss` and `test/loss`), else the labels themselves.
fn y_description(labels: &[&str]) -> String {
    let last = |l: &str| l.rsplit('/').next().unwrap_or(l).to_string();
    let first = last(labels[0]);
    if labels.iter().all(|l| last(l) == first) {
        first
    } else {
        labels.join(", ")
    }
}

fn draw(
    rgb: &mut [u8],
    size: (u32, u32),
    panels: &[Vec<Series<'_>>],
    opts: &PlotOptions,
) -> std::result::Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let root = BitMapBackend::with_buffer(rgb, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let body = match &opts.title {
        Some(t) => {
            let (top, body) = root.split_vertically(TITLE_HEIGHT);
            top.titled(t, ("sans-serif", 24)).map_err(|e| err(&e))?;
            body
        }
        None => root.clone(),
    };
    let areas = body.split_evenly((panels.len(), 1));
    for (area, panel) in areas.iter().zip(panels) {
        draw_panel(area, panel)?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    panel: &[Series<'_>],
) -> std::result::Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    // finite points sorted by step, one vector per series
    let series: Vec<Vec<(u64, f64)>> = panel
        .iter()
        .map(|s| {
            let mut pts: Vec<(u64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|p| p.1.is_finite())
                .collect();
            pts.sort_by_key(|p| p.0);
            pts
        })
        .collect();
    let steps = series.iter().flatten().map(|p| p.0);
    let x_lo = steps.clone().min().unwrap_or(0);
    let x_hi = steps.max().unwrap_or(1).max(x_lo + 1);
    let (y_lo, y_hi) = value_range(series.iter().flatten().map(|p| p.1));
    let labels: Vec<&str> = panel.iter().map(|s| s.label).collect();

    let mut chart = ChartBuilder::on(area)
        .caption(labels.join(", "), ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_description(&labels))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(RGBColor(236, 236, 236))
        .bold_line_style(RGBColor(210, 210, 210))
        .x_labels(8)
        .y_labels(6)
        .y_label_formatter(&|v| format_tick(*v))
        .draw()
        .map_err(|e| err(&e))?;

    for (i, (s, pts)) in panel.iter().zip(&series).enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let label = if pts.is_empty() {
            format!("{} (no finite values)", s.label)
        } else {
            s.label.to_string()
        };
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
            });
        if pts.len() <= MARKERS_UP_TO {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| err(&e))?;
        }
    }
    chart
        .configure_series_labels()
        .position(legend_position(&series, (x_lo, x_hi), (y_lo, y_hi)))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(160, 160, 160))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}

/// Axis numbers without float noise: 0.30000000000000004 → "0.3", 1e-5 → "1e-5".
fn format_tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e6).contains(&a) {
        let s = format!("{v:.2e}");
        // 1.00e-5 -> 1e-5, 2.50e6 -> 2.5e6
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mant = mant.trim_end_matches('0').trim_end_matches('.');
        return format!("{mant}e{exp}");
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

fn write_png(path: &Path, rgb: &[u8], (w, h): (u32, u32)) -> Result<()> {
    let tmp = crate::logger::temp_sibling(path);
    let result = (|| -> Result<()> {
        let file = std::fs::File::create(&tmp).map_err(|e| TrainError::io(path, e))?;
        let mut out = std::io::BufWriter::new(file);
        let plot_err = |e: png::EncodingError| match e {
            png::EncodingError::IoError(io) => TrainError::io(path, io),
            other => TrainError::Plot {
                path: path.to_path_buf(),
                msg: other.to_string(),
            },
        };
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(plot_err)?;
        writer.write_image_data(rgb).map_err(plot_err)?;
        writer.finish().map_err(plot_err)?;
        std::io::Write::flush(&mut out).map_err(|e| TrainError::io(path, e))?;
        drop(out);
        std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_pad_by_five_percent() {
        assert_eq!(value_range([1.0, 3.0].into_iter()), (0.9, 3.1));
        // flat lines and empty/non-finite series still get a non-empty range
        assert_eq!(value_range([2.0, 2.0].into_iter()), (1.9, 2.1));
        assert_eq!(value_range([0.0].into_iter()), (-1.0, 1.0));
        assert_eq!(
            value_range([f64::NAN, f64::INFINITY].into_iter()),
            (0.0, 1.0)
        );
        assert_eq!(value_range([f64::NAN, 1.0, 3.0].into_iter()), (0.9, 3.1));
    }

    #[test]
    fn tick_labels() {
        assert_eq!(format_tick(0.0), "0");
        assert_eq!(format_tick(0.1 + 0.2), "0.3");
        assert_eq!(format_tick(2.0), "2");
        assert_eq!(format_tick(-1.25), "-1.25");
        assert_eq!(format_tick(1e-5), "1e-5");
        assert_eq!(format_tick(2.5e6), "2.5e6");
    }

    #[test]
    fn y_axis_description() {
        assert_eq!(y_description(&["train/loss", "test/loss"]), "loss");
        assert_eq!(y_description(&["test/accuracy"]), "accuracy");
        assert_eq!(y_description(&["loss", "lr"]), "loss, lr");
    }

    #[test]
    fn legend_avoids_the_lines() {
        let falling = vec![vec![(0, 2.0), (5, 1.0), (10, 0.1)]];
        assert!(matches!(
            legend_position(&falling, (0, 10), (0.0, 2.0)),
            SeriesLabelPosition::UpperRight
        ));
        let rising = vec![vec![(0, 0.1), (5, 0.8), (10, 0.95)]];
        assert!(matches!(
            legend_position(&rising, (0, 10), (0.0, 1.0)),
            SeriesLabelPosition::LowerRight
        ));
    }

    #[test]
    fn invalid_requests_are_errors() {
        let dir = std::env::temp_dir();
        let pts = [(0, 1.0)];
        let one = vec![vec![Series {
            label: "a",
            points: &pts,
        }]];
        let e = plot_panels(dir.join("x.png"), &[], &PlotOptions::default()).unwrap_err();
        assert_eq!(e.to_string(), "plot: no panels to draw");
        let e = plot_panels(dir.join("x.png"), &[vec![]], &PlotOptions::default()).unwrap_err();
        assert_eq!(e.to_string(), "plot: panel 0 has no series");
        let small = PlotOptions {
            width: 100,
            ..PlotOptions::default()
        };
        let e = plot_panels(dir.join("x.png"), &one, &small).unwrap_err();
        assert_eq!(
            e.to_string(),
            "plot: a plot needs width >= 200 and panel_height >= 150, got 100x320"
        );
        // a folder that does not exist: an I/O error naming the image
        let e = plot_panels(
            "/nonexistent-flint-dir/c.png",
            &one,
            &PlotOptions::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("/nonexistent-flint-dir/c.png: "),
            "{e}"
        );
    }
}
