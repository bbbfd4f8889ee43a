//! The Kubernetes deployment (`k8s/`): every kustomization renders with `kubectl kustomize` and
//! validates offline — built-in kinds strictly against Kubernetes' schemas
//! (`kubernetes-validate --strict`), the ServiceMonitor and PrometheusRule strictly against the
//! vendored prometheus-operator schemas, the rules with `promtool` — and keeps orderhub's
//! promises (credentials from a Secret, probes, grace above `shutdown_grace`, resources,
//! anti-affinity, one replica on a PVC in single-node). The checks are `k8s/check.py`, runnable
//! by hand; without its tools they say SKIPPED, unless `ORDERHUB_REQUIRE_K8S` is set (as
//! `.ci/run` does), when that fails.

use std::path::Path;
use std::process::Command;

/// What `k8s/check.py` exits with when a tool it needs is missing.
const SKIPPED: i32 = 77;

#[test]
fn every_kustomization_renders_and_validates_offline() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/check.py");
    let python = std::env::var("ORDERHUB_PYTHON").unwrap_or_else(|_| "python3".into());
    let output = match Command::new(&python).arg(&script).output() {
        Ok(output) => output,
        Err(err) => {
            assert!(
                std::env::var_os("ORDERHUB_REQUIRE_K8S").is_none(),
                "cannot run {python}: {err}"
            );
            eprintln!("SKIPPED: cannot run {python}: {err}");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(SKIPPED) {
        assert!(
            std::env::var_os("ORDERHUB_REQUIRE_K8S").is_none(),
            "k8s/check.py could not run: {stdout}{stderr}"
        );
        eprintln!("{stdout}");
        return;
    }
    assert!(output.status.success(), "k8s/check.py:\n{stdout}{stderr}");
    assert!(
        stdout.contains("rendered k8s/overlays/single-node"),
        "{stdout}"
    );
}

/// The engines' configuration in each overlay is one the engine accepts: the single-node one
/// without `[cluster]`, the cluster one with it (three JetStream replicas, the default lease).
#[test]
fn every_overlay_config_is_valid_for_the_engine() {
    let k8s = Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s");
    let load = |path: &str| {
        orderhub_engine::config::Config::load(&k8s.join(path))
            .unwrap_or_else(|e| panic!("k8s/{path}: {e}"))
    };
    assert!(load("base/orderhub.toml").cluster.is_none());
    let cluster = load("overlays/cluster/orderhub.toml")
        .cluster
        .expect("the cluster overlay configures [cluster]");
    assert_eq!(
        (cluster.replicas, cluster.partitions, cluster.nats.len()),
        (3, 64, 3)
    );
}
