//! A PostgreSQL `LISTEN` that is made again when it could not be made: a process started before
//! its database (a compose file, a Kubernetes rollout) would otherwise poll for the rest of its
//! life, its live updates a poll interval late. Once made, sqlx's `PgListener` reconnects on its
//! own; this covers the first connection. SQLite has no `LISTEN`: never one.

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::time::Instant;

use super::Db;

/// The first retry's wait; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

pub struct Listen {
    channel: &'static str,
    /// What the log lines are called (`events_listen…`, `device_logs_listen…`).
    name: &'static str,
    listener: Option<PgListener>,
    retry_at: Instant,
    backoff: Duration,
}

impl Listen {
    /// Listens on `channel` if the database is PostgreSQL and answers now; else it is tried
    /// again by [`Self::retry`].
    pub async fn start(db: &Db, channel: &'static str, name: &'static str) -> Self {
        let mut listen = Listen {
            channel,
            name,
            listener: None,
            retry_at: Instant::now(),
            backoff: FIRST_BACKOFF,
        };
        listen.retry(db).await;
        listen
    }

    /// Makes the `LISTEN` if there is none and its back-off has passed.
    pub async fn retry(&mut self, db: &Db) {
        let Db::Postgres(pool) = db else {
            return;
        };
        if self.listener.is_some() || Instant::now() < self.retry_at {
            return;
        }
        let made = async {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen(self.channel).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match made {
            Ok(listener) => {
                if self.backoff > FIRST_BACKOFF {
                    tracing::info!(listener = self.name, "listen_established");
                }
                self.listener = Some(listener);
            }
            Err(e) => {
                if self.backoff == FIRST_BACKOFF {
                    tracing::warn!(listener = self.name, error = %e,
                        "listen_failed: polling meanwhile, trying again with back-off");
                }
                self.retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// The listener, when there is one.
    pub fn listener(&mut self) -> Option<&mut PgListener> {
        self.listener.as_mut()
    }
}
