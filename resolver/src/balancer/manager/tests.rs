//! The incremental update path against a rebuild from scratch: any sequence of watch
//! responses, applied one by one to the resolver's set and (for the snapshots the manager
//! happens to see) to the pool, ends in the same snapshot, the same backends with the same
//! routing, and the same pick set as one fresh listing of the final state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use registrar_etcd::KvEvent;
use serde_json::json;
use tokio::sync::watch;

use super::{EndpointFactory, Manager};
use crate::backoff::Backoff;
use crate::balancer::locality::ZonePreference;
use crate::balancer::pool::{Pool, Routing};
use crate::balancer::subchannel::ConnectPolicy;
use crate::discovery::{self, Endpoints, Snapshot};
use crate::value::{Endpoint, Metadata};

/// What a watch event puts under a key.
#[derive(Clone, Debug)]
enum Put {
    Delete,
    Invalid,
    Valid {
        addr: u8,
        zone: Option<&'static str>,
        weight: Option<u8>,
    },
}

fn put() -> impl Strategy<Value = Put> {
    prop_oneof![
        1 => Just(Put::Delete),
        1 => Just(Put::Invalid),
        4 => (0u8..4, prop::option::of(prop_oneof![Just("a"), Just("b")]), prop::option::of(0u8..3))
            .prop_map(|(addr, zone, weight)| Put::Valid { addr, zone, weight }),
    ]
}

fn event(key: u8, put: &Put, revision: i64) -> KvEvent {
    let value = match put {
        Put::Delete => None,
        Put::Invalid => Some(b"{not json".to_vec()),
        Put::Valid { addr, zone, weight } => {
            let metadata = Metadata::from_value(&json!({"zone": zone, "weight": weight}));
            let endpoint = Endpoint::new(format!("127.0.0.{}:50051", addr + 1), metadata);
            endpoint.ok().map(|e| e.encode().into_bytes())
        }
    };
    KvEvent {
        key: format!("t/{key}"),
        value,
        lease: 0,
        revision,
    }
}

fn manager(pool: &Arc<Pool>) -> Manager {
    // No subchannel starts: every endpoint fails to configure; the test makes backends READY.
    let factory: Arc<EndpointFactory> =
        Arc::new(|a: &str| tonic::transport::Endpoint::from_shared(format!("http://{a}/\u{0}")));
    let policy = ConnectPolicy {
        backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(1)),
        min_connect_timeout: Duration::from_secs(1),
        health: None,
    };
    Manager::new(pool.clone(), factory, policy)
}

fn pool() -> Arc<Pool> {
    Arc::new(Pool::new().routing(Routing {
        zone: Some(ZonePreference {
            zone: "a".into(),
            min_local: 2,
        }),
        weighted: true,
    }))
}

/// Makes every backend READY (on one lazy channel that is never used).
fn ready_all(pool: &Pool, channel: &tonic::transport::Channel) {
    let addrs: Vec<Arc<str>> = pool
        .statuses()
        .into_iter()
        .map(|s| Arc::from(s.addr))
        .collect();
    pool.make_ready(&addrs, channel);
}

/// The addresses the picker hands out over many picks.
fn pick_set(pool: &Pool) -> BTreeSet<String> {
    let picker = pool.picker();
    (0..picker.len() * 20)
        .filter_map(|_| picker.pick().map(|p| p.addr.to_string()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn incremental_updates_match_a_fresh_listing(
        responses in prop::collection::vec(
            (prop::collection::vec((0u8..6, put()), 1..6), any::<bool>()),
            1..16,
        ),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = runtime.enter();
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();

        let (tx, _) = watch::channel(Arc::new(Snapshot::default()));
        let mut endpoints = Endpoints::new();
        let live = pool();
        let mut live_manager = manager(&live);
        let mut oracle: BTreeMap<String, Endpoint> = BTreeMap::new();
        for (revision, (events, looks)) in (1i64..).zip(&responses) {
            let events: Vec<KvEvent> =
                events.iter().map(|(k, p)| event(*k, p, revision)).collect();
            for e in &events {
                match e.value.as_deref().and_then(|v| Endpoint::decode(v).ok()) {
                    Some(endpoint) => oracle.insert(e.key.clone(), endpoint),
                    None => oracle.remove(&e.key),
                };
            }
            if discovery::apply(&events, &mut endpoints).changed() {
                discovery::publish(&tx, revision, &endpoints);
            }
            // The manager sees only some snapshots (a watch channel keeps the latest).
            if *looks {
                live_manager.reconcile(&tx.borrow().clone());
                ready_all(&live, &channel);
            }
        }
        live_manager.reconcile(&tx.borrow().clone());
        ready_all(&live, &channel);
        let last = tx.borrow().clone();
        prop_assert_eq!(last.endpoints().to_btree_map(), oracle.clone());

        let fresh = pool();
        let mut fresh_manager = manager(&fresh);
        fresh_manager.reconcile(&Snapshot::new(0, Endpoints::from(oracle)));
        ready_all(&fresh, &channel);
        prop_assert_eq!(live.snapshot(), fresh.snapshot());
        prop_assert_eq!(live.picker().len(), fresh.picker().len());
        prop_assert_eq!(pick_set(&live), pick_set(&fresh));
    }
}
