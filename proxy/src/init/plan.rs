//! The rule plan: which nat-table rules `weft-proxy init` writes, as pure data, and how a plan
//! becomes one `iptables-restore --noflush` input given what the table already holds.
//!
//! Nothing here runs a command, so every decision (order, exclusions, idempotency) is unit
//! tested without root.

use std::fmt;

use super::lists::Cidr;

/// Inbound dispatch, jumped to from `PREROUTING`: skipped ports return, the rest is redirected.
pub const INBOUND_CHAIN: &str = "WEFT_INBOUND";
/// The single inbound `REDIRECT`, kept apart so the decision chain reads as a list of exceptions.
pub const IN_REDIRECT_CHAIN: &str = "WEFT_IN_REDIRECT";
/// Outbound dispatch, jumped to from `OUTPUT`: the proxy's own traffic, loopback, skipped ports
/// and CIDRs return, the rest is redirected.
pub const OUTPUT_CHAIN: &str = "WEFT_OUTPUT";
/// The single outbound `REDIRECT`.
pub const OUT_REDIRECT_CHAIN: &str = "WEFT_OUT_REDIRECT";
/// Weft's chains, in declaration order. Names stay under iptables' 28-character limit.
pub const CHAINS: [&str; 4] = [
    INBOUND_CHAIN,
    IN_REDIRECT_CHAIN,
    OUTPUT_CHAIN,
    OUT_REDIRECT_CHAIN,
];
/// All of Weft's rules live in the nat table: `REDIRECT` is a nat target.
pub const TABLE: &str = "nat";

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The tool that applies a ruleset atomically.
    pub fn restore_command(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    /// The tool that prints the current ruleset, read to keep the jump rules unique.
    pub fn save_command(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// One rule: appended to `chain` with the iptables arguments in `spec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: &'static str,
    pub spec: Vec<String>,
}

impl Rule {
    /// `spec` is split on whitespace: Weft's rules have no quoted arguments.
    fn new(chain: &'static str, spec: &str) -> Self {
        Rule {
            chain,
            spec: spec.split_whitespace().map(str::to_owned).collect(),
        }
    }

    /// The rule as an `iptables-restore` line (also valid after `iptables -t nat`).
    pub fn append_line(&self) -> String {
        format!("-A {} {}", self.chain, self.spec.join(" "))
    }
}

/// What `init` should do to a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Create or refresh Weft's chains and make sure each jump into them exists exactly once.
    Install,
    /// Remove every reference to Weft's chains, then the chains themselves.
    Uninstall,
}

/// The validated settings a plan is built from (see `InitArgs` for what each one means).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub proxy_uid: u32,
    pub proxy_gid: Option<u32>,
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// Already includes the admin port, first, and has no duplicates.
    pub skip_inbound_ports: Vec<u16>,
    pub skip_outbound_ports: Vec<u16>,
    pub skip_outbound_cidrs: Vec<Cidr>,
    pub ipv6: bool,
}

/// The rules for one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyPlan {
    pub family: Family,
    /// The contents of Weft's chains, in order. Declaring the chains in the restore input
    /// creates or flushes them, so these are always the chains' whole contents.
    pub rules: Vec<Rule>,
    /// Jumps from the built-in chains into Weft's; each must exist exactly once.
    pub jumps: Vec<Rule>,
}

/// The complete plan: IPv4 always, IPv6 when asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub families: Vec<FamilyPlan>,
}

impl Plan {
    pub fn new(settings: &Settings) -> Self {
        let mut families = vec![FamilyPlan::new(settings, Family::V4)];
        if settings.ipv6 {
            families.push(FamilyPlan::new(settings, Family::V6));
        }
        Plan { families }
    }
}

