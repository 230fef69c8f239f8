//! Bootstrap flags: which source they choose, and every conflicting or incomplete set.

use std::path::PathBuf;

use clap::Parser;

use super::*;
use crate::bootstrap::Cli;
use crate::identity::{ControlPlaneSource, FileSource, IdentityError, Mode};

fn parse(flags: &[&str]) -> Result<Mode, IdentityError> {
    let cli = Cli::try_parse_from(std::iter::once("weft-proxy").chain(flags.iter().copied()))
        .unwrap_or_else(|e| panic!("{flags:?}: {e}"));
    Mode::from_args(&cli.run.identity)
}

fn error(flags: &[&str]) -> String {
    match parse(flags) {
        Err(IdentityError::Config(message)) => message,
        other => panic!("{flags:?}: expected a config error, got {other:?}"),
    }
}

#[test]
fn no_flags_means_no_mtls() {
    assert_eq!(parse(&[]).unwrap(), Mode::Disabled);
    // What the injector always sets does not turn mTLS on by itself.
    assert_eq!(
        parse(&["--namespace", "shop", "--service-account", "web"]).unwrap(),
        Mode::Disabled
    );
}

#[test]
fn control_plane_mode() {
    let mode = parse(&[
        "--control-plane-addr",
        "weft-control-plane.weft-system.svc:15012",
        "--namespace",
        "shop",
        "--service-account",
        "web",
        "--trust-anchors",
        "/etc/weft/roots.pem",
    ])
    .unwrap();
    assert_eq!(
        mode,
        Mode::ControlPlane(ControlPlaneSource {
            addr: "weft-control-plane.weft-system.svc:15012".into(),
            identity: id("web"),
            control_plane: "spiffe://cluster.local/ns/weft-system/sa/weft-control-plane"
                .parse()
                .unwrap(),
            token_file: PathBuf::from("/var/run/secrets/weft.dev/identity/token"),
            trust_anchors: PathBuf::from("/etc/weft/roots.pem"),
        })
    );

    // An explicit identity brings its trust domain, which names the default control plane.
    let Mode::ControlPlane(source) = parse(&[
        "--control-plane-addr",
        "127.0.0.1:15012",
        "--identity",
        "spiffe://example.org/ns/shop/sa/web",
        "--trust-anchors",
        "roots.pem",
        "--identity-token-file",
        "token",
    ])
    .unwrap() else {
        panic!("not control-plane mode")
    };
    assert_eq!(
        source.identity.as_str(),
        "spiffe://example.org/ns/shop/sa/web"
    );
    assert_eq!(
        source.control_plane.as_str(),
        "spiffe://example.org/ns/weft-system/sa/weft-control-plane"
    );
    assert_eq!(source.token_file, PathBuf::from("token"));

    let Mode::ControlPlane(source) = parse(&[
        "--control-plane-addr",
        "[::1]:15012",
        "--trust-domain",
        "mesh.example",
        "--namespace",
        "shop",
        "--service-account",
        "web",
        "--trust-anchors",
        "roots.pem",
        "--control-plane-identity",
        "spiffe://mesh.example/ns/infra/sa/ca",
    ])
    .unwrap() else {
        panic!("not control-plane mode")
    };
    assert_eq!(
        source.identity.as_str(),
        "spiffe://mesh.example/ns/shop/sa/web"
    );
    assert_eq!(
        source.control_plane.as_str(),
        "spiffe://mesh.example/ns/infra/sa/ca"
    );
}

#[test]
fn files_mode() {
    let files = [
        "--identity-cert",
        "c.pem",
        "--identity-key",
        "k.pem",
        "--identity-trust-bundle",
        "b.pem",
    ];
    assert_eq!(
        parse(&files).unwrap(),
        Mode::Files(FileSource {
            cert: "c.pem".into(),
            key: "k.pem".into(),
            bundle: "b.pem".into(),
            expected: None,
        })
    );
    let with_account: Vec<&str> = files
        .iter()
        .copied()
        .chain(["--namespace", "shop", "--service-account", "web"])
        .collect();
    let Mode::Files(source) = parse(&with_account).unwrap() else {
        panic!()
    };
    assert_eq!(source.expected, Some(id("web")));
}

