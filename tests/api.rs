//! coved through HTTP with real guests: every route, two tenants against every route, scopes,
//! revoked keys, malformed requests, quotas, metrics, a kill -9 restart, and a bounded load.

use std::time::Duration;

use cove_tests::cove_with_key as cli_over;
use cove_tests::{Coved, api_key, coved, ok, wait_until};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

fn tenant(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}-{}-{nanos:08x}", std::process::id())
}

struct Api {
    http: Client,
    url: String,
}

impl Api {
    fn new(c: &Coved) -> Self {
        Self {
            http: Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            url: c.url.clone(),
        }
    }

    async fn call(
        &self,
        key: Option<&str>,
        m: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.http.request(m, format!("{}{path}", self.url));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let res = r.send().await.unwrap();
        let status = res.status();
        let has_id = res.headers().contains_key("x-request-id");
        let text = res.text().await.unwrap();
        assert!(has_id, "{path}: every response has a request id");
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_client_error() || status.is_server_error() {
            assert!(
                v["code"].is_string() && v["message"].is_string() && v["request_id"].is_string(),
                "{path}: error bodies are JSON with code, message and request id: {v}"
            );
        }
        (status, v)
    }

    async fn ok(&self, key: &str, m: Method, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(Some(key), m.clone(), path, body).await;
        assert!(s.is_success(), "{m} {path}: {s} {v}");
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_two_tenants_scopes_and_bad_requests() {
    let server = Coved::start(&[]);
    let api = Api::new(&server);
    let (ta, tb) = (tenant("a"), tenant("b"));
    let a = api_key(&ta, "exec");
    let b = api_key(&tb, "admin");
    let a_read = api_key(&ta, "read");

    // Create, with labels and an environment every command gets.
    let (s, sb) = api
        .call(
            Some(&a),
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"image": "busybox", "memory_mib": 256, "labels": {"app": "web"}, "env": {"GREETING": "hi"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{sb}");
    let id = sb["id"].as_str().unwrap().to_string();
    assert_eq!(sb["state"], "running");
    let base = format!("/v1/sandboxes/{id}");

    // The other tenant sees nothing of it, on every route: 404, as if it did not exist.
    for (m, path, body) in [
        (Method::GET, base.clone(), None),
        (Method::DELETE, base.clone(), None),
        (Method::POST, format!("{base}/pause"), None),
        (Method::POST, format!("{base}/resume"), None),
        (Method::POST, format!("{base}/hibernate"), None),
        (Method::POST, format!("{base}/snapshot"), None),
        (Method::POST, format!("{base}/fork"), Some(json!({}))),
        (
            Method::POST,
            format!("{base}/exec"),
            Some(json!({"cmd": ["true"]})),
        ),
        (Method::GET, format!("{base}/logs"), None),
        (Method::POST, format!("{base}/stop"), None),
        (Method::GET, format!("{base}/metrics"), None),
        (Method::GET, format!("{base}/processes"), None),
        (
            Method::POST,
            format!("{base}/processes/1/kill"),
            Some(json!({})),
        ),
        (
            Method::GET,
            format!("{base}/files?path=/etc/hostname"),
            None,
        ),
        (Method::PUT, format!("{base}/files?path=/x"), None),
        (Method::DELETE, format!("{base}/files?path=/x"), None),
        (Method::GET, format!("{base}/files/stat?path=/"), None),
        (Method::GET, format!("{base}/files/list?path=/"), None),
        (
            Method::POST,
            format!("{base}/files/mkdir"),
            Some(json!({"path": "/d"})),
        ),
        (
            Method::POST,
            format!("{base}/files/rename"),
            Some(json!({"from": "/a", "to": "/b"})),
        ),
    ] {
        let (s, v) = api.call(Some(&b), m.clone(), &path, body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{m} {path}: {v}");
        assert_eq!(v["code"], "not_found");
    }
    let list = api.ok(&b, Method::GET, "/v1/sandboxes", None).await;
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["id"] != id.as_str())
    );

    // The owner: get, list with filters, exec with env and stdin.
    assert_eq!(
        api.ok(&a, Method::GET, &base, None).await["id"],
        id.as_str()
    );
    let list = api
        .ok(
            &a_read,
            Method::GET,
            "/v1/sandboxes?label=app=web&state=running",
            None,
        )
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    let list = api
        .ok(&a, Method::GET, "/v1/sandboxes?label=app=db", None)
        .await;
    assert!(list["items"].as_array().unwrap().is_empty());
    // E2B's view of it: the envd token runs code in it, so a read key is not shown it.
    for (key, shown) in [(&a_read, false), (&a, true)] {
        let one = api
            .ok(key, Method::GET, &format!("/sandboxes/{id}"), None)
            .await;
        assert_eq!(one["sandboxID"], id.as_str(), "{one}");
        assert_eq!(one["state"], "running", "{one}");
        assert_eq!(one["envdAccessToken"].is_string(), shown, "{one}");
        let all = api.ok(key, Method::GET, "/v2/sandboxes", None).await;
        let all = all.as_array().unwrap();
        assert!(!all.is_empty());
        assert!(
            all.iter()
                .all(|s| s["envdAccessToken"].is_string() == shown),
            "{all:?}"
        );
    }
    let r = api
        .ok(
            &a,
            Method::POST,
            &format!("{base}/exec"),
            Some(json!({
                "cmd": ["sh", "-c", "echo $GREETING $EXTRA; cat; echo oops >&2; exit 3"],
                "env": {"EXTRA": "there"}, "stdin": "from stdin\n",
            })),
        )
        .await;
    assert_eq!(r["exit_code"], 3);
    assert_eq!(r["stdout"], "hi there\nfrom stdin\n");
    assert_eq!(r["stderr"], "oops\n");
    // Output past the limit is dropped and flagged; the command still finishes.
    let r = api
        .ok(
            &a,
            Method::POST,
            &format!("{base}/exec"),
            Some(json!({
                "cmd": ["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x; echo done >&2"]
            })),
        )
        .await;
    assert_eq!(r["stdout"].as_str().unwrap().len(), 1 << 20);
    assert_eq!(r["stdout_truncated"], true);
    assert_eq!(r["stderr"], "done\n");
    let r = api
        .ok(
            &a,
            Method::POST,
            &format!("{base}/exec"),
            Some(json!({"cmd": ["sleep", "10"], "timeout_secs": 0.5})),
        )
        .await;
    assert_eq!(r["timed_out"], true, "{r}");
    let (s, v) = api
        .call(
            Some(&a),
            Method::POST,
            &format!("{base}/exec"),
            Some(json!({"cmd": ["no-such-program"]})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");

    // Scopes: a read key reads but does not change; a revoked key is unknown.
    let (s, v) = api
        .call(Some(&a_read), Method::POST, &format!("{base}/pause"), None)
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{v}"
    );
    let (s, _) = api
        .call(
            Some(&a),
            Method::DELETE,
            "/v1/images/sha256:0000000000000000000000000000000000000000000000000000000000000000",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "images need admin");
    let revoked = api_key(&ta, "exec");
    let (s, _) = api.call(Some(&revoked), Method::GET, &base, None).await;
    assert_eq!(s, StatusCode::OK);
    let id_of = coved().args(["keys", "ls", "--json"]).output().unwrap();
    let keys: Value = serde_json::from_slice(&id_of.stdout).unwrap();
    let kid = keys.as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        coved()
            .args(["keys", "revoke", &kid])
            .status()
            .unwrap()
            .success()
    );
    let (s, v) = api.call(Some(&revoked), Method::GET, &base, None).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized")),
        "{v}"
    );
    let (s, _) = api.call(None, Method::GET, &base, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = api
        .call(Some("cove_made_up"), Method::GET, &base, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Lifecycle through HTTP.
    assert_eq!(
        api.ok(&a, Method::POST, &format!("{base}/pause"), None)
            .await["state"],
        "paused"
    );
    let (s, v) = api
        .call(
            Some(&a),
            Method::POST,
            &format!("{base}/exec"),
            Some(json!({"cmd": ["true"]})),
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict")),
        "exec in a paused sandbox: {v}"
    );
    assert_eq!(
        api.ok(&a, Method::POST, &format!("{base}/resume"), None)
            .await["state"],
        "running"
    );
    assert_eq!(
        api.ok(&a, Method::POST, &format!("{base}/hibernate"), None)
            .await["state"],
        "hibernated"
    );
    assert_eq!(
        api.ok(&a, Method::POST, &format!("{base}/resume"), None)
            .await["state"],
        "running"
    );
    let snap = api
        .ok(&a, Method::POST, &format!("{base}/snapshot"), None)
        .await;
    let snap_id = snap["id"].as_str().unwrap().to_string();
    let snaps = api.ok(&a, Method::GET, "/v1/snapshots", None).await;
    assert!(
        snaps["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == snap_id.as_str())
    );
    let snaps_b = api.ok(&b, Method::GET, "/v1/snapshots", None).await;
    assert!(
        snaps_b["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["id"] != snap_id.as_str())
    );
    let (s, _) = api
        .call(
            Some(&b),
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"snapshot": snap_id})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another tenant's snapshot");
    let restored = api
        .ok(
            &a,
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"snapshot": snap_id})),
        )
        .await;
    let forks = api
        .ok(
            &a,
            Method::POST,
            &format!("{base}/fork"),
            Some(json!({"count": 2})),
        )
        .await;
    let forks: Vec<String> = forks["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(forks.len(), 2);
    for f in &forks {
        let r = api
            .ok(
                &a,
                Method::POST,
                &format!("/v1/sandboxes/{f}/exec"),
                Some(json!({"cmd": ["sh", "-c", "echo $GREETING"]})),
            )
            .await;
        assert_eq!(r["stdout"], "hi\n", "a fork keeps the environment");
    }
    // Processes: a background sleep is listed and can be killed; the agent cannot.
    api.ok(
        &a,
        Method::POST,
        &format!("{base}/exec"),
        Some(json!({"cmd": ["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 &"]})),
    )
    .await;
    // The background child execs `sleep` after the exec has answered: wait for it to show.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let pid = loop {
        let ps = api
            .ok(&a, Method::GET, &format!("{base}/processes"), None)
            .await;
        let sleeper = ps["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["cmdline"] == json!(["sleep", "300"]))
            .and_then(|p| p["pid"].as_u64());
        match sleeper {
            Some(pid) => break pid,
            None if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None => panic!("{ps}"),
        }
    };
    let (s, v) = api
        .call(
            Some(&a),
            Method::POST,
            &format!("{base}/processes/1/kill"),
            Some(json!({"signal": 9})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "the agent is not signalled: {v}"
    );
    let (s, _) = api
        .call(
            Some(&a),
            Method::POST,
            &format!("{base}/processes/{pid}/kill"),
            Some(json!({"signal": 9})),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let mut gone = false;
    for _ in 0..50 {
        let ps = api
            .ok(&a, Method::GET, &format!("{base}/processes"), None)
            .await;
        if !ps["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == pid && p["state"] != "Z")
        {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the killed process went away");
    let (s, _) = api
        .call(
            Some(&a),
            Method::POST,
            &format!("{base}/processes/999999/kill"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Usage, measured on the host: a guest that wrote 32 MiB to its disk holds at least that.
    api.ok(&a, Method::POST, &format!("{base}/exec"), Some(json!({"cmd": ["sh", "-c", "dd if=/dev/urandom of=/root/fill bs=1M count=32 2>/dev/null; sync"]}))).await;
    let m = api
        .ok(&a, Method::GET, &format!("{base}/metrics"), None)
        .await;
    assert!(m["cpu_seconds"].as_f64().unwrap() > 0.0, "{m}");
    assert!(m["memory_bytes"].as_u64().unwrap() > 16 << 20, "{m}");
    assert_eq!(m["memory_limit_bytes"], 256u64 << 20);
    assert!(m["disk_bytes"].as_u64().unwrap() >= 32 << 20, "{m}");
    assert_eq!(m["disk_limit_bytes"], 2048u64 << 20);
    let logs = api.ok(&a, Method::GET, &format!("{base}/logs"), None).await;
    assert!(logs.as_str().is_some_and(|l| !l.is_empty()), "{logs}");
    api.ok(
        &a,
        Method::DELETE,
        &format!("/v1/snapshots/{snap_id}"),
        None,
    )
    .await;
    let images = api.ok(&a_read, Method::GET, "/v1/images", None).await;
    assert!(images["items"].as_array().unwrap().iter().any(|i| {
        i["names"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "busybox")
    }));

    // Malformed requests: a 4xx with a code, and nothing created.
    let before = api.ok(&a, Method::GET, "/v1/sandboxes", None).await["items"]
        .as_array()
        .unwrap()
        .len();
    let raw = |body: &str| {
        let api = &api;
        let a = a.clone();
        let body = body.to_string();
        async move {
            let res = api
                .http
                .post(format!("{}/v1/sandboxes", api.url))
                .bearer_auth(a)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let s = res.status();
            let v: Value = res.json().await.unwrap();
            (s, v["code"].as_str().unwrap().to_string())
        }
    };
    assert_eq!(
        raw("{bad json").await,
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
    assert_eq!(
        raw(r#"{"cpus": "two"}"#).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable".into())
    );
    assert_eq!(
        raw(r#"{"cpus": -1}"#).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable".into())
    );
    assert_eq!(
        raw(r#"{"imgae": "busybox"}"#).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable".into())
    );
    assert_eq!(
        raw(r#"{"cpus": 1000}"#).await,
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
    assert_eq!(
        raw(r#"{"image": "no-such-image"}"#).await,
        (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable".into())
    );
    assert_eq!(
        raw(r#"{"env": {"BAD NAME": "x"}}"#).await,
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
    // Objects only: an array was read as the struct's fields in order (a default sandbox).
    for body in ["[]", "[1]", r#""busybox""#, "null"] {
        assert_eq!(
            raw(body).await,
            (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable".into()),
            "{body}"
        );
    }
    // Ranges as the docs state them, bounded by the host too, overflow-free; label keys and
    // values a filter can name.
    let host_cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let host_mib = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap()
        / 1024;
    for body in [
        r#"{"cpus": 33}"#.to_string(),
        format!(r#"{{"cpus": {}}}"#, host_cpus + 1),
        r#"{"memory_mib": 262145}"#.to_string(),
        format!(r#"{{"memory_mib": {}}}"#, host_mib + 1),
        r#"{"ttl_secs": 18446744073709551615}"#.to_string(),
        r#"{"idle_timeout_secs": 315360001}"#.to_string(),
        r#"{"labels": {"a=b": "x"}}"#.to_string(),
        r#"{"labels": {"a,b": "x"}}"#.to_string(),
        r#"{"labels": {"k\u0001": "x"}}"#.to_string(),
        r#"{"labels": {"k": "a,b"}}"#.to_string(),
        r#"{"labels": {"k": "line\nbreak"}}"#.to_string(),
    ] {
        // Well-formed JSON each: refused for its setting, not as a bad body.
        serde_json::from_str::<Value>(&body).expect("valid JSON");
        assert_eq!(
            raw(&body).await,
            (StatusCode::BAD_REQUEST, "bad_request".into()),
            "{body}"
        );
    }
    let (s, v) = api
        .call(Some(&a), Method::GET, "/v1/sandboxes?state=bogus", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let huge = format!(r#"{{"labels": {{"k": "{}"}}}}"#, "x".repeat(2 << 20));
    let res = api
        .http
        .post(format!("{}/v1/sandboxes", api.url))
        .bearer_auth(&a)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (s, v) = api
        .call(Some(&a), Method::GET, "/v1/sandboxes?limit=0", None)
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, v) = api.call(Some(&a), Method::GET, "/v1/nope", None).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_route"))
    );
    let after = api.ok(&a, Method::GET, "/v1/sandboxes", None).await["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, after, "a refused create leaves nothing");

    // Pagination: three pages of one.
    let mut seen = vec![];
    let mut cursor = String::new();
    loop {
        let page = api
            .ok(
                &a,
                Method::GET,
                &format!("/v1/sandboxes?limit=1{cursor}"),
                None,
            )
            .await;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(
        seen.len(),
        4,
        "the sandbox, the restore and two forks: {seen:?}"
    );
    // A cursor is a position in the order, not a sandbox to find: the page after it still
    // comes when the sandbox it ends on is removed in between.
    let first = api.ok(&a, Method::GET, "/v1/sandboxes?limit=2", None).await;
    let cursor = first["next_cursor"].as_str().unwrap().to_string();
    let gone = first["items"][1]["id"].as_str().unwrap().to_string();
    assert_eq!(gone, seen[1]);
    let (st, _) = api
        .call(
            Some(&a),
            Method::DELETE,
            &format!("/v1/sandboxes/{gone}"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    seen.retain(|s| *s != gone);
    let next = api
        .ok(
            &a,
            Method::GET,
            &format!("/v1/sandboxes?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    let rest: Vec<&str> = next["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(rest, seen[1..], "{next}");
    assert!(next["next_cursor"].is_null(), "{next}");
    // E2B's `nextToken` is the same cursor.
    let (s, v) = api
        .call(
            Some(&a),
            Method::GET,
            &format!("/v2/sandboxes?limit=2&nextToken={cursor}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    // A cursor this server never gave (a bare id, garbage) is refused, not an empty page.
    for bad in [seen[0].as_str(), "bogus", "12-"] {
        let (s, v) = api
            .call(
                Some(&a),
                Method::GET,
                &format!("/v1/sandboxes?cursor={bad}"),
                None,
            )
            .await;
        assert_eq!(
            (s, v["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_request")),
            "{bad}: {v}"
        );
        // (E2B's error shape: `{"code": 400, "message"}`.)
        let res = api
            .http
            .get(format!("{}/v2/sandboxes?nextToken={bad}", api.url))
            .bearer_auth(&a)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
    }

    // Metrics, unauthenticated.
    let m = api
        .http
        .get(format!("{}/metrics", api.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("cove_operation_seconds_count{op=\"create\"}"),
        "{m}"
    );
    assert!(m.contains("cove_sandboxes{state=\"running\"}"), "{m}");
    assert!(m.contains("cove_execs_total{outcome=\"ok\"}"), "{m}");

    // Every sandbox goes.
    for s in seen {
        let (st, _) = api
            .call(
                Some(&a),
                Method::DELETE,
                &format!("/v1/sandboxes/{s}"),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::NO_CONTENT);
    }
    let _ = restored;
    let (s, _) = api.call(Some(&a), Method::GET, &base, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_and_the_router_agree() {
    let server = Coved::start(&[]);
    let api = Api::new(&server);
    let key = api_key(&tenant("doc"), "admin");
    let doc: Value = api
        .http
        .get(format!("{}/v1/openapi.json", api.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15, "{:?}", paths.keys());
    // Every documented route is served: asked with ids that exist nowhere, each answers from
    // its handler (not found, unprocessable…), never the router's `no_route` or
    // `method_not_allowed`. (The router is built from these same handlers, so it serves nothing
    // the document lacks; an undocumented path gets `no_route`.)
    for (path, ops) in paths {
        let concrete = path
            .replace("{id}", "000000000000")
            .replace("{pid}", "1")
            .replace("{port}", "3000")
            .replace(
                "{digest}",
                "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            );
        for method in ops.as_object().unwrap().keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = (m == Method::POST).then(|| json!({"cpus": "not a number", "cmd": []}));
            let (s, v) = api.call(Some(&key), m.clone(), &concrete, body).await;
            let code = v["code"].as_str().unwrap_or("");
            assert!(
                code != "no_route"
                    && code != "method_not_allowed"
                    && s != StatusCode::METHOD_NOT_ALLOWED,
                "{m} {path} is documented but not served: {s} {v}"
            );
        }
    }
    let (s, v) = api
        .call(Some(&key), Method::GET, "/v1/undocumented", None)
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_route"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_rate_limits_answer_429_naming_the_limit() {
    let t = tenant("quota");
    let key = api_key(&t, "exec");
    let set = |more: &[&str]| {
        let mut args = vec![
            "quota",
            "set",
            &t,
            "--sandboxes",
            "1",
            "--vcpus",
            "1",
            "--memory-mib",
            "512",
        ];
        args.extend_from_slice(more);
        let o = coved().args(&args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    set(&["--snapshots", "1"]);
    // Set again without a snapshot limit: the one set stays.
    set(&[]);
    let o = coved().args(["quota", "show", &t]).output().unwrap();
    let q: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(q["snapshots"], 1, "{q}");
    let server = Coved::start(&["--rate-limit", "1000"]);
    let api = Api::new(&server);
    let (s, v) = api
        .call(
            Some(&key),
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"memory_mib": 1024})),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("memory (MiB) quota"),
        "{v}"
    );
    // Two at once against a quota of one: exactly one wins.
    let body = json!({"memory_mib": 256});
    let (r1, r2) = tokio::join!(
        api.call(
            Some(&key),
            Method::POST,
            "/v1/sandboxes",
            Some(body.clone())
        ),
        api.call(
            Some(&key),
            Method::POST,
            "/v1/sandboxes",
            Some(body.clone())
        ),
    );
    let mut statuses = [r1.0, r2.0];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::CREATED, StatusCode::TOO_MANY_REQUESTS],
        "{r1:?} {r2:?}"
    );
    let (won, lost) = if r1.0 == StatusCode::CREATED {
        (r1.1, r2.1)
    } else {
        (r2.1, r1.1)
    };
    assert!(
        lost["message"]
            .as_str()
            .unwrap()
            .contains("sandboxes quota"),
        "{lost}"
    );
    let id = won["id"].as_str().unwrap();
    // Snapshots: one, then the quota; a removed one frees its place.
    let path = format!("/v1/sandboxes/{id}/snapshot");
    let snap = || api.call(Some(&key), Method::POST, &path, None);
    let (s, first) = snap().await;
    assert_eq!(s, StatusCode::CREATED, "{first}");
    let (s, v) = snap().await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("the snapshots quota of tenant"),
        "{v}"
    );
    let first = first["id"].as_str().unwrap();
    api.ok(
        &key,
        Method::DELETE,
        &format!("/v1/snapshots/{first}"),
        None,
    )
    .await;
    let (s, v) = snap().await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    api.ok(
        &key,
        Method::DELETE,
        &format!("/v1/snapshots/{}", v["id"].as_str().unwrap()),
        None,
    )
    .await;
    api.ok(&key, Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
        .await;
    drop(server);

    // A rate of 1 a second: a burst of 5 meets 429 `rate_limited`.
    let server = Coved::start(&["--rate-limit", "1"]);
    let api = Api::new(&server);
    let mut limited = 0;
    for _ in 0..5 {
        let (s, v) = api
            .call(Some(&key), Method::GET, "/v1/sandboxes", None)
            .await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(v["code"], "rate_limited");
            limited += 1;
        }
    }
    assert!(limited >= 3, "{limited} of 5 limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coved_killed_mid_request_restarts_with_every_sandbox_intact() {
    let t = tenant("restart");
    let key = api_key(&t, "exec");
    let mut server = Coved::start(&[]);
    let api = Api::new(&server);
    let sb = api
        .ok(
            &key,
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"memory_mib": 256})),
        )
        .await;
    let id = sb["id"].as_str().unwrap().to_string();
    api.ok(
        &key,
        Method::POST,
        &format!("/v1/sandboxes/{id}/exec"),
        Some(json!({"cmd": ["sh", "-c", "echo kept > /root/state"]})),
    )
    .await;
    // An exec in flight when coved dies.
    let inflight = {
        let http = api.http.clone();
        let url = format!("{}/v1/sandboxes/{id}/exec", api.url);
        let key = key.clone();
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(key)
                .json(&json!({"cmd": ["sleep", "30"]}))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A create in flight too (a boot takes most of a second here).
    let creating = {
        let http = api.http.clone();
        let url = format!("{}/v1/sandboxes", api.url);
        let key = key.clone();
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(key)
                .json(&json!({"memory_mib": 256, "labels": {"interrupted": "yes"}}))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SIGKILL: no chance to clean up.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    assert!(
        inflight.await.unwrap().is_err(),
        "the in-flight request failed with the server"
    );
    assert!(creating.await.unwrap().is_err(), "so did the create");

    let server = Coved::start(&[]);
    let api = Api::new(&server);
    let got = api
        .ok(&key, Method::GET, &format!("/v1/sandboxes/{id}"), None)
        .await;
    assert_eq!(got["state"], "running", "{got}");
    let r = api
        .ok(
            &key,
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"cmd": ["cat", "/root/state"]})),
        )
        .await;
    assert_eq!(r["stdout"], "kept\n");
    // The interrupted command ended with its session: nothing of it is left running.
    let r = api
        .ok(
            &key,
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"cmd": ["sh", "-c", "pgrep -x sleep || echo none"]})),
        )
        .await;
    assert_eq!(r["stdout"], "none\n", "{r}");
    api.ok(&key, Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
        .await;
    // The interrupted create ended in a defined state: its VM came up (running) or it failed;
    // either way it is listed, owned by the tenant, and removable.
    let mut state = String::new();
    for _ in 0..300 {
        let l = api
            .ok(
                &key,
                Method::GET,
                "/v1/sandboxes?label=interrupted=yes",
                None,
            )
            .await;
        if let Some(s) = l["items"].as_array().unwrap().first() {
            state = s["state"].as_str().unwrap().to_string();
            if state == "running" || state == "failed" {
                let id = s["id"].as_str().unwrap().to_string();
                if state == "running" {
                    let r = api
                        .ok(
                            &key,
                            Method::POST,
                            &format!("/v1/sandboxes/{id}/exec"),
                            Some(json!({"cmd": ["true"]})),
                        )
                        .await;
                    assert_eq!(r["exit_code"], 0);
                }
                api.ok(&key, Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
                    .await;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        state == "running" || state == "failed",
        "the interrupted create is {state:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_execs_across_ten_sandboxes() {
    let t = tenant("load");
    let key = api_key(&t, "exec");
    let server = Coved::start(&["--rate-limit", "10000"]);
    let api = std::sync::Arc::new(Api::new(&server));
    let mut ids = vec![];
    for _ in 0..10 {
        let sb = api
            .ok(
                &key,
                Method::POST,
                "/v1/sandboxes",
                Some(json!({"memory_mib": 128, "disk_mib": 256})),
            )
            .await;
        ids.push(sb["id"].as_str().unwrap().to_string());
    }
    let mut tasks = vec![];
    for i in 0..200 {
        let (api, key, id) = (api.clone(), key.clone(), ids[i % 10].clone());
        tasks.push(tokio::spawn(async move {
            let r = api
                .ok(
                    &key,
                    Method::POST,
                    &format!("/v1/sandboxes/{id}/exec"),
                    Some(json!({
                        "cmd": ["sh", "-c", format!("seq 1 {}; echo end-{i}", 100 + i)]
                    })),
                )
                .await;
            (i, r)
        }));
    }
    for t in tasks {
        let (i, r) = t.await.unwrap();
        let expect: String =
            (1..=100 + i).map(|n| format!("{n}\n")).collect::<String>() + &format!("end-{i}\n");
        assert_eq!(r["exit_code"], 0);
        assert_eq!(r["stdout"].as_str().unwrap(), expect, "exec {i}");
    }
    for id in ids {
        api.ok(&key, Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_exec_over_websocket_with_stdin_resize_and_signals() {
    use cove_sdk::ExecOutput;
    let key = api_key(&tenant("ws"), "exec");
    let server = Coved::start(&[]);
    let c = cove_sdk::Client::new(&server.url, &key).unwrap();
    let sb = c
        .create(&cove_api::CreateSandbox {
            memory_mib: Some(256),
            ..Default::default()
        })
        .await
        .unwrap();
    let collect = |mut out: cove_sdk::ExecReader| async move {
        let (mut stdout, mut stderr, mut exit) = (Vec::new(), Vec::new(), None);
        while let Some(ev) = out.next().await {
            match ev.unwrap() {
                ExecOutput::Stdout(b) => stdout.extend(b),
                ExecOutput::Stderr(b) => stderr.extend(b),
                ExecOutput::Exit(code, timed_out) => exit = Some((code, timed_out)),
                ExecOutput::Started(pid) => assert!(pid > 1),
            }
        }
        (
            String::from_utf8(stdout).unwrap(),
            String::from_utf8(stderr).unwrap(),
            exit,
        )
    };

    // Stdin in several pieces, then its end; stdout and stderr apart.
    let mut s = c
        .exec_stream(
            &sb.id,
            &cove_api::ExecStart {
                cmd: vec!["sh".into(), "-c".into(), "cat; echo done >&2".into()],
                stdin: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for part in ["one ", "two ", "three\n"] {
        s.input.stdin(part.as_bytes()).await.unwrap();
    }
    s.input.control(&cove_api::ExecControl::Eof).await.unwrap();
    let (out, err, exit) = collect(s.output).await;
    assert_eq!(
        (out.as_str(), err.as_str(), exit),
        ("one two three\n", "done\n", Some((0, false)))
    );

    // A terminal, resized while the command waits.
    let mut s = c
        .exec_stream(
            &sb.id,
            &cove_api::ExecStart {
                cmd: vec!["sh".into(), "-c".into(), "read x; stty size".into()],
                tty: Some(cove_api::TtySize { rows: 24, cols: 80 }),
                stdin: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    s.input
        .control(&cove_api::ExecControl::Resize {
            rows: 40,
            cols: 100,
        })
        .await
        .unwrap();
    s.input.stdin(b"go\n").await.unwrap();
    let (out, _, exit) = collect(s.output).await;
    assert!(out.contains("40 100"), "{out:?}");
    assert_eq!(exit, Some((0, false)));

    // A signal to the command.
    let mut s = c
        .exec_stream(
            &sb.id,
            &cove_api::ExecStart {
                cmd: vec!["sleep".into(), "30".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let first = s.output.next().await.unwrap().unwrap();
    assert!(matches!(first, ExecOutput::Started(_)), "{first:?}");
    s.input
        .control(&cove_api::ExecControl::Signal { signal: 9 })
        .await
        .unwrap();
    let (_, _, exit) = collect(s.output).await;
    assert_eq!(exit, Some((137, false)));

    // The image's default command when none is given; refusals before the upgrade are JSON.
    let s = c
        .exec_stream(
            &sb.id,
            &cove_api::ExecStart {
                stdin: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut input = s.input;
    input.stdin(b"echo from the default shell\n").await.unwrap();
    input.control(&cove_api::ExecControl::Eof).await.unwrap();
    let (out, _, exit) = collect(s.output).await;
    assert_eq!(
        (out.as_str(), exit),
        ("from the default shell\n", Some((0, false)))
    );
    match c
        .exec_stream("000000000000", &cove_api::ExecStart::default())
        .await
    {
        Err(cove_sdk::Error::Api { status, error }) => {
            assert_eq!(
                (status, error.code.as_str()),
                (StatusCode::NOT_FOUND, "not_found")
            );
        }
        other => panic!("expected a 404, got {other:?}"),
    }
    c.delete(&sb.id).await.unwrap();
}

/// `cove` speaks only the API: to the local coved over its Unix socket (as the host's
/// administrator) or to a coved with `COVE_HOST` and a key. Each command runs both ways here,
/// and the exit codes, refusals, output and `--json` shapes must agree (the administrator's view
/// adds only `host`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_works_the_same_locally_and_with_a_key() {
    let key = api_key(&tenant("cli"), "exec");
    let server = Coved::start(&[]);
    let cove = |remote: bool, args: &[&str], stdin: &[u8]| {
        use std::io::Write;
        let mut c = cove_tests::cove();
        c.args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if remote {
            c.env("COVE_HOST", &server.url).env("COVE_API_KEY", &key);
        }
        let mut child = c.spawn().unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let keys = |v: &Value| {
        let mut k: Vec<String> = v
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "host")
            .cloned()
            .collect();
        k.sort();
        k
    };
    let mut seen: Vec<Vec<(Option<i32>, String, String)>> = Vec::new();
    let mut shapes: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for remote in [false, true] {
        let mut got = Vec::new();
        // What must agree: the exit code, stdout and stderr with the ids taken out.
        let rec = |o: &std::process::Output, ids: &[&str]| {
            let clean = |s: String| ids.iter().fold(s, |s, id| s.replace(id, "ID"));
            (o.status.code(), clean(out(o)), clean(err(o)))
        };
        let o = cove(
            remote,
            &["run", "--", "sh", "-c", "echo out; echo err >&2; exit 7"],
            b"",
        );
        assert_eq!(o.status.code(), Some(7));
        got.push(rec(&o, &[]));
        let o = cove(remote, &["create", "--memory", "256"], b"");
        assert!(o.status.success(), "{}", err(&o));
        let id = out(&o).trim().to_string();
        let ids = [id.as_str()];
        let o = cove(
            remote,
            &["exec", "-i", &id, "--", "tr", "a-z", "A-Z"],
            b"piped through\n",
        );
        assert_eq!(out(&o), "PIPED THROUGH\n");
        got.push(rec(&o, &ids));
        // A missing program and one that cannot run: the shell's codes, both ways.
        let o = cove(remote, &["exec", &id, "--", "no-such-program"], b"");
        assert_eq!(o.status.code(), Some(127), "{}", err(&o));
        got.push(rec(&o, &ids));
        let o = cove(remote, &["exec", &id, "--", "/etc/passwd"], b"");
        assert_eq!(o.status.code(), Some(126), "{}", err(&o));
        got.push(rec(&o, &ids));
        // A running sandbox is not removed without -f.
        let o = cove(remote, &["rm", &id], b"");
        assert_eq!(o.status.code(), Some(125), "{}", err(&o));
        assert!(err(&o).contains("running"), "{}", err(&o));
        got.push(rec(&o, &ids));
        let o = cove(remote, &["inspect", &id], b"");
        assert!(o.status.success(), "{}", err(&o));
        let inspected: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(inspected["host"].is_object(), !remote, "{inspected}");
        let o = cove(remote, &["ls", "--json"], b"");
        let listed: Value = serde_json::from_slice(&o.stdout).unwrap();
        let mine = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{id} not listed: {listed}"))
            .clone();
        shapes.push((keys(&inspected), keys(&mine)));
        let o = cove(remote, &["ls"], b"");
        assert!(out(&o).lines().any(|l| l.starts_with(&id)), "{}", out(&o));
        got.push((
            o.status.code(),
            out(&o).lines().next().unwrap_or_default().to_string(),
            err(&o),
        ));
        // cp both ways, streamed through coved.
        let dir = cove_tests::TempDir::new("parity-cp");
        let src = dir.0.join("in.txt");
        std::fs::write(&src, b"copied over the API\n").unwrap();
        let o = cove(
            remote,
            &["cp", src.to_str().unwrap(), &format!("{id}:/root/")],
            b"",
        );
        assert!(o.status.success(), "{}", err(&o));
        got.push(rec(&o, &ids));
        let back = dir.0.join("back.txt");
        let o = cove(
            remote,
            &["cp", &format!("{id}:/root/in.txt"), back.to_str().unwrap()],
            b"",
        );
        assert!(o.status.success(), "{}", err(&o));
        assert_eq!(std::fs::read(&back).unwrap(), b"copied over the API\n");
        let o = cove(
            remote,
            &["cp", &format!("{id}:/root/missing"), back.to_str().unwrap()],
            b"",
        );
        assert_eq!(o.status.code(), Some(125));
        assert_eq!(
            std::fs::read(&back).unwrap(),
            b"copied over the API\n",
            "a failed copy keeps the old file"
        );
        got.push(rec(&o, &ids));
        // fs.
        for args in [
            &["fs", "mkdir", "-p", &id, "/root/a/b"][..],
            &["fs", "mv", &id, "/root/in.txt", "/root/a/b/moved.txt"],
            &["fs", "ls", &id, "/root/a/b"],
            &["fs", "stat", &id, "/root/a"],
            &["fs", "rm", "-r", &id, "/root/a"],
            &["fs", "stat", &id, "/root/a"],
        ] {
            let o = cove(remote, args, b"");
            // Times differ between runs: only the stat's kind is compared.
            let o = if args[1] == "stat" && o.status.success() {
                let v: Value = serde_json::from_slice(&o.stdout).unwrap();
                got.push((o.status.code(), v["kind"].to_string(), err(&o)));
                continue;
            } else {
                o
            };
            got.push(rec(&o, &ids));
        }
        // stop, then the state says so; a stopped sandbox goes without -f.
        let o = cove(remote, &["stop", &id], b"");
        got.push(rec(&o, &ids));
        let o = cove(remote, &["inspect", &id], b"");
        let st: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(st["state"], "stopped");
        let o = cove(remote, &["rm", &id], b"");
        assert!(o.status.success(), "{}", err(&o));
        got.push(rec(&o, &ids));
        let o = cove(remote, &["inspect", &id], b"");
        assert_eq!(o.status.code(), Some(125));
        got.push(rec(&o, &ids));
        seen.push(got);
    }
    assert_eq!(seen[0], seen[1], "local (left) and with a key (right)");
    assert_eq!(shapes[0], shapes[1], "the --json shapes, less `host`");
    assert!(
        seen[0].last().unwrap().2.contains("no such sandbox: ID"),
        "{:?}",
        seen[0].last()
    );
    // Host administration needs an operator's key; the host's administrator has its scope.
    for args in [&["template", "create", "busybox"][..], &["image", "prune"]] {
        let o = cove(true, args, b"");
        assert_eq!(o.status.code(), Some(125));
        assert!(err(&o).contains("needs operator"), "{}", err(&o));
    }
    let info = out(&cove(true, &["info"], b""));
    assert!(
        info.contains("engine:    qemu") && info.contains("busybox"),
        "{info}"
    );
    let info = out(&cove(false, &["info"], b""));
    assert!(
        info.contains("engine:    qemu (") && info.contains("why:"),
        "{info}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_stream_both_ways_and_metadata_operations_work() {
    let key = api_key(&tenant("files"), "exec");
    let server = Coved::start(&[]);
    let api = Api::new(&server);
    let sb = api
        .ok(
            &key,
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"memory_mib": 256})),
        )
        .await;
    let base = format!("/v1/sandboxes/{}", sb["id"].as_str().unwrap());
    // 24 MiB of non-repeating bytes: larger than any body limit, streamed both ways.
    let mut data = vec![0u8; 24 << 20];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for c in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let res = api
        .http
        .put(format!(
            "{}{base}/files?path=/data/in/blob.bin&mode=600",
            api.url
        ))
        .bearer_auth(&key)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let w: Value = res.json().await.unwrap();
    assert_eq!(w["bytes"], data.len());
    let r = api
        .ok(
            &key,
            Method::POST,
            &format!("{base}/exec"),
            Some(json!({"cmd": ["sha256sum", "/data/in/blob.bin"]})),
        )
        .await;
    assert!(
        r["stdout"]
            .as_str()
            .unwrap()
            .starts_with(&cove_tests::sha256(&data)),
        "{r}"
    );
    let back = api
        .http
        .get(format!("{}{base}/files?path=/data/in/blob.bin", api.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(back.status(), StatusCode::OK);
    let back = back.bytes().await.unwrap();
    assert!(
        back.len() == data.len() && back[..] == data[..],
        "the download matches"
    );
    let st = api
        .ok(
            &key,
            Method::GET,
            &format!("{base}/files/stat?path=/data/in/blob.bin"),
            None,
        )
        .await;
    assert_eq!(
        (
            st["kind"].as_str(),
            st["size"].as_u64(),
            st["mode"].as_u64()
        ),
        (Some("file"), Some(24 << 20), Some(0o600))
    );
    api.ok(
        &key,
        Method::POST,
        &format!("{base}/files/mkdir"),
        Some(json!({"path": "/data/out/deep", "parents": true})),
    )
    .await;
    api.ok(
        &key,
        Method::POST,
        &format!("{base}/files/rename"),
        Some(json!({"from": "/data/in/blob.bin", "to": "/data/out/deep/blob.bin"})),
    )
    .await;
    let l = api
        .ok(
            &key,
            Method::GET,
            &format!("{base}/files/list?path=/data/out/deep"),
            None,
        )
        .await;
    assert_eq!(l["items"][0]["name"], "blob.bin");
    // Errors with the status that fits.
    let (s, v) = api
        .call(
            Some(&key),
            Method::GET,
            &format!("{base}/files?path=/data/in/blob.bin"),
            None,
        )
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found")),
        "{v}"
    );
    let (s, _) = api
        .call(
            Some(&key),
            Method::GET,
            &format!("{base}/files?path=/data"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "a directory is not downloaded");
    let (s, _) = api
        .call(
            Some(&key),
            Method::GET,
            &format!("{base}/files/stat?path=relative"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = api
        .call(
            Some(&key),
            Method::DELETE,
            &format!("{base}/files?path=/data/out"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "not empty without recursive");
    let (s, _) = api
        .call(
            Some(&key),
            Method::DELETE,
            &format!("{base}/files?path=/data/out&recursive=true"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api
        .call(
            Some(&key),
            Method::GET,
            &format!("{base}/files/stat?path=/data/out"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    api.ok(&key, Method::DELETE, &base, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_stream_as_ndjson_and_sse_per_tenant() {
    let (t, other) = (tenant("ev"), tenant("ev-other"));
    let key = api_key(&t, "exec");
    let other_key = api_key(&other, "read");
    let server = Coved::start(&[]);
    let api = Api::new(&server);
    // Follow from now on: what the tenant's sandbox goes through arrives as it happens.
    let mut follow = api
        .http
        .get(format!("{}/v1/events?follow=true", api.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        follow.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let sb = api
        .ok(
            &key,
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"memory_mib": 256})),
        )
        .await;
    let id = sb["id"].as_str().unwrap().to_string();
    let base = format!("/v1/sandboxes/{id}");
    api.ok(&key, Method::POST, &format!("{base}/pause"), None)
        .await;
    api.ok(&key, Method::POST, &format!("{base}/resume"), None)
        .await;
    api.ok(&key, Method::DELETE, &base, None).await;
    let mut seen: Vec<Value> = vec![];
    let mut buf = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !seen.iter().any(|e| e["state"] == "removed") {
        let chunk = tokio::time::timeout_at(deadline, follow.chunk())
            .await
            .expect("events arrive")
            .unwrap()
            .expect("the stream stays open");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            seen.push(serde_json::from_str(&line).unwrap());
        }
    }
    let mine: Vec<&Value> = seen
        .iter()
        .filter(|e| e["sandbox"] == id.as_str())
        .collect();
    let states: Vec<&str> = mine.iter().map(|e| e["state"].as_str().unwrap()).collect();
    assert_eq!(
        states,
        ["creating", "running", "paused", "running", "removed"],
        "{seen:?}"
    );
    assert!(
        mine.iter()
            .all(|e| e["actor"].as_str().unwrap().starts_with("key:")),
        "{mine:?}"
    );
    assert!(
        mine.windows(2)
            .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64())
    );

    // Without follow: the log so far, and it ends; from a sequence number, only what came after.
    let all = api
        .http
        .get(format!("{}/v1/events?sandbox={id}", api.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(all.lines().count(), 5, "{all}");
    let paused_seq = mine[2]["seq"].as_i64().unwrap();
    let rest = api
        .http
        .get(format!(
            "{}/v1/events?sandbox={id}&after={paused_seq}",
            api.url
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(rest.lines().count(), 2, "{rest}");
    // Server-sent events on request.
    let sse = api
        .http
        .get(format!("{}/v1/events?sandbox={id}", api.url))
        .bearer_auth(&key)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sse.matches("\ndata: {").count(), 5, "{sse}");
    assert!(sse.starts_with("id: "));
    // Another tenant sees none of it.
    let theirs = api
        .http
        .get(format!("{}/v1/events", api.url))
        .bearer_auth(&other_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!theirs.contains(&id), "{theirs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_certificate_of_our_own() {
    let dir = cove_tests::TempDir::new("tls");
    // A CA of our own, and a server certificate for 127.0.0.1 signed by it.
    let ca = dir.0.join("ca.pem");
    let (cert, key_pem) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let openssl = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir.0)
            .output()
            .expect("openssl");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=cove test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "key.pem",
                "-out",
                "req.pem",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.0.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "req.pem",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    let key = api_key(&tenant("tls"), "read");
    let server = Coved::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key_pem.to_str().unwrap(),
    ]);
    let https = server.url.replacen("http://", "https://", 1);
    let http = Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let res = http
        .get(format!("{https}/v1/sandboxes"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // Plain HTTP to the TLS port gets no API answer; a client that does not trust the
    // certificate refuses it.
    assert!(
        Client::new()
            .get(format!("{}/v1/sandboxes", server.url))
            .bearer_auth(&key)
            .send()
            .await
            .map(|r| r.status() != StatusCode::OK)
            .unwrap_or(true)
    );
    assert!(
        Client::new()
            .get(format!("{https}/v1/sandboxes"))
            .send()
            .await
            .is_err()
    );
    // The CLI over HTTPS, trusting the CA through COVE_CA_CERT.
    let o = cove_tests::cove()
        .args(["ls", "-q"])
        .env("COVE_HOST", &https)
        .env("COVE_API_KEY", &key)
        .env("COVE_CA_CERT", &ca)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cove_tests::cove()
        .args(["ls", "-q"])
        .env("COVE_HOST", &https)
        .env("COVE_API_KEY", &key)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(125),
        "an untrusted certificate is refused"
    );
    // The WebSocket exec over wss, trusting the same CA.
    let exec_key = api_key(&tenant("tls-exec"), "exec");
    let o = cove_tests::cove()
        .args(["run", "--memory", "256", "--", "echo", "over wss"])
        .env("COVE_HOST", &https)
        .env("COVE_API_KEY", &exec_key)
        .env("COVE_CA_CERT", &ca)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "over wss\n");
}

/// A copy of the busybox layout whose config carries `NONCE=nonce`: a new image, same layers.
fn busybox_variant(dir: &std::path::Path, nonce: &str) {
    let base = cove_tests::default_layout("busybox");
    assert!(
        std::process::Command::new("cp")
            .arg("-r")
            .arg(&base)
            .arg(dir)
            .status()
            .unwrap()
            .success()
    );
    let blob = |d: &str| {
        dir.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let put = |bytes: &[u8]| {
        let d = format!("sha256:{}", cove_tests::sha256(bytes));
        std::fs::write(blob(&d), bytes).unwrap();
        d
    };
    let mut index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mut manifest: Value = serde_json::from_slice(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let mut config: Value = serde_json::from_slice(
        &std::fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    config["config"]["Env"]
        .as_array_mut()
        .unwrap()
        .push(format!("NONCE={nonce}").into());
    let c = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = put(&c).into();
    manifest["config"]["size"] = c.len().into();
    let m = serde_json::to_vec(&manifest).unwrap();
    index["manifests"][0]["digest"] = put(&m).into();
    index["manifests"][0]["size"] = m.len().into();
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pulls_run_in_the_background_with_progress() {
    let reg = cove_tests::Registry::start(None);
    let dir = cove_tests::TempDir::new("api-pull");
    let nonce =
        format!("{:?}", std::time::SystemTime::now()).replace(['{', '}', ' ', ':', ','], "");
    let layout = dir.0.join("layout");
    busybox_variant(&layout, &nonce);
    let reference = format!("{}/api/busybox:{}", reg.addr, &nonce[nonce.len() - 12..]);
    reg.push(
        &format!("oci:{}:busybox", layout.display()),
        &reference[reg.addr.len() + 1..],
        None,
        None,
    );
    let admin = cove_tests::operator_key();
    let exec = api_key(&tenant("pull"), "exec");
    let server = Coved::start(&[]);
    let api = Api::new(&server);
    let (s, _) = api
        .call(
            Some(&exec),
            Method::POST,
            "/v1/images/pull",
            Some(json!({"reference": reference, "insecure": true})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "pulling needs admin");
    let (s, _) = api
        .call(
            Some(&admin),
            Method::POST,
            "/v1/images/pull",
            Some(json!({"reference": "Bad Ref!"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, started) = api
        .call(
            Some(&admin),
            Method::POST,
            "/v1/images/pull",
            Some(json!({"reference": reference, "insecure": true})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{started}");
    let id = started["id"].as_str().unwrap();
    let progress = api
        .http
        .get(format!("{}/v1/images/pulls/{id}", api.url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = progress
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    // The layers may be cached from other pulls of busybox: downloaded or found, then unpacked.
    assert!(
        types.contains(&"resolved")
            && (types.contains(&"download") || types.contains(&"layer_cached"))
            && types.contains(&"unpack")
            && types.contains(&"disk"),
        "{types:?}"
    );
    let last = lines.last().unwrap();
    assert_eq!(last["type"], "complete", "{last}");
    assert_eq!(last["names"][0], reference.as_str());
    let images = api.ok(&admin, Method::GET, "/v1/images", None).await;
    let digest = last["digest"].as_str().unwrap();
    assert!(
        images["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["digest"] == digest)
    );
    // Followed again after the end: the whole history, then the end.
    let again = api
        .http
        .get(format!("{}/v1/images/pulls/{id}", api.url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(again, progress);
    // A pull that fails ends with `failed` and the reason.
    let (_, started) = api
        .call(
            Some(&admin),
            Method::POST,
            "/v1/images/pull",
            Some(json!({"reference": format!("{}/api/missing:1", reg.addr), "insecure": true})),
        )
        .await;
    let failed = api
        .http
        .get(format!(
            "{}/v1/images/pulls/{}",
            api.url,
            started["id"].as_str().unwrap()
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let last: Value = serde_json::from_str(failed.lines().last().unwrap()).unwrap();
    assert_eq!(last["type"], "failed", "{failed}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{last}"
    );
    let (s, v) = api
        .call(
            Some(&admin),
            Method::DELETE,
            &format!("/v1/images/{digest}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["removed"].as_str(), Some(digest));
    // The CLI over the API: the same pull, progress on stderr, the digest and name on stdout.
    let o = cove_tests::cove()
        .args(["image", "pull", "--insecure", &reference])
        .env("COVE_HOST", &server.url)
        .env("COVE_API_KEY", &admin)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{digest} {reference}\n")
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains(" layers, "));
    let o = cove_tests::cove()
        .args(["image", "rm", &reference])
        .env("COVE_HOST", &server.url)
        .env("COVE_API_KEY", &admin)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("removed {digest}\n"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // An archive imported through the API, and a template of an odd shape (removed after).
    let tar = dir.0.join("layout.tar");
    assert!(
        std::process::Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .args(["-cf"])
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap()
            .success()
    );
    let admin_cli = |args: &[&str]| {
        let o = cove_tests::cove()
            .args(args)
            .env("COVE_HOST", &server.url)
            .env("COVE_API_KEY", &admin)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = admin_cli(&[
        "image",
        "import",
        "--name",
        "api/imported:1",
        tar.to_str().unwrap(),
    ]);
    assert_eq!(out, format!("{digest} api/imported:1\n"));
    let tpl = admin_cli(&["template", "create", "api/imported:1", "--memory", "320"])
        .trim()
        .to_string();
    assert_eq!(tpl.len(), 12, "{tpl}");
    let local = cove_tests::cove_out(&["snapshot", "rm", &tpl]);
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    let (s, v) = api
        .call(
            Some(&admin),
            Method::DELETE,
            &format!("/v1/images/{digest}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["removed"].as_str(), Some(digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_logs_follow_what_the_guest_prints() {
    let key = api_key(&tenant("logs"), "exec");
    let server = Coved::start(&[]);
    let api = Api::new(&server);
    let sb = api
        .ok(
            &key,
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"memory_mib": 256})),
        )
        .await;
    let base = format!("/v1/sandboxes/{}", sb["id"].as_str().unwrap());
    let mut follow = api
        .http
        .get(format!("{}{base}/logs?follow=true", api.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status(), StatusCode::OK);
    api.ok(
        &key,
        Method::POST,
        &format!("{base}/exec"),
        Some(json!({"cmd": ["sh", "-c", "echo cove-follow-marker > /dev/console"]})),
    )
    .await;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen.contains("cove-follow-marker") {
        let chunk = tokio::time::timeout_at(deadline, follow.chunk())
            .await
            .expect("the line arrives")
            .unwrap()
            .expect("still open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    // Removing the sandbox ends the stream.
    api.ok(&key, Method::DELETE, &base, None).await;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = follow.chunk().await {}
    })
    .await;
    assert!(end.is_ok(), "the stream ends with its sandbox");
}

/// Without a key only the host's administrator gets in: root or coved's own user, told by the
/// socket's peer credentials. The socket is its owner's only; opened to everyone, the
/// credentials still decide, and a key still works for anyone.
#[test]
fn without_a_key_only_the_administrator_gets_in() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("cove-peer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.join("coved.sock");
    let server = Coved::start_on(&format!("unix:{}", sock.display()), &[]);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is coved's user's only");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    // One raw request (`/v1/info` needs a caller), as `user` or as this process (root).
    let status = |user: Option<&str>, key: Option<&str>| -> String {
        let auth = key
            .map(|k| format!("Authorization: Bearer {k}\\r\\n"))
            .unwrap_or_default();
        let script = format!(
            "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({:?})\n\
             s.sendall(b'GET /v1/info HTTP/1.1\\r\\nHost: cove\\r\\n{auth}Connection: close\\r\\n\\r\\n')\n\
             print(s.recv(64).split(b'\\r\\n')[0].decode())",
            sock.display().to_string()
        );
        let mut c = match user {
            Some(u) => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", u, "--", "python3", "-c", &script]);
                c
            }
            None => {
                let mut c = std::process::Command::new("python3");
                c.args(["-c", &script]);
                c
            }
        };
        let o = c.output().expect("python3");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert!(
        status(None, None).contains(" 200"),
        "{}",
        status(None, None)
    );
    let other = status(Some("nobody"), None);
    assert!(
        other.contains(" 401"),
        "another user without a key: {other}"
    );
    let key = api_key(&tenant("peer"), "read");
    let with_key = status(Some("nobody"), Some(&key));
    assert!(
        with_key.contains(" 200"),
        "another user with a key: {with_key}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_and_cli_over_a_unix_socket() {
    let dir = cove_tests::TempDir::new("unix");
    let sock = dir.0.join("coved.sock");
    let server = Coved::start_on(&format!("unix:{}", sock.display()), &[]);
    assert_eq!(server.url, format!("unix:{}", sock.display()));
    // A second coved on the same socket is refused: the first still answers there.
    let o = coved().args(["--listen", &server.url]).output().unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("another coved"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let key = api_key(&tenant("unix"), "exec");
    let c = cove_sdk::Client::new(&server.url, &key).unwrap();
    assert!(c.list().await.unwrap().is_empty());
    let o = cove_tests::cove()
        .args(["run", "--memory", "256", "--", "echo", "over a unix socket"])
        .env("COVE_HOST", &server.url)
        .env("COVE_API_KEY", &key)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "over a unix socket\n");
}

fn stdout_ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_per_tenant_and_usable_wherever_ids_are() {
    let (ta, tb) = (tenant("names-a"), tenant("names-b"));
    let (ka, kb) = (api_key(&ta, "exec"), api_key(&tb, "exec"));
    let server = Coved::start(&[]);
    let api = Api::new(&server);
    let a = stdout_ok(&cli_over(
        &server.url,
        &ka,
        &["create", "--name", "web", "--memory", "256"],
    ));
    // Another tenant may use the same name: its own namespace, its own sandbox.
    let b = stdout_ok(&cli_over(
        &server.url,
        &kb,
        &["create", "--name", "web", "--memory", "256"],
    ));
    assert_ne!(a, b);
    let o = cli_over(&server.url, &ka, &["create", "--name", "web"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already in use"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let got = api.ok(&ka, Method::GET, "/v1/sandboxes/web", None).await;
    assert_eq!(
        (got["id"].as_str(), got["name"].as_str()),
        (Some(a.as_str()), Some("web"))
    );
    let got = api.ok(&kb, Method::GET, "/v1/sandboxes/web", None).await;
    assert_eq!(got["id"].as_str(), Some(b.as_str()));
    let out = api
        .ok(
            &ka,
            Method::POST,
            "/v1/sandboxes/web/exec",
            Some(json!({"cmd": ["sh", "-c", "echo by name"]})),
        )
        .await;
    assert_eq!(out["stdout"], "by name\n");
    for (path, body) in [
        ("/v1/sandboxes", json!({"name": "0123456789ab"})),
        ("/v1/sandboxes", json!({"name": "../x"})),
    ] {
        let (s, v) = api.call(Some(&ka), Method::POST, path, Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    }
    let (s, _) = api
        .call(Some(&ka), Method::GET, "/v1/sandboxes/nope", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Who uses an image: a tenant sees its own sandboxes only.
    let images = api.ok(&kb, Method::GET, "/v1/images", None).await;
    let users: Vec<String> = images["items"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["used_by"].as_array().unwrap().clone())
        .map(|u| u.as_str().unwrap().to_string())
        .collect();
    assert!(users.contains(&format!("sandbox {b}")), "{users:?}");
    assert!(!users.iter().any(|u| u.contains(&a)), "{users:?}");
    // `ls` shows the name; the local CLI shows (and takes) it as `tenant/name`.
    let ls = stdout_ok(&cli_over(&server.url, &ka, &["ls"]));
    assert!(
        ls.lines().any(|l| l.contains(&a) && l.contains(" web ")),
        "{ls}"
    );
    let local = cove_tests::cove_out(&["ls"]);
    let local = String::from_utf8_lossy(&local.stdout);
    assert!(local.contains(&format!("{ta}/web")), "{local}");
    let v: Value = serde_json::from_str(&cove_tests::text(&cove_tests::cove_out(&[
        "inspect",
        &format!("{tb}/web"),
    ])))
    .unwrap();
    assert_eq!(v["id"].as_str(), Some(b.as_str()));
    // Snapshots too: named, restored by name, invisible to the other tenant.
    let snap = stdout_ok(&cli_over(
        &server.url,
        &ka,
        &["snapshot", "web", "--name", "base"],
    ));
    let ls = stdout_ok(&cli_over(&server.url, &ka, &["snapshot", "ls"]));
    assert!(
        ls.lines().any(|l| l.contains(&snap) && l.contains("base")),
        "{ls}"
    );
    let clone = stdout_ok(&cli_over(
        &server.url,
        &ka,
        &["create", "--from-snapshot", "base", "--name", "web2"],
    ));
    let out = api
        .ok(
            &ka,
            Method::POST,
            "/v1/sandboxes/web2/exec",
            Some(json!({"cmd": ["true"]})),
        )
        .await;
    assert_eq!(out["exit_code"], 0);
    let (s, v) = api
        .call(
            Some(&kb),
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"snapshot": "base"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = api
        .call(Some(&kb), Method::DELETE, "/v1/snapshots/base", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Names go with their sandbox: removed, the name is free again.
    stdout_ok(&cli_over(&server.url, &ka, &["rm", "-f", "web", "web2"]));
    let (s, _) = api
        .call(
            Some(&ka),
            Method::GET,
            &format!("/v1/sandboxes/{clone}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let again = stdout_ok(&cli_over(
        &server.url,
        &ka,
        &["create", "--name", "web", "--memory", "256"],
    ));
    for (k, id) in [(&ka, &again), (&kb, &b)] {
        api.ok(k, Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
            .await;
    }
    api.ok(&ka, Method::DELETE, "/v1/snapshots/base", None)
        .await;
}

/// A root directory holding busybox and a marker.
fn rootfs(dir: &std::path::Path, marker: &str) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "true"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(dir.join("marker"), marker).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rootfs_imports_and_prune_over_the_api() {
    let admin = cove_tests::operator_key();
    let server = Coved::start(&[]);
    let api = Api::new(&server);
    let dir = cove_tests::TempDir::new("api-rootfs");
    let nonce = format!("{:?}", std::time::SystemTime::now());
    let root = dir.0.join("root");
    rootfs(&root, &nonce);
    let name = format!("rootfs-{}", std::process::id());
    // Packed by the CLI, imported by coved: the digest a local import of the same tree gets.
    let remote = stdout_ok(&cli_over(
        &server.url,
        &admin,
        &[
            "image",
            "import-rootfs",
            root.to_str().unwrap(),
            "--name",
            &name,
            "-e",
            "FROM=remote",
            "--",
            "cat",
            "/marker",
        ],
    ));
    let (digest, names) = remote.split_once(' ').unwrap();
    assert_eq!(names, name);
    let local = cove_tests::cove_out(&[
        "image",
        "import-rootfs",
        root.to_str().unwrap(),
        "--name",
        &format!("{name}-local"),
        "-q",
        "-e",
        "FROM=remote",
        "--",
        "cat",
        "/marker",
    ]);
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    assert!(
        cove_tests::text(&local).starts_with(digest),
        "{} vs {digest}",
        cove_tests::text(&local)
    );
    // It runs: its default command and its environment.
    let sb = api
        .ok(
            &admin,
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"image": name, "memory_mib": 256})),
        )
        .await;
    let id = sb["id"].as_str().unwrap();
    let out = api
        .ok(
            &admin,
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"cmd": []})),
        )
        .await;
    assert_eq!(out["stdout"].as_str(), Some(nonce.as_str()));
    let out = api
        .ok(
            &admin,
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"cmd": ["sh", "-c", "echo $FROM"]})),
        )
        .await;
    assert_eq!(out["stdout"], "remote\n");
    api.ok(&admin, Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
        .await;
    stdout_ok(&cli_over(
        &server.url,
        &admin,
        &["image", "rm", &name, &format!("{name}-local")],
    ));
    // An image nothing names: prune removes it (and only through an admin key).
    let other = dir.0.join("other");
    rootfs(&other, "unnamed");
    let tar = dir.0.join("unnamed.tar");
    let unnamed = cove_image::write_rootfs_layout(
        &other,
        &cove_image::ImageConfig::default(),
        &mut std::fs::File::create(&tar).unwrap(),
    )
    .unwrap();
    let res = reqwest::Client::new()
        .put(format!("{}/v1/images/import", server.url))
        .bearer_auth(&admin)
        .body(std::fs::read(&tar).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let img: Value = res.json().await.unwrap();
    assert_eq!(img["digest"].as_str(), Some(unnamed.as_str()));
    assert_eq!(img["names"], json!([]));
    let exec_key = api_key(&tenant("rootfs-exec"), "exec");
    let (s, _) = api
        .call(Some(&exec_key), Method::POST, "/v1/images/prune", None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // What every tenant shares is the operator's: not even a tenant's admin key imports,
    // prunes or scrubs.
    let tenant_admin = api_key(&tenant("rootfs-admin"), "admin");
    for (m, path) in [
        (Method::POST, "/v1/scrub"),
        (Method::POST, "/v1/images/prune"),
        (Method::PUT, "/v1/images/import"),
        (Method::DELETE, "/v1/images/busybox"),
    ] {
        let (s, v) = api.call(Some(&tenant_admin), m, path, None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {v}");
    }
    let pruned = stdout_ok(&cli_over(&server.url, &admin, &["image", "prune"]));
    assert!(pruned.contains(&format!("removed {unnamed}")), "{pruned}");
    let list = api.ok(&admin, Method::GET, "/v1/images", None).await;
    assert!(
        !list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["digest"].as_str() == Some(unnamed.as_str())
                || i["digest"].as_str() == Some(digest)),
        "{list}"
    );
}

/// A sandbox the idle policy paused is woken by the next request, and the event log names who
/// woke it: the caller's key, through the streaming exec the CLI uses as much as through REST.
#[test]
fn a_wake_by_a_request_names_the_caller() {
    let key = api_key(&tenant("wake"), "exec");
    let server = Coved::start(&[]);
    let run = |args: &[&str]| {
        let o = cli_over(&server.url, &key, args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let id = run(&[
        "create",
        "--memory",
        "256",
        "--idle-timeout",
        "2",
        "--on-idle",
        "pause",
    ]);
    let state = || -> Value { serde_json::from_str(&run(&["inspect", &id])).unwrap() };
    assert!(
        cove_tests::wait_until(Duration::from_secs(30), || state()["state"] == "paused"),
        "{}",
        state()
    );
    assert_eq!(run(&["exec", &id, "--", "echo", "awake"]), "awake");
    let events: Vec<Value> = run(&["events", "--sandbox", &id, "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actor_of = |state: &str| {
        events
            .iter()
            .rev()
            .find(|e| e["state"] == state)
            .map(|e| e["actor"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {state} event: {events:?}"))
    };
    assert_eq!(actor_of("paused"), "idle-policy");
    assert!(actor_of("running").starts_with("key:"), "{events:?}");
    run(&["rm", "-f", &id]);
}

/// A tenant's admin key sees only its own tenant's users of an image, and cannot make a
/// template (every tenant's creates of the image would restore what its boot left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_users_and_template_boots_are_the_tenants_own() {
    let (ta, tb) = (tenant("imgs-a"), tenant("imgs-b"));
    let (a, b) = (api_key(&ta, "admin"), api_key(&tb, "admin"));
    let o = coved()
        .args([
            "quota",
            "set",
            &tb,
            "--sandboxes",
            "0",
            "--vcpus",
            "0",
            "--memory-mib",
            "0",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let server = Coved::start(&["--rate-limit", "1000"]);
    let api = Api::new(&server);
    let sb = api
        .ok(
            &a,
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"memory_mib": 256})),
        )
        .await;
    let id = sb["id"].as_str().unwrap().to_string();
    let user = format!("sandbox {id}");
    let users = |v: &Value| -> Vec<String> {
        let mut out = Vec::new();
        for i in v["items"].as_array().into_iter().flatten() {
            for u in i["used_by"].as_array().into_iter().flatten() {
                out.push(u.as_str().unwrap_or("").to_string());
            }
        }
        for u in v["used_by"].as_array().into_iter().flatten() {
            out.push(u.as_str().unwrap_or("").to_string());
        }
        out
    };
    let a_sees = users(&api.ok(&a, Method::GET, "/v1/images", None).await);
    assert!(a_sees.contains(&user), "{a_sees:?}");
    for path in ["/v1/images", "/v1/images/busybox"] {
        let b_sees = users(&api.ok(&b, Method::GET, path, None).await);
        assert!(!b_sees.contains(&user), "{path}: {b_sees:?}");
    }
    let (s, v) = api
        .call(
            Some(&b),
            Method::POST,
            "/v1/templates",
            Some(json!({"image": "busybox", "memory_mib": 256})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    api.ok(&a, Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
        .await;
}

/// Deadlines on clients (a coved with 2 s ones here): half a request head, an idle kept-alive
/// connection and a body that stalls are each cut off rather than held; input over a limit is
/// the caller's error, named — an exec argument over the guest kernel's limit is a `400`, a
/// WebSocket message over 16 MiB closes the socket with 1009 and the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_oversized_input_is_named() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _};
    let key = api_key(&tenant("slow"), "exec");
    let server = Coved::start_with(
        "127.0.0.1:0",
        &[],
        &[
            ("COVE_HEADER_TIMEOUT_SECS", "2"),
            ("COVE_BODY_TIMEOUT_SECS", "2"),
        ],
    );
    let addr = server.url.strip_prefix("http://").unwrap().to_string();
    // Everything coved sends on a connection until it closes it (a minute at most: coved's
    // deadlines are 2 s; without them this waits out the minute and fails).
    let rest = |mut s: tokio::net::TcpStream| async move {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut got))
            .await
            .expect("coved closes the connection")
            .unwrap();
        String::from_utf8_lossy(&got).into_owned()
    };
    let head = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n")
    };

    // Nothing at all, and the start of HTTP/2's preface (hyper reads those before its own
    // header timer runs).
    let s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert_eq!(rest(s).await, "");
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"PRI * HT").await.unwrap();
    assert_eq!(rest(s).await, "");
    // Half a head, then nothing.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /v1/info HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let got = rest(s).await;
    assert!(!got.contains("200 OK"), "{got}");
    // A whole request answered, then an idle keep-alive.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(head("/v1/sandboxes").as_bytes()).await.unwrap();
    let got = rest(s).await;
    assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    // A body that stops a quarter of the way.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        format!(
            "POST /v1/sandboxes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"memory_mib\""
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let got = rest(s).await;
    assert!(got.starts_with("HTTP/1.1 4"), "{got}");

    // Over the guest's limit for one argument (128 KiB): the caller's error.
    let api = Api::new(&server);
    let sb = api
        .ok(
            &key,
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"memory_mib": 256})),
        )
        .await;
    let id = sb["id"].as_str().unwrap().to_string();
    let (st, v) = api
        .call(
            Some(&key),
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(json!({"cmd": ["echo", "x".repeat(200_000)]})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("Argument list too long"),
        "{v}"
    );

    // A WebSocket message over 16 MiB.
    let mut req = format!("ws://{addr}/v1/sandboxes/{id}/exec/ws")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(tungstenite::Message::text(
        json!({"cmd": ["cat"], "stdin": true}).to_string(),
    ))
    .await
    .unwrap();
    let _ = ws
        .send(tungstenite::Message::binary(vec![b'x'; 17 << 20]))
        .await;
    let mut close = None;
    while let Some(m) = ws.next().await {
        match m {
            Ok(tungstenite::Message::Close(c)) => {
                close = c;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let close = close.expect("a close frame with a reason");
    assert_eq!(u16::from(close.code), 1009, "{close:?}");
    assert!(close.reason.starts_with("payload_too_large: "), "{close:?}");
    api.ok(&key, Method::DELETE, &format!("/v1/sandboxes/{id}"), None)
        .await;
}

/// What a tenant reads never names the host's paths: a restore of a corrupted snapshot is
/// refused (`422`) saying which file, with the host's layout cut to `…/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_never_reads_the_hosts_paths() {
    let key = api_key(&tenant("paths"), "exec");
    let server = Coved::start(&[]);
    let api = Api::new(&server);
    let home = cove_tests::home().display().to_string();

    let sb = api
        .ok(
            &key,
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"memory_mib": 256})),
        )
        .await;
    let id = sb["id"].as_str().unwrap().to_string();
    let snap = api
        .ok(
            &key,
            Method::POST,
            &format!("/v1/sandboxes/{id}/snapshot"),
            Some(json!({})),
        )
        .await;
    let snap = snap["id"].as_str().unwrap().to_string();
    // The snapshot's memory changed in place (as root on the host would).
    let memory = cove_tests::home()
        .join("snapshots")
        .join(&snap)
        .join("memory");
    cove_tests::flip(&memory, cove_tests::first_non_zero(&memory), 0x01);
    let (s, v) = api
        .call(
            Some(&key),
            Method::POST,
            "/v1/sandboxes",
            Some(json!({"snapshot": snap})),
        )
        .await;
    assert!(!s.is_success(), "{s} {v}");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("…/snapshots/") && msg.contains("is corrupted"),
        "{v}"
    );
    assert!(!msg.contains(&home), "{v}");
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    // Refused before anything started: nothing failed is left, and nothing the tenant can
    // read names the host's paths.
    let list = api.ok(&key, Method::GET, "/v1/sandboxes", None).await;
    assert!(
        !list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["state"] == "failed"),
        "{list}"
    );
    let events = api
        .http
        .get(format!("{}/v1/events", api.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!events.contains(&home), "{events}");
    for s in list["items"].as_array().unwrap() {
        let sid = s["id"].as_str().unwrap();
        api.ok(&key, Method::DELETE, &format!("/v1/sandboxes/{sid}"), None)
            .await;
    }
    api.ok(&key, Method::DELETE, &format!("/v1/snapshots/{snap}"), None)
        .await;
}

/// The process table over `/v1` and the CLI, in a real guest: a command started in the
/// background (`cove exec --detach --tag`) runs on, is listed, followed again by tag, fed stdin
/// and signalled; an exec's background child outlives the exec (and may still write to its
/// stdout); a streaming exec whose client leaves takes its command with it unless it was kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_in_the_background_and_are_found_again() {
    use cove_sdk::ExecOutput;
    let key = api_key(&tenant("cmds"), "exec");
    let server = Coved::start(&[]);
    let c = cove_sdk::Client::new(&server.url, &key).unwrap();
    let sb = c
        .create(&cove_api::CreateSandbox {
            memory_mib: Some(256),
            ..Default::default()
        })
        .await
        .unwrap();
    let cli = |args: &[&str]| cli_over(&server.url, &key, args);

    // Started in the background: the CLI prints the pid and returns.
    let pid = ok(&cli(&[
        "exec", "--detach", "--tag", "worker", "-e", "MINE=1", &sb.id, "--", "sleep", "600",
    ]));
    let pid: u32 = pid.trim().parse().unwrap();
    let listed = c.commands(&sb.id).await.unwrap();
    let w = listed.iter().find(|x| x.pid == pid).expect("listed");
    assert_eq!(
        (
            w.tag.as_deref(),
            w.stdin,
            w.keep,
            w.env.get("MINE").map(String::as_str)
        ),
        (Some("worker"), false, true, Some("1"))
    );
    let table = ok(&cli(&["commands", &sb.id]));
    assert!(
        table.contains("worker") && table.contains(&pid.to_string()),
        "{table}"
    );
    // The tag names one running command.
    let again = cli(&["exec", "--detach", "--tag", "worker", &sb.id, "--", "true"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already"),
        "{again:?}"
    );
    // An all-digit tag would read as a pid.
    let e = c
        .start_command(
            &sb.id,
            &cove_api::ExecStart {
                cmd: vec!["true".into()],
                tag: Some("42".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, cove_sdk::Error::Api { status, .. } if status == StatusCode::BAD_REQUEST),
        "{e}"
    );
    // Its stdin was not asked for: refused, and the command runs on.
    let e = c
        .command_stdin(&sb.id, "worker", b"x\n".to_vec(), false)
        .await
        .unwrap_err();
    assert!(
        matches!(e, cove_sdk::Error::Api { status, .. } if status == StatusCode::BAD_REQUEST),
        "{e}"
    );
    c.signal_command(&sb.id, "worker", 15).await.unwrap();
    let worker_gone = || {
        let table = ok(&cli(&["commands", "--json", &sb.id]));
        !table.contains("worker")
    };
    assert!(wait_until(Duration::from_secs(60), worker_gone));

    // One with stdin: followed by tag, fed, closed; its exit reaches the follower.
    let cmd = c
        .start_command(
            &sb.id,
            &cove_api::ExecStart {
                cmd: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo ready; while read l; do echo got-$l; done; echo bye; exit 3".into(),
                ],
                stdin: true,
                tag: Some("reader".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(cmd.stdin && cmd.keep && cmd.cwd.starts_with('/'), "{cmd:?}");
    let mut s = c.attach(&sb.id, "reader").await.unwrap();
    c.command_stdin(&sb.id, "reader", b"one\n".to_vec(), false)
        .await
        .unwrap();
    s.input.stdin(b"two\n").await.unwrap();
    let mut out = Vec::new();
    while !String::from_utf8_lossy(&out).contains("got-two") {
        match s.output.next().await.unwrap().unwrap() {
            ExecOutput::Stdout(b) => out.extend(b),
            ExecOutput::Exit(..) => panic!("exited early: {out:?}"),
            _ => {}
        }
    }
    assert!(
        String::from_utf8_lossy(&out).contains("got-one\n"),
        "{out:?}"
    );
    c.command_stdin(&sb.id, &cmd.pid.to_string(), Vec::new(), true)
        .await
        .unwrap();
    let mut exit = None;
    while let Some(ev) = s.output.next().await {
        match ev.unwrap() {
            ExecOutput::Stdout(b) => out.extend(b),
            ExecOutput::Exit(code, _) => exit = Some(code),
            _ => {}
        }
    }
    assert_eq!(exit, Some(3));
    assert!(String::from_utf8_lossy(&out).ends_with("bye\n"), "{out:?}");
    assert!(
        c.commands(&sb.id)
            .await
            .unwrap()
            .iter()
            .all(|x| x.pid != cmd.pid)
    );
    match c.attach(&sb.id, "reader").await {
        Err(cove_sdk::Error::Api { status, .. }) => assert_eq!(status, StatusCode::NOT_FOUND),
        other => panic!("{:?}", other.map(|_| ())),
    }

    // An exec's background child lives on after the exec, still writing to its stdout.
    let o = ok(&cli(&[
        "exec",
        &sb.id,
        "--",
        "sh",
        "-c",
        "(sleep 1; echo late; echo yes > /tmp/alive.tmp && mv /tmp/alive.tmp /tmp/alive) & echo started",
    ]));
    assert_eq!(o, "started\n");
    let alive = || {
        cli(&["exec", &sb.id, "--", "test", "-e", "/tmp/alive"])
            .status
            .success()
    };
    assert!(
        wait_until(Duration::from_secs(120), alive),
        "the background child died"
    );

    // A streaming exec whose client leaves: an unkept command ends, a kept one runs on. Both
    // clients leave, the kept one's first; once the unkept command is gone, the agent has seen
    // its client leave, and the kept one must still run.
    let running = |pid: u32| {
        let table: Value =
            serde_json::from_str(&ok(&cli(&["commands", "--json", &sb.id]))).unwrap();
        table
            .as_array()
            .expect("a list of commands")
            .iter()
            .any(|c| c["pid"] == pid)
    };
    let mut left = Vec::new();
    for keep in [true, false] {
        let mut s = c
            .exec_stream(
                &sb.id,
                &cove_api::ExecStart {
                    cmd: vec!["sleep".into(), "600".into()],
                    tag: Some(format!("left-{keep}")),
                    keep,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let first = s.output.next().await.unwrap().unwrap();
        let ExecOutput::Started(pid) = first else {
            panic!("{first:?}")
        };
        left.push((pid, s));
    }
    let (kept, unkept) = (left[0].0, left[1].0);
    assert!(running(kept) && running(unkept));
    // In order: the kept one's client first.
    drop(left);
    assert!(
        wait_until(Duration::from_secs(60), || !running(unkept)),
        "the unkept command outlived its client"
    );
    assert!(running(kept), "the kept command ended with its client");
    // Killed by tag through the CLI.
    ok(&cli(&["kill", "--signal", "KILL", &sb.id, "left-true"]));
    assert!(
        wait_until(Duration::from_secs(60), || !running(kept)),
        "left-true still runs"
    );
    c.delete(&sb.id).await.unwrap();
}
