//! The metrics registry every process starts from — ferry's build info and the process's own
//! CPU, memory and file descriptors — the label that names an endpoint in data-plane series,
//! and the two exposition formats `/metrics` speaks: the classic Prometheus text format (0.0.4)
//! and OpenMetrics 1.0.0, chosen by the scraper's `Accept` header.

mod process;
pub use process::{cpu_seconds_of, memory_kib_of};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::crd::EndpointId;

/// A registry holding `ferry_build_info` and the `process_*` families; each role registers its
/// own families into it.
pub fn registry() -> Registry {
    let mut registry = Registry::default();
    let commit = option_env!("FERRY_GIT_COMMIT").unwrap_or("unknown");
    registry.register(
        "ferry_build",
        "The ferry version and the commit it was built from (always 1)",
        Info::new([("version", env!("CARGO_PKG_VERSION")), ("commit", commit)]),
    );
    registry.register_collector(Box::new(process::ProcessCollector));
    registry
}

/// The endpoint of a data-plane series: its id, which every role knows (forwarders and the
/// dispatcher know no names) and which stays bounded, one per endpoint.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint_id: String,
}

impl EndpointLabel {
    pub fn of(endpoint: &EndpointId) -> Self {
        EndpointLabel {
            endpoint_id: endpoint.to_string(),
        }
    }
}

/// An exposition format of `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4: what a scraper gets unless it prefers OpenMetrics.
    Classic,
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header prefers: the supported media range with the highest
    /// quality, the earlier one on a tie; the classic format when the header is absent or names
    /// nothing ferry speaks.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let mut best: Option<(f32, Format)> = None;
        for range in accept.unwrap_or_default().split(',') {
            let Some((quality, format)) = parse_media_range(range) else {
                continue;
            };
            if quality > 0.0 && best.is_none_or(|(best_quality, _)| quality > best_quality) {
                best = Some((quality, format));
            }
        }
        best.map_or(Format::Classic, |(_, format)| format)
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Classic => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }

    pub fn encode(self, registry: &Registry) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        match self {
            Format::Classic => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, registry)?
            }
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, registry)?,
        }
        Ok(text)
    }
}

/// The quality and format of one media range of an `Accept` header; `None` for a range ferry
/// cannot serve (another type, or a version of a format it does not write).
fn parse_media_range(range: &str) -> Option<(f32, Format)> {
    let mut parts = range.split(';').map(str::trim);
    let media_type = parts.next()?.to_ascii_lowercase();
    let (mut quality, mut version) = (1.0_f32, None);
    for parameter in parts {
        let Some((key, value)) = parameter.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        match key.trim().to_ascii_lowercase().as_str() {
            "q" => quality = value.parse().ok()?,
            "version" => version = Some(value.to_owned()),
            _ => {}
        }
    }
    let format = match (media_type.as_str(), version.as_deref()) {
        ("application/openmetrics-text", None | Some("1.0.0")) => Format::OpenMetrics,
        ("text/plain", None | Some("0.0.4")) | ("text/*" | "*/*", _) => Format::Classic,
        _ => return None,
    };
    Some((quality, format))
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;

    use super::*;

    /// What Prometheus 2.x and 3.x send when scraping.
    const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn serves_the_classic_format_without_a_preference() {
        assert_eq!(Format::negotiate(None), Format::Classic);
        assert_eq!(Format::negotiate(Some("")), Format::Classic);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Classic);
        assert_eq!(Format::negotiate(Some("application/json")), Format::Classic);
    }

    #[test]
    fn serves_openmetrics_when_the_scraper_prefers_it() {
        assert_eq!(
            Format::negotiate(Some(PROMETHEUS_ACCEPT)),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some(
                "text/plain;version=0.0.4;q=0.3, application/openmetrics-text; version=\"1.0.0\"; q=0.9"
            )),
            Format::OpenMetrics
        );
    }

    #[test]
    fn serves_the_classic_format_when_the_scraper_prefers_it() {
        let accept = "application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4";
        assert_eq!(Format::negotiate(Some(accept)), Format::Classic);
        assert_eq!(
            Format::negotiate(Some("text/plain; version=0.0.4; charset=utf-8")),
            Format::Classic
        );
        // A tie goes to the range named first.
        let tie = "text/plain;q=0.5,application/openmetrics-text;q=0.5";
        assert_eq!(Format::negotiate(Some(tie)), Format::Classic);
    }

    #[test]
    fn ignores_refused_and_unknown_ranges() {
        let refused = "application/openmetrics-text;q=0,text/plain;q=0.1";
        assert_eq!(Format::negotiate(Some(refused)), Format::Classic);
        let unknown_version = "application/openmetrics-text;version=2.0.0,text/plain;q=0.1";
        assert_eq!(Format::negotiate(Some(unknown_version)), Format::Classic);
        let bad_quality = "application/openmetrics-text;q=high,text/plain;q=0.1";
        assert_eq!(Format::negotiate(Some(bad_quality)), Format::Classic);
    }

    fn sample_registry() -> Registry {
        let mut registry = registry();
        let tasks = Family::<EndpointLabel, Counter>::default();
        registry.register("ferry_test_tasks", "Tasks seen", tasks.clone());
        tasks
            .get_or_create(&EndpointLabel::of(&EndpointId::for_resource("ml", "demo")))
            .inc();
        registry
    }

    #[test]
    fn classic_format_names_counters_with_their_total_suffix_and_has_no_eof() {
        let text = Format::Classic.encode(&sample_registry()).expect("encode");
        assert!(
            text.contains("# HELP ferry_test_tasks_total Tasks seen"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ferry_test_tasks_total counter"),
            "{text}"
        );
        assert!(
            text.contains("ferry_test_tasks_total{endpoint_id=\"end_"),
            "{text}"
        );
        assert!(text.contains("# TYPE ferry_build_info gauge"), "{text}");
        assert!(text.contains("ferry_build_info{version=\""), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("# UNIT"), "{text}");
    }

    #[test]
    fn openmetrics_names_counter_families_without_the_suffix_and_ends_with_eof() {
        let text = Format::OpenMetrics
            .encode(&sample_registry())
            .expect("encode");
        assert!(text.contains("# TYPE ferry_test_tasks counter"), "{text}");
        assert!(
            text.contains("ferry_test_tasks_total{endpoint_id=\"end_"),
            "{text}"
        );
        assert!(text.contains("# TYPE ferry_build info"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn every_family_has_help_text() {
        for format in [Format::Classic, Format::OpenMetrics] {
            let text = format.encode(&sample_registry()).expect("encode");
            let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
            let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
            assert!(types > 3, "{text}");
            assert_eq!(types, helps, "{text}");
            for line in text.lines().filter(|l| l.starts_with("# HELP ")) {
                assert!(line.split(' ').count() > 3, "empty help: {line}");
            }
        }
    }
}
