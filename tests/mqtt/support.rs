//! Brokers the tests control, clients, topics and waiting helpers.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use iotsupport::config::{unique_client_id, MqttSettings, MqttUrl};
use iotsupport::mqtt::{MqttClient, ReceivedMessage, SubscribeOptions, Subscription};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

pub fn services_required() -> bool {
    std::env::var("IOTSUPPORT_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// The broker `scripts/test.sh` started, or `None` with a SKIP line.
pub fn shared_broker(test: &str) -> Option<MqttUrl> {
    match std::env::var("IOTSUPPORT_TEST_MQTT_URL") {
        Ok(url) => Some(MqttUrl::parse(&url).expect("IOTSUPPORT_TEST_MQTT_URL")),
        Err(_) if services_required() => panic!("{test}: IOTSUPPORT_TEST_MQTT_URL not set"),
        Err(_) => {
            eprintln!("SKIP {test}: no MQTT broker configured; run scripts/test.sh");
            None
        }
    }
}

/// The mosquitto binary for tests that run their own broker, or `None` with a SKIP line.
pub fn mosquitto_binary(test: &str) -> Option<PathBuf> {
    match std::env::var("IOTSUPPORT_TEST_MOSQUITTO") {
        Ok(path) => Some(PathBuf::from(path)),
        Err(_) if services_required() => panic!("{test}: IOTSUPPORT_TEST_MOSQUITTO not set"),
        Err(_) => {
            eprintln!("SKIP {test}: no mosquitto binary configured; run scripts/test.sh");
            None
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Mosquitto process this test controls, listening on 127.0.0.1 only.
pub struct Broker {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl Broker {
    /// Starts a broker with the minimal configuration; `None` (SKIP) without a mosquitto binary.
    pub async fn start(test: &str) -> Option<Broker> {
        Broker::start_with(test, "", &[]).await
    }

    /// Starts a broker with the minimal configuration plus `extra` lines, in which `{dir}` names
    /// the directory holding `files` (name, contents).
    pub async fn start_with(test: &str, extra: &str, files: &[(&str, &str)]) -> Option<Broker> {
        let binary = mosquitto_binary(test)?;
        let dir = tempfile::tempdir().unwrap();
        // Started as root, mosquitto drops to its own user: it must still read these files.
        set_mode(dir.path(), 0o755);
        for (name, contents) in files {
            let path = dir.path().join(name);
            std::fs::write(&path, contents).unwrap();
            set_mode(&path, 0o644);
        }
        let port = free_port();
        let extra = extra.replace("{dir}", &dir.path().display().to_string());
        let config = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             log_dest stderr\nlog_type all\n{extra}\n"
        );
        let config_path = dir.path().join("mosquitto.conf");
        std::fs::write(&config_path, config).unwrap();
        set_mode(&config_path, 0o644);
        let mut broker = Broker {
            binary,
            port,
            dir,
            child: None,
        };
        broker.run().await;
        Some(broker)
    }

    async fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("log"))
            .unwrap();
        let child = std::process::Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> MqttUrl {
        MqttUrl::parse(&format!("mqtt://127.0.0.1:{}", self.port)).unwrap()
    }

    /// Kills the broker (no goodbye to its clients: their connections just end).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.run().await;
    }

    /// SIGSTOP / SIGCONT: a frozen broker keeps its connections open but answers nothing.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen broker must be thawed to die cleanly.
            let _ = std::process::Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
        self.kill();
    }
}

pub fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn settings(url: &MqttUrl) -> MqttSettings {
    let mut settings = MqttSettings::for_url(url.clone());
    settings.client_id = unique_client_id("iotsupport-test");
    settings.publish_timeout = Duration::from_secs(5);
    settings
}

/// A started client and the token that stops it (cancelled when the guard is dropped).
pub struct Running {
    pub client: MqttClient,
    pub shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl std::ops::Deref for Running {
    type Target = MqttClient;
    fn deref(&self) -> &MqttClient {
        &self.client
    }
}

pub fn start(settings: MqttSettings) -> Running {
    let shutdown = CancellationToken::new();
    let client = MqttClient::start(&settings, shutdown.clone()).expect("start");
    Running { client, shutdown }
}

pub fn unique_topic(test: &str) -> String {
    format!("iotsupport-test/{test}/{}", uuid::Uuid::new_v4().simple())
}

pub async fn subscribed(
    client: &MqttClient,
    topic: &str,
    options: SubscribeOptions,
) -> Subscription {
    let mut subscription = client.subscribe(topic, options).unwrap();
    assert!(
        subscription.wait_active(Duration::from_secs(10)).await,
        "the broker did not grant {topic}"
    );
    subscription
}

pub async fn next(subscription: &mut Subscription) -> ReceivedMessage {
    timeout(Duration::from_secs(10), subscription.recv())
        .await
        .expect("a message within 10 s")
        .expect("the subscription is open")
}

/// Whatever arrives within `quiet` of the previous message (or of the call).
pub async fn drain(subscription: &mut Subscription, quiet: Duration) -> Vec<ReceivedMessage> {
    let mut messages = Vec::new();
    while let Ok(Some(message)) = timeout(quiet, subscription.recv()).await {
        messages.push(message);
    }
    messages
}

pub async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
