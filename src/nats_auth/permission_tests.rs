//! Each role's user on a real nats-server with the generated authorization: the role does its
//! work; a forwarder's credentials reach nothing beyond a forwarder's work.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::crd::EndpointId;
use crate::nats_auth::{AuthSet, ForwarderIssuer, write_private};
use crate::queue::testing::{TestServer as NatsServer, start_with_config};
use crate::queue::{
    AttemptCounts, AttemptOutcome, CallbackDelivery, Connection, Credentials, Error,
    ForwarderQueue, Held, OperatorQueue, OutcomeTally, Queue, QueueSettings, QueueSpec,
    TaskDelivery, WorkerPresence, consume,
};
use crate::queue::{LetterQuery, Role, TaskQuery, forwarder_inbox_prefix, names};
use crate::task::{
    CallbackJob, CallbackPolicy, CallbackTarget, TaskId, TaskMessage, TaskOutcome, TaskRecord,
    TaskStatus,
};

struct Deployment {
    nats: NatsServer,
    creds: tempfile::TempDir,
    issuer: ForwarderIssuer,
}

impl Deployment {
    async fn start() -> Deployment {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let auth = AuthSet::generate();
        let nats = start_with_config(&auth.server_config().expect("config")).await;
        let creds = tempfile::tempdir().expect("temp dir");
        for role in Role::ISSUED {
            let text = auth.role_creds(role).expect("creds");
            write_private(&creds.path().join(format!("{}.creds", role.name())), &text)
                .expect("write creds");
        }
        Deployment {
            nats,
            creds,
            issuer: auth.forwarder_issuer(),
        }
    }

    /// Credentials of the forwarder of `endpoint` alone, expiring at `expires`.
    fn forwarder_creds_of(&self, endpoint: &EndpointId, expires: jiff::Timestamp) -> PathBuf {
        let path = self
            .creds
            .path()
            .join(format!("forwarder-{endpoint}.creds"));
        let text = self
            .issuer
            .forwarder_creds(endpoint, expires)
            .expect("issued");
        write_private(&path, &text).expect("write creds");
        path
    }

    /// The queue of the forwarder of `endpoint`, connected with a day's credentials of its
    /// own, and the credentials file.
    async fn forwarder_of(&self, endpoint: &EndpointId) -> (ForwarderQueue, PathBuf) {
        let in_a_day = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
        let creds = self.forwarder_creds_of(endpoint, in_a_day);
        let connection = Connection::open(self.nats.connection.url())
            .expect("URL")
            .with_credentials(Credentials::CredsFile(creds.clone()))
            .for_forwarder_of(endpoint);
        let queue = Queue::connect(&connection, QueueSettings::default(), Duration::ZERO)
            .await
            .expect("its own credentials connect");
        (queue.forwarder(endpoint), creds)
    }

    fn creds(&self, role: Role) -> PathBuf {
        self.creds.path().join(format!("{}.creds", role.name()))
    }

    fn connection(&self, role: Role) -> Connection {
        Connection::open(self.nats.connection.url())
            .expect("URL")
            .with_credentials(Credentials::CredsFile(self.creds(role)))
            .for_role(role)
    }

    /// Two prepared endpoints, `mine` and `theirs`, with the operator's queue.
    async fn two_endpoints(&self) -> (EndpointId, EndpointId, OperatorQueue) {
        let (mine, theirs) = (
            EndpointId::for_resource("ml", "mine"),
            EndpointId::for_resource("ml", "theirs"),
        );
        let (operator, _) = self.endpoint_with_secrets(&mine).await;
        self.endpoint_with_secrets(&theirs).await;
        (mine, theirs, operator)
    }

    /// The operator's queue after it prepared `endpoint` with a signing secret in its policy.
    async fn endpoint_with_secrets(
        &self,
        endpoint: &EndpointId,
    ) -> (OperatorQueue, CallbackPolicy) {
        let operator = self.queue(Role::Operator).await.operator();
        let secrets = crate::task::CallbackSecrets {
            signing_secrets: vec!["whsec_c2VjcmV0".into()],
            default_auth: None,
        };
        let ring = crate::seal::KeyRing::generate();
        let context = crate::seal::Context::callback_secrets(endpoint);
        let policy = CallbackPolicy {
            secrets: Some(crate::seal::Sealed::seal(&ring, &secrets, &context).expect("seals")),
            ..Default::default()
        };
        operator
            .prepare_endpoint(endpoint, &policy, Some(&queue_spec(endpoint)))
            .await
            .expect("queue and policy");
        (operator, policy)
    }

