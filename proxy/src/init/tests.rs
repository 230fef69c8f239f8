//! Tests for `weft-proxy init`: the plan as pure data, flag parsing, the idempotent restore
//! input, and (as root) the real rules in a throwaway network namespace.

use clap::{CommandFactory, Parser};

use super::*;

/// `InitArgs` is a subcommand's `Args`; tests parse it through this minimal parser.
#[derive(Debug, Parser)]
struct TestCli {
    #[command(flatten)]
    args: InitArgs,
}

fn parse(flags: &[&str]) -> Result<InitArgs, clap::Error> {
    TestCli::try_parse_from(std::iter::once("init").chain(flags.iter().copied())).map(|c| c.args)
}

fn lines(args: &InitArgs, family: Family) -> Vec<String> {
    let plan = args.plan().unwrap();
    let fp = plan.families.iter().find(|f| f.family == family).unwrap();
    fp.rules
        .iter()
        .chain(&fp.jumps)
        .map(Rule::append_line)
        .collect()
}

fn position(lines: &[String], wanted: &str) -> usize {
    lines
        .iter()
        .position(|l| l == wanted)
        .unwrap_or_else(|| panic!("no `{wanted}` in {lines:#?}"))
}

#[test]
fn default_plan() {
    let plan = InitArgs::default().plan().unwrap();
    assert_eq!(plan.families.len(), 1, "IPv6 only with --ipv6");
    assert_eq!(
        plan.families[0].restore_input(Action::Install, ""),
        "*nat
:WEFT_INBOUND - [0:0]
:WEFT_IN_REDIRECT - [0:0]
:WEFT_OUTPUT - [0:0]
:WEFT_OUT_REDIRECT - [0:0]
-A WEFT_INBOUND -p tcp --dport 15020 -j RETURN
-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT
-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A WEFT_OUTPUT -m owner --uid-owner 2102 -j RETURN
-A WEFT_OUTPUT -o lo -j RETURN
-A WEFT_OUTPUT -j WEFT_OUT_REDIRECT
-A WEFT_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A PREROUTING -p tcp -j WEFT_INBOUND
-A OUTPUT -p tcp -j WEFT_OUTPUT
COMMIT
"
    );
}

#[test]
fn defaults_match_the_proxy_listeners() {
    use crate::bootstrap::{DEFAULT_ADMIN_ADDR, DEFAULT_INBOUND_ADDR, DEFAULT_OUTBOUND_ADDR};
    let port = |addr: &str| addr.parse::<std::net::SocketAddr>().unwrap().port();
    assert_eq!(port(DEFAULT_ADMIN_ADDR), ADMIN_PORT);
    assert_eq!(port(DEFAULT_INBOUND_ADDR), DEFAULT_INBOUND_PORT);
    assert_eq!(port(DEFAULT_OUTBOUND_ADDR), DEFAULT_OUTBOUND_PORT);
    let args = parse(&[]).unwrap();
    assert_eq!(args.proxy_uid, DEFAULT_PROXY_UID);
    assert_eq!(args.proxy_uid, 2102);
    assert_eq!(args.inbound_port, 15006);
    assert_eq!(args.outbound_port, 15001);
}

#[test]
fn every_flag_is_reflected() {
    let args = parse(&[
        "--proxy-uid=3000",
        "--proxy-gid=3001",
        "--inbound-port=16006",
        "--outbound-port=16001",
        "--skip-inbound-ports=9090,22",
        "--skip-outbound-ports=5432",
        "--skip-outbound-ports=6379,",
        "--skip-outbound-cidrs=10.96.0.0/12,fd00::/8",
        "--skip-outbound-cidrs=169.254.169.254",
        "--ipv6",
    ])
    .unwrap();
    assert!(!args.dry_run && !args.uninstall);
    let v4 = lines(&args, Family::V4);
    for wanted in [
        "-A WEFT_INBOUND -p tcp --dport 9090 -j RETURN",
        "-A WEFT_INBOUND -p tcp --dport 22 -j RETURN",
        "-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006",
        "-A WEFT_OUTPUT -m owner --uid-owner 3000 -j RETURN",
        "-A WEFT_OUTPUT -m owner --gid-owner 3001 -j RETURN",
        "-A WEFT_OUTPUT -p tcp --dport 5432 -j RETURN",
        "-A WEFT_OUTPUT -p tcp --dport 6379 -j RETURN",
        "-A WEFT_OUTPUT -d 10.96.0.0/12 -j RETURN",
        "-A WEFT_OUTPUT -d 169.254.169.254/32 -j RETURN",
        "-A WEFT_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 16001",
    ] {
        position(&v4, wanted);
    }
    assert!(!v4.iter().any(|l| l.contains("fd00::")), "{v4:#?}");

    let v6 = lines(&args, Family::V6);
    position(&v6, "-A WEFT_OUTPUT -d fd00::/8 -j RETURN");
    position(&v6, "-A WEFT_OUTPUT -m owner --uid-owner 3000 -j RETURN");
    position(&v6, "-A WEFT_INBOUND -p tcp --dport 9090 -j RETURN");
    assert!(!v6.iter().any(|l| l.contains("10.96.")), "{v6:#?}");
    // Everything but the address-specific CIDR rules is the same in both families.
    assert_eq!(v4.len(), v6.len() + 1);

    let flags = parse(&["--dry-run", "--uninstall"]).unwrap();
    assert!(flags.dry_run && flags.uninstall);
    assert_eq!(flags.action(), Action::Uninstall);
}

