//! The dispatcher's own SSRF check, at delivery: whatever a name led to when the task was
//! submitted, an address the guard forbids is never connected to, and an attempt connects
//! only to the address its one lookup vetted, however the name's answers change. The receiver is real and on
//! loopback, and counts the connections it is offered; the public address in these tests is
//! only ever an answer to vet, never a destination.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::hostile::attempt_with;
use super::*;
use crate::callback::guard::testing;

const NAME: &str = "callbacks.test";
const DEADLINE: Duration = Duration::from_secs(10);

/// A receiver on 127.0.0.1 that answers every request 200 and counts its connections.
async fn counting_receiver() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    (port, serve_counting(listener))
}

/// Two counting receivers on one port: at 127.0.0.2, which the tests' guards allow as they
/// would a public address, and at 127.0.0.1, which stays internal.
async fn allowed_and_internal_receivers() -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    for _ in 0..20 {
        let allowed = TcpListener::bind("127.0.0.2:0").await.expect("bind");
        let port = allowed.local_addr().expect("address").port();
        // The same port may be taken at 127.0.0.1: then another pair.
        if let Ok(internal) = TcpListener::bind(("127.0.0.1", port)).await {
            return (port, serve_counting(allowed), serve_counting(internal));
        }
    }
    panic!("no port free at both addresses")
}

/// Answers every request on `listener` 200 and counts its connections.
fn serve_counting(listener: TcpListener) -> Arc<AtomicUsize> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                let _ = stream.write_all(answer).await;
            });
        }
    });
    accepted
}

/// A guard that resolves [`NAME`] to `answers`, with `allowed` internal ranges open.
fn guard(answers: &[&str], allowed: &[&str]) -> Guard {
    let ips: Vec<IpAddr> = answers.iter().map(|ip| ip.parse().expect("ip")).collect();
    let allowed = allowed
        .iter()
        .map(|net| net.parse().expect("range"))
        .collect();
    Guard::new(allowed, HashMap::from([(NAME.to_owned(), ips)]))
}

#[tokio::test]
async fn a_name_that_leads_inside_by_delivery_time_is_refused_without_a_connection() {
    let (port, accepted) = counting_receiver().await;
    let url = format!("http://{NAME}:{port}/cb");
    // When the task was submitted, the gateway's lookup gave a public address…
    guard(&["93.184.215.14"], &[])
        .vet_url(&url, &[])
        .await
        .expect("vetted at submission");
    // …by delivery the name leads to this machine.
    let (verdict, attempt) = attempt_with(guard(&["127.0.0.1"], &[]), &url, DEADLINE).await;
    assert_eq!(verdict, Verdict::Refused, "{attempt:?}");
    assert!(attempt.status_code.is_none(), "{attempt:?}");
    let error = attempt.error.unwrap_or_default();
    assert!(error.starts_with("refused"), "{error}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "no connection was made");

    // The same receiver with loopback allowed is reached: the guard refused, not the receiver.
    let (verdict, attempt) =
        attempt_with(guard(&["127.0.0.1"], &["127.0.0.0/8"]), &url, DEADLINE).await;
    assert_eq!(verdict, Verdict::Delivered, "{attempt:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn one_internal_answer_among_public_ones_refuses_the_name_at_delivery() {
    let (port, accepted) = counting_receiver().await;
    let url = format!("http://{NAME}:{port}/cb");
    let mixed = guard(&["93.184.215.14", "127.0.0.1"], &[]);
    let (verdict, attempt) = attempt_with(mixed, &url, DEADLINE).await;
    assert_eq!(verdict, Verdict::Refused, "{attempt:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "no connection was made");
}

#[tokio::test]
async fn a_literal_internal_address_is_refused_at_delivery() {
    let (port, accepted) = counting_receiver().await;
    for url in [
        format!("http://127.0.0.1:{port}/cb"),
        format!("http://[::ffff:127.0.0.1]:{port}/cb"),
    ] {
        let (verdict, attempt) = attempt_with(guard(&[], &[]), &url, DEADLINE).await;
        assert_eq!(verdict, Verdict::Refused, "{url}: {attempt:?}");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "no connection was made");
}

#[tokio::test]
async fn an_attempt_connects_only_to_the_address_its_one_lookup_vetted() {
    let (port, allowed, internal) = allowed_and_internal_receivers().await;
    let url = format!("http://{NAME}:{port}/cb");
    // A name server that answers the allowed address, then the internal one from the next
    // query on: a second lookup within the attempt would lead inside.
    let script = Arc::new(testing::Script::new(&[&["127.0.0.2"], &["127.0.0.1"]]));
    let open = vec!["127.0.0.2/32".parse().expect("range")];
    let rebinding = Guard::scripted(open, script.clone());

    let (verdict, attempt) = attempt_with(rebinding.clone(), &url, DEADLINE).await;
    assert_eq!(verdict, Verdict::Delivered, "{attempt:?}");
    assert_eq!(script.queries(), 1, "one lookup for the attempt");
    assert_eq!(allowed.load(Ordering::SeqCst), 1, "the address vetted");
    assert_eq!(internal.load(Ordering::SeqCst), 0);

    // The next attempt's lookup leads inside: refused, nothing connected.
    let (verdict, attempt) = attempt_with(rebinding, &url, DEADLINE).await;
    assert_eq!(verdict, Verdict::Refused, "{attempt:?}");
    assert_eq!(script.queries(), 2);
    assert_eq!(allowed.load(Ordering::SeqCst), 1);
    assert_eq!(internal.load(Ordering::SeqCst), 0, "no connection inside");
}