    async fn queue(&self, role: Role) -> Queue {
        Queue::connect(
            &self.connection(role),
            QueueSettings::default(),
            Duration::ZERO,
        )
        .await
        .unwrap_or_else(|error| panic!("{role:?} connects: {error:?}"))
    }
}

fn queue_spec(endpoint: &EndpointId) -> QueueSpec {
    QueueSpec {
        endpoint_id: endpoint.clone(),
        task_expiry: Duration::from_secs(600),
        ack_wait: Duration::from_secs(30),
    }
}

fn task(endpoint: &EndpointId) -> TaskMessage {
    TaskMessage {
        task_id: TaskId::generate(endpoint),
        endpoint_id: endpoint.clone(),
        args: serde_json::json!({"x": 1}),
        input_url: None,
        callback: None,
        submitted_at_ms: 0,
        record_revision: None,
    }
}

/// The callback job a forwarder queues for `task`'s success.
fn callback_job(task: &TaskMessage) -> CallbackJob {
    let target = CallbackTarget {
        url: "http://127.0.0.1:9/".into(),
        auth: None,
    };
    let ring = crate::seal::KeyRing::generate();
    CallbackJob {
        task_id: task.task_id.clone(),
        endpoint_id: task.endpoint_id.clone(),
        target: target
            .seal_for(&ring, &task.endpoint_id, &task.task_id)
            .expect("seals"),
        outcome: TaskOutcome::Success {
            result: serde_json::json!(2),
        },
        submitted_at_ms: 0,
        prior_attempts: 0,
        redeliveries: 0,
    }
}

/// Runs `handle` on the first message of `puller` and returns what it gave back.
async fn first<H, T>(
    puller: crate::queue::Puller<H>,
    handle: impl Fn(H) -> tokio::task::JoinHandle<T> + Send + 'static,
) -> T
where
    H: crate::queue::Held + Sync + Send + 'static,
    T: Send + 'static,
{
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let consuming = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            consume(puller, 1, &cancel, move |held: H| {
                let (sender, work) = (sender.clone(), handle(held));
                async move {
                    let _ = sender.send(work.await.expect("handler"));
                }
            })
            .await
        })
    };
    let outcome = received.recv().await.expect("a message");
    cancel.cancel();
    consuming.await.expect("consumer stops");
    outcome
}