#[test]
fn conflicting_or_incomplete_flags_are_startup_errors() {
    let cp = ["--control-plane-addr", "127.0.0.1:15012"];
    let account = ["--namespace", "shop", "--service-account", "web"];
    let anchors = ["--trust-anchors", "roots.pem"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [&cp[..], &account, &anchors, &["--identity-cert", "c.pem"]].concat(),
            "choose different certificate sources",
        ),
        (
            [&cp[..], &anchors].concat(),
            "needs this workload's identity",
        ),
        ([&cp[..], &account].concat(), "needs --trust-anchors"),
        (
            [&cp[..], &anchors, &["--namespace", "shop"]].concat(),
            "--namespace needs --service-account",
        ),
        (
            [&cp[..], &anchors, &["--service-account", "web"]].concat(),
            "--service-account needs --namespace",
        ),
        (
            [
                &cp[..],
                &anchors,
                &account,
                &["--identity", "spiffe://cluster.local/ns/shop/sa/admin"],
            ]
            .concat(),
            "contradicts",
        ),
        (
            [
                &cp[..],
                &anchors,
                &[
                    "--identity",
                    "spiffe://a.org/ns/shop/sa/web",
                    "--trust-domain",
                    "b.org",
                ],
            ]
            .concat(),
            "is not in --trust-domain",
        ),
        (
            [
                &cp[..],
                &anchors,
                &account,
                &["--trust-domain", "Bad Domain"],
            ]
            .concat(),
            "--trust-domain",
        ),
        (
            [&cp[..], &anchors, &account, &["--trust-domain", "a.org/x"]].concat(),
            "not a path",
        ),
        (
            [&anchors[..], &account, &["--control-plane-addr", "no-port"]].concat(),
            "not host:port",
        ),
        (
            vec!["--identity-cert", "c.pem"],
            "missing --identity-key, --identity-trust-bundle",
        ),
        (
            vec![
                "--identity-key",
                "k.pem",
                "--identity-trust-bundle",
                "b.pem",
            ],
            "missing --identity-cert",
        ),
        (
            vec![
                "--identity-cert",
                "c",
                "--identity-key",
                "k",
                "--identity-trust-bundle",
                "b",
                "--trust-anchors",
                "r",
            ],
            "--trust-anchors is only used with --control-plane-addr",
        ),
        (
            anchors.to_vec(),
            "--trust-anchors is only used with --control-plane-addr",
        ),
        (
            vec![
                "--control-plane-identity",
                "spiffe://cluster.local/ns/x/sa/y",
            ],
            "--control-plane-identity is only used with --control-plane-addr",
        ),
    ];
    for (flags, expected) in cases {
        let message = error(&flags);
        assert!(
            message.contains(expected),
            "{flags:?}: {message:?} lacks {expected:?}"
        );
    }
}

#[test]
fn every_flag_has_an_environment_variable() {
    // Checked on the declaration: setting process-wide variables would race other tests.
    let command = <Cli as clap::CommandFactory>::command();
    let declared: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    for name in [
        "WEFT_TRUST_DOMAIN",
        "WEFT_IDENTITY",
        "WEFT_NAMESPACE",
        "WEFT_SERVICE_ACCOUNT",
        "WEFT_CONTROL_PLANE_ADDR",
        "WEFT_CONTROL_PLANE_IDENTITY",
        "WEFT_IDENTITY_TOKEN_FILE",
        "WEFT_TRUST_ANCHORS",
        "WEFT_IDENTITY_CERT",
        "WEFT_IDENTITY_KEY",
        "WEFT_IDENTITY_TRUST_BUNDLE",
    ] {
        assert!(declared.iter().any(|d| d == name), "{name} not declared");
    }
}