impl FamilyPlan {
    pub fn new(s: &Settings, family: Family) -> Self {
        let mut rules = Vec::new();
        let mut add = |chain, spec: String| rules.push(Rule::new(chain, &spec));

        for port in &s.skip_inbound_ports {
            add(INBOUND_CHAIN, format!("-p tcp --dport {port} -j RETURN"));
        }
        add(INBOUND_CHAIN, format!("-p tcp -j {IN_REDIRECT_CHAIN}"));
        let port = s.inbound_port;
        add(
            IN_REDIRECT_CHAIN,
            format!("-p tcp -j REDIRECT --to-ports {port}"),
        );

        // The proxy's own connections first: they are what the proxy makes *after* taking a
        // redirected connection, and redirecting them again would loop forever.
        let uid = s.proxy_uid;
        add(
            OUTPUT_CHAIN,
            format!("-m owner --uid-owner {uid} -j RETURN"),
        );
        if let Some(gid) = s.proxy_gid {
            add(
                OUTPUT_CHAIN,
                format!("-m owner --gid-owner {gid} -j RETURN"),
            );
        }
        // Anything routed over loopback stays inside the pod: the app talking to itself (also
        // on its own pod IP, which is routed via `lo`), and the proxy's admin calls.
        add(OUTPUT_CHAIN, "-o lo -j RETURN".to_owned());
        for port in &s.skip_outbound_ports {
            add(OUTPUT_CHAIN, format!("-p tcp --dport {port} -j RETURN"));
        }
        let wanted_v4 = family == Family::V4;
        for cidr in s
            .skip_outbound_cidrs
            .iter()
            .filter(|c| c.is_ipv4() == wanted_v4)
        {
            add(OUTPUT_CHAIN, format!("-d {cidr} -j RETURN"));
        }
        add(OUTPUT_CHAIN, format!("-j {OUT_REDIRECT_CHAIN}"));
        let port = s.outbound_port;
        add(
            OUT_REDIRECT_CHAIN,
            format!("-p tcp -j REDIRECT --to-ports {port}"),
        );

        let jumps = vec![
            Rule::new("PREROUTING", &format!("-p tcp -j {INBOUND_CHAIN}")),
            Rule::new("OUTPUT", &format!("-p tcp -j {OUTPUT_CHAIN}")),
        ];
        FamilyPlan {
            family,
            rules,
            jumps,
        }
    }

    /// The `iptables-restore --noflush` input that performs `action`, given `current`: the
    /// output of `iptables-save -t nat` (empty for a dry run, which assumes a fresh table).
    ///
    /// The whole change is one transaction, so a pod never runs with half a ruleset. Declaring
    /// a chain (`:NAME - [0:0]`) creates it or flushes it; that covers Weft's own chains. The
    /// built-in chains are not flushed (`--noflush`, they may hold others' rules), so their
    /// jumps into Weft's chains are reconciled against `current`: an exact copy of a wanted
    /// jump is kept, every other reference to Weft's chains is deleted, and a missing jump is
    /// appended. Running it any number of times leaves every rule exactly once.
    pub fn restore_input(&self, action: Action, current: &str) -> String {
        let mut out = format!("*{TABLE}\n");
        for chain in CHAINS {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        }
        let wanted: &[Rule] = match action {
            Action::Install => &self.jumps,
            Action::Uninstall => &[],
        };
        let mut found = vec![false; wanted.len()];
        for line in references_to_weft_chains(current) {
            let keep = wanted
                .iter()
                .zip(found.iter_mut())
                .find(|(jump, found)| !**found && jump.append_line() == line);
            match keep {
                Some((_, found)) => *found = true,
                // `iptables-save` prints rules in a form `iptables-restore` reads back, so the
                // same words after `-D` delete exactly that rule.
                None => out.push_str(&format!("-D {}\n", &line[3..])),
            }
        }
        match action {
            Action::Install => {
                for rule in &self.rules {
                    out.push_str(&rule.append_line());
                    out.push('\n');
                }
                for (jump, found) in wanted.iter().zip(found) {
                    if !found {
                        out.push_str(&jump.append_line());
                        out.push('\n');
                    }
                }
            }
            Action::Uninstall => {
                for chain in CHAINS {
                    out.push_str(&format!("-X {chain}\n"));
                }
            }
        }
        out.push_str("COMMIT\n");
        out
    }
}

/// Rules in `iptables-save` output outside Weft's chains whose target is one of Weft's chains.
fn references_to_weft_chains(save: &str) -> impl Iterator<Item = &str> {
    let mut in_table = false;
    save.lines().map(str::trim_end).filter(move |line| {
        if let Some(table) = line.strip_prefix('*') {
            in_table = table == TABLE;
            return false;
        }
        if !in_table || !line.starts_with("-A ") {
            return false;
        }
        let mut words = line.split_whitespace().skip(1);
        let chain = words.next().unwrap_or_default();
        let mut target = None;
        while let Some(word) = words.next() {
            if matches!(word, "-j" | "--jump" | "-g" | "--goto") {
                target = words.next();
            }
        }
        !CHAINS.contains(&chain) && target.is_some_and(|t| CHAINS.contains(&t))
    })
}
