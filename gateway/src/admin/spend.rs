//! `/admin/spend`: spend and savings of one UTC day (`?day=YYYY-MM-DD`, today by default) or
//! month (`?month=YYYY-MM`), in all and by key, route and backend.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::controls::keys::unix_now;
use crate::controls::spend::{periods, report};
use crate::error::Error;
use crate::state::AppState;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/admin/spend", get(spend))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Period {
    day: Option<String>,
    month: Option<String>,
}

fn well_formed(text: &str, parts: usize) -> bool {
    let fields: Vec<&str> = text.split('-').collect();
    fields.len() == parts
        && fields.iter().enumerate().all(|(i, f)| {
            f.len() == if i == 0 { 4 } else { 2 } && f.bytes().all(|b| b.is_ascii_digit())
        })
}

async fn spend(State(state): State<Arc<AppState>>, Query(query): Query<Period>) -> Response {
    let period = match Some(query) {
        Some(Period {
            day: Some(_),
            month: Some(_),
        }) => {
            return Error::invalid("give day or month, not both", Some("month")).into_response();
        }
        Some(Period { day: Some(d), .. }) if !well_formed(&d, 3) => {
            return Error::invalid(format!("`{d}` is not YYYY-MM-DD"), Some("day")).into_response();
        }
        Some(Period { month: Some(m), .. }) if !well_formed(&m, 2) => {
            return Error::invalid(format!("`{m}` is not YYYY-MM"), Some("month")).into_response();
        }
        Some(Period { day: Some(d), .. }) => d,
        Some(Period { month: Some(m), .. }) => m,
        _ => periods(unix_now()).0,
    };
    crate::store::wait_up(&*state.store, crate::controls::keys::ADMIN_WAIT).await;
    match report(&*state.store, &period).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}
