//! Where a container's interfaces go: its network rules (or one `eth0` on its project's
//! `default` network on its server), each network a bridge and a subnet made on first use
//! (a project's own), and an address no other container of that network has.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use app::model::{Interface, NetworkRule};

use super::Lifecycle;
use crate::runtime::{Attachment, Ipv4Net, Runtime};
use crate::store::{ContainerRow, JsonColumn, NetworkRow};

/// A container's network as its next start sets it up.
pub(super) struct Plan {
    pub(super) attachments: Vec<Attachment>,
    /// The number of each attachment's network on its server (an agent names its bridge).
    pub(super) bridges: Vec<u32>,
    /// What was not as its rules asked (a copy's clashing static address replaced).
    pub(super) notes: Vec<String>,
}

/// The network a container without network rules is on.
const DEFAULT_NETWORK: &str = "default";
/// Each network made without a static address gets a subnet of this size from the pool.
const SUBNET_PREFIX: u8 = 24;

impl Lifecycle {
    /// The attachments of a container's next start and the interfaces to record; an error
    /// says what in its rules cannot be honoured.
    pub(super) async fn plan_network(&self, row: &ContainerRow) -> Result<Plan, String> {
        let rules: Vec<NetworkRule> = serde_json::from_str(&row.network_rules)
            .map_err(|e| format!("its network rules cannot be read: {e}"))?;
        let rules = if rules.is_empty() {
            vec![NetworkRule {
                interface: "eth0".into(),
                network: DEFAULT_NETWORK.into(),
                ipv4: None,
                mtu: None,
            }]
        } else {
            rules
        };
        let before: Vec<Interface> = serde_json::from_str(&row.interfaces).unwrap_or_default();
        // One plan at a time: two starts never take one address or one subnet.
        let _one = self.allocating.lock().await;
        let others: Vec<Interface> = self
            .db
            .interfaces_on_server(&row.server_id, &row.id)
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .flat_map(|j| serde_json::from_str::<Vec<Interface>>(j).unwrap_or_default())
            .collect();
        let first_start_of_copy = row.source_container_id.is_some() && before.is_empty();
        let mut attachments = Vec::new();
        let mut bridges = Vec::new();
        let mut interfaces = Vec::new();
        let mut notes = Vec::new();
        // The rules as they are honoured: a copy's static address replaced is its own.
        let mut honoured = rules.clone();
        for (n, rule) in rules.iter().enumerate() {
            let network = self.network(&row.server_id, &row.project_id, rule).await?;
            let net = Ipv4Net::parse(&network.cidr)
                .map_err(|e| format!("network {}: {e}", rule.network))?;
            let taken: HashSet<Ipv4Addr> = others
                .iter()
                .chain(&interfaces)
                .filter(|i| i.network == rule.network)
                .filter_map(|i| address_of(&i.ipv4))
                .collect();
            // The address it had, while nobody else took it; else the lowest free.
            let kept = before
                .iter()
                .find(|i| i.interface == rule.interface && i.network == rule.network)
                .and_then(|i| address_of(&i.ipv4))
                .filter(|a| usable(net, *a) && !taken.contains(a));
            let free = || {
                kept.or_else(|| {
                    (2..)
                        .map_while(|k| net.host(k))
                        .find(|a| !taken.contains(a))
                })
                .ok_or_else(|| format!("network {} ({net}) is full", rule.network))
            };
            let address = match &rule.ipv4 {
                Some(wanted) => {
                    let a = address_of(wanted).ok_or_else(|| {
                        format!(
                            "{wanted:?} (interface {}) is not an IPv4 address",
                            rule.interface
                        )
                    })?;
                    let problem = if !usable(net, a) {
                        Some(format!(
                            "is not a container address of network {} ({net})",
                            rule.network
                        ))
                    } else if taken.contains(&a) {
                        Some(format!(
                            "is another container's on network {}",
                            rule.network
                        ))
                    } else {
                        None
                    };
                    match problem {
                        None => a,
                        // A copy's first start: its source's static address would clash, so
                        // it gets a new one (and the copy's job says so).
                        // Replaced at the copy's first start: it stays replaced.
                        Some(_) if row.source_container_id.is_some() && kept.is_some() => free()?,
                        Some(p) if first_start_of_copy => {
                            let a2 = free()?;
                            notes.push(format!(
                                "interface {}: {a} {p}; the copy got {a2} instead",
                                rule.interface
                            ));
                            honoured[n].ipv4 = Some(format!("{a2}/{}", net.prefix));
                            a2
                        }
                        Some(p) => {
                            return Err(format!("{a} (interface {}) {p}", rule.interface));
                        }
                    }
                }
                None => free()?,
            };
            let mac = Runtime::mac(&row.id, &rule.interface);
            interfaces.push(Interface {
                interface: rule.interface.clone(),
                network: rule.network.clone(),
                ipv4: format!("{address}/{}", net.prefix),
                mac: mac.clone(),
            });
            bridges.push(network.number as u32);
            attachments.push(Attachment {
                iface: rule.interface.clone(),
                host_end: self.runtime.host_end(&row.id, n),
                bridge: self.runtime.bridge(network.number as u32),
                network: net,
                address,
                mac,
                mtu: rule.mtu,
            });
        }
        // A replaced static address becomes the copy's rule: its rules say what it has (and
        // it keeps that address).
        if honoured != rules {
            let json = serde_json::to_string(&honoured).map_err(|e| e.to_string())?;
            self.db
                .set_container_json(&row.id, JsonColumn::NetworkRules, json)
                .await
                .map_err(|e| e.to_string())?;
        }
        // Recorded before the allocation lock is let go: the next plan sees these addresses
        // taken.
        let json = serde_json::to_string(&interfaces).unwrap_or_else(|_| "[]".into());
        if json != row.interfaces {
            self.db
                .set_container_json(&row.id, JsonColumn::Interfaces, json)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(Plan {
            attachments,
            bridges,
            notes,
        })
    }

    /// The network a rule names in the container's project on this server, made when it
    /// does not exist: its subnet is the static address's network, or the next free one of
    /// the pool. Networks are the project's: a project is a tenant boundary, so containers
    /// of two projects never share a bridge, whatever their networks are called (and a
    /// container has no route off its own subnets).
    async fn network(
        &self,
        server_id: &str,
        project_id: &str,
        rule: &NetworkRule,
    ) -> Result<NetworkRow, String> {
        let name = scoped_name(project_id, &rule.network);
        let all = self.db.networks().await.map_err(|e| e.to_string())?;
        if let Some(n) = find_network(&all, server_id, &name) {
            return Ok(n.clone());
        }
        let nets = subnets(&all);
        let overlaps = |a: &Ipv4Net| overlaps_any(&nets, a);
        let cidr = match &rule.ipv4 {
            Some(wanted) => static_subnet(wanted, &nets, self.runtime.network)?,
            None => None,
        };
        let cidr = match cidr {
            Some(net) => net,
            None => {
                let pool = self.runtime.network;
                (0..)
                    .map_while(|k| pool.subnet(k, SUBNET_PREFIX.max(pool.prefix)))
                    .find(|n| !overlaps(n))
                    .ok_or_else(|| format!("no free subnet left in {pool}"))?
            }
        };
        let row = NetworkRow {
            server_id: server_id.to_string(),
            name,
            cidr: cidr.to_string(),
            number: all.iter().map(|n| n.number + 1).max().unwrap_or(0),
        };
        self.db
            .insert_network(&row)
            .await
            .map_err(|e| e.to_string())?;
        Ok(row)
    }
}

/// The subnet a new network takes from its first static address `wanted`: its own, or
/// `None` when that is taken on this host (the same name on another server or in another
/// project, say) or outside the container network (a rule from before the pool changed):
/// then the network gets a subnet of the pool, and the static address is checked against
/// that.
fn static_subnet(wanted: &str, nets: &[Ipv4Net], pool: Ipv4Net) -> Result<Option<Ipv4Net>, String> {
    let (addr, prefix) = wanted.split_once('/').unwrap_or((wanted, "24"));
    let a: Ipv4Addr = addr
        .parse()
        .map_err(|_| format!("{wanted:?} is not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (8..=30).contains(p))
        .ok_or_else(|| format!("{wanted:?}: the prefix length is 8 to 30"))?;
    let mask = u32::MAX << (32 - prefix);
    let net = Ipv4Net {
        base: Ipv4Addr::from(u32::from(a) & mask),
        prefix,
    };
    let fits =
        !overlaps_any(nets, &net) && pool.contains(net.network()) && net.prefix >= pool.prefix;
    Ok(fits.then_some(net))
}

fn overlaps_any(nets: &[Ipv4Net], a: &Ipv4Net) -> bool {
    nets.iter()
        .any(|b| a.contains(b.network()) || b.contains(a.network()))
}

impl Lifecycle {
    /// Why a rule's static address could not be had at the container's next start, if it
    /// could not: checked when the rules are set, so that a mistake is a 422 then rather
    /// than a failed start later. (Another container may still take it meanwhile.)
    pub(crate) async fn static_address_problem(
        &self,
        server_id: &str,
        project_id: &str,
        rule: &NetworkRule,
    ) -> Result<Option<String>, String> {
        let Some(wanted) = &rule.ipv4 else {
            return Ok(None);
        };
        let a = address_of(wanted).ok_or_else(|| format!("{wanted:?} is not an IPv4 address"))?;
        let all = self.db.networks().await.map_err(|e| e.to_string())?;
        let name = scoped_name(project_id, &rule.network);
        let net = match find_network(&all, server_id, &name) {
            Some(n) => Ipv4Net::parse(&n.cidr)?,
            None => match static_subnet(wanted, &subnets(&all), self.runtime.network)? {
                Some(net) => net,
                None => {
                    return Ok(Some(format!(
                        "{wanted}: its subnet overlaps another network of this host, so \
                             network {} would get a subnet of its own instead; leave the \
                             address out, or pick one of a free subnet",
                        rule.network
                    )))
                }
            },
        };
        // A prefix given must be the network's: the interface gets the network's, and
        // the rule stored and shown must say what is in force.
        if let Some((_, prefix)) = wanted.split_once('/') {
            if prefix.parse::<u8>().ok() != Some(net.prefix) {
                return Ok(Some(format!(
                    "{wanted}: network {} is {net}, a /{}: give {a}/{} or {a} alone",
                    rule.network, net.prefix, net.prefix
                )));
            }
        }
        Ok((!usable(net, a)).then(|| {
            format!(
                "{a} is not a container address of network {} ({net}): not its first \
                 (the host's), network or broadcast address, nor outside it",
                rule.network
            )
        }))
    }
}

/// The network of this name (see [`scoped_name`]) on this server, if it was made.
fn find_network<'a>(all: &'a [NetworkRow], server_id: &str, name: &str) -> Option<&'a NetworkRow> {
    all.iter()
        .find(|n| n.server_id == server_id && n.name == name)
}

/// Every network's subnet (they share this host's address space, whatever their server).
fn subnets(all: &[NetworkRow]) -> Vec<Ipv4Net> {
    all.iter()
        .filter_map(|n| Ipv4Net::parse(&n.cidr).ok())
        .collect()
}

/// A network's name in the store: the project's id, then the name its rules give. (Rows
/// made before networks were the project's have the bare name; nothing uses them again.)
fn scoped_name(project_id: &str, network: &str) -> String {
    format!("{project_id}/{network}")
}

/// The address of `a.b.c.d/n` (or a bare `a.b.c.d`).
fn address_of(cidr: &str) -> Option<Ipv4Addr> {
    cidr.split('/').next()?.parse().ok()
}

/// Whether a container may have this address of `net`: inside it, neither the network's
/// nor its broadcast address, and not the gateway (the bridge's).
fn usable(net: Ipv4Net, a: Ipv4Addr) -> bool {
    net.contains(a)
        && Some(a) != net.host(1)
        && net.host(u32::from(a) - u32::from(net.network())).is_some()
}
