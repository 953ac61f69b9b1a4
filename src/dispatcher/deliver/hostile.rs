//! Hostile receivers on 127.0.0.1: an endless body, a slow drip, a huge head. Each attempt must
//! end, and what the receiver managed to push into the dispatcher's socket must stay within the
//! body limit plus the kernel's socket buffers, however much more it had to send.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

use super::*;
use crate::crd::EndpointId;
use crate::task::{CallbackTarget, TaskId, TaskOutcome};

/// hyper's limit on a response head (its read buffer's maximum).
const HEAD_LIMIT: u64 = 8192 + 4096 * 100;
/// The receiver's send buffer, kept small so the count below is mostly what the dispatcher took.
const RECEIVER_SEND_BUFFER: u32 = 16 * 1024;

/// What a hostile receiver does once it has accepted the connection.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Answers 200 and then sends body bytes for as long as the socket takes them.
    EndlessBody,
    /// Answers 200 and then sends one body byte per interval.
    DripBody,
    /// Sends the status line one byte per interval, so the head never completes in time.
    DripHead,
    /// Sends a header line that never ends.
    EndlessHeader,
    /// Sends a thousand short header lines.
    ManyHeaders,
}

/// Starts a receiver that serves one connection as `behaviour` says and reports how many bytes
/// its socket accepted before the dispatcher went away.
async fn hostile_receiver(behaviour: Behaviour) -> (String, tokio::task::JoinHandle<u64>) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .set_send_buffer_size(RECEIVER_SEND_BUFFER)
        .expect("send buffer");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let listener: TcpListener = socket.listen(4).expect("listen");
    let url = format!("http://{}/hook", listener.local_addr().expect("address"));
    let served = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let (mut reader, mut writer) = stream.into_split();
        // Answer only once the request has begun, as a server would.
        let mut head = Vec::new();
        while !head.windows(4).any(|window| window == b"\r\n\r\n") {
            let mut buf = [0u8; 1024];
            match reader.read(&mut buf).await {
                Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                _ => return 0,
            }
        }
        tokio::spawn(async move {
            let mut sink = [0u8; 4096];
            while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        serve(behaviour, &mut writer).await
    });
    (url, served)
}

async fn serve(behaviour: Behaviour, writer: &mut tokio::net::tcp::OwnedWriteHalf) -> u64 {
    const OK_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n";
    let mut sent = 0u64;
    let (prefix, filler, drip): (&[u8], &[u8], bool) = match behaviour {
        Behaviour::EndlessBody => (OK_HEAD, &[b'x'; 65536], false),
        Behaviour::DripBody => (OK_HEAD, b"x", true),
        Behaviour::DripHead => (b"", b"HTTP/1.1 200 OK\r\n", true),
        Behaviour::EndlessHeader => (b"HTTP/1.1 200 OK\r\nx-huge: ", &[b'a'; 65536], false),
        Behaviour::ManyHeaders => {
            let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
            for line in 0..1000 {
                head.extend_from_slice(format!("x-h{line}: v\r\n").as_bytes());
            }
            head.extend_from_slice(b"content-length: 0\r\n\r\n");
            if writer.write_all(&head).await.is_ok() {
                sent += head.len() as u64;
            }
            // Hold the connection until the dispatcher drops it.
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if writer.write_all(b"\r\n").await.is_err() {
                    return sent;
                }
                sent += 2;
            }
        }
    };
    if writer.write_all(prefix).await.is_err() {
        return sent;
    }
    sent += prefix.len() as u64;
    let mut drip_at = 0;
    loop {
        let piece = if drip {
            let byte = &filler[drip_at % filler.len()..][..1];
            drip_at += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            byte
        } else {
            filler
        };
        match writer.write(piece).await {
            Ok(0) | Err(_) => return sent,
            Ok(n) => sent += n as u64,
        }
    }
}

/// The most the kernel can hold between the two ends: the dispatcher's receive buffer and the
/// receiver's send buffer at their largest.
fn socket_buffers() -> u64 {
    let largest = |path: &str| -> u64 {
        std::fs::read_to_string(path)
            .expect("sysctl")
            .split_whitespace()
            .last()
            .and_then(|value| value.parse().ok())
            .expect("a number")
    };
    largest("/proc/sys/net/ipv4/tcp_rmem") + largest("/proc/sys/net/ipv4/tcp_wmem")
}

async fn attempt_against(url: &str, total: Duration) -> (Verdict, DeliveryAttempt) {
    let loopback = "127.0.0.0/8".parse().expect("range");
    attempt_with(Guard::new(vec![loopback], HashMap::new()), url, total).await
}

