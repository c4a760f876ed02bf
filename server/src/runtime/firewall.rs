//! A container's firewall rules as an nftables ruleset inside its network namespace.
//!
//! Semantics (documented in the README and the OpenAPI): rules are checked in order and
//! the first that matches decides; `ingress` rules match packets coming in (by their
//! source), `egress` rules packets going out (by their destination); what no rule matches
//! is allowed. Replies of allowed connections are always allowed (the firewall is stateful),
//! and so is the container's own loopback. `deny` drops the packet silently. Containers
//! have IPv4 only: IPv6 (link-local addresses come with every interface) is dropped both
//! ways, so no rule can be bypassed over it.

use app::model::FirewallRule;

use super::{command, RuntimeError};

/// One rule as nft syntax, or why it is not valid.
fn rule_line(r: &FirewallRule) -> Result<String, String> {
    let addr = match r.direction.as_str() {
        "ingress" => "saddr",
        "egress" => "daddr",
        d => return Err(format!("direction {d:?} is not ingress or egress")),
    };
    let cidr = check_cidr(&r.cidr)?;
    let verdict = match r.action.as_str() {
        "allow" => "accept",
        "deny" => "drop",
        a => return Err(format!("action {a:?} is not allow or deny")),
    };
    let proto = match (r.protocol.as_str(), &r.port) {
        ("tcp" | "udp", Some(p)) => format!(" {} dport {}", r.protocol, check_port(p)?),
        ("tcp" | "udp", None) => format!(" meta l4proto {}", r.protocol),
        ("icmp", None) => " meta l4proto icmp".to_string(),
        ("any", None) => String::new(),
        ("icmp", Some(_)) => return Err("an icmp rule has no port".into()),
        ("any", Some(_)) => return Err("a rule with protocol any has no port".into()),
        (p, _) => return Err(format!("protocol {p:?} is not tcp, udp, icmp or any")),
    };
    Ok(format!("ip {addr} {cidr}{proto} {verdict}"))
}

fn check_cidr(s: &str) -> Result<String, String> {
    let (addr, prefix) = s.split_once('/').unwrap_or((s, "32"));
    let addr: std::net::Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 network such as 10.0.0.0/8"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| format!("{s:?} has no prefix length from 0 to 32"))?;
    // nftables would take the network of an address with host bits set (10.0.0.1/8 as
    // 10.0.0.0/8): the rule in force would not be the rule stored and shown.
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    let network = std::net::Ipv4Addr::from(u32::from(addr) & mask);
    if network != addr {
        return Err(format!(
            "{s:?} is not a network: its address has bits beyond its /{prefix} set              (the network is {network}/{prefix}; one address is {addr}/32)"
        ));
    }
    Ok(format!("{addr}/{prefix}"))
}

fn check_port(s: &str) -> Result<String, String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("port {s:?} is not a port (1-65535) or range (8000-8100)"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                return Err(format!("port range {s:?} ends before it starts"));
            }
            Ok(format!("{a}-{b}"))
        }
        None => Ok(port(s)?.to_string()),
    }
}

/// Every rule checked, with the first invalid one's position and reason.
pub fn validate(rules: &[FirewallRule]) -> Result<(), (usize, String)> {
    for (i, r) in rules.iter().enumerate() {
        rule_line(r).map_err(|e| (i, e))?;
    }
    Ok(())
}

/// The whole ruleset of a namespace, replacing whatever it had.
pub fn ruleset(rules: &[FirewallRule]) -> Result<String, String> {
    let mut ingress = String::new();
    let mut egress = String::new();
    for r in rules {
        let line = rule_line(r)?;
        let chain = if r.direction == "ingress" {
            &mut ingress
        } else {
            &mut egress
        };
        chain.push_str("    ");
        chain.push_str(&line);
        chain.push('\n');
    }
    Ok(format!(
        "flush ruleset\n\
         table inet doppel {{\n\
         \x20 chain ingress {{\n\
         \x20   type filter hook input priority 0; policy accept;\n\
         \x20   iif lo accept\n\
         \x20   meta nfproto ipv6 drop\n\
         \x20   ct state established,related accept\n\
         {ingress}\
         \x20 }}\n\
         \x20 chain egress {{\n\
         \x20   type filter hook output priority 0; policy accept;\n\
         \x20   oif lo accept\n\
         \x20   meta nfproto ipv6 drop\n\
         \x20   ct state established,related accept\n\
         {egress}\
         \x20 }}\n\
         }}\n"
    ))
}

