//! The store against a real database: repositories, conflicts as domain errors, inbox, outbox
//! and the immutability of audit entries.

use chrono::Utc;
use cls_domain::{ApiKeyName, ApiKeySecret, BrandName, BrandSlug, KeyPrefix, ProductCode, ProductName, Scopes};
use cls_store::brands::{self, BrandConflict, NewApiKey, NewBrand, NewProduct};
use cls_store::inbox::{self, Claim, NewCommand};
use cls_store::{WriteError, audit, effects, outbox};
use cls_tests::LOCAL_DATABASE;
use uuid::Uuid;

struct Db {
    url: String,
    pool: cls_store::PgPool,
}

async fn database() -> Db {
    let url = format!("{LOCAL_DATABASE}/cls_store_{}", Uuid::now_v7().simple());
    cls_store::pool::create_database_if_missing(&url).await.unwrap();
    let pool = cls_store::pool::connect_now(&url, 3, "store-tests", cls_store::pool::Planning::Default).await.unwrap();
    cls_store::pool::migrate(&pool).await.unwrap();
    // Migrating twice is a no-op.
    cls_store::pool::migrate(&pool).await.unwrap();
    Db { url, pool }
}

impl Db {
    async fn drop(self) {
        self.pool.close().await;
        cls_store::pool::drop_database(&self.url).await.unwrap();
    }
}

fn new_brand<'a>(slug: &'a BrandSlug, name: &'a BrandName, prefix: &'a KeyPrefix) -> NewBrand<'a> {
    NewBrand { id: Uuid::now_v7(), slug, name, key_prefix: prefix, created_at: Utc::now() }
}

#[tokio::test]
async fn brand_api_key_and_product_repositories() {
    let db = database().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let (slug, name, prefix) = (BrandSlug::parse("acme").unwrap(), BrandName::parse("Acme").unwrap(), KeyPrefix::parse("AC").unwrap());
    let brand = brands::insert_brand(&mut conn, &new_brand(&slug, &name, &prefix)).await.unwrap();
    assert_eq!(brands::find_brand(&mut conn, brand.id).await.unwrap(), Some(brand.clone()));

    let other_prefix = KeyPrefix::parse("ZZ").unwrap();
    let err = brands::insert_brand(&mut conn, &new_brand(&slug, &name, &other_prefix)).await.unwrap_err();
    assert!(matches!(err, WriteError::Conflict(BrandConflict::Slug)));
    let other_slug = BrandSlug::parse("acme-2").unwrap();
    let err = brands::insert_brand(&mut conn, &new_brand(&other_slug, &name, &prefix)).await.unwrap_err();
    assert!(matches!(err, WriteError::Conflict(BrandConflict::KeyPrefix)));

    let secret = ApiKeySecret::generate(&mut rand::rng());
    let key = brands::insert_api_key(
        &mut conn,
        &NewApiKey {
            id: Uuid::now_v7(),
            brand_id: brand.id,
            name: &ApiKeyName::parse("k").unwrap(),
            key_hash: &secret.hash(),
            display_prefix: &secret.display_prefix(),
            scopes: &Scopes::default_for_new_key(),
            created_at: Utc::now(),
        },
    )
    .await
    .unwrap();
    assert_eq!(brands::find_live_api_key_by_hash(&mut conn, &secret.hash()).await.unwrap().map(|k| k.id), Some(key.id));
    let (revoked, changed) = brands::revoke_api_key(&mut conn, key.id, Utc::now()).await.unwrap().unwrap();
    assert!(changed);
    assert_eq!(revoked.version, 2);
    let (_, changed) = brands::revoke_api_key(&mut conn, key.id, Utc::now()).await.unwrap().unwrap();
    assert!(!changed, "a second revoke changes nothing");
    assert!(brands::find_live_api_key_by_hash(&mut conn, &secret.hash()).await.unwrap().is_none());
    assert!(brands::revoke_api_key(&mut conn, Uuid::now_v7(), Utc::now()).await.unwrap().is_none());

    let code = ProductCode::parse("pro").unwrap();
    let pname = ProductName::parse("Pro").unwrap();
    let product = NewProduct { id: Uuid::now_v7(), brand_id: brand.id, code: &code, name: &pname, default_seat_limit: None, default_duration_days: Some(30), created_at: Utc::now() };
    brands::insert_product(&mut conn, &product).await.unwrap();
    let again = NewProduct { id: Uuid::now_v7(), ..product };
    assert!(matches!(brands::insert_product(&mut conn, &again).await.unwrap_err(), WriteError::Conflict(_)));
    let listed = brands::list_products(&mut conn, brand.id, None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].default_seat_limit, None);

    drop(conn);
    db.drop().await;
}

