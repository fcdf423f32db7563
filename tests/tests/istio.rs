//! The Istio manifests in `istio/`: read as Kubernetes would (YAML, by Debian's
//! python3-yaml, which docker-compose brings), held together (the WasmPlugin reaches the
//! key-service through the cluster Istio makes for the ServiceEntry, and takes its token
//! from the environment the gateway patch sets), and the plugin's configuration accepted
//! by the filter's own parser.

use std::process::Command;

use keygate_core::config::Config;
use keygate_e2e::stack::repo_root;
use serde_json::Value;

/// Every document of every `istio/*.yaml`, as JSON.
fn manifests() -> Vec<Value> {
    let dir = repo_root().join("istio");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("istio/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let output = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]\n\
             json.dump(docs, sys.stdout)",
        ])
        .args(&files)
        .output()
        .expect("/usr/bin/python3 (Debian's, with python3-yaml: run `make setup`)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("YAML as JSON")
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<_> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} expected");
    found[0]
}

#[test]
fn the_istio_manifests_fit_together_and_the_filter_accepts_their_configuration() {
    let docs = manifests();
    let plugin = &kind(&docs, "WasmPlugin")["spec"];
    assert_eq!(plugin["phase"], "AUTHN");
    assert_eq!(plugin["failStrategy"], "FAIL_RELOAD");
    assert!(plugin["url"].as_str().unwrap().starts_with("oci://"));

    let config = Config::parse(Some(plugin["pluginConfig"].to_string().as_bytes()))
        .unwrap_or_else(|e| panic!("the filter refuses the WasmPlugin's pluginConfig: {e}"));

    // The token: from the gateway container's environment, which the patch fills.
    let env = &plugin["vmConfig"]["env"][0];
    assert_eq!(
        (env["name"].as_str(), env["valueFrom"].as_str()),
        (Some(config.token_env.as_str()), Some("HOST"))
    );
    let patch = docs
        .iter()
        .find(|d| d.get("kind").is_none() && d["spec"]["template"].is_object())
        .expect("the gateway Deployment patch");
    let container = &patch["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["name"], "istio-proxy");
    assert_eq!(container["env"][0]["name"], config.token_env.as_str());
    assert!(container["env"][0]["valueFrom"]["secretKeyRef"].is_object());

    // The key-service: Istio names the ServiceEntry's cluster outbound|PORT||HOST.
    let entry = &kind(&docs, "ServiceEntry")["spec"];
    let host = entry["hosts"][0].as_str().unwrap();
    let port = &entry["ports"][0];
    assert_eq!(port["protocol"], "HTTP");
    assert_eq!(
        config.key_service_cluster,
        format!("outbound|{}||{host}", port["number"])
    );
    assert_eq!(config.key_service_authority, host);
    assert_eq!(kind(&docs, "DestinationRule")["spec"]["host"], host);
}
