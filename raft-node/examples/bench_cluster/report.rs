//! The benchmark's report: Markdown tables with ratios to etcd, and SVG
//! plots, written into the report directory.

use std::fmt::Write as _;

use super::failover::{quantile, FailoverResults};
use super::{svg, Figures, Machine, Options, SystemResults, FAILOVER_TIMING};

/// The whole report as Markdown.
pub fn markdown(
    options: &Options,
    machine: &Machine,
    raft: &SystemResults,
    etcd: Option<&SystemResults>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Machine: {} cores, load average {}; fdatasync (4 KiB) p50 {} µs, p99 {} µs (three writers at once: p50 {} \
         µs, p99 {} µs); TCP loopback RTT p50 {} µs, p99 {} µs; raft-node's QUIC transport RTT (one 256-byte \
         entry) p50 {} µs, p99 {} µs.\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        machine.load_average,
        machine.fsync.p50_micros,
        machine.fsync.p99_micros,
        machine.fsync_three_writers.p50_micros,
        machine.fsync_three_writers.p99_micros,
        machine.rtt.p50_micros,
        machine.rtt.p99_micros,
        machine.transport_rtt.p50_micros,
        machine.transport_rtt.p99_micros,
    );
    if !raft.writes.is_empty() {
        load_tables(&mut out, options, machine, raft, etcd);
    }
    if let Some(ours) = &raft.failover {
        failover_table(&mut out, ours, etcd.and_then(|e| e.failover.as_ref()));
    }
    out
}

fn load_tables(
    out: &mut String,
    options: &Options,
    machine: &Machine,
    raft: &SystemResults,
    etcd: Option<&SystemResults>,
) {
    let _ = writeln!(
        out,
        "{} s per point, 256-byte values, one request in flight per connection, aimed at the leader.\n",
        options.seconds
    );
    let _ = writeln!(
        out,
        "| workload | raft-node ops/s | p50 µs | p99 µs | etcd ops/s | p50 µs | p99 µs | throughput ratio |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let row = |out: &mut String, name: String, ours: &Figures, theirs: Option<&Figures>| {
        let (their_rate, their_p50, their_p99, ratio) = match theirs {
            Some(t) => (
                format!("{:.0}", t.per_second()),
                t.p50_micros.to_string(),
                t.p99_micros.to_string(),
                format!("{:.2}×", ours.per_second() / t.per_second().max(1e-9)),
            ),
            None => ("–".into(), "–".into(), "–".into(), "–".into()),
        };
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {} | {} | {their_rate} | {their_p50} | {their_p99} | {ratio} |",
            ours.per_second(),
            ours.p50_micros,
            ours.p99_micros
        );
    };
    for (connections, ours) in &raft.writes {
        let theirs = etcd.and_then(|e| e.writes.iter().find(|(c, _)| c == connections).map(|(_, f)| f));
        let plural = if *connections == 1 { "" } else { "s" };
        row(out, format!("write, {connections} connection{plural}"), ours, theirs);
    }
    row(
        out,
        format!("linearizable read, {} connections", options.read_connections),
        &raft.reads,
        etcd.map(|e| &e.reads),
    );
    let errors: u64 = raft.writes.iter().map(|(_, f)| f.errors).sum::<u64>() + raft.reads.errors;
    let their_errors: Option<u64> =
        etcd.map(|e| e.writes.iter().map(|(_, f)| f.errors).sum::<u64>() + e.reads.errors);
    let _ = writeln!(
        out,
        "\nFailed requests: raft-node {errors}{}.",
        their_errors.map(|n| format!(", etcd {n}")).unwrap_or_default()
    );
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let _ = writeln!(
        out,
        "Leader peak RSS after the write runs (each system first wrote every one of the {} keys once, so both \
         hold the same data): raft-node {:.1} MiB{}.",
        raft.filled_keys,
        mib(raft.leader_peak_rss_bytes),
        etcd.map(|e| format!(", etcd {:.1} MiB", mib(e.leader_peak_rss_bytes))).unwrap_or_default()
    );
    if let Some((_, single)) = raft.writes.iter().find(|(c, _)| *c == 1) {
        let floor = machine.fsync.p50_micros + machine.rtt.p50_micros;
        // What no implementation of this design can go below on this
        // machine: the client's round trip, the entry's round trip to a
        // follower over the transport, and the follower's synced write while
        // the two other members sync the same entry on the same disk.
        let path_floor = machine.rtt.p50_micros
            + machine.transport_rtt.p50_micros
            + machine.fsync_three_writers.p50_micros;
        let _ = writeln!(
            out,
            "Single-connection write p50: {} µs = {:.2}× (fdatasync p50 + RTT p50 = {floor} µs). The path's own \
             floor here (TCP RTT + transport RTT + fdatasync with three writers, p50s) is {path_floor} µs = \
             {:.2}× that; the write took {:.2}× the path's floor.\n",
            single.p50_micros,
            single.p50_micros as f64 / floor.max(1) as f64,
            path_floor as f64 / floor.max(1) as f64,
            single.p50_micros as f64 / path_floor.max(1) as f64,
        );
    }
}

