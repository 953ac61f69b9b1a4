//! `ferry <role> --check-config`: a role's configuration through the same parsing and checks its
//! start-up uses, then a connection to its NATS server, without serving. Install checks run it on
//! every container the chart, deploy/ and the operator render.

use std::collections::BTreeSet;
use std::time::Duration;

use clap::CommandFactory;

use crate::cli::{Cli, NatsArgs, Role};
use crate::queue::{Queue, QueueSettings, Role as QueueRole};

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
    let (name, nats, connection) = match &role {
        Role::Gateway(args) => {
            crate::gateway::config(args)?;
            let connection = args.nats.connection()?.for_role(QueueRole::Gateway);
            ("gateway", &args.nats, connection)
        }
        Role::Forwarder(args) => {
            let (endpoint, _) = crate::forwarder::config(args)?;
            // As the forwarder connects: its endpoint's own credentials may use no other inbox.
            let connection = args.nats.connection()?.for_forwarder_of(&endpoint);
            ("forwarder", &args.nats, connection)
        }
        Role::Dispatcher(args) => {
            crate::dispatcher::clients(args)?;
            args.seal.key_ring()?;
            let connection = args.nats.connection()?.for_role(QueueRole::Dispatcher);
            ("dispatcher", &args.nats, connection)
        }
        Role::Operator(args) => {
            crate::operator::settings(args);
            crate::operator::forwarder_creds_issuing(&args.forwarder_creds)?;
            args.seal.key_ring()?;
            let connection = args.nats.connection()?.for_role(QueueRole::Operator);
            ("operator", &args.nats, connection)
        }
        Role::Dev(_) => return Err(Error::Role("dev").into()),
        Role::Crd => return Err(Error::Role("crd").into()),
        Role::NatsAuth(_) => return Err(Error::Role("nats-auth").into()),
        Role::Bench(_) => return Err(Error::Role("bench").into()),
        Role::BenchModel(_) => return Err(Error::Role("bench-model").into()),
    };
    check_env(name, std::env::vars().map(|(key, _)| key))?;
    connect(nats, &connection).await?;
    println!(
        "ferry {name}: configuration valid, NATS at {} reached",
        nats.url
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

/// Connects as the role would, which also checks that the server takes the retention.
async fn connect(nats: &NatsArgs, connection: &crate::queue::Connection) -> anyhow::Result<()> {
    let settings = QueueSettings {
        result_retention: nats.result_retention,
        ..Default::default()
    };
    Queue::connect(connection, settings, NATS_WAIT).await?;
    Ok(())
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
