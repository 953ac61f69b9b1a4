//! Flags of the commands that call a running gateway (`ferry tasks …`, `ferry callbacks …`)
//! and of `ferry completions`. The API key is read from `FERRY_API_KEY` only, never a flag.

use clap::{Subcommand, ValueEnum};

use crate::api_client::{Command, Output, Settings};

/// The environment variable holding the API key.
pub const API_KEY_ENV: &str = "FERRY_API_KEY";

#[derive(clap::Args, Debug, Clone)]
pub struct GatewayArgs {
    /// Base URL of the gateway.
    #[arg(
        long = "gateway-url",
        env = "FERRY_GATEWAY_URL",
        default_value = "http://127.0.0.1:5005",
        global = true
    )]
    pub gateway: url::Url,
    /// How answers are printed.
    #[arg(long, env = "FERRY_OUTPUT", default_value = "table", global = true)]
    pub output: OutputFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct TasksArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(subcommand)]
    pub command: TasksCommand,
}

#[derive(clap::Args, Debug, Clone)]
pub struct PageArgs {
    /// Endpoint id (end_…) or name.
    #[arg(long = "model-endpoint", env = "FERRY_MODEL_ENDPOINT")]
    pub endpoint: String,
    /// Only those since this time (RFC 3339 or Unix milliseconds).
    #[arg(long, env = "FERRY_SINCE")]
    pub since: Option<String>,
    /// Entries per page (1 to 200).
    #[arg(long, env = "FERRY_LIMIT")]
    pub limit: Option<u64>,
    /// Where to go on from, as the previous page printed it.
    #[arg(long, env = "FERRY_PAGE_TOKEN")]
    pub page_token: Option<String>,
}

impl PageArgs {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        query.extend(self.since.clone().map(|since| ("since", since)));
        query.extend(self.limit.map(|limit| ("limit", limit.to_string())));
        query.extend(self.page_token.clone().map(|token| ("page_token", token)));
        query
    }
}

#[derive(Subcommand, Debug, Clone)]
pub enum TasksCommand {
    /// Show a task: status, times, result, callback attempts.
    Get { task_id: String },
    /// List an endpoint's tasks, newest first.
    List {
        #[command(flatten)]
        page: PageArgs,
        /// Only tasks in this status (PENDING, STARTED, SUCCESS, FAILURE, CANCELLED).
        #[arg(long, env = "FERRY_TASK_STATUS")]
        status: Option<String>,
        /// Only tasks created until this time (RFC 3339 or Unix milliseconds).
        #[arg(long, env = "FERRY_UNTIL")]
        until: Option<String>,
    },
    /// Cancel a queued task: it never runs. A task a worker started cannot be cancelled.
    Cancel { task_id: String },
}

#[derive(clap::Args, Debug, Clone)]
pub struct CallbacksArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(subcommand)]
    pub command: CallbacksCommand,
}

#[derive(Subcommand, Debug, Clone)]
pub enum CallbacksCommand {
    /// List an endpoint's dead-lettered callbacks, oldest first, with their attempts.
    DeadLetters {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Redeliver one task's dead-lettered callback, or (with --since) every one since a time.
    Redeliver {
        #[arg(
            required_unless_present = "redeliver_since",
            conflicts_with = "redeliver_since"
        )]
        task_id: Option<String>,
        /// Every callback dead-lettered since this time (RFC 3339 or Unix milliseconds).
        #[arg(long = "since", id = "redeliver_since", env = "FERRY_SINCE")]
        since: Option<String>,
        /// With --since: only this endpoint's (id or name).
        #[arg(
            long = "model-endpoint",
            env = "FERRY_MODEL_ENDPOINT",
            requires = "redeliver_since"
        )]
        endpoint: Option<String>,
    },
}

impl GatewayArgs {
    fn settings(&self, command: Command) -> anyhow::Result<Settings> {
        let api_key = std::env::var(API_KEY_ENV).map_err(|_| {
            anyhow::anyhow!("set {API_KEY_ENV} to your API key (it is never taken as a flag)")
        })?;
        Ok(Settings {
            gateway: self.gateway.clone(),
            api_key,
            output: match self.output {
                OutputFormat::Table => Output::Table,
                OutputFormat::Json => Output::Json,
            },
            command,
        })
    }
}

impl TasksArgs {
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let command = match &self.command {
            TasksCommand::Get { task_id } => Command::GetTask {
                task_id: task_id.clone(),
            },
            TasksCommand::Cancel { task_id } => Command::CancelTask {
                task_id: task_id.clone(),
            },
            TasksCommand::List {
                page,
                status,
                until,
            } => {
                let mut query = page.query();
                query.extend(status.clone().map(|status| ("status", status)));
                query.extend(until.clone().map(|until| ("until", until)));
                Command::ListTasks {
                    endpoint: page.endpoint.clone(),
                    query,
                }
            }
        };
        self.gateway.settings(command)
    }
}

impl CallbacksArgs {
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let command = match &self.command {
            CallbacksCommand::DeadLetters { page } => Command::DeadLetters {
                endpoint: page.endpoint.clone(),
                query: page.query(),
            },
            CallbacksCommand::Redeliver {
                task_id,
                since,
                endpoint,
            } => match (task_id, since) {
                (Some(task_id), _) => Command::RedeliverTask {
                    task_id: task_id.clone(),
                },
                (None, since) => Command::RedeliverSince {
                    since: since.clone().unwrap_or_default(),
                    endpoint: endpoint.clone(),
                },
            },
        };
        self.gateway.settings(command)
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}
