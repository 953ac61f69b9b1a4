//! ferry's integration tests: one binary, one module per area, one `support` kit. Every test
//! starts real processes (nats-server, the `ferry` binary's roles, model servers, callback
//! receivers, a stand-in Kubernetes API server) on 127.0.0.1 with ports chosen at run time.
//! Run one area with `cargo nextest run --test it -E 'test(/^callbacks::/)'`.

mod autoscale;
mod bench;
mod bounds;
mod callbacks;
mod cli_ops;
mod console;
mod dev;
mod e2e;
mod faults;
mod gateway_cluster;
mod launch;
mod logs;
mod metrics;
mod openapi;
mod operator;
mod outage;
mod payloads;
mod rolling;
mod rollout;
mod static_gateways;
mod support;
mod tasks;
