//! Kubernetes naming rules for labels and Service names.

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
