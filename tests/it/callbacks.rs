//! The callback contract end to end: retries and their schedule, Retry-After, timeouts, 410,
//! dead letters and redelivery, a dispatcher restart, signatures checked by an independent
//! implementation, Basic and mTLS credentials, and the SSRF guard.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const WAIT: Duration = Duration::from_secs(30);
const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn secret_yaml(name: &str, pairs: &[(&str, &str)]) -> String {
    let data: String = pairs
        .iter()
        .map(|(k, v)| format!("  {k}: {}\n", serde_json::to_string(v).unwrap()))
        .collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  labels: {{ferry.dev/callback-credentials: \"true\"}}\nstringData:\n{data}"
    )
}

/// The example bundle and one endpoint `hooks` calling back `url`, with extra spec lines.
async fn start(
    url: &str,
    extra_spec: &str,
    extra_files: &[(&str, String)],
    flags: &[&str],
) -> (Manifests, Dev, String) {
    let manifests = Manifests::with_example_bundle();
    manifests.add(
        "endpoint.yaml",
        &endpoint_yaml("hooks", "test-bundle", url, extra_spec),
    );
    for (file, yaml) in extra_files {
        manifests.add(file, yaml);
    }
    let dev = Dev::start_with(manifests.path(), None, flags).await;
    let endpoint = dev.ready_endpoint("hooks").await;
    (manifests, dev, endpoint)
}

fn task_args() -> Value {
    json!({"args": {"x": 2, "y": "hello"}})
}

async fn callback_state(dev: &Dev, task: &str, state: &str) -> Value {
    eventually(&format!("callback {state}"), WAIT, || async {
        let view = dev.task(task).await;
        (view["callback"]["state"] == state).then_some(view["callback"].clone())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_twice_then_succeeds_on_the_endpoint_schedule() {
    let receiver = Receiver::start().await;
    receiver.answer_first_with(&[StatusCode::INTERNAL_SERVER_ERROR, StatusCode::BAD_GATEWAY]);
    let spec = "  callbacks:\n    retryScheduleSeconds: [1, 1, 1]\n";
    let (_m, dev, endpoint) = start(&receiver.url("/cb"), spec, &[], &[]).await;
    let task = dev.submit(&endpoint, task_args()).await;
    let callback = callback_state(&dev, &task, "DELIVERED").await;
    let codes: Vec<Value> = callback["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].clone())
        .collect();
    assert_eq!(codes, vec![json!(500), json!(502), json!(200)]);
    let received = receiver.received();
    assert_eq!(received.len(), 3);
    assert!(
        received
            .iter()
            .all(|r| r.headers["webhook-id"] == task.as_str()),
        "same webhook-id on every retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honours_retry_after_on_429() {
    let receiver = Receiver::start().await;
    receiver.script(vec![Answer {
        status: StatusCode::TOO_MANY_REQUESTS,
        retry_after: Some(3),
        delay: Duration::ZERO,
    }]);
    let spec = "  callbacks:\n    retryScheduleSeconds: [1]\n";
    let (_m, dev, endpoint) = start(&receiver.url("/cb"), spec, &[], &[]).await;
    let task = dev.submit(&endpoint, task_args()).await;
    let callback = callback_state(&dev, &task, "DELIVERED").await;
    let at: Vec<u64> = callback["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["at_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(at.len(), 2);
    assert!(
        at[1] - at[0] >= 2_900,
        "waited {} ms, asked for 3 s",
        at[1] - at[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_times_out_and_is_retried() {
    let receiver = Receiver::start().await;
    receiver.script(vec![Answer {
        status: StatusCode::OK,
        retry_after: None,
        // Longer than the test may take: only an attempt cut at its timeout lets a second one
        // deliver.
        delay: Duration::from_secs(3600),
    }]);
    let spec = "  callbacks:\n    retryScheduleSeconds: [1]\n    attemptTimeoutSeconds: 1\n";
    let (_m, dev, endpoint) = start(&receiver.url("/cb"), spec, &[], &[]).await;
    let task = dev.submit(&endpoint, task_args()).await;
    let callback = callback_state(&dev, &task, "DELIVERED").await;
    let first = &callback["attempts"][0];
    assert_eq!(first["error"], "timed out", "{callback}");
    assert_eq!(callback["attempts"][1]["status_code"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_dead_letters_at_once_and_redelivery_brings_it_back() {
    let receiver = Receiver::start().await;
    receiver.answer_first_with(&[StatusCode::GONE]);
    let (_m, dev, endpoint) = start(&receiver.url("/cb"), "", &[], &[]).await;
    let task = dev.submit(&endpoint, task_args()).await;
    let callback = callback_state(&dev, &task, "DEAD_LETTERED").await;
    assert_eq!(callback["attempts"].as_array().unwrap().len(), 1);
    assert!(dev.metrics().await.contains(&format!(
        "ferry_dispatcher_dead_letters_total{{endpoint_id=\"{endpoint}\"}} 1"
    )));

    let (status, body) = dev
        .post(
            &format!("/v1/async-tasks/{task}/callback/redeliver"),
            &json!({}),
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"redelivered": 1})));
    let callback = callback_state(&dev, &task, "DELIVERED").await;
    assert_eq!(callback["attempts"].as_array().unwrap().len(), 2);
    let received = receiver.received();
    assert_eq!(
        received[0].headers["webhook-id"],
        received[1].headers["webhook-id"]
    );
    let (status, _) = dev
        .post(
            &format!("/v1/async-tasks/{task}/callback/redeliver"),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing left to redeliver");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivers_everything_dead_lettered_since_a_time() {
    let receiver = Receiver::start().await;
    receiver.answer_first_with(&[StatusCode::GONE, StatusCode::GONE]);
    let (_m, dev, endpoint) = start(&receiver.url("/cb"), "", &[], &[]).await;
    let tasks = [
        dev.submit(&endpoint, task_args()).await,
        dev.submit(&endpoint, task_args()).await,
    ];
    for task in &tasks {
        callback_state(&dev, task, "DEAD_LETTERED").await;
    }
    let (status, body) = dev
        .post(
            "/v1/callbacks/redeliver?since=2100-01-01T00:00:00Z",
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"redelivered": 0})),
        "none died after 2100"
    );
    let (status, body) = dev
        .post(
            "/v1/callbacks/redeliver?since=2020-01-01T00:00:00Z",
            &json!({}),
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({"redelivered": 2})));
    for task in &tasks {
        callback_state(&dev, task, "DELIVERED").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_survives_a_dispatcher_restart_while_the_receiver_is_down() {
    let nats = Nats::start().await;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/late");
    let manifests = Manifests::with_example_bundle();
    let spec = "  callbacks:\n    retryScheduleSeconds: [3, 3, 3]\n";
    manifests.add(
        "endpoint.yaml",
        &endpoint_yaml("hooks", "test-bundle", &url, spec),
    );
    let mut first = Dev::start(manifests.path(), Some(&nats.url)).await;
    let endpoint = first.ready_endpoint("hooks").await;
    let task = first.submit(&endpoint, task_args()).await;
    eventually("a failed attempt", WAIT, || async {
        let view = first.task(&task).await;
        view["callback"]["attempts"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            .then_some(())
    })
    .await;
    first.process.signal("-TERM");
    first.process.wait_exit(Duration::from_secs(15)).await;

    let receiver = Receiver::start_on(([127, 0, 0, 1], port).into()).await;
    let _second = Dev::start(manifests.path(), Some(&nats.url)).await;
    let callbacks = receiver.wait_for(1, WAIT).await;
    assert_eq!(
        callbacks[0].body,
        json!({"task_id": task, "result": 7, "status": "SUCCESS"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_with_an_independent_implementation() {
    let receiver = Receiver::start().await;
    let spec = "  callbacks:\n    signingSecret: {name: hooks}\n";
    let rotation = format!("{SIGNING_SECRET} whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldY");
    let secret = secret_yaml("hooks", &[("signingSecret", &rotation)]);
    let (_m, dev, endpoint) =
        start(&receiver.url("/cb"), spec, &[("secret.yaml", secret)], &[]).await;
    let task = dev.submit(&endpoint, task_args()).await;
    let callback = receiver.wait_for(1, WAIT).await.remove(0);
    let header = |name: &str| callback.headers[name].to_str().unwrap().to_owned();
    assert_eq!(
        header("webhook-signature").split(' ').count(),
        2,
        "signed with both keys during rotation"
    );
    let verify = |secret: &str, body: &[u8]| {
        let status = std::process::Command::new("python3")
            .args([
                "-c",
                VERIFY_PY,
                secret,
                &header("webhook-id"),
                &header("webhook-timestamp"),
                &header("webhook-signature"),
            ])
            .stdin(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(body)?;
                child.wait()
            })
            .unwrap();
        status.success()
    };
    assert_eq!(header("webhook-id"), task);
    assert!(verify(SIGNING_SECRET, &callback.raw), "signature verifies");
    assert!(
        verify("whsec_QUJDREVGR0hJSktMTU5PUFFSU1RVVldY", &callback.raw),
        "rotated key verifies"
    );
    assert!(
        !verify(SIGNING_SECRET, b"{\"task_id\":\"forged\"}"),
        "a changed body does not verify"
    );
    assert!(
        !verify("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &callback.raw),
        "another key does not verify"
    );
}

/// Standard Webhooks verification with Python's standard library only.
const VERIFY_PY: &str = r#"
import base64, hashlib, hmac, sys
secret, msg_id, timestamp, signatures = sys.argv[1:5]
body = sys.stdin.buffer.read()
key = base64.b64decode(secret.removeprefix("whsec_"))
signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
given = [part.split(",", 1)[1] for part in signatures.split(" ") if part.startswith("v1,")]
sys.exit(0 if any(hmac.compare_digest(expected, g) for g in given) else 1)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_comes_from_the_task_else_the_endpoint_secret() {
    let receiver = Receiver::start().await;
    let spec = "  defaultCallbackAuth: {kind: basic, secretName: receiver-login}\n  callbacks: {allowBasicAuthOverHttp: true}\n";
    let secret = secret_yaml(
        "receiver-login",
        &[("username", "ferry"), ("password", "s3cret")],
    );
    let (_m, dev, endpoint) =
        start(&receiver.url("/cb"), spec, &[("secret.yaml", secret)], &[]).await;
    let default_task = dev.submit(&endpoint, task_args()).await;
    let own = json!({"args": {"x": 3, "y": "hello"}, "callback_auth": {"kind": "basic", "username": "u", "password": "p"}});
    let own_task = dev.submit(&endpoint, own).await;
    let received = receiver.wait_for(2, WAIT).await;
    let auth_of = |task: &str| {
        let callback = received.iter().find(|r| r.body["task_id"] == task).unwrap();
        callback.headers["authorization"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(auth_of(&default_task), "Basic ZmVycnk6czNjcmV0"); // ferry:s3cret
    assert_eq!(auth_of(&own_task), "Basic dTpw"); // u:p
    let view = dev.task(&own_task).await.to_string();
    assert!(
        !view.contains("s3cret") && !view.contains("\"p\""),
        "credentials are never echoed: {view}"
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl.
fn make_certificates(dir: &std::path::Path) {
    let run = |args: &str| {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("openssl {args}"))
            .current_dir(dir)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "openssl {args}");
    };
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    run(&format!(
        "req -x509 {key} -keyout ca.key -out ca.crt -days 1 -subj /CN=test-ca"
    ));
    for (name, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        run(&format!(
            "req {key} -keyout {name}.key -out {name}.csr -subj /CN=ferry-{name}"
        ));
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        run(&format!(
            "x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out {name}.crt -days 1 -extfile {name}.ext"
        ));
    }
}

/// A TLS receiver that demands a client certificate and prints each callback with its client's name.
const TLS_RECEIVER_PY: &str = r#"
import json, ssl, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
directory, port = sys.argv[1], int(sys.argv[2])
class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        subject = dict(pair[0] for pair in self.connection.getpeercert()["subject"])
        print(json.dumps({"client": subject["commonName"], "body": body}), flush=True)
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(f"{directory}/server.crt", f"{directory}/server.key")
context.verify_mode = ssl.CERT_REQUIRED
context.load_verify_locations(f"{directory}/ca.crt")
server = HTTPServer(("127.0.0.1", port), Receiver)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"#;

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// Certificates in a temporary directory and the TLS receiver on a free port, listening: the
/// directory, the port, the process and its output lines (one per callback).
async fn start_tls_receiver() -> (tempfile::TempDir, u16, tokio::process::Child, Lines) {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let port = free_port();
    let mut receiver = tokio::process::Command::new("python3")
        .args([
            "-c",
            TLS_RECEIVER_PY,
            &certs.path().display().to_string(),
            &port.to_string(),
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(receiver.stdout.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
    (certs, port, receiver, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_presents_the_client_certificate_from_the_secret() {
    let (certs, port, _receiver, mut lines) = start_tls_receiver().await;

    let read = |name: &str| std::fs::read_to_string(certs.path().join(name)).unwrap();
    let secret = secret_yaml(
        "client-cert",
        &[
            ("tls.crt", &read("client.crt")),
            ("tls.key", &read("client.key")),
        ],
    );
    let spec = "  defaultCallbackAuth: {kind: mtls, secretName: client-cert}\n  callbacks:\n    retryScheduleSeconds: [1]\n";
    let ca = certs.path().join("ca.crt").display().to_string();
    let url = format!("https://127.0.0.1:{port}/cb");
    let (_m, dev, endpoint) = start(
        &url,
        spec,
        &[("secret.yaml", secret)],
        &["--callback-ca-file", &ca],
    )
    .await;

    let task = dev.submit(&endpoint, task_args()).await;
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let seen: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(seen["client"], "ferry-client");
    assert_eq!(seen["body"]["task_id"], task.as_str());
    callback_state(&dev, &task, "DELIVERED").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_certificate_the_mtls_receiver_refuses() {
    // Listening before the callback goes out: a refusal can only come from the handshake.
    let (certs, port, _receiver, _lines) = start_tls_receiver().await;
    let ca = certs.path().join("ca.crt").display().to_string();
    let url = format!("https://127.0.0.1:{port}/cb");
    let spec = "  callbacks:\n    retryScheduleSeconds: [60]\n";
    let (_m, dev, endpoint) = start(&url, spec, &[], &["--callback-ca-file", &ca]).await;
    let task = dev.submit(&endpoint, task_args()).await;
    let callback = eventually("an attempt", WAIT, || async {
        let view = dev.task(&task).await;
        view["callback"]["attempts"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            .then_some(view["callback"].clone())
    })
    .await;
    assert_eq!(callback["state"], "PENDING");
    assert!(
        callback["attempts"][0]["status_code"].is_null(),
        "{callback}"
    );
    // The receiver ended the TLS handshake for want of a client certificate.
    let error = callback["attempts"][0]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("CertificateRequired"), "{callback}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_callback_urls_are_refused_at_submission() {
    let receiver = Receiver::start().await;
    let flags = [
        "--callback-allow-cidrs",
        "none",
        "--callback-resolve",
        "metadata.test=169.254.169.254,intranet.test=10.1.2.3,public.test=203.0.113.10",
    ];
    // No workers: accepted tasks never run, so nothing is ever sent to public.test.
    let idle = "  minWorkers: 0\n";
    let allowlist =
        format!("{idle}  callbacks:\n    allowedHosts: [public.test, '*.hooks.test']\n");
    let manifests = Manifests::with_example_bundle();
    manifests.add(
        "open.yaml",
        &endpoint_yaml("open", "test-bundle", "http://public.test/cb", idle),
    );
    manifests.add(
        "allowlist.yaml",
        &endpoint_yaml(
            "allowlist",
            "test-bundle",
            "http://public.test/cb",
            &allowlist,
        ),
    );
    manifests.add(
        "loopback.yaml",
        &endpoint_yaml("loopback", "test-bundle", &receiver.url("/cb"), idle),
    );
    let dev = Dev::start_with(manifests.path(), None, &flags).await;
    let submit = |endpoint: String, url: Option<&str>| {
        let body = match url {
            Some(url) => json!({"args": {"x": 1, "y": ""}, "callback_url": url}),
            None => task_args(),
        };
        let dev = &dev;
        async move {
            dev.post(
                &format!("/v1/async-tasks?model_endpoint_id={endpoint}"),
                &body,
            )
            .await
        }
    };
    let open = dev.endpoint_id("open").await;
    for (url, why) in [
        ("http://127.0.0.1:9/cb", "loopback"),
        ("http://[::1]:9/cb", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
        ("http://metadata.test/latest", "cloud metadata"),
        ("http://intranet.test/cb", "private"),
        ("http://[::ffff:10.0.0.1]/cb", "private"),
        ("http://[::127.0.0.1]/", "loopback"),
        ("http://[::ffff:0:127.0.0.1]/", "loopback"),
        ("http://[64:ff9b::169.254.169.254]/cb", "cloud metadata"),
        ("http://[2002:a00:1::1]/cb", "private"),
        ("http://[2001:0:808:808:0:0:80ff:fffe]/cb", "loopback"),
        ("https://user:pw@public.test/cb", "credentials"),
        ("gopher://public.test/cb", "http or https"),
    ] {
        let (status, body) = submit(open.clone(), Some(url)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(why),
            "{url}: {body}"
        );
    }
    let (status, body) = submit(open.clone(), Some("http://public.test/cb")).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let allowlist = dev.endpoint_id("allowlist").await;
    let (status, body) = submit(allowlist.clone(), Some("http://elsewhere.test/cb")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("allowed callback hosts"),
        "{body}"
    );
    let (status, body) = submit(allowlist, None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the default URL is on the allowlist: {body}"
    );

    // The endpoint's own default URL is vetted too.
    let (status, body) = submit(dev.endpoint_id("loopback").await, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("loopback"),
        "{body}"
    );
}

/// Every message published on `nats` from now on, headers and payload, as a process with
/// plain access to the server (a model in a worker pod) could read them.
async fn wiretap(nats: &Nats) -> Arc<Mutex<Vec<u8>>> {
    let client = async_nats::connect(&nats.url).await.expect("connects");
    let mut all = client.subscribe(">").await.expect("subscribes");
    client.flush().await.expect("subscribed");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    tokio::spawn(async move {
        let _client = client;
        while let Some(message) = futures::StreamExt::next(&mut all).await {
            let mut seen = sink.lock().unwrap();
            seen.extend_from_slice(message.subject.as_bytes());
            if let Some(headers) = &message.headers {
                seen.extend_from_slice(format!("{headers:?}").as_bytes());
            }
            seen.extend_from_slice(&message.payload);
        }
    });
    seen
}

/// Every message every stream (so every bucket) on `nats` holds now.
async fn stored_messages(nats: &Nats) -> Vec<u8> {
    let client = async_nats::connect(&nats.url).await.expect("connects");
    let js = async_nats::jetstream::new(client);
    let names: Vec<String> = futures::StreamExt::collect::<Vec<_>>(js.stream_names())
        .await
        .into_iter()
        .map(|name| name.expect("stream name"))
        .collect();
    assert!(
        names.iter().any(|name| name.contains("policies")),
        "{names:?}"
    );
    let mut stored = Vec::new();
    for name in names {
        let mut stream = js.get_stream(&name).await.expect("stream");
        let state = stream.info().await.expect("info").state.clone();
        for sequence in state.first_sequence..=state.last_sequence {
            if let Ok(message) = stream.get_raw_message(sequence).await {
                stored.extend_from_slice(message.subject.as_bytes());
                stored.extend_from_slice(&message.payload);
            }
        }
    }
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_or_signing_secret_crosses_nats_in_clear() {
    const DEFAULT_PASSWORD: &str = "endpoint-pw-4c1d";
    const TASK_PASSWORD: &str = "task-pw-9e07";
    let nats = Nats::start().await;
    let tapped = wiretap(&nats).await;
    let receiver = Receiver::start().await;
    receiver.answer_first_with(&[StatusCode::GONE]);
    let spec = "  defaultCallbackAuth: {kind: basic, secretName: hooks}\n  callbacks:\n    signingSecret: {name: hooks}\n    allowBasicAuthOverHttp: true\n";
    let secret = secret_yaml(
        "hooks",
        &[
            ("signingSecret", SIGNING_SECRET),
            ("username", "endpoint-user"),
            ("password", DEFAULT_PASSWORD),
        ],
    );
    let manifests = Manifests::with_example_bundle();
    let url = receiver.url("/cb");
    manifests.add(
        "endpoint.yaml",
        &endpoint_yaml("hooks", "test-bundle", &url, spec),
    );
    manifests.add("secret.yaml", &secret);
    let dev = Dev::start_with(manifests.path(), Some(&nats.url), &[]).await;
    let endpoint = dev.ready_endpoint("hooks").await;

    // The endpoint's credentials go to a receiver that answers 410: a dead letter is kept.
    let dead = dev.submit(&endpoint, task_args()).await;
    callback_state(&dev, &dead, "DEAD_LETTERED").await;
    let own = json!({"args": {"x": 3, "y": "hello"}, "callback_auth": {"kind": "basic", "username": "task-user", "password": TASK_PASSWORD}});
    let delivered = dev.submit(&endpoint, own).await;
    callback_state(&dev, &delivered, "DELIVERED").await;

    let received = receiver.received();
    let header = |task: &str, name: &str| {
        let callback = received.iter().find(|r| r.body["task_id"] == task).unwrap();
        callback.headers[name].to_str().unwrap().to_owned()
    };
    let basic = |user: &str, password: &str| {
        use base64::Engine;
        let pair = format!("{user}:{password}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    };
    assert_eq!(
        header(&dead, "authorization"),
        basic("endpoint-user", DEFAULT_PASSWORD)
    );
    assert_eq!(
        header(&delivered, "authorization"),
        basic("task-user", TASK_PASSWORD)
    );
    assert!(header(&delivered, "webhook-signature").starts_with("v1,"));

    let seen = tapped.lock().unwrap().clone();
    let stored = stored_messages(&nats).await;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let (seen, stored) = (text(&seen), text(&stored));
    assert!(
        seen.contains(&delivered) && stored.contains(&dead),
        "the tap saw the tasks and the store holds the dead letter"
    );
    let signing_key = SIGNING_SECRET.trim_start_matches("whsec_");
    for secret in [
        DEFAULT_PASSWORD,
        TASK_PASSWORD,
        signing_key,
        "endpoint-user",
        "task-user",
    ] {
        assert!(!seen.contains(secret), "{secret} crossed NATS in clear");
        assert!(
            !stored.contains(secret),
            "{secret} is stored in NATS in clear"
        );
    }
}
