//! Throughput and latency against concurrency, one line per server and workload, in
//! one PNG: a sweep over concurrency on two servers reads as one picture.
//!
//! Four panels (output tokens/s, mean TTFT, mean TPOT, mean end-to-end latency) share
//! a logarithmic concurrency axis whose ticks are the concurrencies that were run; a
//! legend strip below names the lines. Text uses DejaVu Sans, embedded through the
//! `dejavu` crate, so drawing needs no system fonts.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::BenchError;
use crate::report::Run;

/// Image size, pixels.
const WIDTH: u32 = 1400;
const HEIGHT: u32 = 1000;
/// Height of the legend strip under the panels, pixels.
const LEGEND_HEIGHT: u32 = 110;

/// Line colours, one per series, repeating past the end.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// The panels: title, metric key, unit.
const PANELS: [(&str, &str, &str); 4] = [
    ("Output throughput", "output_throughput", "tokens/s"),
    ("Mean time to first token", "mean_ttft_ms", "ms"),
    ("Mean time per output token", "mean_tpot_ms", "ms"),
    ("Mean end-to-end latency", "mean_e2e_latency_ms", "ms"),
];

/// One line: a server on a workload, its points sorted by concurrency.
struct Series {
    name: String,
    color: RGBColor,
    /// (max concurrency, run) pairs.
    points: Vec<(f64, Run)>,
}

/// Draws `runs` into a PNG at `path`. Runs without a concurrency cap cannot be
/// placed on the axis and are left out; returns how many runs were drawn. Fails when
/// none is left or the file cannot be written.
pub fn draw(runs: &[Run], title: &str, path: &Path) -> Result<usize, BenchError> {
    let series = group_series(runs);
    let n_points: usize = series.iter().map(|s| s.points.len()).sum();
    if n_points == 0 {
        return Err(BenchError::Plot(
            "no run has a --max-concurrency, so there is nothing to put on the axis".into(),
        ));
    }
    register_fonts();

    let mut pixels = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    render(&series, title, &mut pixels).map_err(|e| BenchError::Plot(e.to_string()))?;
    write_png(path, &pixels)?;
    Ok(n_points)
}

fn group_series(runs: &[Run]) -> Vec<Series> {
    let mut by_key: BTreeMap<(String, String), Vec<(f64, Run)>> = BTreeMap::new();
    for run in runs {
        let Some(concurrency) = run.max_concurrency else {
            continue;
        };
        let points = by_key
            .entry((run.label.clone(), run.workload.clone()))
            .or_default();
        // A later run at the same concurrency replaces the earlier one.
        points.retain(|(c, _)| *c != concurrency as f64);
        points.push((concurrency as f64, run.clone()));
    }
    by_key
        .into_iter()
        .enumerate()
        .map(|(idx, ((label, workload), mut points))| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                name: format!("{label}: {workload}"),
                color: PALETTE[idx % PALETTE.len()],
                points,
            }
        })
        .collect()
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn render(series: &[Series], title: &str, pixels: &mut [u8]) -> DrawResult {
    let root = BitMapBackend::with_buffer(pixels, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 30))?;
    let (grid, legend) = root.split_vertically(root.dim_in_pixel().1 - LEGEND_HEIGHT);

    let ticks = concurrency_ticks(series);
    let (x_lo, x_hi) = (ticks[0] / 1.5, ticks[ticks.len() - 1] * 1.5);
    for (area, (panel_title, key, unit)) in grid.split_evenly((2, 2)).iter().zip(PANELS) {
        let y_max = series
            .iter()
            .flat_map(|s| s.points.iter().filter_map(|(_, run)| run.metric(key)))
            .fold(0.0f64, f64::max);
        let y_max = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };

        let mut chart = ChartBuilder::on(area)
            .caption(panel_title, ("sans-serif", 22))
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(78)
            .build_cartesian_2d(
                (x_lo..x_hi).log_scale().with_key_points(ticks.clone()),
                0.0..y_max,
            )?;
        chart
            .configure_mesh()
            .x_desc("max concurrency")
            .y_desc(unit)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format_axis(*y))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;

        for s in series {
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter_map(|(c, run)| run.metric(key).map(|v| (*c, v)))
                .collect();
            chart.draw_series(LineSeries::new(points.clone(), s.color.stroke_width(3)))?;
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 5, s.color.filled())))?;
        }
    }

    draw_legend(&legend, series)
}

