//! Hosts for tests that cross a network: each a network namespace of its own, joined by
//! veths to one bridge with a test subnet (10.200-249.x.0/24, nothing routed beyond it);
//! the test itself, in the host's namespace, reaches them through the bridge. Dropping the
//! lab kills what was started in it and removes the namespaces and the bridge, test passed
//! or not.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Lab {
    tag: String,
    prefix: String,
    bridge: String,
    hosts: Vec<String>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn no_ipv6(ns: Option<&str>, iface: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6");
    let _ = match ns {
        None => std::fs::write(&path, "1").map(|_| ()),
        Some(ns) => Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c", &format!("echo 1 > {path}")])
            .status()
            .map(|_| ()),
    };
}

impl Lab {
    /// A lab with these hosts, addressed .2, .3, ... in the order given (the test is .1).
    pub fn new(hosts: &[&str]) -> Lab {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:04x}{n:x}", pid % 0xffff);
        let prefix = format!("10.{}.{}", 200 + pid % 50, n % 250);
        let bridge = format!("dlb{tag}");
        let mut lab = Lab {
            tag,
            prefix,
            bridge,
            hosts: Vec::new(),
        };
        ip(&["link", "add", &lab.bridge, "type", "bridge"]);
        no_ipv6(None, &lab.bridge);
        ip(&[
            "addr",
            "add",
            &format!("{}.1/24", lab.prefix),
            "dev",
            &lab.bridge,
        ]);
        ip(&["link", "set", &lab.bridge, "up"]);
        for (i, name) in hosts.iter().enumerate() {
            let ns = format!("dl-{}-{name}", lab.tag);
            ip(&["netns", "add", &ns]);
            lab.hosts.push(name.to_string());
            let outside = lab.veth(name);
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            no_ipv6(None, &outside);
            ip(&["link", "set", &outside, "master", &lab.bridge]);
            ip(&["link", "set", &outside, "up"]);
            no_ipv6(Some(&ns), "eth0");
            let addr = format!("{}.{}/24", lab.prefix, i + 2);
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    fn index(&self, host: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h == host)
            .unwrap_or_else(|| panic!("no host {host} in the lab"))
    }

    fn veth(&self, host: &str) -> String {
        format!("dlv{}{}", self.tag, self.index(host))
    }

    /// The host side of the host's link (its counters count what the host sends and gets).
    pub fn veth_of(&self, host: &str) -> String {
        self.veth(host)
    }

    pub fn namespace(&self, host: &str) -> String {
        self.index(host);
        format!("dl-{}-{host}", self.tag)
    }

    /// The host's address.
    pub fn addr(&self, host: &str) -> String {
        format!("{}.{}", self.prefix, self.index(host) + 2)
    }

    /// `program` to run on the host (in its namespace).
    /// `program` in the host's network namespace only (nsenter): unlike `ip netns exec`,
    /// which mounts a sysfs of its own over /sys, it keeps the cgroup filesystem that runc
    /// needs to run containers there.
    pub fn host_command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.namespace(host)))
            .arg("--")
            .arg(program);
        c
    }

    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespace(host)])
            .arg(program);
        c
    }

    /// Shapes what the host sends: at most `rate` (tc's units, e.g. `100mbit`), and `delay`
    /// more on each packet where the kernel has netem. Without netem (this machine's kernel
    /// has none), a token bucket limits the rate and there is no added delay; the answer
    /// says which: whether the delay is there.
    pub fn shape(&self, host: &str, rate: &str, delay: Option<&str>) -> bool {
        let ns = self.namespace(host);
        if let Some(delay) = delay {
            let netem = Command::new("ip")
                .args([
                    "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root",
                ])
                .args(["netem", "delay", delay, "rate", rate])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if netem {
                return true;
            }
        }
        let ok = Command::new("ip")
            .args([
                "netns", "exec", &ns, "tc", "qdisc", "add", "dev", "eth0", "root",
            ])
            .args(["tbf", "rate", rate, "burst", "64kb", "latency", "400ms"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tc tbf on {host}");
        false
    }

    /// Cuts the host's link (its side of the bridge goes down), or restores it.
    pub fn cut(&self, host: &str) {
        ip(&["link", "set", &self.veth(host), "down"]);
    }

    pub fn restore(&self, host: &str) {
        ip(&["link", "set", &self.veth(host), "up"]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for host in &self.hosts {
            let ns = format!("dl-{}-{host}", self.tag);
            // Whatever still runs in it (ip netns exec'd processes) ends with it.
            let _ = Command::new("ip")
                .args(["netns", "pids", &ns])
                .output()
                .map(|out| {
                    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

/// A process of the lab, killed (-9) when dropped.
pub struct Running(pub Child);

impl Running {
    pub fn spawn(mut c: Command, log: &std::path::Path) -> Running {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        Running(
            c.stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap(),
        )
    }

    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}
