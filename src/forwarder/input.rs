//! Task inputs given by URL (Launch's `url` of a task request): the worker fetches the input
//! before the model runs and hands the model the fetched bytes as the body of its prediction
//! request, in place of args. `http(s)` URLs go through the SSRF guard (every address vetted,
//! no redirects followed); `s3://`, `gs://` and `az://` locations go through `object_store`
//! with each cloud's usual credential chain from the environment; `file://` only where the
//! worker allows it (`ferry dev`, whose models run on the same machine anyway). Every source is
//! bounded by the request body limit and a deadline, and a fetch that fails is the task's
//! failure, named so a client can act on it.

use std::time::Duration;

use bytes::Bytes;
use object_store::ObjectStoreExt;
use url::Url;

use crate::callback::guard::{Guard, Refusal, VettingResolver};

/// Largest input fetched: the largest request body ferry takes.
pub const MAX_INPUT_BYTES: usize = 10 * 1024 * 1024;
/// Longest a fetch may take in all, from the lookup to the last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Content type given to the model when the source names none.
const OCTET_STREAM: &str = "application/octet-stream";

/// An input as fetched: its bytes and what the source said they are.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub bytes: Bytes,
    pub content_type: String,
}

/// Why an input could not be fetched; the task fails with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("input url {url:?} is not a URL")]
    NotAUrl { url: String },
    #[error("input url {url:?}: ferry fetches inputs from http, https, s3, gs and az URLs")]
    Scheme { url: String },
    #[error("input url {url:?}: file URLs are read only by ferry dev")]
    FileNotAllowed { url: String },
    #[error("input url {url:?} {why}")]
    Refused { url: String, why: String },
    #[error("input url {url:?} answered {status}{}", if status.is_redirection() { " (redirects are not followed)" } else { "" })]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error(
        "input url {url:?} holds more than {MAX_INPUT_BYTES} bytes, the largest input ferry takes"
    )]
    TooLarge { url: String },
    #[error("input url {url:?} was not fetched within {} s", FETCH_TIMEOUT.as_secs())]
    TimedOut { url: String },
    #[error("fetching input url {url:?} failed: {reason}")]
    Failed { url: String, reason: String },
}

/// Where an input comes from, by its URL's scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Http(Url),
    /// `s3://`, `gs://`, `az://` and `file://`: read through `object_store`.
    Object(Url),
}

fn source_of(text: &str, allow_files: bool) -> Result<Source, FetchError> {
    let url = Url::parse(text).map_err(|_| FetchError::NotAUrl { url: text.into() })?;
    match url.scheme() {
        "http" | "https" => Ok(Source::Http(url)),
        "s3" | "gs" | "az" => Ok(Source::Object(url)),
        "file" if allow_files => Ok(Source::Object(url)),
        "file" => Err(FetchError::FileNotAllowed { url: text.into() }),
        _ => Err(FetchError::Scheme { url: text.into() }),
    }
}

/// The guard's refusal, in words about inputs.
fn refusal(url: &str, refusal: Refusal) -> FetchError {
    let why = match refusal {
        Refusal::Forbidden { kind } => {
            format!("resolves to a {kind} address, which task inputs may not come from")
        }
        other => other.to_string(),
    };
    FetchError::Refused {
        url: url.into(),
        why,
    }
}

/// Fetches task inputs for one worker.
#[derive(Clone)]
pub struct InputFetcher {
    http: reqwest::Client,
    guard: Guard,
    allow_files: bool,
}

impl InputFetcher {
    /// Fetches through `guard`; reads `file://` URLs only when `allow_files`.
    pub fn new(guard: Guard, allow_files: bool) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(std::sync::Arc::new(VettingResolver(guard.clone())))
            .connect_timeout(CONNECT_TIMEOUT)
            .build()?;
        Ok(InputFetcher {
            http,
            guard,
            allow_files,
        })
    }

    /// The input at `url`, within [`MAX_INPUT_BYTES`] and the fetch deadline.
    pub async fn fetch(&self, url: &str) -> Result<Fetched, FetchError> {
        let source = source_of(url, self.allow_files)?;
        let fetching = async {
            match source {
                Source::Http(parsed) => self.fetch_http(url, parsed).await,
                Source::Object(parsed) => fetch_object(url, &parsed).await,
            }
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetching)
            .await
            .map_err(|_| FetchError::TimedOut { url: url.into() })?
    }

    async fn fetch_http(&self, text: &str, url: Url) -> Result<Fetched, FetchError> {
        // Names are vetted by the resolver as the client connects; an address written in the
        // URL never reaches a resolver, so the guard judges the URL first.
        self.guard
            .vet_url(text, &[])
            .await
            .map_err(|refused| refusal(text, refused))?;
        let failed = |error: reqwest::Error| FetchError::Failed {
            url: text.into(),
            reason: crate::telemetry::error_chain(&error),
        };
        let response = self.http.get(url).send().await.map_err(failed)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status {
                url: text.into(),
                status,
            });
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or(OCTET_STREAM)
            .to_owned();
        let bytes = super::bounded::read_bounded(response, MAX_INPUT_BYTES)
            .await
            .map_err(failed)?
            .ok_or_else(|| FetchError::TooLarge { url: text.into() })?;
        Ok(Fetched {
            bytes: bytes.into(),
            content_type,
        })
    }
}

