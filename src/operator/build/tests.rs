use std::time::Duration;

use k8s_openapi::api::core::v1::Container;

use super::*;
use crate::crd::ModelBundle;
use crate::operator::fixtures::{bundle, endpoint, settings, validated};

fn containers(plan: &Plan) -> &[Container] {
    &plan
        .deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .expect("pod spec")
        .containers
}

fn container<'a>(plan: &'a Plan, name: &str) -> &'a Container {
    containers(plan)
        .iter()
        .find(|c| c.name == name)
        .expect("container")
}

fn env_of(container: &Container) -> BTreeMap<String, String> {
    container
        .env
        .iter()
        .flatten()
        .map(|var| (var.name.clone(), var.value.clone().unwrap_or_default()))
        .collect()
}

fn hash_of(plan: &Plan) -> String {
    plan.deployment
        .spec
        .as_ref()
        .expect("spec")
        .template
        .metadata
        .as_ref()
        .expect("meta")
        .annotations
        .as_ref()
        .expect("annotations")[CONFIG_HASH_ANNOTATION]
        .clone()
}

fn pod_spec(plan: &Plan) -> &PodSpec {
    plan.deployment
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .expect("pod spec")
}

#[test]
fn async_endpoint_runs_the_bundle_beside_a_forwarder() {
    let endpoint = endpoint();
    let plan = plan(&validated(&endpoint, &bundle()), &settings()).expect("plan");
    let model = container(&plan, MODEL_CONTAINER);
    assert_eq!(model.image.as_deref(), Some("registry.local/model:1"));
    assert_eq!(
        model.command,
        Some(vec!["python3".into(), "serve.py".into()])
    );
    assert_eq!(model.args, Some(vec!["--fast".into()]));
    let env = env_of(model);
    assert_eq!(env["PORT"], "5005");
    assert_eq!(env["MODEL_NAME"], "demo");
    let port = &model.ports.as_ref().expect("ports")[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("http"), 5005)
    );

    let forwarder = container(&plan, FORWARDER_CONTAINER);
    assert_eq!(
        forwarder.image.as_deref(),
        Some("registry.local/ferry:test")
    );
    assert_eq!(
        forwarder.command,
        Some(vec!["ferry".into(), "forwarder".into()])
    );
    let env = env_of(forwarder);
    assert_eq!(
        env[forwarder_env::ENDPOINT_ID],
        endpoint.endpoint_id().to_string()
    );
    assert_eq!(env[forwarder_env::MODEL_URL], "http://127.0.0.1:5005");
    assert_eq!(env[forwarder_env::PREDICT_ROUTE], "/predict");
    assert_eq!(env[forwarder_env::HEALTHCHECK_ROUTE], "/healthz");
    assert_eq!(env[forwarder_env::CONCURRENCY], "4");
    assert_eq!(env[forwarder_env::NATS_URL], "nats://nats.ferry:4222");
    assert_eq!(env[forwarder_env::PREDICT_TIMEOUT_SECONDS], "600");
    assert_eq!(env[forwarder_env::ADMIN_LISTEN], "0.0.0.0:9464");

    assert_eq!(plan.service, None);
    let queue = plan.queue.expect("async endpoints get a queue");
    assert_eq!(queue.endpoint_id, endpoint.endpoint_id());
    assert_eq!(queue.ack_wait, Duration::from_secs(90));
}

#[test]
fn resources_come_from_cpus_memory_and_storage() {
    let plan = plan(&validated(&endpoint(), &bundle()), &settings()).expect("plan");
    let resources = container(&plan, MODEL_CONTAINER)
        .resources
        .clone()
        .expect("resources");
    let requests = resources.requests.expect("requests");
    let limits = resources.limits.expect("limits");
    assert_eq!(requests["cpu"], Quantity("2".into()));
    assert_eq!(requests["memory"], Quantity("8Gi".into()));
    assert_eq!(requests["ephemeral-storage"], Quantity("16Gi".into()));
    assert_eq!(limits["memory"], Quantity("8Gi".into()));
    assert!(!limits.contains_key(GPU_RESOURCE));
    assert_eq!(pod_spec(&plan).node_selector, None);
}

