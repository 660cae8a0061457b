//! coved on PostgreSQL (`--database postgres://…`): the same lifecycle as on the embedded
//! SQLite store, recorded in a database that several hosts could share, and found again by a
//! coved that starts later. The server is Debian's PostgreSQL, started by the test on loopback
//! with a throw-away data directory.

use cove_tests::cove_with_key as cove;
use cove_tests::{Coved, api_key};
use serde_json::Value;

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn a_coved_on_postgresql_runs_the_lifecycle_and_a_later_one_finds_it() {
    let pg = cove_state::testing::Server::start();
    let database = pg.url("cove_e2e");
    let key = api_key(&format!("pg-{}", std::process::id()), "exec");
    // Image names live in the store; the image itself is on this host's disk, so a database
    // that has never named it still boots it by digest.
    let digest =
        serde_json::from_str::<Value>(&ok(&cove_tests::cove_out(&["image", "inspect", "busybox"])))
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string();
    let server = Coved::start(&["--database", &database]);
    let a = ok(&cove(
        &server.url,
        &key,
        &[
            "create", "--image", &digest, "--memory", "256", "--name", "pg-a",
        ],
    ));
    assert_eq!(
        ok(&cove(
            &server.url,
            &key,
            &["exec", "pg-a", "--", "echo", "on postgres"]
        )),
        "on postgres"
    );
    ok(&cove(&server.url, &key, &["pause", &a]));
    ok(&cove(&server.url, &key, &["resume", &a]));
    // The name is the tenant's, in this database: taken once.
    let o = cove(
        &server.url,
        &key,
        &[
            "create", "--image", &digest, "--memory", "256", "--name", "pg-a",
        ],
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already in use"));
    // The event log, with the key as the actor of every change.
    let log = ok(&cove(
        &server.url,
        &key,
        &["events", "--sandbox", &a, "--json"],
    ));
    let seen: Vec<(String, String)> = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|e| {
            (
                e["state"].as_str().unwrap().to_string(),
                e["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let states: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        states,
        ["creating", "running", "paused", "running"],
        "{log}"
    );
    assert!(seen.iter().all(|(_, a)| a.starts_with("key:")), "{log}");
    // Not in this home's own SQLite store: the local coved does not know it.
    let local = ok(&cove_tests::cove_out(&["ls", "-q"]));
    assert!(!local.lines().any(|l| l == a), "{local}");
    // coved goes; the sandbox runs on; a new coved on the same database finds it.
    drop(server);
    let server = Coved::start(&["--database", &database]);
    let listed: Value =
        serde_json::from_str(&ok(&cove(&server.url, &key, &["ls", "--json"]))).unwrap();
    let found = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == a.as_str())
        .unwrap_or_else(|| panic!("{listed}"))
        .clone();
    assert_eq!(found["state"], "running", "{found}");
    assert_eq!(
        ok(&cove(
            &server.url,
            &key,
            &["exec", &a, "--", "echo", "again"]
        )),
        "again"
    );
    ok(&cove(&server.url, &key, &["rm", "-f", &a]));
    let o = cove(&server.url, &key, &["inspect", &a]);
    assert_eq!(o.status.code(), Some(125));
}
