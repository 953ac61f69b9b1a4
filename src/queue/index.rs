//! Each async endpoint's task index: listing an endpoint's tasks newest first, a page at a time,
//! with work bounded by the page.
//!
//! The results bucket keeps a task's record under `task.<endpoint>.<uuid>`, but a bucket can be
//! read neither in key order nor backwards: a listing built on it alone would read every record
//! of the endpoint. So the endpoint's task queue republishes the headers of each task it stores
//! (its id is the message id) into the endpoint's index stream (`ferry-index-<endpoint>`): the
//! server appends the entry, which costs a submission no request of its own, and a task refused
//! or sent again is not listed twice. One endpoint's ids are then consecutive sequences of one
//! stream, newest last: a page is read backwards from a sequence with one direct get per entry,
//! then one read of each listed task's record and callback state.
//!
//! A status filter is applied to the records read: a page reads at most [`SCAN_LIMIT`] entries
//! and, having found fewer matches than asked for, ends with a continuation (possibly empty).
//! `until` is found by a binary search over the entries' creation times (their UUIDv7s),
//! `since` ends the listing at the first older entry.

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{self, DirectGetErrorKind};
use futures::StreamExt;

use super::{Error, NatsError, Queue, names};
use crate::crd::EndpointId;
use crate::task::{CallbackState, TaskId, TaskRecord, TaskStatus};

/// Index entries one page reads at most, whatever its filter matches.
pub const SCAN_LIMIT: u64 = 1000;

/// Reads one page keeps in flight at once.
const READS_AT_ONCE: usize = 32;

/// Which of an endpoint's tasks a page lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskQuery {
    pub status: Option<TaskStatus>,
    /// Only tasks created at or after this Unix time in milliseconds.
    pub since_ms: Option<u64>,
    /// Only tasks created at or before this Unix time in milliseconds.
    pub until_ms: Option<u64>,
    /// Tasks a page holds at most.
    pub limit: u64,
    /// Where the previous page ended: the index sequence to go on from, downwards.
    pub from: Option<u64>,
}

/// A listed task: its record and, when it sends one, its callback's state.
#[derive(Clone, Debug, PartialEq)]
pub struct ListedTask {
    pub task_id: TaskId,
    pub record: TaskRecord,
    pub callback: Option<CallbackState>,
}

/// One page of a listing, and where the next one starts (`None`: nothing older is left).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskPage {
    pub tasks: Vec<ListedTask>,
    pub next: Option<u64>,
}

/// What one index entry turned out to be for a query.
enum Entry {
    Listed(Box<ListedTask>),
    /// Not listed (gone, filtered out), the listing goes on.
    Skipped,
    /// Created before `since`: the listing ends here.
    TooOld,
}

