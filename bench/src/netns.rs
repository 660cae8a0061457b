//! `netns`: a sandbox network's own cost, without a VM: making it (namespace, tap, veth pair,
//! addresses, route, table), changing its policy on a running sandbox (the table replaced in
//! one transaction), and taking it down; 30 of each, in sequence, as a create, a change and a
//! removal follow each other on a busy host.

use std::time::Instant;

use anyhow::bail;
use cove_model::NetworkPolicy;
use serde_json::json;

use crate::{ms, summary};

pub async fn run() -> anyhow::Result<serde_json::Value> {
    let home = tempdir()?;
    let nets = cove_net::Networks::from_env(&home);
    if let Some(why) = nets.off() {
        bail!("this host makes no sandbox networks: {why}");
    }
    let egress = NetworkPolicy::default();
    let changed = NetworkPolicy {
        allow: vec![
            "192.0.2.0/24".parse().map_err(anyhow::Error::msg)?,
            "example.org".parse().map_err(anyhow::Error::msg)?,
        ],
        egress_mbps: Some(100),
        ..Default::default()
    };
    let owner = Some((65_534, 65_534));
    let (mut create, mut change, mut destroy) = (Vec::new(), Vec::new(), Vec::new());
    let id = |i: usize| format!("bnetns{i}");
    let mut result = Ok(());
    for i in 0..30 {
        let t = Instant::now();
        if let Err(e) = nets.create(&id(i), owner, &egress).await {
            result = Err(e);
            break;
        }
        create.push(ms(t));
        let t = Instant::now();
        if let Err(e) = nets.apply(&id(i), &changed).await {
            result = Err(e);
            break;
        }
        change.push(ms(t));
        let t = Instant::now();
        nets.destroy(&id(i));
        destroy.push(ms(t));
    }
    for i in 0..30 {
        nets.destroy(&id(i));
    }
    let _ = std::fs::remove_dir_all(&home);
    result?;
    Ok(json!({
        "bench": "netns",
        "create_ms": summary(create),
        "policy_change_ms": summary(change),
        "destroy_ms": summary(destroy),
    }))
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("cove-bench-netns-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