/// Loads the rules into the namespace in one nft transaction (all or nothing).
pub async fn apply(netns: &str, rules: &[FirewallRule]) -> Result<(), RuntimeError> {
    let text = ruleset(rules).map_err(RuntimeError::Firewall)?;
    command(
        "ip",
        &["netns", "exec", netns, "nft", "-f", "-"],
        Some(&text),
    )
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        direction: &str,
        protocol: &str,
        port: Option<&str>,
        cidr: &str,
        action: &str,
    ) -> FirewallRule {
        FirewallRule {
            direction: direction.into(),
            protocol: protocol.into(),
            port: port.map(Into::into),
            cidr: cidr.into(),
            action: action.into(),
        }
    }

    #[test]
    fn rules_become_nft_lines_in_order() {
        let rules = [
            rule("ingress", "tcp", Some("80"), "10.0.0.0/8", "allow"),
            rule("ingress", "tcp", Some("80"), "0.0.0.0/0", "deny"),
            rule("egress", "udp", Some("5000-5100"), "192.168.1.7", "deny"),
            rule("ingress", "icmp", None, "0.0.0.0/0", "allow"),
            rule("egress", "any", None, "0.0.0.0/0", "deny"),
        ];
        let text = ruleset(&rules).unwrap();
        let allow = text
            .find("ip saddr 10.0.0.0/8 tcp dport 80 accept")
            .unwrap();
        let deny = text.find("ip saddr 0.0.0.0/0 tcp dport 80 drop").unwrap();
        assert!(allow < deny, "first match wins: order kept\n{text}");
        assert!(text.contains("ip daddr 192.168.1.7/32 udp dport 5000-5100 drop"));
        assert!(text.contains("ip saddr 0.0.0.0/0 meta l4proto icmp accept"));
        assert!(text.contains("ip daddr 0.0.0.0/0 drop"));
        assert_eq!(
            text.matches("meta nfproto ipv6 drop").count(),
            2,
            "no way around over IPv6"
        );
    }

    #[test]
    fn invalid_rules_say_which_and_why() {
        for (r, why) in [
            (
                rule("inbound", "tcp", None, "0.0.0.0/0", "allow"),
                "direction",
            ),
            (
                rule("ingress", "tcp", Some("0"), "0.0.0.0/0", "allow"),
                "port",
            ),
            (
                rule("ingress", "tcp", Some("90-80"), "0.0.0.0/0", "allow"),
                "ends before",
            ),
            (
                rule("ingress", "icmp", Some("80"), "0.0.0.0/0", "allow"),
                "an icmp rule has no port",
            ),
            (
                rule("ingress", "any", Some("80"), "0.0.0.0/0", "allow"),
                "a rule with protocol any has no port",
            ),
            (
                rule("ingress", "sctp", None, "0.0.0.0/0", "allow"),
                "protocol",
            ),
            (
                rule("ingress", "tcp", None, "10.0.0.0/33", "allow"),
                "prefix",
            ),
            (rule("ingress", "tcp", None, "example.com", "allow"), "IPv4"),
            (
                rule("ingress", "tcp", None, "10.0.0.1/8", "allow"),
                "the network is 10.0.0.0/8",
            ),
            (
                rule("ingress", "tcp", None, "0.0.0.0/0", "reject"),
                "action",
            ),
        ] {
            let ok = rule("ingress", "tcp", Some("22"), "0.0.0.0/0", "allow");
            let (at, e) = validate(&[ok, r]).unwrap_err();
            assert_eq!(at, 1);
            assert!(e.contains(why), "{e}");
        }
    }
}
