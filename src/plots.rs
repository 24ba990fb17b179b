//! PNG plots for the report (plotters, bitmap backend): weight-value histograms (the paper's
//! Figure 1 idea), accuracy and sparsity curves over epochs (Figure 4), per-layer cosine
//! similarity bars (Table 4).
//!
//! Text is drawn with plotters' `ttf` feature, which finds fonts through the system font
//! directories (e.g. Debian's `fonts-dejavu-core`, present on the project's machines). If no
//! font can be loaded, [`text_renders`] returns false and the plots are drawn without any text
//! (the report then carries the titles and axis names in its captions).

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

const FONT: &str = "sans-serif";

/// Whether text can be rendered (a font was found). Checked once per process.
pub fn text_renders() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        let mut buf = vec![0u8; 64 * 32 * 3];
        let drawn = {
            let root = BitMapBackend::with_buffer(&mut buf, (64, 32)).into_drawing_area();
            root.fill(&WHITE).is_ok()
                && root
                    .draw(&Text::new("Ag0", (2, 2), (FONT, 20).into_font()))
                    .is_ok()
                && root.present().is_ok()
        };
        // Something non-white must have been drawn.
        drawn && buf.iter().any(|&b| b < 200)
    })
}

fn err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow!("{}: cannot draw plot: {e}", path.display())
}

/// Named colours of the series, in order.
fn palette(i: usize) -> RGBColor {
    const C: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    C[i % C.len()]
}

/// Histogram panels stacked vertically, one per `(label, values)`, sharing the x range.
/// The y axis is the fraction of values per bin (log scale would hide the ternary spikes).
pub fn histograms(
    path: &Path,
    title: &str,
    panels: &[(String, Vec<f32>)],
    bins: usize,
) -> Result<()> {
    let text = text_renders();
    let e = err(path);
    let h = 40 + 220 * panels.len().max(1) as u32;
    let root = BitMapBackend::new(path, (900, h)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let root = if text {
        root.titled(title, (FONT, 24)).map_err(&e)?
    } else {
        root
    };
    let lim = panels
        .iter()
        .flat_map(|(_, v)| v.iter())
        .fold(0f32, |m, &x| if x.is_finite() { m.max(x.abs()) } else { m });
    let lim = if lim > 0.0 { lim as f64 * 1.05 } else { 1.0 };
    let areas = root.split_evenly((panels.len().max(1), 1));
    for (i, ((label, values), area)) in panels.iter().zip(areas.iter()).enumerate() {
        let width = 2.0 * lim / bins as f64;
        let mut counts = vec![0usize; bins];
        for &v in values.iter().filter(|v| v.is_finite()) {
            let b = (((v as f64) + lim) / width).floor() as isize;
            counts[b.clamp(0, bins as isize - 1) as usize] += 1;
        }
        let total = values.len().max(1) as f64;
        let ymax = counts.iter().copied().max().unwrap_or(0) as f64 / total;
        let mut b = ChartBuilder::on(area);
        b.margin(8)
            .x_label_area_size(if text { 30 } else { 0 })
            .y_label_area_size(if text { 55 } else { 0 });
        if text {
            b.caption(format!("{label}  (n = {})", values.len()), (FONT, 17));
        }
        let mut chart = b
            .build_cartesian_2d(-lim..lim, 0.0..(ymax * 1.1).max(1e-6))
            .map_err(&e)?;
        let mut mesh = chart.configure_mesh();
        mesh.disable_x_mesh();
        if text {
            mesh.x_desc("weight value").y_desc("fraction");
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(&e)?;
        let color = palette(i);
        chart
            .draw_series(
                counts
                    .iter()
                    .enumerate()
                    .filter(|(_, &c)| c > 0)
                    .map(|(k, &c)| {
                        let x0 = -lim + k as f64 * width;
                        Rectangle::new([(x0, 0.0), (x0 + width, c as f64 / total)], color.filled())
                    }),
            )
            .map_err(&e)?;
    }
    root.present().map_err(&e)?;
    Ok(())
}

/// One line series: label, points (x, y), dashed.
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points.
    pub points: Vec<(f64, f64)>,
}

/// Accuracy curves (left axis, %) and optional sparsity curves (right axis, %, dashed), over
/// epochs: the paper's Figure 4 idea.
pub fn curves(
    path: &Path,
    title: &str,
    x_desc: &str,
    accuracy: &[Series],
    sparsity: &[Series],
) -> Result<()> {
    let text = text_renders();
    let e = err(path);
    let root = BitMapBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let xmax = accuracy
        .iter()
        .chain(sparsity)
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let mut b = ChartBuilder::on(&root);
    b.margin(12)
        .x_label_area_size(if text { 40 } else { 0 })
        .y_label_area_size(if text { 55 } else { 0 })
        .right_y_label_area_size(if text && !sparsity.is_empty() { 55 } else { 0 });
    if text {
        b.caption(title, (FONT, 24));
    }
    let mut chart = b
        .build_cartesian_2d(0.0..xmax, 0.0..100.0)
        .map_err(&e)?
        .set_secondary_coord(0.0..xmax, 0.0..100.0);
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc(x_desc).y_desc("test top-1 accuracy (%)");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(&e)?;
    if !sparsity.is_empty() && text {
        chart
            .configure_secondary_axes()
            .y_desc("sparsity (%), dashed")
            .draw()
            .map_err(&e)?;
    }
    for (i, s) in accuracy.iter().enumerate() {
        let c = palette(i);
        let series = chart
            .draw_series(LineSeries::new(s.points.clone(), c.stroke_width(2)))
            .map_err(&e)?;
        if text {
            series
                .label(format!("{} accuracy", s.label))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, c.filled())))
            .map_err(&e)?;
    }
    for (i, s) in sparsity.iter().enumerate() {
        let c = palette(i);
        let series = chart
            .draw_secondary_series(DashedLineSeries::new(
                s.points.clone(),
                6,
                4,
                c.stroke_width(2),
            ))
            .map_err(&e)?;
        if text {
            series
                .label(format!("{} sparsity", s.label))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 8, y)], c.stroke_width(2))
                });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()
            .map_err(&e)?;
    }
    root.present().map_err(&e)?;
    Ok(())
}