#[test]
fn gpus_set_limits_a_node_selector_and_a_toleration() {
    let mut endpoint = endpoint();
    endpoint.spec.gpus = 2;
    endpoint.spec.gpu_type = Some("nvidia-ampere-a10".into());
    let plan = plan(&validated(&endpoint, &bundle()), &settings()).expect("plan");
    let resources = container(&plan, MODEL_CONTAINER)
        .resources
        .clone()
        .expect("resources");
    assert_eq!(
        resources.limits.expect("limits")[GPU_RESOURCE],
        Quantity("2".into())
    );
    let pod = pod_spec(&plan);
    assert_eq!(
        pod.node_selector,
        Some(BTreeMap::from([(
            "k8s.amazonaws.com/accelerator".into(),
            "nvidia-ampere-a10".into()
        )]))
    );
    let toleration = &pod.tolerations.as_ref().expect("tolerations")[0];
    assert_eq!(toleration.key.as_deref(), Some(GPU_RESOURCE));
}

#[test]
fn probes_use_the_healthcheck_route_and_initial_delay() {
    let plan = plan(&validated(&endpoint(), &bundle()), &settings()).expect("plan");
    let model = container(&plan, MODEL_CONTAINER);
    let readiness = model.readiness_probe.as_ref().expect("readiness");
    let get = readiness.http_get.as_ref().expect("http");
    assert_eq!(get.path.as_deref(), Some("/healthz"));
    assert_eq!(get.port, IntOrString::String("http".into()));
    assert_eq!(readiness.initial_delay_seconds, Some(20));
    let liveness = model.liveness_probe.as_ref().expect("liveness");
    assert_eq!(
        liveness.http_get.as_ref().and_then(|g| g.path.as_deref()),
        Some("/healthz")
    );
    assert!(liveness.initial_delay_seconds >= Some(20));
}

#[test]
fn pods_carry_endpoint_and_standard_labels_and_drain_before_stopping() {
    let endpoint = endpoint();
    let plan = plan(&validated(&endpoint, &bundle()), &settings()).expect("plan");
    let deployment = &plan.deployment;
    let labels = deployment.metadata.labels.clone().expect("labels");
    assert_eq!(labels["team"], "ml");
    assert_eq!(labels["product"], "demo");
    assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
    assert_eq!(labels["app.kubernetes.io/instance"], "demo");
    assert_eq!(labels["app.kubernetes.io/part-of"], "ferry");
    let spec = deployment.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, None, "the autoscaler owns the count");
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone());
    let selector = spec.selector.match_labels.clone().expect("selector");
    for (key, value) in &selector {
        assert_eq!(pod_labels.as_ref().map(|l| &l[key]), Some(value));
    }
    assert_eq!(pod_spec(&plan).termination_grace_period_seconds, Some(630));
    let owner = &deployment
        .metadata
        .owner_references
        .as_ref()
        .expect("owner")[0];
    assert_eq!(owner.kind, "ModelEndpoint");
    assert_eq!(owner.uid, "uid-demo");
    assert_eq!(owner.controller, Some(true));
    assert_eq!(deployment.metadata.namespace.as_deref(), Some("ml"));
}

#[test]
fn a_spec_change_changes_the_config_hash_but_scaling_does_not() {
    let endpoint = endpoint();
    let original = hash_of(&plan(&validated(&endpoint, &bundle()), &settings()).expect("plan"));

    let mut bigger = endpoint.clone();
    bigger.spec.cpus = "4".into();
    assert_ne!(
        original,
        hash_of(&plan(&validated(&bigger, &bundle()), &settings()).expect("plan"))
    );

    let mut new_image = bundle();
    new_image.spec.image = "registry.local/model:2".into();
    assert_ne!(
        original,
        hash_of(&plan(&validated(&endpoint, &new_image), &settings()).expect("plan"))
    );

    let mut scaled = endpoint.clone();
    scaled.spec.min_workers = 3;
    scaled.spec.endpoint_type = EndpointType::Sync;
    let scaled_plan = plan(&validated(&scaled, &bundle()), &settings()).expect("plan");
    let mut sync = endpoint.clone();
    sync.spec.endpoint_type = EndpointType::Sync;
    let sync_hash = hash_of(&plan(&validated(&sync, &bundle()), &settings()).expect("plan"));
    assert_eq!(
        sync_hash,
        hash_of(&scaled_plan),
        "a new minimum does not roll the pods"
    );
    assert_eq!(
        scaled_plan.deployment.spec.and_then(|s| s.replicas),
        None,
        "the autoscaler owns a sync endpoint's count too"
    );
}

