use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use kube::ResourceExt;
use serde_json::json;

use super::super::{FORWARDER_CONTAINER, MODEL_CONTAINER, Plan, Settings, plan};
use super::*;
use crate::operator::fixtures::{bundle, endpoint, settings, validated};

fn pod(plan: &Plan) -> &PodSpec {
    plan.deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .expect("pod spec")
}

fn container_context(plan: &Plan, name: &str) -> SecurityContext {
    pod(plan)
        .containers
        .iter()
        .find(|c| c.name == name)
        .and_then(|c| c.security_context.clone())
        .expect("security context")
}

fn peers() -> WorkerNetworkPolicy {
    serde_json::from_value(json!({
        "gateway": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ferry"}},
                     "podSelector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}}}],
        "nats": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nats"}}}],
        "dns": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}],
    }))
    .expect("parses")
}

fn confined() -> Settings {
    Settings {
        worker_network_policy: Some(peers()),
        ..settings()
    }
}

#[test]
fn worker_pods_are_hardened_by_default() {
    let plan = plan(&validated(&endpoint(), &bundle()), &settings()).expect("plan");
    let pod = pod(&plan);
    assert_eq!(pod.automount_service_account_token, Some(false));
    let context = pod.security_context.as_ref().expect("pod security context");
    assert_eq!(context.run_as_non_root, Some(true));
    assert_eq!(
        context.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    for name in [MODEL_CONTAINER, FORWARDER_CONTAINER] {
        let context = container_context(&plan, name);
        assert_eq!(context.allow_privilege_escalation, Some(false), "{name}");
        assert_eq!(context.run_as_non_root, Some(true), "{name}");
        assert_eq!(
            context.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_owned()]),
            "{name}"
        );
        assert_eq!(context.privileged, None, "{name}");
    }
}

#[test]
fn a_bundle_that_needs_root_lifts_only_the_non_root_rule_of_its_model() {
    let mut bundle = bundle();
    bundle.spec.run_as_root = true;
    let plan = plan(&validated(&endpoint(), &bundle), &settings()).expect("plan");
    let model = container_context(&plan, MODEL_CONTAINER);
    assert_eq!(model.run_as_non_root, Some(false));
    assert_eq!(model.allow_privilege_escalation, Some(false));
    assert_eq!(
        model.capabilities.and_then(|c| c.drop),
        Some(vec!["ALL".to_owned()])
    );
    assert_eq!(
        container_context(&plan, FORWARDER_CONTAINER).run_as_non_root,
        Some(true)
    );
    let pod = pod(&plan).security_context.clone().expect("pod context");
    assert_eq!(pod.run_as_non_root, Some(false));
    assert!(pod.seccomp_profile.is_some(), "seccomp stays on");
}

#[test]
fn run_as_root_comes_from_the_bundle_manifest_and_defaults_off() {
    let bundle: ModelBundle = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "ModelBundle",
        "metadata": {"name": "b"}, "spec": {"image": "i", "runAsRoot": true},
    }))
    .expect("parses");
    assert!(bundle.spec.run_as_root);
    assert!(!super::super::super::fixtures::bundle().spec.run_as_root);
}

#[test]
fn no_network_policy_unless_configured() {
    let plan = plan(&validated(&endpoint(), &bundle()), &settings()).expect("plan");
    assert_eq!(plan.network_policy, None);
}

#[test]
fn an_async_endpoints_policy_admits_nothing_and_reaches_only_nats_and_dns() {
    let endpoint = endpoint();
    let plan = plan(&validated(&endpoint, &bundle()), &confined()).expect("plan");
    let policy = plan.network_policy.expect("a policy");
    assert_eq!(policy.name_any(), "demo");
    let owner = &policy.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!(
        (owner.uid.as_str(), owner.controller),
        ("uid-demo", Some(true))
    );
    let spec = policy.spec.expect("spec");
    assert_eq!(
        spec.pod_selector.and_then(|s| s.match_labels),
        Some(BTreeMap::from([(
            "ferry.dev/endpoint-id".to_owned(),
            endpoint.endpoint_id().to_string()
        )]))
    );
    assert_eq!(
        spec.policy_types,
        Some(vec!["Ingress".to_owned(), "Egress".to_owned()])
    );
    assert_eq!(spec.ingress, Some(Vec::new()), "deny all ingress");
    let egress = spec.egress.expect("egress");
    assert_eq!(egress.len(), 2);
    assert_eq!(egress[0].to.as_ref(), Some(&peers().nats));
    assert_eq!(
        serde_json::to_value(&egress[0].ports).expect("json"),
        json!([{"protocol": "TCP", "port": 4222}])
    );
    assert_eq!(egress[1].to.as_ref(), Some(&peers().dns));
    assert_eq!(
        serde_json::to_value(&egress[1].ports).expect("json"),
        json!([{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}])
    );
}

#[test]
fn a_sync_endpoints_policy_admits_the_gateway_to_the_serving_port_only() {
    let mut endpoint = endpoint();
    endpoint.spec.endpoint_type = EndpointType::Sync;
    let plan = plan(&validated(&endpoint, &bundle()), &confined()).expect("plan");
    let ingress = plan
        .network_policy
        .and_then(|p| p.spec)
        .and_then(|s| s.ingress)
        .expect("ingress");
    assert_eq!(ingress.len(), 1);
    assert_eq!(ingress[0].from.as_ref(), Some(&peers().gateway));
    assert_eq!(
        serde_json::to_value(&ingress[0].ports).expect("json"),
        json!([{"protocol": "TCP", "port": super::super::FORWARDER_SERVE_PORT}])
    );
}

#[test]
fn empty_peer_lists_never_become_allow_all_rules() {
    let mut endpoint = endpoint();
    endpoint.spec.endpoint_type = EndpointType::Sync;
    let settings = Settings {
        worker_network_policy: Some(WorkerNetworkPolicy {
            gateway: Vec::new(),
            nats: vec![NetworkPolicyPeer::default()],
            nats_port: 4222,
            dns: Vec::new(),
        }),
        ..settings()
    };
    let spec = plan(&validated(&endpoint, &bundle()), &settings)
        .expect("plan")
        .network_policy
        .and_then(|p| p.spec)
        .expect("spec");
    assert_eq!(spec.ingress, Some(Vec::new()));
    assert_eq!(spec.egress.map(|e| e.len()), Some(1));
}

#[test]
fn the_peers_setting_rejects_unknown_fields() {
    let parsed: Result<WorkerNetworkPolicy, _> =
        serde_json::from_value(json!({"gateway": [], "nats": [], "dns": [], "model": []}));
    assert!(parsed.is_err());
}