fn failover_table(out: &mut String, ours: &FailoverResults, theirs: Option<&FailoverResults>) {
    let _ = writeln!(
        out,
        "Failover after kill -9 of the leader: {} ms heartbeats, election timeouts {}–{} ms (both systems, \
         pre-vote on), writers on both survivors; ms from the kill.\n",
        FAILOVER_TIMING.heartbeat_ms,
        FAILOVER_TIMING.election_timeout_ms,
        2 * FAILOVER_TIMING.election_timeout_ms
    );
    let _ = writeln!(out, "| system, measured until | trials | failed | median | p90 | p99 | worst |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    let mut rows = vec![("raft-node", ours)];
    if let Some(theirs) = theirs {
        rows.push(("etcd", theirs));
    }
    for (name, results) in &rows {
        for (what, values) in
            [("a write succeeds", &results.write_ms), ("a new leader is named", &results.leader_ms)]
        {
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let _ = writeln!(
                out,
                "| {name}, {what} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
                sorted.len() + results.failed_trials,
                results.failed_trials,
                quantile(&sorted, 0.5),
                quantile(&sorted, 0.9),
                quantile(&sorted, 0.99),
                sorted.last().copied().unwrap_or(f64::NAN)
            );
        }
    }
    if let Some(theirs) = theirs {
        let sorted = |values: &[f64]| {
            let mut values = values.to_vec();
            values.sort_by(f64::total_cmp);
            values
        };
        let (ours, theirs) = (sorted(&ours.write_ms), sorted(&theirs.write_ms));
        let _ = writeln!(
            out,
            "\nWrite recovery, raft-node ÷ etcd: median {:.2}×, p99 {:.2}×, worst {:.2}×.",
            quantile(&ours, 0.5) / quantile(&theirs, 0.5),
            quantile(&ours, 0.99) / quantile(&theirs, 0.99),
            ours.last().unwrap_or(&f64::NAN) / theirs.last().unwrap_or(&f64::NAN)
        );
    }
}

/// Writes `report.md` and the SVG plots into the report directory.
pub fn write(
    options: &Options,
    markdown: &str,
    raft: &SystemResults,
    etcd: Option<&SystemResults>,
) -> Result<(), String> {
    let directory = &options.report_dir;
    std::fs::create_dir_all(directory).map_err(|e| format!("creating {}: {e}", directory.display()))?;
    let mut files = vec![("report.md", markdown.to_string())];
    if !raft.writes.is_empty() {
        files.push(("throughput.svg", throughput_plot(raft, etcd)));
        files.push(("latency-64.svg", latency_plot(options, raft, etcd)));
    }
    if let Some(ours) = &raft.failover {
        files.push(("failover.svg", failover_plot(ours, etcd.and_then(|e| e.failover.as_ref()))));
        files.push(("failover-raft-node.csv", failover_csv(ours)));
    }
    if let Some(theirs) = etcd.and_then(|e| e.failover.as_ref()) {
        files.push(("failover-etcd.csv", failover_csv(theirs)));
    }
    for (name, text) in files {
        let path = directory.join(name);
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// One line per successful trial, in trial order: ms until a write
/// succeeded, until a leader was named, the terms the election took, and
/// whether the member restarted by the trial before won.
fn failover_csv(results: &FailoverResults) -> String {
    let mut out = String::from("write_ms,leader_ms,terms,restarted_won\n");
    let rows =
        results.write_ms.iter().zip(&results.leader_ms).zip(&results.elections).zip(&results.restarted_won);
    for (((write, leader), terms), restarted_won) in rows {
        let _ = writeln!(out, "{write:.1},{leader:.1},{terms},{restarted_won}");
    }
    out
}

fn system_series(
    label: &str,
    points: Vec<(f64, f64)>,
    index: usize,
    dashed: bool,
    dots: bool,
) -> svg::Series {
    svg::Series { label: label.to_string(), points, color: svg::palette(index), dashed, dots }
}

fn throughput_plot(raft: &SystemResults, etcd: Option<&SystemResults>) -> String {
    let points = |results: &SystemResults| -> Vec<(f64, f64)> {
        results.writes.iter().map(|(c, f)| (*c as f64, f.per_second())).collect()
    };
    let mut series = vec![system_series("raft-node writes", points(raft), 0, false, true)];
    if let Some(etcd) = etcd {
        series.push(system_series("etcd writes", points(etcd), 1, true, true));
    }
    let max_rate = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(1.0, f64::max);
    let max_connections = raft.writes.iter().map(|(c, _)| *c as f64).fold(1.0, f64::max);
    svg::document(&[svg::Chart {
        title: "Writes per second against connections (256-byte values)".into(),
        x_label: "connections (log scale)".into(),
        y_label: "writes per second".into(),
        x_scale: svg::Scale::Log10,
        x_range: (1.0, max_connections.max(2.0)),
        y_range: (0.0, max_rate * 1.1),
        series,
        markers: Vec::new(),
    }])
}

fn latency_plot(options: &Options, raft: &SystemResults, etcd: Option<&SystemResults>) -> String {
    let mut series = Vec::new();
    let at_64 = |results: &SystemResults| {
        results.writes.iter().find(|(c, _)| *c == 64).map(|(_, f)| f.latency_cdf_ms.clone())
    };
    if let Some(points) = at_64(raft) {
        series.push(system_series("raft-node write", points, 0, false, false));
    }
    if let Some(points) = etcd.and_then(at_64) {
        series.push(system_series("etcd write", points, 1, true, false));
    }
    series.push(system_series("raft-node read", raft.reads.latency_cdf_ms.clone(), 2, false, false));
    if let Some(etcd) = etcd {
        series.push(system_series("etcd read", etcd.reads.latency_cdf_ms.clone(), 3, true, false));
    }
    let low = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(f64::INFINITY, f64::min);
    let high = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(0.0, f64::max);
    svg::document(&[svg::Chart {
        title: format!(
            "Latency CDF: writes at 64 connections, linearizable reads at {}",
            options.read_connections
        ),
        x_label: "latency (ms, log scale)".into(),
        y_label: "cumulative percent of requests".into(),
        x_scale: svg::Scale::Log10,
        x_range: (decade_below(low), decade_above(high)),
        y_range: (0.0, 100.0),
        series,
        markers: Vec::new(),
    }])
}

fn failover_plot(ours: &FailoverResults, theirs: Option<&FailoverResults>) -> String {
    let cdf = |values: &[f64]| {
        let mut values = values.to_vec();
        values.sort_by(f64::total_cmp);
        svg::cdf_points(&values, 400)
    };
    let mut series = vec![
        system_series("raft-node: write succeeds", cdf(&ours.write_ms), 0, false, false),
        system_series("raft-node: leader named", cdf(&ours.leader_ms), 2, false, false),
    ];
    if let Some(theirs) = theirs {
        series.push(system_series("etcd: write succeeds", cdf(&theirs.write_ms), 1, true, false));
        series.push(system_series("etcd: leader named", cdf(&theirs.leader_ms), 3, true, false));
    }
    let high = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(400.0, f64::max);
    svg::document(&[svg::Chart {
        title: format!(
            "Failover after kill -9 of the leader ({}–{} ms election timeouts)",
            FAILOVER_TIMING.election_timeout_ms,
            2 * FAILOVER_TIMING.election_timeout_ms
        ),
        x_label: "time from the kill (ms)".into(),
        y_label: "cumulative percent of trials".into(),
        x_scale: svg::Scale::Linear,
        x_range: (0.0, (high / 100.0).ceil() * 100.0),
        y_range: (0.0, 100.0),
        series,
        markers: Vec::new(),
    }])
}

fn decade_below(value: f64) -> f64 {
    if value.is_finite() && value > 0.0 {
        10f64.powf(value.log10().floor())
    } else {
        0.1
    }
}

fn decade_above(value: f64) -> f64 {
    if value.is_finite() && value > 0.0 {
        10f64.powf(value.log10().ceil())
    } else {
        1000.0
    }
}