#[test]
fn sync_endpoints_get_a_service_to_a_serving_forwarder_and_no_queue() {
    let mut endpoint = endpoint();
    endpoint.spec.endpoint_type = EndpointType::Sync;
    let mut streaming_bundle = bundle();
    streaming_bundle.spec.streaming_predict_route = Some("/stream".into());
    let plan = plan(&validated(&endpoint, &streaming_bundle), &settings()).expect("plan");
    assert_eq!(plan.queue, None);
    let forwarder = containers(&plan)
        .iter()
        .find(|c| c.name == "forwarder")
        .expect("a forwarder");
    let env = forwarder.env.clone().unwrap_or_default();
    let value = |name: &str| {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(value("FERRY_SERVE_LISTEN").as_deref(), Some("0.0.0.0:9465"));
    assert_eq!(
        value("FERRY_STREAMING_PREDICT_ROUTE").as_deref(),
        Some("/stream")
    );
    let service = plan.service.expect("service");
    assert_eq!(service.metadata.name.as_deref(), Some("demo"));
    let spec = service.spec.expect("spec");
    assert_eq!(
        spec.selector,
        plan.deployment
            .spec
            .map(|s| s.selector.match_labels.unwrap_or_default())
    );
    let port = &spec.ports.expect("ports")[0];
    assert_eq!(port.port, SERVICE_PORT);
    assert_eq!(port.target_port, Some(IntOrString::String("serve".into())));
}

#[test]
fn an_endpoint_without_a_uid_cannot_own_its_workers() {
    let mut unsaved = endpoint();
    unsaved.metadata.uid = None;
    let refused = plan(&validated(&unsaved, &bundle()), &settings()).expect_err("no uid");
    assert_eq!(refused, BuildError::NoUid);
    assert_eq!(refused.reason(), "InvalidSpec");
}

/// The example as `kubectl apply` gives it to the operator (namespace and uid set by the API).
fn example<T: serde::de::DeserializeOwned>(file: &str, uid: &str) -> T {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(file);
    let mut value: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&path).expect("example")).expect("YAML");
    value["metadata"]["namespace"] = "default".into();
    value["metadata"]["uid"] = uid.into();
    serde_json::from_value(value).expect("example parses")
}

#[test]
fn example_workers_are_probed_on_the_model_port_and_health_route_of_the_pod_address() {
    let bundle: ModelBundle = example("test-bundle.yaml", "uid-bundle");
    let endpoint: ModelEndpoint = example("demo-endpoint-callback.yaml", "uid-endpoint");
    let plan = plan(&validated(&endpoint, &bundle), &settings()).expect("plan");
    let model = container(&plan, MODEL_CONTAINER);
    let port = &model.ports.as_ref().expect("ports")[0];
    assert_eq!(port.container_port, i32::from(bundle.spec.port));
    assert_eq!(
        env_of(model)[MODEL_PORT_ENV],
        bundle.spec.port.to_string(),
        "the model listens where it is probed"
    );
    for probe in [&model.readiness_probe, &model.liveness_probe] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("probe");
        assert_eq!(
            get.path.as_deref(),
            Some(bundle.spec.healthcheck_route.as_str())
        );
        assert_eq!(
            get.port,
            IntOrString::String(port.name.clone().expect("named"))
        );
        // No host: the kubelet probes the pod's address, where a model bound to 127.0.0.1
        // would never answer.
        assert_eq!(get.host, None);
    }
    let forwarder = container(&plan, FORWARDER_CONTAINER);
    let forwarder_ports: Vec<_> = forwarder.ports.iter().flatten().collect();
    for probe in [&forwarder.readiness_probe, &forwarder.liveness_probe] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("probe");
        assert_eq!(get.host, None);
        assert!(
            forwarder_ports
                .iter()
                .any(|p| IntOrString::String(p.name.clone().unwrap_or_default()) == get.port),
            "the forwarder's probe names one of its ports"
        );
    }
    let command = bundle.spec.command.join(" ");
    assert!(
        command.contains("\"0.0.0.0\""),
        "the example model listens on all interfaces: {command}"
    );
}
