//! The SSRF guard: callback URLs may not reach loopback, private, link-local, unique-local,
//! CGNAT, multicast, cloud-metadata or other internal addresses ([`ranges`]), written as IPv4 or
//! inside any IPv6 form, unless the operator allows those ranges. Names are resolved by ferry,
//! every address is vetted, and the connection goes to a vetted address: the dispatcher looks a
//! name up once per attempt and connects to the address vetted then, so a second DNS answer
//! cannot rebind it ([`VettingResolver`] vets any other lookup a client makes). A failed lookup
//! refuses the URL, and so does one that takes longer than the guard's lookup timeout. The
//! gateway checks on submission, the dispatcher on every attempt; lookups are shared for a few
//! seconds ([`cache`]), their answers vetted on every use. A refusal names the rule a URL
//! breaks, never the internal address it resolved to.

mod cache;
mod ranges;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use url::Url;

/// Why a callback URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("is not a URL")]
    NotAUrl,
    #[error("must use http or https")]
    Scheme,
    #[error("must not carry credentials")]
    Credentials,
    #[error("has no host")]
    NoHost,
    #[error("host {host} is not among the endpoint's allowed callback hosts")]
    HostNotAllowed { host: String },
    #[error("host {host} could not be resolved")]
    Unresolvable { host: String },
    #[error("host {host} did not resolve within {} s", timeout.as_secs_f64())]
    LookupTimedOut { host: String, timeout: Duration },
    #[error("resolves to a {kind} address, which callbacks may not reach")]
    Forbidden { kind: &'static str },
}

impl Refusal {
    /// True when the same URL may pass later (DNS was slow), rather than being refused for good.
    pub fn is_transient(&self) -> bool {
        matches!(self, Refusal::LookupTimedOut { .. })
    }
}

/// How long a DNS lookup of a callback host may take when none is configured.
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where names are looked up.
#[derive(Clone, Debug, Default)]
enum Lookup {
    /// The system resolver.
    #[default]
    System,
    /// A resolver that never answers.
    #[cfg(test)]
    Stalled,
    /// A name server whose answers change from one query to the next; none is kept.
    #[cfg(test)]
    Scripted(Arc<testing::Script>),
}

/// Which addresses callbacks may reach beyond the public internet.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    /// Ranges allowed although internal (for example a cluster's own receivers).
    allowed: Vec<IpNet>,
    /// Fixed answers for names, consulted before DNS (split-horizon set-ups and tests).
    overrides: Arc<HashMap<String, Vec<IpAddr>>>,
    recent: Arc<cache::DnsCache>,
    lookup: Lookup,
    lookup_timeout: Option<Duration>,
}

impl Guard {
    pub fn new(allowed: Vec<IpNet>, overrides: HashMap<String, Vec<IpAddr>>) -> Self {
        Guard {
            allowed,
            overrides: Arc::new(overrides),
            ..Guard::default()
        }
    }

    /// The same guard, giving up on a DNS lookup after `timeout`.
    pub fn with_lookup_timeout(self, timeout: Duration) -> Self {
        Guard {
            lookup_timeout: Some(timeout),
            ..self
        }
    }

    /// A guard whose DNS lookups never answer, giving up after `timeout`.
    #[cfg(test)]
    pub fn stalled(timeout: Duration) -> Self {
        Guard {
            lookup: Lookup::Stalled,
            ..Guard::default()
        }
        .with_lookup_timeout(timeout)
    }

    /// A guard with `allowed` ranges open that looks every name up in `script`.
    #[cfg(test)]
    pub fn scripted(allowed: Vec<IpNet>, script: Arc<testing::Script>) -> Self {
        Guard {
            allowed,
            lookup: Lookup::Scripted(script),
            ..Guard::default()
        }
    }

    fn lookup_timeout(&self) -> Duration {
        self.lookup_timeout.unwrap_or(DEFAULT_LOOKUP_TIMEOUT)
    }

