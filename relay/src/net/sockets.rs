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
    let span = (max - min) as u32 + 1;
    let start = rand::random::<u32>() % span;
    // Random start, then linear probing: finds a free port in a nearly full range too,
    // bounded by the size of the range.
    let tries = span.min(4096);
    let mut last = io::Error::new(io::ErrorKind::AddrInUse, "relay port range exhausted");
    for i in 0..tries {
        let port = min + ((start + i * 7919) % span) as u16;
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
