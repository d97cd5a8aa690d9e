//! Reading runs back and showing them: the summary printed after a run, a table that
//! puts many runs side by side, and a comparison that divides each server's figures
//! by a baseline server's on the same workload.
//!
//! Runs are read as plain JSON objects, so files written by SGLang's bench_serving
//! (same metric keys, no `label`) can be compared with ours.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use serde_json::{Map, Value};

use crate::BenchError;
use crate::record::BenchRecord;

/// One run read back from a JSONL file.
#[derive(Debug, Clone)]
pub struct Run {
    /// `label`, else `backend`, else `run N`.
    pub label: String,
    /// Workload summary without the load: runs with the same one are comparable.
    pub workload: String,
    /// `None` when the run had no concurrency cap.
    pub max_concurrency: Option<usize>,
    /// Requests per second; infinite when every request was sent at once.
    pub request_rate: f64,
    /// The whole record.
    pub fields: Map<String, Value>,
}

impl Run {
    /// A numeric field of the record, e.g. `output_throughput`.
    pub fn metric(&self, key: &str) -> Option<f64> {
        self.fields.get(key).and_then(Value::as_f64)
    }

    /// The load the run was offered, e.g. `c=4 rate=inf`.
    pub fn load(&self) -> String {
        let concurrency = self
            .max_concurrency
            .map_or_else(|| "-".to_string(), |n| n.to_string());
        format!("c={concurrency} rate={}", format_rate(self.request_rate))
    }

    fn from_fields(fields: Map<String, Value>, index: usize) -> Run {
        let text = |key: &str| fields.get(key).and_then(Value::as_str).map(str::to_string);
        let label = text("label")
            .or_else(|| text("backend"))
            .unwrap_or_else(|| format!("run {}", index + 1));
        let workload = text("workload").unwrap_or_else(|| sglang_workload(&fields));
        let max_concurrency = fields
            .get("max_concurrency")
            .and_then(Value::as_u64)
            .map(|n| n as usize);
        let request_rate = match fields.get("request_rate") {
            Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::INFINITY),
            _ => f64::INFINITY,
        };
        Run {
            label,
            workload,
            max_concurrency,
            request_rate,
            fields,
        }
    }
}

/// Reads every run of a JSONL file, in file order; blank lines are skipped.
pub fn load_runs(path: &Path) -> Result<Vec<Run>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut runs = Vec::new();
    for (line_idx, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields = parse_line(line).map_err(|reason| BenchError::RecordFormat {
            path: path.display().to_string(),
            line_no: line_idx + 1,
            reason,
        })?;
        runs.push(Run::from_fields(fields, runs.len()));
    }
    Ok(runs)
}

/// Python's `json.dumps` writes `Infinity` and `NaN`, which JSON lacks; SGLang's
/// files contain them, so they are read as `"inf"` and `null`.
fn parse_line(line: &str) -> Result<Map<String, Value>, String> {
    let value: Value = match serde_json::from_str(line) {
        Ok(value) => value,
        Err(first_error) => {
            let patched = line
                .replace(": -Infinity", ": \"-inf\"")
                .replace(": Infinity", ": \"inf\"")
                .replace(": NaN", ": null");
            serde_json::from_str(&patched).map_err(|_| first_error.to_string())?
        }
    };
    match value {
        Value::Object(fields) => Ok(fields),
        _ => Err("a run must be a JSON object".to_string()),
    }
}

/// Workload summary for a record written by SGLang's bench_serving.
fn sglang_workload(fields: &Map<String, Value>) -> String {
    let get = |key: &str| {
        fields
            .get(key)
            .filter(|v| !v.is_null())
            .map(Value::to_string)
    };
    let dataset = fields
        .get("dataset_name")
        .and_then(Value::as_str)
        .unwrap_or("unknown");
    match (get("random_input_len"), get("random_output_len")) {
        (Some(input), Some(output)) if dataset.starts_with("random") => {
            format!("{dataset} in={input} out={output}")
        }
        _ => dataset.to_string(),
    }
}

fn format_rate(rate: f64) -> String {
    if rate.is_finite() {
        format!("{rate}")
    } else {
        "inf".to_string()
    }
}