/// One delivery attempt of a job to `url` by a dispatcher with `guard`.
pub(super) async fn attempt_with(
    guard: Guard,
    url: &str,
    total: Duration,
) -> (Verdict, DeliveryAttempt) {
    // main installs the provider in the binary; a test installs it itself.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let clients = Clients::new(guard, Vec::new());
    let timeouts = Timeouts {
        connect: Duration::from_secs(5),
        total,
    };
    // As the dispatcher does: one lookup, before the attempt.
    let destination = resolve_destination(clients.guard(), url).await;
    let endpoint_id = EndpointId::for_resource("tenant", "hostile");
    let task_id = TaskId::generate(&endpoint_id);
    let target = CallbackTarget {
        url: url.to_owned(),
        auth: None,
    };
    let ring = crate::seal::KeyRing::generate();
    let job = CallbackJob {
        target: target
            .seal_for(&ring, &endpoint_id, &task_id)
            .expect("seals"),
        task_id,
        endpoint_id,
        outcome: TaskOutcome::Success {
            result: serde_json::json!(7),
        },
        submitted_at_ms: 0,
        prior_attempts: 0,
        redeliveries: 0,
    };
    let request = Request {
        clients: &clients,
        url,
        destination: &destination,
        keys: &[],
        auth: None,
        allowed_hosts: &[],
        timeouts,
    };
    deliver_callback(request, &job).await
}

/// Long enough that only the body limit, not the deadline, can end an endless stream.
const LONG_DEADLINE: Duration = Duration::from_secs(300);
/// Short enough that a drip ends by the deadline.
const SHORT_DEADLINE: Duration = Duration::from_millis(500);

#[tokio::test]
async fn an_endless_body_is_read_no_further_than_the_limit() {
    let (url, served) = hostile_receiver(Behaviour::EndlessBody).await;
    let (verdict, attempt) = attempt_against(&url, LONG_DEADLINE).await;
    assert_eq!(verdict, Verdict::Delivered, "{attempt:?}");
    assert_eq!(attempt.status_code, Some(200));
    let note = attempt.error.expect("a note on the cut body");
    assert!(note.contains("not read further"), "{note}");
    let accepted = served.await.expect("receiver");
    let bound = RESPONSE_BODY_LIMIT as u64 + HEAD_LIMIT + socket_buffers();
    assert!(
        accepted > RESPONSE_BODY_LIMIT as u64,
        "the receiver pushed {accepted} bytes"
    );
    assert!(
        accepted <= bound,
        "the receiver pushed {accepted} bytes, more than the limit plus socket buffers ({bound})"
    );
}

#[tokio::test]
async fn a_dripping_body_ends_at_the_deadline_with_the_status_it_had() {
    let (url, served) = hostile_receiver(Behaviour::DripBody).await;
    let (verdict, attempt) = attempt_against(&url, SHORT_DEADLINE).await;
    assert_eq!(verdict, Verdict::Delivered, "{attempt:?}");
    assert_eq!(attempt.status_code, Some(200));
    let note = attempt.error.expect("a note on the unfinished body");
    assert!(note.contains("unfinished at the deadline"), "{note}");
    // The receiver's next drip fails: the dispatcher closed the connection.
    served.await.expect("receiver");
}

#[tokio::test]
async fn a_dripping_head_times_the_attempt_out() {
    let (url, served) = hostile_receiver(Behaviour::DripHead).await;
    let (verdict, attempt) = attempt_against(&url, SHORT_DEADLINE).await;
    assert_eq!(verdict, Verdict::Transient { retry_after: None });
    assert_eq!(attempt.status_code, None);
    assert_eq!(attempt.error.as_deref(), Some("timed out"));
    served.await.expect("receiver");
}

#[tokio::test]
async fn an_endless_header_fails_the_attempt_within_the_head_limit() {
    let (url, served) = hostile_receiver(Behaviour::EndlessHeader).await;
    let (verdict, attempt) = attempt_against(&url, LONG_DEADLINE).await;
    assert_eq!(verdict, Verdict::Transient { retry_after: None });
    assert_eq!(attempt.status_code, None);
    let error = attempt.error.expect("an error");
    assert_ne!(error, "timed out");
    let accepted = served.await.expect("receiver");
    let bound = HEAD_LIMIT + socket_buffers();
    assert!(
        accepted <= bound,
        "the receiver pushed {accepted} bytes of head, more than the head limit plus socket buffers ({bound})"
    );
}

#[tokio::test]
async fn too_many_header_lines_fail_the_attempt() {
    let (url, served) = hostile_receiver(Behaviour::ManyHeaders).await;
    let (verdict, attempt) = attempt_against(&url, LONG_DEADLINE).await;
    assert_eq!(verdict, Verdict::Transient { retry_after: None });
    assert_eq!(attempt.status_code, None);
    assert_ne!(attempt.error.as_deref(), Some("timed out"));
    served.await.expect("receiver");
}
