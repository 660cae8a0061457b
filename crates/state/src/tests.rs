//! One suite for every store: each check runs against SQLite and against a PostgreSQL server
//! this test starts for itself (Debian's, on loopback, with a throw-away data directory).

use cove_model::{Actor, EventState, Reason, SandboxState};

use crate::{SandboxRecord, SnapshotRecord, StateError, StateStore, now_ms};

pub(crate) fn rec(id: &str, name: Option<&str>) -> SandboxRecord {
    SandboxRecord {
        id: id.into(),
        name: name.map(str::to_string),
        image: "busybox".into(),
        image_digest: "sha256:b".into(),
        owner: Some("t1".into()),
        labels: [("app".to_string(), "web".to_string())].into(),
        env: Default::default(),
        state: SandboxState::Running,
        cpus: 1,
        memory_mib: 256,
        disk_mib: 1024,
        created_at: 1,
        engine: cove_model::VmEngine::Qemu,
        accel: cove_model::Accel::Tcg,
        pid: Some(42),
        socket: "/x/control.sock".into(),
        dir: "/x".into(),
        boot_ms: None,
        reason: None,
        updated_at: 1,
        op: None,
        network: cove_model::NetworkPolicy {
            allow: vec!["203.0.113.0/24".parse().unwrap()],
            ..Default::default()
        },
        expires_at: Some(5_000),
    }
}

pub(crate) fn owned(id: &str, owner: Option<&str>, name: &str) -> SandboxRecord {
    SandboxRecord {
        owner: owner.map(str::to_string),
        ..rec(id, Some(name))
    }
}

/// Another handle on the same store (its own connection), for the checks that race writers.
pub(crate) type Another<'a> = &'a (dyn Fn() -> Box<dyn StateStore> + Sync);

/// Every check of the suite, in order, on one store.
pub(crate) fn suite(db: &dyn StateStore, another: Another<'_>) {
    insert_find_update_delete(db);
    names_are_unique_per_owner(db);
    snapshots_and_admission(db);
    prune_events_drops_only_older_ones(db);
    concurrent_moves_from_one_state_let_one_win(db);
    concurrent_inserts_pass_a_limit_together_never(db, another);
}

