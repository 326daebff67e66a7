//! Two network namespaces joined by a veth pair, for daemons that must talk over a real
//! network link: each end has an address only the namespaces reach (traffic to it from
//! the root namespace would leave the machine by its default route, so nothing in the
//! root namespace sends any). Both namespaces go when the pair drops, even after a
//! failed test.
#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The namespaces and the addresses of their ends of the link.
pub struct NetPair {
    pub names: [String; 2],
    pub addrs: [String; 2],
    /// The two ends of the link, one in each namespace.
    links: [String; 2],
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .output()
        .is_ok_and(|out| out.status.success())
}

impl NetPair {
    /// Makes the pair, or `None` where this machine cannot (not root, no `ip`).
    pub fn create() -> Option<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{:x}{n}", pid % 0xffff);
        let names = [format!("hca{tag}"), format!("hcb{tag}")];
        let subnet = format!("10.{}.{}", 200 + (n % 50), pid % 250);
        let addrs = [format!("{subnet}.1"), format!("{subnet}.2")];
        let veth = [format!("va{tag}"), format!("vb{tag}")];
        let pair = Self {
            names: names.clone(),
            addrs: addrs.clone(),
            links: veth.clone(),
        };
        let made = ip(&["netns", "add", &names[0]])
            && ip(&["netns", "add", &names[1]])
            && ip(&[
                "link", "add", &veth[0], "netns", &names[0], "type", "veth", "peer", "name",
                &veth[1], "netns", &names[1],
            ])
            && (0..2).all(|i| {
                let ns = &names[i];
                ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{}/24", addrs[i]),
                    "dev",
                    &veth[i],
                ]) && ip(&["-n", ns, "link", "set", &veth[i], "up"])
                    && ip(&["-n", ns, "link", "set", "lo", "up"])
            });
        // On failure the drop removes what was made.
        made.then_some(pair)
    }
}

impl NetPair {
    /// Cuts the link: both its ends go down, and whatever is sent across is lost.
    pub fn cut(&self) {
        for (name, link) in self.names.iter().zip(&self.links) {
            assert!(
                ip(&["-n", name, "link", "set", link, "down"]),
                "cannot cut {link}"
            );
        }
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for name in &self.names {
            ip(&["netns", "del", name]);
        }
    }
}
