//! Config reload: a changed file takes effect for new connections (listeners retargeted,
//! added, removed; settings changed) while in-flight requests finish where they started; an
//! invalid file is refused and the last good config stays in force.

mod support;

use std::net::SocketAddr;

use http::{Method, StatusCode};
use support::*;

fn listeners(entries: &[(&str, SocketAddr, SocketAddr)]) -> String {
    let mut yaml = String::from("listeners:\n");
    for (name, bind, target) in entries {
        yaml.push_str(&format!(
            "  - {{name: {name}, bind: \"{bind}\", target: \"{target}\", protocol: http1}}\n"
        ));
    }
    yaml
}

/// Which upstream answers on `addr` (its name), or None if nothing accepts there.
async fn who_answers(addr: SocketAddr) -> Option<String> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    drop(stream);
    Some(get_once(addr, "/").await.text())
}

async fn reloads(proxy: &TestProxy, result: &str) -> f64 {
    proxy
        .metrics()
        .await
        .value("weft_config_reloads_total", &[("result", result)])
}

async fn current_config(proxy: &TestProxy) -> serde_json::Value {
    let reply = admin(proxy.admin, Method::GET, "/config", "").await;
    assert_eq!(reply.status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_slice(&reply.body).expect("GET /config is JSON");
    json["config"].clone()
}

fn listener_names(config: &serde_json::Value) -> Vec<String> {
    config["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn listeners_are_retargeted_added_and_removed_while_requests_in_flight_finish() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let (svc, old, new) = (free_addr(), free_addr(), free_addr());
    let proxy = proxy()
        .config(listeners(&[("svc", svc, a.addr), ("old", old, a.addr)]))
        .start()
        .await;
    assert_eq!(who_answers(svc).await.as_deref(), Some("a"));
    assert_eq!(who_answers(old).await.as_deref(), Some("a"));
    assert!(refuses(new).await);

    // A slow request on `svc`, held at upstream A until the reload has been observed.
    let mut in_flight = H1Client::connect(svc).await;
    let slow = tokio::spawn(async move { in_flight.get("/gate").await });
    a.wait_for_path("/gate").await;

    proxy
        .config_file()
        .write(&listeners(&[("svc", svc, b.addr), ("new", new, b.addr)]));

    eventually(WAIT, "svc to be retargeted to b", || async {
        who_answers(svc).await.as_deref() == Some("b")
    })
    .await;
    eventually(WAIT, "the new listener to serve b", || async {
        who_answers(new).await.as_deref() == Some("b")
    })
    .await;
    eventually(WAIT, "the removed listener to stop accepting", || {
        refuses(old)
    })
    .await;
    assert_eq!(reloads(&proxy, "ok").await, 1.0);

    // The request that started before the change finishes, on the upstream it started with.
    a.open_gate();
    let reply = within(WAIT, "the in-flight request", slow).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "a");

    // Metrics follow the listener names.
    let m = proxy.metrics().await;
    assert!(
        m.value(
            "weft_requests_total",
            &[("direction", "outbound"), ("target", "new")]
        ) >= 1.0
    );
}

#[tokio::test]
async fn an_invalid_file_keeps_the_last_good_config() {
    let app = Upstream::start("app").await;
    let web = free_addr();
    let proxy = proxy()
        .inbound_app(app.addr)
        .config(listeners(&[("web", web, app.addr)]))
        .start()
        .await;
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20_000)
    );
    let status_of_big = || async {
        let response = raw_exchange(proxy.inbound, big_header.as_bytes()).await;
        String::from_utf8_lossy(&response)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    };
    assert!(status_of_big().await.starts_with("HTTP/1.1 200"));

    // A valid change first, so the last good config is a reloaded one: settings apply to
    // new connections (a 20 KB header is now too large), and listeners are renamed.
    let good = format!(
        "maxHeaderBytes: 16384\n{}",
        listeners(&[("web2", web, app.addr)])
    );
    proxy.config_file().write(&good);
    eventually(WAIT, "the valid reload", || async {
        reloads(&proxy, "ok").await == 1.0
    })
    .await;
    assert!(status_of_big().await.starts_with("HTTP/1.1 431"));
    let config = current_config(&proxy).await;
    assert_eq!(listener_names(&config), ["web2"]);
    assert_eq!(config["maxHeaderBytes"], 16384);

    let mut errors = reloads(&proxy, "error").await;
    assert_eq!(errors, 0.0);
    for (what, bad) in [
        ("bad YAML", format!("{good}\nlisteners: [[[\n")),
        (
            "an unknown field",
            format!("maxHeaderBytes: 8192\ndetectTimout: 1s\n{}", listeners(&[])),
        ),
        (
            "an invalid value",
            format!("connectTimeout: 0s\n{}", listeners(&[])),
        ),
    ] {
        proxy.config_file().write(&bad);
        eventually(WAIT, &format!("{what} to be refused"), || async {
            reloads(&proxy, "error").await > errors
        })
        .await;
        errors = reloads(&proxy, "error").await;

        // Still the last good config, in every respect.
        let config = current_config(&proxy).await;
        assert_eq!(listener_names(&config), ["web2"], "after {what}");
        assert_eq!(config["maxHeaderBytes"], 16384, "after {what}");
        assert_eq!(
            who_answers(web).await.as_deref(),
            Some("app"),
            "after {what}"
        );
        assert!(
            status_of_big().await.starts_with("HTTP/1.1 431"),
            "after {what}"
        );
        assert_eq!(reloads(&proxy, "ok").await, 1.0, "after {what}");
    }
    let m = proxy.metrics().await;
    assert_eq!(
        m.value(
            "weft_requests_total",
            &[("direction", "outbound"), ("target", "web2")]
        ),
        3.0
    );
}
