//! The test ground's readers of Registrar's keys against a real etcd: the leases under a prefix
//! (the `.owner` claim left out) and the recorder that resumes through a restart and after a
//! wipe, counting puts of an unchanged value when asked.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::PutOptions;
use registrar_testenv::{Etcd, RecordOptions, Recorder, leases_under, poll};

#[tokio::test]
async fn leases_under_lists_the_distinct_leases_of_the_keys_without_the_claim() {
    let etcd = Etcd::start().await.unwrap();
    let mut c = etcd.client().await.unwrap();
    assert_eq!(leases_under(&c, "p").await.unwrap(), Vec::<i64>::new());
    let a = c.lease_grant(60, None).await.unwrap().id();
    let b = c.lease_grant(60, None).await.unwrap().id();
    let on = |l: i64| Some(PutOptions::new().with_lease(l));
    c.put("p/.owner", "me", on(b)).await.unwrap();
    c.put("p/t/1", "x", on(a)).await.unwrap();
    c.put("p/t/2", "y", on(a)).await.unwrap();
    c.put("other/1", "z", on(b)).await.unwrap();
    assert_eq!(leases_under(&c, "p").await.unwrap(), vec![a]);
    c.put("p/t/3", "w", None).await.unwrap();
    assert_eq!(leases_under(&c, "p").await.unwrap(), vec![0, a]);
}

#[tokio::test]
async fn the_recorder_resumes_after_a_restart_and_counts_unchanged_puts() {
    let mut etcd = Etcd::start().await.unwrap();
    let mut c = etcd.client().await.unwrap();
    c.put("p/k1", "a", None).await.unwrap();
    let r0 = c.put("p/k2", "b", None).await.unwrap();
    let r0 = r0.header().unwrap().revision();
    let known = BTreeMap::from([
        ("p/k1".to_string(), b"a".to_vec()),
        ("p/k2".to_string(), b"b".to_vec()),
    ]);
    let rec = Recorder::start(
        etcd.endpoint(),
        "p".into(),
        RecordOptions {
            after: r0,
            noop_puts: Some(known),
        },
    );
    c.put("p/k1", "a", None).await.unwrap(); // unchanged: a no-op
    c.put("p/.owner", "me", None).await.unwrap(); // not recorded
    c.put("p/k2", "c", None).await.unwrap();
    let rec_len = |n: usize| {
        let rec = &rec;
        move || async move { (rec.recording().events.len() >= n).then_some(()) }
    };
    poll("the two events", Duration::from_secs(10), rec_len(2))
        .await
        .unwrap();

    etcd.restart().await.unwrap();
    let mut c = etcd.client().await.unwrap();
    c.delete("p/k1", None).await.unwrap();
    c.put("p/k2", "c", None).await.unwrap(); // unchanged again
    poll(
        "the events after the restart",
        Duration::from_secs(20),
        rec_len(4),
    )
    .await
    .unwrap();
    let r = rec.recording();
    let keys: Vec<(&str, bool, bool)> = r
        .events
        .iter()
        .map(|e| (e.key.as_str(), e.delete, e.noop))
        .collect();
    println!("recorded {keys:?}, {} reconnects", r.reconnects);
    assert_eq!(
        keys,
        [
            ("p/k1", false, true),
            ("p/k2", false, false),
            ("p/k1", true, false),
            ("p/k2", false, true),
        ]
    );
    assert_eq!((r.puts(), r.deletes(), r.noop_puts()), (3, 1, 2));
    assert_eq!(r.revisions(), 4);
    assert!(r.reconnects >= 1, "the watch was not re-established");
    assert!(r.events[..2].iter().all(|e| e.gap.is_none()));

    // After a wipe the revisions start again: the recorder follows from etcd's current one
    // (what is written before it is back is not seen: wait for it).
    etcd.wipe().await.unwrap();
    poll(
        "the watch back after the wipe",
        Duration::from_secs(20),
        || async { (rec.recording().reconnects > r.reconnects).then_some(()) },
    )
    .await
    .unwrap();
    let mut c = etcd.client().await.unwrap();
    let put = c.put("p/k3", "d", None).await.unwrap();
    let rev = put.header().unwrap().revision();
    poll(
        "the event after the wipe",
        Duration::from_secs(20),
        rec_len(5),
    )
    .await
    .unwrap();
    let after = rec.events_after(4);
    assert_eq!(after.len(), 1);
    assert_eq!((after[0].key.as_str(), after[0].revision), ("p/k3", rev));
    assert!(!after[0].noop);
}
