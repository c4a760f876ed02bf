//! Failed logins slow down whoever makes them. Three counts, each with its own allowance
//! before waits begin: one name from one address (5), one address for any names (20, a
//! password spray), and one name from anywhere (100, a distributed guess; this one locks
//! the name for everyone, so its allowance is high). After the allowance each further
//! failure doubles the wait, up to 15 minutes; a success clears the name's counts. A
//! refused attempt costs no password hashing, so a flood cannot starve real logins.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Key {
    NameFrom(String, IpAddr),
    From(IpAddr),
    Name(String),
}

impl Key {
    fn allowance(&self) -> u32 {
        match self {
            Key::NameFrom(..) => 5,
            Key::From(_) => 20,
            Key::Name(_) => 100,
        }
    }
}

struct Failures {
    count: u32,
    last: Instant,
}

/// The longest wait, and how long failures are remembered without new ones.
const MAX_WAIT: Duration = Duration::from_secs(15 * 60);

#[derive(Default)]
pub(super) struct LoginThrottle {
    failures: Mutex<HashMap<Key, Failures>>,
}

fn keys(name: &str, from: IpAddr) -> [Key; 3] {
    let name = name.to_lowercase();
    [
        Key::NameFrom(name.clone(), from),
        Key::From(from),
        Key::Name(name),
    ]
}

/// How long after its last failure a key with `count` failures must wait.
fn wait_after(key: &Key, count: u32) -> Duration {
    if count < key.allowance() {
        return Duration::ZERO;
    }
    let over = count - key.allowance() + 1;
    Duration::from_secs(1u64 << over.min(20)).min(MAX_WAIT)
}

impl LoginThrottle {
    /// `Err(wait)`: this attempt is refused without checking the password.
    pub(super) fn check(&self, name: &str, from: IpAddr) -> Result<(), Duration> {
        let failures = self.failures.lock();
        let now = Instant::now();
        let wait = keys(name, from)
            .iter()
            .filter_map(|k| {
                let f = failures.get(k)?;
                (f.last + wait_after(k, f.count)).checked_duration_since(now)
            })
            .max();
        match wait {
            Some(w) if !w.is_zero() => Err(w),
            _ => Ok(()),
        }
    }

    pub(super) fn failed(&self, name: &str, from: IpAddr) {
        let mut failures = self.failures.lock();
        let now = Instant::now();
        if failures.len() > 100_000 {
            failures.retain(|_, f| now.duration_since(f.last) < MAX_WAIT);
        }
        for k in keys(name, from) {
            let f = failures.entry(k).or_insert(Failures {
                count: 0,
                last: now,
            });
            if now.duration_since(f.last) >= MAX_WAIT {
                f.count = 0;
            }
            f.count += 1;
            f.last = now;
        }
    }

    pub(super) fn succeeded(&self, name: &str, from: IpAddr) {
        let mut failures = self.failures.lock();
        let [name_from, _, name] = keys(name, from);
        failures.remove(&name_from);
        failures.remove(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_start_after_the_allowance_and_are_per_name_and_address() {
        let t = LoginThrottle::default();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..5 {
            assert!(t.check("admin", a).is_ok());
            t.failed("admin", a);
        }
        let wait = t.check("admin", a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(2),
            "{wait:?}"
        );
        assert!(
            t.check("ADMIN", a).is_err(),
            "names are compared without case"
        );
        assert!(
            t.check("admin", b).is_ok(),
            "another address is not held up"
        );
        assert!(
            t.check("alice", a).is_ok(),
            "nor another name from this one"
        );
        // A spray of names from one address.
        for i in 0..20 {
            t.failed(&format!("user{i}"), b);
        }
        assert!(t.check("someone-else", b).is_err());
        t.succeeded("admin", a);
        assert!(t.check("admin", a).is_ok());
    }

    #[test]
    fn waits_double_and_are_capped() {
        let k = Key::NameFrom("x".into(), [10, 0, 0, 1].into());
        assert_eq!(wait_after(&k, 4), Duration::ZERO);
        assert_eq!(wait_after(&k, 5), Duration::from_secs(2));
        assert_eq!(wait_after(&k, 6), Duration::from_secs(4));
        assert_eq!(wait_after(&k, 1000), MAX_WAIT);
    }
}