/// Eight inserts at once, each on its own connection, against a limit of three sandboxes:
/// exactly three are admitted.
fn concurrent_inserts_pass_a_limit_together_never(db: &dyn StateStore, another: Another<'_>) {
    let limits = crate::Limits {
        sandboxes: 3,
        vcpus: 64,
        memory_mib: 1 << 20,
        snapshots: 100,
    };
    let admitted = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for i in 0..8 {
            let admitted = &admitted;
            s.spawn(move || {
                let db = another();
                let r = SandboxRecord {
                    owner: Some("race-t".into()),
                    ..rec(&format!("7ace0000000{i}"), None)
                };
                match db.insert(&r, &Actor::Local, Some(&limits)) {
                    Ok(()) => {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Err(StateError::OverQuota { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            });
        }
    });
    assert_eq!(admitted.into_inner(), 3);
    assert_eq!(db.held_by("race-t").unwrap().0, 3);
}

fn insert_find_update_delete(db: &dyn StateStore) {
    db.insert(&rec("abcdef123456", Some("web")), &Actor::Local, None)
        .unwrap();
    db.insert(&rec("abcd99999999", None), &Actor::Local, None)
        .unwrap();
    assert!(matches!(
        db.insert(&rec("ffff00000000", Some("web")), &Actor::Local, None),
        Err(StateError::NameTaken(_))
    ));
    assert_eq!(db.find("web").unwrap().unwrap().id, "abcdef123456");
    assert_eq!(db.find("abcdef").unwrap().unwrap().id, "abcdef123456");
    assert!(db.find("abcd").unwrap().is_none(), "ambiguous prefix");
    assert!(db.find("abc").unwrap().is_none(), "prefix too short");
    let mut r = db.find("abcd99999999").unwrap().unwrap();
    r.state = SandboxState::Failed;
    r.reason = Some(Reason::Crashed("gone".into()));
    db.update(&mut r, &Actor::Reconcile).unwrap();
    assert_eq!(
        db.find("abcd99999999").unwrap().unwrap().reason,
        Some(Reason::Crashed("gone".into()))
    );
    // Nothing leaves failed: the table is checked against the stored state.
    r.state = SandboxState::Running;
    assert!(matches!(
        db.update(&mut r, &Actor::Local),
        Err(StateError::Transition { .. })
    ));
    // The network policy is kept as written, and replaced whole.
    let stored = db.find("abcd99999999").unwrap().unwrap().network;
    assert_eq!(stored, rec("x", None).network);
    db.set_network(
        "abcd99999999",
        &cove_model::NetworkPolicy::none(),
        &Actor::Local,
    )
    .unwrap();
    let last = db
        .events(0, None, Some("abcd99999999"), 100)
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(last.state, EventState::Network);
    assert_eq!(last.cause.as_deref(), Some("none"));
    assert_eq!(
        db.find("abcd99999999").unwrap().unwrap().network,
        cove_model::NetworkPolicy::none()
    );
    assert!(matches!(
        db.set_network(
            "000000000000",
            &cove_model::NetworkPolicy::none(),
            &Actor::Local
        ),
        Err(StateError::NoSuchSandbox(_))
    ));
    // The end of its time to live is kept, changed and cleared.
    assert_eq!(
        db.find("abcd99999999").unwrap().unwrap().expires_at,
        Some(5_000)
    );
    db.set_expiry("abcd99999999", Some(9_000)).unwrap();
    assert_eq!(
        db.find("abcd99999999").unwrap().unwrap().expires_at,
        Some(9_000)
    );
    db.set_expiry("abcd99999999", None).unwrap();
    assert_eq!(db.find("abcd99999999").unwrap().unwrap().expires_at, None);
    assert!(matches!(
        db.set_expiry("000000000000", None),
        Err(StateError::NoSuchSandbox(_))
    ));
    db.delete("abcdef123456", &Actor::Local).unwrap();
    assert_eq!(db.list().unwrap().len(), 1);
    assert!(
        db.using_image("sha256:b").unwrap().is_empty(),
        "a failed sandbox does not hold its image"
    );
    db.insert(&rec("eeee00000000", None), &Actor::Local, None)
        .unwrap();
    assert_eq!(
        db.using_image("sha256:b").unwrap(),
        vec!["sandbox eeee00000000".to_string()]
    );
    db.set_image_name("busybox", "sha256:b", 1).unwrap();
    db.set_image_name("busybox", "sha256:c", 2).unwrap();
    assert_eq!(
        db.image_name("busybox").unwrap().as_deref(),
        Some("sha256:c")
    );
    db.remove_image_name("busybox").unwrap();
    assert!(db.image_names().unwrap().is_empty());
    // The event log: each new state once, removals too, with the actor.
    let log = db.events(0, Some("t1"), Some("eeee00000000"), 100).unwrap();
    assert_eq!(
        log.iter().map(|e| e.state.as_str()).collect::<Vec<_>>(),
        ["running"]
    );
    let mut r = db.find("eeee00000000").unwrap().unwrap();
    db.update(&mut r, &Actor::Local).unwrap();
    r.state = SandboxState::Paused;
    r.reason = Some(Reason::Idle);
    db.update(&mut r, &Actor::IdlePolicy).unwrap();
    assert!(r.updated_at > 1, "a move stamps the record");
    r.state = SandboxState::Failed;
    r.reason = Some(Reason::Vanished);
    db.update(&mut r, &Actor::Reconcile).unwrap();
    let log = db.events(0, None, Some("eeee00000000"), 100).unwrap();
    let seen: Vec<(EventState, Actor)> = log.iter().map(|e| (e.state, e.actor.clone())).collect();
    assert_eq!(
        seen,
        [
            (EventState::Entered(SandboxState::Running), Actor::Local),
            (EventState::Entered(SandboxState::Paused), Actor::IdlePolicy),
            (EventState::Entered(SandboxState::Failed), Actor::Reconcile)
        ]
    );
    assert_eq!(log[1].cause.as_deref(), Some("idle"));
    assert_eq!(log[2].cause, Some(Reason::Vanished.to_string()));
    assert!(db.events(log[2].seq, None, None, 100).unwrap().is_empty());
    assert!(db.events(0, Some("other"), None, 100).unwrap().is_empty());
}

fn names_are_unique_per_owner(db: &dyn StateStore) {
    for r in [
        owned("aaaa00000001", Some("acme"), "web"),
        owned("aaaa00000002", Some("blue"), "web"),
        owned("aaaa00000003", None, "api"),
    ] {
        db.insert(&r, &Actor::Local, None).unwrap();
    }
    for dup in [
        owned("aaaa00000004", Some("acme"), "web"),
        owned("aaaa00000005", None, "api"),
    ] {
        assert!(matches!(
            db.insert(&dup, &Actor::Local, None),
            Err(StateError::NameTaken(_))
        ));
    }
    let id = |r: Option<SandboxRecord>| r.map(|r| r.id);
    assert_eq!(
        id(db.find_named(Some("acme"), "web").unwrap()).as_deref(),
        Some("aaaa00000001")
    );
    assert_eq!(
        id(db.find_named(Some("blue"), "web").unwrap()).as_deref(),
        Some("aaaa00000002")
    );
    assert!(db.find_named(Some("blue"), "api").unwrap().is_none());
    assert!(db.find_named(None, "web").unwrap().is_none());
    assert_eq!(
        id(db.find_named(None, "api").unwrap()).as_deref(),
        Some("aaaa00000003")
    );
    // Locally a name two owners use finds neither; `owner/name` finds each.
    assert!(db.find("web").unwrap().is_none());
    assert_eq!(
        id(db.find("blue/web").unwrap()).as_deref(),
        Some("aaaa00000002")
    );
    assert_eq!(id(db.find("api").unwrap()).as_deref(), Some("aaaa00000003"));
}

fn prune_events_drops_only_older_ones(db: &dyn StateStore) {
    db.insert(&rec("dddd00000001", None), &Actor::Local, None)
        .unwrap();
    let all = db.events(0, None, None, 1000).unwrap().len();
    assert!(all > 1);
    assert_eq!(db.prune_events(0).unwrap(), 0, "nothing is older than 1970");
    assert_eq!(db.events(0, None, None, 1000).unwrap().len(), all);
    assert_eq!(db.prune_events(now_ms() + 1).unwrap(), all);
    assert!(db.events(0, None, None, 10).unwrap().is_empty());
}

/// Snapshots (names per owner, lookups, removal), what an image is used by, and what a tenant
/// holds for admission.
fn snapshots_and_admission(db: &dyn StateStore) {
    let snap = |id: &str, owner: Option<&str>, name: Option<&str>, template: bool| SnapshotRecord {
        id: id.into(),
        name: name.map(str::to_string),
        sandbox: Some("eeee00000000".into()),
        image: "busybox".into(),
        image_digest: "sha256:s".into(),
        cpus: 2,
        memory_mib: 512,
        disk_mib: 1024,
        created_at: 5,
        dir: format!("/snapshots/{id}"),
        template,
        owner: owner.map(str::to_string),
    };
    db.insert_snapshot(
        &snap("5a5a00000001", Some("acme"), Some("base"), false),
        None,
    )
    .unwrap();
    db.insert_snapshot(
        &snap("5a5a00000002", Some("blue"), Some("base"), false),
        None,
    )
    .unwrap();
    db.insert_snapshot(&snap("5a5a00000003", None, None, true), None)
        .unwrap();
    assert!(matches!(
        db.insert_snapshot(
            &snap("5a5a00000004", Some("acme"), Some("base"), false),
            None
        ),
        Err(StateError::NameTaken(_))
    ));
    // A quota of snapshots: acme holds one (templates are the host's, not counted).
    let limits = crate::Limits {
        sandboxes: 10,
        vcpus: 10,
        memory_mib: 1 << 20,
        snapshots: 1,
    };
    let e = db
        .insert_snapshot(
            &snap("5a5a00000005", Some("acme"), None, false),
            Some(&limits),
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            StateError::OverQuota {
                what: "snapshots",
                max: 1,
                have: 1,
                add: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(db.find_snapshot("5a5a00000005").unwrap().is_none());
    let got = db
        .find_snapshot_named(Some("blue"), "base")
        .unwrap()
        .unwrap();
    assert_eq!(got, snap("5a5a00000002", Some("blue"), Some("base"), false));
    assert!(
        db.find_snapshot("base").unwrap().is_none(),
        "two owners use it"
    );
    assert_eq!(
        db.find_snapshot("acme/base")
            .unwrap()
            .map(|s| s.id)
            .as_deref(),
        Some("5a5a00000001")
    );
    assert_eq!(
        db.find_snapshot("5a5a00000003")
            .unwrap()
            .map(|s| s.template),
        Some(true)
    );
    // Templates do not hold their image; other snapshots do.
    let mut users = db.using_image("sha256:s").unwrap();
    users.sort();
    assert_eq!(users, ["snapshot 5a5a00000001", "snapshot 5a5a00000002"]);
    for id in ["5a5a00000001", "5a5a00000002", "5a5a00000003"] {
        db.delete_snapshot(id).unwrap();
    }
    assert!(
        db.list_snapshots()
            .unwrap()
            .iter()
            .all(|s| !s.id.starts_with("5a5a"))
    );
    // Admission: what a tenant's sandboxes hold, the stopped and failed ones left out.
    let base = db.held_by("quota-t").unwrap();
    assert_eq!(base, (0, 0, 0));
    let mut a = SandboxRecord {
        owner: Some("quota-t".into()),
        cpus: 2,
        memory_mib: 300,
        ..rec("90a000000001", None)
    };
    db.insert(&a, &Actor::Local, None).unwrap();
    db.insert(
        &SandboxRecord {
            owner: Some("quota-t".into()),
            ..rec("90a000000002", None)
        },
        &Actor::Local,
        None,
    )
    .unwrap();
    assert_eq!(db.held_by("quota-t").unwrap(), (2, 3, 556));
    a.state = SandboxState::Stopped;
    a.reason = Some(Reason::Stopped);
    db.update(&mut a, &Actor::Local).unwrap();
    assert_eq!(db.held_by("quota-t").unwrap(), (1, 1, 256));
    // Admission is counted in the insert's own transaction.
    let limits = crate::Limits {
        sandboxes: 2,
        vcpus: 4,
        memory_mib: 1024,
        snapshots: 100,
    };
    let big = SandboxRecord {
        owner: Some("quota-t".into()),
        cpus: 4,
        ..rec("90a000000003", None)
    };
    match db.insert(&big, &Actor::Local, Some(&limits)) {
        Err(StateError::OverQuota {
            what, have, add, ..
        }) => assert_eq!((what, have, add), ("vCPUs", 1, 4)),
        other => panic!("{other:?}"),
    }
    let fits = SandboxRecord {
        owner: Some("quota-t".into()),
        ..rec("90a000000004", None)
    };
    db.insert(&fits, &Actor::Local, Some(&limits)).unwrap();
    assert!(matches!(
        db.insert(
            &SandboxRecord {
                owner: Some("quota-t".into()),
                ..rec("90a000000005", None)
            },
            &Actor::Local,
            Some(&limits)
        ),
        Err(StateError::OverQuota {
            what: "sandboxes",
            ..
        })
    ));
    assert!(
        db.find("90a000000005").unwrap().is_none(),
        "a refused insert leaves no row"
    );
    db.delete("90a000000004", &Actor::Local).unwrap();
    // Labels and environment survive the round trip; a reason with a detail too.
    let mut b = db.find("90a000000002").unwrap().unwrap();
    assert_eq!(b.labels.get("app").map(String::as_str), Some("web"));
    b.state = SandboxState::Failed;
    b.reason = Some(Reason::StartFailed("no kernel".into()));
    b.pid = None;
    b.op = Some("123:456".into());
    db.update(&mut b, &Actor::Reconcile).unwrap();
    assert_eq!(db.find("90a000000002").unwrap().unwrap(), b);
}

/// A writer holding a stale copy (it read `running`, another writer stopped the sandbox since)
/// is refused its move: the store checks it against the state stored now, not the writer's.
fn concurrent_moves_from_one_state_let_one_win(db: &dyn StateStore) {
    db.insert(&rec("c0c000000001", None), &Actor::Local, None)
        .unwrap();
    let mut a = db.find("c0c000000001").unwrap().unwrap();
    let mut b = a.clone();
    a.state = SandboxState::Stopped;
    a.reason = Some(Reason::Stopped);
    db.update(&mut a, &Actor::Local).unwrap();
    // `b` still believes it is running; a pause of a stopped sandbox is refused.
    b.state = SandboxState::Paused;
    assert!(matches!(
        db.update(&mut b, &Actor::Key("k".into())),
        Err(StateError::Transition { .. })
    ));
    assert_eq!(
        db.find("c0c000000001").unwrap().unwrap().state,
        SandboxState::Stopped
    );
    db.delete("c0c000000001", &Actor::Local).unwrap();
    assert!(matches!(
        db.update(&mut a, &Actor::Local),
        Err(StateError::NoSuchSandbox(_))
    ));
}

#[test]
fn the_suite_on_postgresql() {
    let server = crate::postgres::testing::Server::start();
    let url = server.url("suite");
    suite(&crate::PostgresStore::connect(&url).unwrap(), &|| {
        Box::new(crate::PostgresStore::connect(&url).unwrap())
    });
    // A second connection to the same database sees the same data, and does not migrate again.
    let again = crate::PostgresStore::connect(&server.url("suite")).unwrap();
    assert!(!again.list().unwrap().is_empty());
}
