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
