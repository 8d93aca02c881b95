//! `GET /metrics`: who may scrape it, that the counters move by exactly the requests
//! made (labelled by route template, never by id), and that Prometheus's own
//! checker accepts the exposition.

use std::collections::HashMap;
use std::process::Command;

use serde_json::json;

use crate::harness::{Berth, Client, TempDir, get_as, require_tool};
use crate::registry::{push_image, random};

/// One scrape, as `series{labels}` → value.
struct Scrape {
    text: String,
    values: HashMap<String, f64>,
}

impl Scrape {
    fn of(c: &Client) -> Scrape {
        let r = c.get("/metrics");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
        let text = r.text();
        let values = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {l}"));
                (series.to_string(), value.parse::<f64>().unwrap_or_else(|e| panic!("{l}: {e}")))
            })
            .collect();
        Scrape { text, values }
    }

    /// A series' value, 0 when it is not there (a counter not yet touched).
    fn get(&self, series: &str) -> f64 {
        self.values.get(series).copied().unwrap_or(0.0)
    }
}

fn api(method: &str, route: &str, status: &str) -> String {
    format!(r#"berth_api_requests_total{{method="{method}",route="{route}",status="{status}"}}"#)
}

fn v2(method: &str, route: &str, status: &str) -> String {
    format!(r#"berth_registry_requests_total{{method="{method}",route="{route}",status="{status}"}}"#)
}

/// A daemon with project `alpha`, the admin's session and a scraper's token: the
/// admin's own, narrowed to `metrics:read`.
fn setup() -> (Berth, Client, Client, String) {
    let b = Berth::start("");
    let admin = b.admin();
    let p = admin.post("/v1/projects", &json!({"name": "alpha"}));
    assert_eq!(p.status, 201, "{}", p.text());
    let project = p.json()["id"].as_str().unwrap().to_string();
    let t = admin.post("/v1/api-tokens", &json!({"name": "prometheus", "scopes": ["metrics:read"]}));
    assert_eq!(t.status, 201, "{}", t.text());
    let scraper = b.client().with_token(t.json()["token"].as_str().unwrap());
    (b, admin, scraper, project)
}

#[test]
fn counters_move_by_the_requests_made_labelled_by_template() {
    let (b, admin, scraper, project) = setup();
    let pusher =
        admin.with_token(
            admin.post("/v1/api-tokens", &json!({"name": "push", "scopes": ["registry:push", "registry:pull"]})).json()
                ["token"]
                .as_str()
                .unwrap(),
        );
    let before = Scrape::of(&scraper);

    for _ in 0..3 {
        assert_eq!(admin.get(&format!("/v1/projects/{project}")).status, 200);
    }
    assert_eq!(admin.get("/v1/projects/prj_doesnotexist000000000000000").status, 404);
    assert_eq!(admin.get("/v1/no-such-route").status, 404);
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layer = random(100_000, 7);
    push_image(&pusher, "alpha/app", "v1", &config, &[&layer]);
    let unrouted = get_as(b.ingress_addr(), "nothing-here.invalid", "/").unwrap();
    assert_eq!(unrouted.status, 404, "{}", unrouted.text());

    let after = Scrape::of(&scraper);
    let delta = |series: &str| after.get(series) - before.get(series);
    assert_eq!(delta(&api("GET", "/v1/projects/{id}", "2xx")), 3.0, "{}", after.text);
    assert_eq!(delta(&api("GET", "/v1/projects/{id}", "4xx")), 1.0, "{}", after.text);
    assert_eq!(delta(&api("GET", "unmatched", "4xx")), 1.0, "{}", after.text);
    // The first scrape is counted once it has answered: the second one sees it.
    assert_eq!(delta(&api("GET", "/metrics", "2xx")), 1.0, "{}", after.text);
    let histogram_count = r#"berth_api_request_duration_seconds_count{method="GET",route="/v1/projects/{id}"}"#;
    assert_eq!(delta(histogram_count), 4.0, "{}", after.text);
    let inf_bucket = r#"berth_api_request_duration_seconds_bucket{method="GET",route="/v1/projects/{id}",le="+Inf"}"#;
    assert_eq!(after.get(inf_bucket), after.get(histogram_count));
    // A push: two monolithic blob uploads and a manifest.
    assert_eq!(delta(&v2("POST", "/v2/{name}/blobs/uploads/", "2xx")), 2.0, "{}", after.text);
    assert_eq!(delta(&v2("PUT", "/v2/{name}/manifests/{reference}", "2xx")), 1.0, "{}", after.text);
    let v2_count =
        r#"berth_registry_request_duration_seconds_count{method="PUT",route="/v2/{name}/manifests/{reference}"}"#;
    assert_eq!(delta(v2_count), 1.0, "{}", after.text);
    assert_eq!(delta(r#"berth_ingress_requests_total{status="4xx"}"#), 1.0, "{}", after.text);
    assert_eq!(delta("berth_ingress_request_duration_seconds_count"), 1.0, "{}", after.text);
    // What the registry holds, as /v1/registry/status says it.
    let status = admin.get("/v1/registry/status").json();
    assert_eq!(after.get("berth_registry_blobs"), status["blobs"].as_f64().unwrap());
    assert_eq!(after.get("berth_registry_blob_bytes"), status["blob_bytes"].as_f64().unwrap());
    assert!(after.get("berth_registry_blob_bytes") >= (config.len() + layer.len()) as f64);
    assert_eq!(after.get("berth_registry_repositories"), 1.0);
    let cache = admin.get("/v1/oci/cache/status").json();
    assert_eq!(after.get("berth_layer_cache_bytes"), cache["bytes"].as_f64().unwrap());
    // The blobs are under the state dir, on its filesystem.
    assert!(after.get("berth_state_filesystem_size_bytes") > 0.0);
    assert!(after.get("berth_state_dir_bytes") > 0.0);
    assert!(after.get("process_resident_memory_bytes") > 1e6);
    assert!(after.get("berth_uptime_seconds") >= before.get("berth_uptime_seconds"));
    for outcome in ["live", "failed", "cancelled"] {
        assert!(after.values.contains_key(&format!(r#"berth_deployments_finished_total{{outcome="{outcome}"}}"#)));
    }
    // Ids and raw paths are never labels.
    assert!(!after.text.contains(&project), "{}", after.text);
    assert!(!after.text.contains("prj_doesnotexist"), "{}", after.text);
    assert!(!after.text.contains("alpha/app"), "{}", after.text);
    assert!(!after.text.contains("no-such-route"), "{}", after.text);

    if require_tool("promtool", &["--version"]) {
        let dir = TempDir::new("metrics");
        let file = dir.path().join("metrics.txt");
        std::fs::write(&file, &after.text).unwrap();
        let out = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(&file).unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn only_super_admins_with_the_scope_may_scrape() {
    let (b, admin, scraper, _) = setup();
    assert_eq!(scraper.get("/metrics").status, 200);
    // The loopback address is no credential: the ingress forwards over loopback.
    let r = b.client().get("/metrics");
    assert_eq!(r.status, 401, "{}", r.text());
    // The admin's session has every scope.
    assert_eq!(admin.get("/metrics").status, 200);
    // A super-admin's token without the scope.
    let narrow = admin.post("/v1/api-tokens", &json!({"name": "ro", "scopes": ["node:read"]}));
    let r = b.client().with_token(narrow.json()["token"].as_str().unwrap()).get("/metrics");
    assert_eq!((r.status, r.code()), (403, "insufficient_scope".to_string()), "{}", r.text());
    // A user who is no super-admin, even with the scope (or all of them).
    let u = admin.post("/v1/users", &json!({"username": "ops", "password": "password-123"}));
    assert_eq!(u.status, 201, "{}", u.text());
    let ops = b.login("ops", "password-123");
    let r = ops.get("/metrics");
    assert_eq!((r.status, r.code()), (403, "forbidden".to_string()), "{}", r.text());
    let t = ops.post("/v1/api-tokens", &json!({"name": "scrape", "scopes": ["metrics:read"]}));
    assert_eq!(t.status, 201, "{}", t.text());
    let r = b.client().with_token(t.json()["token"].as_str().unwrap()).get("/metrics");
    assert_eq!(r.status, 403, "{}", r.text());
}