    /// The refusal an address earns, if any.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refusal> {
        let ip = canonical(ip);
        match forbidden_kind(ip) {
            Some(kind) if !self.allowed.iter().any(|net| net.contains(&ip)) => {
                Err(Refusal::Forbidden { kind })
            }
            _ => Ok(()),
        }
    }

    /// Resolves `host` and vets every answer; refuses when any answer is forbidden, so a name
    /// that mixes public and internal addresses cannot be used to reach the internal one.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, Refusal> {
        let unresolvable = || Refusal::Unresolvable {
            host: host.to_owned(),
        };
        let ips = match self.overrides.get(host) {
            Some(ips) => ips.clone(),
            None => {
                let timeout = self.lookup_timeout();
                tokio::time::timeout(timeout, self.look_up(host))
                    .await
                    .map_err(|_| Refusal::LookupTimedOut {
                        host: host.to_owned(),
                        timeout,
                    })?
                    .ok_or_else(unresolvable)?
            }
        };
        if ips.is_empty() {
            return Err(unresolvable());
        }
        for ip in &ips {
            self.check_ip(*ip)?;
        }
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect())
    }

    /// The addresses DNS gives for `host`, from a recent lookup when there is one.
    async fn look_up(&self, host: &str) -> Option<Vec<IpAddr>> {
        #[cfg(test)]
        if let Lookup::Scripted(script) = &self.lookup {
            return Some(script.answer());
        }
        let now = std::time::Instant::now();
        if let Some(ips) = self.recent.get(host, now) {
            return Some(ips);
        }
        let ips: Vec<IpAddr> = match &self.lookup {
            Lookup::System => tokio::net::lookup_host((host, 0))
                .await
                .ok()?
                .map(|addr| addr.ip())
                .collect(),
            #[cfg(test)]
            Lookup::Stalled => std::future::pending().await,
            #[cfg(test)]
            Lookup::Scripted(_) => unreachable!("answered above"),
        };
        if !ips.is_empty() {
            self.recent.put(host, ips.clone(), now);
        }
        Some(ips)
    }

    /// Checks a callback URL as submitted: syntax, the endpoint's host allowlist, and where it leads.
    pub async fn vet_url(&self, text: &str, allowed_hosts: &[String]) -> Result<Url, Refusal> {
        let url = check_syntax(text)?;
        let host = url.host().ok_or(Refusal::NoHost)?;
        let name = host.to_string();
        if !host_allowed(allowed_hosts, &name) {
            return Err(Refusal::HostNotAllowed { host: name });
        }
        match host {
            url::Host::Ipv4(ip) => self.check_ip(IpAddr::V4(ip))?,
            url::Host::Ipv6(ip) => self.check_ip(IpAddr::V6(ip))?,
            url::Host::Domain(domain) => {
                self.resolve(domain, url.port_or_known_default().unwrap_or(443))
                    .await?;
            }
        }
        Ok(url)
    }
}

/// http(s), a host, no user or password.
pub fn check_syntax(text: &str) -> Result<Url, Refusal> {
    let url = Url::parse(text).map_err(|_| Refusal::NotAUrl)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refusal::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::Credentials);
    }
    if url.host().is_none() {
        return Err(Refusal::NoHost);
    }
    Ok(url)
}

/// True when `allowed` is empty (no restriction) or names the host exactly or as `*.suffix`.
pub fn host_allowed(allowed: &[String], host: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allowed.is_empty()
        || allowed.iter().any(|pattern| {
            let pattern = pattern.to_ascii_lowercase();
            match pattern.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => host == pattern,
            }
        })
}

/// IPv4 written as IPv6 (`::ffff:10.0.0.1`) is judged as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The kind of internal address `ip` is, or `None` for a public one.
pub fn forbidden_kind(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => ranges::forbidden_v4(v4),
        IpAddr::V6(v6) => ranges::forbidden_v6(v6),
    }
}

/// reqwest's resolver for callback clients, for any name not pinned to an address already
/// vetted: only vetted addresses reach the connector, and only the first of them.
pub struct VettingResolver(pub Guard);

