//! `weftctl authz explain`: would this request be allowed, and which policy decides?
//!
//! The inbound view the control plane sends the target pod's proxy is fetched from its admin
//! server (`/debug/inbound`, as protobuf) and applied the way the proxy applies it
//! ([`weft_proxy::discovery::ViewStore::apply`]: the same compilation, the same mTLS mode
//! per port); the path is normalized as the proxy normalizes it; and the decision is
//! [`weft_api::authz::WorkloadPolicy::evaluate`]'s — the function the proxy calls on every
//! request. Each policy is then evaluated on its own, to show which ones match.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{bail, Context};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use weft_api::authz::{
    Action, DecidedBy, DefaultPolicy, HttpRequest, Policy, RecordKind, Request, WorkloadPolicy,
};
use weft_api::proto::discovery::v1 as pb;
use weft_api::SpiffeId;
use weft_proxy::config::MtlsMode;
use weft_proxy::discovery::ViewStore;

/// Exit code when the request would be denied (0: allowed, 1: could not explain, 2: bad
/// arguments).
pub const DENIED: u8 = 3;

#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// Who calls: a SPIFFE ID (`spiffe://cluster.local/ns/shop/sa/web`), or `plaintext` for
    /// a caller without a mesh identity.
    #[arg(long, value_name = "SPIFFE_ID|plaintext")]
    caller: Caller,
    /// The target pod's namespace.
    #[arg(short = 'n', long)]
    namespace: String,
    /// The target pod.
    #[arg(long)]
    pod: String,
    /// The pod's port the request arrives on.
    #[arg(long)]
    port: u16,
    /// The HTTP method. Without --method, --path and --header the request is explained as
    /// an opaque TCP connection.
    #[arg(long)]
    method: Option<String>,
    /// The HTTP path (a query is ignored); normalized as the proxy does.
    #[arg(long)]
    path: Option<String>,
    /// A request header, `name=value`; repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    headers: Vec<HeaderArg>,
    /// The control plane's admin address.
    #[arg(
        long,
        default_value = "127.0.0.1:15014",
        env = "WEFT_CONTROL_PLANE_ADMIN"
    )]
    control_plane_admin: SocketAddr,
}

#[derive(Clone, Debug)]
enum Caller {
    Plaintext,
    Mesh(SpiffeId),
}

impl FromStr for Caller {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "plaintext" {
            return Ok(Caller::Plaintext);
        }
        s.parse()
            .map(Caller::Mesh)
            .map_err(|e| format!("{e} (or `plaintext` for a caller without a mesh identity)"))
    }
}

#[derive(Clone, Debug)]
struct HeaderArg(HeaderName, HeaderValue);

impl FromStr for HeaderArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, value) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|e| format!("{name:?}: not a header name: {e}"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|e| format!("{value:?}: not a header value: {e}"))?;
        Ok(HeaderArg(name, value))
    }
}

/// The pod's inbound view as the control plane sends it.
struct Fetched {
    inbound: pb::Inbound,
    /// The control plane knows the pod (otherwise the view is its namespace's fallback).
    known: bool,
    identity: Option<String>,
}