/// A row-major grid of legend entries: a short line in the series colour, then its
/// name.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    series: &[Series],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    const COLUMNS: usize = 2;
    const ROW_HEIGHT: i32 = 26;
    let column_width = (WIDTH as usize / COLUMNS) as i32;
    for (idx, s) in series.iter().enumerate() {
        let x = 30 + (idx % COLUMNS) as i32 * column_width;
        let y = 14 + (idx / COLUMNS) as i32 * ROW_HEIGHT;
        area.draw(&PathElement::new(
            vec![(x, y + 9), (x + 36, y + 9)],
            s.color.stroke_width(4),
        ))?;
        area.draw(&Circle::new((x + 18, y + 9), 5, s.color.filled()))?;
        area.draw(&Text::new(s.name.clone(), (x + 46, y), ("sans-serif", 18)))?;
    }
    Ok(())
}

/// Every concurrency that was run, ascending, for the axis ticks.
fn concurrency_ticks(series: &[Series]) -> Vec<f64> {
    let mut ticks: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|(c, _)| *c))
        .collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    ticks
}

/// Axis numbers without noise: `1.2k`, `350`, `4.5`, `0.12`.
fn format_axis(y: f64) -> String {
    match y.abs() {
        v if v >= 10_000.0 => format!("{:.0}k", y / 1000.0),
        v if v >= 1_000.0 => format!("{:.1}k", y / 1000.0),
        v if v >= 100.0 => format!("{y:.0}"),
        v if v >= 1.0 => format!("{y:.1}"),
        _ => format!("{y:.2}"),
    }
}

/// Makes the embedded DejaVu Sans the `sans-serif` family; idempotent.
fn register_fonts() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        for (style, bytes) in [
            (FontStyle::Normal, dejavu::sans::regular()),
            (FontStyle::Bold, dejavu::sans::bold()),
        ] {
            plotters::style::register_font("sans-serif", style, bytes)
                .unwrap_or_else(|_| panic!("embedded DejaVu Sans is a valid font"));
        }
    });
}

fn write_png(path: &Path, rgb: &[u8]) -> Result<(), BenchError> {
    let io_error = |source| BenchError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io_error)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let png_error = |e: png::EncodingError| BenchError::Plot(format!("png encoding failed: {e}"));
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer.write_image_data(rgb).map_err(png_error)?;
    writer.finish().map_err(png_error)
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::report::load_runs;

    fn runs() -> Vec<Run> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        for (label, c, tput) in [
            ("a", 1, 100.0),
            ("a", 4, 300.0),
            ("b", 1, 80.0),
            ("b", 4, 200.0),
        ] {
            writeln!(
                file,
                r#"{{"label":"{label}","workload":"random","max_concurrency":{c},"output_throughput":{tput},"mean_ttft_ms":10,"mean_tpot_ms":2,"mean_e2e_latency_ms":40}}"#
            )
            .unwrap();
        }
        writeln!(
            file,
            r#"{{"label":"a","workload":"random","max_concurrency":null}}"#
        )
        .unwrap();
        load_runs(file.path()).unwrap()
    }

    fn count_pixels(rgb: &[u8], color: RGBColor) -> usize {
        rgb.chunks(3)
            .filter(|p| p[0] == color.0 && p[1] == color.1 && p[2] == color.2)
            .count()
    }

    #[test]
    fn draws_one_coloured_line_per_series_into_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sweep.png");
        let n_drawn = draw(&runs(), "test sweep", &path).unwrap();
        assert_eq!(n_drawn, 4, "the run without a concurrency cap is left out");

        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut rgb = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut rgb).unwrap();
        assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
        assert!(count_pixels(&rgb, PALETTE[0]) > 500, "series a is drawn");
        assert!(count_pixels(&rgb, PALETTE[1]) > 500, "series b is drawn");
        assert_eq!(
            count_pixels(&rgb, PALETTE[2]),
            0,
            "there is no third series"
        );
    }

    #[test]
    fn runs_without_concurrency_cannot_be_plotted() {
        let only_uncapped: Vec<Run> = runs()
            .into_iter()
            .filter(|r| r.max_concurrency.is_none())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        assert!(draw(&only_uncapped, "t", &dir.path().join("x.png")).is_err());
    }

    #[test]
    fn axis_numbers_are_short() {
        assert_eq!(format_axis(12_345.0), "12k");
        assert_eq!(format_axis(1_234.0), "1.2k");
        assert_eq!(format_axis(350.4), "350");
        assert_eq!(format_axis(4.46), "4.5");
        assert_eq!(format_axis(0.123), "0.12");
    }
}
