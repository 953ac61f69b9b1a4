//! Command-line arguments: one `Args` struct per role, turned here, and only here, into the
//! role's `Settings`; every flag also reads an environment variable so the same image is
//! configured the same way in a pod and on a laptop.

mod bench;
pub mod check;
mod dev;
mod dispatcher;
mod fetch_artifact;
mod forwarder;
mod gateway;
mod nats_auth;
mod operator;
mod ops;
mod serving_token;
mod shared;

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use bench::{BenchArgs, BenchModelArgs};
use dev::DevArgs;
use dispatcher::DispatcherArgs;
use fetch_artifact::FetchArtifactArgs;
use forwarder::ForwarderArgs;
use gateway::GatewayArgs;
use nats_auth::NatsAuthArgs;
use operator::OperatorArgs;
use ops::{CallbacksArgs, CompletionsArgs, TasksArgs};
use serving_token::ServingTokenArgs;

#[derive(Parser, Debug)]
#[command(
    name = "ferry",
    version,
    about = "Serve machine-learning models as endpoints and deliver their results to callback URLs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub role: Role,
    /// Log line format.
    #[arg(long, global = true, env = "FERRY_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Check the role's configuration (flags and environment) and its NATS server, then exit
    /// without serving: 0 when the role would start. No environment variable on purpose: a
    /// stray one would keep a pod from ever serving.
    #[arg(long, global = true)]
    pub check_config: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl From<LogFormat> for crate::telemetry::LogFormat {
    fn from(format: LogFormat) -> Self {
        match format {
            LogFormat::Text => crate::telemetry::LogFormat::Text,
            LogFormat::Json => crate::telemetry::LogFormat::Json,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Role {
    /// Run the whole system on this machine from ModelBundle/ModelEndpoint manifests.
    Dev(DevArgs),
    /// Serve the Launch-compatible HTTP API.
    Gateway(GatewayArgs),
    /// Pull an endpoint's tasks, call the model container, record results (the worker sidecar).
    Forwarder(ForwarderArgs),
    /// Deliver callbacks (the callback controller).
    Dispatcher(DispatcherArgs),
    /// Reconcile ModelBundles and ModelEndpoints into worker Deployments, Services and queues.
    Operator(OperatorArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
    /// Print the token gateways present to an endpoint's serving workers (sync and streaming
    /// workers run outside a cluster need it as --serving-token).
    ServingToken(ServingTokenArgs),
    /// Generate NATS authorization: the server's configuration, a `.creds` file per role with
    /// that role's subject permissions, and the account signing seed.
    NatsAuth(NatsAuthArgs),
    /// Measure a running gateway: submit tasks and time their callbacks.
    Bench(BenchArgs),
    /// Serve the benchmark's instant model (x + len(y)) on 0.0.0.0:$PORT.
    BenchModel(BenchModelArgs),
    /// Show, list and cancel tasks on a gateway (API key from FERRY_API_KEY).
    Tasks(TasksArgs),
    /// List dead-lettered callbacks and redeliver them on a gateway (API key from
    /// FERRY_API_KEY).
    Callbacks(CallbacksArgs),
    /// Print shell completions for bash, zsh or fish.
    Completions(CompletionsArgs),
    /// Fetch an artifact bundle's artifact and write ferry's Python runtime beside it (the
    /// init container of its worker pods).
    FetchArtifact(FetchArtifactArgs),
}

impl Role {
    /// Runs the role with the settings its arguments make.
    pub async fn run(self, cancel: CancellationToken) -> anyhow::Result<()> {
        match self {
            Role::Dev(args) => crate::dev::run(args.settings()?, cancel).await,
            Role::Gateway(args) => crate::gateway::run(args.settings()?, cancel).await,
            Role::Forwarder(args) => crate::forwarder::run(args.settings()?, cancel).await,
            Role::Dispatcher(args) => crate::dispatcher::run(args.settings()?, cancel).await,
            Role::Operator(args) => crate::operator::run(args.settings()?, cancel).await,
            Role::Bench(args) => crate::bench::run(args.settings(), cancel).await,
            Role::BenchModel(args) => {
                let delay = std::time::Duration::from_millis(args.delay_ms);
                crate::bench::model::run(args.port, delay, cancel).await
            }
            Role::NatsAuth(args) => Ok(crate::nats_auth::run(args.settings()?)?),
            Role::ServingToken(args) => args.run(),
            Role::FetchArtifact(args) => Ok(crate::python_runtime::fetch(&args.settings()).await?),
            Role::Tasks(args) => Ok(crate::api_client::run(args.settings()?).await?),
            Role::Callbacks(args) => Ok(crate::api_client::run(args.settings()?).await?),
            Role::Completions(args) => {
                use clap::CommandFactory;
                use std::io::Write;
                let mut script = Vec::new();
                clap_complete::generate(args.shell, &mut Cli::command(), "ferry", &mut script);
                // A reader that stops early (`| head`) is no failure of the command.
                match std::io::stdout().write_all(&script) {
                    Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
                        Err(error.into())
                    }
                    _ => Ok(()),
                }
            }
            Role::Crd => {
                print!("{}", crate::crd::yaml()?);
                Ok(())
            }
        }
    }
}

fn parse_positive_seconds(text: &str) -> Result<Duration, String> {
    match parse_seconds(text)? {
        Duration::ZERO => Err("must be at least 1 second".into()),
        seconds => Ok(seconds),
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    text.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("`{text}` is not a whole number of seconds"))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use clap::CommandFactory;

    use super::Cli;

    /// Every flag of every role as (role, flag, env var); built-in `--help`/`--version` aside.
    fn flags() -> Vec<(String, String, Option<String>)> {
        let mut cli = Cli::command();
        cli.build();
        let mut flags = Vec::new();
        // Every command, subcommands of subcommands (`ferry tasks list`) included.
        let mut commands = vec![&cli];
        let mut next = 0;
        while let Some(command) = commands.get(next).copied() {
            commands.extend(command.get_subcommands());
            next += 1;
        }
        for command in commands {
            for arg in command.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if matches!(long, "help" | "version") {
                    continue;
                }
                let env = arg.get_env().map(|env| env.to_string_lossy().into_owned());
                flags.push((command.get_name().to_owned(), long.to_owned(), env));
            }
        }
        flags
    }

    /// Keys that `pairs` maps to more than one value, with those values.
    fn ambiguous(pairs: impl Iterator<Item = (String, String)>) -> Vec<(String, BTreeSet<String>)> {
        let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (key, value) in pairs {
            seen.entry(key).or_default().insert(value);
        }
        seen.into_iter()
            .filter(|(_, values)| values.len() > 1)
            .collect()
    }

    #[test]
    fn every_flag_reads_an_environment_variable() {
        let missing: Vec<_> = flags()
            .into_iter()
            // A mode, not a setting: an environment variable left behind would keep a pod
            // from ever serving.
            .filter(|(_, flag, env)| env.is_none() && flag != "check-config")
            .map(|(role, flag, _)| format!("ferry {role} --{flag}"))
            .collect();
        assert!(missing.is_empty(), "flags without env: {missing:?}");
    }

    #[test]
    fn one_flag_has_one_env_var_in_every_role_and_an_env_var_one_flag() {
        let named: Vec<(String, String)> = flags()
            .into_iter()
            .map(|(_, flag, env)| (flag, env.unwrap_or_default()))
            .collect();
        let flag_to_envs = ambiguous(named.iter().cloned());
        assert!(
            flag_to_envs.is_empty(),
            "one flag, several env vars: {flag_to_envs:?}"
        );
        let env_to_flags = ambiguous(named.into_iter().map(|(flag, env)| (env, flag)));
        assert!(
            env_to_flags.is_empty(),
            "one env var, several flags: {env_to_flags:?}"
        );
    }
}
