//! ROC and CMC curves as PNG files (plotters, drawn into a buffer and saved with `image`).
//! Text needs a TrueType font: `$CARIVIS_FONT`, else DejaVu Sans or Liberation Sans from the
//! usual system folders.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;

use super::EvalError;
use super::metrics::RocPoint;

/// Plot size in pixels.
const SIZE: (u32, u32) = (800, 600);
/// Smallest FAR on the logarithmic ROC axis.
const MIN_FAR: f64 = 1e-4;
/// Fonts tried when `$CARIVIS_FONT` is not set.
const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a font for plotters once; an error names the files tried.
fn ensure_font() -> Result<(), EvalError> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("CARIVIS_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .collect();
        let bytes = candidates
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .ok_or_else(|| {
                format!(
                    "no TrueType font for plot labels (set CARIVIS_FONT); tried {}",
                    candidates
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes.leak())
            .map_err(|_| "the font file is not a usable TrueType font".to_string())
    })
    .clone()
    .map_err(EvalError::Plot)
}

fn plot_error(e: impl std::fmt::Display) -> EvalError {
    EvalError::Plot(e.to_string())
}

/// Renders into an RGB buffer with `draw`, then writes it as PNG.
fn render(
    path: &Path,
    draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<(), EvalError>,
) -> Result<(), EvalError> {
    ensure_font()?;
    let mut buffer = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        draw(&root)?;
        root.present().map_err(plot_error)?;
    }
    let image = image::RgbImage::from_raw(SIZE.0, SIZE.1, buffer)
        .ok_or_else(|| EvalError::Plot("plot buffer has the wrong size".into()))?;
    image
        .save(path)
        .map_err(|e| EvalError::Plot(format!("{}: {e}", path.display())))
}

/// ROC curves (TAR against FAR, FAR on a logarithmic axis from 10⁻⁴), one per label.
pub fn roc_png(
    path: &Path,
    title: &str,
    curves: &[(String, &[RocPoint])],
) -> Result<(), EvalError> {
    render(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((MIN_FAR..1.0f64).log_scale(), 0.0..1.0f64)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("false accept rate")
            .y_desc("true accept rate")
            .draw()
            .map_err(plot_error)?;
        for (i, (label, points)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let series = points.iter().map(|p| (p.far.max(MIN_FAR), p.tar));
            chart
                .draw_series(LineSeries::new(series, color.stroke_width(2)))
                .map_err(plot_error)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
        legend(&mut chart)
    })
}

/// CMC curves (identification rate against rank), one per label.
pub fn cmc_png(path: &Path, title: &str, curves: &[(String, &[f64])]) -> Result<(), EvalError> {
    let max_rank = curves.iter().map(|(_, c)| c.len()).max().unwrap_or(1);
    render(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(1usize..max_rank, 0.0..1.0f64)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("rank")
            .y_desc("identification rate")
            .draw()
            .map_err(plot_error)?;
        for (i, (label, cmc)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let series = cmc.iter().enumerate().map(|(r, v)| (r + 1, *v));
            chart
                .draw_series(LineSeries::new(series, color.stroke_width(2)))
                .map_err(plot_error)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
        legend(&mut chart)
    })
}

/// Line plots on linear axes, one curve per label (training losses and weights).
pub fn lines_png(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    curves: &[(String, Vec<(f64, f64)>)],
) -> Result<(), EvalError> {
    let points = || curves.iter().flat_map(|(_, c)| c.iter());
    let (x_max, y_max) = points().fold((1.0f64, 0.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    let y_min = points().fold(0.0f64, |y, p| y.min(p.1));
    let y_max = if y_max > y_min {
        y_max * 1.05
    } else {
        y_min + 1.0
    };
    render(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, y_min..y_max)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(plot_error)?;
        for (i, (label, points)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
        legend(&mut chart)
    })
}

/// One point of a scatter panel: position, group (colour) and whether it is drawn filled.
pub type ScatterPoint = ([f64; 2], usize, bool);

/// Scatter panels side by side, one per title: each point coloured by its group, filled
/// circles for `true` (photos) and hollow triangles for `false` (caricatures).
pub fn scatter_panels_png(
    path: &Path,
    panels: &[(String, Vec<ScatterPoint>)],
) -> Result<(), EvalError> {
    render(path, |root| {
        for (area, (title, points)) in root
            .split_evenly((1, panels.len().max(1)))
            .iter()
            .zip(panels)
        {
            let range = |d: usize| {
                let (lo, hi) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
                    (lo.min(p.0[d]), hi.max(p.0[d]))
                });
                let pad = ((hi - lo) * 0.05).max(1e-6);
                (lo - pad)..(hi + pad)
            };
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 18))
                .margin(10)
                .build_cartesian_2d(range(0), range(1))
                .map_err(plot_error)?;
            chart
                .configure_mesh()
                .disable_mesh()
                .draw()
                .map_err(plot_error)?;
            for &(position, group, filled) in points {
                let color = Palette99::pick(group).to_rgba();
                let at = (position[0], position[1]);
                if filled {
                    chart
                        .draw_series(std::iter::once(Circle::new(at, 4, color.filled())))
                        .map_err(plot_error)?;
                } else {
                    chart
                        .draw_series(std::iter::once(TriangleMarker::new(
                            at,
                            5,
                            color.stroke_width(2),
                        )))
                        .map_err(plot_error)?;
                }
            }
        }
        Ok(())
    })
}

fn legend<'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
) -> Result<(), EvalError>
where
    X: plotters::coord::ranged1d::Ranged,
    Y: plotters::coord::ranged1d::Ranged,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_written_as_png() {
        if ensure_font().is_err() {
            eprintln!("SKIPPED plots_are_written_as_png: no system font");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let roc = [
            RocPoint {
                threshold: 1.0,
                far: 0.0,
                tar: 0.0,
            },
            RocPoint {
                threshold: 0.5,
                far: 0.01,
                tar: 0.8,
            },
            RocPoint {
                threshold: 0.0,
                far: 1.0,
                tar: 1.0,
            },
        ];
        let roc_path = dir.path().join("roc.png");
        roc_png(&roc_path, "ROC", &[("test".into(), &roc)]).unwrap();
        let cmc_path = dir.path().join("cmc.png");
        cmc_png(&cmc_path, "CMC", &[("test".into(), &[0.5, 0.7, 0.9])]).unwrap();
        for path in [roc_path, cmc_path] {
            let image = image::open(&path).unwrap();
            assert_eq!((image.width(), image.height()), SIZE);
        }
    }
}
