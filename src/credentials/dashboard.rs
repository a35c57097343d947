//! The rotation dashboard's grouping (the Python service's rules, SPEC §13): inactive devices go to
//! `inactive` whatever their state; a `TIMEOUT` device whose last completed rotation is at least
//! `ROTATION_CRITICAL_THRESHOLD_DAYS` ago is `critical`, any other `TIMEOUT` device `warning`
//! (also one that never completed a rotation); `OK`, `QUEUED` and `PENDING` are `healthy`.

use chrono::{DateTime, Utc};

use crate::db::rotation::{self as queries, DashboardRow, HealthList};
use crate::db::{DbError, Tx};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardEntry {
    pub row: DashboardRow,
    /// Whole days since the last completed rotation (`None`: never completed).
    pub days_since_rotation: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dashboard {
    pub healthy: Vec<DashboardEntry>,
    pub warning: Vec<DashboardEntry>,
    pub critical: Vec<DashboardEntry>,
    pub inactive: Vec<DashboardEntry>,
}

pub fn group(rows: Vec<DashboardRow>, threshold_days: i64, now: DateTime<Utc>) -> Dashboard {
    let mut dashboard = Dashboard::default();
    for row in rows {
        let days_since_rotation = row.last_rotation_completed_at.map(|t| (now - t).num_days());
        let entry = DashboardEntry {
            days_since_rotation,
            row,
        };
        let group = if !entry.row.active {
            &mut dashboard.inactive
        } else if entry.row.rotation_state == "TIMEOUT" {
            if days_since_rotation.is_some_and(|d| d >= threshold_days) {
                &mut dashboard.critical
            } else {
                &mut dashboard.warning
            }
        } else {
            &mut dashboard.healthy
        };
        group.push(entry);
    }
    dashboard
}

fn entries(rows: Vec<DashboardRow>, now: DateTime<Utc>) -> Vec<DashboardEntry> {
    rows.into_iter()
        .map(|row| DashboardEntry {
            days_since_rotation: row.last_rotation_completed_at.map(|t| (now - t).num_days()),
            row,
        })
        .collect()
}

/// The dashboard with at most `limit` devices per list (in key order) and the full count of
/// each list (healthy, warning, critical, inactive). The rule is [`group`]'s, applied in SQL so
/// that the cost is that of the pages and the counts (`queries::dashboard_counts`), not of the fleet.
pub async fn capped(
    tx: &mut Tx,
    threshold_days: i64,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<(Dashboard, [i64; 4]), DbError> {
    let cutoff = now - chrono::Duration::days(threshold_days);
    let counts = queries::dashboard_counts(tx, cutoff).await?;
    // An empty list needs no page: skipping it saves reading, say, every TIMEOUT device in key
    // order to find no warning one.
    let mut page = async |list: HealthList| -> Result<Vec<DashboardEntry>, DbError> {
        if counts[list as usize] == 0 {
            return Ok(Vec::new());
        }
        Ok(entries(
            queries::dashboard_page(tx, list, cutoff, limit).await?,
            now,
        ))
    };
    let dashboard = Dashboard {
        healthy: page(HealthList::Healthy).await?,
        warning: page(HealthList::Warning).await?,
        critical: page(HealthList::Critical).await?,
        inactive: page(HealthList::Inactive).await?,
    };
    Ok((dashboard, counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        state: &str,
        active: bool,
        completed_days_ago: Option<i64>,
        now: DateTime<Utc>,
    ) -> DashboardRow {
        DashboardRow {
            id: 1,
            key: "abcd2345".into(),
            device_name: None,
            device_model_code: "thermo_v1".into(),
            active,
            rotation_state: state.into(),
            last_rotation_completed_at: completed_days_ago.map(|d| now - chrono::Duration::days(d)),
        }
    }

    #[test]
    fn devices_are_grouped_as_the_original_does() {
        let now = Utc::now();
        let d = group(
            vec![
                row("OK", true, None, now),
                row("QUEUED", true, None, now),
                row("PENDING", true, None, now),
                row("TIMEOUT", true, Some(6), now),
                row("TIMEOUT", true, Some(8), now),
                row("TIMEOUT", true, None, now),
                row("OK", false, None, now),
                row("TIMEOUT", false, Some(30), now),
            ],
            7,
            now,
        );
        assert_eq!(d.healthy.len(), 3);
        assert_eq!(d.warning.len(), 2);
        assert_eq!(d.critical.len(), 1);
        assert_eq!(d.critical[0].days_since_rotation, Some(8));
        assert_eq!(d.inactive.len(), 2);
        assert!(d.warning.iter().any(|e| e.days_since_rotation.is_none()));
    }
}