#[test]
fn every_flag_has_a_weft_init_env_var() {
    let cmd = TestCli::command();
    for arg in cmd.get_arguments().filter(|a| a.get_long().is_some()) {
        let long = arg.get_long().unwrap_or_default();
        if long == "help" {
            continue;
        }
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        let wanted = format!("WEFT_INIT_{}", long.to_uppercase().replace('-', "_"));
        assert_eq!(env.as_deref(), Some(wanted.as_str()), "--{long}");
    }
}

#[test]
fn admin_port_is_always_skipped_first_and_once() {
    for flags in [
        &[][..],
        &["--skip-inbound-ports=8080"][..],
        &["--skip-inbound-ports=8080,15020,8080"][..],
    ] {
        let args = parse(flags).unwrap();
        let settings = args.settings().unwrap();
        assert_eq!(settings.skip_inbound_ports[0], ADMIN_PORT, "{flags:?}");
        let v4 = lines(&args, Family::V4);
        let admin = "-A WEFT_INBOUND -p tcp --dport 15020 -j RETURN";
        assert_eq!(v4.iter().filter(|l| *l == admin).count(), 1, "{v4:#?}");
        assert!(position(&v4, admin) < position(&v4, "-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT"));
        if flags.len() == 1 {
            let app = "-A WEFT_INBOUND -p tcp --dport 8080 -j RETURN";
            assert_eq!(v4.iter().filter(|l| *l == app).count(), 1, "{v4:#?}");
        }
    }
}

#[test]
fn exclusions_come_before_the_redirects() {
    let args = parse(&[
        "--proxy-gid=7",
        "--skip-outbound-ports=53",
        "--skip-outbound-cidrs=10.0.0.0/8",
        "--skip-inbound-ports=9090",
    ])
    .unwrap();
    let v4 = lines(&args, Family::V4);
    let out_redirect = position(&v4, "-A WEFT_OUTPUT -j WEFT_OUT_REDIRECT");
    let uid = position(&v4, "-A WEFT_OUTPUT -m owner --uid-owner 2102 -j RETURN");
    assert_eq!(
        v4.iter().position(|l| l.starts_with("-A WEFT_OUTPUT")),
        Some(uid),
        "the proxy's own traffic is the first thing OUTPUT lets through"
    );
    for exclusion in [
        "-A WEFT_OUTPUT -m owner --gid-owner 7 -j RETURN",
        "-A WEFT_OUTPUT -o lo -j RETURN",
        "-A WEFT_OUTPUT -p tcp --dport 53 -j RETURN",
        "-A WEFT_OUTPUT -d 10.0.0.0/8 -j RETURN",
    ] {
        assert!(uid < position(&v4, exclusion) && position(&v4, exclusion) < out_redirect);
    }
    assert_eq!(
        v4.iter().rposition(|l| l.starts_with("-A WEFT_OUTPUT")),
        Some(out_redirect),
        "the redirect is OUTPUT's last word"
    );
    assert!(
        position(&v4, "-A WEFT_INBOUND -p tcp --dport 9090 -j RETURN")
            < position(&v4, "-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT")
    );
}