async fn fetch(admin: SocketAddr, namespace: &str, pod: &str) -> anyhow::Result<Fetched> {
    let path = format!(
        "/debug/inbound?namespace={}&pod={}",
        encode(namespace),
        encode(pod)
    );
    let stream = tokio::net::TcpStream::connect(admin)
        .await
        .with_context(|| format!("cannot connect to the control plane's admin server {admin}"))?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(&path)
        .header(http::header::HOST, admin.to_string())
        .header(http::header::ACCEPT, "application/x-protobuf")
        .body(Empty::<bytes::Bytes>::new())?;
    let answer = async {
        let rsp = tx.send_request(req).await?;
        let (head, body) = rsp.into_parts();
        Ok::<_, anyhow::Error>((head, body.collect().await?.to_bytes()))
    };
    let (head, body) = tokio::time::timeout(crate::DEFAULT_ADMIN_TIMEOUT, answer)
        .await
        .with_context(|| {
            format!(
                "{admin} did not answer within {:?}",
                crate::DEFAULT_ADMIN_TIMEOUT
            )
        })??;
    if !head.status.is_success() {
        bail!(
            "GET {path} from {admin}: {}: {}",
            head.status,
            String::from_utf8_lossy(&body).trim()
        );
    }
    let header = |name: &str| head.headers.get(name).and_then(|v| v.to_str().ok());
    let known = header("weft-pod-known") == Some("true");
    let identity = header("weft-pod-identity").map(str::to_owned);
    let inbound = prost::Message::decode(body)
        .with_context(|| format!("{admin}{path}: not an Inbound view (an older control plane?)"))?;
    Ok(Fetched {
        inbound,
        known,
        identity,
    })
}

/// Percent-encodes a query value (Kubernetes names need none, but a typo might).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn action(policy: &Policy) -> &'static str {
    match (policy.action, policy.dry_run) {
        (Action::Allow, false) => "ALLOW",
        (Action::Deny, false) => "DENY",
        (Action::Audit, false) => "AUDIT",
        (Action::Allow, true) => "ALLOW (dry-run)",
        (Action::Deny, true) => "DENY (dry-run)",
        (Action::Audit, true) => "AUDIT (dry-run)",
    }
}

fn default_name(default: DefaultPolicy) -> &'static str {
    match default {
        DefaultPolicy::Allow => "allow",
        DefaultPolicy::Authenticated => "authenticated (mesh callers only)",
        DefaultPolicy::Deny => "deny",
    }
}

/// Whether `policy` alone matches `request`, by the evaluator itself: the policy, enforced,
/// as the only one of a workload whose default is the opposite of what it does.
fn matches(policy: &Policy, request: &Request<'_>) -> bool {
    let mut alone = policy.clone();
    alone.dry_run = false;
    let default = match policy.action {
        Action::Allow => DefaultPolicy::Deny,
        Action::Deny | Action::Audit => DefaultPolicy::Allow,
    };
    let workload = WorkloadPolicy {
        default,
        policies: vec![alone],
    };
    let decision = workload.evaluate(request);
    match policy.action {
        Action::Allow => decision.allowed,
        Action::Deny => !decision.allowed,
        Action::Audit => !decision.recorded.is_empty(),
    }
}

