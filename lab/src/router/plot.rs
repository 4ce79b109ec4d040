//! PNG plot of accuracy against strong (cloud) call share, drawn with plotters and a TrueType
//! font read from the machine through `ab_glyph` (no fontconfig). Without a font the chart is drawn
//! with axes, grid and lines but no text.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::router::report::DatasetReport;
use tandem_router_policy::{Error, Result};

const FONT_CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers the first font found as "sans-serif"; true when text can be drawn.
fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        for path in FONT_CANDIDATES {
            if let Ok(bytes) = std::fs::read(path) {
                // The registry wants 'static bytes; the font lives for the whole process anyway.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

const COLORS: [RGBColor; 7] = [
    RGBColor(150, 150, 150),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(214, 39, 40),
];

/// Draws accuracy against strong-call share for every router of one dataset.
pub fn plot_report(report: &DatasetReport, path: &Path) -> Result<()> {
    draw(report, path, font_ready())
}

/// Draws the chart, with text only when a font is registered.
fn draw(report: &DatasetReport, path: &Path, text: bool) -> Result<()> {
    let err = |e: &dyn std::fmt::Display| Error::Plot(format!("{}: {e}", path.display()));
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (lo, hi) = report
        .rows
        .iter()
        .flat_map(|r| r.curve.accuracy.iter())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &a| {
            (lo.min(a), hi.max(a))
        });
    let pad = ((hi - lo) * 0.05).max(0.01);
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption(
                format!("{}: accuracy vs strong-model share", report.dataset),
                ("sans-serif", 24),
            )
            .x_label_area_size(45)
            .y_label_area_size(60);
    } else {
        builder.x_label_area_size(5).y_label_area_size(5);
    }
    let mut chart = builder
        .build_cartesian_2d(0f32..100f32, (lo - pad)..(hi + pad))
        .map_err(|e| err(&e))?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("strong (cloud) calls, %").y_desc("accuracy");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(|e| err(&e))?;
    for (k, row) in report.rows.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        // Thin the curve to at most ~400 points; the shape is unchanged at this size.
        let step = (row.curve.share.len() / 400).max(1);
        let points: Vec<(f32, f32)> = row
            .curve
            .share
            .iter()
            .zip(&row.curve.accuracy)
            .enumerate()
            .filter(|(i, _)| i % step == 0 || *i + 1 == row.curve.share.len())
            .map(|(_, (s, a))| (100.0 * s, *a))
            .collect();
        let series = chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(&e))?;
        if text {
            let label = format!("{} (APGR {:.3})", row.router, row.apgr.value);
            series.label(label).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 16, y + 5)], color.filled())
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::metrics::Curve;
    use crate::router::report::{RouterRow, WithCi};

    #[test]
    fn draws_without_a_font() {
        let weak = [0.0, 1.0, 0.0, 1.0];
        let strong = [1.0, 1.0, 1.0, 0.0];
        let ci = WithCi {
            value: 0.5,
            lo: 0.5,
            hi: 0.5,
        };
        let report = DatasetReport {
            dataset: "t".into(),
            prompts: 4,
            dropped_contaminated: 0,
            split: "2-fold".into(),
            weak: "w".into(),
            strong: "s".into(),
            weak_accuracy: 0.5,
            strong_accuracy: 0.75,
            rows: vec![RouterRow {
                router: "random".into(),
                apgr: ci,
                cpt50: ci,
                cpt80: ci,
                realised_share: None,
                curve: Curve::from_scores(&[0.0; 4], &weak, &strong),
            }],
            plot: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain.png");
        draw(&report, &path, false).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 100);
    }
}
