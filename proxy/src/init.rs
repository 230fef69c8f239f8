//! `weft-proxy init`: the iptables rules that send a pod's TCP traffic through its sidecar.
//!
//! Run once per pod, as root with `NET_ADMIN`, before the app and the proxy start (an init
//! container in Kubernetes, `ip netns exec` in the pod tests). It works like Istio's
//! `istio-iptables` and linkerd2-proxy-init: in the nat table, `PREROUTING` sends inbound TCP
//! to the inbound listener and `OUTPUT` sends the app's outbound TCP to the outbound listener,
//! except for the proxy's own connections and the listed exceptions.
//!
//! The rules are computed as a [`Plan`] (pure data, see [`plan`]) and written with one
//! `iptables-restore --noflush` per address family (see [`apply`]), so a pod never sees half a
//! ruleset and running `init` again leaves exactly one copy of every rule.

pub mod apply;
pub mod lists;
pub mod plan;

use clap::builder::BoolishValueParser;
use clap::Args;

pub use apply::CommandError;
pub use lists::{Cidr, CidrList, ListError, PortList};
pub use plan::{Action, Family, FamilyPlan, Plan, Rule, Settings};

/// The UID the proxy runs as. It must be fixed and known in advance: init runs before the
/// proxy exists and tells the proxy's own connections from the app's only by this UID
/// (`-m owner --uid-owner`), and the injector runs the sidecar container as this UID. 2102 is
/// the UID Linkerd's proxy uses too, so clusters whose admission policies already allow that
/// sidecar allow Weft's; it is above the system range (< 1000) and well past the first user
/// UIDs (1000, 1001, …) images create for their app, so an app rarely collides with it. The
/// app must not run as it, or its traffic would bypass the mesh.
pub const DEFAULT_PROXY_UID: u32 = 2102;
/// Where PREROUTING sends inbound connections (the proxy's inbound listener).
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
/// Where OUTPUT sends the app's outbound connections (the proxy's outbound listener).
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
/// The proxy's admin server port, always excluded from inbound redirection: kubelet probes
/// (`/live`, `/ready`) and Prometheus scrapes (`/metrics`) come from outside the pod and must
/// reach the admin server directly. Redirected, they would be handed to the app's port 15020
/// by the inbound listener, where nothing listens.
pub const ADMIN_PORT: u16 = 15020;

/// Flags of `weft-proxy init`. Each can also be set with the `WEFT_INIT_*` variable named in
/// its help, which is how the injector passes them to the init container.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// UID the proxy runs as; its connections are never redirected.
    #[arg(long, env = "WEFT_INIT_PROXY_UID", default_value_t = DEFAULT_PROXY_UID)]
    pub proxy_uid: u32,

    /// GID the proxy runs as; its connections are never redirected either.
    #[arg(long, env = "WEFT_INIT_PROXY_GID")]
    pub proxy_gid: Option<u32>,

    /// Port of the proxy's inbound listener.
    #[arg(long, env = "WEFT_INIT_INBOUND_PORT", default_value_t = DEFAULT_INBOUND_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_port: u16,

    /// Port of the proxy's outbound listener.
    #[arg(long, env = "WEFT_INIT_OUTBOUND_PORT", default_value_t = DEFAULT_OUTBOUND_PORT,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub outbound_port: u16,

    /// Inbound ports that reach the app directly, comma-separated. The admin port 15020 is
    /// always skipped as well.
    #[arg(long, env = "WEFT_INIT_SKIP_INBOUND_PORTS", value_name = "PORTS")]
    pub skip_inbound_ports: Vec<PortList>,

    /// Outbound destination ports that bypass the proxy, comma-separated.
    #[arg(long, env = "WEFT_INIT_SKIP_OUTBOUND_PORTS", value_name = "PORTS")]
    pub skip_outbound_ports: Vec<PortList>,

    /// Outbound destinations that bypass the proxy, comma-separated IPv4/IPv6 CIDRs. IPv6
    /// CIDRs take effect only with --ipv6.
    #[arg(long, env = "WEFT_INIT_SKIP_OUTBOUND_CIDRS", value_name = "CIDRS")]
    pub skip_outbound_cidrs: Vec<CidrList>,

    /// Also program ip6tables. The proxy must then listen on [::1] for outbound as well.
    #[arg(long, env = "WEFT_INIT_IPV6", value_parser = BoolishValueParser::new())]
    pub ipv6: bool,

    /// Print the iptables-restore input instead of applying it (as for an empty table).
    #[arg(long, env = "WEFT_INIT_DRY_RUN", value_parser = BoolishValueParser::new())]
    pub dry_run: bool,

    /// Remove Weft's chains and the jumps into them instead of installing them.
    #[arg(long, env = "WEFT_INIT_UNINSTALL", value_parser = BoolishValueParser::new())]
    pub uninstall: bool,
}

