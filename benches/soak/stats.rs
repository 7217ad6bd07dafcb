//! The figures of a soak: least-squares slopes of the samples after the warm-up, the lease
//! re-grants against the real losses, and the write accounting (etcd revisions and key events
//! against the changes the model expected).

use super::faults::Fault;
use super::sample::Sample;

/// Least-squares slope of `(x, y)`, per unit of x; `None` with fewer than 3 points.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// One series of the samples after the warm-up.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: &'static str,
    pub first: f64,
    pub last: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    /// Least-squares slope per hour.
    pub per_hour: Option<f64>,
}

/// The series `name` of `samples` with `t >= warm_up_s` (samples without a value skipped).
pub fn series(
    name: &'static str,
    samples: &[Sample],
    warm_up_s: f64,
    value: impl Fn(&Sample) -> Option<f64>,
) -> Option<Series> {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.t >= warm_up_s)
        .filter_map(|s| Some((s.t, value(s)?)))
        .collect();
    let (first, last) = (points.first()?.1, points.last()?.1);
    let ys = points.iter().map(|p| p.1);
    Some(Series {
        name,
        first,
        last,
        min: ys.clone().fold(f64::INFINITY, f64::min),
        max: ys.clone().fold(f64::NEG_INFINITY, f64::max),
        mean: ys.sum::<f64>() / points.len() as f64,
        per_hour: slope(&points).map(|s| s * 3600.0),
    })
}

/// A lease re-grant (the grant counter went up between two samples) and the real loss that
/// explains it, if any.
#[derive(Clone, Debug)]
pub struct Regrant {
    /// Between these sample times.
    pub from_s: f64,
    pub to_s: f64,
    pub grants: f64,
    /// The real loss within (or just before) that window.
    pub loss: Option<f64>,
}

/// The re-grants seen in `samples` (from the first sample on), each matched to a real loss in
/// `faults` applied before the grant and after the previous sample but one (a revoke is
/// noticed at the operator's next keepalive, within a third of the TTL).
pub fn regrants(samples: &[Sample], faults: &[Fault], ttl_s: f64) -> Vec<Regrant> {
    let known: Vec<(f64, f64)> = samples
        .iter()
        .filter_map(|s| Some((s.t, s.lease_grants?)))
        .collect();
    let mut out = Vec::new();
    for w in known.windows(2) {
        let ((ta, a), (tb, b)) = (w[0], w[1]);
        if b > a {
            let loss = faults
                .iter()
                .filter(|f| f.kind.is_loss())
                .map(|f| f.at_s)
                .find(|at| *at <= tb && *at >= ta - ttl_s);
            out.push(Regrant {
                from_s: ta,
                to_s: tb,
                grants: b - a,
                loss,
            });
        }
    }
    out
}
