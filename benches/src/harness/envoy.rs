//! Running Envoy for a scenario, configured to be comparable with weft-proxy.
//!
//! One static listener with the HTTP connection manager and the router, one static cluster
//! with the single upstream. Deliberately: HTTP/1.1 on both sides (`codec_type: HTTP1`, the
//! cluster's default protocol) with Envoy's default keep-alive connection pool upstream;
//! `--concurrency 1` (one worker thread, as weft-proxy runs `--workers 1`); no access log and
//! no stats sink (stats are still kept in memory, as weft-proxy keeps its metrics);
//! `generate_request_id: false`, because weft-proxy does not add `x-request-id` either and
//! generating a UUID per request is work the comparison should not charge Envoy for;
//! `--disable-hot-restart` so two Envoys on one machine share no memory segment.
//!
//! In the mTLS chains ([`HopTls`]) the client side's cluster gets an
//! `envoy.transport_sockets.tls` `UpstreamTlsContext` (its certificate and key, the root as
//! `trusted_ca`, the server side's SPIFFE ID as the required URI SAN, TLS 1.3 only) and speaks
//! HTTP/2 to the server side (explicit `http2_protocol_options`, ALPN `h2`), as weft-proxy
//! carries HTTP/1.1 across the mesh hop as HTTP/2. The server side's listener gets a
//! `DownstreamTlsContext` requiring a client certificate with the client side's SPIFFE ID,
//! `codec_type: AUTO`, and forwards HTTP/1.1 to the upstream. Session resumption is off on
//! both sides, as in weft-proxy.
//!
//! The transport-floor scenarios ([`Forwarding::Tcp`]) replace the HTTP connection manager
//! with `envoy.filters.network.tcp_proxy` to the same cluster: opaque bytes both ways.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::pki::{HopTls, Side};
use super::ports::free_ports;
use super::process::{http_status, tcp_open, Managed, Placement, ProcessError};
use super::{Forwarding, Hop};

/// `common_tls_context` of either side, indented by `pad`: own certificate, the root, the
/// peer's SPIFFE ID as the only acceptable URI SAN, TLS 1.3 (both bounds: Envoy's default
/// upstream maximum is 1.2, so a minimum alone leaves no version), ALPN h2.
fn common_tls_context(pad: &str, tls: &HopTls) -> String {
    let cert = tls.own.cert.display();
    let key = tls.own.key.display();
    let root = tls.root.display();
    let peer = tls.peer_id;
    format!(
        "{pad}common_tls_context:\n\
         {pad}  tls_params: {{ tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3 }}\n\
         {pad}  alpn_protocols: [\"h2\"]\n\
         {pad}  tls_certificates:\n\
         {pad}  - certificate_chain: {{ filename: \"{cert}\" }}\n\
         {pad}    private_key: {{ filename: \"{key}\" }}\n\
         {pad}  validation_context:\n\
         {pad}    trusted_ca: {{ filename: \"{root}\" }}\n\
         {pad}    match_typed_subject_alt_names:\n\
         {pad}    - san_type: URI\n\
         {pad}      matcher: {{ exact: \"{peer}\" }}\n"
    )
}

/// The bootstrap for one hop (accept on `hop.listen`, everything to `hop.target`, admin on
/// `admin`), optionally one side of an mTLS hop.
pub fn bootstrap_yaml(hop: &Hop, admin: SocketAddr) -> String {
    let Hop {
        listen,
        target,
        tls,
        forwarding,
        ..
    } = *hop;
    let tls = tls.as_ref();
    let (lip, lport) = (listen.ip(), listen.port());
    let (tip, tport) = (target.ip(), target.port());
    let (aip, aport) = (admin.ip(), admin.port());
    let server = tls.filter(|t| t.side == Side::Server);
    let client = tls.filter(|t| t.side == Side::Client);
    let codec = if server.is_some() { "AUTO" } else { "HTTP1" };
    // Server side: the filter chain terminates mTLS (a key of the `filter_chains` item).
    let downstream_tls = server.map_or(String::new(), |t| {
        format!(
            "      transport_socket:\n\
             \x20       name: envoy.transport_sockets.tls\n\
             \x20       typed_config:\n\
             \x20         \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n\
             \x20         require_client_certificate: true\n\
             \x20         disable_stateless_session_resumption: true\n\
             {}",
            common_tls_context("          ", t)
        )
    });
    // Client side: the cluster originates mTLS and speaks HTTP/2 over it.
    let upstream_tls = client.map_or(String::new(), |t| {
        format!(
            "    typed_extension_protocol_options:\n\
             \x20     envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n\
             \x20       \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n\
             \x20       explicit_http_config:\n\
             \x20         http2_protocol_options: {{}}\n\
             \x20   transport_socket:\n\
             \x20     name: envoy.transport_sockets.tls\n\
             \x20     typed_config:\n\
             \x20       \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n\
             \x20       max_session_keys: 0\n\
             {}",
            common_tls_context("        ", t)
        )
    });
    let filter = match forwarding {
        Forwarding::Http => http_filter(codec),
        Forwarding::Tcp => TCP_FILTER.to_string(),
    };
    format!(
        r#"# Generated by weft-bench: static listener -> {forwarding:?} -> static cluster.
admin:
  address:
    socket_address: {{ address: {aip}, port_value: {aport} }}
static_resources:
  listeners:
  - name: bench
    address:
      socket_address: {{ address: {lip}, port_value: {lport} }}
    filter_chains:
    - filters:
{filter}{downstream_tls}  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
{upstream_tls}    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {tip}, port_value: {tport} }}
"#
    )
}

/// Opaque TCP to the cluster.
const TCP_FILTER: &str = r#"      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: bench
          cluster: upstream
"#;

/// HTTP connection manager and router, every request to the cluster.
fn http_filter(codec: &str) -> String {
    format!(
        r#"      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: {codec}
          generate_request_id: false
          route_config:
            name: bench
            virtual_hosts:
            - name: bench
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

/// Starts one Envoy hop and waits until its admin `/ready` answers 200; `hop.tls` makes it
/// one side of an mTLS hop.
pub fn start(bin: &Path, hop: &Hop, dir: &Path, place: Placement) -> Result<Managed, ProcessError> {
    let (name, listen) = (hop.name, hop.listen);
    let io_err = |source| ProcessError::Spawn {
        name: name.into(),
        program: bin.display().to_string(),
        source,
    };
    let admin = free_ports(1).map_err(io_err)?[0];
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(&config, bootstrap_yaml(hop, admin)).map_err(io_err)?;
    let args: Vec<String> = vec![
        "-c".into(),
        config.display().to_string(),
        "--concurrency".into(),
        "1".into(),
        "--disable-hot-restart".into(),
        "--log-level".into(),
        "error".into(),
    ];
    let mut proxy = Managed::spawn(name, bin, &args, &[], place, dir)?;
    proxy.wait_ready(
        Duration::from_secs(60),
        &format!("GET http://{admin}/ready → 200 and {listen} accepting"),
        || http_status(admin, "/ready") == Some(200) && tcp_open(listen),
    )?;
    Ok(proxy)
}