impl Default for InitArgs {
    fn default() -> Self {
        InitArgs {
            proxy_uid: DEFAULT_PROXY_UID,
            proxy_gid: None,
            inbound_port: DEFAULT_INBOUND_PORT,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
            ipv6: false,
            dry_run: false,
            uninstall: false,
        }
    }
}

/// Why `init` failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("--inbound-port and --outbound-port are both {0}; the proxy needs two listeners")]
    SamePort(u16),
    #[error("--{flag} is {port}, the admin server's port (always left to reach the admin server)")]
    AdminPort { flag: &'static str, port: u16 },
    #[error("applying the {family} rules: {source}")]
    Apply {
        family: Family,
        #[source]
        source: CommandError,
    },
}

impl InitArgs {
    /// Checks the flags and normalises them: lists are merged and de-duplicated, and the admin
    /// port is put first among the skipped inbound ports.
    pub fn settings(&self) -> Result<Settings, InitError> {
        if self.inbound_port == self.outbound_port {
            return Err(InitError::SamePort(self.inbound_port));
        }
        for (flag, port) in [
            ("inbound-port", self.inbound_port),
            ("outbound-port", self.outbound_port),
        ] {
            if port == ADMIN_PORT {
                return Err(InitError::AdminPort { flag, port });
            }
        }
        let ports =
            |lists: &[PortList]| dedup(lists.iter().flat_map(|list| list.0.iter().copied()));
        Ok(Settings {
            proxy_uid: self.proxy_uid,
            proxy_gid: self.proxy_gid,
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            skip_inbound_ports: dedup(
                std::iter::once(ADMIN_PORT).chain(ports(&self.skip_inbound_ports)),
            ),
            skip_outbound_ports: ports(&self.skip_outbound_ports),
            skip_outbound_cidrs: dedup(
                self.skip_outbound_cidrs
                    .iter()
                    .flat_map(|list| list.0.iter().copied()),
            ),
            ipv6: self.ipv6,
        })
    }

    /// The rules these flags ask for.
    pub fn plan(&self) -> Result<Plan, InitError> {
        Ok(Plan::new(&self.settings()?))
    }

    fn action(&self) -> Action {
        if self.uninstall {
            Action::Uninstall
        } else {
            Action::Install
        }
    }
}

/// Keeps the first occurrence of each item, in order.
fn dedup<T: PartialEq>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// The `init` subcommand: computes the plan and applies it (or prints it with `--dry-run`).
/// Blocking; call it before starting a runtime, or from a blocking context.
pub fn run(args: InitArgs) -> Result<(), InitError> {
    let plan = args.plan()?;
    let action = args.action();
    for family in &plan.families {
        if args.dry_run {
            println!("# {} --noflush", family.family.restore_command());
            print!("{}", family.restore_input(action, ""));
            continue;
        }
        let applied = apply::apply_family(family, action).map_err(|source| InitError::Apply {
            family: family.family,
            source,
        })?;
        // Printed after the fact so an init container's log shows what the pod runs with.
        println!(
            "# applied with {} --noflush",
            family.family.restore_command()
        );
        print!("{applied}");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
