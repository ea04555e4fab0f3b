//! Real network faults for the fault campaign (issue #12): the kernel's traffic control on the loopback device of a
//! private network namespace, aimed at one link at a time.
//!
//! The agent reaches the source, the destination and the coordinator through [`Relay`]s, small TCP forwarders on
//! loopback ports of their own. [`Links`] installs an HTB qdisc on `lo` with one class per relay port (u32 filters on
//! the port, both directions), so a fault on a link delays, drops or blackholes the agent's packets on that link
//! only: the application keeps writing to the source and the operator keeps talking to the coordinator. The kernel
//! here has no `netem`, so the faults are built from the qdiscs it has: `blackhole` (every packet dropped), and HTB
//! rate limits with short queues (queueing delay of seconds, and tail drops: real loss that TCP retransmits).
//!
//! Everything stays on 127.0.0.0/8 (the rule of these machines), and [`Links::install`] refuses to touch `lo`
//! outside a private network namespace (`scripts/chaos` creates one with `unshare --net`).

use std::net::SocketAddr;
use std::process::Command;

use anyhow::{bail, Context};
use tokio::net::{TcpListener, TcpStream};

/// A TCP forwarder from a loopback port of its own to `target`; every accepted connection gets its own upstream
/// connection. Stops accepting when dropped.
pub struct Relay {
    addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    // Out of file descriptors or the like: back off instead of spinning.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut upstream).await;
                });
            }
        });
        Ok(Self { addr, accept })
    }

    /// Where clients of the relay connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// What a link suffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFault {
    /// Every packet dropped, both ways (a partition).
    Blackhole,
    /// 512 kbit/s with a 256 KiB queue: seconds of queueing delay under load.
    Slow,
    /// 2 Mbit/s with a 3-packet queue: bursts are dropped and retransmitted.
    Lossy,
}

/// One faultable link: the HTB class that the relay port's packets go through.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    class: u16,
    pub port: u16,
}

/// The traffic-control setup of the namespace's `lo`.
pub struct Links {
    next_class: u16,
}

const UNLIMITED: &str = "10gbit";

fn tc(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("tc")
        .args(args)
        .output()
        .context("running tc (iproute2)")?;
    if !out.status.success() {
        bail!(
            "tc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this process runs in a network namespace of its own: a fresh one (`unshare --net`) has no interface but
/// `lo`, so its traffic control touches nothing of the host's.
pub fn in_private_netns() -> bool {
    let Ok(dev) = std::fs::read_to_string("/proc/self/net/dev") else {
        return false;
    };
    let interfaces: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    interfaces == ["lo"]
}

impl Links {
    /// Resets `lo`'s qdisc to an HTB whose default class is unlimited. Refuses outside a private network namespace.
    pub fn install() -> anyhow::Result<Self> {
        if !in_private_netns() {
            bail!("refusing to change the loopback device's traffic control outside a private network namespace (run through scripts/chaos, which creates one)");
        }
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .context("running ip (iproute2)")?;
        if !up.success() {
            bail!("ip link set lo up failed");
        }
        // No root qdisc yet is fine.
        let _ = tc(&["qdisc", "del", "dev", "lo", "root"]);
        tc(&[
            "qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "1", "r2q",
            "1000",
        ])?;
        tc(&[
            "class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate",
            UNLIMITED, "quantum", "60000",
        ])?;
        Ok(Self { next_class: 2 })
    }

    /// A new link for the packets to and from `port`, healthy.
    pub fn add(&mut self, port: u16) -> anyhow::Result<Link> {
        let link = Link {
            class: self.next_class,
            port,
        };
        self.next_class += 1;
        let classid = format!("1:{}", link.class);
        tc(&[
            "class", "add", "dev", "lo", "parent", "1:", "classid", &classid, "htb", "rate",
            UNLIMITED, "quantum", "60000",
        ])?;
        tc(&[
            "qdisc",
            "add",
            "dev",
            "lo",
            "parent",
            &classid,
            "handle",
            &leaf(link),
            "pfifo",
        ])?;
        let port = port.to_string();
        for field in ["sport", "dport"] {
            tc(&[
                "filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                "match", "ip", field, &port, "0xffff", "flowid", &classid,
            ])?;
        }
        Ok(link)
    }

    /// Puts `fault` on the link (None: healthy again).
    pub fn set(&self, link: Link, fault: Option<LinkFault>) -> anyhow::Result<()> {
        let classid = format!("1:{}", link.class);
        let (rate, qdisc): (&str, &[&str]) = match fault {
            None => (UNLIMITED, &["pfifo"]),
            Some(LinkFault::Blackhole) => (UNLIMITED, &["blackhole"]),
            Some(LinkFault::Slow) => ("512kbit", &["bfifo", "limit", "262144"]),
            Some(LinkFault::Lossy) => ("2mbit", &["pfifo", "limit", "3"]),
        };
        tc(&[
            "class", "change", "dev", "lo", "parent", "1:", "classid", &classid, "htb", "rate",
            rate, "quantum", "60000",
        ])?;
        // A leaf qdisc cannot change kind in place: replace it.
        tc(&["qdisc", "del", "dev", "lo", "parent", &classid])?;
        let handle = leaf(link);
        let mut args = vec![
            "qdisc", "add", "dev", "lo", "parent", &classid, "handle", &handle,
        ];
        args.extend_from_slice(qdisc);
        tc(&args)
    }
}

fn leaf(link: Link) -> String {
    format!("{:x}:", 0x100 + u32::from(link.class))
}
