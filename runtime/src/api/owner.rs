//! Who owns the other end of a TCP connection from this machine: one exact
//! `sock_diag` query to the kernel (`NETLINK_SOCK_DIAG`, what `ss` uses)
//! for the client's socket, by its addresses and ports.
//!
//! Reading `/proc/net/tcp` instead costs a parse of every TCP socket on the
//! machine per connection: under a flood of local connections the table
//! grows with the flood, and accepting slowed to about a hundred a second.

use std::net::{IpAddr, SocketAddr};

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr as NetlinkAddr};

/// The uid owning the client's end of a TCP connection that this machine
/// made to `local` from `peer` (the socket whose own address is `peer` and
/// remote address `local`). `None` if the kernel does not know it (gone
/// already) or cannot be asked.
pub fn local_uid(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let unmap = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    };
    // A client that connected over IPv4 to a listener on `::` is seen with
    // mapped addresses, but its own socket is an IPv4 one.
    query(unmap(local), unmap(peer))
        .or_else(|| (unmap(peer) != peer).then(|| query(local, peer)).flatten())
}

fn query(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let family = match peer.ip() {
        IpAddr::V4(_) => AF_INET,
        IpAddr::V6(_) => AF_INET6,
    };
    let mut header = NetlinkHeader::default();
    // No NLM_F_DUMP: the one socket with exactly these addresses.
    header.flags = NLM_F_REQUEST;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: SocketId {
                source_port: peer.port(),
                destination_port: local.port(),
                source_address: peer.ip(),
                destination_address: local.ip(),
                interface_id: 0,
                // INET_DIAG_NOCOOKIE: match by addresses alone.
                cookie: [0xff; 8],
            },
        })
        .into(),
    );
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);

    let mut socket = Socket::new(NETLINK_SOCK_DIAG).ok()?;
    socket.bind_auto().ok()?;
    socket.connect(&NetlinkAddr::new(0, 0)).ok()?;
    socket.send(&bytes, 0).ok()?;
    let mut answer = vec![0; 8192];
    let size = socket.recv(&mut &mut answer[..], 0).ok()?;
    let message = NetlinkMessage::<SockDiagMessage>::deserialize(&answer[..size]).ok()?;
    match message.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
            Some(response.header.uid)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_of_a_local_connection_is_this_process_s_user() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        // SAFETY: getuid has no preconditions.
        let me = unsafe { libc::getuid() };
        assert_eq!(local_uid(listener.local_addr().unwrap(), peer), Some(me));
        // No such connection: nobody's.
        let nowhere = SocketAddr::from(([127, 0, 0, 1], 1));
        assert_eq!(local_uid(listener.local_addr().unwrap(), nowhere), None);
    }
}
