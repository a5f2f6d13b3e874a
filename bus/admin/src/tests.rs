//! The admin API, request by request (`app(state).oneshot(request)`).

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use pigeon_bus::route::PigeonSpec;
use pigeon_bus::store::NewToken;
use pigeon_bus::token::{self, Role};

struct Api {
    state: AppState,
    _dir: tempfile::TempDir,
    module: String,
    viewer: String,
    operator: String,
    admin: String,
    /// Stops the watcher with the test.
    _watching: tokio_util::sync::DropGuard,
}

impl Api {
    async fn new() -> Self {
        // The recorder first: counters made before it count nowhere.
        pigeon_bus::prometheus::install();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("api.db").display());
        let store = pigeon_bus::store::open(&url).await.unwrap();
        store.migrate().await.unwrap();
        let mut values = Vec::new();
        for (name, role) in
            [("mod", Role::Module), ("ana", Role::Viewer), ("olli", Role::Operator), ("ada", Role::Admin)]
        {
            let value = token::generate();
            store
                .create_token(&NewToken { name: name.into(), role, hash: token::hash(&value) }, "test")
                .await
                .unwrap();
            values.push(value);
        }
        // The watcher without Kafka: it checks the store when asked (and every minute).
        let config = pigeon_bus::control::WatchConfig {
            check: std::time::Duration::from_secs(60),
            window_lead_ms: 0,
            window_grace_ms: 0,
            sources: Default::default(),
        };
        let watcher = pigeon_bus::control::Watcher::new(Arc::clone(&store), config);
        let cancel = tokio_util::sync::CancellationToken::new();
        let (tables, watching) = pigeon_bus::control::start(watcher, None, cancel.clone()).await.unwrap();
        tokio::spawn(watching);
        let state = AppState {
            tables: Some(tables),
            health: Arc::default(),
            scripts: crate::gate::ScriptGate::new(2, crate::gate::SCRIPTS_PER_REQUEST),
            draining: tokio_util::sync::CancellationToken::new(),
            kafka: None,
            lookup: None,
            store,
            ready: Arc::new(AtomicBool::new(true)),
            stats: Arc::default(),
            retrier: Arc::default(),
            archiver: Arc::default(),
            replays: Arc::default(),
            sources: Arc::default(),
            producer: None,
        };
        let [module, viewer, operator, admin] = values.try_into().unwrap();
        Self { state, _dir: dir, module, viewer, operator, admin, _watching: cancel.drop_guard() }
    }

    async fn raw(&self, method: Method, path: &str, token: Option<&str>, body: Body) -> (StatusCode, Value) {
        let mut request =
            Request::builder().method(method).uri(path).header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = app(self.state.clone(), true).oneshot(request.body(body).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 16 << 20).await.unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        (status, value)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        self.raw(method, path, Some(token), body).await
    }
}

fn pigeon(id: &str, owner: &str) -> Value {
    json!({
        "id": id, "name": format!("pigeon {id}"), "owner": owner,
        "match": { "topic": "live.gift", "tag": "gift.sent" },
        "destinations": [{ "capability": "act-toy/progress.add" }]
    })
}

/// The role each operation needs. Must list exactly the documented operations.
const ROLES: [(&str, &str, Role); 40] = [
    ("GET", "/api/v1/pigeons", Role::Viewer),
    ("POST", "/api/v1/pigeons", Role::Operator),
    ("POST", "/api/v1/pigeons/validate", Role::Viewer),
    ("POST", "/api/v1/pigeons/apply", Role::Viewer), // applying (not a dry run) needs operator
    ("GET", "/api/v1/pigeons/{id}", Role::Viewer),
    ("PUT", "/api/v1/pigeons/{id}", Role::Operator),
    ("DELETE", "/api/v1/pigeons/{id}", Role::Operator),
    ("POST", "/api/v1/pigeons/{id}/enable", Role::Operator),
    ("POST", "/api/v1/pigeons/{id}/disable", Role::Operator),
    ("GET", "/api/v1/pigeons/{id}/versions", Role::Viewer),
    ("POST", "/api/v1/pigeons/{id}/test", Role::Viewer),
    ("POST", "/api/v1/pigeons/test", Role::Viewer),
    ("GET", "/api/v1/tokens", Role::Admin),
    ("POST", "/api/v1/tokens", Role::Admin),
    ("DELETE", "/api/v1/tokens/{name}", Role::Admin),
    ("GET", "/api/v1/audit", Role::Viewer),
    ("GET", "/api/v1/dead-letters", Role::Viewer),
    ("GET", "/api/v1/dead-letters/{id}", Role::Viewer),
    ("POST", "/api/v1/dead-letters/retry", Role::Operator),
    ("POST", "/api/v1/dead-letters/discard", Role::Operator),
    ("PUT", "/api/v1/dead-letters/{id}/payload", Role::Operator),
    ("GET", "/api/v1/providers", Role::Viewer),
    ("POST", "/api/v1/fly", Role::Module),
    ("GET", "/api/v1/dictionary", Role::Viewer),
    ("PUT", "/api/v1/dictionary/{name}", Role::Operator),
    ("DELETE", "/api/v1/dictionary/{name}", Role::Operator),
    ("GET", "/api/v1/dictionary/drift", Role::Viewer),
    ("GET", "/api/v1/schemas", Role::Viewer),
    ("POST", "/api/v1/archive/search", Role::Viewer),
    ("GET", "/api/v1/archive/{letter_id}", Role::Viewer),
    ("GET", "/api/v1/letters/{letter_id}/trace", Role::Viewer),
    ("POST", "/api/v1/letters/trace", Role::Viewer),
    ("GET", "/api/v1/replays", Role::Viewer),
    ("POST", "/api/v1/replays", Role::Operator),
    ("POST", "/api/v1/replays/dry-run", Role::Viewer),
    ("GET", "/api/v1/replays/{id}", Role::Viewer),
    ("POST", "/api/v1/replays/{id}/cancel", Role::Operator),
    ("GET", "/api/v1/stats/pigeons", Role::Viewer),
    ("GET", "/api/v1/dead-letters/backlog", Role::Viewer),
    ("GET", "/api/v1/me", Role::Module),
];

