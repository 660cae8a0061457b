//! A sandbox network made and removed for real (needs root, like every sandbox network): the
//! namespace, its links, addresses and rules are there, and nothing is left after `destroy`.

use std::process::Command;

use cove_model::NetworkPolicy;
use cove_net::Networks;

fn ip(args: &[&str]) -> String {
    let o = Command::new("ip").args(args).output().expect("ip runs");
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_network_is_made_whole_and_removed_whole() {
    let home = tempfile_home();
    let nets = Networks::from_env(&home);
    assert_eq!(
        nets.off(),
        None,
        "networks must be available to the test suite"
    );
    let id = format!("t{:011x}", std::process::id());
    let a = nets
        .create(&id, Some((65533, 65533)), &NetworkPolicy::default())
        .await
        .expect("created");
    let ns = format!("cove-{id}");
    assert!(ip(&["netns", "list"]).contains(&ns));
    let inside = ip(&["-n", &ns, "addr"]);
    assert!(inside.contains("169.254.127.1/30"), "{inside}");
    assert!(inside.contains(&format!("{}/30", a.ns_addr)), "{inside}");
    assert!(inside.contains("02:c0:5e:00:00:01"), "{inside}");
    let tap = ip(&["-n", &ns, "-d", "link", "show", "tap0"]);
    assert!(tap.contains("user 65533"), "{tap}");
    let host = ip(&["addr", "show", &a.host_iface]);
    assert!(host.contains(&format!("{}/30", a.host_addr)), "{host}");
    let rules = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "list", "table", "inet", "cove"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(rules.contains("chain egress"), "{rules}");
    assert!(nets.attached(&id).is_some());

    nets.destroy(&id);
    assert!(!ip(&["netns", "list"]).contains(&ns));
    assert!(!ip(&["link"]).contains(&a.host_iface));
    assert!(nets.attached(&id).is_none());
    let _ = std::fs::remove_dir_all(&home);
}

fn tempfile_home() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("cove-net-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