/// Test top-1 against sparsity, one line per method (points in the order given), and an
/// optional horizontal reference line (the full-precision model).
pub fn accuracy_vs_sparsity(
    path: &Path,
    title: &str,
    series: &[Series],
    reference: Option<(&str, f64)>,
) -> Result<()> {
    let text = text_renders();
    let e = err(path);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(reference.map(|r| r.1))
        .collect();
    let (lo, hi) = ys
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &y| {
            (a.min(y), b.max(y))
        });
    let (lo, hi) = if lo.is_finite() {
        ((lo - 2.0).floor(), (hi + 2.0).ceil())
    } else {
        (0.0, 100.0)
    };
    let mut b = ChartBuilder::on(&root);
    b.margin(12)
        .x_label_area_size(if text { 40 } else { 0 })
        .y_label_area_size(if text { 55 } else { 0 });
    if text {
        b.caption(title, (FONT, 22));
    }
    let mut chart = b.build_cartesian_2d(0.0..100.0, lo..hi).map_err(&e)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("sparsity of the ternary weights (% zeros)")
            .y_desc("test top-1 accuracy (%)");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(&e)?;
    if let Some((label, y)) = reference {
        let series = chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, y), (100.0, y)],
                8,
                5,
                BLACK.stroke_width(1),
            ))
            .map_err(&e)?;
        if text {
            let label = label.to_string();
            series.label(label).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(1))
            });
        }
    }
    for (i, s) in series.iter().enumerate() {
        let c = palette(i);
        let line = chart
            .draw_series(LineSeries::new(s.points.clone(), c.stroke_width(2)))
            .map_err(&e)?;
        if text {
            line.label(s.label.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
            });
        }
        chart
            .draw_series(s.points.iter().map(|&p| Circle::new(p, 4, c.filled())))
            .map_err(&e)?;
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()
            .map_err(&e)?;
    }
    root.present().map_err(&e)?;
    Ok(())
}

