//! The names ferry gives and reads on Kubernetes objects — the API group, label keys, the
//! Service of an endpoint and its URL — and Kubernetes' naming rules for labels and DNS labels.

use kube::ResourceExt;

use super::ModelEndpoint;

/// API group of ferry's resources.
pub const GROUP: &str = "ferry.dev";
/// Version of ferry's resources, as manifests spell it.
pub const API_VERSION: &str = "ferry.dev/v1alpha1";

/// Label every child carries; the operator watches only objects with it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "ferry-operator";
/// Selects an endpoint's worker pods; stable for the endpoint's lifetime.
pub const ENDPOINT_ID_LABEL: &str = "ferry.dev/endpoint-id";
/// Label a Secret must carry, set to `"true"`, before ferry reads it as callback credentials or
/// a signing secret: a spec naming any other Secret cannot make ferry send its contents away.
pub const CALLBACK_CREDENTIALS_LABEL: &str = "ferry.dev/callback-credentials";

/// Port the Service of a sync or streaming endpoint exposes.
pub const SERVICE_PORT: i32 = 80;

/// A label value: at most 63 characters, alphanumeric at both ends, `-_.` inside.
pub fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    value.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
        && bytes.first().is_none_or(u8::is_ascii_alphanumeric)
        && bytes.last().is_none_or(u8::is_ascii_alphanumeric)
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a non-empty label value.
pub fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok =
        prefix.is_none_or(|prefix| prefix.len() <= 253 && prefix.split('.').all(is_dns_label));
    prefix_ok && !name.is_empty() && is_label_value(name)
}

/// An RFC 1123 label: at most 63 lower-case alphanumerics or `-`, alphanumeric at both ends.
pub fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    !text.is_empty()
        && text.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Object names may be longer than a label value allows; keep a valid prefix.
pub fn truncated_label(name: &str) -> String {
    let mut text: String = name.chars().take(63).collect();
    while text.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        text.pop();
    }
    text
}

/// Name of the Service of a sync or streaming endpoint.
pub fn service_name(endpoint: &ModelEndpoint) -> String {
    endpoint.name_any()
}

/// Where the gateway reaches the workers of a sync or streaming endpoint: its Service.
pub fn service_url(endpoint: &ModelEndpoint) -> String {
    let namespace = crate::crd::namespace_of(endpoint);
    format!(
        "http://{}.{namespace}.svc:{SERVICE_PORT}",
        service_name(endpoint)
    )
}

#[cfg(test)]
mod tests {
    use kube::Resource;

    use super::*;
    use crate::crd::ModelBundle;

    /// The derive takes the group and version as literals; these constants must name the same.
    #[test]
    fn the_constants_name_the_group_and_version_of_both_kinds() {
        assert_eq!(ModelEndpoint::group(&()), GROUP);
        assert_eq!(ModelBundle::group(&()), GROUP);
        assert_eq!(ModelEndpoint::api_version(&()), API_VERSION);
        assert_eq!(ModelBundle::api_version(&()), API_VERSION);
    }

    #[test]
    fn label_rules_follow_kubernetes() {
        assert!(is_label_value("MY_TEAM"));
        assert!(is_label_value(""));
        assert!(!is_label_value("-x"));
        assert!(!is_label_value(&"x".repeat(64)));
        assert!(is_label_key("team"));
        assert!(is_label_key("example.com/team"));
        assert!(!is_label_key("Example.com/team"));
        assert!(!is_label_key("/team"));
        assert!(is_dns_label("demo-2"));
        assert!(!is_dns_label("demo.v2"));
        assert_eq!(
            truncated_label(&format!("{}-y", "x".repeat(62))),
            "x".repeat(62)
        );
    }
}
