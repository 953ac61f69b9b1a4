//! Connections to a real nats-server that demands TLS with client certificates and credentials.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use super::*;
use crate::queue::testing::{TestServer as NatsServer, connects, is_refused, start_with_config};
use crate::queue::{Queue, QueueSettings};

/// A throwaway CA with a server certificate for 127.0.0.1 and a client certificate, as PEM files.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn generate() -> Certs {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text);
        write("ca.pem", ca_cert.pem()).expect("write");
        for (name, san) in [("server", "127.0.0.1"), ("client", "ferry-client")] {
            let key = KeyPair::generate().expect("key");
            let cert = CertificateParams::new(vec![san.to_owned()])
                .expect("params")
                .signed_by(&key, &issuer)
                .expect("certificate");
            write(&format!("{name}.pem"), cert.pem()).expect("write");
            write(&format!("{name}-key.pem"), key.serialize_pem()).expect("write");
        }
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn client_tls(&self) -> Tls {
        Tls {
            ca_file: Some(self.path("ca.pem")),
            client_cert: Some(ClientCert {
                cert_file: self.path("client.pem"),
                key_file: self.path("client-key.pem"),
            }),
            required: true,
        }
    }
}

fn secret_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{text}\n")).expect("write secret");
    path
}

async fn server(certs: &Certs, authorization: &str) -> NatsServer {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = format!(
        "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: true }}\n{authorization}\n",
        certs.path("server.pem"),
        certs.path("server-key.pem"),
        certs.path("ca.pem"),
    );
    start_with_config(&config).await
}

#[tokio::test]
async fn user_password_and_nkey_over_verified_tls_connect_and_nothing_less_does() {
    let certs = Certs::generate();
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().expect("seed");
    let nats = server(
        &certs,
        &format!(
            r#"authorization {{ users = [ {{ user: "gateway", password: "pa55word" }}, {{ nkey: "{}" }} ] }}"#,
            user.public_key()
        ),
    )
    .await;
    let url = nats.connection.url();
    let secrets = certs.dir.path();
    let password = Credentials::UserPassword {
        user: "gateway".into(),
        password_file: secret_file(secrets, "password", "pa55word"),
    };
    let nkey = Credentials::NkeySeedFile(secret_file(secrets, "seed", &seed));
    for credentials in [password.clone(), nkey] {
        let connection =
            Connection::new(url, credentials.clone(), certs.client_tls()).expect("URL");
        connects(&connection)
            .await
            .unwrap_or_else(|error| panic!("{credentials:?}: {error:?}"));
    }

    let tls = certs.client_tls();
    let no_credentials = Connection::new(url, Credentials::None, tls.clone()).expect("URL");
    is_refused(connects(&no_credentials).await, "without credentials");
    let wrong = Credentials::UserPassword {
        user: "gateway".into(),
        password_file: secret_file(secrets, "wrong", "guess"),
    };
    let wrong_password = Connection::new(url, wrong, tls.clone()).expect("URL");
    is_refused(connects(&wrong_password).await, "with a wrong password");
    let no_client_cert = Tls {
        client_cert: None,
        ..tls.clone()
    };
    let without_cert = Connection::new(url, password.clone(), no_client_cert).expect("URL");
    is_refused(
        connects(&without_cert).await,
        "without a client certificate",
    );
    let no_ca = Tls {
        ca_file: None,
        ..tls
    };
    let unverified = Connection::new(url, password, no_ca).expect("URL");
    is_refused(
        connects(&unverified).await,
        "without trusting the server's CA",
    );
}

#[tokio::test]
async fn a_token_file_connects_and_a_wrong_token_is_refused_at_once() {
    let certs = Certs::generate();
    let nats = server(&certs, r#"authorization { token: "t0ken-of-ferry" }"#).await;
    let url = nats.connection.url();
    let secrets = certs.dir.path();
    let token = Credentials::TokenFile(secret_file(secrets, "token", "t0ken-of-ferry"));
    let connection = Connection::new(url, token, certs.client_tls()).expect("URL");
    connects(&connection)
        .await
        .expect("connects with the token");
    let wrong = Credentials::TokenFile(secret_file(secrets, "wrong", "guess"));
    let connection = Connection::new(url, wrong, certs.client_tls()).expect("URL");
    // A long wait: a refused authorization must end it at once rather than be retried.
    let refused = Queue::connect(
        &connection,
        QueueSettings::default(),
        Duration::from_secs(3600),
    );
    is_refused(refused.await, "with a wrong token");
}

#[tokio::test]
async fn a_missing_credentials_file_is_named_in_the_error() {
    let connection = Connection::new(
        "nats://127.0.0.1:1",
        Credentials::TokenFile("/nonexistent/ferry-token".into()),
        Tls::default(),
    )
    .expect("URL");
    let error = connects(&connection).await.err().expect("no token file");
    let source = std::error::Error::source(&error)
        .expect("source")
        .to_string();
    assert!(source.contains("/nonexistent/ferry-token"), "{source}");
}
