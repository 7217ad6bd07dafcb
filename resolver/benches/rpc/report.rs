//! The Markdown tables: one row per client over all rounds, ratios against the direct tonic
//! `Channel`, then every round as measured.

use std::fmt::Write;
use std::time::Duration;

use super::load::Measured;

/// One client and its measurement in each round.
pub struct Client {
    /// Name in the table.
    pub name: &'static str,
    /// One per round.
    pub rounds: Vec<Measured>,
}

impl Client {
    /// All rounds as one: calls and time summed (so req/s is weighted by time), percentiles the
    /// median of the rounds' (the mean of the middle two for an even number of rounds).
    pub fn total(&self) -> Measured {
        let mut total = Measured::default();
        for m in &self.rounds {
            total.requests += m.requests;
            total.errors += m.errors;
            total.elapsed += m.elapsed;
            for (backend, n) in &m.backends {
                *total.backends.entry(backend.clone()).or_default() += n;
            }
        }
        total.p50 = median(self.rounds.iter().map(|m| m.p50).collect());
        total.p99 = median(self.rounds.iter().map(|m| m.p99).collect());
        total
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    match values.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2,
    }
}

/// Most calls on one backend ÷ fewest on another; `-` for a single backend.
fn spread(m: &Measured) -> String {
    let max = m.backends.values().max().copied().unwrap_or(0);
    let min = m.backends.values().min().copied().unwrap_or(0);
    match m.backends.len() {
        0 | 1 => "-".into(),
        _ if min == 0 => "∞".into(),
        _ => format!("{:.3}", max as f64 / min as f64),
    }
}

fn micros(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

fn ratio(x: f64, of: f64) -> String {
    if of > 0.0 {
        format!("{:.2}×", x / of)
    } else {
        "-".into()
    }
}

/// The summary table; ratios are against the client named `baseline`.
pub fn summary(clients: &[Client], baseline: &str) -> String {
    let base = clients
        .iter()
        .find(|c| c.name == baseline)
        .map(Client::total);
    let (base_rate, base_p99) = base
        .as_ref()
        .map_or((0.0, 0.0), |b| (b.rate(), b.p99.as_secs_f64()));
    let mut md = String::from(
        "| client | req/s | req/s vs direct | p50 µs | p99 µs | p99 vs direct | errors | backends | max/min |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for c in clients {
        let t = c.total();
        let _ = writeln!(
            md,
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            c.name,
            t.rate(),
            ratio(t.rate(), base_rate),
            micros(t.p50),
            micros(t.p99),
            ratio(t.p99.as_secs_f64(), base_p99),
            t.errors,
            t.backends.len(),
            spread(&t),
        );
    }
    md
}

/// Every round of every client, as measured.
pub fn rounds(clients: &[Client]) -> String {
    let mut md = String::from(
        "| round | client | calls | seconds | req/s | p50 µs | p99 µs | errors | calls per backend |\n\
         |--:|---|--:|--:|--:|--:|--:|--:|---|\n",
    );
    let n = clients.iter().map(|c| c.rounds.len()).max().unwrap_or(0);
    for round in 0..n {
        for c in clients {
            let Some(m) = c.rounds.get(round) else {
                continue;
            };
            let per_backend: Vec<String> =
                m.backends.iter().map(|(b, n)| format!("{b} {n}")).collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2} | {:.0} | {} | {} | {} | {} |",
                round + 1,
                c.name,
                m.requests,
                m.elapsed.as_secs_f64(),
                m.rate(),
                micros(m.p50),
                micros(m.p99),
                m.errors,
                per_backend.join(", "),
            );
        }
    }
    md
}
