//! A stand-in Kubernetes API server (`kube_apiserver.py`: PyPI `kmock` plus a small shim) on
//! 127.0.0.1, a kubeconfig pointing at it, and JSON helpers for talking to it.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct KubeApiServer {
    pub base: String,
    pub http: reqwest::Client,
    kubeconfig: tempfile::NamedTempFile,
    _child: Child,
}

impl KubeApiServer {
    pub async fn start(extra_args: &[&str]) -> KubeApiServer {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/kube_apiserver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(extra_args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the stand-in API server (scripts/setup installs kmock)");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let base = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("reads") {
                if let Some(url) = line.strip_prefix("listening on ") {
                    return url.to_owned();
                }
            }
            panic!("the stand-in API server exited (is kmock installed? scripts/setup)");
        })
        .await
        .expect("the stand-in API server listens");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let kubeconfig = tempfile::NamedTempFile::new().expect("temp file");
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: stand-in\n  cluster: {{server: \"{base}\"}}\n\
             users:\n- name: tester\n  user: {{}}\ncontexts:\n- name: stand-in\n  context: {{cluster: stand-in, user: tester, namespace: default}}\n\
             current-context: stand-in\n"
        );
        std::fs::write(kubeconfig.path(), config).expect("kubeconfig written");
        KubeApiServer {
            base,
            http: super::http_client(),
            kubeconfig,
            _child: child,
        }
    }

    pub fn kubeconfig(&self) -> String {
        self.kubeconfig.path().display().to_string()
    }

    pub async fn get(&self, path: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        match response.status() {
            StatusCode::NOT_FOUND => None,
            status => {
                assert!(status.is_success(), "GET {path}: {status}");
                Some(response.json().await.expect("json"))
            }
        }
    }

    pub async fn create(&self, collection: &str, object: &Value) -> Value {
        let response = self
            .http
            .post(format!("{}{collection}", self.base))
            .json(object)
            .send()
            .await
            .expect("POST");
        assert!(
            response.status().is_success(),
            "POST {collection}: {}",
            response.status()
        );
        response.json().await.expect("json")
    }

    pub async fn merge_patch(&self, path: &str, patch: &Value) -> Value {
        let response = self
            .http
            .patch(format!("{}{path}", self.base))
            .header("Content-Type", "application/merge-patch+json")
            .body(patch.to_string())
            .send()
            .await
            .expect("PATCH");
        assert!(
            response.status().is_success(),
            "PATCH {path}: {}",
            response.status()
        );
        response.json().await.expect("json")
    }

    pub async fn delete(&self, path: &str) {
        let response = self
            .http
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .expect("DELETE");
        assert!(
            response.status().is_success(),
            "DELETE {path}: {}",
            response.status()
        );
    }
}

/// The documents of a YAML manifest file as JSON.
pub fn manifest(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("manifest readable");
    serde_saphyr::from_multiple(&text).expect("YAML")
}
