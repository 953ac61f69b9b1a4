//! Real sockets against a real listener: deadlines close what they should and nothing else,
//! and the connection cap holds without starving a real client. Outcomes are asserted (a
//! socket reads end-of-stream, a request is answered); the waits around them only bound a hang.

use std::time::Duration;

use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::*;

/// Long enough never to decide a test; only stops a broken one from hanging.
const HANG: Duration = Duration::from_secs(20);
const LONG: Duration = Duration::from_secs(600);
const SHORT: Duration = Duration::from_millis(200);

struct Server {
    addr: std::net::SocketAddr,
    cancel: CancellationToken,
    served: JoinHandle<std::io::Result<()>>,
    /// Told when `/slow` starts answering.
    slow_started: Arc<Notify>,
}

async fn start(limits: Limits) -> Server {
    let slow_started = Arc::new(Notify::new());
    let started = slow_started.clone();
    let router = Router::new().route("/", get(|| async { "ok" })).route(
        "/slow",
        get(move || async move {
            started.notify_one();
            tokio::time::sleep(Duration::from_millis(500)).await;
            "ok"
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cancel = CancellationToken::new();
    let served = tokio::spawn(serve(listener, router, limits, cancel.clone()));
    Server {
        addr,
        cancel,
        served,
        slow_started,
    }
}

fn limits(header_timeout: Duration, idle_timeout: Duration, max_connections: usize) -> Limits {
    Limits {
        header_timeout,
        idle_timeout,
        max_connections,
    }
}

/// Sends one keep-alive request on `stream` and reads its answer.
async fn get_on(stream: &mut TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("sent");
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answer.ends_with(b"\r\n\r\nok") {
        let read = tokio::time::timeout(HANG, stream.read(&mut chunk))
            .await
            .expect("answered before the hang bound")
            .expect("read");
        assert!(read > 0, "closed before answering: {answer:?}");
        answer.extend_from_slice(&chunk[..read]);
    }
    String::from_utf8(answer).expect("text")
}

/// True once the server has closed `stream` (end of stream or reset).
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut chunk = [0u8; 64];
    match tokio::time::timeout(HANG, stream.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test]
async fn a_connection_that_sends_half_a_header_is_closed() {
    let server = start(limits(SHORT, LONG, 8)).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n")
        .await
        .expect("half a header");
    assert!(closed_by_server(&mut stream).await);
    let mut silent = TcpStream::connect(server.addr).await.expect("connect");
    assert!(
        closed_by_server(&mut silent).await,
        "a connection that sends nothing is closed as well"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_time() {
    // The header timeout is far beyond the hang bound: only the idle time can close it.
    let server = start(limits(LONG, SHORT, 8)).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let answer = get_on(&mut stream, "/").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed_by_server(&mut stream).await);
}

#[tokio::test]
async fn requests_being_answered_and_keep_alive_reuse_are_not_cut_off() {
    let server = start(limits(SHORT, SHORT, 8)).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    for _ in 0..3 {
        // Each answer takes longer than both deadlines.
        let answer = get_on(&mut stream, "/slow").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}

#[tokio::test]
async fn idle_sockets_beyond_the_cap_wait_and_a_real_client_is_served_once_slots_free() {
    let server = start(limits(SHORT, LONG, 8)).await;
    let mut idle = Vec::new();
    for _ in 0..64 {
        idle.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    let mut client = TcpStream::connect(server.addr).await.expect("connect");
    let answer = get_on(&mut client, "/").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    for stream in &mut idle {
        assert!(
            closed_by_server(stream).await,
            "every idle socket is closed"
        );
    }
}

#[tokio::test]
async fn the_cap_holds_until_a_connection_ends() {
    // Nothing times out here: the eight held connections keep every slot.
    let server = start(limits(LONG, LONG, 8)).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        get_on(&mut stream, "/").await;
        held.push(stream);
    }
    let mut waiting = TcpStream::connect(server.addr).await.expect("connect");
    let request = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";
    waiting.write_all(request).await.expect("sent");
    let mut chunk = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(300), waiting.read(&mut chunk)).await;
    assert!(
        early.is_err(),
        "a ninth connection is not served: {early:?}"
    );
    drop(held.pop());
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\nok") {
        let read = tokio::time::timeout(HANG, waiting.read(&mut chunk))
            .await
            .expect("answered once a slot is free")
            .expect("read");
        assert!(read > 0, "closed: {answer:?}");
        answer.extend_from_slice(&chunk[..read]);
    }
}

#[tokio::test]
async fn cancel_lets_the_request_under_way_finish_and_stops_serving() {
    let server = start(limits(LONG, LONG, 8)).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("sent");
    server.slow_started.notified().await;
    server.cancel.cancel();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let answer = String::from_utf8(answer).expect("text");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let served = tokio::time::timeout(HANG, server.served).await;
    assert!(matches!(served, Ok(Ok(Ok(())))), "{served:?}");
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn a_handover_keeps_serving_asks_every_client_to_close_then_stops() {
    let router = Router::new().route("/", get(|| async { "ok" }));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let cancel = CancellationToken::new();
    // Long enough for the steps below; the test waits it out at the end.
    let handover = Handover {
        delay: Duration::from_secs(3),
        grace: None,
    };
    let limits = limits(LONG, LONG, 8);
    let served = tokio::spawn(serve_handing_over(
        listener,
        router,
        limits,
        handover,
        cancel.clone(),
    ));
    let mut kept = TcpStream::connect(addr).await.expect("connect");
    let before = get_on(&mut kept, "/").await;
    assert!(
        !before.to_lowercase().contains("connection: close"),
        "{before}"
    );

    cancel.cancel();
    let on_kept = get_on(&mut kept, "/").await;
    assert!(
        on_kept.to_lowercase().contains("connection: close"),
        "{on_kept}"
    );
    assert!(closed_by_server(&mut kept).await, "closed after its answer");
    let mut fresh = TcpStream::connect(addr).await.expect("still accepting");
    let on_fresh = get_on(&mut fresh, "/").await;
    assert!(on_fresh.starts_with("HTTP/1.1 200"), "{on_fresh}");
    assert!(
        on_fresh.to_lowercase().contains("connection: close"),
        "{on_fresh}"
    );

    let served = tokio::time::timeout(HANG, served).await;
    assert!(matches!(served, Ok(Ok(Ok(())))), "{served:?}");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}
