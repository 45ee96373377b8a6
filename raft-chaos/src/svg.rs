//! The timeline picture (`timeline.svg`), in the manner of Jepsen's: one
//! lane per client with its operations coloured by outcome, the faults as
//! shaded bands across every lane with their labels in lanes of their own,
//! and the failing key's operations outlined when the check failed.
//!
//! A run of hours holds hundreds of thousands of operations, far more than
//! pixels, so each lane is cut into one cell per pixel column and a cell
//! takes the colour of the worst outcome among the operations that overlap
//! it (indeterminate over not applied over failed compare-and-set over
//! success); hovering a cell shows its counts. The file's size is therefore
//! bounded by lanes × width, whatever the run's length.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use raft_core::testing::linearizability::{Op, Outcome};

use crate::history::{HistoryFile, FINAL_CLIENT};
use crate::schedule::FaultKind;

/// The width of the plotting area in pixels.
const PLOT_WIDTH_PX: u64 = 1600;
/// The height of one lane.
const LANE_HEIGHT_PX: u64 = 18;
/// Room for lane names on the left.
const LEFT_MARGIN_PX: u64 = 110;
/// Room for the title and the time axis.
const TOP_MARGIN_PX: u64 = 50;

/// Outcome classes from best to worst, with their colours.
const CLASSES: [(&str, &str); 4] = [
    ("ok", "#4caf50"),
    ("cas failed (412)", "#2196f3"),
    ("not applied / read failed", "#9e9e9e"),
    ("indeterminate write", "#ff9800"),
];

fn class_of(op: Op, outcome: Outcome) -> usize {
    match (op, outcome) {
        (_, Outcome::Cas(false)) => 1,
        // A read that failed changed nothing: it is not uncertain.
        (Op::Read, Outcome::Indeterminate) | (_, Outcome::Failed) => 2,
        (_, Outcome::Indeterminate) => 3,
        _ => 0,
    }
}

/// About how wide a character of the labels is, to leave out labels that
/// do not fit their band (the tooltip still has them).
const CHARACTER_WIDTH_PX: u64 = 6;

