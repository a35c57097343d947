//! A local OpenID Connect provider for trying browser sign-in without a real one, and for
//! `scripts/ui-check.sh`: the test suite's issuer (`tests/support/issuer.rs`) on a port of your
//! choice, signing one person in at once (no password page) as client `--client-id`.
//!
//! ```text
//! cargo run --example oidc_issuer -- --port 8180 --client-id iotsupport-ui
//! # then: OIDC_ENABLED=true OIDC_ISSUER_URL=http://127.0.0.1:8180/realms/iot \
//! #       OIDC_AUDIENCE=iotsupport OIDC_CLIENT_ID=iotsupport-ui cargo run -- serve
//! ```
//!
//! It prints the issuer URL on stdout and serves until killed. For development only: anyone who
//! reaches it is signed in as "Ada Lovelace" with the `editor` and `pipeline` roles.

#[path = "../tests/support/issuer.rs"]
mod issuer;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Port on 127.0.0.1 (0: any free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// The client id iotsupport signs in as (`OIDC_CLIENT_ID`).
    #[arg(long, default_value = "iotsupport")]
    client_id: String,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let key = issuer::EcKey::generate("example-key");
    let provider =
        issuer::TestIssuer::start_on(&format!("127.0.0.1:{}", args.port), vec![key.jwk()]).await;
    let user = provider.claims();
    provider.enable_login(issuer::LoginSetup::new(key, &args.client_id, user));
    println!("{}", provider.issuer);
    // Serve until killed.
    std::future::pending::<()>().await;
}