impl reqwest::dns::Resolve for VettingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = guard.resolve(&host, 0).await?;
            Ok(Box::new(addrs.into_iter().take(1)) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
pub mod testing {
    //! A name server for tests whose answers change from one query to the next.

    use std::collections::VecDeque;
    use std::net::IpAddr;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers each query with the next of its answers (the last one repeats), and counts them.
    #[derive(Debug)]
    pub struct Script {
        answers: Mutex<VecDeque<Vec<IpAddr>>>,
        queries: AtomicUsize,
    }

    impl Script {
        pub fn new(answers: &[&[&str]]) -> Self {
            let answers = answers
                .iter()
                .map(|ips| ips.iter().map(|ip| ip.parse().expect("ip")).collect())
                .collect();
            Script {
                answers: Mutex::new(answers),
                queries: AtomicUsize::new(0),
            }
        }

        /// Queries answered so far.
        pub fn queries(&self) -> usize {
            self.queries.load(Ordering::SeqCst)
        }

        pub(super) fn answer(&self) -> Vec<IpAddr> {
            self.queries.fetch_add(1, Ordering::SeqCst);
            let mut answers = self.answers.lock().expect("not poisoned");
            match answers.len() {
                0 => Vec::new(),
                1 => answers[0].clone(),
                _ => answers.pop_front().unwrap_or_default(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn internal_addresses_are_refused_by_kind() {
        let guard = Guard::default();
        for (address, kind) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("224.0.0.1", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("::1", "loopback"),
            ("fd12::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("fd00:ec2::254", "cloud metadata"),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::a00:1", "private"),
            ("::127.0.0.1", "loopback"),
            ("::ffff:0:127.0.0.1", "loopback"),
        ] {
            assert_eq!(forbidden_kind(ip(address)), Some(kind), "{address}");
            assert!(guard.check_ip(ip(address)).is_err(), "{address}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for address in ["93.184.215.14", "8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert_eq!(forbidden_kind(ip(address)), None, "{address}");
        }
    }

    #[test]
    fn allowed_ranges_open_internal_addresses() {
        let guard = Guard::new(vec!["127.0.0.0/8".parse().expect("cidr")], HashMap::new());
        assert!(guard.check_ip(ip("127.0.0.1")).is_ok());
        assert!(guard.check_ip(ip("::ffff:127.0.0.1")).is_ok());
        assert!(guard.check_ip(ip("10.0.0.1")).is_err());
    }

    #[test]
    fn syntax_rules() {
        assert_eq!(check_syntax("ftp://example.com/"), Err(Refusal::Scheme));
        assert_eq!(
            check_syntax("https://user:pw@example.com/"),
            Err(Refusal::Credentials)
        );
        assert_eq!(check_syntax("not a url"), Err(Refusal::NotAUrl));
        assert!(check_syntax("https://example.com/cb?x=1").is_ok());
    }

    #[test]
    fn host_allowlists_match_exactly_or_by_wildcard_suffix() {
        let allowed = vec!["hooks.example.com".to_owned(), "*.corp.example".to_owned()];
        assert!(host_allowed(&allowed, "hooks.example.com"));
        assert!(host_allowed(&allowed, "a.b.corp.example"));
        assert!(!host_allowed(&allowed, "corp.example"));
        assert!(!host_allowed(&allowed, "evil-hooks.example.com"));
        assert!(host_allowed(&[], "anything"));
    }

    #[tokio::test]
    async fn a_looked_up_answer_is_reused_and_still_vetted() {
        // `localhost` resolves from the hosts file: no query leaves the machine.
        let guard = Guard::default();
        let refused = guard.vet_url("http://localhost:9/cb", &[]).await;
        assert!(
            matches!(refused, Err(Refusal::Forbidden { .. })),
            "{refused:?}"
        );
        let now = std::time::Instant::now();
        let kept = guard
            .recent
            .get("localhost", now)
            .expect("the answer is kept");
        assert!(kept.iter().all(|ip| ip.is_loopback()), "{kept:?}");
        let open = Guard {
            allowed: vec![
                "127.0.0.0/8".parse().expect("cidr"),
                "::1/128".parse().expect("cidr"),
            ],
            ..guard.clone()
        };
        assert!(
            open.vet_url("http://localhost:9/cb", &[]).await.is_ok(),
            "the shared answer is vetted against each guard's own ranges"
        );
    }

    #[tokio::test]
    async fn names_are_vetted_after_resolution_and_unresolvable_names_fail_closed() {
        let overrides = HashMap::from([
            ("metadata.test".to_owned(), vec![ip("169.254.169.254")]),
            (
                "mixed.test".to_owned(),
                vec![ip("93.184.215.14"), ip("10.0.0.7")],
            ),
            ("public.test".to_owned(), vec![ip("93.184.215.14")]),
            ("nowhere.test".to_owned(), vec![]),
        ]);
        let guard = Guard::new(vec![], overrides);
        let refused = guard.vet_url("http://metadata.test/latest", &[]).await;
        assert!(
            matches!(
                refused,
                Err(Refusal::Forbidden {
                    kind: "cloud metadata",
                    ..
                })
            ),
            "{refused:?}"
        );
        assert!(guard.vet_url("http://mixed.test/", &[]).await.is_err());
        assert!(guard.vet_url("http://public.test/", &[]).await.is_ok());
        assert!(matches!(
            guard.vet_url("http://nowhere.test/", &[]).await,
            Err(Refusal::Unresolvable { .. })
        ));
        assert!(guard.vet_url("http://127.0.0.1:9/", &[]).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_that_never_answers_is_refused_at_the_timeout() {
        let guard = Guard::stalled(Duration::from_secs(2));
        let refused = guard
            .vet_url("https://slow.example/cb", &[])
            .await
            .expect_err("a lookup that never answers is refused");
        assert_eq!(
            refused,
            Refusal::LookupTimedOut {
                host: "slow.example".into(),
                timeout: Duration::from_secs(2)
            }
        );
        assert!(refused.is_transient());
        assert_eq!(
            refused.to_string(),
            "host slow.example did not resolve within 2 s"
        );
    }

    #[tokio::test]
    async fn refusals_name_the_rule_not_the_resolved_address() {
        let overrides = HashMap::from([("internal.test".to_owned(), vec![ip("10.20.30.40")])]);
        let guard = Guard::new(vec![], overrides);
        for (url, kind) in [
            ("http://internal.test/cb", "private"),
            ("http://localhost:9/cb", "loopback"),
            ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
        ] {
            let refusal = guard.vet_url(url, &[]).await.expect_err(url).to_string();
            assert_eq!(
                refusal,
                format!("resolves to a {kind} address, which callbacks may not reach")
            );
            assert!(
                !refusal.contains("10.20") && !refusal.contains("127.0"),
                "{refusal}"
            );
        }
    }
}
