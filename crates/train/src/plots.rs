//! Plots written next to a model, each as PNG and SVG: training curves, confusion matrix,
//! ROC curve and reliability diagram. Fonts are embedded (DejaVu Sans), so plotting needs
//! no system font library.
use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::seed_cnn::EpochRecord;
use catsdogs_model::metrics;

type PlotResult = Result<(), String>;
/// Reads one curve's value from an epoch record.
type Metric = fn(&EpochRecord) -> f64;

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are DejaVu Sans from the `dejavu` crate; failure only loses text.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

fn e<E: std::fmt::Display>(err: E) -> String {
    err.to_string()
}

/// Renders one figure to `<dir>/<stem>.png` and `<dir>/<stem>.svg`.
macro_rules! png_and_svg {
    ($dir:expr, $stem:expr, $size:expr, $draw:expr) => {{
        register_fonts();
        let png = $dir.join(format!("{}.png", $stem));
        let svg = $dir.join(format!("{}.svg", $stem));
        {
            let root = BitMapBackend::new(&png, $size).into_drawing_area();
            $draw(&root)?;
            root.present().map_err(e)?;
        }
        {
            let root = SVGBackend::new(&svg, $size).into_drawing_area();
            $draw(&root)?;
            root.present().map_err(e)?;
        }
        Ok::<(), String>(())
    }};
}

/// Loss and accuracy per epoch (train and validation): `training_curves.{png,svg}`.
pub fn training_curves(dir: &Path, history: &[EpochRecord]) -> PlotResult {
    png_and_svg!(dir, "training_curves", (1000, 420), |root: &DrawingArea<_, Shift>| draw_curves(root, history))
}

fn draw_curves<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, history: &[EpochRecord]) -> PlotResult {
    root.fill(&WHITE).map_err(e)?;
    let (left, right) = root.split_horizontally(500);
    let n = history.len().max(2) as f64;
    let panels: [(&DrawingArea<DB, Shift>, &str, Metric, Metric); 2] = [
        (&left, "loss", |h| h.train_loss, |h| h.val_loss),
        (&right, "accuracy", |h| h.train_accuracy, |h| h.val_accuracy),
    ];
    for (area, name, train, val) in panels {
        let values = history.iter().flat_map(|h| [train(h), val(h)]);
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let (lo, hi) = if lo.is_finite() { (lo - 0.02, hi + 0.02) } else { (0.0, 1.0) };
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(1.0..n, lo..hi)
            .map_err(e)?;
        chart.configure_mesh().x_desc("epoch").draw().map_err(e)?;
        for (label, f, color) in [("train", train, BLUE), ("validation", val, RED)] {
            chart
                .draw_series(LineSeries::new(history.iter().map(|h| (h.epoch as f64, f(h))), color.stroke_width(2)))
                .map_err(e)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(e)?;
    }
    Ok(())
}

/// Confusion matrix, ROC curve and reliability diagram of P(dog) against labels.
pub fn evaluation_plots(dir: &Path, p_dog: &[f32], labels: &[u8]) -> PlotResult {
    let m = metrics::compute(p_dog, labels);
    png_and_svg!(dir, "confusion_matrix", (460, 420), |root: &DrawingArea<_, Shift>| draw_confusion(
        root,
        &m.confusion
    ))?;
    let roc = metrics::roc_curve(p_dog, labels);
    png_and_svg!(dir, "roc_curve", (460, 440), |root: &DrawingArea<_, Shift>| draw_roc(root, &roc, m.roc_auc))?;
    let bins = metrics::reliability(p_dog, labels, 10);
    png_and_svg!(dir, "reliability", (460, 440), |root: &DrawingArea<_, Shift>| draw_reliability(root, &bins, m.ece))
}

fn draw_confusion<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, c: &[[usize; 2]; 2]) -> PlotResult {
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(root)
        .caption("confusion matrix (rows: true, columns: predicted)", ("sans-serif", 15))
        .margin(15)
        .x_label_area_size(30)
        .y_label_area_size(40)
        .build_cartesian_2d(0.0..2.0, 0.0..2.0)
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(2)
        .y_labels(2)
        .x_label_formatter(&|v| if *v < 1.0 { "cat".into() } else { "dog".into() })
        .y_label_formatter(&|v| if *v < 1.0 { "dog".into() } else { "cat".into() })
        .draw()
        .map_err(e)?;
    let max = c.iter().flatten().copied().max().unwrap_or(1).max(1) as f64;
    for (t, row) in c.iter().enumerate() {
        for (p, &v) in row.iter().enumerate() {
            let (x, y) = (p as f64, 1.0 - t as f64);
            let shade = 1.0 - 0.8 * v as f64 / max;
            let fill = RGBColor((shade * 255.0) as u8, (shade * 255.0) as u8, 255);
            chart.draw_series([Rectangle::new([(x, y), (x + 1.0, y + 1.0)], fill.filled())]).map_err(e)?;
            chart
                .draw_series([Text::new(
                    format!("{v}"),
                    (x + 0.42, y + 0.55),
                    ("sans-serif", 22).into_font().color(&BLACK),
                )])
                .map_err(e)?;
        }
    }
    Ok(())
}

