//! deploy/k8s, the production deployment on Kubernetes, and its optional components
//! (`monitoring`: the alert rules as a PrometheusRule; `custom-metrics`: the autoscaler on
//! request rate and queue age): valid against the Kubernetes API schemas (kubernetes-validate,
//! strict: an unknown field fails) and CloudNativePG's and the Prometheus Operator's
//! (deploy/k8s/validate), with no network; and in agreement with the server it deploys — its
//! configuration passes the production checks, its probes answer, its grace period covers the
//! drain, and the admin jobs run with the server's own settings.
//!
//! Needs `kubernetes-validate` (PyPI, the version `.ci/run` pins; it brings PyYAML) and
//! `npm ci --prefix deploy/k8s/validate`; skipped with a note without them, unless
//! `PEXPER_REQUIRE_KUBERNETES_VALIDATE` is set (CI).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use pexper_tests::*;
use serde_json::Value;

/// The kubernetes-validate version, and the Kubernetes version validated against.
const KUBERNETES_VALIDATE: &str = "1.37.0";
const KUBERNETES: &str = "1.33.0";

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s")
}

/// Every manifest (the kustomization aside), by file name.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    files.sort();
    files
}

/// The components' resources (each component's kustomization aside).
fn component_manifests() -> Vec<PathBuf> {
    ["monitoring/prometheusrule.yaml", "custom-metrics/hpa.yaml"]
        .iter()
        .map(|f| k8s_dir().join(f))
        .collect()
}

/// Whether the validators are here; `None` (with the reason) if not.
fn validators_missing() -> Option<String> {
    let version = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match version {
        None => {
            return Some(format!(
                "pip install kubernetes-validate=={KUBERNETES_VALIDATE}"
            ));
        }
        Some(v) => assert_eq!(v, KUBERNETES_VALIDATE, "the version .ci/run pins"),
    }
    if !k8s_dir()
        .join("validate/node_modules/@kubernetes-models/cloudnative-pg")
        .exists()
    {
        return Some("npm ci --prefix deploy/k8s/validate".into());
    }
    None
}

/// Every document of every manifest, as JSON (PyYAML, which kubernetes-validate brings).
fn documents() -> Vec<Value> {
    documents_of(&manifests())
}

fn documents_of(files: &[PathBuf]) -> Vec<Value> {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import json, sys, yaml\nprint(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]))")
        .args(files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} in deploy/k8s"))
}

