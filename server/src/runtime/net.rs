//! A container's network: its own namespace, and for each interface a veth whose other end
//! is on a bridge of its network on this host. Bridges get the network's first address
//! (so the host reaches every container) and no route beyond: traffic stays on this host.
//! Driven through iproute2's `ip`, as an operator would.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::{command, RuntimeError};

/// An IPv4 network: its base address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Net {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Net {
    /// `a.b.c.d/n`, with `a.b.c.d` the network's base (no host bits set).
    pub fn parse(s: &str) -> Result<Ipv4Net, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a network such as 10.88.0.0/16"))?;
        let base: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 30)
            .ok_or_else(|| format!("{prefix:?} is not a prefix length from 0 to 30"))?;
        let net = Ipv4Net { base, prefix };
        if net.network() != base {
            return Err(format!(
                "{s} has host bits set; the network is {}/{prefix}",
                net.network()
            ));
        }
        Ok(net)
    }

    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix)
        }
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) & self.mask())
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.network())
    }

    /// The `n`th address of the network (0 is the network itself).
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - self.prefix);
        // Neither the network's nor its broadcast address.
        (n > 0 && (n as u64) < size - 1).then(|| Ipv4Addr::from(u32::from(self.network()) + n))
    }

    /// The `n`th subnet of length `prefix` inside this one.
    pub fn subnet(&self, n: u32, prefix: u8) -> Option<Ipv4Net> {
        if prefix < self.prefix || prefix > 30 || (n as u64) >= 1u64 << (prefix - self.prefix) {
            return None;
        }
        let base = u32::from(self.network()) + (n << (32 - prefix));
        Some(Ipv4Net {
            base: Ipv4Addr::from(base),
            prefix,
        })
    }
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

/// One interface of a container, as it will be set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The name inside the container, e.g. `eth0`.
    pub iface: String,
    /// The host's end of the veth (at most 15 bytes).
    pub host_end: String,
    /// The bridge of its network, and the network (the bridge has its first address).
    pub bridge: String,
    pub network: Ipv4Net,
    pub address: Ipv4Addr,
    pub mac: String,
    pub mtu: Option<u32>,
}

/// Where a named network namespace lives (`ip netns add` makes it there).
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

async fn ip(args: &[&str]) -> Result<String, RuntimeError> {
    command("ip", args, None).await
}

