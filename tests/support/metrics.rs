//! Reading `/metrics` in tests: a server process's listener, or an in-process app's metrics
//! as its listener would serve them.

use std::collections::BTreeMap;

use pexper_platform::metrics::{DatabaseGauges, scrape};

use crate::TestApp;

/// A `/metrics` body's series: each name with its labels, and its value.
pub fn series(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

/// One series' value (`name{labels}` exactly as served), if it is served.
pub fn metric(body: &str, series_name: &str) -> Option<f64> {
    series(body).get(series_name).copied()
}

/// `GET /metrics` from a server's metrics listener (`PEXPER_METRICS_ADDR`).
pub async fn scrape_listener(addr: &str) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

impl TestApp {
    /// What this app's metrics listener would serve now: the running server's counters, and
    /// every service's database gauges read now, with the request pool.
    pub async fn metrics(&self) -> String {
        let gauges = DatabaseGauges::new(
            pexper_server::all_services()
                .iter()
                .flat_map(|s| s.gauges())
                .collect(),
            vec![("request", self.platform.pool.clone())],
        );
        let ready = self.platform.ready().await;
        scrape(&self.platform.metrics, &gauges, &self.platform.pool, ready).await
    }

    /// One series' value from `metrics`.
    pub async fn metric(&self, series_name: &str) -> Option<f64> {
        metric(&self.metrics().await, series_name)
    }
}