impl Queue {
    /// Creates or updates the endpoint's index; its entries expire with the task records.
    pub(super) async fn ensure_index(&self, endpoint: &EndpointId) -> Result<(), Error> {
        let name = names::index_stream(endpoint);
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![names::index_subject(endpoint)],
            max_age: self.settings.result_retention,
            allow_direct: true,
            num_replicas: self.settings.replicas,
            ..Default::default()
        };
        match self.js.create_or_update_stream(config).await {
            Ok(_) => Ok(()),
            Err(source) => Err(Error::EnsureStream {
                stream: name,
                source: source.into(),
            }),
        }
    }

    pub(super) async fn delete_index(&self, endpoint: &EndpointId) -> Result<(), Error> {
        self.delete_stream(names::index_stream(endpoint)).await
    }

    /// One page of the endpoint's tasks, newest first. Reads the index's state once, each
    /// entry of the page (at most [`SCAN_LIMIT`]) once, and the record and callback state of
    /// each entry in the time range; with `until` and no `from`, about log2(entries) more.
    pub(super) async fn task_page(
        &self,
        endpoint: &EndpointId,
        query: &TaskQuery,
    ) -> Result<TaskPage, Error> {
        let name = names::index_stream(endpoint);
        let index = match self.js.get_stream(&name).await {
            Ok(index) => index,
            Err(error) if is_not_found(error.kind()) => {
                // No index (yet): the endpoint has queued no task since it got one.
                return Ok(TaskPage::default());
            }
            Err(error) => return Err(index_error(&name, error.into())),
        };
        let state = &index.cached_info().state;
        if state.messages == 0 {
            return Ok(TaskPage::default());
        }
        let first = state.first_sequence;
        let mut top = query.from.unwrap_or(u64::MAX).min(state.last_sequence);
        if let (Some(until), None) = (query.until_ms, query.from) {
            match self
                .last_entry_until(&index, endpoint, first, top, until)
                .await?
            {
                Some(last) => top = last,
                None => return Ok(TaskPage::default()),
            }
        }
        self.scan(&index, endpoint, query, first, top).await
    }

    /// Reads entries from `top` down to `first`, a batch at a time, until the page is full,
    /// the scan limit is reached or an entry is older than `since`.
    async fn scan(
        &self,
        index: &stream::Stream,
        endpoint: &EndpointId,
        query: &TaskQuery,
        first: u64,
        top: u64,
    ) -> Result<TaskPage, Error> {
        let mut page = TaskPage::default();
        // The highest sequence not read yet; below `first` nothing is left.
        let mut unread = Some(top).filter(|top| *top >= first);
        let mut scanned = 0;
        while let Some(high) = unread {
            let wanted = query.limit.saturating_sub(page.tasks.len() as u64);
            if wanted == 0 || scanned >= SCAN_LIMIT {
                break;
            }
            let batch = wanted.max(READS_AT_ONCE as u64).min(SCAN_LIMIT - scanned);
            let low = high.saturating_sub(batch - 1).max(first);
            let sequences: Vec<u64> = (low..=high).rev().collect();
            let entries: Vec<_> = futures::stream::iter(sequences.clone())
                .map(|sequence| self.index_entry(index, endpoint, sequence, query))
                .buffered(READS_AT_ONCE)
                .collect()
                .await;
            for (sequence, entry) in sequences.into_iter().zip(entries) {
                scanned += 1;
                unread = sequence.checked_sub(1).filter(|next| *next >= first);
                match entry? {
                    Entry::Listed(task) => page.tasks.push(*task),
                    Entry::Skipped => {}
                    Entry::TooOld => {
                        unread = None;
                        break;
                    }
                }
                if page.tasks.len() as u64 == query.limit {
                    break;
                }
            }
        }
        page.next = unread;
        Ok(page)
    }

    /// The highest sequence in `first..=top` whose task was created at or before `until`, by
    /// a binary search (entries are appended in about their creation order).
    async fn last_entry_until(
        &self,
        index: &stream::Stream,
        endpoint: &EndpointId,
        first: u64,
        top: u64,
        until: u64,
    ) -> Result<Option<u64>, Error> {
        let created = |sequence| async move {
            let task = self.index_task(index, endpoint, sequence).await?;
            // A vanished entry expired: it is older than anything still kept.
            Ok::<_, Error>(task.and_then(|task| task.created_at_ms()).unwrap_or(0))
        };
        if top < first || created(first).await? > until {
            return Ok(None);
        }
        let (mut low, mut high) = (first, top);
        while low < high {
            let middle = low + (high - low).div_ceil(2);
            if created(middle).await? <= until {
                low = middle;
            } else {
                high = middle - 1;
            }
        }
        Ok(Some(low))
    }

    /// The task of the index entry at `sequence`; `None` when the entry is gone.
    async fn index_task(
        &self,
        index: &stream::Stream,
        endpoint: &EndpointId,
        sequence: u64,
    ) -> Result<Option<TaskId>, Error> {
        match index.direct_get(sequence).await {
            Ok(message) => Ok(entry_task(endpoint, &message)),
            Err(error) if error.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(error) => Err(index_error(&names::index_stream(endpoint), error.into())),
        }
    }

    async fn index_entry(
        &self,
        index: &stream::Stream,
        endpoint: &EndpointId,
        sequence: u64,
        query: &TaskQuery,
    ) -> Result<Entry, Error> {
        let Some(task_id) = self.index_task(index, endpoint, sequence).await? else {
            return Ok(Entry::Skipped);
        };
        let created = task_id.created_at_ms().unwrap_or(0);
        if query.since_ms.is_some_and(|since| created < since) {
            return Ok(Entry::TooOld);
        }
        if query.until_ms.is_some_and(|until| created > until) {
            return Ok(Entry::Skipped);
        }
        // An entry without a record: a task refused at submission, or expired.
        let Some(record) = self.task_record(&task_id).await? else {
            return Ok(Entry::Skipped);
        };
        if query.status.is_some_and(|status| status != record.status) {
            return Ok(Entry::Skipped);
        }
        let callback = self.callback_state(&task_id).await?;
        Ok(Entry::Listed(Box::new(ListedTask {
            task_id,
            record,
            callback,
        })))
    }
}

