//! The deployment files are valid: Kubernetes manifests against the API schemas
//! (`kubernetes-validate --strict`, from PyPI), and the Dockerfile, compose file and nginx
//! configuration carry what the service needs.
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The manifests `kubectl apply -f deploy/k8s` would create (the KServe example needs a
/// CRD the validator does not know; it is checked by hand below).
const CORE_MANIFESTS: [&str; 6] = ["configmap", "secret", "deployment", "service", "hpa", "pdb"];

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    let validator = std::env::var_os("CATSDOGS_K8S_VALIDATE").map(PathBuf::from);
    let Some(validator) = validator.filter(|p| p.exists()) else {
        assert!(
            std::env::var("CATSDOGS_REQUIRE_K8S_VALIDATE").as_deref() != Ok("1"),
            "CATSDOGS_K8S_VALIDATE must point to kubernetes-validate"
        );
        eprintln!(
            "SKIPPED: set CATSDOGS_K8S_VALIDATE to the kubernetes-validate executable (pip install kubernetes-validate)"
        );
        return;
    };
    let files: Vec<PathBuf> = CORE_MANIFESTS.iter().map(|m| repo().join(format!("deploy/k8s/{m}.yaml"))).collect();
    let out = std::process::Command::new(&validator).arg("--strict").args(&files).output().expect("run validator");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "manifests do not validate:\n{text}");
    assert_eq!(text.matches("passed").count(), CORE_MANIFESTS.len(), "{text}");
}

#[test]
fn deployment_wiring_is_consistent() {
    let deployment = read("deploy/k8s/deployment.yaml");
    // Probes point at routes the server has.
    let lib = read("crates/server/src/lib.rs");
    for path in ["/v2/health/ready", "/v2/health/live"] {
        assert!(deployment.contains(&format!("path: {path}")), "probe {path}");
        assert!(lib.contains(&format!("\"{path}\"")), "route {path} missing from the router");
    }
    // Every secret key the pod mounts exists in the example Secret; the names are the
    // files the server reads from CATSDOGS_SECRETS_DIR.
    let secret = read("deploy/k8s/secret.yaml");
    for key in ["api-token", "pseudonym-key", "session-key", "database-url"] {
        assert!(secret.contains(&format!("{key}:")), "secret key {key}");
    }
    assert!(read("deploy/k8s/configmap.yaml").contains("CATSDOGS_SECRETS_DIR: /var/run/catsdogs-secrets"));
    assert!(deployment.contains("mountPath: /var/run/catsdogs-secrets"));
    let kserve = read("deploy/k8s/kserve-inferenceservice.yaml");
    assert!(kserve.contains("apiVersion: serving.kserve.io/v1beta1") && kserve.contains("kind: InferenceService"));

    let docker = read("deploy/Dockerfile");
    assert_eq!(docker.matches("\nFROM ").count() + usize::from(docker.starts_with("FROM ")), 2, "multi-stage");
    for needle in ["USER catsdogs", "HEALTHCHECK", "COPY models/effnet-lite0", "ORT_DYLIB_PATH", "EXPOSE 8000"] {
        assert!(docker.contains(needle), "Dockerfile lacks {needle}");
    }
    assert!(Path::new(&repo().join(".dockerignore")).is_file());
    let compose = read("deploy/compose.yaml");
    for needle in ["app1:", "app2:", "db:", "proxy:", "CATSDOGS_SECRETS_DIR: /run/secrets", "service_healthy"] {
        assert!(compose.contains(needle), "compose lacks {needle}");
    }
    let nginx = read("deploy/nginx.conf");
    assert!(nginx.contains("server app1:8000") && nginx.contains("server app2:8000"));
}