#[tokio::test]
async fn inbox_outbox_and_audit() {
    let db = database().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let id = Uuid::now_v7();
    let cmd = NewCommand { command_id: id, module: "brands", command_type: "brands.x", principal: "admin", request_hash: "h1", request_id: "r", received_at: Utc::now() };
    assert!(matches!(inbox::claim(&mut conn, &cmd).await.unwrap(), Claim::Claimed));
    inbox::complete(&mut conn, id, &inbox::Outcome { status: 201, body: b"{}", sealed: false, read_model_targets: &[] }, Utc::now()).await.unwrap();
    match inbox::claim(&mut conn, &cmd).await.unwrap() {
        Claim::Existing(stored) => {
            assert!(stored.succeeded());
            assert_eq!(stored.response_status, Some(201));
        }
        Claim::Claimed => panic!("claimed twice"),
    }
    // A dead-lettered command can be claimed again (replay), a succeeded one cannot fail.
    let failed_id = Uuid::now_v7();
    let failed = NewCommand { command_id: failed_id, ..cmd };
    inbox::record_failure(&mut conn, &failed, "boom", Utc::now()).await.unwrap();
    assert!(inbox::find(&mut conn, failed_id).await.unwrap().unwrap().failed());
    assert!(matches!(inbox::claim(&mut conn, &failed).await.unwrap(), Claim::Claimed));
    let done = NewCommand { command_id: id, ..failed };
    inbox::record_failure(&mut conn, &done, "late", Utc::now()).await.unwrap();
    assert!(inbox::find(&mut conn, id).await.unwrap().unwrap().succeeded());

    // Outbox: append, claim and mark with SKIP LOCKED, unmark what was not confirmed.
    let events: Vec<outbox::NewOutboxEvent> = (0..3)
        .map(|i| outbox::NewOutboxEvent { event_id: Uuid::now_v7(), event_type: "brand.created", aggregate_id: Uuid::now_v7(), aggregate_version: i, payload: vec![i as u8], correlation_id: None, read_model_targets: None })
        .collect();
    effects::record(&mut conn, &[], &events, None, &[]).await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let claimed = outbox::claim_and_mark(&mut tx, 2, Utc::now()).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(claimed[0].id < claimed[1].id, "claimed rows come back in outbox order");
    assert_eq!(claimed[0].event_id, events[0].event_id);
    // Another relay skips the locked rows.
    let mut other = db.pool.begin().await.unwrap();
    assert_eq!(outbox::claim_and_mark(&mut other, 10, Utc::now()).await.unwrap().len(), 1);
    other.rollback().await.unwrap();
    // The second row's publish was not confirmed: it stays pending.
    outbox::unmark(&mut tx, &[claimed[1].id], "nack").await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let pending: Vec<Uuid> = outbox::claim_and_mark(&mut tx, 10, Utc::now()).await.unwrap().iter().map(|r| r.event_id).collect();
    assert_eq!(pending, vec![events[1].event_id, events[2].event_id]);
    tx.rollback().await.unwrap();

    // Audit entries are never edited.
    let entry = audit::AuditEntry {
        id: Uuid::now_v7(),
        brand_id: None,
        actor_kind: "admin".into(),
        actor_id: None,
        action: "brand.created".into(),
        target_type: "brand".into(),
        target_id: Uuid::now_v7(),
        request_id: Some("r".into()),
        command_id: None,
        status_before: None,
        status_after: None,
        reason: None,
        // Postgres keeps microseconds.
        at: chrono::SubsecRound::trunc_subsecs(Utc::now(), 6),
    };
    effects::record(&mut conn, std::slice::from_ref(&entry), &[], None, &[]).await.unwrap();
    assert_eq!(audit::list_for_target(&mut conn, entry.target_id, None, 10).await.unwrap(), vec![entry.clone()]);
    assert!(sqlx::query("UPDATE audit_entries SET reason = 'x'").execute(&mut *conn).await.is_err());
    assert!(sqlx::query("DELETE FROM audit_entries").execute(&mut *conn).await.is_err());

    drop(conn);
    db.drop().await;
}

#[tokio::test]
async fn retention_purges_old_outcomes_and_published_events_only() {
    let db = database().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let old = Utc::now() - chrono::TimeDelta::days(8);
    let (old_id, new_id) = (Uuid::now_v7(), Uuid::now_v7());
    for (id, at) in [(old_id, old), (new_id, Utc::now())] {
        let cmd = NewCommand { command_id: id, module: "brands", command_type: "brands.x", principal: "admin", request_hash: "h", request_id: "r", received_at: at };
        inbox::claim(&mut conn, &cmd).await.unwrap();
        inbox::complete(&mut conn, id, &inbox::Outcome { status: 201, body: b"{}", sealed: false, read_model_targets: &[] }, at).await.unwrap();
    }
    let (outcomes, _) = cls_worker::retention::purge_once(&db.pool).await.unwrap();
    assert_eq!(outcomes, 1);
    assert!(inbox::find(&mut conn, old_id).await.unwrap().is_none());
    assert!(inbox::find(&mut conn, new_id).await.unwrap().is_some());
    drop(conn);
    db.drop().await;
}