#[tokio::test]
async fn every_role_does_its_work_with_its_own_credentials_and_none_without() {
    let deployment = Deployment::start().await;
    let anonymous = Connection::open(deployment.nats.connection.url()).expect("URL");
    let refused = Queue::connect(&anonymous, QueueSettings::default(), Duration::ZERO).await;
    assert!(
        matches!(refused, Err(Error::Connect { .. })),
        "no credentials, no connection"
    );

    let endpoint = EndpointId::for_resource("ml", "mine");
    let (_operator, policy) = deployment.endpoint_with_secrets(&endpoint).await;

    let gateway = deployment.queue(Role::Gateway).await.gateway();
    let submitted = gateway
        .submit(&task(&endpoint), None)
        .await
        .expect("submitted");
    // Listing and cancelling with the gateway's credentials: the index is appended at
    // submission and read back by sequence.
    let doomed = gateway
        .submit(&task(&endpoint), None)
        .await
        .expect("submitted");
    let (cancelled, by_this_call) = gateway
        .cancel_task(&doomed.task_id)
        .await
        .expect("cancelled")
        .expect("a record");
    assert!(by_this_call && cancelled.status == TaskStatus::Cancelled);
    gateway.unqueue(&doomed.task_id).await.expect("unqueued");
    let backlog = gateway.backlog(&endpoint).await.expect("backlog read");
    assert_eq!(
        backlog.queued, 1,
        "the cancelled task is taken out of the queue"
    );
    let everything = TaskQuery {
        limit: 10,
        ..Default::default()
    };
    let listed = gateway
        .task_page(&endpoint, &everything)
        .await
        .expect("listed");
    let listed: Vec<_> = listed.tasks.into_iter().map(|task| task.task_id).collect();
    assert_eq!(listed, [doomed.task_id.clone(), submitted.task_id.clone()]);
    let letters = LetterQuery {
        limit: 10,
        ..Default::default()
    };
    let letters = gateway.dead_letter_page(&endpoint, &letters).await;
    assert_eq!(letters.expect("dead letters listed").letters, []);
    let first_served = gateway
        .first_served(std::slice::from_ref(&endpoint))
        .await
        .expect("first served recorded");
    let again = gateway.first_served(std::slice::from_ref(&endpoint)).await;
    assert_eq!(again.expect("read back"), first_served);

    let forwarder = deployment.queue(Role::Forwarder).await.forwarder(&endpoint);
    let tasks = forwarder.tasks().await.expect("puller");
    let worker = forwarder.clone();
    let ran = first(tasks, move |delivery: TaskDelivery| {
        let queue = worker.clone();
        tokio::spawn(async move {
            let task = delivery.task().await.expect("decodes");
            let done = TaskRecord {
                status: TaskStatus::Success,
                result: Some(serde_json::json!(2)),
                ..TaskRecord::pending(task.endpoint_id.clone())
            };
            queue
                .advance_task_record(&task.task_id, &done, None)
                .await
                .expect("recorded");
            let job = callback_job(&task);
            queue.publish_callback(&job).await.expect("callback queued");
            delivery.ack().await.expect("acked");
            task.task_id
        })
    })
    .await;
    assert_eq!(ran, submitted.task_id);
    let record = gateway
        .task_record(&ran)
        .await
        .expect("read")
        .expect("record");
    assert_eq!(record.status, TaskStatus::Success);

    let dispatcher = deployment.queue(Role::Dispatcher).await.dispatcher();
    assert_eq!(
        dispatcher
            .callback_policy(&endpoint)
            .await
            .expect("policy read"),
        Some(policy)
    );
    let jobs = dispatcher.callback_jobs().await.expect("puller");
    let job = first(jobs, |delivery: CallbackDelivery| {
        tokio::spawn(async move {
            delivery.ack().await.expect("acked");
            delivery.job().await.expect("decodes")
        })
    })
    .await;
    assert_eq!(job.task_id, ran);
    dispatcher
        .update_callback_state(&ran, true, |state| Some(state.unwrap_or_default()))
        .await
        .expect("callback state written");

    // The dispatcher's attempt counts reach the gateway's figures (a count is not waited for).
    let counts = AttemptCounts::default();
    counts.add(&endpoint, AttemptOutcome::Delivered);
    dispatcher.publish_attempt_counts(&counts).await;
    let mut tally = OutcomeTally::default();
    for _ in 0..500 {
        tally = gateway.attempt_tally(&endpoint).await.expect("tally read");
        if tally.delivered == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        tally.delivered, 1,
        "the dispatcher counted, the gateway read"
    );
}

