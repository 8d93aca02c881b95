//! A 201 survives `kill -9`: acknowledged writes are durable and the file stays sound.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{ADMIN_PASSWORD, Berth};

#[test]
#[expect(clippy::disallowed_types, clippy::disallowed_methods, reason = "checks the database file from outside")]
fn kill_dash_nine_during_200_concurrent_creates_loses_no_acknowledged_project() {
    let mut b = Berth::start("[api]\nrate_limit_per_minute = 100000\n");
    let admin = b.admin();
    let created = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for i in 0..200 {
        let (client, created, acked) = (admin.clone(), created.clone(), acked.clone());
        threads.push(std::thread::spawn(move || {
            let name = format!("p{i:03}");
            let body = json!({ "name": name }).to_string();
            if let Ok(r) = client.try_send("POST", "/v1/projects", Some(body.as_bytes()), &[]) {
                if r.status == 201 {
                    let id = r.json()["id"].as_str().unwrap().to_string();
                    created.lock().unwrap().push((name, id));
                    acked.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    // Kill once some, but not all, creations have been acknowledged.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::SeqCst) < 30 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    b.kill9();
    for t in threads {
        t.join().unwrap();
    }
    let created = created.lock().unwrap().clone();
    assert!(created.len() >= 30, "only {} creations acknowledged before the kill", created.len());
    eprintln!("{} of 200 creations acknowledged before kill -9", created.len());

    b.spawn();
    let admin = b.login("admin", ADMIN_PASSWORD);
    let mut present = std::collections::HashMap::new();
    let mut cursor = String::new();
    loop {
        let page = admin.get(&format!("/v1/projects?limit=100{cursor}")).json();
        for p in page["data"].as_array().unwrap() {
            present.insert(p["name"].as_str().unwrap().to_string(), p["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    for (name, id) in &created {
        assert_eq!(present.get(name), Some(id), "project {name} was acknowledged with 201 but is gone");
    }

    let db = rusqlite::Connection::open_with_flags(
        b.data_dir().join("state.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let check: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let fk: Vec<String> = db
        .prepare("PRAGMA foreign_key_check")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(fk.is_empty(), "foreign key violations: {fk:?}");
}