#[test]
fn bad_values_are_clear_errors() {
    let err = parse(&["--skip-outbound-cidrs=10.0.0.0/8,10.0.0.300/32"]).unwrap_err();
    assert!(
        err.to_string().contains("invalid CIDR `10.0.0.300/32`"),
        "{err}"
    );
    let err = parse(&["--skip-outbound-cidrs=fd00::/200"]).unwrap_err();
    assert!(err.to_string().contains("longer than 128 bits"), "{err}");
    let err = parse(&["--skip-inbound-ports=80,eighty"]).unwrap_err();
    assert!(err.to_string().contains("invalid port `eighty`"), "{err}");
    let err = parse(&["--skip-outbound-ports=70000"]).unwrap_err();
    assert!(err.to_string().contains("invalid port `70000`"), "{err}");
    assert!(parse(&["--inbound-port=0"]).is_err());
    assert!(parse(&["--outbound-port=65536"]).is_err());
    assert!(parse(&["--proxy-uid=-1"]).is_err());

    let same = parse(&["--inbound-port=15001"]).unwrap();
    assert!(matches!(same.plan(), Err(InitError::SamePort(15001))));
    let admin = parse(&["--inbound-port=15020"]).unwrap();
    let err = admin.plan().unwrap_err();
    assert!(err.to_string().contains("--inbound-port is 15020"), "{err}");
}

#[test]
fn empty_lists_mean_none() {
    let args = parse(&[
        "--skip-inbound-ports=",
        "--skip-outbound-ports=",
        "--skip-outbound-cidrs=",
    ])
    .unwrap();
    assert_eq!(args.plan().unwrap(), InitArgs::default().plan().unwrap());
}

/// `iptables-save -t nat` as it looks after one install, plus others' rules.
const INSTALLED: &str = "# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:WEFT_INBOUND - [0:0]
:WEFT_OUTPUT - [0:0]
-A PREROUTING -p tcp -j WEFT_INBOUND
-A PREROUTING -p udp -j DNAT --to-destination 10.0.0.1
-A OUTPUT -p tcp -j WEFT_OUTPUT
-A WEFT_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT
COMMIT
";

fn jump_lines(input: &str) -> Vec<&str> {
    input
        .lines()
        .filter(|l| l.contains("PREROUTING") || l.contains(" OUTPUT "))
        .collect()
}

#[test]
fn reinstall_keeps_existing_jumps() {
    let fp = &InitArgs::default().plan().unwrap().families[0];
    let input = fp.restore_input(Action::Install, INSTALLED);
    assert_eq!(jump_lines(&input), Vec::<&str>::new(), "{input}");
    assert!(
        input.contains(":WEFT_INBOUND - [0:0]\n"),
        "chains are flushed"
    );
    assert!(input.contains("-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006\n"));
}

#[test]
fn reinstall_removes_duplicate_and_stray_jumps() {
    let state = INSTALLED.replace(
        "-A OUTPUT -p tcp -j WEFT_OUTPUT\n",
        "-A OUTPUT -p tcp -j WEFT_OUTPUT\n-A OUTPUT -p tcp -j WEFT_OUTPUT\n\
         -A OUTPUT -d 10.1.0.0/16 -j WEFT_OUTPUT\n-A INPUT -g WEFT_INBOUND\n",
    );
    let fp = &InitArgs::default().plan().unwrap().families[0];
    let input = fp.restore_input(Action::Install, &state);
    assert_eq!(
        jump_lines(&input),
        [
            "-D OUTPUT -p tcp -j WEFT_OUTPUT",
            "-D OUTPUT -d 10.1.0.0/16 -j WEFT_OUTPUT",
        ],
        "{input}"
    );
    assert!(input.contains("-D INPUT -g WEFT_INBOUND\n"), "{input}");
}

#[test]
fn install_adds_only_missing_jumps() {
    let state = INSTALLED.replace("-A OUTPUT -p tcp -j WEFT_OUTPUT\n", "");
    let fp = &InitArgs::default().plan().unwrap().families[0];
    let input = fp.restore_input(Action::Install, &state);
    assert_eq!(
        jump_lines(&input),
        ["-A OUTPUT -p tcp -j WEFT_OUTPUT"],
        "{input}"
    );
}

#[test]
fn other_tables_are_ignored() {
    let state = "*mangle\n-A PREROUTING -p tcp -j WEFT_INBOUND\nCOMMIT\n";
    let fp = &InitArgs::default().plan().unwrap().families[0];
    let input = fp.restore_input(Action::Install, state);
    assert!(!input.contains("-D "), "{input}");
    assert_eq!(jump_lines(&input).len(), 2, "{input}");
}