/// The task an index entry names: the message id the queue stored it under (republished with
/// its headers), or, in an entry appended by a submitter before the queue did it, the payload.
fn entry_task(
    endpoint: &EndpointId,
    entry: &async_nats::jetstream::message::StreamMessage,
) -> Option<TaskId> {
    let republished = entry
        .headers
        .get(async_nats::header::NATS_MESSAGE_ID)
        .and_then(|id| TaskId::parse(id.as_str()))
        .filter(|task| task.endpoint() == endpoint);
    let appended = || {
        std::str::from_utf8(&entry.payload)
            .ok()
            .and_then(|unique| TaskId::within(endpoint, unique))
    };
    republished.or_else(appended)
}

fn is_not_found(kind: GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(error)
        if error.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND)
}

fn index_error(stream: &str, source: NatsError) -> Error {
    Error::Read {
        key: format!("index {stream}"),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskMessage;

    async fn queued(queue: &Queue, endpoint: &EndpointId, count: usize) -> Vec<TaskId> {
        let mut ids = Vec::new();
        for _ in 0..count {
            let task = TaskMessage {
                task_id: TaskId::generate(endpoint),
                endpoint_id: endpoint.clone(),
                args: serde_json::json!({}),
                input_url: None,
                callback: None,
                submitted_at_ms: crate::task::now_ms(),
                record_revision: None,
            };
            ids.push(queue.submit(&task, None).await.expect("queued").task_id);
        }
        ids
    }

    fn page_ids(page: &TaskPage) -> Vec<TaskId> {
        page.tasks.iter().map(|task| task.task_id.clone()).collect()
    }

    /// Pages through an endpoint's tasks newest first, with and without a status filter and a
    /// time range, and sees no task of another endpoint.
    #[tokio::test]
    async fn pages_list_an_endpoints_tasks_newest_first() {
        let (_nats, queue) = crate::queue::testing::start_with_queue().await;
        let ours = EndpointId::for_resource("ml", "listed");
        let theirs = EndpointId::for_resource("ml", "other");
        for endpoint in [&ours, &theirs] {
            let spec = crate::queue::QueueSpec {
                endpoint_id: endpoint.clone(),
                task_expiry: std::time::Duration::from_secs(600),
                ack_wait: std::time::Duration::from_secs(30),
            };
            queue.ensure_task_queue(&spec).await.expect("queue");
        }
        let mut ids = queued(&queue, &ours, 7).await;
        queued(&queue, &theirs, 3).await;
        let cancelled = [&ids[1], &ids[4]];
        for id in cancelled {
            queue.cancel_task(id).await.expect("cancelled");
        }
        ids.reverse();

        let mut listed = Vec::new();
        let mut query = TaskQuery {
            limit: 3,
            ..Default::default()
        };
        loop {
            let page = queue.task_page(&ours, &query).await.expect("page");
            assert!(page.tasks.len() <= 3);
            listed.extend(page_ids(&page));
            match page.next {
                Some(next) => query.from = Some(next),
                None => break,
            }
        }
        assert_eq!(listed, ids, "every task once, newest first");

        let only_cancelled = TaskQuery {
            status: Some(TaskStatus::Cancelled),
            limit: 10,
            ..Default::default()
        };
        let page = queue.task_page(&ours, &only_cancelled).await.expect("page");
        assert_eq!(page_ids(&page), vec![ids[2].clone(), ids[5].clone()]);
        assert!(
            page.tasks
                .iter()
                .all(|task| task.record.finished_at_ms.is_some())
        );
        assert_eq!(page.next, None);

        let created = |id: &TaskId| id.created_at_ms().expect("time");
        let window = TaskQuery {
            since_ms: Some(created(&ids[4])),
            until_ms: Some(created(&ids[2])),
            limit: 10,
            ..Default::default()
        };
        let page = queue.task_page(&ours, &window).await.expect("page");
        let in_window: Vec<_> = ids
            .iter()
            .filter(|id| (created(&ids[4])..=created(&ids[2])).contains(&created(id)))
            .cloned()
            .collect();
        assert_eq!(page_ids(&page), in_window);
        assert_eq!(page.next, None, "the listing ends at since");

        let before_any = TaskQuery {
            until_ms: Some(created(&ids[6]) - 1),
            limit: 10,
            ..Default::default()
        };
        let page = queue.task_page(&ours, &before_any).await.expect("page");
        assert_eq!(page, TaskPage::default());
        let unknown = EndpointId::for_resource("ml", "never");
        let page = queue
            .task_page(&unknown, &only_cancelled)
            .await
            .expect("page");
        assert_eq!(page, TaskPage::default());
    }

    /// The queue indexes each task it stores, however it was published, and a copy it drops
    /// as a repeat is not indexed again: nothing but the task's own publish is needed.
    #[tokio::test]
    async fn the_queue_indexes_each_task_it_stores_once() {
        let (_nats, queue) = crate::queue::testing::start_with_queue().await;
        let endpoint = EndpointId::for_resource("ml", "indexed");
        let spec = crate::queue::QueueSpec {
            endpoint_id: endpoint.clone(),
            task_expiry: std::time::Duration::from_secs(600),
            ack_wait: std::time::Duration::from_secs(30),
        };
        queue.ensure_task_queue(&spec).await.expect("queue");
        let task = TaskId::generate(&endpoint);
        let record = TaskRecord::pending(endpoint.clone());
        queue
            .create_task_record(&task, &record)
            .await
            .expect("record");
        let subject = names::task_subject(&task);
        for _ in 0..2 {
            let message = async_nats::jetstream::message::PublishMessage::build()
                .payload("{}".into())
                .message_id(task.as_str());
            queue
                .publish_acked(&subject, message)
                .await
                .expect("stored once, dropped once");
        }
        let everything = TaskQuery {
            limit: 10,
            ..Default::default()
        };
        // The server appends the entry just after storing the task: wait for it to show.
        let listed = async {
            loop {
                let page = queue.task_page(&endpoint, &everything).await.expect("page");
                if !page.tasks.is_empty() {
                    return page;
                }
                tokio::task::yield_now().await;
            }
        };
        let page = tokio::time::timeout(std::time::Duration::from_secs(10), listed)
            .await
            .expect("the task is listed");
        assert_eq!(page_ids(&page), vec![task]);
        let index = queue
            .js
            .get_stream(names::index_stream(&endpoint))
            .await
            .expect("index");
        assert_eq!(index.cached_info().state.messages, 1, "indexed once");
    }
}
