//! The console in a real browser: headless Debian Chromium, driven through chromedriver
//! (WebDriver), against `ferry dev` serving the examples on 127.0.0.1. It signs in, sees the
//! example endpoint, submits a task and watches it succeed, opens a callback that was
//! dead-lettered because its receiver refused connections, redelivers it to the receiver now
//! listening, and sees it delivered. Each page's screenshot is saved in
//! `target/console-screenshots/` (CI keeps them). Chromium and chromedriver come from
//! `scripts/install-chromium`; without them this test fails, it is never skipped.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(30);

/// Flags that let Chromium run headless here, with a profile of its own and no traffic of its
/// own beyond 127.0.0.1.
const CHROMIUM_FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// A chromedriver and the Chromium session it drives; both end when dropped.
struct Browser {
    client: Client,
    _driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver on PATH (scripts/install-chromium installs it)");
        let driver_url = format!("http://127.0.0.1:{port}");
        let http = http_client();
        eventually("chromedriver ready", WAIT, || async {
            let status = http.get(format!("{driver_url}/status")).send().await.ok()?;
            status.status().is_success().then_some(())
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| (*f).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.push("--window-size=1280,1000".into());
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), json!({ "args": args }));
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&driver_url)
            .await
            .expect("a Chromium session through chromedriver");
        Browser {
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("no {css} on the page: {error}"))
    }

    /// Waits until the element `css` shows text containing `text`; on timeout, saves the page
    /// as `failed.png` and tells what the element showed instead.
    async fn wait_text(&self, css: &str, text: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut shown = None;
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                shown = element.text().await.ok();
            }
            if let Some(shown) = shown.as_ref().filter(|shown| shown.contains(text)) {
                return shown.clone();
            }
            if tokio::time::Instant::now() >= deadline {
                self.screenshot("failed").await;
                panic!("after {WAIT:?}, {css} shows {shown:?}, not {text:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn fill(&self, css: &str, value: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.click_on(Locator::Css(css)).await;
    }

    async fn click_link(&self, text: &str) {
        self.click_on(Locator::LinkText(text)).await;
    }

    /// Clicks the element; one that a live update replaced between finding and clicking is
    /// found again.
    async fn click_on(&self, locator: Locator<'_>) {
        let what = format!("{locator:?} clicked");
        eventually(&what, WAIT, || async {
            let element = self.client.find(locator).await.ok()?;
            element.click().await.ok()
        })
        .await
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

/// `target/console-screenshots/`, beside the tests' own scratch directory.
fn screenshots_dir() -> PathBuf {
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    scratch
        .parent()
        .expect("the scratch directory is inside target/")
        .join("console-screenshots")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signs_in_submits_and_redelivers_a_dead_letter_in_a_browser() {
    // The examples, and an endpoint whose callbacks go to a port nobody listens on yet, retried
    // once after a second.
    let refused = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let manifests = Manifests::with_example_bundle();
    manifests.add(
        "demo-endpoint-callback.yaml",
        &std::fs::read_to_string(examples_dir().join("demo-endpoint-callback.yaml")).unwrap(),
    );
    manifests.add(
        "hooks.yaml",
        &endpoint_yaml(
            "hooks",
            "test-bundle",
            &format!("http://{refused}/cb"),
            "  callbacks:\n    retryScheduleSeconds: [1]\n",
        ),
    );
    let api_keys = format!("{API_KEY}=default");
    let dev = Dev::start_with(manifests.path(), None, &["--api-keys", &api_keys]).await;
    dev.ready_endpoint("demo-endpoint-callback").await;
    dev.ready_endpoint("hooks").await;
    let receiver = Receiver::start().await;
    let browser = Browser::start().await;

    // A key the gateway does not know is refused; the team's key signs in.
    browser
        .client
        .goto(&format!("{}/console", dev.base))
        .await
        .unwrap();
    browser
        .fill("#api-key", "not-a-key-of-any-team-0123456789")
        .await;
    browser.click("form.sign-in button[type=submit]").await;
    browser
        .wait_text("form.sign-in [role=alert]", "not accepted")
        .await;
    browser.screenshot("sign-in").await;
    browser.fill("#api-key", API_KEY).await;
    browser.click("form.sign-in button[type=submit]").await;

    // The endpoints, with their live figures.
    let row = "tr[data-key] td[data-label=Endpoint]";
    browser
        .wait_text("main table", "demo-endpoint-callback")
        .await;
    browser.wait_text("main table", "READY").await;
    browser.wait_text("main table", "0 queued, 0 running").await;
    browser.find(row).await;
    browser.screenshot("endpoints").await;
    browser.client.set_window_size(390, 844).await.unwrap();
    browser.screenshot("endpoints-phone").await;
    browser.client.set_window_size(1280, 1000).await.unwrap();

    // A test task on the example endpoint, watched until it succeeds.
    browser.click_link("demo-endpoint-callback").await;
    browser
        .wait_text("main h1", "Endpoint demo-endpoint-callback")
        .await;
    browser
        .fill("#task-args", r#"{"x": 2, "y": "hello"}"#)
        .await;
    browser.fill("#task-callback", &receiver.url("/done")).await;
    browser.click("form.submit button[type=submit]").await;
    browser.wait_text("form.submit .outcome", "SUCCESS").await;
    let result = browser.wait_text("form.submit .outcome pre", "7").await;
    assert_eq!(result.trim(), "7");
    // The endpoint's recent tasks list it, succeeded.
    let done = browser.find("form.submit .outcome a").await;
    let done = done.text().await.unwrap();
    let recent = "section[aria-labelledby=tasks-title] tbody";
    let listed = browser.wait_text(recent, &done).await;
    assert!(listed.contains("SUCCESS"), "{listed}");
    browser.screenshot("endpoint").await;
    let delivered = receiver.wait_for(1, WAIT).await;
    assert_eq!(delivered[0].body["result"], 7);

    // A task of `hooks`: its callback is refused twice, then dead-lettered.
    browser.click_link("Endpoints").await;
    browser.click_link("hooks").await;
    browser.wait_text("main h1", "Endpoint hooks").await;
    browser.fill("#task-args", r#"{"x": 1, "y": "ab"}"#).await;
    browser.click("form.submit button[type=submit]").await;
    browser.wait_text("form.submit .outcome", "SUCCESS").await;
    browser.click("form.submit .outcome a").await;
    browser.wait_text("main h1", "Task").await;
    let hooks = dev.endpoint_id("hooks").await;
    browser.wait_text("main dl.facts", &hooks).await;
    browser
        .wait_text(
            "main section[aria-labelledby=callback-title]",
            "DEAD LETTERED",
        )
        .await;
    let attempts = browser
        .wait_text("main section[aria-labelledby=callback-title] tbody", "")
        .await;
    assert_eq!(
        attempts.lines().count(),
        2,
        "two refused attempts: {attempts}"
    );
    browser.screenshot("task-dead-lettered").await;

    // The receiver comes up; one click redelivers the callback, and it is delivered.
    let late = Receiver::start_on(refused).await;
    browser
        .click("main section[aria-labelledby=callback-title] button")
        .await;
    browser
        .wait_text("main section[aria-labelledby=callback-title]", "DELIVERED")
        .await;
    browser.wait_text("main [role=status]", "redelivery").await;
    let callbacks = late.wait_for(1, WAIT).await;
    assert_eq!(callbacks[0].body["result"], 3);
    browser.screenshot("task").await;

    // The tally of `hooks`' attempts: two refused, one delivered.
    let expected =
        json!({"delivered": 1, "retried": 1, "dead_lettered": 1, "success_rate": 1.0 / 3.0});
    eventually("the attempts tallied", WAIT, || async {
        let (_, stats) = dev.get(&format!("/v1/model-endpoints/{hooks}/stats")).await;
        (stats["callbacks_last_hour"] == expected).then_some(())
    })
    .await;

    // Two dead letters of `hooks` and one of the example endpoint (their receivers answer 410
    // Gone). The dead letters page of `hooks` lists its two; one is redelivered from its row,
    // then "redeliver all since" takes the other and leaves the other endpoint's.
    let example = dev.endpoint_id("demo-endpoint-callback").await;
    let gone = Receiver::start().await;
    gone.answer_first_with(&[axum::http::StatusCode::GONE]);
    late.answer_first_with(&[axum::http::StatusCode::GONE, axum::http::StatusCode::GONE]);
    let args = json!({"args": {"x": 1, "y": "abc"}});
    let other_letter = dev
        .submit(
            &example,
            json!({"args": args["args"], "callback_url": gone.url("/gone")}),
        )
        .await;
    let first = dev.submit(&hooks, args.clone()).await;
    let second = dev.submit(&hooks, args).await;
    for task in [&other_letter, &first, &second] {
        eventually("a dead letter", WAIT, || async {
            (dev.task(task).await["callback"]["state"] == "DEAD_LETTERED").then_some(())
        })
        .await;
    }
    browser.click_link(&hooks).await;
    browser.click_link("Dead letters of this endpoint").await;
    browser.wait_text("main h1", "Dead letters").await;
    let letters = "main table tbody";
    browser.wait_text(letters, &first).await;
    let listed = browser.wait_text(letters, &second).await;
    assert!(!listed.contains(&other_letter), "{listed}");
    browser.screenshot("dead-letters").await;

    browser
        .click(&format!(
            "button[aria-label='Redeliver the callback of task {first}']"
        ))
        .await;
    browser
        .wait_text("main [role=status]", "is queued for redelivery")
        .await;
    let callbacks = late.wait_for(4, WAIT).await;
    assert_eq!(callbacks[3].headers["webhook-id"], first.as_str());

    // A date field's typing order depends on the locale: the value is set as a form would hold it.
    browser
        .client
        .execute(
            "document.getElementById('redeliver-since').value = arguments[0]",
            vec![json!("2020-01-01T00:00")],
        )
        .await
        .unwrap();
    browser.click("main form button[type=submit]").await;
    browser
        .wait_text("main [role=status]", "1 callback queued for redelivery")
        .await;
    let callbacks = late.wait_for(5, WAIT).await;
    assert_eq!(callbacks[4].headers["webhook-id"], second.as_str());
    browser.wait_text("main", "No dead letters.").await;
    assert_eq!(
        dev.task(&other_letter).await["callback"]["state"],
        "DEAD_LETTERED",
        "another endpoint's letter stays"
    );
}
