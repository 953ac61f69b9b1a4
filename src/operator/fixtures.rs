//! Test fixtures: sample objects, and a scripted API server behind a real `kube::Client`
//! (`tower_test::mock::pair`) that asserts each request's method, path, query and body in
//! order, and that the operator sends nothing more once it is idle.

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
        runtime_images: Default::default(),
        input_allow_cidrs: Vec::new(),
    }
}

/// The endpoint with the operator's finalizer, as it is after its first reconcile.
pub fn finalized(mut endpoint: ModelEndpoint) -> ModelEndpoint {
    endpoint.meta_mut().finalizers = Some(vec![super::FINALIZER.into()]);
    endpoint
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The query of the operator's server-side applies that take over fields from other managers.
pub const APPLY_FORCED: &str = "fieldManager=ferry-operator&force=true";
/// The query of the operator's server-side applies of children it found absent.
pub const APPLY: &str = "fieldManager=ferry-operator";

/// One request the script expects: method, path, query and JSON body, all compared. Fields
/// whose values differ from run to run (times, generated names) are named one by one as
/// volatile: they must be present, and their values are not compared.
pub struct Expected {
    method: Method,
    path: String,
    query: String,
    body: Value,
    volatile: Vec<&'static str>,
}

impl Expected {
    pub fn new(method: Method, path: &str, body: Value) -> Self {
        Expected {
            method,
            path: path.to_owned(),
            query: String::new(),
            body,
            volatile: Vec::new(),
        }
    }

    /// A read: no query, no body.
    pub fn get(path: &str) -> Self {
        Expected::new(Method::GET, path, Value::Null)
    }

    /// The query, as `key=value&…` in any order.
    pub fn query(self, query: &str) -> Self {
        Expected {
            query: query.to_owned(),
            ..self
        }
    }

    /// Fields of the body, as JSON pointers, whose values are not compared.
    pub fn volatile(mut self, pointers: &[&'static str]) -> Self {
        self.volatile.extend_from_slice(pointers);
        self
    }

    /// An Event the operator publishes about the endpoint `demo`: its action (`Reconcile`,
    /// `Scale`), type, reason and note.
    pub fn event(action: &str, type_: &str, reason: &str, note: &str) -> Self {
        let body = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"namespace": "ml"},
            "action": action, "type": type_, "reason": reason, "note": note,
            "regarding": {"apiVersion": "ferry.dev/v1alpha1", "kind": "ModelEndpoint",
                "name": "demo", "namespace": "ml", "uid": "uid-demo"},
            "reportingController": "ferry-operator", "reportingInstance": "ferry-operator",
        });
        Expected::new(Method::POST, EVENTS, body).volatile(&["/eventTime", "/metadata/name"])
    }

    /// Panics unless `request` is the one expected.
    fn check(&self, method: &Method, path: &str, query: &str, body: &Value) {
        let seen = format!("{method} {path}?{query} {body}");
        assert_eq!(
            (method, path),
            (&self.method, self.path.as_str()),
            "unexpected request: {seen}"
        );
        assert_eq!(
            query_pairs(query),
            query_pairs(&self.query),
            "query of {seen}"
        );
        let (mut body, mut expected) = (body.clone(), self.body.clone());
        for pointer in &self.volatile {
            assert!(
                remove(&mut body, pointer).is_some(),
                "volatile field {pointer} absent: {seen}"
            );
            remove(&mut expected, pointer);
        }
        assert_eq!(body, expected, "body of {method} {path}");
    }
}

/// Where the operator publishes Events of objects in the namespace `ml`.
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ml/events";

fn query_pairs(query: &str) -> Vec<(String, String)> {
    let mut pairs: Vec<_> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    pairs.sort();
    pairs
}

/// Removes the member at `pointer` (which names an object member) from `value`.
fn remove(value: &mut Value, pointer: &str) -> Option<Value> {
    let (parent, key) = pointer.rsplit_once('/')?;
    let key = key.replace("~1", "/").replace("~0", "~");
    value.pointer_mut(parent)?.as_object_mut()?.remove(&key)
}

/// The scripted API server: each `expect` takes the next request the operator sent.
pub struct ApiServer {
    handle: Handle,
}

/// One request the operator sent, as expected, awaiting its answer.
pub struct Seen {
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
    /// The next request, which must be `expected`.
    pub async fn expect(&mut self, expected: Expected) -> Seen {
        // Only a guard against a hang: a request that never comes fails here.
        let next = tokio::time::timeout(Duration::from_secs(10), self.handle.next_request());
        let (request, respond) = next
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no request came; expected {} {}",
                    expected.method, expected.path
                )
            })
            .expect("client dropped");
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
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
        expected.check(&method, &path, &query, &body);
        Seen { body, respond }
    }

    /// Expects the request and answers it with its own body; returns that body.
    pub async fn expect_echoed(&mut self, expected: Expected) -> Value {
        let seen = self.expect(expected).await;
        let body = seen.body.clone();
        seen.echo();
        body
    }

    /// Drives `work` (a reconcile, an evaluation, a loop told to stop) to its end and fails if
    /// it sends a request on the way. Every request waits for its answer, so a request sent
    /// arrives here before `work` can end: when `work` ends first, the operator is idle.
    pub async fn idle_after<T>(&mut self, work: impl Future<Output = T>) -> T {
        // Only a guard against a hang, not a window: work that neither ends nor asks fails.
        let ended = tokio::time::timeout(Duration::from_secs(20), async {
            tokio::select! {
                output = work => output,
                Some((request, _)) = self.handle.next_request() => {
                    panic!("unexpected request {} {}", request.method(), request.uri())
                }
            }
        });
        ended.await.expect("the work ends")
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
