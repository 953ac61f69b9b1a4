//! What confines a worker pod: the pod's and the model container's security contexts, and the
//! optional default-deny NetworkPolicy that admits only the gateway and lets workers reach only
//! NATS and DNS. The model is code ferry does not trust; these are its walls.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, SeccompProfile, SecurityContext,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

use crate::crd::{EndpointType, ModelBundle};

/// Where the workers' NetworkPolicy lets traffic in from and out to. Read from the operator's
/// settings as JSON, e.g. `{"gateway": [...], "nats": [...], "natsPort": 4222, "dns": [...]}`
/// with Kubernetes `NetworkPolicyPeer`s.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerNetworkPolicy {
    /// Peers running the gateway: the only ones that reach a forwarder's serving port.
    pub gateway: Vec<NetworkPolicyPeer>,
    /// Peers running NATS, on `nats_port`.
    pub nats: Vec<NetworkPolicyPeer>,
    #[serde(default = "default_nats_port")]
    pub nats_port: u16,
    /// Peers answering DNS (port 53, UDP and TCP).
    pub dns: Vec<NetworkPolicyPeer>,
}

fn default_nats_port() -> u16 {
    4222
}

/// Pod-wide: the runtime's default seccomp profile, and a non-root user unless the bundle
/// needs root.
pub fn build_pod_security_context(bundle: &ModelBundle) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(!bundle.spec.run_as_root),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// The model container: no privilege escalation, no capabilities, and (unless the bundle says
/// `runAsRoot`) a non-root user. Its root filesystem stays writable: models write caches.
pub fn build_model_security_context(bundle: &ModelBundle) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        run_as_non_root: Some(!bundle.spec.run_as_root),
        capabilities: Some(drop_all()),
        ..Default::default()
    }
}

/// The forwarder sidecar: ferry's own image, which needs nothing.
pub fn build_forwarder_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(65_532),
        capabilities: Some(drop_all()),
        ..Default::default()
    }
}

fn drop_all() -> Capabilities {
    Capabilities {
        drop: Some(vec!["ALL".into()]),
        ..Default::default()
    }
}

/// The endpoint's default-deny policy over its worker pods (`pod_selector`): ingress only from
/// the gateway to the forwarder's serving port (none for an async endpoint, whose work comes
/// from the queue); egress only to NATS and DNS. The model talks to its forwarder over the
/// pod's loopback, which no NetworkPolicy governs.
pub fn build_network_policy(
    meta: ObjectMeta,
    pod_selector: BTreeMap<String, String>,
    endpoint_type: EndpointType,
    serve_port: u16,
    peers: &WorkerNetworkPolicy,
) -> NetworkPolicy {
    let tcp = |port: u16| NetworkPolicyPort {
        protocol: Some("TCP".into()),
        port: Some(IntOrString::Int(i32::from(port))),
        ..Default::default()
    };
    // A rule with no peers would admit every peer: a rule is written only when it names some.
    let serves = endpoint_type != EndpointType::Async;
    let ingress = (serves && !peers.gateway.is_empty())
        .then(|| NetworkPolicyIngressRule {
            from: Some(peers.gateway.clone()),
            ports: Some(vec![tcp(serve_port)]),
        })
        .into_iter()
        .collect();
    let dns_ports = ["UDP", "TCP"]
        .map(|protocol| NetworkPolicyPort {
            protocol: Some(protocol.into()),
            port: Some(IntOrString::Int(53)),
            ..Default::default()
        })
        .to_vec();
    let egress = [
        (&peers.nats, vec![tcp(peers.nats_port)]),
        (&peers.dns, dns_ports),
    ]
    .into_iter()
    .filter(|(to, _)| !to.is_empty())
    .map(|(to, ports)| NetworkPolicyEgressRule {
        to: Some(to.clone()),
        ports: Some(ports),
    })
    .collect();
    NetworkPolicy {
        metadata: meta,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(pod_selector),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    }
}

#[cfg(test)]
mod tests;
