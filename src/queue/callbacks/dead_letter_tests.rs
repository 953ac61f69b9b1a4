//! Dead letters are kept and listed per endpoint.

use super::*;
use crate::task::{CallbackTarget, TaskOutcome};

fn letter(endpoint: &EndpointId) -> DeadLetter {
    let task_id = TaskId::generate(endpoint);
    let target = CallbackTarget {
        url: "http://127.0.0.1:9/".into(),
        auth: None,
    };
    let ring = crate::seal::KeyRing::generate();
    DeadLetter {
        job: CallbackJob {
            target: target.seal_for(&ring, endpoint, &task_id).expect("seals"),
            task_id,
            endpoint_id: endpoint.clone(),
            outcome: TaskOutcome::Success {
                result: serde_json::json!(1),
            },
            submitted_at_ms: 0,
            prior_attempts: 3,
            redeliveries: 0,
        },
        dead_at_ms: 1,
        reason: "receiver answered 500".into(),
    }
}

#[tokio::test]
async fn listing_an_endpoints_dead_letters_reads_no_other_endpoints() {
    let (_nats, queue) = crate::queue::testing::start_with_queue().await;
    let ours = EndpointId::for_resource("team-a", "ours");
    let theirs = EndpointId::for_resource("team-b", "theirs");
    let (kept, removed) = (letter(&ours), letter(&ours));
    for letter in [&kept, &removed, &letter(&theirs)] {
        queue.put_dead_letter(letter).await.expect("put");
    }
    queue
        .remove_dead_letter(&ours, &removed.job.task_id)
        .await
        .expect("remove");
    // An entry of the other endpoint that cannot be decoded: reading it fails a listing.
    let unreadable = names::dead_letter_key(&theirs, &TaskId::generate(&theirs));
    let bucket = queue.dead_letters_bucket().expect("bucket");
    bucket
        .put(unreadable.as_str(), "not a letter".into())
        .await
        .expect("put");

    let listed = queue
        .dead_letters(Some(std::slice::from_ref(&ours)))
        .await
        .expect("list");
    assert_eq!(listed, vec![kept.clone()]);
    assert!(
        queue.dead_letters(None).await.is_err(),
        "a listing of every endpoint reads the unreadable entry"
    );
    assert_eq!(queue.dead_letters(Some(&[])).await.expect("list"), vec![]);
    let found = queue
        .dead_letter(&ours, &kept.job.task_id)
        .await
        .expect("get");
    assert_eq!(found, Some(kept.clone()));
    let elsewhere = queue
        .dead_letter(&theirs, &kept.job.task_id)
        .await
        .expect("get");
    assert_eq!(
        elsewhere, None,
        "a letter is found only under its own endpoint"
    );
}
