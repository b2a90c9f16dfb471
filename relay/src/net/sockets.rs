//! Socket creation: SO_REUSEPORT listeners and relay sockets from the configured port range.

use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// Receive/send buffer asked of the kernel for listener sockets (it may grant less).
const LISTENER_BUFFER: usize = 8 << 20;

fn new_socket(addr: SocketAddr, ty: Type, proto: Protocol) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

/// `count` UDP sockets bound to the same address with SO_REUSEPORT (port 0: the first picks
/// the port, the rest join it).
pub fn reuseport_udp(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let s = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
        s.set_reuse_port(true)?;
        let _ = s.set_recv_buffer_size(LISTENER_BUFFER);
        let _ = s.set_send_buffer_size(LISTENER_BUFFER);
        s.bind(&addr.into())?;
        addr = s.local_addr()?.as_socket().expect("inet socket");
        out.push(s.into());
    }
    Ok(out)
}

/// `count` TCP listeners on the same address with SO_REUSEPORT.
pub fn reuseport_tcp(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count {
        let s = new_socket(addr, Type::STREAM, Protocol::TCP)?;
        s.set_reuse_port(true)?;
        s.set_reuse_address(true)?;
        s.set_tcp_nodelay(true)?;
        s.bind(&addr.into())?;
        s.listen(1024)?;
        addr = s.local_addr()?.as_socket().expect("inet socket");
        out.push(s.into());
    }
    Ok(out)
}

/// Binds a relay socket on `ip` to a random free port of `min..=max`.
pub fn relay_socket(ip: IpAddr, min: u16, max: u16) -> io::Result<std::net::UdpSocket> {
    let mut last = io::Error::new(io::ErrorKind::AddrInUse, "relay port range exhausted");
    for port in probe_order(min, max, rand::random()).take(4096) {
        let addr = SocketAddr::new(ip, port);
        let s = new_socket(addr, Type::DGRAM, Protocol::UDP)?;
        match s.bind(&addr.into()) {
            Ok(()) => return Ok(s.into()),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Every port of `min..=max` once, starting at a random one: random start spreads
/// allocations, linear probing finds the free ports of a nearly full range.
fn probe_order(min: u16, max: u16, seed: u32) -> impl Iterator<Item = u16> {
    let span = (max as u32).saturating_sub(min as u32) + 1;
    let start = seed % span;
    (0..span).map(move |i| min + ((start + i) % span) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_order_visits_every_port_once() {
        for (min, max) in [
            (49152, 65535),
            (40000, 40000 + 2 * 7919 - 1),
            (5000, 5003),
            (1, 65535),
        ] {
            for seed in [0, 1, 12345, u32::MAX] {
                let mut ports: Vec<u16> = probe_order(min, max, seed).collect();
                assert_eq!(ports.len(), (max - min) as usize + 1);
                ports.sort_unstable();
                ports.dedup();
                assert_eq!(ports.len(), (max - min) as usize + 1);
                assert_eq!((ports[0], *ports.last().unwrap()), (min, max));
            }
        }
    }

    #[test]
    fn relay_socket_binds_inside_the_range() {
        let s = relay_socket("127.0.0.1".parse().unwrap(), 45000, 45999).unwrap();
        let port = s.local_addr().unwrap().port();
        assert!((45000..=45999).contains(&port), "{port}");
    }
}