/// Grouped bars: one group per label (e.g. layer), one bar per `(series, values)`.
pub fn bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    labels: &[String],
    groups: &[(String, Vec<f64>)],
    y_range: (f64, f64),
) -> Result<()> {
    let text = text_renders();
    let e = err(path);
    let width = (120 + 60 * labels.len() as u32).clamp(700, 2400);
    let root = BitMapBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let n = labels.len().max(1);
    let mut b = ChartBuilder::on(&root);
    b.margin(12)
        .x_label_area_size(if text { 40 } else { 0 })
        .y_label_area_size(if text { 55 } else { 0 });
    if text {
        b.caption(title, (FONT, 24));
    }
    let mut chart = b
        .build_cartesian_2d(0.0..n as f64, y_range.0..y_range.1)
        .map_err(&e)?;
    let names = labels.to_vec();
    let fmt = move |x: &f64| -> String {
        let i = x.floor() as usize;
        if (x - x.floor() - 0.5).abs() < 1e-6 {
            names.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh();
    if text {
        mesh.y_desc(y_desc)
            .x_labels(2 * n + 1)
            .x_label_formatter(&fmt)
            .x_label_style((FONT, 12));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(&e)?;
    let k = groups.len().max(1) as f64;
    for (g, (name, values)) in groups.iter().enumerate() {
        let c = palette(g);
        let w = 0.8 / k;
        let series = chart
            .draw_series(values.iter().enumerate().map(|(i, &v)| {
                let x0 = i as f64 + 0.1 + g as f64 * w;
                Rectangle::new([(x0, y_range.0), (x0 + w, v)], c.filled())
            }))
            .map_err(&e)?;
        if text {
            series
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
    }
    if text && !groups.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 14))
            .draw()
            .map_err(&e)?;
    }
    root.present().map_err(&e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_size(p: &Path) -> (u32, u32) {
        let b = std::fs::read(p).unwrap();
        assert_eq!(&b[1..4], b"PNG", "{} is not a PNG", p.display());
        let w = u32::from_be_bytes(b[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(b[20..24].try_into().unwrap());
        (w, h)
    }

    #[test]
    fn plots_are_written_as_png() {
        let d = std::env::temp_dir().join(format!("hla-plots-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let vals: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.37).sin() * 0.2).collect();
        let tern: Vec<f32> = vals
            .iter()
            .map(|&v| {
                if v.abs() > 0.1 {
                    0.2f32.copysign(v)
                } else {
                    0.0
                }
            })
            .collect();
        let p = d.join("h.png");
        histograms(&p, "hist", &[("a".into(), vals), ("b".into(), tern)], 60).unwrap();
        assert_eq!(png_size(&p), (900, 480));
        let p = d.join("c.png");
        let s = Series {
            label: "x".into(),
            points: vec![(1.0, 10.0), (2.0, 50.0)],
        };
        let sp = Series {
            label: "x".into(),
            points: vec![(1.0, 30.0), (2.0, 60.0)],
        };
        curves(&p, "curves", "epoch", &[s], &[sp]).unwrap();
        assert_eq!(png_size(&p), (900, 520));
        let p = d.join("b.png");
        bars(
            &p,
            "bars",
            "cos",
            &["l1".into(), "l2".into()],
            &[("m".into(), vec![0.5, 0.9])],
            (0.0, 1.0),
        )
        .unwrap();
        assert!(png_size(&p).0 >= 700);
        let _ = std::fs::remove_dir_all(&d);
    }
}
