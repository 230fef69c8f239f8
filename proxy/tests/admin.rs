//! The admin server: probes, metrics, the config snapshot, the log level, and shutdown.
//! (Refusing `/config`, `/shutdown` and `/log-level` to non-loopback peers needs a
//! non-loopback address, which these tests do not use.)

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use support::*;
use weft_proxy::drain::Drained;

#[tokio::test]
async fn probes_answer() {
    let proxy = proxy().start().await;
    let live = admin(proxy.admin, Method::GET, "/live", "").await;
    assert_eq!(live.status, StatusCode::OK);
    assert_eq!(live.text(), "live\n");
    let ready = admin(proxy.admin, Method::GET, "/ready", "").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.text(), "ready\n");
    let missing = admin(proxy.admin, Method::GET, "/nope", "").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let wrong_method = admin(proxy.admin, Method::POST, "/ready", "").await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn metrics_count_requests_by_direction_and_target() {
    let app = Upstream::start("app").await;
    let other = Upstream::start("other").await;
    let proxy = proxy().inbound_app(app.addr).start().await;

    let mut inbound = H1Client::connect(proxy.inbound).await;
    for _ in 0..3 {
        assert_eq!(inbound.get("/").await.status, StatusCode::OK);
    }
    assert_eq!(
        inbound.get("/status/503").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let mut outbound = H1Client::connect(proxy.outbound).await;
    for _ in 0..2 {
        let reply = outbound.get(&format!("http://{}/", other.addr)).await;
        assert_eq!(reply.text(), "other");
    }

    let reply = get_once(proxy.admin, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        reply.header("content-type")
    );
    let m = Scrape::parse(&reply.text());
    let (app_t, other_t) = (app.addr.to_string(), other.addr.to_string());
    let inbound_app = [("direction", "inbound"), ("target", &app_t[..])];
    let outbound_other = [("direction", "outbound"), ("target", &other_t[..])];
    assert_eq!(
        m.get("weft_requests_total", &inbound_app),
        Some(4.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.get("weft_requests_total", &outbound_other),
        Some(2.0),
        "{}",
        m.text
    );
    assert_eq!(m.sum("weft_requests_total", &[]), 6.0, "{}", m.text);
    let class = |labels: &[(&str, &str)], class| {
        let mut labels = labels.to_vec();
        labels.push(("status_class", class));
        m.value("weft_responses_total", &labels)
    };
    assert_eq!(class(&inbound_app, "2xx"), 3.0);
    assert_eq!(class(&inbound_app, "5xx"), 1.0);
    assert_eq!(class(&outbound_other, "2xx"), 2.0);
    assert_eq!(
        m.value("weft_response_latency_seconds_count", &inbound_app),
        4.0
    );
    // The forward proxy's connections are counted under one label, not per request target.
    assert_eq!(
        m.value(
            "weft_tcp_connections_open",
            &[("direction", "outbound"), ("target", "forward-proxy")]
        ),
        1.0
    );
    assert_eq!(m.value("weft_tcp_connections_open", &inbound_app), 1.0);
}

#[tokio::test]
async fn config_shows_bootstrap_and_the_current_snapshot() {
    let app = Upstream::start("app").await;
    let bind = free_addr();
    let proxy = proxy()
        .inbound_app(app.addr)
        .config(format!(
            "detectTimeout: 250ms\nskipDetectPorts: [3306]\nlisteners:\n  - {{name: web, bind: \"{bind}\", target: \"{}\"}}\n",
            app.addr
        ))
        .start()
        .await;
    let reply = admin(proxy.admin, Method::GET, "/config", "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();

    let bootstrap = &json["bootstrap"];
    assert_eq!(bootstrap["mode"], "local");
    assert_eq!(bootstrap["inboundApp"], app.addr.to_string());
    assert_eq!(bootstrap["shutdownGrace"], "5s");
    assert_eq!(
        bootstrap["config"],
        proxy.config_file().path.to_str().unwrap()
    );

    let config = &json["config"];
    assert_eq!(config["detectTimeout"], "250ms");
    assert_eq!(config["skipDetectPorts"], serde_json::json!([3306]));
    assert_eq!(config["maxHeaderBytes"], 65536);
    let listener = &config["listeners"][0];
    assert_eq!(listener["name"], "web");
    assert_eq!(listener["bind"], bind.to_string());
    assert_eq!(listener["target"], app.addr.to_string());
    assert_eq!(listener["protocol"], "auto");
}

#[tokio::test]
async fn log_level_reads_and_replaces_the_filter() {
    let proxy = proxy().log("info").start().await;
    let level = |proxy: &TestProxy| {
        let addr = proxy.admin;
        async move { admin(addr, Method::GET, "/log-level", "").await.text() }
    };
    assert_eq!(level(&proxy).await, "info\n");

    let set = admin(
        proxy.admin,
        Method::PUT,
        "/log-level",
        "warn,weft_proxy=debug\n",
    )
    .await;
    assert_eq!(set.status, StatusCode::OK);
    assert_eq!(level(&proxy).await, "warn,weft_proxy=debug\n");

    let invalid = admin(proxy.admin, Method::PUT, "/log-level", "weft_proxy=loud").await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    assert!(
        invalid.text().contains("weft_proxy=loud"),
        "{}",
        invalid.text()
    );
    assert_eq!(
        level(&proxy).await,
        "warn,weft_proxy=debug\n",
        "a refused filter must not replace the current one"
    );

    let not_utf8 = call(
        proxy.admin,
        request(Method::PUT, "/log-level", full(&b"\xff\xfe"[..])),
    )
    .await;
    assert_eq!(not_utf8.status, StatusCode::BAD_REQUEST);
    let too_big = admin(proxy.admin, Method::PUT, "/log-level", &"x".repeat(5000)).await;
    assert_eq!(too_big.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        admin(proxy.admin, Method::DELETE, "/log-level", "")
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn shutdown_wants_post_and_then_drains() {
    let proxy = proxy().grace(Duration::from_secs(5)).start().await;
    let (admin_addr, outbound) = (proxy.admin, proxy.outbound);

    let get = admin(admin_addr, Method::GET, "/shutdown", "").await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    // A GET changed nothing.
    assert_eq!(
        admin(admin_addr, Method::GET, "/ready", "").await.status,
        StatusCode::OK
    );
    assert!(!refuses(outbound).await);

    let running = tokio::spawn(proxy.proxy.run_until_shutdown());
    let post = admin(admin_addr, Method::POST, "/shutdown", "").await;
    assert_eq!(post.status, StatusCode::ACCEPTED);
    let drained = within(WAIT, "the drain after POST /shutdown", running)
        .await
        .unwrap()
        .expect("run_until_shutdown");
    assert_eq!(drained, Drained::Graceful);
    assert!(refuses(outbound).await);
    assert_eq!(
        admin(admin_addr, Method::GET, "/ready", "").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[test]
fn the_metrics_parser_reads_the_exposition_format() {
    let s = Scrape::parse(
        "# HELP weft_requests HTTP requests received.\n\
         # TYPE weft_requests counter\n\
         weft_requests_total{direction=\"inbound\",target=\"127.0.0.1:80\"} 3\n\
         weft_odd_total{target=\"a\\\"b,c}\",x=\"\"} 1.5 1700000000\n\
         weft_plain 7\n\
         # EOF\n",
    );
    assert_eq!(
        s.get(
            "weft_requests_total",
            &[("direction", "inbound"), ("target", "127.0.0.1:80")]
        ),
        Some(3.0)
    );
    assert_eq!(
        s.get("weft_odd_total", &[("target", "a\"b,c}"), ("x", "")]),
        Some(1.5)
    );
    assert_eq!(s.get("weft_plain", &[]), Some(7.0));
    // Labels a caller doesn't name don't split the series it asks about.
    assert_eq!(
        s.get("weft_requests_total", &[("direction", "inbound")]),
        Some(3.0)
    );
    assert_eq!(
        s.get("weft_requests_total", &[("direction", "outbound")]),
        None
    );
    assert_eq!(
        s.sum("weft_requests_total", &[("direction", "inbound")]),
        3.0
    );
    assert_eq!(s.value("weft_requests_total", &[("direction", "x")]), 0.0);
}