/// Bridges are made one at a time on this host (two first starts on a new network would
/// both try to make its bridge).
static BRIDGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The IPv4 networks this host already has: its interfaces' and its routes' (a VPN's
/// routes have no local address), except the default route and `ours`' bridges.
async fn host_networks(ours: &str) -> Result<Vec<(Ipv4Net, String)>, RuntimeError> {
    let mut nets = Vec::new();
    let parse = |cidr: &str| -> Option<Ipv4Net> {
        let (addr, prefix) = cidr.split_once('/').unwrap_or((cidr, "32"));
        let a: Ipv4Addr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        Some(Ipv4Net {
            base: Ipv4Addr::from(u32::from(a) & mask),
            prefix,
        })
    };
    for line in ip(&["-4", "-o", "addr", "show"]).await?.lines() {
        // "3: eth0    inet 10.0.0.5/24 brd ... scope global eth0"
        let mut words = line.split_whitespace();
        let dev = words.nth(1).unwrap_or("").to_string();
        if let Some(net) = words.skip_while(|w| *w != "inet").nth(1).and_then(parse) {
            if !dev.starts_with(ours) {
                nets.push((net, dev));
            }
        }
    }
    for line in ip(&["-4", "route", "show", "table", "all"]).await?.lines() {
        // "10.8.0.0/16 via 10.0.0.1 dev tun0", "local 10.0.0.5 dev eth0 table local ..."
        let mut words = line.split_whitespace().peekable();
        if matches!(words.peek(), Some(&("local" | "broadcast" | "unicast"))) {
            words.next();
        }
        let Some(dest) = words.next() else { continue };
        let dev = line
            .split_whitespace()
            .skip_while(|w| *w != "dev")
            .nth(1)
            .unwrap_or("")
            .to_string();
        if dest == "default" || dev.starts_with(ours) || dev == "lo" {
            continue;
        }
        if let Some(net) = parse(dest) {
            nets.push((net, dev));
        }
    }
    Ok(nets)
}

/// The bridge of a network, made when missing. A network that overlaps one this host
/// already has (an interface's or a route's, either way round) is refused: its routes
/// would be ambiguous, and doppel would take traffic that is not its own.
/// `ours`: the prefix of this doppel's bridges.
pub async fn ensure_bridge(bridge: &str, network: Ipv4Net, ours: &str) -> Result<(), RuntimeError> {
    let _one = BRIDGES.lock().await;
    let gateway = network.host(1).ok_or_else(|| {
        RuntimeError::Network(format!("{network} has no room for a gateway address"))
    })?;
    if ip(&["link", "show", "dev", bridge]).await.is_ok() {
        return ip(&["link", "set", bridge, "up"]).await.map(drop);
    }
    for (net, dev) in host_networks(ours).await? {
        if net.contains(network.network()) || network.contains(net.network()) {
            return Err(RuntimeError::Network(format!(
                "network {network} overlaps {net} of {dev} on this host; choose another with --container-network"
            )));
        }
    }
    ip(&["link", "add", bridge, "type", "bridge"]).await?;
    no_ipv6(bridge);
    ip(&[
        "addr",
        "add",
        &format!("{gateway}/{}", network.prefix),
        "dev",
        bridge,
    ])
    .await?;
    ip(&["link", "set", bridge, "up"]).await.map(drop)
}

/// The host side of containers' networks: a connection a container opens to the host
/// itself (its bridge's address, or any other of the host's) is dropped; the host's own
/// connections to containers, and their replies, pass. One table per doppel, made again
/// whole each time (nft applies it in one transaction).
pub async fn guard_host(tag: &str, ours: &str) -> Result<(), RuntimeError> {
    let table = host_table(tag);
    let text = format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \x20 chain input {{\n\
         \x20   type filter hook input priority 0; policy accept;\n\
         \x20   iifname \"{ours}*\" ct state established,related accept\n\
         \x20   iifname \"{ours}*\" drop\n\
         \x20 }}\n\
         }}\n"
    );
    super::command("nft", &["-f", "-"], Some(&text))
        .await
        .map(drop)
}

/// The host nftables table of the doppel with this tag.
pub fn host_table(tag: &str) -> String {
    format!("doppel_{tag}")
}

/// No IPv6 on a host-side interface of doppel's (before it is up, so it never gets a
/// link-local address). Containers have IPv4 only; and a new address on the host is a
/// "network change" to every program watching (a browser drops its requests in flight).
/// Where the kernel has no IPv6 there is nothing to turn off.
fn no_ipv6(iface: &str) {
    let _ = std::fs::write(
        format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6"),
        b"1",
    );
}

/// A new namespace `netns` with the loopback up and each attachment set up. A namespace
/// of that name left from before is replaced.
pub async fn setup(
    netns: &str,
    attachments: &[Attachment],
    ours: &str,
) -> Result<(), RuntimeError> {
    let ends: Vec<String> = attachments.iter().map(|a| a.host_end.clone()).collect();
    teardown(netns, &ends).await;
    ip(&["netns", "add", netns]).await?;
    let result = async {
        ip(&["-n", netns, "link", "set", "lo", "up"]).await?;
        for a in attachments {
            ensure_bridge(&a.bridge, a.network, ours).await?;
            ip(&[
                "link",
                "add",
                &a.host_end,
                "type",
                "veth",
                "peer",
                "name",
                &a.iface,
                "netns",
                netns,
            ])
            .await?;
            let mtu = a.mtu.map(|m| m.to_string());
            if let Some(mtu) = &mtu {
                ip(&["link", "set", &a.host_end, "mtu", mtu]).await?;
                ip(&["-n", netns, "link", "set", &a.iface, "mtu", mtu]).await?;
            }
            no_ipv6(&a.host_end);
            ip(&["link", "set", &a.host_end, "master", &a.bridge, "up"]).await?;
            ip(&["-n", netns, "link", "set", &a.iface, "address", &a.mac]).await?;
            ip(&[
                "-n",
                netns,
                "addr",
                "add",
                &format!("{}/{}", a.address, a.network.prefix),
                "dev",
                &a.iface,
            ])
            .await?;
            ip(&["-n", netns, "link", "set", &a.iface, "up"]).await?;
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        teardown(netns, &ends).await;
    }
    result
}

/// Removes the namespace (its veth ends go with it) and any host end left behind.
pub async fn teardown(netns: &str, host_ends: &[String]) {
    let _ = ip(&["netns", "delete", netns]).await;
    for end in host_ends {
        // Gone with the namespace, unless the namespace was gone first.
        if ip(&["link", "show", "dev", end]).await.is_ok() {
            let _ = ip(&["link", "delete", end]).await;
        }
    }
}

/// Removes a bridge (when the last of its containers is gone; tests clean up with it).
pub async fn remove_bridge(bridge: &str) {
    let _ = ip(&["link", "delete", bridge, "type", "bridge"]).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_divide() {
        let n = Ipv4Net::parse("10.88.0.0/16").unwrap();
        assert_eq!(n.subnet(3, 24).unwrap().to_string(), "10.88.3.0/24");
        assert_eq!(n.subnet(256, 24), None);
        let s = n.subnet(3, 24).unwrap();
        assert_eq!(s.host(1), Some(Ipv4Addr::new(10, 88, 3, 1)));
        assert_eq!(s.host(254), Some(Ipv4Addr::new(10, 88, 3, 254)));
        assert_eq!(s.host(255), None, "the broadcast address");
        assert_eq!(s.host(0), None);
        assert!(s.contains(Ipv4Addr::new(10, 88, 3, 77)));
        assert!(!s.contains(Ipv4Addr::new(10, 88, 4, 77)));
        assert!(Ipv4Net::parse("10.88.0.1/16").is_err(), "host bits");
        assert!(Ipv4Net::parse("10.88.0.0/31").is_err());
        assert!(Ipv4Net::parse("10.88.0.0").is_err());
        assert!(Ipv4Net::parse("nonsense/8").is_err());
    }
}
