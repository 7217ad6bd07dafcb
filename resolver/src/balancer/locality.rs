//! Zone preference: which backends a picker may use, given the client's zone.
//!
//! A pure function of the client's zone, `min_local` and each backend's zone and pickability,
//! evaluated on every picker rebuild (like Kubernetes `trafficDistribution: PreferSameZone`):
//! only same-zone backends while at least `min_local` of them are pickable, otherwise every
//! zone. An unknown client zone (no backend in it) or a backend without a zone turns filtering
//! off.

/// The zone preference of a balancer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ZonePreference {
    /// The client's zone.
    pub(crate) zone: String,
    /// How many same-zone backends must be pickable for traffic to stay in the zone (at least 1).
    pub(crate) min_local: usize,
}

/// What the zone preference decided for one rebuild.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZoneFilter {
    /// No client zone configured: every zone.
    Off,
    /// Only backends in the client's zone.
    Local,
    /// Every zone: fewer than `min_local` same-zone backends are pickable.
    FallBack,
    /// Every zone: some backend has no `zone` metadata.
    MissingZone,
    /// Every zone: no backend is in the client's zone.
    UnknownZone,
}

/// Decides for `backends` (each one's zone and whether it is pickable) under `preference`.
pub(crate) fn select<'a>(
    preference: Option<&ZonePreference>,
    backends: impl Iterator<Item = (Option<&'a str>, bool)> + Clone,
) -> ZoneFilter {
    let Some(preference) = preference else {
        return ZoneFilter::Off;
    };
    if backends.clone().any(|(zone, _)| zone.is_none()) {
        return ZoneFilter::MissingZone;
    }
    let local = || {
        backends
            .clone()
            .filter(|(zone, _)| *zone == Some(preference.zone.as_str()))
    };
    if local().next().is_none() {
        return ZoneFilter::UnknownZone;
    }
    let pickable = local().filter(|(_, pickable)| *pickable).count();
    if pickable >= preference.min_local.max(1) {
        ZoneFilter::Local
    } else {
        ZoneFilter::FallBack
    }
}

/// Whether a backend in `zone` may be picked under `filter`.
pub(crate) fn admits(
    filter: ZoneFilter,
    preference: Option<&ZonePreference>,
    zone: Option<&str>,
) -> bool {
    match (filter, preference) {
        (ZoneFilter::Local, Some(p)) => zone == Some(p.zone.as_str()),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pref(min_local: usize) -> ZonePreference {
        ZonePreference {
            zone: "a".into(),
            min_local,
        }
    }

    type Case<'a> = (Option<usize>, &'a [(Option<&'a str>, bool)], ZoneFilter);

    #[test]
    fn table() {
        use ZoneFilter::*;
        let cases: &[Case] = &[
            (None, &[(Some("a"), true), (Some("b"), true)], Off),
            (None, &[(None, true)], Off),
            (Some(1), &[(Some("a"), true), (Some("b"), true)], Local),
            (Some(1), &[(Some("a"), false), (Some("b"), true)], FallBack),
            (Some(2), &[(Some("a"), true), (Some("a"), false)], FallBack),
            (Some(2), &[(Some("a"), true), (Some("a"), true)], Local),
            (Some(0), &[(Some("a"), false), (Some("b"), true)], FallBack),
            (Some(1), &[(Some("a"), true), (None, true)], MissingZone),
            (
                Some(1),
                &[(Some("b"), true), (Some("c"), true)],
                UnknownZone,
            ),
            (Some(1), &[], UnknownZone),
        ];
        for (min_local, backends, want) in cases {
            let p = min_local.map(pref);
            assert_eq!(
                select(p.as_ref(), backends.iter().copied()),
                *want,
                "{min_local:?} {backends:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn invariants(
            min_local in 0usize..5,
            backends in proptest::collection::vec(
                (proptest::option::weighted(0.95, 0u8..3), any::<bool>()), 0..12),
        ) {
            let zones = ["a", "b", "c"];
            let backends: Vec<(Option<&str>, bool)> = backends
                .iter()
                .map(|(z, p)| (z.map(|z| zones[usize::from(z)]), *p))
                .collect();
            let p = pref(min_local);
            let filter = select(Some(&p), backends.iter().copied());
            let picked: Vec<_> = backends
                .iter()
                .filter(|(z, pickable)| *pickable && admits(filter, Some(&p), *z))
                .collect();
            // Never empty while some backend is pickable.
            if backends.iter().any(|(_, pickable)| *pickable) {
                prop_assert!(!picked.is_empty(), "{filter:?} {backends:?}");
            }
            let local = backends.iter().filter(|(z, pk)| *pk && *z == Some("a")).count();
            let all_zoned = backends.iter().all(|(z, _)| z.is_some());
            if all_zoned && local >= min_local.max(1) {
                // Only local when enough local backends are pickable.
                prop_assert_eq!(filter, ZoneFilter::Local);
                prop_assert!(picked.iter().all(|(z, _)| *z == Some("a")));
                prop_assert_eq!(picked.len(), local);
            } else {
                // Otherwise every pickable backend.
                prop_assert_ne!(filter, ZoneFilter::Local);
                prop_assert_eq!(picked.len(), backends.iter().filter(|(_, pk)| *pk).count());
            }
            // Without a client zone nothing is filtered.
            prop_assert_eq!(select(None, backends.iter().copied()), ZoneFilter::Off);
        }
    }
}