/// Square axes from `(x0, 0)` to `(1, 1)` with the diagonal drawn as reference.
fn unit_axes<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    caption: String,
    x0: f64,
    x_desc: &str,
    y_desc: &str,
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, String> {
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(x0..1.0, 0.0..1.0)
        .map_err(e)?;
    chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw().map_err(e)?;
    chart.draw_series(LineSeries::new([(x0, x0), (1.0, 1.0)], BLACK.mix(0.3))).map_err(e)?;
    Ok(chart)
}

fn draw_roc<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, roc: &[(f64, f64)], auc: f64) -> PlotResult {
    let mut chart =
        unit_axes(root, format!("ROC curve (AUC {auc:.4})"), 0.0, "false positive rate", "true positive rate")?;
    chart.draw_series(LineSeries::new(roc.iter().copied(), BLUE.stroke_width(2))).map_err(e)?;
    Ok(())
}

fn draw_reliability<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    bins: &[metrics::ReliabilityBin],
    ece: f64,
) -> PlotResult {
    let mut chart = unit_axes(root, format!("reliability (ECE {ece:.4})"), 0.5, "confidence", "accuracy")?;
    let bars = bins.iter().filter(|b| b.count > 0);
    chart
        .draw_series(bars.map(|b| Rectangle::new([(b.lower, 0.0), (b.upper, b.accuracy)], BLUE.mix(0.5).filled())))
        .map_err(e)?;
    Ok(())
}

/// One model's predictions on a set, for a side-by-side plot.
pub struct Curve<'a> {
    pub name: &'a str,
    pub p_dog: &'a [f32],
    pub labels: &'a [u8],
}

/// ROC curves of several models on the same photos, in one figure: `<stem>.{png,svg}`.
pub fn roc_comparison(dir: &Path, stem: &str, title: &str, curves: &[Curve]) -> PlotResult {
    png_and_svg!(dir, stem, (520, 480), |root: &DrawingArea<_, Shift>| draw_roc_comparison(root, title, curves))
}

fn draw_roc_comparison<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, title: &str, curves: &[Curve]) -> PlotResult {
    let mut chart = unit_axes(root, title.to_string(), 0.0, "false positive rate", "true positive rate")?;
    for (i, c) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let m = metrics::compute(c.p_dog, c.labels);
        let roc = metrics::roc_curve(c.p_dog, c.labels);
        chart
            .draw_series(LineSeries::new(roc, color.stroke_width(2)))
            .map_err(e)?
            .label(format!("{} (AUC {:.4}, acc {:.2} %)", c.name, m.roc_auc, m.accuracy * 100.0))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)
}
