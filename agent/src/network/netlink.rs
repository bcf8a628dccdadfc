//! The kernel seam of the data path: links, addresses, routes and VXLAN forwarding entries
//! through rtnetlink, in one network namespace.
//!
//! A [`Netlink`] talks to the namespace it was opened in: the route socket is created on a
//! thread inside that namespace ([`super::netns::run_in`]) and keeps belonging to it, while
//! requests go out from the daemon's async tasks. Every "ensure" call is idempotent, so a
//! restarted agent converges on what is already there.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

use super::NetworkError;

const EEXIST: i32 = 17;
const ENOENT: i32 = 2;
const ENODEV: i32 = 19;

/// The errno of a netlink refusal, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn fail(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

/// An rtnetlink handle bound to one network namespace.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A handle on the namespace bound at `path` (`None`: the daemon's own). Needs a tokio
    /// runtime: the connection runs as a task on it until the last clone is dropped.
    pub fn open(path: Option<&Path>) -> Result<Netlink, NetworkError> {
        let what = format!("opening a route socket in {path:?}");
        // The socket registers with this runtime's reactor from the namespace's thread.
        let runtime = tokio::runtime::Handle::current();
        let (conn, handle, _) = super::netns::run_in(path, move || {
            let _entered = runtime.enter();
            rtnetlink::new_connection()
        })
        .map_err(|source| NetworkError::Io {
            what: what.clone(),
            source,
        })?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The index of link `name`, if it exists.
    pub async fn index(&self, name: &str) -> Result<Option<u32>, NetworkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(l)) => Ok(Some(l.header.index)),
            Ok(None) => Ok(None),
            Err(e) if matches!(errno(&e), Some(ENODEV | ENOENT)) => Ok(None),
            Err(e) => Err(fail(format!("looking up link {name}"))(e)),
        }
    }

    /// Every link whose name starts with `prefix`, as (name, index).
    pub async fn links_with_prefix(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, u32)>, NetworkError> {
        let links: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(fail("listing links"))?;
        Ok(links
            .into_iter()
            .filter_map(|l| {
                let name = l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                })?;
                name.starts_with(prefix).then_some((name, l.header.index))
            })
            .collect())
    }

    async fn add(&self, what: &str, msg: LinkMessage) -> Result<(), NetworkError> {
        match self.handle.link().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(fail(what)(e)),
        }
    }

    async fn set(&self, what: &str, msg: LinkMessage) -> Result<(), NetworkError> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(fail(what))
    }

    async fn must_index(&self, name: &str) -> Result<u32, NetworkError> {
        self.index(name)
            .await?
            .ok_or_else(|| NetworkError::Missing(format!("link {name}")))
    }

    /// A bridge `name` with MAC `mac` and MTU `mtu`, up, holding `addr/prefix`.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        mac: [u8; 6],
        addr: Option<(Ipv4Addr, u8)>,
        mtu: u32,
    ) -> Result<u32, NetworkError> {
        if self.index(name).await?.is_none() {
            self.add(
                &format!("creating bridge {name}"),
                LinkBridge::new(name).mtu(mtu).address(mac.to_vec()).build(),
            )
            .await?;
        }
        let index = self.must_index(name).await?;
        if let Some((ip, prefix)) = addr {
            self.add_address(index, ip, prefix).await?;
        }
        self.set(
            &format!("bringing up {name}"),
            LinkUnspec::new_with_index(index).up().build(),
        )
        .await?;
        Ok(index)
    }

    /// A VXLAN device `name` for `vni` on UDP `port` from `local`, without learning (entries
    /// come from the store), enslaved to bridge `bridge` and up.
    pub async fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        port: u16,
        local: Option<Ipv4Addr>,
        bridge: u32,
        mtu: u32,
    ) -> Result<u32, NetworkError> {
        if self.index(name).await?.is_none() {
            let mut b = LinkVxlan::new(name, vni)
                .port(port)
                .learning(false)
                .mtu(mtu);
            if let Some(l) = local {
                b = b.local(l);
            }
            self.add(&format!("creating vxlan {name}"), b.build())
                .await?;
        }
        let index = self.must_index(name).await?;
        self.set(
            &format!("attaching {name}"),
            LinkUnspec::new_with_index(index)
                .controller(bridge)
                .up()
                .build(),
        )
        .await?;
        Ok(index)
    }

    fn fdb_message(vxlan: u32, mac: [u8; 6], dst: Ipv4Addr) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = vxlan;
        m.header.state = NeighbourState::Permanent;
        m.header.flags = NeighbourFlags::Own;
        m.header.kind = RouteType::Unspec;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        m
    }

    async fn neighbour_request(
        &self,
        what: String,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), NetworkError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut handle = self.handle.clone();
        let mut response = handle.request(req).map_err(fail(what.clone()))?;
        while let Some(message) = futures::StreamExt::next(&mut response).await {
            if let NetlinkPayload::Error(err) = message.payload
                && err.code.is_some()
            {
                let e = rtnetlink::Error::NetlinkError(err);
                if matches!(errno(&e), Some(EEXIST | ENOENT)) {
                    return Ok(());
                }
                return Err(fail(what)(e));
            }
        }
        Ok(())
    }

    /// Appends the forwarding entry `mac → dst` to VXLAN device `vxlan` (the all-zero MAC is
    /// the flood list: broadcast and unknown traffic go to every such `dst`).
    pub async fn fdb_append(
        &self,
        vxlan: u32,
        mac: [u8; 6],
        dst: Ipv4Addr,
    ) -> Result<(), NetworkError> {
        self.neighbour_request(
            format!("adding forwarding entry {mac:02x?} via {dst}"),
            RouteNetlinkMessage::NewNeighbour(Self::fdb_message(vxlan, mac, dst)),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
        )
        .await
    }

    /// Removes the forwarding entry `mac → dst` from `vxlan` (missing is fine).
    pub async fn fdb_delete(
        &self,
        vxlan: u32,
        mac: [u8; 6],
        dst: Ipv4Addr,
    ) -> Result<(), NetworkError> {
        self.neighbour_request(
            format!("removing forwarding entry {mac:02x?} via {dst}"),
            RouteNetlinkMessage::DelNeighbour(Self::fdb_message(vxlan, mac, dst)),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .await
    }

    /// Adds `ip/prefix` to link `index` (present already is fine).
    pub async fn add_address(
        &self,
        index: u32,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetworkError> {
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(fail(format!("adding address {ip}/{prefix}"))(e)),
        }
    }

    /// Brings link `index` up.
    pub async fn up(&self, index: u32) -> Result<(), NetworkError> {
        self.set(
            &format!("bringing up link {index}"),
            LinkUnspec::new_with_index(index).up().build(),
        )
        .await
    }

    /// A veth pair `host` ↔ `peer` with MTU `mtu`, `host` up (and enslaved to `bridge` if
    /// given), and `peer` moved into the namespace bound at `netns`.
    pub async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        mtu: u32,
        bridge: Option<u32>,
        netns: &Path,
    ) -> Result<(), NetworkError> {
        if self.index(host).await?.is_none() {
            self.add(
                &format!("creating veth {host}"),
                LinkVeth::new(host, peer).mtu(mtu).build(),
            )
            .await?;
        }
        let h = self.must_index(host).await?;
        let mut link = LinkUnspec::new_with_index(h).up();
        if let Some(b) = bridge {
            link = link.controller(b);
        }
        self.set(&format!("attaching {host}"), link.build()).await?;
        if let Some(p) = self.index(peer).await? {
            let ns = std::fs::File::open(netns).map_err(|source| NetworkError::Io {
                what: format!("opening {netns:?}"),
                source,
            })?;
            self.set(
                &format!("moving {peer} into the container"),
                LinkUnspec::new_with_index(p)
                    .setns_by_fd(ns.as_raw_fd())
                    .build(),
            )
            .await?;
        }
        Ok(())
    }

    /// Renames link `from` to `to`, gives it `mac` and `mtu`, and brings it up; returns its
    /// index (nothing to do when `to` exists already).
    pub async fn rename_up(
        &self,
        from: &str,
        to: &str,
        mac: [u8; 6],
        mtu: u32,
    ) -> Result<u32, NetworkError> {
        if let Some(i) = self.index(to).await? {
            return Ok(i);
        }
        let index = self.must_index(from).await?;
        self.set(
            &format!("configuring {to}"),
            LinkUnspec::new_with_index(index)
                .name(to.to_owned())
                .address(mac.to_vec())
                .mtu(mtu)
                .build(),
        )
        .await?;
        self.up(index).await?;
        Ok(index)
    }

    /// A default route via `gateway` on link `index` (present already is fine).
    pub async fn default_route(&self, gateway: Ipv4Addr, index: u32) -> Result<(), NetworkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(index)
            .build();
        match self.handle.route().add(route).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(fail(format!("adding the default route via {gateway}"))(e)),
        }
    }

    /// Deletes link `name` (missing is fine).
    pub async fn delete(&self, name: &str) -> Result<(), NetworkError> {
        let Some(index) = self.index(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(ENODEV | ENOENT)) => Ok(()),
            Err(e) => Err(fail(format!("deleting link {name}"))(e)),
        }
    }
}
