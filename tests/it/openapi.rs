//! The served OpenAPI document is valid 3.1 and covers exactly the route table.

use std::collections::BTreeSet;
use std::process::Command;

use berth::api::router::ROUTES;

use crate::harness::{Berth, TempDir, require, runs};

#[test]
fn openapi_document_is_valid_and_matches_the_route_table() {
    let b = Berth::start("");
    let r = b.client().get("/v1/openapi.json");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("application/json"));
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch", "head", "options"].contains(&method.as_str()) {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    // axum writes a catch-all as `{*path}`, OpenAPI as `{path}`.
    let openapi_path = |p: &str| p.replace("{*", "{");
    let table: BTreeSet<(String, String)> =
        ROUTES.iter().map(|r| (r.method.to_string(), openapi_path(r.path))).collect();
    let undocumented: Vec<_> = table.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&table).collect();
    assert!(undocumented.is_empty(), "routes missing from the OpenAPI document: {undocumented:?}");
    assert!(unserved.is_empty(), "documented routes not in the route table: {unserved:?}");

    // Non-public operations declare the bearer scheme.
    for route in ROUTES {
        let op = &doc["paths"][openapi_path(route.path)][route.method.as_str().to_lowercase()];
        let public = matches!(route.access, berth::api::router::Access::Public);
        assert_eq!(op.get("security").is_none(), public, "{} {} security declaration", route.method, route.path);
    }

    let validator = runs("python3", &["-c", "import openapi_spec_validator"]);
    if require(
        "python3 cannot import openapi_spec_validator (bash scripts/test.sh installs it in .venv-test)",
        validator,
    ) {
        let dir = TempDir::new("openapi");
        let file = dir.path().join("openapi.json");
        std::fs::write(&file, &r.body).unwrap();
        let out = Command::new("python3")
            .args(["-c", "import json,sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))\nprint('valid')"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openapi-spec-validator rejected the document:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
