//! The forwarders' NATS credentials in worker Secrets: issued at the first reconcile, accepted
//! by a real nats-server running the generated authorization, kept while fresh (no change to
//! the Secret), renewed once a third of their validity is left.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};

use super::super::build::worker_secret::{
    ForwarderCredsIssuing, NATS_CREDS_EXPIRES_ANNOTATION, NATS_CREDS_ISSUER_ANNOTATION,
    NATS_CREDS_KEY,
};
use super::super::context::Context;
use super::super::fixtures::{
    APPLY, APPLY_FORCED, ApiServer, Expected, context, endpoint, finalized,
};
use super::{
    DEPLOYMENT, WORKER_SECRET, finish, planned_worker_secret, serve_bundle, start_reconcile,
};
use crate::nats_auth::{AuthSet, write_private};
use crate::queue::{Connection, Credentials, Queue, QueueSettings, Role};

const VALIDITY: Duration = Duration::from_secs(86_400);

fn issuing_context(auth: &AuthSet) -> (Arc<Context>, ApiServer) {
    let (ctx, server) = context(&super::unreachable_nats());
    let ctx = Arc::try_unwrap(ctx)
        .ok()
        .expect("the only reference")
        .with_forwarder_creds(Some(ForwarderCredsIssuing {
            issuer: auth.forwarder_issuer(),
            validity: VALIDITY,
        }));
    (Arc::new(ctx), server)
}

/// Issued credentials and their expiry: new with every issue.
const ISSUED: [&str; 2] = [
    "/data/nats.creds",
    "/metadata/annotations/ferry.dev~1nats-creds-expires",
];

/// Reconciles up to the apply of the worker Secret, which answers `stored` to the read (none:
/// absent) and must be `expected` (the plain worker Secret with issued credentials when
/// `None`), and returns the applied Secret. The reconcile stops at the Deployment's check.
async fn reconcile_worker_secret(
    ctx: &Arc<Context>,
    server: &mut ApiServer,
    stored: Option<&Value>,
    expected: Option<&Value>,
) -> Value {
    let endpoint = finalized(endpoint());
    let reconcile = start_reconcile(endpoint.clone(), ctx);
    serve_bundle(server).await;
    let read = server.expect(Expected::get(WORKER_SECRET)).await;
    match stored {
        Some(stored) => read.ok(stored),
        None => read.not_found("secrets", "demo-worker"),
    }
    let query = if stored.is_some() {
        APPLY_FORCED
    } else {
        APPLY
    };
    let apply = match expected {
        Some(expected) => Expected::new(Method::PATCH, WORKER_SECRET, expected.clone()),
        None => {
            let mut issued = planned_worker_secret(ctx, &endpoint);
            let issuer = ctx
                .forwarder_creds
                .as_ref()
                .expect("issuing")
                .issuer
                .signing_key();
            issued["metadata"]["annotations"] = json!({NATS_CREDS_ISSUER_ANNOTATION: issuer});
            Expected::new(Method::PATCH, WORKER_SECRET, issued).volatile(&ISSUED)
        }
    };
    let applied = server.expect_echoed(apply.query(query)).await;
    let check = server.expect(Expected::get(DEPLOYMENT)).await;
    check.reply(http::StatusCode::INTERNAL_SERVER_ERROR, &json!({}));
    assert!(
        finish(server, reconcile).await.is_err(),
        "stopped at the Deployment"
    );
    applied
}

fn creds_of(secret: &Value) -> String {
    use base64::Engine;
    let encoded = secret["data"][NATS_CREDS_KEY].as_str().expect("nats.creds");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("base64");
    String::from_utf8(bytes).expect("utf-8")
}

#[tokio::test]
async fn worker_secrets_get_forwarder_creds_a_real_server_accepts_kept_while_fresh() {
    let auth = AuthSet::generate();
    let (ctx, mut server) = issuing_context(&auth);
    let first = reconcile_worker_secret(&ctx, &mut server, None, None).await;
    assert!(first["data"]["serving-token"].is_string());
    let expires = first["metadata"]["annotations"][NATS_CREDS_EXPIRES_ANNOTATION]
        .as_str()
        .expect("expiry annotation");
    let expires: jiff::Timestamp = expires.parse().expect("RFC 3339");
    assert!(
        expires
            > jiff::Timestamp::now()
                .checked_add(VALIDITY - Duration::from_secs(600))
                .expect("time")
    );

    // A real server with the authorization the signing key belongs to takes them, as the
    // forwarder of this endpoint.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let nats =
        crate::queue::testing::start_with_config(&auth.server_config().expect("config")).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let creds_file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        write_private(&path, text).expect("write");
        Credentials::CredsFile(path)
    };
    let all = nats.connection.clone().with_credentials(creds_file(
        "all.creds",
        &auth.role_creds(Role::All).expect("creds"),
    ));
    Queue::connect(&all, QueueSettings::default(), Duration::from_secs(5))
        .await
        .expect("the shared buckets");
    let forwarder = nats
        .connection
        .clone()
        .with_credentials(creds_file("forwarder.creds", &creds_of(&first)))
        .for_forwarder_of(&endpoint().endpoint_id());
    Queue::connect(&forwarder, QueueSettings::default(), Duration::ZERO)
        .await
        .expect("the issued credentials connect");
    let unsigned: Connection = nats
        .connection
        .clone()
        .for_forwarder_of(&endpoint().endpoint_id());
    assert!(
        Queue::connect(&unsigned, QueueSettings::default(), Duration::ZERO)
            .await
            .is_err()
    );

    // The next reconcile reads them back and applies the Secret unchanged.
    reconcile_worker_secret(&ctx, &mut server, Some(&first), Some(&first)).await;

    // With less than a third of their validity left, new ones replace them.
    let mut due = first.clone();
    let soon = jiff::Timestamp::now()
        .checked_add(VALIDITY / 3 - Duration::from_secs(60))
        .expect("time");
    due["metadata"]["annotations"][NATS_CREDS_EXPIRES_ANNOTATION] = json!(soon.to_string());
    let renewed = reconcile_worker_secret(&ctx, &mut server, Some(&due), None).await;
    assert_ne!(creds_of(&renewed), creds_of(&first));
    assert_ne!(
        renewed["metadata"]["annotations"],
        due["metadata"]["annotations"]
    );
}

#[tokio::test]
async fn issuing_reconciles_often_enough_to_renew_in_time() {
    let auth = AuthSet::generate();
    let (ctx, _server) = issuing_context(&auth);
    assert_eq!(
        ctx.requeue_interval(),
        Duration::from_secs(60),
        "the resync is sooner"
    );
    let (plain, _server) = context(&super::unreachable_nats());
    assert_eq!(plain.requeue_interval(), Duration::from_secs(60));
    let short = Arc::try_unwrap(plain)
        .ok()
        .expect("the only reference")
        .with_forwarder_creds(Some(ForwarderCredsIssuing {
            issuer: auth.forwarder_issuer(),
            validity: Duration::from_secs(120),
        }));
    assert_eq!(short.requeue_interval(), Duration::from_secs(20));
}