/// The summary printed after one run.
pub fn run_summary(record: &BenchRecord) -> String {
    let fields = match serde_json::to_value(record).expect("records serialise to JSON") {
        Value::Object(fields) => fields,
        _ => unreachable!("records serialise to JSON objects"),
    };
    let run = Run::from_fields(fields, 0);
    let m = |key: &str| run.metric(key).unwrap_or(0.0);
    let mut out = String::new();
    let line = |out: &mut String, name: &str, value: String| {
        writeln!(out, "{name:<34} {value}").expect("writing to a String cannot fail");
    };

    writeln!(out, "{:=^72}", " arbor bench ").unwrap();
    line(
        &mut out,
        "Server",
        format!(
            "{} ({}, {} API) at {}",
            record.label, record.backend, record.api, record.base_url
        ),
    );
    line(&mut out, "Model", record.model.clone());
    line(&mut out, "Workload", record.workload.clone());
    line(&mut out, "Load", run.load());
    line(
        &mut out,
        "Requests completed / failed",
        format!("{} / {}", record.metrics.completed, record.metrics.failed),
    );
    line(&mut out, "Duration (s)", format!("{:.2}", m("duration")));
    line(
        &mut out,
        "Input tokens",
        record.metrics.total_input_tokens.to_string(),
    );
    line(
        &mut out,
        "Output tokens (retokenized)",
        format!(
            "{} ({})",
            record.metrics.total_output_tokens, record.metrics.total_output_tokens_retokenized
        ),
    );
    line(&mut out, "Cached prompt tokens", cached_text(&run));
    line(
        &mut out,
        "Outputs shorter than asked",
        record.metrics.short_outputs.to_string(),
    );
    line(
        &mut out,
        "Request throughput (req/s)",
        format!("{:.2}", m("request_throughput")),
    );
    line(
        &mut out,
        "Input throughput (tok/s)",
        format!("{:.1}", m("input_throughput")),
    );
    line(
        &mut out,
        "Output throughput (tok/s)",
        format!("{:.1}", m("output_throughput")),
    );
    line(
        &mut out,
        "Total throughput (tok/s)",
        format!("{:.1}", m("total_throughput")),
    );
    line(
        &mut out,
        "Concurrency (mean in flight)",
        format!("{:.2}", m("concurrency")),
    );

    writeln!(out, "{:-^72}", " latency (ms) ").unwrap();
    writeln!(
        out,
        "{:<10}{:>12}{:>12}{:>12}{:>12}",
        "", "mean", "median", "p90", "p99"
    )
    .unwrap();
    for (name, key) in [
        ("TTFT", "ttft"),
        ("TPOT", "tpot"),
        ("ITL", "itl"),
        ("E2E", "e2e_latency"),
    ] {
        writeln!(
            out,
            "{name:<10}{:>12.2}{:>12.2}{:>12.2}{:>12.2}",
            m(&format!("mean_{key}_ms")),
            m(&format!("median_{key}_ms")),
            m(&format!("p90_{key}_ms")),
            m(&format!("p99_{key}_ms")),
        )
        .unwrap();
    }
    writeln!(out, "{}", "=".repeat(72)).unwrap();
    out
}

fn cached_text(run: &Run) -> String {
    match (
        run.metric("total_cached_tokens"),
        run.metric("cached_tokens_ratio"),
    ) {
        (Some(n), Some(ratio)) => format!("{n:.0} ({:.1}% of prompt tokens)", ratio * 100.0),
        (Some(n), None) => format!("{n:.0}"),
        _ => "not reported by the server".to_string(),
    }
}

/// Every run side by side, one row each, in file order.
pub fn runs_table(runs: &[Run]) -> String {
    let mut table = Table::new(&[
        "label",
        "workload",
        "load",
        "done",
        "req/s",
        "in tok/s",
        "out tok/s",
        "TTFT ms",
        "TTFT p99",
        "TPOT ms",
        "ITL ms",
        "ITL p99",
        "E2E ms",
        "cached",
    ]);
    for run in runs {
        let metric = |key: &str, decimals: usize| {
            run.metric(key)
                .map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
        };
        let cached = run
            .metric("cached_tokens_ratio")
            .map_or_else(|| "-".to_string(), |r| format!("{:.0}%", r * 100.0));
        table.row(vec![
            run.label.clone(),
            run.workload.clone(),
            run.load(),
            metric("completed", 0),
            metric("request_throughput", 2),
            metric("input_throughput", 1),
            metric("output_throughput", 1),
            metric("mean_ttft_ms", 1),
            metric("p99_ttft_ms", 1),
            metric("mean_tpot_ms", 2),
            metric("mean_itl_ms", 2),
            metric("p99_itl_ms", 2),
            metric("mean_e2e_latency_ms", 1),
            cached,
        ]);
    }
    table.render()
}

/// For every workload and load that `baseline` and another label both ran, that
/// label's figures divided by the baseline's (the last run of each wins). Fails when
/// no run carries the baseline label.
pub fn comparison_table(runs: &[Run], baseline: &str) -> Result<String, BenchError> {
    if !runs.iter().any(|r| r.label == baseline) {
        return Err(BenchError::InvalidSpec(format!(
            "no run is labelled {baseline:?}; labels are {:?}",
            labels(runs)
        )));
    }
    // Keyed so that loads sort by concurrency as numbers (1, 4, 16, not 1, 16, 4).
    type LoadKey = (String, Option<usize>, String);
    let mut latest: BTreeMap<LoadKey, BTreeMap<String, &Run>> = BTreeMap::new();
    for run in runs {
        let key = (
            run.workload.clone(),
            run.max_concurrency,
            format_rate(run.request_rate),
        );
        latest
            .entry(key)
            .or_default()
            .insert(run.label.clone(), run);
    }

    let mut table = Table::new(&[
        "workload",
        "load",
        "label",
        "out tok/s",
        "x",
        "TTFT ms",
        "x",
        "TPOT ms",
        "x",
        "E2E ms",
        "x",
    ]);
    for ((workload, _, _), by_label) in &latest {
        let Some(base) = by_label.get(baseline) else {
            continue;
        };
        let load = base.load();
        for (label, run) in by_label.iter().filter(|(label, _)| *label != baseline) {
            let mut cells = vec![
                workload.clone(),
                load.clone(),
                format!("{label} / {baseline}"),
            ];
            for (key, decimals) in [
                ("output_throughput", 1),
                ("mean_ttft_ms", 1),
                ("mean_tpot_ms", 2),
                ("mean_e2e_latency_ms", 1),
            ] {
                let (value, reference) = (run.metric(key), base.metric(key));
                cells.push(value.map_or_else(|| "-".into(), |v| format!("{v:.decimals$}")));
                cells.push(match (value, reference) {
                    (Some(v), Some(r)) if r > 0.0 => format!("{:.2}x", v / r),
                    _ => "-".to_string(),
                });
            }
            table.row(cells);
        }
    }
    Ok(table.render())
}

