//! `ferry <role> --check-config`: a role's configuration through the same parsing and checks its
//! start-up uses, then a connection to its NATS server, without serving. Install checks run it on
//! every container the chart, deploy/ and the operator render.

use std::collections::BTreeSet;
use std::time::Duration;

use clap::CommandFactory;

use super::{Cli, Role};
use crate::queue::Queue;

/// How long the check waits for the NATS server to answer.
const NATS_WAIT: Duration = Duration::from_secs(10);
/// Variables with this prefix configure ferry: one that no flag reads is a typo or a leftover.
const ENV_PREFIX: &str = "FERRY_";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--check-config applies to gateway, forwarder, dispatcher and operator, not `{0}`")]
    Role(&'static str),
    #[error("{names} set, but no flag of `ferry {role}` reads it")]
    UnknownEnv { role: &'static str, names: String },
}

pub async fn run(role: Role) -> anyhow::Result<()> {
    // The settings the role would start with, built the same way.
    let (name, connection, queue) = match &role {
        Role::Gateway(args) => {
            let settings = args.settings()?;
            ("gateway", settings.connection, settings.queue)
        }
        Role::Forwarder(args) => {
            let settings = args.settings()?;
            ("forwarder", settings.connection, settings.queue)
        }
        Role::Dispatcher(args) => {
            let settings = args.settings()?;
            ("dispatcher", settings.connection, settings.queue)
        }
        Role::Operator(args) => {
            let settings = args.settings()?;
            ("operator", settings.connection, settings.queue)
        }
        Role::Dev(_) => return Err(Error::Role("dev").into()),
        Role::Crd => return Err(Error::Role("crd").into()),
        Role::NatsAuth(_) => return Err(Error::Role("nats-auth").into()),
        Role::ServingToken(_) => return Err(Error::Role("serving-token").into()),
        Role::Bench(_) => return Err(Error::Role("bench").into()),
        Role::BenchModel(_) => return Err(Error::Role("bench-model").into()),
        Role::Tasks(_) => return Err(Error::Role("tasks").into()),
        Role::Callbacks(_) => return Err(Error::Role("callbacks").into()),
        Role::Completions(_) => return Err(Error::Role("completions").into()),
        Role::FetchArtifact(_) => return Err(Error::Role("fetch-artifact").into()),
    };
    check_env(name, std::env::vars().map(|(key, _)| key))?;
    // Connects as the role would, which also checks that the server takes the retention.
    Queue::connect(&connection, queue, NATS_WAIT).await?;
    println!(
        "ferry {name}: configuration valid, NATS at {} reached",
        connection.url()
    );
    Ok(())
}

/// Refuses `FERRY_*` variables that neither the role nor the global flags read.
fn check_env(role: &'static str, names: impl Iterator<Item = String>) -> Result<(), Error> {
    let cli = Cli::command();
    let known: BTreeSet<String> = cli
        .get_arguments()
        .chain(
            cli.find_subcommand(role)
                .into_iter()
                .flat_map(|sub| sub.get_arguments()),
        )
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect();
    let unknown: Vec<String> = names
        .filter(|name| name.starts_with(ENV_PREFIX) && !known.contains(name))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(Error::UnknownEnv {
            role,
            names: unknown.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|name| name.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn variables_a_flag_of_the_role_reads_pass() {
        let env = names(&[
            "FERRY_NATS_URL",
            "FERRY_MODEL_URL",
            "FERRY_LOG_FORMAT",
            "PATH",
        ]);
        assert!(check_env("forwarder", env).is_ok());
    }

    #[test]
    fn variables_of_another_role_or_misspelt_are_refused() {
        let error = check_env("dispatcher", names(&["FERRY_API_KEYS", "FERRY_NATS_URL"]))
            .expect_err("the dispatcher reads no API keys");
        assert!(error.to_string().contains("FERRY_API_KEYS"), "{error}");
        assert!(check_env("gateway", names(&["FERRY_LISTN"])).is_err());
    }
}
