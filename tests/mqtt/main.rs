//! The MQTT client (`src/mqtt/`) against a real Mosquitto.
//!
//! `scripts/test.sh` starts a shared broker (`IOTSUPPORT_TEST_MQTT_URL`) and names the binary
//! (`IOTSUPPORT_TEST_MOSQUITTO`), which tests that kill, freeze or restart a broker use to start
//! their own on a free 127.0.0.1 port. Without them these tests print `SKIP` and pass (they fail
//! under `IOTSUPPORT_TEST_REQUIRE_SERVICES=1`); the ones that need no broker always run. Module
//! names start with `mqtt_` so that `scripts/test.sh mqtt` selects them.

mod mqtt_delivery;
mod mqtt_failures;
mod mqtt_lifecycle;
mod support;
