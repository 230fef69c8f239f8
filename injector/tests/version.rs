//! `--sidecar auto`: the injector asks the API server for its version (`GET /version`) with the
//! usual client configuration. A fake API server on 127.0.0.1 answers; the kubeconfig points
//! at it. (One test in its own binary: it sets KUBECONFIG for the process.)

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use weft_injector::version::detect;
use weft_injector::SidecarMode;

async fn fake_api_server(minor: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        assert_eq!(req.uri().path(), "/version");
                        let body = format!(
                            r#"{{"major":"1","minor":"{minor}","gitVersion":"v1.{}.3","gitCommit":"x","gitTreeState":"clean","buildDate":"2024-01-01T00:00:00Z","goVersion":"go1.22","compiler":"gc","platform":"linux/amd64"}}"#,
                            minor.trim_end_matches('+')
                        );
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

fn kubeconfig(dir: &std::path::Path, addr: std::net::SocketAddr) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"http://{addr}\"}}\n\
             users:\n- name: fake\n  user: {{token: fake}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: fake}}\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn the_sidecar_mode_follows_the_api_servers_version() {
    let dir = tempfile::tempdir().unwrap();
    // No in-cluster environment: the kubeconfig decides.
    std::env::remove_var("KUBERNETES_SERVICE_HOST");
    for (minor, expected) in [
        ("28", SidecarMode::Classic),
        ("29+", SidecarMode::Native),
        ("31", SidecarMode::Native),
    ] {
        let addr = fake_api_server(minor).await;
        std::env::set_var("KUBECONFIG", kubeconfig(dir.path(), addr));
        let (mode, version) = detect(Duration::from_secs(5))
            .await
            .expect("the version is learned");
        assert_eq!(mode, expected, "1.{minor}");
        assert!(version.starts_with("v1."), "{version}");
    }
    // Nobody there: an error naming the problem, after the patience runs out.
    let unused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::env::set_var("KUBECONFIG", kubeconfig(dir.path(), unused));
    let started = std::time::Instant::now();
    let error = detect(Duration::from_millis(600)).await.unwrap_err();
    assert!(error.contains("/version"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
}
