//! The metric names that the chart's alerts (`charts/ferry/templates/prometheusrule.yaml`) and
//! Grafana dashboard (`charts/ferry/dashboards/ferry.json`) read, held against the series a
//! running role exports: a renamed or missing metric leaves an alert or a panel silent.

use std::collections::BTreeSet;
use std::path::Path;

const SHIPPED: [&str; 2] = [
    "charts/ferry/templates/prometheusrule.yaml",
    "charts/ferry/dashboards/ferry.json",
];

/// Every `ferry_*` and `process_*` name the shipped alerts and dashboard mention.
pub fn metric_names_read_by_monitoring() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in SHIPPED {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        names.extend(
            text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .filter(|word| word.starts_with("ferry_") || word.starts_with("process_"))
                .map(str::to_owned),
        );
    }
    names
}

/// The series names a classic-format exposition offers, from its `# TYPE` lines (written for a
/// family even before it has a sample): a histogram's `_bucket`, `_sum` and `_count`.
pub fn series_names_exported(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(declared) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = declared.split_once(' ').expect("# TYPE name kind");
        if kind == "histogram" {
            names.extend(["_bucket", "_sum", "_count"].map(|suffix| format!("{name}{suffix}")));
        } else {
            names.insert(name.to_owned());
        }
    }
    names
}

/// The metric families ferry's source registers: the string literals `"ferry_…"` under `src/`.
fn families_registered_in_source() -> BTreeSet<String> {
    fn visit(dir: &Path, families: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("src/ readable") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                visit(&path, families);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let text = std::fs::read_to_string(&path).expect("source readable");
                families.extend(text.split('"').skip(1).step_by(2).filter_map(|literal| {
                    let is_name = literal.starts_with("ferry_")
                        && literal
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_');
                    is_name.then(|| literal.to_owned())
                }));
            }
        }
    }
    let mut families = BTreeSet::new();
    visit(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut families,
    );
    families
}

/// The family a series name belongs to: without a counter's `_total` or a histogram's suffix.
fn family_of(series: &str) -> &str {
    ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| series.strip_suffix(suffix))
        .unwrap_or(series)
}

/// Panics unless every name the alerts and dashboard read that `answers_for` accepts is a
/// series of `exposition`, or, for a family that has seen no event yet (a scrape omits
/// families without samples: dead letters, errors), one the source registers. Returns the
/// names found in the scrape.
pub fn assert_monitoring_reads_exported(
    exposition: &str,
    answers_for: impl Fn(&str) -> bool,
) -> BTreeSet<String> {
    let exported = series_names_exported(exposition);
    let (scraped, unseen): (BTreeSet<String>, BTreeSet<String>) = metric_names_read_by_monitoring()
        .into_iter()
        .filter(|name| answers_for(name))
        .partition(|name| exported.contains(name));
    let registered = families_registered_in_source();
    let missing: Vec<&String> = unseen
        .iter()
        .filter(|name| !registered.contains(family_of(name)))
        .collect();
    assert!(
        missing.is_empty(),
        "the chart's alerts or dashboard read {missing:?}, which neither the scrape nor src/ \
         has; the scrape offers {exported:?}"
    );
    scraped
}

/// The operator's reconcile series, which `ferry dev` (running no controller) lacks.
pub fn is_controller_series(name: &str) -> bool {
    name.starts_with("ferry_controller_")
}
