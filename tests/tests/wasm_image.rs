//! `make wasm-image`'s OCI layout, taken the way Istio takes it: pushed by skopeo to a real
//! registry (Debian's docker-registry, the CNCF distribution server) on loopback, then its
//! manifest and layer fetched over the registry API and the layer unpacked: the
//! plugin.wasm inside must be the built filter, byte for byte.

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use keygate_e2e::api::client;
use keygate_e2e::stack::{filter_wasm, random_token, repo_root};
use serde_json::Value;

fn run(command: &mut Command) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e} (run `make setup`)"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

struct Registry(std::process::Child);

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_registry(dir: &Path) -> (Registry, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = dir.join("registry.yml");
    let storage = dir.join("storage");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
        .spawn()
        .expect("/usr/bin/docker-registry (run `make setup`)");
    let registry = Registry(child);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while client().get(format!("{base}/v2/")).send().is_err() {
        assert!(Instant::now() < deadline, "the registry did not start");
        sleep(Duration::from_millis(50));
    }
    (registry, base)
}

#[test]
fn the_wasm_image_goes_through_a_registry_and_holds_the_filter() {
    let wasm = filter_wasm();
    let dir = std::env::temp_dir().join(format!("keygate-image-{}", random_token()));
    std::fs::create_dir_all(&dir).unwrap();
    let layout = dir.join("layout");
    run(Command::new(repo_root().join("istio/wasm-image.sh"))
        .arg(&wasm)
        .arg(&layout)
        .arg("0.1.0"));

    let (_registry, base) = start_registry(&dir);
    let host = base.trim_start_matches("http://");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{}:0.1.0", layout.display()),
        &format!("docker://{host}/keygate/keygate:0.1.0"),
    ]));

    // What Istio's image fetcher reads: the manifest, then the one layer.
    let manifest: Value = client()
        .get(format!("{base}/v2/keygate/keygate/manifests/0.1.0"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .and_then(|r| r.json())
        .expect("the manifest from the registry");
    assert_eq!(
        manifest["annotations"]["module.wasm.image/variant"], "compat",
        "{manifest}"
    );
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let digest = layers[0]["digest"].as_str().unwrap();
    let layer = client()
        .get(format!("{base}/v2/keygate/keygate/blobs/{digest}"))
        .send()
        .and_then(|r| r.bytes())
        .expect("the layer from the registry");
    std::fs::write(dir.join("layer.tar.gz"), &layer).unwrap();
    let unpacked = dir.join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(dir.join("layer.tar.gz"))
        .arg("-C")
        .arg(&unpacked));
    let listed = run(Command::new("tar")
        .arg("-tzf")
        .arg(dir.join("layer.tar.gz")));
    assert_eq!(listed.trim(), "plugin.wasm");
    assert!(
        std::fs::read(unpacked.join("plugin.wasm")).unwrap() == std::fs::read(&wasm).unwrap(),
        "plugin.wasm differs from {}",
        wasm.display()
    );

    // The same keygate.wasm makes the same image: its digests can be pinned.
    let again = dir.join("again");
    run(Command::new(repo_root().join("istio/wasm-image.sh"))
        .arg(&wasm)
        .arg(&again)
        .arg("0.1.0"));
    let index = |d: &Path| std::fs::read_to_string(d.join("index.json")).unwrap();
    assert_eq!(
        index(&layout),
        index(&again),
        "the image is not reproducible"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
