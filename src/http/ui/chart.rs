//! The crash-group page's chart, drawn on the server as SVG (no charting script): one row per
//! firmware version in the order the versions were first seen, a bar for the group's dumps in
//! that version and one for the devices they came from, both on one scale, and the crash rate
//! (devices that crashed / devices running the version) as text. Colours come from the
//! stylesheet (`.bar-dumps`, `.bar-devices`); the page's table has the same numbers for screen
//! readers, so the figure is labelled as a summary.

use maud::{html, Markup};

use super::format::count;

/// One row of the chart.
#[derive(Debug, Clone)]
pub struct VersionBar {
    pub version: String,
    pub coredumps: i64,
    pub devices: i64,
    /// Devices of the model whose latest report names this version.
    pub running: i64,
}

const WIDTH: i64 = 720;
const LABEL: i64 = 110;
const ROW: i64 = 48;
const BAR: i64 = 16;
const TOP: i64 = 8;
/// Room right of the longest bar for its numbers.
const NUMBERS: i64 = 270;

/// The crash rate as the chart shows it: `5% of 40 running`, or the number running when a rate
/// would mislead.
fn short_rate(bar: &VersionBar) -> String {
    match percent(bar) {
        Some(percent) => format!(" ({percent:.0}% of {} running)", bar.running),
        None if bar.running > 0 => format!(" ({} running it now)", bar.running),
        None => String::new(),
    }
}

/// The crash rate as text: `2 of 40 running (5%)`, or why there is none.
pub fn rate(bar: &VersionBar) -> String {
    match percent(bar) {
        Some(percent) => format!("{} of {} running ({percent:.0}%)", bar.devices, bar.running),
        None if bar.running > 0 => format!(
            "{} running it now (devices that crashed have moved on)",
            bar.running
        ),
        None => "no device reports running it".into(),
    }
}

/// Devices that crashed in the version per device running it now, in percent — only while that
/// is at most 100%: crashes are counted over all time but "running" is today's count, so once
/// devices have moved to another version the quotient is no rate.
fn percent(bar: &VersionBar) -> Option<f64> {
    (bar.running > 0 && bar.devices <= bar.running)
        .then(|| bar.devices as f64 * 100.0 / bar.running as f64)
}

pub fn versions_chart(bars: &[VersionBar]) -> Markup {
    let max = bars
        .iter()
        .map(|b| b.coredumps.max(b.devices))
        .max()
        .unwrap_or(0)
        .max(1);
    let span = WIDTH - LABEL - NUMBERS;
    let scale = |n: i64| (n * span / max).max(if n > 0 { 2 } else { 0 });
    let height = TOP * 2 + ROW * bars.len() as i64 + 28;
    html! {
        figure.chart {
            svg #versions-chart xmlns="http://www.w3.org/2000/svg" viewBox={ "0 0 " (WIDTH) " " (height) }
                role="img" aria-labelledby="chart-title" {
                title #chart-title { "Dumps and devices per firmware version, in the order the versions were first seen" }
                @for (i, bar) in bars.iter().enumerate() {
                    @let y = TOP + ROW * i as i64;
                    g {
                        text.label x=(LABEL - 8) y=(y + BAR + 4) text-anchor="end" { (short(&bar.version)) }
                        rect.bar-dumps x=(LABEL) y=(y) width=(scale(bar.coredumps)) height=(BAR) rx="2" {}
                        rect.bar-devices x=(LABEL) y=(y + BAR + 2) width=(scale(bar.devices)) height=(BAR) rx="2" {}
                        text.value x=(LABEL + scale(bar.coredumps) + 6) y=(y + BAR - 2) { (count(bar.coredumps, "dump", "dumps")) }
                        text.value x=(LABEL + scale(bar.devices) + 6) y=(y + 2 * BAR) {
                            (count(bar.devices, "device", "devices")) (short_rate(bar))
                        }
                    }
                }
                g.legend {
                    @let y = height - 10;
                    rect.bar-dumps x=(LABEL) y=(y - 11) width="12" height="12" {}
                    text x=(LABEL + 18) y=(y) { "dumps" }
                    rect.bar-devices x=(LABEL + 80) y=(y - 11) width="12" height="12" {}
                    text x=(LABEL + 98) y=(y) { "devices that crashed" }
                }
            }
        }
    }
}

/// A version label that fits the label column (the table has it whole).
fn short(version: &str) -> String {
    if version.chars().count() <= 14 {
        version.to_string()
    } else {
        let head: String = version.chars().take(13).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(version: &str, coredumps: i64, devices: i64, running: i64) -> VersionBar {
        VersionBar {
            version: version.into(),
            coredumps,
            devices,
            running,
        }
    }

    #[test]
    fn rates_say_how_many_of_the_running_devices_crashed() {
        assert_eq!(rate(&bar("1", 3, 2, 40)), "2 of 40 running (5%)");
        assert_eq!(rate(&bar("1", 3, 2, 0)), "no device reports running it");
        assert_eq!(
            rate(&bar("1", 3, 2, 1)),
            "1 running it now (devices that crashed have moved on)"
        );
        assert_eq!(short_rate(&bar("1", 3, 2, 1)), " (1 running it now)");
        assert_eq!(short_rate(&bar("1", 3, 2, 4)), " (50% of 4 running)");
    }

    #[test]
    fn the_chart_has_a_row_per_version_and_escapes_labels() {
        let svg = versions_chart(&[bar("1.0<x>", 4, 2, 10), bar("2.0", 0, 0, 0)]).into_string();
        assert_eq!(svg.matches("class=\"bar-dumps\"").count(), 3, "{svg}");
        assert!(svg.contains("1.0&lt;x&gt;"), "{svg}");
        assert!(!svg.contains("1.0<x>"), "{svg}");
    }
}
