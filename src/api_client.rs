//! `ferry tasks …` and `ferry callbacks …`: the gateway's task and callback operations from a
//! terminal, as tables for people or as the gateway's JSON. The API key comes from the
//! environment only, so it never shows in a process list or a shell history.

use serde_json::Value;
use url::Url;

/// How answers are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// One operation against the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    GetTask {
        task_id: String,
    },
    ListTasks {
        endpoint: String,
        query: Vec<(&'static str, String)>,
    },
    CancelTask {
        task_id: String,
    },
    DeadLetters {
        endpoint: String,
        query: Vec<(&'static str, String)>,
    },
    RedeliverTask {
        task_id: String,
    },
    RedeliverSince {
        since: String,
        endpoint: Option<String>,
    },
}

pub struct Settings {
    pub gateway: Url,
    pub api_key: String,
    pub output: Output,
    pub command: Command,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("building the HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("calling {url}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the gateway answered {status}: {detail}")]
    Refused { status: u16, detail: String },
    #[error("no endpoint named {0:?} is visible to this API key")]
    UnknownEndpoint(String),
}

struct Gateway {
    http: reqwest::Client,
    base: Url,
    api_key: String,
}

impl Gateway {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Value, Error> {
        let mut url = self.base.clone();
        url.set_path(path);
        url.query_pairs_mut().extend_pairs(query);
        let request_error = |source| Error::Request {
            url: url.to_string(),
            source,
        };
        let response = self
            .http
            .request(method, url.clone())
            .basic_auth(&self.api_key, Some(""))
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let detail = match &body["detail"] {
            Value::String(text) => text.clone(),
            Value::Null => status.canonical_reason().unwrap_or_default().to_owned(),
            other => other.to_string(),
        };
        Err(Error::Refused {
            status: status.as_u16(),
            detail,
        })
    }

    /// An endpoint id as given (`end_…`), or the id of the endpoint of that name.
    async fn endpoint_id(&self, endpoint: &str) -> Result<String, Error> {
        if crate::crd::EndpointId::parse(endpoint).is_some() {
            return Ok(endpoint.to_owned());
        }
        let query = [("name", endpoint.to_owned())];
        let found = self
            .call(reqwest::Method::GET, "/v1/model-endpoints", &query)
            .await?;
        found["model_endpoints"][0]["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::UnknownEndpoint(endpoint.to_owned()))
    }
}

/// Runs the operation and prints its answer.
pub async fn run(settings: Settings) -> Result<(), Error> {
    let gateway = Gateway {
        http: reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(Error::Client)?,
        base: settings.gateway,
        api_key: settings.api_key,
    };
    use reqwest::Method;
    let (answer, shape) = match settings.command {
        Command::GetTask { task_id } => {
            let path = format!("/v1/async-tasks/{task_id}");
            (gateway.call(Method::GET, &path, &[]).await?, Shape::Task)
        }
        Command::CancelTask { task_id } => {
            let path = format!("/v1/async-tasks/{task_id}");
            (gateway.call(Method::DELETE, &path, &[]).await?, Shape::Task)
        }
        Command::ListTasks {
            endpoint,
            mut query,
        } => {
            query.push(("model_endpoint_id", gateway.endpoint_id(&endpoint).await?));
            let page = gateway.call(Method::GET, "/v1/async-tasks", &query).await?;
            (page, Shape::Tasks)
        }
        Command::DeadLetters {
            endpoint,
            mut query,
        } => {
            query.push(("model_endpoint_id", gateway.endpoint_id(&endpoint).await?));
            let path = "/v1/callbacks/dead-letters";
            (
                gateway.call(Method::GET, path, &query).await?,
                Shape::Letters,
            )
        }
        Command::RedeliverTask { task_id } => {
            let path = format!("/v1/async-tasks/{task_id}/callback/redeliver");
            (
                gateway.call(Method::POST, &path, &[]).await?,
                Shape::Redelivered,
            )
        }
        Command::RedeliverSince { since, endpoint } => {
            let mut query = vec![("since", since)];
            if let Some(endpoint) = endpoint {
                query.push(("model_endpoint_id", gateway.endpoint_id(&endpoint).await?));
            }
            let path = "/v1/callbacks/redeliver";
            (
                gateway.call(Method::POST, path, &query).await?,
                Shape::Redelivered,
            )
        }
    };
    match settings.output {
        Output::Json => println!("{answer}"),
        Output::Table => print!("{}", shape.render(&answer)),
    }
    Ok(())
}

/// What an answer holds, for its table.
enum Shape {
    Task,
    Tasks,
    Letters,
    Redelivered,
}

impl Shape {
    fn render(&self, answer: &Value) -> String {
        match self {
            Shape::Task => {
                fields(
                    answer,
                    &[
                        "task_id",
                        "status",
                        "model_endpoint_id",
                        "created_at",
                        "started_at",
                        "finished_at",
                        "status_code",
                        "result",
                        "traceback",
                    ],
                ) + &callback_fields(&answer["callback"])
            }
            Shape::Tasks => {
                let rows = rows(
                    &answer["tasks"],
                    &[
                        "task_id",
                        "status",
                        "created_at",
                        "started_at",
                        "finished_at",
                    ],
                    |task| text(&task["callback"]["state"]),
                );
                table(
                    &[
                        "TASK ID", "STATUS", "CREATED", "STARTED", "FINISHED", "CALLBACK",
                    ],
                    rows,
                ) + &next_page(answer)
            }
            Shape::Letters => {
                let rows = rows(
                    &answer["dead_letters"],
                    &["task_id", "dead_lettered_at", "url"],
                    |letter| {
                        letter["attempts"]
                            .as_array()
                            .map_or(0, Vec::len)
                            .to_string()
                    },
                );
                table(&["TASK ID", "DEAD-LETTERED", "URL", "ATTEMPTS"], rows) + &next_page(answer)
            }
            Shape::Redelivered => format!("redelivered {}\n", text(&answer["redelivered"])),
        }
    }
}

/// A JSON value as a cell: strings bare, null as `-`.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn fields(object: &Value, names: &[&str]) -> String {
    let width = names.iter().map(|name| name.len()).max().unwrap_or(0);
    names
        .iter()
        .map(|name| format!("{name:<width$}  {}\n", text(&object[*name])))
        .collect()
}

fn callback_fields(callback: &Value) -> String {
    if callback.is_null() {
        return String::new();
    }
    let mut out = format!(
        "callback   {} {}\n",
        text(&callback["state"]),
        text(&callback["url"])
    );
    let attempts = callback["attempts"].as_array().cloned().unwrap_or_default();
    let rows = attempts
        .iter()
        .map(|attempt| {
            vec![
                text(&attempt["at_ms"]),
                text(&attempt["status_code"]),
                text(&attempt["duration_ms"]),
                text(&attempt["error"]),
            ]
        })
        .collect();
    if !attempts.is_empty() {
        out += &table(&["AT (UNIX MS)", "STATUS", "MS", "ERROR"], rows);
    }
    out
}

/// One row per item of `items`: the named fields, then `last`'s cell.
fn rows(items: &Value, names: &[&str], last: impl Fn(&Value) -> String) -> Vec<Vec<String>> {
    let items = items.as_array().cloned().unwrap_or_default();
    items
        .iter()
        .map(|item| {
            let mut row: Vec<String> = names.iter().map(|name| text(&item[*name])).collect();
            row.push(last(item));
            row
        })
        .collect()
}

fn next_page(answer: &Value) -> String {
    match answer["next_page_token"].as_str() {
        Some(token) => format!("more: --page-token {token}\n"),
        None => String::new(),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        out += &line(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn task_pages_render_as_aligned_rows_with_the_next_token() {
        let page = json!({
            "tasks": [
                {"task_id": "end_1-a", "status": "SUCCESS", "created_at": "2026-01-01T00:00:00Z",
                 "started_at": null, "finished_at": null, "callback": {"state": "DELIVERED"}},
                {"task_id": "end_1-bb", "status": "CANCELLED", "created_at": "2026-01-01T00:00:01Z",
                 "started_at": null, "finished_at": null},
            ],
            "next_page_token": "17",
        });
        let rendered = Shape::Tasks.render(&page);
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(
            lines[0],
            "TASK ID   STATUS     CREATED               STARTED  FINISHED  CALLBACK"
        );
        assert_eq!(
            lines[1],
            "end_1-a   SUCCESS    2026-01-01T00:00:00Z  -        -         DELIVERED"
        );
        assert_eq!(
            lines[2],
            "end_1-bb  CANCELLED  2026-01-01T00:00:01Z  -        -         -"
        );
        assert_eq!(lines[3], "more: --page-token 17");
    }
}
