//! Spend and budgets: dollars charged from the usage backends report, at configured prices,
//! added atomically to counters in the store per UTC day and month, by key, route and backend
//! (`spend:<period>:<dimension>:<name>`), with what local answers saved against the route's
//! cloud price beside them (`savings:...`). A key's budget is its day's and month's counters.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::keys::VirtualKey;
use crate::error::Error;
use crate::store::{BudgetCheck, Store, counter_value};

/// How long counters are kept after their last charge (for reports).
pub const COUNTER_TTL: Duration = Duration::from_secs(400 * 86_400);

/// The UTC date of Unix second `secs`: (year, month, day).
pub fn civil_date(secs: u64) -> (i64, u32, u32) {
    // Howard Hinnant's days-to-civil.
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD` and `YYYY-MM` of Unix second `secs`.
pub fn periods(secs: u64) -> (String, String) {
    let (y, m, d) = civil_date(secs);
    (format!("{y:04}-{m:02}-{d:02}"), format!("{y:04}-{m:02}"))
}

/// One answer's charge.
#[derive(Debug, Clone, Default)]
pub struct Charge {
    /// The virtual key's id, when the request carried one.
    pub key: Option<String>,
    /// The route (model id asked for).
    pub route: String,
    /// The backend that answered.
    pub backend: String,
    /// Dollars at the backend's prices.
    pub cost: f64,
    /// Dollars a local answer saved against the route's cloud price.
    pub savings: f64,
}

/// The counters `charge` adds to at Unix second `now_secs`, with the amount each gets.
pub fn deltas(charge: &Charge, now_secs: u64) -> Vec<(String, f64)> {
    let mut deltas = Vec::new();
    if charge.cost <= 0.0 && charge.savings <= 0.0 {
        return deltas;
    }
    let (day, month) = periods(now_secs);
    for (family, amount) in [("spend", charge.cost), ("savings", charge.savings)] {
        if amount <= 0.0 {
            continue;
        }
        for period in [&day, &month] {
            deltas.push((format!("{family}:{period}:total:all"), amount));
            deltas.push((format!("{family}:{period}:route:{}", charge.route), amount));
            deltas.push((
                format!("{family}:{period}:backend:{}", charge.backend),
                amount,
            ));
            if let Some(key) = &charge.key {
                deltas.push((format!("{family}:{period}:key:{key}"), amount));
            }
        }
    }
    deltas
}

/// One of a key's budgets, as a store check.
#[derive(Debug, Clone)]
pub struct Budget {
    /// The spend counter and its limit.
    pub check: BudgetCheck,
    /// The key's id.
    key: String,
    /// `daily` or `monthly`.
    span: &'static str,
    /// `day 2026-12-07` or `month 2026-12`.
    period: String,
}

impl Budget {
    /// The 429 of a key that spent `spent` dollars of `budgets[index]`, as the store answered.
    pub fn refused(budgets: &[Self], index: usize, spent: f64) -> Error {
        Error::InsufficientQuota(match budgets.get(index) {
            Some(b) => format!(
                "key {} spent ${spent:.6} of its {} budget of ${:.2} (UTC {})",
                b.key, b.span, b.check.limit, b.period
            ),
            None => format!("spent ${spent:.6}, over budget"),
        })
    }
}

/// The day's and month's budgets of `key` at Unix second `now_secs` (none where it has none).
pub fn budgets(key: &VirtualKey, now_secs: u64) -> Vec<Budget> {
    let (daily, monthly) = (key.spec.budget_daily_usd, key.spec.budget_monthly_usd);
    if daily.is_none() && monthly.is_none() {
        return Vec::new();
    }
    let (day, month) = periods(now_secs);
    [
        ("daily", "day", day, daily),
        ("monthly", "month", month, monthly),
    ]
    .into_iter()
    .filter_map(|(span, unit, period, limit)| {
        limit.map(|limit| Budget {
            check: BudgetCheck {
                counter: format!("spend:{period}:key:{}", key.id),
                limit,
            },
            key: key.id.clone(),
            span,
            period: format!("{unit} {period}"),
        })
    })
    .collect()
}

/// One period's spend and savings, by dimension and name.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SpendReport {
    /// `YYYY-MM-DD` or `YYYY-MM`.
    pub period: String,
    /// Dollars spent in all.
    pub total_usd: f64,
    /// Dollars local answers saved in all.
    pub savings_usd: f64,
    /// Spend by `key` (id), `route` and `backend`.
    pub spend: BTreeMap<String, BTreeMap<String, f64>>,
    /// Savings by the same.
    pub savings: BTreeMap<String, BTreeMap<String, f64>>,
}

/// The report of `period` (`YYYY-MM-DD` or `YYYY-MM`).
pub async fn report(store: &dyn Store, period: &str) -> Result<SpendReport, Error> {
    let mut out = SpendReport {
        period: period.to_owned(),
        ..SpendReport::default()
    };
    for family in ["spend", "savings"] {
        let prefix = format!("{family}:{period}:");
        for (key, value) in store.list(&prefix).await? {
            let rest = &key[prefix.len()..];
            let Some((dimension, name)) = rest.split_once(':') else {
                continue;
            };
            let amount = counter_value(Some(&value));
            match (family, dimension) {
                ("spend", "total") => out.total_usd = amount,
                ("savings", "total") => out.savings_usd = amount,
                ("spend", _) => {
                    out.spend
                        .entry(dimension.to_owned())
                        .or_default()
                        .insert(name.to_owned(), amount);
                }
                _ => {
                    out.savings
                        .entry(dimension.to_owned())
                        .or_default()
                        .insert(name.to_owned(), amount);
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Admission;
    use crate::store::embedded::EmbeddedStore;

    /// Refuses a key that spent its day's or month's budget.
    async fn check_budget(store: &dyn Store, key: &VirtualKey, now_secs: u64) -> Result<(), Error> {
        let budgets = budgets(key, now_secs);
        if budgets.is_empty() {
            return Ok(());
        }
        let checks: Vec<BudgetCheck> = budgets.iter().map(|b| b.check.clone()).collect();
        match store.admit(&checks, &[], false).await? {
            Admission::OverBudget { index, spent } => Err(Budget::refused(&budgets, index, spent)),
            Admission::Rated { .. } => Ok(()),
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(951_782_400), (2000, 2, 29));
        assert_eq!(periods(1_796_647_558).0, "2026-12-07");
    }

    #[tokio::test]
    async fn charges_add_up_by_dimension_and_budgets_refuse_once_spent() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.log")).unwrap();
        let now = 1_796_647_558;
        let key: VirtualKey = serde_json::from_value(serde_json::json!({
            "id": "vk_a", "hash": "00", "prefix": "sk", "created_at": 0,
            "budget_daily_usd": 0.01
        }))
        .unwrap();
        check_budget(&*store, &key, now).await.unwrap();
        let c = Charge {
            key: Some("vk_a".into()),
            route: "gpt".into(),
            backend: "openai".into(),
            cost: 0.006,
            savings: 0.0,
        };
        store.incr_many(&deltas(&c, now), None).await.unwrap();
        check_budget(&*store, &key, now).await.unwrap();
        store.incr_many(&deltas(&c, now), None).await.unwrap();
        let e = check_budget(&*store, &key, now).await.unwrap_err();
        assert!(matches!(e, Error::InsufficientQuota(_)), "{e}");
        let local = Charge {
            key: None,
            route: "gpt".into(),
            backend: "local".into(),
            cost: 0.0,
            savings: 0.5,
        };
        store.incr_many(&deltas(&local, now), None).await.unwrap();
        let r = report(&*store, "2026-12-07").await.unwrap();
        assert!((r.total_usd - 0.012).abs() < 1e-12);
        assert!((r.spend["key"]["vk_a"] - 0.012).abs() < 1e-12);
        assert!((r.spend["backend"]["openai"] - 0.012).abs() < 1e-12);
        assert_eq!(r.savings["backend"]["local"], 0.5);
        assert_eq!(r.savings_usd, 0.5);
        let m = report(&*store, "2026-12").await.unwrap();
        assert!((m.spend["key"]["vk_a"] - 0.012).abs() < 1e-12);
    }
}