/// The pod template of a Deployment, Job or CronJob.
fn pod(resource: &Value) -> &Value {
    match resource["kind"].as_str().unwrap() {
        "CronJob" => &resource["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &resource["spec"]["template"]["spec"],
    }
}

#[test]
fn the_manifests_validate_against_the_kubernetes_and_operators_schemas() {
    if let Some(missing) = validators_missing() {
        assert!(
            std::env::var("PEXPER_REQUIRE_KUBERNETES_VALIDATE").is_err(),
            "PEXPER_REQUIRE_KUBERNETES_VALIDATE is set but: {missing}"
        );
        eprintln!("skipped: {missing} to validate deploy/k8s");
        return;
    }
    let files: Vec<PathBuf> = manifests()
        .into_iter()
        .chain(component_manifests())
        .collect();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", KUBERNETES])
        .args(&files)
        .output()
        .unwrap();
    let report = stdout(&out) + &stderr(&out);
    assert!(out.status.success(), "{report}");
    // The only resources it has no schema for are the operators', checked below.
    const OPERATORS: [&str; 2] = ["postgresql.cnpg.io/v1", "monitoring.coreos.com/v1"];
    for line in report.lines().filter(|l| !l.starts_with("INFO")) {
        assert!(
            line.starts_with("WARN")
                && OPERATORS
                    .iter()
                    .any(|g| line.contains(&format!("api version {g}"))),
            "{line}"
        );
    }
    let core = documents_of(&files)
        .iter()
        .filter(|d| !OPERATORS.contains(&d["apiVersion"].as_str().unwrap()))
        .count();
    assert_eq!(
        report.matches(" passed for resource ").count(),
        core,
        "{report}"
    );

    let out = Command::new("node")
        .arg(k8s_dir().join("validate/validate.mjs"))
        .args(&files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    // The database cluster, its backup schedule, and the alert rules.
    assert_eq!(
        stdout(&out).matches(" passed against ").count(),
        3,
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn the_manifests_agree_with_the_server_they_deploy() {
    if Command::new("python3")
        .args(["-c", "import yaml"])
        .status()
        .map_or(true, |s| !s.success())
    {
        assert!(std::env::var("PEXPER_REQUIRE_KUBERNETES_VALIDATE").is_err());
        eprintln!("skipped: PyYAML (pip install kubernetes-validate=={KUBERNETES_VALIDATE})");
        return;
    }
    let docs = documents();

    // The kustomization applies every manifest there is.
    let kustomization = std::fs::read_to_string(k8s_dir().join("kustomization.yaml")).unwrap();
    let listed: BTreeSet<String> = kustomization
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|l| l.ends_with(".yaml"))
        .map(str::to_owned)
        .collect();
    let present: BTreeSet<String> = manifests()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, present);

    let deployment = find(&docs, "Deployment", "pexper-server");
    let server = &pod(deployment)["containers"][0];
    let config = &find(&docs, "ConfigMap", "pexper-config")["data"];

    // The admin jobs run with the server's settings and image, and of its secrets only the
    // database's: a migration and a journal export need nothing else.
    let database_env: Vec<&Value> = server["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| ["PGUSER", "PGPASSWORD", "DATABASE_URL"].contains(&v["name"].as_str().unwrap()))
        .collect();
    assert_eq!(database_env.len(), 3);
    for (kind, name) in [
        ("Job", "pexper-migrate"),
        ("CronJob", "pexper-erasure-journal"),
    ] {
        let job = &pod(find(&docs, kind, name))["containers"][0];
        let env: Vec<&Value> = job["env"].as_array().unwrap().iter().collect();
        assert_eq!(
            env, database_env,
            "{kind}/{name}: the database's secrets only"
        );
        assert_eq!(job["envFrom"], server["envFrom"], "{kind}/{name}");
        assert_eq!(job["image"], server["image"], "{kind}/{name}");
    }

    // Its settings, with stand-ins for the secrets, pass the server's production checks.
    let mut vars: BTreeMap<String, String> = config
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let stand_in = |key: &str| match key {
        "username" => "pexper".to_owned(),
        "password" => "s3cret".to_owned(),
        "master-key" | "license-key" => pexper_platform::crypto::MasterKeys::generate_encoded(),
        "stripe-webhook-secret" => "whsec_stand_in".to_owned(),
        "smtp-url" => "smtps://user:pass@smtp.example.com".to_owned(),
        "crash-keys" => "1:0f3c9a7e5b2d4c6a".to_owned(),
        "dkim-selector" => "pexper2026".to_owned(),
        // An Ed25519 seed stands in for the RSA key: either is a key the server signs with.
        "dkim-key" => format!(
            "ed25519:{}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32])
        ),
        other => panic!("a stand-in for secret key {other}"),
    };
    for var in server["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap().to_owned();
        let value = match var.get("value") {
            Some(v) => v
                .as_str()
                .unwrap()
                .replace("$(PGUSER)", &vars["PGUSER"])
                .replace("$(PGPASSWORD)", &vars["PGPASSWORD"]),
            None => {
                let secret = &var["valueFrom"]["secretKeyRef"];
                if secret["optional"] == true {
                    continue;
                }
                stand_in(secret["key"].as_str().unwrap())
            }
        };
        vars.insert(name, value);
    }
    vars.remove("PGUSER");
    vars.remove("PGPASSWORD");
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../services/platform/src/config.rs"),
    )
    .unwrap();
    for name in vars.keys() {
        assert!(
            source.contains(&format!("\"{name}\"")),
            "the server reads {name}"
        );
    }
    let parsed = pexper_platform::Config::from_vars(vars.clone().into_iter().collect());
    assert!(
        parsed.is_ok(),
        "production refuses it: {:#}",
        parsed.unwrap_err()
    );
    assert!(vars["DATABASE_URL"].contains("sslmode=verify-full"));

    // Those jobs' commands run in production with the settings and the database alone (a real
    // database here, verified as the job's is); a command that needs the master key asks for
    // it then.
    let db = TestDatabase::new().await;
    let mut job_vars: Vec<(String, String)> = config
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .filter(|(k, _)| k != "PGUSER" && k != "PGPASSWORD")
        .collect();
    job_vars.push(("DATABASE_URL".into(), db.url()));
    let data = tempdir::TempDir::new();
    job_vars.push(("PEXPER_DATA_DIR".into(), data.path().display().to_string()));
    for args in [vec!["migrate"], vec!["--json", "db", "journal"]] {
        let out = admin(&job_vars, &args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    let out = admin(&job_vars, &["keys", "status"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("PEXPER_MASTER_KEY"),
        "{}",
        stderr(&out)
    );

    // The probes' paths answer on a real server; the port is the one it binds.
    let running = ServerProcess::start("warn").await;
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let path = server[probe]["httpGet"]["path"].as_str().unwrap();
        let res = reqwest::get(format!("{}{path}", running.base))
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{probe} {path}");
    }
    assert_eq!(server["readinessProbe"]["httpGet"]["path"], "/readyz");

    // The edge keeps no access log (request lines carry emailed tokens, log lines the
    // client's address), and routes every public path of the server's own document but not
    // the probes.
    let ingress = find(&docs, "Ingress", "pexper-server");
    assert_eq!(
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/enable-access-log"],
        "false"
    );
    let prefixes: Vec<&str> = ingress["spec"]["rules"][0]["http"]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["pathType"], "Prefix");
            p["path"].as_str().unwrap()
        })
        .collect();
    // A `Prefix` path matches whole path elements: `/v1` matches `/v1/waitlist`, not `/v10`.
    let routed = |path: &str| {
        prefixes.iter().any(|prefix| {
            path == *prefix || path.starts_with(&format!("{}/", prefix.trim_end_matches('/')))
        })
    };
    let document: Value = reqwest::get(format!("{}/openapi.json", running.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in document["paths"].as_object().unwrap().keys() {
        let probe = path == "/healthz" || path == "/readyz";
        assert_eq!(routed(path), !probe, "{path} routed by the Ingress");
    }
    assert!(routed("/openapi.json"));
    running.stop().await;
    let port = server["ports"][0]["containerPort"].as_u64().unwrap();
    assert!(
        config["PEXPER_BIND"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{port}"))
    );

    // /metrics: its own port, the one the server binds, the one the scrape annotations name,
    // reachable from the monitoring namespace only, and never behind the Service or Ingress.
    let metrics = server["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a metrics port");
    let metrics_port = metrics["containerPort"].as_u64().unwrap();
    assert_ne!(metrics_port, port);
    assert!(
        config["PEXPER_METRICS_ADDR"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{metrics_port}"))
    );
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], metrics_port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let policy = find(&docs, "NetworkPolicy", "pexper-server");
    let reaching_metrics: Vec<&Value> = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| {
            rule["ports"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["port"].as_u64() == Some(metrics_port))
        })
        .collect();
    assert_eq!(reaching_metrics.len(), 1);
    assert_eq!(
        reaching_metrics[0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    let service = find(&docs, "Service", "pexper-server");
    for p in service["spec"]["ports"].as_array().unwrap() {
        assert_ne!(p["targetPort"], "metrics");
        assert_ne!(p["targetPort"].as_u64(), Some(metrics_port));
    }

    // The grace period covers the drain: preStop, then the longer of the request timeout
    // (15 s) and the jobs' grace, with a margin before the kubelet's SIGKILL.
    let pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .unwrap();
    let job_grace: u64 = config["PEXPER_SHUTDOWN_GRACE_SECONDS"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let request_timeout = pexper_platform::http::HttpOptions::default()
        .timeout
        .as_secs();
    let grace = pod(deployment)["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        grace >= pre_stop + job_grace.max(request_timeout) + 5,
        "{grace}"
    );

    // Three replicas, of which a disruption leaves two; the database takes the most the
    // autoscaler makes (each with every connection its pools may hold, by the server's own
    // figures), the two admin jobs, and a reserve for superusers, replication and the operator.
    assert_eq!(deployment["spec"]["replicas"], 3);
    let pdb = find(&docs, "PodDisruptionBudget", "pexper-server");
    assert_eq!(pdb["spec"]["minAvailable"], 2);
    let hpa = find(&docs, "HorizontalPodAutoscaler", "pexper-server");
    assert_eq!(hpa["spec"]["minReplicas"], 3);
    let max_replicas = hpa["spec"]["maxReplicas"].as_u64().unwrap();
    let cluster = find(&docs, "Cluster", "pexper-db");
    let max_connections: u64 = cluster["spec"]["postgresql"]["parameters"]["max_connections"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let per_replica = u64::from(pexper_platform::db::connections_per_process(
        parsed.as_ref().unwrap().job_concurrency,
    ));
    let admin_jobs = 2 * u64::from(pexper_platform::db::ADMIN_CONNECTIONS);
    let reserve = 20;
    assert!(
        max_replicas * per_replica + admin_jobs + reserve <= max_connections,
        "{max_replicas} replicas × {per_replica} + {admin_jobs} + {reserve} > {max_connections}"
    );
    // Encrypted at rest (PRIVACY.md): the volumes, and the backups and WAL in object storage.
    let class = cluster["spec"]["storage"]["storageClass"].as_str().unwrap();
    assert_eq!(
        find(&docs, "StorageClass", class)["parameters"]["encrypted"],
        "true"
    );
    let store = &cluster["spec"]["backup"]["barmanObjectStore"];
    assert_eq!(store["data"]["encryption"], "AES256");
    assert_eq!(store["wal"]["encryption"], "AES256");
    assert_eq!(
        cluster["spec"]["postgresql"]["parameters"]["synchronous_commit"], "on",
        "acknowledged means durable (faults::postgres_killed_mid_load_…)"
    );

    // The server's egress: Postgres, the SMTP relay, DNS; nothing else.
    let policy = find(&docs, "NetworkPolicy", "pexper-server");
    let ports: BTreeSet<u64> = policy["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["ports"].as_array().unwrap().clone())
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, BTreeSet::from([53, 465, 587, 5432]));
}

/// The components change only what they say they do: the PrometheusRule holds exactly the
/// alert rules Prometheus is given without the Operator (so one set of rules is tested), and
/// the custom-metrics autoscaler is the base one with metrics added, each made by one of the
/// adapter's rules.
#[test]
fn the_components_carry_the_tested_rules_and_extend_the_base_autoscaler() {
    if let Some(missing) = validators_missing() {
        assert!(
            std::env::var("PEXPER_REQUIRE_KUBERNETES_VALIDATE").is_err(),
            "PEXPER_REQUIRE_KUBERNETES_VALIDATE is set but: {missing}"
        );
        eprintln!("skipped: {missing}");
        return;
    }
    let prometheus = k8s_dir().join("../prometheus");
    let rules = documents_of(&[prometheus.join("alerts.yml")]);
    let rule = &documents_of(&[k8s_dir().join("monitoring/prometheusrule.yaml")])[0];
    assert_eq!(rule["spec"]["groups"], rules[0]["groups"]);
    // An overlay's component is not namespaced or labelled by the base's kustomization.
    assert_eq!(rule["metadata"]["namespace"], "pexper");
    assert_eq!(
        rule["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "pexper"
    );

    let base = find(&documents(), "HorizontalPodAutoscaler", "pexper-server").clone();
    let mut scaled = documents_of(&[k8s_dir().join("custom-metrics/hpa.yaml")])[0].clone();
    let metrics = scaled["spec"]["metrics"].as_array().unwrap().clone();
    let base_metrics = base["spec"]["metrics"].as_array().unwrap();
    assert_eq!(&metrics[..base_metrics.len()], &base_metrics[..]);
    scaled["spec"]["metrics"] = base["spec"]["metrics"].clone();
    assert_eq!(scaled, base, "only the metrics differ");

    // Each added metric is one the adapter makes, from a metric the server serves.
    let adapter = &documents_of(&[prometheus.join("adapter.yaml")])[0];
    let pods = &metrics[base_metrics.len()]["pods"]["metric"]["name"];
    let custom = &adapter["rules"][0];
    assert_eq!(&custom["name"]["as"], pods);
    assert!(
        custom["seriesQuery"]
            .as_str()
            .unwrap()
            .starts_with("pexper_http_requests_total{")
    );
    let external = &metrics[base_metrics.len() + 1]["external"]["metric"]["name"];
    assert!(
        adapter["externalRules"][0]["seriesQuery"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}{{", external.as_str().unwrap()))
    );
    // That the server serves them is `metrics::metrics_show_what_happened…`'s check.
}