async fn fetch_object(text: &str, url: &Url) -> Result<Fetched, FetchError> {
    let failed = |error: object_store::Error| FetchError::Failed {
        url: text.into(),
        reason: error.to_string(),
    };
    let (store, path) = crate::storage::object_store_for(url).map_err(failed)?;
    let found = store.get(&path).await.map_err(failed)?;
    if found.meta.size > MAX_INPUT_BYTES as u64 {
        return Err(FetchError::TooLarge { url: text.into() });
    }
    let bytes = found.bytes().await.map_err(failed)?;
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(FetchError::TooLarge { url: text.into() });
    }
    Ok(Fetched {
        bytes,
        content_type: OCTET_STREAM.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn fetcher(guard: Guard, allow_files: bool) -> InputFetcher {
        let _ = rustls::crypto::ring::default_provider().install_default();
        InputFetcher::new(guard, allow_files).expect("client builds")
    }

    fn loopback_allowed() -> Guard {
        Guard::new(
            vec!["127.0.0.0/8".parse().expect("cidr")],
            Default::default(),
        )
    }

    /// A server on 127.0.0.1 answering every request with `answer`; its base URL.
    async fn serve(answer: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = socket.read(&mut request).await;
                    let _ = socket.write_all(&answer).await;
                });
            }
        });
        format!("http://{addr}")
    }

    fn http_answer(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
        let mut answer = format!(
            "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        answer.extend_from_slice(body);
        answer
    }

    #[tokio::test]
    async fn an_http_input_arrives_with_its_content_type() {
        let base = serve(http_answer(
            "200 OK",
            "content-type: text/csv\r\n",
            b"a,b\n1,2\n",
        ))
        .await;
        let fetched = fetcher(loopback_allowed(), false)
            .fetch(&format!("{base}/data.csv"))
            .await
            .expect("fetched");
        assert_eq!(fetched.bytes.as_ref(), b"a,b\n1,2\n");
        assert_eq!(fetched.content_type, "text/csv");
    }

    #[tokio::test]
    async fn the_ssrf_guard_refuses_internal_inputs_by_address_and_by_name() {
        let base = serve(http_answer("200 OK", "", b"secret")).await;
        let closed = fetcher(Guard::default(), false);
        let error = closed
            .fetch(&format!("{base}/x"))
            .await
            .expect_err("loopback refused");
        assert!(
            error
                .to_string()
                .contains("loopback address, which task inputs may not come from"),
            "{error}"
        );
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/x",
            "http://[::ffff:127.0.0.1]/x",
        ] {
            let error = closed.fetch(url).await.expect_err(url);
            assert!(
                matches!(error, FetchError::Refused { .. }),
                "{url}: {error}"
            );
        }
        let port = base.rsplit(':').next().expect("port");
        let pinned = Guard::new(
            Vec::new(),
            [(
                "inputs.example".to_owned(),
                vec!["127.0.0.1".parse().expect("ip")],
            )]
            .into(),
        );
        let error = fetcher(pinned, false)
            .fetch(&format!("http://inputs.example:{port}/x"))
            .await
            .expect_err("a name resolving to loopback is refused");
        assert!(matches!(error, FetchError::Refused { .. }), "{error}");
    }

    #[tokio::test]
    async fn redirects_errors_and_oversized_inputs_fail_with_their_reason() {
        let fetch = |answer: Vec<u8>| async move {
            let base = serve(answer).await;
            fetcher(loopback_allowed(), false)
                .fetch(&format!("{base}/x"))
                .await
                .expect_err("fails")
        };
        let redirect = fetch(http_answer(
            "302 Found",
            "location: http://169.254.169.254/\r\n",
            b"",
        ))
        .await;
        assert!(
            redirect.to_string().contains("redirects are not followed"),
            "{redirect}"
        );
        let missing = fetch(http_answer("404 Not Found", "", b"")).await;
        assert!(missing.to_string().contains("404"), "{missing}");
        let huge = fetch(http_answer("200 OK", "", &vec![b'x'; MAX_INPUT_BYTES + 1])).await;
        assert!(matches!(huge, FetchError::TooLarge { .. }), "{huge}");
        let unknown = fetcher(loopback_allowed(), false)
            .fetch("ftp://example.com/x")
            .await
            .expect_err("ftp");
        assert!(matches!(unknown, FetchError::Scheme { .. }), "{unknown}");
    }

    #[tokio::test]
    async fn object_store_locations_are_read_and_files_only_where_allowed() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("input.json");
        std::fs::write(&file, br#"{"n": 21}"#).expect("write");
        let url = Url::from_file_path(&file).expect("file url").to_string();
        let fetched = fetcher(Guard::default(), true)
            .fetch(&url)
            .await
            .expect("read through the local store");
        assert_eq!(fetched.bytes.as_ref(), br#"{"n": 21}"#);
        let refused = fetcher(Guard::default(), false)
            .fetch(&url)
            .await
            .expect_err("files only in ferry dev");
        assert!(
            matches!(refused, FetchError::FileNotAllowed { .. }),
            "{refused}"
        );
        let missing = fetcher(Guard::default(), true)
            .fetch(&format!("{url}.missing"))
            .await
            .expect_err("absent");
        assert!(matches!(missing, FetchError::Failed { .. }), "{missing}");
        let big = dir.path().join("big.bin");
        std::fs::write(&big, vec![0u8; MAX_INPUT_BYTES + 1]).expect("write");
        let big = Url::from_file_path(&big).expect("file url").to_string();
        let too_large = fetcher(Guard::default(), true)
            .fetch(&big)
            .await
            .expect_err("too large");
        assert!(
            matches!(too_large, FetchError::TooLarge { .. }),
            "{too_large}"
        );
    }
}
