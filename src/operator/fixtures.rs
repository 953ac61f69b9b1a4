//! Test fixtures: sample objects, and a scripted API server behind a real `kube::Client`
//! (`tower_test::mock::pair`) that asserts each request's method, path and body in order.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::{Client, Resource};
use serde_json::{Value, json};

use super::build::Settings;
use super::context::{Context, Metrics, QueueConnection};
use crate::crd::validate::{ValidatedEndpoint, validate};
use crate::crd::{ModelBundle, ModelEndpoint};
use crate::queue::QueueSettings;

pub fn endpoint() -> ModelEndpoint {
    serde_saphyr::from_str(
        r#"
apiVersion: ferry.dev/v1alpha1
kind: ModelEndpoint
metadata: {name: demo, namespace: ml, uid: uid-demo, generation: 3, resourceVersion: "10"}
spec:
  bundle: model
  cpus: 2
  memory: 8Gi
  storage: 16Gi
  minWorkers: 2
  maxWorkers: 4
  concurrentRequestsPerWorker: 4
  queueMessageTimeoutSeconds: 90
  labels: {team: ml, product: demo}
"#,
    )
    .expect("fixture parses")
}

pub fn bundle() -> ModelBundle {
    serde_saphyr::from_str(
        r#"
apiVersion: ferry.dev/v1alpha1
kind: ModelBundle
metadata: {name: model, namespace: ml, uid: uid-model}
spec:
  image: registry.local/model:1
  command: [python3, serve.py]
  args: [--fast]
  env: {MODEL_NAME: demo}
  healthcheckRoute: /healthz
  readinessInitialDelaySeconds: 20
"#,
    )
    .expect("fixture parses")
}

/// `endpoint` running `bundle`, both of which the test means to be valid.
pub fn validated(endpoint: &ModelEndpoint, bundle: &ModelBundle) -> ValidatedEndpoint {
    validate(endpoint, bundle).expect("a valid fixture")
}

pub fn settings() -> Settings {
    Settings {
        forwarder_image: "registry.local/ferry:test".into(),
        nats_url: "nats://nats.ferry:4222".into(),
        result_retention: Duration::from_secs(86_400),
        predict_timeout: Duration::from_secs(600),
        gpu_node_label: "k8s.amazonaws.com/accelerator".into(),
        worker_network_policy: None,
        forwarder_nats_creds: false,
    }
}

/// The endpoint with the operator's finalizer, as it is after its first reconcile.
pub fn finalized(mut endpoint: ModelEndpoint) -> ModelEndpoint {
    endpoint.meta_mut().finalizers = Some(vec![super::FINALIZER.into()]);
    endpoint
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The scripted API server: each `expect` takes the next request the operator sent.
pub struct ApiServer {
    handle: Handle,
}

/// One request the operator sent.
pub struct Seen {
    pub query: String,
    pub body: Value,
    respond: tower_test::mock::SendResponse<Response<Body>>,
}

impl Seen {
    pub fn reply(self, status: StatusCode, body: &Value) {
        let bytes = serde_json::to_vec(body).expect("json");
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(bytes))
            .expect("response");
        self.respond.send_response(response);
    }

    pub fn ok(self, body: &Value) {
        self.reply(StatusCode::OK, body)
    }

    /// Answers with the request body, as a server echoes what it stored.
    pub fn echo(self) {
        let body = self.body.clone();
        self.ok(&body)
    }

    pub fn not_found(self, kind: &str, name: &str) {
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
            "message": format!("{kind} \"{name}\" not found"), "code": 404,
        });
        self.reply(StatusCode::NOT_FOUND, &status)
    }
}

impl ApiServer {
    /// The next request, which must have this method and path.
    pub async fn expect(&mut self, method: Method, path: &str) -> Seen {
        let next = tokio::time::timeout(Duration::from_secs(10), self.handle.next_request());
        let (request, respond) = next
            .await
            .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
            .expect("client dropped");
        let method_seen = request.method().clone();
        let path_seen = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let bytes = http_body_util::BodyExt::collect(request.into_body())
            .await
            .expect("body")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("json body")
        };
        assert_eq!(
            (&method_seen, path_seen.as_str()),
            (&method, path),
            "unexpected request (query {query}, body {body})"
        );
        Seen {
            query,
            body,
            respond,
        }
    }

    /// Answers any Event the operator publishes next and returns its body.
    pub async fn expect_event(&mut self) -> Value {
        let seen = self
            .expect(Method::POST, "/apis/events.k8s.io/v1/namespaces/ml/events")
            .await;
        let body = seen.body.clone();
        seen.echo();
        body
    }

    /// Asserts that the operator sends nothing more.
    pub async fn expect_silence(&mut self) {
        let next = tokio::time::timeout(Duration::from_millis(200), self.handle.next_request());
        if let Ok(Some((request, _))) = next.await {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

/// A context whose client talks to the scripted API server and whose queue is `connection`.
pub fn context(connection: &crate::queue::Connection) -> (Arc<Context>, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut registry = prometheus_client::registry::Registry::default();
    let queue = QueueConnection::new(connection.clone(), QueueSettings::default());
    let context = Context::new(
        client,
        queue,
        settings(),
        Arc::new(crate::seal::KeyRing::generate()),
        Duration::from_secs(60),
        Metrics::register(&mut registry),
    );
    (Arc::new(context), ApiServer { handle })
}