/// Distinct labels in file order.
pub fn labels(runs: &[Run]) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    for run in runs {
        if !labels.contains(&run.label) {
            labels.push(run.label.clone());
        }
    }
    labels
}

/// A plain-text table: the first column left-aligned, the rest right-aligned.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|col| {
                std::iter::once(&self.header)
                    .chain(&self.rows)
                    .map(|row| row.get(col).map_or(0, |c| c.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let rule = widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  ");
        for (row_idx, row) in std::iter::once(&self.header).chain(&self.rows).enumerate() {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(col, (cell, &width))| {
                    // Text columns (the first two or three) read better left-aligned.
                    if col < 3 && !cell.ends_with('x') {
                        format!("{cell:<width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                })
                .collect();
            writeln!(out, "{}", cells.join("  ").trim_end()).unwrap();
            if row_idx == 0 {
                writeln!(out, "{rule}").unwrap();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn jsonl(lines: &[&str]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        for line in lines {
            writeln!(file, "{line}").unwrap();
        }
        file
    }

    const ARBOR_C1: &str = r#"{"label":"arbor","workload":"random in=8 out=4","max_concurrency":1,"request_rate":"inf","completed":4,"output_throughput":200.0,"mean_ttft_ms":10.0,"mean_tpot_ms":2.0,"mean_e2e_latency_ms":20.0}"#;
    const OTHER_C1: &str = r#"{"label":"llama","workload":"random in=8 out=4","max_concurrency":1,"request_rate":"inf","completed":4,"output_throughput":100.0,"mean_ttft_ms":30.0,"mean_tpot_ms":4.0,"mean_e2e_latency_ms":50.0}"#;
    const SGLANG: &str = r#"{"backend":"sglang","dataset_name":"random","random_input_len":1024,"random_output_len":128,"request_rate": Infinity,"max_concurrency":16,"completed":100,"output_throughput":5000.5,"std_ttft_ms": NaN}"#;

    #[test]
    fn reads_our_records_and_sglang_records_with_infinity() {
        let file = jsonl(&[ARBOR_C1, "", SGLANG]);
        let runs = load_runs(file.path()).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].label, "arbor");
        assert_eq!(runs[0].load(), "c=1 rate=inf");
        assert_eq!(runs[1].label, "sglang");
        assert_eq!(runs[1].workload, "random in=1024 out=128");
        assert!(runs[1].request_rate.is_infinite());
        assert_eq!(runs[1].metric("output_throughput"), Some(5000.5));
        assert_eq!(runs[1].metric("std_ttft_ms"), None);
    }

    #[test]
    fn bad_lines_name_their_line_number() {
        let file = jsonl(&[ARBOR_C1, "{not json"]);
        let err = load_runs(file.path()).unwrap_err();
        assert!(
            matches!(err, BenchError::RecordFormat { line_no: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn runs_table_has_a_row_per_run_with_its_figures() {
        let file = jsonl(&[ARBOR_C1, OTHER_C1]);
        let table = runs_table(&load_runs(file.path()).unwrap());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[2].starts_with("arbor") && lines[2].contains("200.0"));
        assert!(lines[3].starts_with("llama") && lines[3].contains("100.0"));
    }

    #[test]
    fn comparison_divides_by_the_baseline_on_matching_workloads() {
        let file = jsonl(&[ARBOR_C1, OTHER_C1, SGLANG]);
        let runs = load_runs(file.path()).unwrap();
        let table = comparison_table(&runs, "llama").unwrap();
        let row = table.lines().find(|l| l.contains("arbor / llama")).unwrap();
        // 200/100 throughput, 10/30 TTFT, 2/4 TPOT, 20/50 E2E.
        for ratio in ["2.00x", "0.33x", "0.50x", "0.40x"] {
            assert!(row.contains(ratio), "{ratio} missing in {row}");
        }
        assert!(!table.contains("sglang"), "sglang ran no matching workload");
        assert!(comparison_table(&runs, "vllm").is_err());
    }
}
