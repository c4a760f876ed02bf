//! The console's text forms of a container's settings, one item per line (what an operator
//! types into a textarea): firewall rules as `ingress tcp 80 10.0.0.0/8 allow`, network
//! rules as `eth0 default auto 1500`, a command as one argument per line. Each renders what
//! it parses, so the form shows the stored settings in the same words.

use crate::model::{FirewallRule, NetworkRule};

/// Lines of `text` that hold something (trimmed; `#` starts a comment).
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
}

/// `direction protocol port|all cidr action` per line.
pub fn parse_firewall(text: &str) -> Result<Vec<FirewallRule>, String> {
    lines(text)
        .map(|(n, line)| {
            let w: Vec<&str> = line.split_whitespace().collect();
            let [direction, protocol, port, cidr, action] = w[..] else {
                return Err(format!(
                    "line {}: {line:?} is not \"direction protocol port cidr action\", \
                     e.g. \"ingress tcp 80 10.0.0.0/8 allow\" (port \"all\" for every port)",
                    n + 1
                ));
            };
            Ok(FirewallRule {
                direction: direction.to_string(),
                protocol: protocol.to_string(),
                port: (port != "all").then(|| port.to_string()),
                cidr: cidr.to_string(),
                action: action.to_string(),
            })
        })
        .collect()
}

pub fn firewall_text(rules: &[FirewallRule]) -> String {
    rules
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {} {}\n",
                r.direction,
                r.protocol,
                r.port.as_deref().unwrap_or("all"),
                r.cidr,
                r.action
            )
        })
        .collect()
}

/// `interface network [address|auto] [mtu]` per line.
pub fn parse_network(text: &str) -> Result<Vec<NetworkRule>, String> {
    lines(text)
        .map(|(n, line)| {
            let w: Vec<&str> = line.split_whitespace().collect();
            let bad = || {
                format!(
                    "line {}: {line:?} is not \"interface network [address|auto] [mtu]\", \
                     e.g. \"eth0 default auto\" or \"eth1 backend 10.88.7.5/24 1450\"",
                    n + 1
                )
            };
            if !(2..=4).contains(&w.len()) {
                return Err(bad());
            }
            let mtu = match w.get(3) {
                Some(m) => Some(m.parse::<u32>().map_err(|_| bad())?),
                None => None,
            };
            Ok(NetworkRule {
                interface: w[0].to_string(),
                network: w[1].to_string(),
                ipv4: w.get(2).filter(|a| **a != "auto").map(|a| a.to_string()),
                mtu,
            })
        })
        .collect()
}

pub fn network_text(rules: &[NetworkRule]) -> String {
    rules
        .iter()
        .map(|r| {
            let mut line = format!(
                "{} {} {}",
                r.interface,
                r.network,
                r.ipv4.as_deref().unwrap_or("auto")
            );
            if let Some(mtu) = r.mtu {
                line.push_str(&format!(" {mtu}"));
            }
            line + "\n"
        })
        .collect()
}

/// Non-empty lines, as they are (arguments may hold spaces; `#` is not special here).
pub fn parse_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firewall_lines_round_trip_and_say_what_is_wrong() {
        let text =
            "ingress tcp 80 10.0.0.0/8 allow\n# a comment\n\negress any all 0.0.0.0/0 deny\n";
        let rules = parse_firewall(text).unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].port.as_deref(), Some("80"));
        assert_eq!(rules[1].port, None);
        assert_eq!(parse_firewall(&firewall_text(&rules)).unwrap(), rules);
        let e = parse_firewall("ingress tcp 80 allow").unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
    }

    #[test]
    fn network_lines_round_trip_and_say_what_is_wrong() {
        let rules = parse_network("eth0 default auto\neth1 backend 10.88.7.5/24 1450\n").unwrap();
        assert_eq!(rules[0].ipv4, None);
        assert_eq!(rules[1].mtu, Some(1450));
        assert_eq!(parse_network(&network_text(&rules)).unwrap(), rules);
        assert!(parse_network("eth0").unwrap_err().contains("line 1"));
        assert!(parse_network("eth0 default auto big").is_err());
    }

    #[test]
    fn a_list_keeps_each_line_whole() {
        assert_eq!(
            parse_list("/bin/sh\n-c\necho a b # not a comment\n\n"),
            ["/bin/sh", "-c", "echo a b # not a comment"]
        );
    }
}