fn fault_colour(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::Kill => "#e53935",
        FaultKind::Pause => "#8e24aa",
        FaultKind::Partition => "#3949ab",
        FaultKind::Delay => "#00897b",
        FaultKind::Drop => "#6d4c41",
        FaultKind::Torn => "#ad1457",
        FaultKind::Unsynced => "#4e342e",
        FaultKind::Membership => "#f9a825",
        FaultKind::Transfer => "#546e7a",
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Draws the timeline of `history`. `failing_key` outlines that key's
/// operations (the key the linearizability check rejected).
pub fn timeline(history: &HistoryFile, failing_key: Option<u64>) -> String {
    let end_us = history
        .records
        .iter()
        .map(|r| r.complete_us.unwrap_or(r.invoke_us))
        .chain(history.faults.iter().map(|f| f.end_us))
        .max()
        .unwrap_or(0)
        .max(history.total_us)
        .max(1);
    let x = |us: u64| -> u64 { (u128::from(us) * u128::from(PLOT_WIDTH_PX) / u128::from(end_us)) as u64 };

    let clients: Vec<u64> = {
        let mut clients: Vec<u64> = history.records.iter().map(|r| r.client).collect();
        clients.sort_unstable();
        clients.dedup();
        clients
    };
    let administrative_lane = 0u64;
    let disruptive_lane = 1u64;
    let first_client_lane = 2u64;
    let lanes = first_client_lane + clients.len() as u64;
    let height = TOP_MARGIN_PX + lanes * LANE_HEIGHT_PX + 80;
    let width = LEFT_MARGIN_PX + PLOT_WIDTH_PX + 20;
    let lane_y = |lane: u64| TOP_MARGIN_PX + lane * LANE_HEIGHT_PX;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="{width}" height="{height}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="18" font-size="14">raft-chaos seed {} — {} nodes — {} operations, {} faults</text>"#,
        history.seed,
        history.nodes,
        history.records.len(),
        history.faults.len()
    );

    // Fault bands across every lane, and labels in the fault lanes.
    for fault in &history.faults {
        let x0 = LEFT_MARGIN_PX + x(fault.start_us);
        let band = (x(fault.end_us).saturating_sub(x(fault.start_us))).max(1);
        let colour = fault_colour(fault.kind);
        let lane = if fault.kind.is_administrative() { administrative_lane } else { disruptive_lane };
        let title = escape(&format!(
            "{} ({:.1}–{:.1} s){}: {}",
            fault.label,
            fault.start_us as f64 / 1e6,
            fault.end_us as f64 / 1e6,
            if fault.succeeded { "" } else { " [did not succeed]" },
            fault.detail
        ));
        if !fault.kind.is_administrative() {
            let _ = writeln!(
                svg,
                r#"<rect x="{x0}" y="{}" width="{band}" height="{}" fill="{colour}" fill-opacity="0.12"/>"#,
                lane_y(first_client_lane),
                clients.len() as u64 * LANE_HEIGHT_PX
            );
        }
        // The label goes inside the band, if it fits.
        let label = if band >= fault.label.len() as u64 * CHARACTER_WIDTH_PX + 4 {
            format!(
                r#"<text x="{}" y="{}" fill="black">{}</text>"#,
                x0 + 2,
                lane_y(lane) + LANE_HEIGHT_PX - 5,
                escape(&fault.label)
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            svg,
            r#"<g><title>{title}</title><rect x="{x0}" y="{}" width="{band}" height="{}" fill="{colour}" fill-opacity="{}"/>{label}</g>"#,
            lane_y(lane) + 2,
            LANE_HEIGHT_PX - 4,
            if fault.succeeded { "0.5" } else { "0.2" },
        );
    }

    // Lane names.
    let mut names = vec![(administrative_lane, "admin".to_string()), (disruptive_lane, "faults".to_string())];
    for (i, client) in clients.iter().enumerate() {
        let name =
            if *client == FINAL_CLIENT { "final reads".to_string() } else { format!("client {client}") };
        names.push((first_client_lane + i as u64, name));
    }
    for (lane, name) in names {
        let _ = writeln!(
            svg,
            r#"<text x="6" y="{}">{}</text>"#,
            lane_y(lane) + LANE_HEIGHT_PX - 5,
            escape(&name)
        );
    }

    // Operations: per lane, per pixel column, counts by class.
    let lane_of: BTreeMap<u64, u64> =
        clients.iter().enumerate().map(|(i, c)| (*c, first_client_lane + i as u64)).collect();
    let mut cells: BTreeMap<(u64, u64), [u64; 4]> = BTreeMap::new();
    let mut failing: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for record in &history.records {
        let lane = lane_of[&record.client];
        let first = x(record.invoke_us);
        let last = x(record.complete_us.unwrap_or(end_us)).max(first);
        // An operation that never completed is drawn one column wide: it
        // would otherwise cover the rest of its lane.
        let last = if record.complete_us.is_none() { first } else { last };
        for column in first..=last.min(PLOT_WIDTH_PX) {
            cells.entry((lane, column)).or_default()[class_of(record.op, record.outcome)] += 1;
            if Some(record.key) == failing_key {
                *failing.entry((lane, column)).or_default() += 1;
            }
        }
    }
    // Cells of one outcome merge into runs; mixed cells become stacked
    // bars.
    let mut runs: Vec<(u64, u64, u64, usize, [u64; 4])> = Vec::new();
    for ((lane, column), counts) in &cells {
        let classes = counts.iter().filter(|count| **count > 0).count();
        if classes > 1 {
            let total: u64 = counts.iter().sum();
            let height = LANE_HEIGHT_PX - 6;
            let mut y = lane_y(*lane) + 3;
            let title = cell_title(counts);
            for (class, count) in counts.iter().enumerate().filter(|(_, count)| **count > 0) {
                let part = (count * height).div_ceil(total).min(lane_y(*lane) + 3 + height - y);
                let _ = writeln!(
                    svg,
                    r#"<rect x="{}" y="{y}" width="1" height="{part}" fill="{}"><title>{title}</title></rect>"#,
                    LEFT_MARGIN_PX + column,
                    CLASSES[class].1,
                );
                y += part;
            }
            continue;
        }
        let class = (0..4).find(|c| counts[*c] > 0).unwrap_or(0);
        match runs.last_mut() {
            Some(run) if run.0 == *lane && run.2 + 1 == *column && run.3 == class => {
                run.2 = *column;
                for (total, count) in run.4.iter_mut().zip(counts) {
                    *total += count;
                }
            }
            _ => runs.push((*lane, *column, *column, class, *counts)),
        }
    }
    for (lane, first, last, class, counts) in runs {
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>"#,
            LEFT_MARGIN_PX + first,
            lane_y(lane) + 3,
            last - first + 1,
            LANE_HEIGHT_PX - 6,
            CLASSES[class].1,
            cell_title(&counts)
        );
    }
    for ((lane, column), count) in failing {
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{}" width="1" height="{}" fill="none" stroke="black" stroke-width="1"><title>{count} operations on the failing key</title></rect>"#,
            LEFT_MARGIN_PX + column,
            lane_y(lane) + 1,
            LANE_HEIGHT_PX - 2
        );
    }

    // The time axis, with about ten ticks at round seconds.
    let axis_y = lane_y(lanes) + 6;
    let _ = writeln!(
        svg,
        r#"<line x1="{LEFT_MARGIN_PX}" y1="{axis_y}" x2="{}" y2="{axis_y}" stroke="black"/>"#,
        LEFT_MARGIN_PX + PLOT_WIDTH_PX
    );
    let seconds = end_us.div_ceil(1_000_000).max(1);
    let step = [1u64, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600]
        .into_iter()
        .find(|step| seconds / step <= 12)
        .unwrap_or(7200);
    for second in (0..=seconds).step_by(step as usize) {
        let tick = LEFT_MARGIN_PX + x(second * 1_000_000).min(PLOT_WIDTH_PX);
        let _ = writeln!(
            svg,
            r#"<line x1="{tick}" y1="{axis_y}" x2="{tick}" y2="{}" stroke="black"/><text x="{tick}" y="{}" text-anchor="middle">{second} s</text>"#,
            axis_y + 4,
            axis_y + 16
        );
    }

    // The legend.
    let legend_y = axis_y + 34;
    let mut legend_x = LEFT_MARGIN_PX;
    for (name, colour) in CLASSES {
        let _ = writeln!(
            svg,
            r#"<rect x="{legend_x}" y="{}" width="12" height="12" fill="{colour}"/><text x="{}" y="{legend_y}">{name}</text>"#,
            legend_y - 10,
            legend_x + 16
        );
        legend_x += 190;
    }
    if failing_key.is_some() {
        let _ = writeln!(
            svg,
            r#"<rect x="{legend_x}" y="{}" width="12" height="12" fill="none" stroke="black"/><text x="{}" y="{legend_y}">failing key</text>"#,
            legend_y - 10,
            legend_x + 16
        );
    }
    // The fault colours, on a second row.
    let legend_y = legend_y + 20;
    let mut legend_x = LEFT_MARGIN_PX;
    for kind in FaultKind::ALL {
        let _ = writeln!(
            svg,
            r#"<rect x="{legend_x}" y="{}" width="12" height="12" fill="{}" fill-opacity="0.5"/><text x="{}" y="{legend_y}">{}</text>"#,
            legend_y - 10,
            fault_colour(kind),
            legend_x + 16,
            kind.name()
        );
        legend_x += 110;
    }
    svg.push_str("</svg>\n");
    svg
}

