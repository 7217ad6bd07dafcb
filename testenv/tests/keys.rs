//! The test ground's readers of Registrar's keys against a real etcd: the leases under a prefix
//! (the `.owner` claim left out).

use etcd_client::PutOptions;
use registrar_testenv::{Etcd, leases_under};

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
