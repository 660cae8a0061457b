//! The blob store in S3 (`COVE_BLOBS=s3://BUCKET/PREFIX`), against a real S3-compatible server
//! on loopback (`cove_tests::S3`): a hibernation goes to the bucket, a wake fetches it back
//! when this host's copy is gone, and a removal deletes it there.

use std::path::PathBuf;

use cove_tests::{Coved, S3, cove_with_key, ok, operator_key};

#[test]
fn hibernations_go_to_s3_and_wake_from_it() {
    let s3 = S3::start();
    let prefix = format!("run{}", std::process::id());
    let env = s3.env(&prefix);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let _ = cove_tests::home();
    let coved = Coved::start_with("127.0.0.1:0", &[], &env);
    let key = operator_key();
    let cove = |args: &[&str]| ok(&cove_with_key(&coved.url, &key, args));
    let id = cove(&["create", "--memory", "256"]).trim().to_string();
    cove(&[
        "exec",
        &id,
        "--",
        "sh",
        "-c",
        "mkdir -p /data && echo kept > /data/f && sync",
    ]);

    cove(&["hibernate", &id]);
    let at = |name: &str| s3.object(&format!("{prefix}/hibernations/{id}/{name}"));
    assert!(
        at("manifest.json").is_file(),
        "no manifest in the bucket at {}",
        at("manifest.json").display()
    );
    assert!(at("memory").is_file(), "no memory in the bucket");

    assert!(at("disk-cove-rw").is_file(), "no disk in the bucket");

    // This host's copies go, the hibernation and the disk: the wake has only the bucket's.
    let v: serde_json::Value = serde_json::from_str(&cove(&["inspect", &id])).unwrap();
    let dir = PathBuf::from(v["host"]["dir"].as_str().expect("the sandbox's directory"));
    let local = dir.join("hibernation");
    assert!(local.join("manifest.json").is_file(), "{}", local.display());
    std::fs::remove_dir_all(&local).unwrap();
    std::fs::remove_file(dir.join("disk.ext4")).unwrap();
    cove(&["resume", &id]);
    assert_eq!(cove(&["exec", &id, "--", "cat", "/data/f"]), "kept\n");
    // Woken, it is no longer kept in the bucket.
    assert!(
        !at("manifest.json").exists(),
        "a woken sandbox's hibernation stays"
    );

    // Removing a hibernated sandbox removes its hibernation from the bucket.
    cove(&["hibernate", &id]);
    assert!(
        at("manifest.json").is_file(),
        "the second hibernation is not in the bucket"
    );
    cove(&["rm", "-f", &id]);
    assert!(
        !at("manifest.json").exists() && !at("memory").exists() && !at("disk-cove-rw").exists(),
        "the removed sandbox's hibernation stays in the bucket"
    );
}