/// A raw client holding a forwarder's credentials, reporting the server's refusals.
struct Intruder {
    client: async_nats::Client,
    refusals: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Intruder {
    async fn connect(url: &str, creds: &Path, inbox_prefix: &str) -> Intruder {
        let (sender, refusals) = tokio::sync::mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::with_credentials_file(creds)
            .await
            .expect("creds")
            .custom_inbox_prefix(inbox_prefix)
            .event_callback(move |event| {
                let sender = sender.clone();
                async move {
                    if let async_nats::Event::ServerError(error) = event {
                        let _ = sender.send(error.to_string());
                    }
                }
            })
            .connect(url)
            .await
            .expect("a forwarder's credentials connect");
        Intruder { client, refusals }
    }

    /// Waits for the server to refuse `subject` (refusals of other subjects are skipped).
    async fn refused(&mut self, subject: &str) {
        while let Some(refusal) = self.refusals.recv().await {
            let refusal = refusal.to_lowercase();
            if refusal.contains("permissions violation")
                && refusal.contains(&subject.to_lowercase())
            {
                return;
            }
        }
        panic!("the connection closed before {subject} was refused");
    }

    async fn publish(&mut self, subject: &str) {
        self.client
            .publish(subject.to_owned(), "{}".into())
            .await
            .expect("sent");
        self.client.flush().await.expect("flushed");
        self.refused(subject).await;
    }

    async fn subscribe(&mut self, subject: &str) {
        let _subscription = self
            .client
            .subscribe(subject.to_owned())
            .await
            .expect("sent");
        self.client.flush().await.expect("flushed");
        self.refused(subject).await;
    }
}

#[tokio::test]
async fn forwarder_credentials_reach_no_secret_no_stream_admin_and_no_other_reply() {
    let deployment = Deployment::start().await;
    let endpoint = EndpointId::for_resource("ml", "victim");
    let (operator, policy) = deployment.endpoint_with_secrets(&endpoint).await;
    let url = deployment.nats.connection.url();
    let mut intruder = Intruder::connect(
        url,
        &deployment.creds(Role::Forwarder),
        &Role::Forwarder.inbox_prefix(),
    )
    .await;
    let policies = format!("KV_{}", names::POLICIES_BUCKET);
    let tasks = names::tasks_stream(&endpoint);
    for subject in [
        // Signing secrets and callback credentials.
        format!(
            "$JS.API.DIRECT.GET.{policies}.$KV.{}.{endpoint}",
            names::POLICIES_BUCKET
        ),
        format!("$JS.API.STREAM.MSG.GET.{policies}"),
        format!("$JS.API.CONSUMER.CREATE.{policies}.spy"),
        format!("$KV.{}.{endpoint}", names::POLICIES_BUCKET),
        // Dead letters and callback states.
        format!("$JS.API.DIRECT.GET.KV_{}.>", names::DEAD_LETTERS_BUCKET),
        format!("$KV.ferry-results.callback.{}", TaskId::generate(&endpoint)),
        // Stream administration and reading messages past the consumer.
        format!("$JS.API.STREAM.DELETE.{tasks}"),
        format!("$JS.API.STREAM.UPDATE.{tasks}"),
        format!("$JS.API.STREAM.PURGE.{tasks}"),
        format!("$JS.API.STREAM.MSG.GET.{tasks}"),
        format!("$JS.API.CONSUMER.CREATE.{tasks}.spy"),
        format!("$JS.API.CONSUMER.DELETE.{tasks}.workers"),
        // The dispatcher's queue and scheduled retries.
        format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.dispatcher",
            names::CALLBACKS_STREAM
        ),
        format!("ferry.retry.{}", TaskId::generate(&endpoint)),
        // Forging the callback figures.
        names::callback_outcome_subject(&endpoint.to_string(), "delivered", 1, "forged"),
        // Submitting tasks.
        names::task_subject(&TaskId::generate(&endpoint)),
        names::shared_tasks_subject(&endpoint),
    ] {
        intruder.publish(&subject).await;
    }
    for subject in [
        "_INBOX.>",
        "_INBOX.dispatcher.>",
        "_INBOX.gateway.>",
        ">",
        "ferry.tasks.>",
    ] {
        intruder.subscribe(subject).await;
    }
    let dispatcher = deployment.queue(Role::Dispatcher).await.dispatcher();
    assert_eq!(
        dispatcher.callback_policy(&endpoint).await.expect("read"),
        Some(policy),
        "the policy stands"
    );
    operator.backlog(&endpoint).await.expect("the queue stands");
}

