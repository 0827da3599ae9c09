//! The deployment files are valid: Kubernetes manifests against the API schemas
//! (`kubernetes-validate --strict`, from PyPI), and the Dockerfile, compose file and nginx
//! configuration carry what the service needs.
use std::path::PathBuf;

use catsdogs_testkit::repo;

/// A file of the repository.
fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The manifests `kubectl apply -f deploy/k8s` would create (the KServe example needs a
/// CRD the validator does not know; it is checked by hand below).
const CORE_MANIFESTS: [&str; 7] = ["configmap", "secret", "deployment", "service", "hpa", "pdb", "shared-pvc"];

/// The single-pod example, applied instead of the replicated deployment.
const SINGLE_REPLICA: &str = "single-replica/deployment";

pub fn kubernetes_manifests_match_the_api_schemas() {
    let validator = std::env::var_os("CATSDOGS_K8S_VALIDATE").expect("Need::K8sValidate checked it");
    let files: Vec<PathBuf> =
        CORE_MANIFESTS.iter().chain([&SINGLE_REPLICA]).map(|m| repo().join(format!("deploy/k8s/{m}.yaml"))).collect();
    let out = std::process::Command::new(&validator).arg("--strict").args(&files).output().expect("run validator");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "manifests do not validate:\n{text}");
    assert_eq!(text.matches("passed").count(), files.len(), "{text}");
}

/// Replicas share one ReadWriteMany folder (CATSDOGS_SHARED_DIR); an emptyDir shared folder
/// exists only in the single-replica example.
pub fn kubernetes_replicas_share_one_read_write_many_folder() {
    let configmap = read("deploy/k8s/configmap.yaml");
    assert!(configmap.contains("CATSDOGS_SHARED_DIR: /var/lib/catsdogs-shared"));
    let pvc = read("deploy/k8s/shared-pvc.yaml");
    assert!(pvc.contains("name: catsdogs-shared") && pvc.contains("accessModes: [ReadWriteMany]"));
    let deployment = read("deploy/k8s/deployment.yaml");
    assert!(deployment.contains("mountPath: /var/lib/catsdogs-shared"));
    assert!(deployment.contains("persistentVolumeClaim: {claimName: catsdogs-shared}"));
    let single = read(&format!("deploy/k8s/{SINGLE_REPLICA}.yaml"));
    assert!(single.contains("replicas: 1") && single.contains("type: Recreate"));
    let shared_volume = single.split("- name: shared").nth(1).unwrap_or_default();
    assert!(shared_volume.trim_start().starts_with("emptyDir"), "{shared_volume}");
}

pub fn kubernetes_probes_point_at_routes_the_server_has() {
    let deployment = read("deploy/k8s/deployment.yaml");
    let lib = read("crates/server/src/lib.rs");
    for path in ["/v2/health/ready", "/v2/health/live"] {
        assert!(deployment.contains(&format!("path: {path}")), "probe {path}");
        assert!(lib.contains(&format!("\"{path}\"")), "route {path} missing from the router");
    }
}

/// Every secret key the pod mounts exists in the example Secret; the names are the files
/// the server reads from CATSDOGS_SECRETS_DIR, where the pod mounts them.
pub fn kubernetes_secret_holds_every_key_and_is_mounted_at_the_secrets_dir() {
    let secret = read("deploy/k8s/secret.yaml");
    for key in ["api-token", "pseudonym-key", "session-key", "database-url"] {
        assert!(secret.contains(&format!("{key}:")), "secret key {key}");
    }
    assert!(read("deploy/k8s/configmap.yaml").contains("CATSDOGS_SECRETS_DIR: /var/run/catsdogs-secrets"));
    assert!(read("deploy/k8s/deployment.yaml").contains("mountPath: /var/run/catsdogs-secrets"));
}

pub fn kserve_example_is_an_inference_service() {
    let kserve = read("deploy/k8s/kserve-inferenceservice.yaml");
    assert!(kserve.contains("apiVersion: serving.kserve.io/v1beta1") && kserve.contains("kind: InferenceService"));
}

pub fn dockerfile_is_multi_stage_non_root_and_ships_the_default_model() {
    let docker = read("deploy/Dockerfile");
    assert_eq!(docker.matches("\nFROM ").count() + usize::from(docker.starts_with("FROM ")), 2, "multi-stage");
    for needle in ["USER catsdogs", "HEALTHCHECK", "COPY models/effnet-lite0", "ORT_DYLIB_PATH", "EXPOSE 8000"] {
        assert!(docker.contains(needle), "Dockerfile lacks {needle}");
    }
    assert!(repo().join(".dockerignore").is_file());
}

pub fn compose_runs_two_apps_a_database_and_a_proxy() {
    let compose = read("deploy/compose.yaml");
    for needle in ["app1:", "app2:", "db:", "proxy:", "CATSDOGS_SECRETS_DIR: /run/secrets", "service_healthy"] {
        assert!(compose.contains(needle), "compose lacks {needle}");
    }
    // Both apps mount the one shared volume where CATSDOGS_SHARED_DIR points.
    assert!(compose.contains("CATSDOGS_SHARED_DIR: /var/lib/catsdogs-shared"));
    assert_eq!(compose.matches("shared:/var/lib/catsdogs-shared").count(), 2, "both apps mount the shared volume");
}

pub fn nginx_balances_both_apps() {
    let nginx = read("deploy/nginx.conf");
    assert!(nginx.contains("server app1:8000") && nginx.contains("server app2:8000"));
    // Its own per-address limits, the sign-in one inside the /login location, answered 429.
    let login = nginx.split("location = /login {").nth(1).and_then(|rest| rest.split('}').next()).unwrap_or_default();
    assert!(login.contains("limit_req zone=login"), "nginx does not limit /login");
    assert!(nginx.contains("limit_req_status 429") && nginx.contains("limit_conn per_client"));
    // The replicas believe nginx's X-Forwarded-For, so their limits apply per client.
    assert!(read("deploy/compose.yaml").contains("CATSDOGS_TRUSTED_PROXY:"));
    assert!(read("deploy/k8s/configmap.yaml").contains("CATSDOGS_TRUSTED_PROXY:"));
}
