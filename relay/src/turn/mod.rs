//! A sans-IO TURN server (RFC 8656, with RFC 6156 IPv6 and dual allocations).
//!
//! [`Server`] is a value: the driver feeds it datagrams/frames from clients
//! ([`Server::handle_client_packet`]) and from peers ([`Server::handle_peer_packet`]), tells it
//! when relay sockets are bound ([`Server::relay_bound`]) and when time passes
//! ([`Server::handle_timeout`]); it answers with where to forward data and a queue of
//! [`Command`]s (send these bytes, bind or close a relay socket). It never touches a socket
//! or reads a clock, so every behaviour is unit-tested with a fake clock.
//!
//! The ChannelData paths in both directions do not allocate.

mod allocation;
pub mod auth;
mod handlers;
pub mod policy;
pub mod quota;
pub mod ratelimit;
mod server;
pub mod stats;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;

pub use server::{
    Clock, Command, Server, ServerConfig, Shared, ToClient, ToPeer, HEADROOM, TAILROOM,
};

/// The transport a client reached the server over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// A client's 5-tuple as the server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr {
    pub transport: Transport,
    /// The server's listening address the client talks to.
    pub local: SocketAddr,
    /// The client's address.
    pub remote: SocketAddr,
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: &SocketAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    fn code(self) -> u8 {
        match self {
            Family::V4 => crate::stun::attr::FAMILY_IPV4,
            Family::V6 => crate::stun::attr::FAMILY_IPV6,
        }
    }
}

/// A relay socket, named by the core; the driver maps it to a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub u64);