pub async fn run(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let fetched = fetch(args.control_plane_admin, &args.namespace, &args.pod).await?;
    let workload = format!("{}/{}", args.namespace, args.pod);
    // Applied as the proxy applies an update: a view it would reject is reported as such.
    let store = ViewStore::new();
    let view = store
        .apply(pb::ViewUpdate {
            version: "explain".into(),
            inbound: Some(fetched.inbound),
            outbound: Some(pb::Outbound::default()),
            ..Default::default()
        })
        .with_context(|| {
            format!(
                "{workload}'s proxy would reject this view (and keep enforcing its previous one)"
            )
        })?;

    match &fetched.identity {
        Some(id) => println!("target    {workload} ({id}), port {}", args.port),
        None => println!("target    {workload}, port {}", args.port),
    }
    if !fetched.known {
        println!(
            "          the control plane does not know this pod: showing what any pod of \
             {} gets (the policies without a selector)",
            args.namespace
        );
    }
    let caller = match &args.caller {
        Caller::Plaintext => {
            println!("caller    plaintext (no mesh identity)");
            None
        }
        Caller::Mesh(id) => {
            println!("caller    {id} (mTLS)");
            Some(id)
        }
    };

    let is_http = args.method.is_some() || args.path.is_some() || !args.headers.is_empty();
    let method = args.method.clone().unwrap_or_else(|| "GET".into());
    let raw_path = args.path.clone().unwrap_or_else(|| "/".into());
    let path = weft_proxy::authz::path::normalize(&raw_path).into_owned();
    let mut headers = HeaderMap::new();
    for HeaderArg(name, value) in &args.headers {
        headers.append(name.clone(), value.clone());
    }
    if is_http {
        println!("request   {method} {raw_path}");
        if path != raw_path {
            println!("          the proxy normalizes the path to {path} and decides on that");
        }
        for (name, value) in &headers {
            println!(
                "          {name}: {}",
                value.to_str().unwrap_or("(not text)")
            );
        }
    } else {
        println!("request   an opaque TCP connection (give --method/--path for HTTP)");
    }

    let mtls = view.mtls_mode(args.port);
    if caller.is_none() {
        match mtls {
            Some(MtlsMode::Strict) => {
                println!(
                    "decision  DENY: port {} is STRICT mTLS, so the proxy refuses plaintext \
                     connections before any policy is evaluated",
                    args.port
                );
                return Ok(ExitCode::from(DENIED));
            }
            Some(MtlsMode::Permissive) => {}
            None => println!(
                "          the view sets no mTLS mode for port {}: the proxy's config file \
                 decides (PERMISSIVE unless it says STRICT)",
                args.port
            ),
        }
    }

    let request = Request {
        caller,
        port: args.port,
        http: is_http.then_some(HttpRequest {
            method: &method,
            path: &path,
            headers: &headers,
        }),
    };
    let decision = view.authz.evaluate(&request);
    let verdict = if decision.allowed { "ALLOW" } else { "DENY" };
    match &decision.decided_by {
        DecidedBy::Policy(policy) => {
            let by = view.authz.policies.iter().find(|p| p.id == *policy);
            let how = match (decision.allowed, by.map(|p| p.action)) {
                (false, Some(Action::Allow)) => {
                    " (ALLOW policies select this workload and none of them matches; the first is named)"
                }
                (true, _) => " (an ALLOW policy that matches)",
                _ => " (a DENY policy that matches)",
            };
            println!("decision  {verdict}, decided by policy {policy}{how}");
        }
        DecidedBy::Default(default) => println!(
            "decision  {verdict}, decided by the workload's default: {}",
            default_name(*default)
        ),
    }
    for recorded in &decision.recorded {
        match recorded.kind {
            RecordKind::Audit => println!(
                "recorded  audit: {} (an AUDIT policy matched; logged and counted, not enforced)",
                recorded.policy
            ),
            RecordKind::DryRunDeny => println!(
                "recorded  dry-run deny: {} would deny this request once enforced",
                recorded.policy
            ),
        }
    }

    let policies = &view.authz.policies;
    println!(
        "policies  {} select{} this workload; default: {}",
        policies.len(),
        if policies.len() == 1 { "s" } else { "" },
        default_name(view.authz.default)
    );
    let width = policies
        .iter()
        .map(|p| p.id.to_string().len())
        .max()
        .unwrap_or(0);
    for policy in policies {
        let deciding = matches!(&decision.decided_by, DecidedBy::Policy(p) if *p == policy.id);
        println!(
            "          {:<15}  {:<width$}  {}{}",
            action(policy),
            policy.id.to_string(),
            if matches(policy, &request) {
                "matches"
            } else {
                "does not match"
            },
            if deciding { "  ← decides" } else { "" },
        );
    }
    Ok(if decision.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(DENIED)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse() {
        assert!(matches!(
            "plaintext".parse::<Caller>(),
            Ok(Caller::Plaintext)
        ));
        assert!(matches!(
            "spiffe://cluster.local/ns/shop/sa/web".parse::<Caller>(),
            Ok(Caller::Mesh(_))
        ));
        assert!("web".parse::<Caller>().is_err());
        let HeaderArg(name, value) = "X-User=alice=1".parse().unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("x-user", "alice=1")
        );
        assert!("novalue".parse::<HeaderArg>().is_err());
        assert_eq!(encode("shop/x y"), "shop%2Fx%20y");
    }
}
