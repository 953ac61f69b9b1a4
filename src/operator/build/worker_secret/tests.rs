use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::core::v1::PodSpec;
use kube::Resource;
use serde_json::Value;

use super::*;
use crate::nats_auth::AuthSet;
use crate::operator::build::{FORWARDER_CONTAINER, MODEL_CONTAINER, Settings, plan};
use crate::operator::fixtures::{bundle, endpoint, settings, validated};

const DAY: Duration = Duration::from_secs(86_400);

fn issuing(auth: &AuthSet) -> ForwarderCredsIssuing {
    ForwarderCredsIssuing {
        issuer: auth.forwarder_issuer(),
        validity: DAY,
    }
}

fn at(text: &str) -> Timestamp {
    text.parse().expect("timestamp")
}

/// The claims of the user JWT in a `.creds` file.
fn claims(creds: &str) -> Value {
    let jwt = creds.lines().nth(1).expect("JWT line");
    let payload = jwt.split('.').nth(1).expect("claims");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64")).expect("json")
}

#[test]
fn the_worker_secret_is_owned_by_its_endpoint_and_holds_the_token() {
    let endpoint = endpoint();
    let owner = endpoint.controller_owner_ref(&()).expect("uid");
    let secret =
        build_worker_secret(&validated(&endpoint, &bundle()), "tok", None).expect("builds");
    assert_eq!(secret.metadata.name.as_deref(), Some("demo-worker"));
    assert_eq!(secret.metadata.owner_references, Some(vec![owner]));
    assert_eq!(secret.metadata.annotations, None);
    let data = secret.data.expect("data");
    assert_eq!(data[SERVING_TOKEN_KEY].0, b"tok");
    assert!(!data.contains_key(NATS_CREDS_KEY));
    let env = serving_token_env(&endpoint);
    let from = env
        .value_from
        .and_then(|from| from.secret_key_ref)
        .expect("secret ref");
    assert_eq!(
        (from.name.as_str(), from.key.as_str()),
        ("demo-worker", SERVING_TOKEN_KEY)
    );
    assert_eq!(env.value, None, "never inline");
}

#[test]
fn issued_creds_are_the_endpoints_alone_expire_and_round_trip_through_the_secret() {
    let auth = AuthSet::generate();
    let issuing = issuing(&auth);
    let endpoint = endpoint();
    let id = endpoint.endpoint_id();
    let now = at("2030-01-01T00:00:00Z");
    let creds = issuing
        .compute_forwarder_creds(&id, None, now)
        .expect("issued");
    assert_eq!(creds.expires, at("2030-01-02T00:00:00Z"));
    assert_eq!(creds.issuer, issuing.issuer.signing_key());
    let claims = claims(&creds.creds);
    assert_eq!(claims["exp"], creds.expires.as_second());
    assert_eq!(claims["name"], format!("forwarder-{id}"));
    let subscribe = claims["nats"]["sub"]["allow"].to_string();
    assert_eq!(
        subscribe,
        serde_json::to_string(&crate::queue::forwarder_of(&id).subscribe).expect("json")
    );

    let secret =
        build_worker_secret(&validated(&endpoint, &bundle()), "tok", Some(&creds)).expect("builds");
    let annotations = secret.metadata.annotations.clone().expect("annotations");
    assert_eq!(
        annotations[NATS_CREDS_EXPIRES_ANNOTATION],
        "2030-01-02T00:00:00Z"
    );
    assert_eq!(ForwarderCreds::stored_in(&secret), Some(creds));
}

#[test]
fn stored_creds_are_kept_until_a_third_of_their_validity_is_left() {
    let auth = AuthSet::generate();
    let issuing = issuing(&auth);
    let id = endpoint().endpoint_id();
    let issued_at = at("2030-01-01T00:00:00Z");
    let stored = issuing
        .compute_forwarder_creds(&id, None, issued_at)
        .expect("issued");
    // 16 h in: 8 h (a third of a day) left, the last moment they are kept.
    let almost = at("2030-01-01T15:59:59Z");
    let kept = issuing
        .compute_forwarder_creds(&id, Some(stored.clone()), almost)
        .expect("kept");
    assert_eq!(
        kept, stored,
        "no new credentials, so no change to the Secret"
    );
    let due = at("2030-01-01T16:00:00Z");
    let renewed = issuing
        .compute_forwarder_creds(&id, Some(stored.clone()), due)
        .expect("renewed");
    assert_ne!(renewed.creds, stored.creds);
    assert_eq!(renewed.expires, at("2030-01-02T16:00:00Z"));
}

#[test]
fn creds_another_signing_key_issued_are_replaced() {
    let id = endpoint().endpoint_id();
    let now = at("2030-01-01T00:00:00Z");
    let old = issuing(&AuthSet::generate())
        .compute_forwarder_creds(&id, None, now)
        .expect("issued");
    let issuing = issuing(&AuthSet::generate());
    let new = issuing
        .compute_forwarder_creds(&id, Some(old.clone()), now)
        .expect("issued");
    assert_ne!(new.issuer, old.issuer);
    assert_eq!(new.issuer, issuing.issuer.signing_key());
}

fn pod(settings: &Settings) -> PodSpec {
    let plan = plan(&validated(&endpoint(), &bundle()), settings).expect("plan");
    plan.deployment
        .spec
        .and_then(|spec| spec.template.spec)
        .expect("pod spec")
}

#[test]
fn only_the_forwarder_mounts_its_nats_creds_as_a_file_the_kubelet_refreshes() {
    let pod = pod(&Settings {
        forwarder_nats_creds: true,
        ..settings()
    });
    let volumes = pod.volumes.as_ref().expect("volumes");
    assert_eq!(volumes.len(), 1);
    let source = volumes[0].secret.as_ref().expect("a Secret volume");
    assert_eq!(source.secret_name.as_deref(), Some("demo-worker"));
    let items = source.items.as_ref().expect("items");
    assert_eq!(
        items.len(),
        1,
        "the serving token stays out of the file system"
    );
    assert_eq!(items[0].key, NATS_CREDS_KEY);
    let container = |name: &str| {
        pod.containers
            .iter()
            .find(|c| c.name == name)
            .expect("container")
    };
    let model = container(MODEL_CONTAINER);
    assert_eq!(model.volume_mounts, None);
    let model_env = serde_json::to_string(&model.env).expect("json");
    assert!(!model_env.contains("NATS"), "{model_env}");
    let forwarder = container(FORWARDER_CONTAINER);
    let mounts = forwarder.volume_mounts.as_ref().expect("mounts");
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].name, volumes[0].name);
    assert_eq!(
        mounts[0].sub_path, None,
        "a subPath mount is never refreshed"
    );
    assert_eq!(mounts[0].read_only, Some(true));
    let creds_file = forwarder
        .env
        .iter()
        .flatten()
        .find(|var| var.name == forwarder_env::NATS_CREDS_FILE)
        .and_then(|var| var.value.clone())
        .expect("the forwarder's creds-file flag");
    assert_eq!(
        creds_file,
        format!("{}/{}", mounts[0].mount_path, items[0].path)
    );
}

#[test]
fn without_issuing_worker_pods_get_no_nats_creds() {
    let pod = pod(&settings());
    assert_eq!(pod.volumes, None);
    let text = serde_json::to_string(&pod).expect("json");
    assert!(!text.contains(forwarder_env::NATS_CREDS_FILE), "{text}");
}
