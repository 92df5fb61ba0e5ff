//! `demo --fleet N --plot FILE.svg`: both runs over time, with plotters'
//! SVG backend only. plotters is built without its font features: SVG text
//! is laid out by whatever shows the file, plotters only estimates its size.

use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

/// One run, second by second.
pub struct PlotRun {
    /// "without the store", "with the store".
    pub label: String,
    /// Token requests the server saw in each second, `(second, count)`.
    pub token_requests: Vec<(f64, f64)>,
    /// API calls the server saw in each second.
    pub api_calls: Vec<(f64, f64)>,
    /// The worst p99 latency of any process in each second, in ms.
    pub p99_ms: Vec<(f64, f64)>,
    /// When the tokens issued during the run expire, in seconds from its start.
    pub expiries: Vec<f64>,
}

/// One series of a run.
type Pick = fn(&PlotRun) -> &[(f64, f64)];

/// The colours of the runs, in order.
const COLOURS: [RGBColor; 2] = [RGBColor(214, 69, 65), RGBColor(38, 110, 180)];

/// Draws three stacked charts (token requests per second with the token
/// expiries marked, API calls per second, p99 latency) to `path`.
pub fn draw(path: &Path, runs: &[PlotRun], duration: Duration, ttl: u64) -> Result<(), String> {
    let root = SVGBackend::new(path, (960, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let (title, body) = root.split_vertically(40);
    title
        .titled(
            &format!(
                "tokenctl demo --fleet: {} s tokens, each process on its own vs sharing a Redis store",
                ttl
            ),
            ("sans-serif", 20),
        )
        .map_err(|e| e.to_string())?;
    let panels = body.split_evenly((3, 1));
    let x_end = duration.as_secs_f64().max(1.0);
    let max_of = |pick: Pick| {
        runs.iter()
            .flat_map(|run| pick(run).iter().map(|&(_, y)| y))
            .fold(0.0f64, f64::max)
    };

    // 1. Token requests per second, and a rug of token expiries per run.
    // Headroom above the lines for the legend and the expiry ticks.
    let tokens_max = (max_of(|r| &r.token_requests) * 1.8).max(4.0);
    {
        let mut chart = ChartBuilder::on(&panels[0])
            .caption(
                "token requests per second (ticks at the top: token expiries)",
                ("sans-serif", 16),
            )
            .margin(8)
            .margin_right(24)
            .x_label_area_size(28)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..x_end, 0.0..tokens_max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("requests/s")
            .draw()
            .map_err(|e| e.to_string())?;
        for (index, run) in runs.iter().enumerate() {
            let colour = COLOURS[index % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    run.token_requests.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(run.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            // Each run's expiries as short ticks in a band of its own.
            let top = tokens_max * (1.0 - 0.08 * index as f64);
            let bottom = top - tokens_max * 0.06;
            chart
                .draw_series(run.expiries.iter().map(|&t| {
                    PathElement::new(vec![(t, bottom), (t, top)], colour.stroke_width(1))
                }))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }

    // 2. API calls per second; 3. p99 latency.
    let others: [(&str, &str, Pick, SeriesLabelPosition); 2] = [
        (
            "API calls per second (all processes)",
            "calls/s",
            |r| &r.api_calls,
            SeriesLabelPosition::LowerRight,
        ),
        (
            "p99 latency of API calls (worst process, each second)",
            "ms",
            |r| &r.p99_ms,
            SeriesLabelPosition::UpperRight,
        ),
    ];
    for (panel, (caption, unit, pick, legend)) in panels[1..].iter().zip(others) {
        let y_max = (max_of(pick) * 1.5).max(1.0);
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 16))
            .margin(8)
            .margin_right(24)
            .x_label_area_size(28)
            .y_label_area_size(48)
            .build_cartesian_2d(0.0..x_end, 0.0..y_max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(unit)
            .draw()
            .map_err(|e| e.to_string())?;
        for (index, run) in runs.iter().enumerate() {
            let colour = COLOURS[index % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    pick(run).iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(run.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(legend)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_with_both_runs() {
        let run = |label: &str, per_second: f64| PlotRun {
            label: label.to_owned(),
            token_requests: (1..=6).map(|s| (s as f64, per_second)).collect(),
            api_calls: (1..=6).map(|s| (s as f64, 300.0)).collect(),
            p99_ms: (1..=6).map(|s| (s as f64, 1.5)).collect(),
            expiries: vec![3.0, 6.0],
        };
        let dir = std::env::temp_dir().join(format!("tokenctl-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("fleet.svg");
        draw(
            &path,
            &[run("without the store", 3.0), run("with the store", 0.4)],
            Duration::from_secs(6),
            3,
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for text in [
            "with the store",
            "without the store",
            "token requests per second",
        ] {
            assert!(svg.contains(text), "{text}");
        }
    }
}
