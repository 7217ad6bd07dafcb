//! The routing snapshot ([`Balancer::snapshot`](super::Balancer::snapshot)): every backend with
//! its zone, weight, state and picks, and what the zone preference decided.

pub use super::locality::ZoneFilter;

/// How the balancer routes now, from [`Balancer::snapshot`](super::Balancer::snapshot).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RoutingSnapshot {
    /// The client's zone, when [zone preference](super::BalancerBuilder::zone) is on.
    pub zone: Option<String>,
    /// Its `min_local`, when zone preference is on.
    pub min_local: Option<usize>,
    /// What the zone preference decided at the last picker rebuild.
    pub zone_filter: ZoneFilter,
    /// Whether [weights](super::BalancerBuilder::weighted) are on.
    pub weighted: bool,
    /// With weights on: how many backends have no valid `weight` and weigh the mean.
    pub weights_defaulted: usize,
    /// How many backends set a `weight` that is not a positive integer.
    pub weights_invalid: usize,
    /// Every known backend, ordered by address.
    pub backends: Vec<BackendSnapshot>,
}

/// One backend in a [`RoutingSnapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackendSnapshot {
    /// `host:port`.
    pub addr: String,
    /// Its `zone` metadata.
    pub zone: Option<String>,
    /// Its `weight` metadata, when a positive integer.
    pub weight: Option<u32>,
    /// Its state.
    pub state: BackendState,
    /// Whether calls go to it now (pickable and admitted by the zone preference).
    pub in_pick_set: bool,
    /// How many calls were sent to it (counted at the pick).
    pub picks: u64,
}

/// The state of one backend in a [`BackendSnapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendState {
    /// Connected, healthy, not ejected.
    Ready,
    /// Not connected and not trying.
    Idle,
    /// A connection attempt is in progress.
    Connecting,
    /// The last connection attempt failed; waiting for the next.
    TransientFailure,
    /// Connected, but health checking says it must not be used.
    Unhealthy,
    /// Ejected by outlier detection (its connection stays open).
    Ejected,
}