/// The tooltip of a cell: its operations' counts by outcome.
fn cell_title(counts: &[u64; 4]) -> String {
    let text = CLASSES
        .iter()
        .zip(counts)
        .filter(|(_, count)| **count > 0)
        .map(|((name, _), count)| format!("{count} {name}"))
        .collect::<Vec<_>>()
        .join(", ");
    escape(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{FaultSpan, Record};

    fn history() -> HistoryFile {
        let record = |client, invoke_us, complete_us, outcome| Record {
            client,
            node: 1,
            key: 3,
            op: Op::Write(invoke_us),
            invoke_us,
            complete_us,
            outcome,
            detail: String::new(),
        };
        HistoryFile {
            seed: 5,
            nodes: 3,
            total_us: 10_000_000,
            records: vec![
                record(0, 0, Some(1_000_000), Outcome::Written),
                record(1, 2_000_000, Some(3_000_000), Outcome::Indeterminate),
                record(1, 4_000_000, None, Outcome::Indeterminate),
                record(FINAL_CLIENT, 9_000_000, Some(9_500_000), Outcome::Read(Some(0))),
            ],
            faults: vec![FaultSpan {
                kind: FaultKind::Partition,
                label: "partition {1} | {2,3} <bridge>".into(),
                start_us: 1_500_000,
                end_us: 9_000_000,
                succeeded: true,
                detail: "a & b".into(),
            }],
            ..HistoryFile::default()
        }
    }

    #[test]
    fn draws_lanes_faults_and_legend() {
        let svg = timeline(&history(), None);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        for text in ["client 0", "client 1", "final reads", "faults", "admin", "indeterminate write", "10 s"]
        {
            assert!(svg.contains(text), "missing {text:?}");
        }
        // Labels are escaped.
        assert!(svg.contains("partition {1} | {2,3} &lt;bridge&gt;"));
        assert!(svg.contains("a &amp; b"));
        assert!(!svg.contains("failing key"));
        // Both operation colours appear.
        assert!(svg.contains(CLASSES[0].1) && svg.contains(CLASSES[3].1));
    }

    #[test]
    fn labels_that_do_not_fit_are_left_to_the_tooltip() {
        let mut short = history();
        short.faults[0].end_us = short.faults[0].start_us + 1;
        short.faults[0].label = "a very long label that cannot fit".into();
        let svg = timeline(&short, None);
        assert!(!svg.contains(">a very long label that cannot fit</text>"));
        assert!(svg.contains("<title>a very long label that cannot fit"));
    }

    #[test]
    fn mixed_cells_are_stacked_bars() {
        let mut mixed = history();
        // Two operations in the same pixel column, one ok and one failed read.
        mixed.records = vec![
            Record {
                client: 0,
                node: 1,
                key: 1,
                op: Op::Read,
                invoke_us: 0,
                complete_us: Some(1),
                outcome: Outcome::Read(None),
                detail: String::new(),
            },
            Record {
                client: 0,
                node: 1,
                key: 1,
                op: Op::Read,
                invoke_us: 2,
                complete_us: Some(3),
                outcome: Outcome::Indeterminate,
                detail: String::new(),
            },
        ];
        let svg = timeline(&mixed, None);
        assert!(svg.contains("<title>1 ok, 1 not applied / read failed</title>"), "{svg}");
        assert_eq!(
            svg.matches(CLASSES[3].1).count(),
            1,
            "only the legend: a failed read is not an uncertain write"
        );
    }

    #[test]
    fn outlines_the_failing_key() {
        let svg = timeline(&history(), Some(3));
        assert!(svg.contains("failing key"));
        assert!(svg.contains("operations on the failing key"));
    }

    #[test]
    fn size_is_bounded_by_the_picture_not_the_history() {
        let mut long = history();
        long.total_us = 3_600_000_000;
        long.records = (0..200_000u64)
            .map(|i| Record {
                client: i % 8,
                node: 1,
                key: i / 100,
                op: Op::Write(i),
                invoke_us: i * 18_000,
                complete_us: Some(i * 18_000 + 5_000),
                outcome: if i % 2 == 0 { Outcome::Written } else { Outcome::Failed },
                detail: String::new(),
            })
            .collect();
        let svg = timeline(&long, None);
        assert!(svg.len() < 8 * PLOT_WIDTH_PX as usize * 200, "{} bytes", svg.len());
    }

    #[test]
    fn an_empty_history_still_draws() {
        let svg = timeline(&HistoryFile::default(), None);
        assert!(svg.contains("</svg>"));
    }
}