#[tokio::test]
async fn every_documented_route_is_mounted_and_guarded_by_its_role() {
    let api = Api::new().await;
    let (_, doc) = super::api();
    let mut documented = Vec::new();
    for (path, item) in &doc.paths.paths {
        for (method, present) in [
            ("GET", item.get.is_some()),
            ("POST", item.post.is_some()),
            ("PUT", item.put.is_some()),
            ("DELETE", item.delete.is_some()),
        ] {
            if present {
                documented.push((method.to_owned(), path.clone()));
            }
        }
    }
    let mut listed: Vec<(String, String)> =
        ROLES.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
    documented.sort();
    listed.sort();
    assert_eq!(documented, listed, "the OpenAPI document and the role table disagree");

    for (method, path, role) in ROLES {
        let method: Method = method.parse().unwrap();
        let concrete = path.replace("{id}", "p").replace("{name}", "n");
        // No token: 401, whatever the body (the token is checked before the body is read).
        let (status, body) = api.raw(method.clone(), &concrete, None, Body::empty()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} is documented but answers {status}");
        assert_eq!(body["code"], "unauthorized");
        // The role just below the one needed: 403.
        let weaker = match role {
            Role::Module => continue,
            Role::Viewer => &api.module,
            Role::Operator => &api.viewer,
            Role::Admin => &api.operator,
        };
        let (status, body) = api.raw(method.clone(), &concrete, Some(weaker), Body::empty()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path} with a weaker role");
        assert_eq!(body["code"], "forbidden");
    }

    let (status, served) = api.raw(Method::GET, "/api/v1/openapi.json", None, Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(served["paths"]["/api/v1/pigeons/{id}"]["put"].is_object());
    assert!(served["components"]["securitySchemes"]["token"].is_object());
    // The wire types the SDK and the store share are served under the API's names.
    let schemas = &served["components"]["schemas"];
    for (name, field) in [
        ("FlyBody", "letter"),
        ("FlyLetterBody", "payload"),
        ("ReceiptView", "dead_lettered"),
        ("DeliveredView", "offset"),
        ("DeadLetteredView", "error"),
        ("AuditView", "before"),
    ] {
        assert!(schemas[name]["properties"][field].is_object(), "{name}.{field} in {schemas}");
    }
    let fly_body =
        &served["paths"]["/api/v1/fly"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(fly_body["$ref"], "#/components/schemas/FlyBody");
    let (status, body) = api.call(Method::GET, "/api/v1/nope", &api.admin, None).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
}

#[tokio::test]
async fn the_overview_sums_every_instances_counts_and_the_backlog() {
    use pigeon_bus::counters::{bucket_of, BucketCount, Tally};
    use pigeon_bus::deadletter::{ErrorKind, NewDeadLetter, Selection};
    let api = Api::new().await;
    let store = &api.state.store;
    let now = pigeon_bus::store::now_ms();
    let count = |bucket: i64, pigeon: &str, letters_in: u64, letters_out: u64, failures: u64| BucketCount {
        bucket,
        pigeon_id: pigeon.into(),
        tally: Tally { letters_in, letters_out, failures },
    };
    // Two instances add to the same bucket; an old bucket is outside the hour.
    let current = bucket_of(now);
    store
        .record_counts(&[count(current, "gift", 10, 20, 1), count(current, "chest", 1, 1, 0)])
        .await
        .unwrap();
    store.record_counts(&[count(current, "gift", 5, 10, 2)]).await.unwrap();
    store.record_counts(&[count(current - 30 * 60_000, "gift", 7, 7, 0)]).await.unwrap();
    store.record_counts(&[count(current - 2 * 3_600_000, "gift", 100, 100, 100)]).await.unwrap();

    let (status, stats) = api.call(Method::GET, "/api/v1/stats/pigeons", &api.viewer, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["totals"], json!({ "letters_in": 23, "letters_out": 38, "failures": 3 }));
    assert_eq!(stats["step_ms"], 60_000);
    assert_eq!(stats["series"].as_array().unwrap().len(), 60);
    let gift = &stats["pigeons"][0];
    assert_eq!((gift["pigeon_id"].as_str(), gift["letters_in"].as_u64()), (Some("gift"), Some(22)));
    assert_eq!(gift["series"][59]["letters_in"], 15, "both instances' counts in the last step");
    assert_eq!(stats["pigeons"][1]["pigeon_id"], "chest");
    let (_, short) = api.call(Method::GET, "/api/v1/stats/pigeons?minutes=5", &api.viewer, None).await;
    assert_eq!(short["totals"]["letters_in"], 16, "the last five minutes only");
    let (status, refused) = api.call(Method::GET, "/api/v1/stats/pigeons?minutes=0", &api.viewer, None).await;
    assert_eq!(
        (status, refused["message"].as_str()),
        (StatusCode::BAD_REQUEST, Some("minutes must be 1 to 1440, got 0"))
    );
    assert_eq!(store.prune_counts(current - 3_600_000).await.unwrap(), 1, "the two-hour-old bucket goes");

    let (_, empty) = api.call(Method::GET, "/api/v1/dead-letters/backlog", &api.viewer, None).await;
    assert_eq!(empty, json!({ "pending": 0, "retrying": 0, "parked": 0 }));
    let mut letter = NewDeadLetter {
        letter_id: "01a208e2-9eb6-7227-a459-797e4954dd34".into(),
        pigeon_id: Some("gift".into()),
        pigeon_version: Some(1),
        source_topic: "live.gift".into(),
        source_partition: 0,
        source_offset: 1,
        dest_topic: Some("pigeon.module.act-toy".into()),
        dest_tag: Some("progress.add".into()),
        key: None,
        headers: Vec::new(),
        payload: Some(b"{}".to_vec()),
        error_kind: ErrorKind::Produce,
        error_message: "broker down".into(),
        first_retry: Some(std::time::Duration::from_secs(10)),
    };
    store.insert_dead_letter(&letter).await.unwrap();
    store.insert_dead_letter(&letter).await.unwrap();
    letter.first_retry = None;
    let parked = store.insert_dead_letter(&letter).await.unwrap();
    store.discard_dead_letters(&Selection::Ids(vec![parked]), "test").await.unwrap();
    store.insert_dead_letter(&letter).await.unwrap();
    let (_, backlog) = api.call(Method::GET, "/api/v1/dead-letters/backlog", &api.viewer, None).await;
    assert_eq!(
        backlog,
        json!({ "pending": 2, "retrying": 0, "parked": 1 }),
        "the discarded one no longer waits"
    );

    let (status, me) = api.call(Method::GET, "/api/v1/me", &api.module, None).await;
    assert_eq!((status, me), (StatusCode::OK, json!({ "name": "mod", "role": "module" })));
}

#[tokio::test]
async fn the_admin_ui_is_served_from_the_binary_with_a_strict_policy() {
    let api = Api::new().await;
    let get = |path: &'static str, with_api: bool| {
        let app = app(api.state.clone(), with_api);
        async move { app.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap() }
    };
    let root = get("/", true).await;
    assert_eq!(root.status(), StatusCode::SEE_OTHER);
    assert_eq!(root.headers()["location"], "/ui/");
    let page = get("/ui/", true).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
    let html = axum::body::to_bytes(page.into_body(), 1 << 20).await.unwrap();
    let html = String::from_utf8(html.to_vec()).unwrap();
    assert!(
        html.contains(r#"<script src="app.js" defer></script>"#) && !html.contains("<script>"),
        "no inline script"
    );
    let script = get("/ui/app.js", true).await;
    assert_eq!(script.headers()["content-type"], "text/javascript; charset=utf-8");
    let script = axum::body::to_bytes(script.into_body(), 1 << 20).await.unwrap();
    assert!(String::from_utf8_lossy(&script).contains("/api/v1"), "the UI talks to the admin API");
    assert_eq!(get("/ui/app.css", true).await.headers()["content-type"], "text/css; charset=utf-8");
    assert_eq!(get("/ui/../Cargo.toml", true).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(get("/ui/secrets.txt", true).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        get("/ui/", false).await.status(),
        StatusCode::NOT_FOUND,
        "only instances with the admin role serve it"
    );
}

#[tokio::test]
async fn roles_gate_reads_mutations_and_token_management() {
    let api = Api::new().await;
    let (status, body) = api.raw(Method::GET, "/api/v1/pigeons", Some("pgn_forged"), Body::empty()).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));

    assert_eq!(api.call(Method::GET, "/api/v1/pigeons", &api.viewer, None).await.0, StatusCode::OK);
    let (status, body) = api.call(Method::POST, "/api/v1/pigeons", &api.viewer, Some(pigeon("a", "x"))).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));
    assert!(body["message"].as_str().unwrap().contains("operator"));
    assert_eq!(
        api.call(Method::POST, "/api/v1/pigeons", &api.operator, Some(pigeon("a", "x"))).await.0,
        StatusCode::CREATED
    );
    assert_eq!(api.call(Method::GET, "/api/v1/tokens", &api.operator, None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(api.call(Method::GET, "/api/v1/tokens", &api.admin, None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn validation_lists_every_problem_and_saves_nothing() {
    let api = Api::new().await;
    let bad = json!({
        "id": "Bad Id", "colour": "red",
        "match": { "topic": "live gift", "tag": "gift..x", "extra": 1 },
        "destinations": []
    });
    for path in ["/api/v1/pigeons/validate", "/api/v1/pigeons"] {
        let (status, body) = api.call(Method::POST, path, &api.operator, Some(bad.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        assert_eq!(body["code"], "invalid_pigeon");
        let details: Vec<&str> =
            body["details"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
        assert_eq!(details.len(), 6, "two unknown keys and four invalid values: {details:?}");
        assert!(details.contains(&"unknown key `colour`") && details.contains(&"unknown key `match.extra`"));
        assert!(details.contains(&"pigeon \"Bad Id\": has no destinations"), "{details:?}");
    }
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/pigeons/validate",
            &api.viewer,
            Some(json!({"id": "Bad Id", "match": {"topic": "live gift", "tag": "gift..x"}, "destinations": []})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["details"].as_array().unwrap().len(), 4, "{body}");
    let (status, body) =
        api.call(Method::POST, "/api/v1/pigeons/validate", &api.viewer, Some(pigeon("ok", "x"))).await;
    assert_eq!((status, body["valid"].as_bool()), (StatusCode::OK, Some(true)));
    assert!(api.state.store.pigeons().await.unwrap().is_empty(), "nothing was saved");
    let (status, body) =
        api.raw(Method::POST, "/api/v1/pigeons", Some(&api.operator), Body::from("{not json")).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let api = Api::new().await;
    let mut big = pigeon("big", "x");
    big["name"] = Value::String("x".repeat(MAX_BODY_BYTES + 1));
    let (status, body) = api.call(Method::POST, "/api/v1/pigeons", &api.operator, Some(big)).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")));
}

#[tokio::test]
async fn lists_page_with_cursors_and_filters() {
    let api = Api::new().await;
    for (i, owner) in ["a", "b", "a", "a", "b"].iter().enumerate() {
        let (status, _) = api
            .call(Method::POST, "/api/v1/pigeons", &api.operator, Some(pigeon(&format!("p{i}"), owner)))
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/pigeons?limit=2&cursor={c}"),
            None => "/api/v1/pigeons?limit=2".into(),
        };
        let (status, body) = api.call(Method::GET, &path, &api.viewer, None).await;
        assert_eq!(status, StatusCode::OK);
        pages += 1;
        seen.extend(body["items"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_owned()));
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!((pages, seen), (3, vec!["p0".to_owned(), "p1".into(), "p2".into(), "p3".into(), "p4".into()]));
    let (_, body) = api.call(Method::GET, "/api/v1/pigeons?owner=b", &api.viewer, None).await;
    let ids: Vec<&str> =
        body["items"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["p1", "p4"]);
    let (status, body) = api.call(Method::GET, "/api/v1/pigeons?limit=0", &api.viewer, None).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    let (status, _) = api.call(Method::GET, "/api/v1/pigeons?enabled=maybe", &api.viewer, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_pigeon_lives_versions_and_every_change_is_audited() {
    let api = Api::new().await;
    let path = "/api/v1/pigeons/gift";
    let (status, created) =
        api.call(Method::POST, "/api/v1/pigeons", &api.operator, Some(pigeon("gift", "spring"))).await;
    assert_eq!((status, created["version"].as_i64()), (StatusCode::CREATED, Some(1)));
    let (status, _) =
        api.call(Method::POST, "/api/v1/pigeons", &api.operator, Some(pigeon("gift", "spring"))).await;
    assert_eq!(status, StatusCode::CONFLICT);

    let mut changed = pigeon("gift", "spring");
    changed["match"]["tag"] = json!("gift.*");
    let (status, updated) = api.call(Method::PUT, path, &api.operator, Some(changed.clone())).await;
    assert_eq!((status, updated["version"].as_i64()), (StatusCode::OK, Some(2)));
    let (_, same) = api.call(Method::PUT, path, &api.operator, Some(changed)).await;
    assert_eq!(same["version"], 2, "an identical spec is not a new version");
    let (status, _) = api.call(Method::PUT, path, &api.operator, Some(pigeon("other", "x"))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "body id must match the path");

    let (_, disabled) = api.call(Method::POST, "/api/v1/pigeons/gift/disable", &api.operator, None).await;
    assert_eq!((disabled["enabled"].as_bool(), disabled["version"].as_i64()), (Some(false), Some(3)));
    let (_, enabled) = api.call(Method::POST, "/api/v1/pigeons/gift/enable", &api.operator, None).await;
    assert_eq!(enabled["enabled"], true);
    let (_, got) = api.call(Method::GET, path, &api.viewer, None).await;
    assert_eq!((got["version"].as_i64(), got["match"]["tag"].as_str()), (Some(4), Some("gift.*")));
    let (_, versions) = api.call(Method::GET, "/api/v1/pigeons/gift/versions", &api.viewer, None).await;
    assert_eq!(versions.as_array().unwrap().len(), 4);

    assert_eq!(api.call(Method::DELETE, path, &api.operator, None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(api.call(Method::DELETE, path, &api.operator, None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(api.call(Method::GET, path, &api.viewer, None).await.0, StatusCode::NOT_FOUND);

    let (_, audit) = api.call(Method::GET, "/api/v1/audit?limit=10", &api.viewer, None).await;
    let entries: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target"] == "pigeon/gift")
        .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        entries,
        [
            ("olli", "pigeon.delete"),
            ("olli", "pigeon.update"),
            ("olli", "pigeon.update"),
            ("olli", "pigeon.update"),
            ("olli", "pigeon.create")
        ]
    );
    let (_, page1) = api.call(Method::GET, "/api/v1/audit?limit=2", &api.viewer, None).await;
    let cursor = page1["next_cursor"].as_str().expect("more pages").to_owned();
    let (_, page2) =
        api.call(Method::GET, &format!("/api/v1/audit?limit=2&cursor={cursor}"), &api.viewer, None).await;
    let ids = |page: &Value| -> Vec<i64> {
        page["items"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()).collect()
    };
    let all = ids(&audit);
    assert_eq!([ids(&page1), ids(&page2)].concat(), all[..4], "pages follow each other, newest first");
    let (status, _) = api.call(Method::GET, "/api/v1/audit?cursor=abc", &api.viewer, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let first_update = &audit["items"].as_array().unwrap()[3];
    assert_eq!(
        (first_update["before"]["match"]["tag"].as_str(), first_update["after"]["match"]["tag"].as_str()),
        (Some("gift.sent"), Some("gift.*"))
    );
}

#[tokio::test]
async fn apply_shows_the_diff_then_applies_it_all() {
    let api = Api::new().await;
    api.call(Method::POST, "/api/v1/pigeons", &api.operator, Some(pigeon("keep", "x"))).await;
    api.call(Method::POST, "/api/v1/pigeons", &api.operator, Some(pigeon("stale", "x"))).await;
    let mut keep = pigeon("keep", "x");
    keep["name"] = json!("renamed");
    let request = |dry_run: bool| json!({ "pigeons": [keep.clone(), pigeon("new", "x")], "prune": true, "dry_run": dry_run });

    let (status, dry) =
        api.call(Method::POST, "/api/v1/pigeons/apply", &api.viewer, Some(request(true))).await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    let changes = |body: &Value| -> Vec<(String, String)> {
        body["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["id"].as_str().unwrap().into(), c["change"].as_str().unwrap().into()))
            .collect()
    };
    let expected = [("keep", "update"), ("new", "create"), ("stale", "delete")]
        .map(|(a, b)| (a.to_owned(), b.to_owned()));
    assert_eq!(changes(&dry), expected);
    assert_eq!(dry["applied"], false);
    assert!(api.state.store.pigeon("stale").await.unwrap().is_some(), "a dry run changes nothing");
    assert_eq!(
        api.call(Method::POST, "/api/v1/pigeons/apply", &api.viewer, Some(request(false))).await.0,
        StatusCode::FORBIDDEN
    );

    let (_, applied) =
        api.call(Method::POST, "/api/v1/pigeons/apply", &api.operator, Some(request(false))).await;
    assert_eq!((changes(&applied), applied["applied"].as_bool()), (expected.to_vec(), Some(true)));
    let (_, again) =
        api.call(Method::POST, "/api/v1/pigeons/apply", &api.operator, Some(request(false))).await;
    assert!(changes(&again).iter().all(|(_, c)| c == "unchanged"), "applying twice is a no-op: {again}");

    let broken = json!({ "pigeons": [pigeon("fine", "x"), {"id": "x"}, pigeon("fine", "x")] });
    let (status, body) = api.call(Method::POST, "/api/v1/pigeons/apply", &api.operator, Some(broken)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let details = body["details"].to_string();
    assert!(details.contains("pigeons[1]") && details.contains("listed twice"), "{details}");
    assert!(api.state.store.pigeon("fine").await.unwrap().is_none(), "all or nothing");
}

#[tokio::test]
async fn admins_create_and_revoke_tokens() {
    let api = Api::new().await;
    let (status, created) = api
        .call(Method::POST, "/api/v1/tokens", &api.admin, Some(json!({"name": "ci", "role": "operator"})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let value = created["token"].as_str().unwrap().to_owned();
    assert_eq!(
        api.call(Method::POST, "/api/v1/pigeons", &value, Some(pigeon("by-ci", "x"))).await.0,
        StatusCode::CREATED
    );
    let (_, listed) = api.call(Method::GET, "/api/v1/tokens", &api.admin, None).await;
    assert!(!listed.to_string().contains(&value), "a listing never shows token values");
    let (status, _) = api
        .call(Method::POST, "/api/v1/tokens", &api.admin, Some(json!({"name": "ci", "role": "viewer"})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, body) = api
        .call(Method::POST, "/api/v1/tokens", &api.admin, Some(json!({"name": "x", "role": "root"})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        api.call(Method::DELETE, "/api/v1/tokens/ci", &api.admin, None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(api.call(Method::GET, "/api/v1/pigeons", &value, None).await.0, StatusCode::UNAUTHORIZED);
    let (_, audit) = api.call(Method::GET, "/api/v1/audit", &api.admin, None).await;
    let actions: Vec<&str> =
        audit["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(&actions[..3], ["token.revoke", "pigeon.create", "token.create"]);
}

#[tokio::test]
async fn healthz_answers_once_the_router_consumes() {
    let api = Api::new().await;
    api.state.ready.store(false, Ordering::Release);
    assert_eq!(
        api.raw(Method::GET, "/healthz", None, Body::empty()).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    api.state.ready.store(true, Ordering::Release);
    assert_eq!(api.raw(Method::GET, "/healthz", None, Body::empty()).await.0, StatusCode::OK);
}

#[tokio::test]
async fn metrics_show_the_router_counters() {
    let api = Api::new().await;
    api.state.stats.letters_read.increment(7);
    api.state.stats.in_flight_peak.fetch_max(3, Ordering::Relaxed);
    api.state.stats.publish();
    api.state.stats.dead_lettered(pigeon_bus::deadletter::ErrorKind::Internal);
    let response = app(api.state.clone(), true)
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap().to_vec())
        .unwrap();
    // One recorder per process: other tests count into it too, so these are at least ours.
    let value = |series: &str| -> f64 {
        let line = text.lines().find(|l| l.split_once(' ').is_some_and(|(s, _)| s == series));
        line.and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert!(value("pigeon_router_letters_read_total") >= 7.0, "{text}");
    assert!(value("pigeon_in_flight_peak") >= 3.0, "{text}");
    assert!(value("pigeon_dead_letters_total{kind=\"internal\"}") >= 1.0, "{text}");
    assert!(text.contains("# TYPE pigeon_in_flight_peak gauge\n"), "{text}");
    assert!(
        text.contains("# HELP pigeon_router_letters_read_total Source letters the router read.\n"),
        "{text}"
    );
}

#[tokio::test]
async fn scripts_are_tried_on_sample_letters_saved_or_not() {
    let api = Api::new().await;
    let mut scripted = pigeon("points", "x");
    scripted["action"] = json!("script");
    scripted["script"] = json!("#{ points: payload.giftCount * 10 }");
    assert_eq!(
        api.call(Method::POST, "/api/v1/pigeons", &api.operator, Some(scripted.clone())).await.0,
        StatusCode::CREATED
    );
    let letter = json!({ "tag": "gift.sent", "key": "room-1", "payload": { "giftCount": 3 } });

    let (status, body) =
        api.call(Method::POST, "/api/v1/pigeons/points/test", &api.viewer, Some(letter.clone())).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["letters"][0]["payload"]["points"], 30);
    assert_eq!(body["letters"][0]["tag"], "progress.add");
    assert_eq!(body["letters"][0]["key"], "room-1");

    let try_draft = |script: &str| {
        let mut draft = scripted.clone();
        draft["script"] = json!(script);
        let body = json!({ "pigeon": draft, "letter": letter });
        let api = &api;
        async move { api.call(Method::POST, "/api/v1/pigeons/test", &api.viewer, Some(body)).await }
    };
    let (status, body) = try_draft("throw \"not yet\"").await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("script_failed")));
    assert!(body["message"].as_str().unwrap().contains("threw not yet"), "{body}");
    let (status, body) = try_draft("let x = ;").await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_pigeon")));
    assert!(body["details"].to_string().contains("line 1, column 9"), "{body}");

    // A forward pigeon shows the letter on each destination.
    api.call(Method::POST, "/api/v1/pigeons", &api.operator, Some(pigeon("plain", "x"))).await;
    let (_, body) = api.call(Method::POST, "/api/v1/pigeons/plain/test", &api.viewer, Some(letter)).await;
    assert_eq!(body["letters"][0]["payload"]["giftCount"], 3);
    assert_eq!(api.state.store.pigeons().await.unwrap().len(), 2, "tests save nothing");
}

#[tokio::test]
async fn operators_inspect_fix_retry_and_discard_dead_letters() {
    use pigeon_bus::deadletter::{ErrorKind, NewDeadLetter, StoredHeader};
    let api = Api::new().await;
    let letter = |payload: &[u8]| NewDeadLetter {
        letter_id: "01a208e2-9eb6-7227-a459-797e4954dd34".into(),
        pigeon_id: Some("gift".into()),
        pigeon_version: Some(2),
        source_topic: "live.gift".into(),
        source_partition: 1,
        source_offset: 7,
        dest_topic: None,
        dest_tag: None,
        key: Some(b"room-1".to_vec()),
        headers: vec![StoredHeader::new("ce_type", Some(b"gift.sent"))],
        payload: Some(payload.to_vec()),
        error_kind: ErrorKind::Script,
        error_message: "threw gift letter without giftCount or price".into(),
        first_retry: None,
    };
    let broken = api.state.store.insert_dead_letter(&letter(br#"{"uid":1}"#)).await.unwrap();
    let other = api.state.store.insert_dead_letter(&letter(b"not json")).await.unwrap();

    let (status, page) =
        api.call(Method::GET, "/api/v1/dead-letters?status=parked&kind=script", &api.viewer, None).await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<i64> =
        page["items"].as_array().unwrap().iter().map(|d| d["id"].as_i64().unwrap()).collect();
    assert_eq!(listed, [other, broken], "newest first");
    assert_eq!(page["items"][0]["payload_text"], "not json", "a payload that is not JSON is shown as text");
    let (status, body) = api.call(Method::GET, "/api/v1/dead-letters?status=lost", &api.viewer, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let path = format!("/api/v1/dead-letters/{broken}");
    let (_, detail) = api.call(Method::GET, &path, &api.viewer, None).await;
    assert_eq!(detail["letter"]["payload"], json!({ "uid": 1 }));
    assert_eq!(detail["letter"]["key"], "room-1");
    assert_eq!(detail["attempts"], json!([]));

    // Fix the payload, then redrive it.
    let fixed = json!({ "uid": 1, "giftCount": 2, "price": 10 });
    let (status, view) =
        api.call(Method::PUT, &format!("{path}/payload"), &api.operator, Some(fixed.clone())).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["payload"], fixed);
    let (status, _) = api.call(Method::PUT, &format!("{path}/payload"), &api.viewer, Some(fixed)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, changed) = api
        .call(Method::POST, "/api/v1/dead-letters/retry", &api.operator, Some(json!({ "ids": [broken] })))
        .await;
    assert_eq!(changed["count"], 1);
    let (_, detail) = api.call(Method::GET, &path, &api.viewer, None).await;
    assert_eq!(detail["letter"]["status"], "pending");

    // Discard the rest by filter; bad selections are refused.
    let body = json!({ "filter": { "pigeon": "gift", "status": "parked" } });
    let (_, changed) =
        api.call(Method::POST, "/api/v1/dead-letters/discard", &api.operator, Some(body)).await;
    assert_eq!(changed["count"], 1);
    for bad in [
        json!({}),
        json!({ "ids": [] }),
        json!({ "ids": [1], "filter": {} }),
        json!({ "filter": { "colour": 1 } }),
    ] {
        let (status, body) =
            api.call(Method::POST, "/api/v1/dead-letters/discard", &api.operator, Some(bad.clone())).await;
        assert!(status.is_client_error(), "{bad} answered {status}: {body}");
    }
    let (status, _) = api.call(Method::GET, "/api/v1/dead-letters/999999", &api.viewer, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api
        .call(Method::PUT, &format!("/api/v1/dead-letters/{other}/payload"), &api.operator, Some(json!(1)))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "a discarded letter cannot be edited");

    let (_, audit) = api.call(Method::GET, "/api/v1/audit?limit=3", &api.viewer, None).await;
    let actions: Vec<&str> =
        audit["items"].as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["dead_letter.discard", "dead_letter.retry", "dead_letter.edit"]);
    assert_eq!(audit["items"][0]["actor"], "olli");
}

#[tokio::test]
async fn flying_checks_the_letter_and_the_pigeon_before_kafka() {
    let api = Api::new().await;
    let ingress = |id: &str| {
        serde_json::from_value::<PigeonSpec>(json!({
            "id": id, "match": { "topic": "pigeon.ingress" }, "destinations": [{ "capability": "act-toy/chest.drop" }]
        }))
        .unwrap()
    };
    let mut off = ingress("off");
    off.enabled = false;
    let mut over = ingress("over");
    over.window = Some(pigeon_bus::route::WindowSpec {
        end: Some("2020-01-01T00:00:00Z".into()),
        ..Default::default()
    });
    let keeper = serde_json::from_value::<PigeonSpec>(json!({
        "id": "keeper", "match": { "topic": "pigeon.ingress" }, "action": "archive"
    }))
    .unwrap();
    for pigeon in [ingress("p"), off, over, keeper] {
        api.state.store.save_pigeon(&pigeon, "tests").await.unwrap();
    }
    let fly = |pigeon: &str, letter: Value| json!({ "pigeon": pigeon, "letter": letter });
    let letter = json!({ "source": "act-toy", "tag": "progress.full", "payload": {"roomId": "r"} });
    let cases = [
        (fly("", letter.clone()), StatusCode::BAD_REQUEST, "name the pigeon"),
        (
            fly("p", json!({ "source": "m", "tag": "a..b", "payload": {} })),
            StatusCode::BAD_REQUEST,
            "letter.tag",
        ),
        (
            fly("p", json!({ "source": "", "tag": "t", "payload": {} })),
            StatusCode::BAD_REQUEST,
            "letter.source",
        ),
        (
            fly("p", json!({ "source": "m", "tag": "t", "payload": {}, "id": "x" })),
            StatusCode::BAD_REQUEST,
            "not a UUID",
        ),
        (
            fly("p", json!({ "source": "m", "tag": "t", "payload": {}, "time": "noon" })),
            StatusCode::BAD_REQUEST,
            "RFC 3339",
        ),
        (
            fly("p", json!({ "source": "m", "tag": "t", "payload": {}, "extra": 1 })),
            StatusCode::UNPROCESSABLE_ENTITY,
            "extra",
        ),
        (fly("nobody", letter.clone()), StatusCode::NOT_FOUND, "nobody"),
        (fly("off", letter.clone()), StatusCode::CONFLICT, "is disabled"),
        (fly("over", letter.clone()), StatusCode::CONFLICT, "outside the live window of pigeon \"over\""),
        // Archive pigeons are not flown to (this reached an `expect` once).
        (fly("keeper", letter.clone()), StatusCode::CONFLICT, "archives letters"),
        // Valid, but this bus has no producer (the API test runs without Kafka).
        (fly("p", letter.clone()), StatusCode::SERVICE_UNAVAILABLE, "without a Kafka producer"),
    ];
    for (body, status, expected) in cases {
        let (got, answer) = api.call(Method::POST, "/api/v1/fly", &api.module, Some(body.clone())).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer["message"].as_str().unwrap_or_default().contains(expected), "{body}: {answer}");
    }
    // A pigeon saved a moment ago elsewhere (straight into the store, no notice): this
    // instance's tables catch up rather than answer 404.
    api.state.store.save_pigeon(&ingress("fresh"), "another instance").await.unwrap();
    let (got, answer) = api.call(Method::POST, "/api/v1/fly", &api.module, Some(fly("fresh", letter))).await;
    assert_eq!(got, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("without a Kafka producer"),
        "found the pigeon: {answer}"
    );
    // A module token reads nothing.
    assert_eq!(api.call(Method::GET, "/api/v1/pigeons", &api.module, None).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn operators_keep_the_dictionary_and_every_change_is_audited() {
    let api = Api::new().await;
    let (status, list) = api.call(Method::GET, "/api/v1/dictionary", &api.viewer, None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    for seeded in pigeon_sdk::fields::ALL {
        assert!(names.contains(seeded), "the SDK's field {seeded} is in the seeded dictionary: {names:?}");
    }
    let user = list.as_array().unwrap().iter().find(|f| f["name"] == "userId").unwrap();
    assert_eq!((user["type"].as_str(), user["version"].as_i64()), (Some("integer"), Some(1)));
    assert!(user["aliases"].as_array().unwrap().contains(&json!("uid")));

    let combo = json!({ "name": "comboCount", "type": "integer", "description": "Gifts in one combo", "aliases": ["combo"] });
    let (status, saved) =
        api.call(Method::PUT, "/api/v1/dictionary/comboCount", &api.operator, Some(combo.clone())).await;
    assert_eq!((status, saved["version"].as_i64()), (StatusCode::OK, Some(1)), "{saved}");
    let mut changed = combo.clone();
    changed["aliases"] = json!(["combo", "combo_count"]);
    let (_, saved) =
        api.call(Method::PUT, "/api/v1/dictionary/comboCount", &api.operator, Some(changed)).await;
    assert_eq!(saved["version"], 2);

    // Every problem at once; nothing saved.
    let bad =
        json!({ "name": "giftCombo", "type": "integer", "description": "", "aliases": ["uid", "combo"] });
    let (status, error) =
        api.call(Method::PUT, "/api/v1/dictionary/giftCombo", &api.operator, Some(bad)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    let details = error["details"].to_string();
    for expected in [
        "description must be",
        "\\\"uid\\\" is already used by field \\\"userId\\\"",
        "\\\"combo\\\" is already used by field \\\"comboCount\\\"",
    ] {
        assert!(details.contains(expected), "missing {expected} in {details}");
    }
    let unknown_type = json!({ "name": "x", "type": "float", "description": "d" });
    assert_eq!(
        api.call(Method::PUT, "/api/v1/dictionary/x", &api.operator, Some(unknown_type)).await.0.as_u16()
            / 100,
        4
    );
    let misnamed = json!({ "name": "other", "type": "string", "description": "d" });
    assert_eq!(
        api.call(Method::PUT, "/api/v1/dictionary/x", &api.operator, Some(misnamed)).await.0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        api.call(Method::PUT, "/api/v1/dictionary/comboCount", &api.viewer, Some(combo)).await.0,
        StatusCode::FORBIDDEN
    );

    let (status, deleted) =
        api.call(Method::DELETE, "/api/v1/dictionary/comboCount", &api.operator, None).await;
    assert_eq!((status, deleted["version"].as_i64()), (StatusCode::OK, Some(2)));
    assert_eq!(
        api.call(Method::DELETE, "/api/v1/dictionary/comboCount", &api.operator, None).await.0,
        StatusCode::NOT_FOUND
    );

    let (_, audit) = api.call(Method::GET, "/api/v1/audit", &api.viewer, None).await;
    let actions: Vec<(&str, &str)> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["action"].as_str().unwrap(), a["actor"].as_str().unwrap()))
        .filter(|(action, _)| action.starts_with("dictionary."))
        .collect();
    assert_eq!(
        actions,
        [("dictionary.delete", "olli"), ("dictionary.update", "olli"), ("dictionary.create", "olli")]
    );
    assert_eq!(audit["items"][1]["before"]["aliases"], json!(["combo"]));
    assert_eq!(audit["items"][1]["after"]["aliases"], json!(["combo", "combo_count"]));
}

#[test]
fn pigeon_states_read_the_same_in_the_api_and_the_cli() {
    use super::pigeons::PigeonState::*;
    for state in [Disabled, Scheduled, Live, Ended, Quarantined] {
        assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
    }
}

#[tokio::test]
async fn a_handler_that_panics_answers_500_in_the_usual_shape_and_the_server_goes_on() {
    let app = harden(
        Router::new()
            .route("/boom", get(|| async { panic!("a bug we have not found yet") as &'static str }))
            .route("/fine", get(|| async { "fine" })),
    );
    let call = |path: &'static str| {
        let app = app.clone();
        async move {
            let response = app.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
            let status = response.status();
            (status, axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap())
        }
    };
    let (status, body) = call("/boom").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], "internal");
    assert!(!body["message"].as_str().unwrap().contains("bug"), "the panic stays in the log: {body}");
    assert_eq!(call("/fine").await.0, StatusCode::OK, "the next request is served");
}

#[test]
fn the_store_away_answers_503_with_a_retry_hint_and_a_broken_row_500() {
    use pigeon_bus::store::StoreError;
    let away = ApiError::from(StoreError::Database(sqlx::Error::PoolTimedOut));
    assert_eq!(away.status(), StatusCode::SERVICE_UNAVAILABLE);
    let response = axum::response::IntoResponse::into_response(away);
    assert_eq!(response.headers()["retry-after"], "1");
    let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
    assert_eq!(
        ApiError::from(StoreError::Database(sqlx::Error::Io(io))).status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let corrupt = ApiError::from(StoreError::Corrupt("bad json".into()));
    assert_eq!(corrupt.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let conflict = ApiError::from(StoreError::Conflict("version moved".into()));
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn healthz_names_the_role_that_is_down() {
    let api = Api::new().await;
    let get = || async {
        let request = Request::get("/healthz").body(Body::empty()).unwrap();
        let response = app(api.state.clone(), true).oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    assert_eq!(get().await, (StatusCode::OK, "ok\n".to_owned()));
    let cancel = tokio_util::sync::CancellationToken::new();
    let failing = || async { anyhow::bail!("cannot reach the archive database") };
    let supervised = tokio::spawn(pigeon_bus::supervise::supervise(
        "archiver",
        Arc::clone(&api.state.health),
        cancel.clone(),
        failing,
    ));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, body) = get().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("down: archiver") && body.contains("cannot reach the archive database"), "{body}");
    cancel.cancel();
    supervised.await.unwrap().unwrap();
}

fn script_pigeon(id: &str) -> Value {
    json!({
        "id": id, "name": format!("pigeon {id}"), "owner": "x", "action": "script",
        "match": { "topic": "live.gift", "tag": "gift.sent" },
        "destinations": [{ "topic": "lane.out", "tag": "out" }],
        "script": "payload"
    })
}

/// One request compiles or runs a bounded number of scripts, and says so when it would run
/// more; as many as it may go through.
#[tokio::test]
async fn a_request_that_would_run_too_many_scripts_is_refused_saying_so() {
    let api = Api::new().await;
    let most = crate::gate::SCRIPTS_PER_REQUEST as usize;
    let apply = |count: usize| {
        let pigeons: Vec<Value> = (0..count).map(|n| script_pigeon(&format!("p{n}"))).collect();
        json!({ "pigeons": pigeons, "dry_run": true })
    };
    let (status, body) =
        api.call(Method::POST, "/api/v1/pigeons/apply", &api.viewer, Some(apply(most))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) =
        api.call(Method::POST, "/api/v1/pigeons/apply", &api.viewer, Some(apply(most + 1))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "too_many_scripts");
    assert!(body["message"].as_str().unwrap().contains(&format!("more than {most} scripts")), "{body}");
}

/// Past the requests the API handles at once, more are refused at once with 429 (not queued);
/// the ones taken are all answered.
#[tokio::test]
async fn requests_past_the_concurrency_limit_are_refused_with_429() {
    let api = Api::new().await;
    let app = app(api.state.clone(), true);
    let extra = 16;
    let requests = (0..crate::MAX_CONCURRENT_REQUESTS + extra).map(|_| {
        let body =
            json!({ "pigeon": script_pigeon("t"), "letter": { "tag": "gift.sent", "payload": {"n": 1} } });
        let request = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/pigeons/test")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", api.viewer))
            .body(Body::from(body.to_string()))
            .unwrap();
        app.clone().oneshot(request)
    });
    let responses = futures::future::join_all(requests).await;
    let statuses: Vec<StatusCode> = responses.iter().map(|r| r.as_ref().unwrap().status()).collect();
    let count = |status| statuses.iter().filter(|s| **s == status).count();
    assert_eq!(count(StatusCode::OK), crate::MAX_CONCURRENT_REQUESTS, "{statuses:?}");
    assert_eq!(count(StatusCode::TOO_MANY_REQUESTS), extra, "{statuses:?}");
    let refused =
        responses.into_iter().map(Result::unwrap).find(|r| r.status() == StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.unwrap().headers().contains_key("retry-after"));
}

/// `/livez` answers while the process serves; `/readyz` while the store answers (this bus has
/// no Kafka producer to check) and until the instance drains, then says so.
#[tokio::test]
async fn livez_and_readyz_say_whether_to_restart_and_whether_to_send_traffic() {
    let api = Api::new().await;
    let state = api.state.clone();
    let text = |path: &'static str| {
        let state = state.clone();
        async move {
            let response = app(state, true)
                .oneshot(Request::builder().uri(path).body(Body::empty()).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    assert_eq!(text("/livez").await, (StatusCode::OK, "live\n".to_owned()));
    assert_eq!(text("/readyz").await, (StatusCode::OK, "ready\n".to_owned()));
    api.state.draining.cancel();
    let (status, body) = text("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("draining"), "{body}");
    assert_eq!(text("/livez").await.0, StatusCode::OK, "draining is still alive");
}