#[tokio::test]
async fn an_endpoints_forwarder_credentials_reach_only_that_endpoint_and_expire() {
    let deployment = Deployment::start().await;
    let url = deployment.nats.connection.url();
    let (mine, theirs, operator) = deployment.two_endpoints().await;
    let gateway = deployment.queue(Role::Gateway).await.gateway();
    for endpoint in [&mine, &theirs] {
        gateway
            .submit(&task(endpoint), None)
            .await
            .expect("submitted");
    }
    let (forwarder, creds) = deployment.forwarder_of(&mine).await;

    // It announces itself to gateways.
    let mut presences = Box::pin(gateway.worker_presences().await.expect("subscribed"));
    let presence = WorkerPresence {
        endpoint: mine.clone(),
        worker: "w-1".into(),
        ready: true,
        serving_url: Some("http://127.0.0.1:1".into()),
        leaving: false,
    };
    let heard = async {
        loop {
            // Announced again until heard, as a worker does: the gateway's subscription may
            // reach the server after the first announcement.
            forwarder.announce(&presence).await.expect("announced");
            tokio::select! {
                heard = presences.next() => return heard,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    };
    let heard = tokio::time::timeout(Duration::from_secs(10), heard).await;
    assert_eq!(heard.expect("heard in time"), Some(presence));

    // Its own endpoint's work: pull, record, queue the callback, acknowledge.
    let worker = forwarder.clone();
    let ran = first(
        forwarder.tasks().await.expect("puller"),
        move |delivery: TaskDelivery| {
            let queue = worker.clone();
            tokio::spawn(async move {
                let task = delivery.task().await.expect("decodes");
                let job = callback_job(&task);
                queue.publish_callback(&job).await.expect("callback queued");
                delivery.ack().await.expect("acked");
                task.endpoint_id
            })
        },
    )
    .await;
    assert_eq!(ran, mine);

    // Another endpoint's tasks, callback jobs and replies are refused.
    let mut intruder = Intruder::connect(url, &creds, &forwarder_inbox_prefix(&mine)).await;
    let their_tasks = names::tasks_stream(&theirs);
    for subject in [
        format!("$JS.API.CONSUMER.MSG.NEXT.{their_tasks}.workers"),
        format!("$JS.API.CONSUMER.INFO.{their_tasks}.workers"),
        format!("$JS.ACK.{their_tasks}.workers.1.1.1.0.0"),
        names::callbacks_subject(&theirs),
        "ferry.callbacks.>".to_owned(),
        names::workers_subject(&theirs),
    ] {
        intruder.publish(&subject).await;
    }
    for subject in [
        format!("{}.>", forwarder_inbox_prefix(&theirs)),
        "_INBOX.forwarder.>".to_owned(),
    ] {
        intruder.subscribe(&subject).await;
    }
    assert_eq!(
        operator.backlog(&theirs).await.expect("backlog").queued,
        1,
        "their task is still waiting"
    );

    // Expired credentials are refused at the door.
    let an_hour_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    let expired = Connection::open(url)
        .expect("URL")
        .with_credentials(Credentials::CredsFile(
            deployment.forwarder_creds_of(&theirs, an_hour_ago),
        ))
        .for_forwarder_of(&theirs);
    assert!(matches!(
        Queue::connect(&expired, QueueSettings::default(), Duration::ZERO).await,
        Err(Error::Connect { .. })
    ));
}

#[tokio::test]
async fn an_endpoints_forwarder_reads_and_writes_only_that_endpoints_task_records() {
    let deployment = Deployment::start().await;
    let url = deployment.nats.connection.url();
    let (mine, theirs, _) = deployment.two_endpoints().await;
    let gateway = deployment.queue(Role::Gateway).await.gateway();
    let submit = |endpoint: &EndpointId, idempotency_key| {
        let (gateway, task) = (gateway.clone(), task(endpoint));
        async move {
            let submitted = gateway.submit(&task, idempotency_key).await;
            submitted.expect("submitted").task_id
        }
    };
    let (my_task, their_task) = (
        submit(&mine, Some("mine-once")).await,
        submit(&theirs, None).await,
    );
    gateway
        .update_callback_state(&my_task, true, |state| Some(state.unwrap_or_default()))
        .await
        .expect("callback state written");
    let (forwarder, creds) = deployment.forwarder_of(&mine).await;

    // Its own endpoint's records: read, then written by compare-and-set, as a worker does.
    let pending = forwarder
        .task_record(&my_task)
        .await
        .expect("its own record is read")
        .expect("the gateway's PENDING record");
    assert_eq!(pending.status, TaskStatus::Pending);
    let done = TaskRecord {
        status: TaskStatus::Success,
        result: Some(serde_json::json!(2)),
        ..TaskRecord::pending(mine.clone())
    };
    let stored = forwarder
        .advance_task_record(&my_task, &done, None)
        .await
        .expect("its own record is written");
    assert_eq!(stored.record, done);
    assert_eq!(
        gateway.task_record(&my_task).await.expect("read"),
        Some(done)
    );
    assert!(
        forwarder.task_record(&their_task).await.is_err(),
        "another endpoint's record is not read through the queue either"
    );

    // Another endpoint's records, and any callback state or idempotency key, are refused.
    let mut intruder = Intruder::connect(url, &creds, &forwarder_inbox_prefix(&mine)).await;
    let results = names::RESULTS_BUCKET;
    let direct_get = |key: &str| format!("$JS.API.DIRECT.GET.KV_{results}.$KV.{results}.{key}");
    let keys = [
        names::record_key(&their_task),
        names::record_keys_of(&theirs),
        names::RECORD_KEYS.to_owned(),
        names::callback_key(&my_task),
        names::idempotency_key(&mine, "mine-once"),
        names::idempotency_key(&theirs, "any"),
    ];
    for key in &keys {
        intruder.publish(&format!("$KV.{results}.{key}")).await;
        intruder.publish(&direct_get(key)).await;
    }
    for subject in [
        // A direct get that names its key in the body, and reads past the key's subject.
        format!("$JS.API.DIRECT.GET.KV_{results}"),
        format!("$JS.API.STREAM.MSG.GET.KV_{results}"),
        format!("$JS.API.CONSUMER.CREATE.KV_{results}.spy"),
        format!("$JS.API.STREAM.PURGE.KV_{results}"),
        // The bucket's stream info lists its keys: every endpoint's task ids.
        format!("$JS.API.STREAM.INFO.KV_{results}"),
    ] {
        intruder.publish(&subject).await;
    }
    let their_record = gateway
        .task_record(&their_task)
        .await
        .expect("read")
        .expect("their record stands");
    assert_eq!(their_record.status, TaskStatus::Pending);
}

/// Args and results above NATS' 1 MiB default `max_payload` travel through the endpoint's
/// payload bucket: each role reads them whole with its own credentials, and an endpoint's
/// forwarder reaches no other endpoint's bucket.
#[tokio::test]
async fn an_endpoints_forwarder_stores_and_loads_only_that_endpoints_large_payloads() {
    let deployment = Deployment::start().await;
    let url = deployment.nats.connection.url();
    let (mine, theirs, _) = deployment.two_endpoints().await;
    let large = serde_json::json!({ "blob": "x".repeat(2 << 20) });
    let gateway = deployment.queue(Role::Gateway).await.gateway();
    for endpoint in [&mine, &theirs] {
        let task = TaskMessage {
            args: large.clone(),
            input_url: None,
            ..task(endpoint)
        };
        gateway.submit(&task, None).await.expect("submitted");
    }
    let (forwarder, creds) = deployment.forwarder_of(&mine).await;
    let worker = forwarder.clone();
    let (ran, args) = first(
        forwarder.tasks().await.expect("puller"),
        move |delivery: TaskDelivery| {
            let queue = worker.clone();
            tokio::spawn(async move {
                let task = delivery.task().await.expect("loads its args");
                let done = TaskRecord {
                    status: TaskStatus::Success,
                    result: Some(task.args.clone()),
                    ..TaskRecord::pending(task.endpoint_id.clone())
                };
                queue
                    .advance_task_record(&task.task_id, &done, None)
                    .await
                    .expect("recorded");
                let job = CallbackJob {
                    outcome: TaskOutcome::Success {
                        result: task.args.clone(),
                    },
                    ..callback_job(&task)
                };
                queue.publish_callback(&job).await.expect("callback queued");
                delivery.ack().await.expect("acked");
                (task.task_id, task.args)
            })
        },
    )
    .await;
    assert_eq!(ran.endpoint(), &mine);
    assert_eq!(args, large, "the args arrive whole");
    let record = gateway.task_record(&ran).await.expect("read");
    assert_eq!(record.and_then(|record| record.result), Some(large.clone()));
    let dispatcher = deployment.queue(Role::Dispatcher).await.dispatcher();
    let job = first(
        dispatcher.callback_jobs().await.expect("puller"),
        |delivery: CallbackDelivery| {
            tokio::spawn(async move {
                delivery.ack().await.expect("acked");
                delivery.job().await.expect("loads its result")
            })
        },
    )
    .await;
    assert_eq!(job.outcome, TaskOutcome::Success { result: large });

    // Their bucket is out of reach: its info, object metadata, chunks and a reading consumer.
    let mut intruder = Intruder::connect(url, &creds, &forwarder_inbox_prefix(&mine)).await;
    let bucket = names::payloads_bucket(&theirs);
    let stream = names::object_stream(&bucket);
    for subject in [
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.$O.{bucket}.M.eA"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.STREAM.PURGE.{stream}"),
        format!("$O.{bucket}.C.spy"),
    ] {
        intruder.publish(&subject).await;
    }
    let their_store = async_nats::jetstream::new(intruder.client.clone())
        .get_object_store(&bucket)
        .await;
    assert!(their_store.is_err(), "their bucket does not open");
}