#[test]
fn uninstall_removes_references_then_chains() {
    let fp = &InitArgs::default().plan().unwrap().families[0];
    let input = fp.restore_input(Action::Uninstall, INSTALLED);
    assert_eq!(
        input,
        "*nat
:WEFT_INBOUND - [0:0]
:WEFT_IN_REDIRECT - [0:0]
:WEFT_OUTPUT - [0:0]
:WEFT_OUT_REDIRECT - [0:0]
-D PREROUTING -p tcp -j WEFT_INBOUND
-D OUTPUT -p tcp -j WEFT_OUTPUT
-X WEFT_INBOUND
-X WEFT_IN_REDIRECT
-X WEFT_OUTPUT
-X WEFT_OUT_REDIRECT
COMMIT
"
    );
}

#[test]
fn chain_names_fit_iptables() {
    for chain in plan::CHAINS {
        assert!(chain.len() <= 28, "{chain}");
    }
}

/// Root only: applies the real rules in a private network namespace and checks that installing
/// twice leaves each rule once, that a stray duplicate jump is repaired, and that uninstall
/// removes everything.
///
/// The namespace is created with `unshare(CLONE_NEWNET)` on a dedicated thread: it belongs to
/// that thread (and the iptables processes it spawns) alone and the kernel destroys it when
/// the thread ends, however the test ends, so there is nothing to clean up.
#[test]
fn root_apply_is_idempotent_in_a_fresh_netns() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping root_apply_is_idempotent_in_a_fresh_netns: needs root");
        return;
    }
    let result = std::thread::spawn(|| {
        // SAFETY: unshare(2) changes only this thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        }
        check_idempotent_apply();
    })
    .join();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

fn save(family: Family) -> String {
    let out = apply::run(family.save_command(), &["-t", "nat"], None).unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn weft_lines(saved: &str) -> Vec<&str> {
    saved.lines().filter(|l| l.contains("WEFT_")).collect()
}

fn check_idempotent_apply() {
    let args = parse(&[
        "--skip-inbound-ports=9090",
        "--skip-outbound-ports=5432",
        "--skip-outbound-cidrs=10.96.0.0/12,fd00::/8",
        "--proxy-gid=2102",
        "--ipv6",
    ])
    .unwrap();
    let families = [Family::V4, Family::V6];

    run(args.clone()).unwrap();
    let first = families.map(save);
    run(args.clone()).unwrap();
    let second = families.map(save);
    assert_eq!(first, second, "a second install changed the tables");

    for (family, saved) in families.iter().zip(&second) {
        let weft = weft_lines(saved);
        for line in &weft {
            let copies = weft.iter().filter(|l| *l == line).count();
            assert_eq!(
                copies, 1,
                "{family}: `{line}` appears {copies} times:\n{saved}"
            );
        }
        // 4 chain declarations, the jumps, and the rules in Weft's chains.
        let plan = &args.plan().unwrap().families;
        let fp = plan.iter().find(|f| f.family == *family).unwrap();
        assert_eq!(weft.len(), 4 + fp.jumps.len() + fp.rules.len(), "{saved}");
        for wanted in [
            "-A PREROUTING -p tcp -j WEFT_INBOUND",
            "-A OUTPUT -p tcp -j WEFT_OUTPUT",
            "-A WEFT_INBOUND -p tcp -m tcp --dport 15020 -j RETURN",
            "-A WEFT_INBOUND -p tcp -m tcp --dport 9090 -j RETURN",
            "-A WEFT_OUTPUT -m owner --uid-owner 2102 -j RETURN",
            "-A WEFT_OUTPUT -m owner --gid-owner 2102 -j RETURN",
            "-A WEFT_OUTPUT -o lo -j RETURN",
            "-A WEFT_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
            "-A WEFT_OUTPUT -j WEFT_OUT_REDIRECT",
        ] {
            assert!(
                weft.contains(&wanted),
                "{family}: no `{wanted}` in\n{saved}"
            );
        }
        let cidr = match family {
            Family::V4 => "-A WEFT_OUTPUT -d 10.96.0.0/12 -j RETURN",
            Family::V6 => "-A WEFT_OUTPUT -d fd00::/8 -j RETURN",
        };
        assert!(weft.contains(&cidr), "{family}: no `{cidr}` in\n{saved}");
    }

    // Someone (an older init, a person) added the jump again: init repairs it.
    apply::run(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-j",
            "WEFT_OUTPUT",
        ],
        None,
    )
    .unwrap();
    run(args.clone()).unwrap();
    assert_eq!(
        save(Family::V4),
        second[0],
        "the duplicate jump was not removed"
    );

    let mut uninstall = args.clone();
    uninstall.uninstall = true;
    run(uninstall.clone()).unwrap();
    run(uninstall).unwrap();
    for family in families {
        let saved = save(family);
        assert_eq!(weft_lines(&saved), Vec::<&str>::new(), "{family}:\n{saved}");
    }
}
