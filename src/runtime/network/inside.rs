//! Configuring a container's end of the network from inside its namespace with
//! the classic interface ioctls, from a thread that joined the namespace: no `ip`
//! process on the start path of every container.
//!
//! The request structs are built here as plain bytes in the kernel's layout, so
//! only the `ioctl` call itself is `unsafe` (no wrapper crate covers these
//! requests; see adr/011).

use std::ffi::{c_ulong, c_void};
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::thread::LinkNameSpaceType;

/// Brings `lo` and `ifname` up in the network namespace at `netns`, gives
/// `ifname` `address/prefix_len` and routes everything else via `gateway`:
/// what `ip -n NS` with `link set lo up`, `addr replace`, `link set up` and
/// `route replace default via` does.
pub fn configure(netns: &Path, ifname: &str, address: Ipv4Addr, prefix_len: u8, gateway: Ipv4Addr) -> io::Result<()> {
    let ns = File::open(netns)?;
    // A thread of its own: setns(CLONE_NEWNET) moves only the calling thread, and
    // this one ends with its work, so no other thread ever runs in the namespace.
    std::thread::scope(|s| {
        s.spawn(|| {
            rustix::thread::move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))?;
            // The socket belongs to the namespace of the thread that makes it.
            let sock = rustix::net::socket_with(AddressFamily::INET, SocketType::DGRAM, SocketFlags::CLOEXEC, None)?;
            let sock = sock.as_fd();
            set_up(sock, "lo")?;
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
            ioctl(sock, Request::SetAddr(&mut IfReq::with_addr(ifname, address)?))?;
            ioctl(sock, Request::SetNetmask(&mut IfReq::with_addr(ifname, Ipv4Addr::from(mask))?))?;
            set_up(sock, ifname)?;
            default_route(sock, gateway)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

/// `struct sockaddr_in` as the kernel reads it: family, port, address, zeroes.
fn sockaddr(addr: Ipv4Addr) -> [u8; 16] {
    let mut sa = [0u8; 16];
    sa[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
    sa[4..8].copy_from_slice(&addr.octets());
    sa
}

/// `struct ifreq`: an interface name and a union the size of its largest member
/// (`struct ifmap`); the requests here use its first 2 (flags) or 16 (an
/// address) bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> io::Result<IfReq> {
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
        // Room for the terminating NUL, which the zeroes already hold.
        if name.len() >= req.name.len() || name.contains('\0') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"));
        }
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        Ok(req)
    }

    fn with_addr(name: &str, addr: Ipv4Addr) -> io::Result<IfReq> {
        let mut req = IfReq::new(name)?;
        req.data[..16].copy_from_slice(&sockaddr(addr));
        Ok(req)
    }

    fn flags(&self) -> i16 {
        i16::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_flags(&mut self, flags: i16) {
        self.data[..2].copy_from_slice(&flags.to_ne_bytes());
    }
}

/// The kernel's `struct rtentry` (`<linux/route.h>`); the pointers (`rt_pad4`,
/// `rt_dev`) are left null, as address-sized zeroes.
#[repr(C)]
struct RtEntry {
    pad1: c_ulong,
    dst: [u8; 16],
    gateway: [u8; 16],
    genmask: [u8; 16],
    flags: u16,
    pad2: i16,
    pad3: c_ulong,
    pad4: usize,
    metric: i16,
    dev: usize,
    mtu: c_ulong,
    window: c_ulong,
    irtt: u16,
}

/// The requests this module makes, each with the struct the kernel reads (and,
/// for `GetFlags`, writes) for it: the pairing is what makes [`ioctl`] sound.
enum Request<'a> {
    GetFlags(&'a mut IfReq),
    SetFlags(&'a mut IfReq),
    SetAddr(&'a mut IfReq),
    SetNetmask(&'a mut IfReq),
    AddRoute(&'a mut RtEntry),
}

fn ioctl(sock: BorrowedFd<'_>, request: Request<'_>) -> io::Result<()> {
    let (code, arg): (libc::Ioctl, *mut c_void) = match request {
        Request::GetFlags(r) => (libc::SIOCGIFFLAGS, std::ptr::from_mut(r).cast()),
        Request::SetFlags(r) => (libc::SIOCSIFFLAGS, std::ptr::from_mut(r).cast()),
        Request::SetAddr(r) => (libc::SIOCSIFADDR, std::ptr::from_mut(r).cast()),
        Request::SetNetmask(r) => (libc::SIOCSIFNETMASK, std::ptr::from_mut(r).cast()),
        Request::AddRoute(r) => (libc::SIOCADDRT, std::ptr::from_mut(r).cast()),
    };
    // SAFETY: `sock` is an open socket; each request code is paired above with a
    // mutable borrow of the struct it takes, in the kernel's layout and at least
    // its size, valid for the whole call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), code, arg) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_up(sock: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    let mut req = IfReq::new(name)?;
    ioctl(sock, Request::GetFlags(&mut req))?;
    req.set_flags(req.flags() | libc::IFF_UP as i16);
    ioctl(sock, Request::SetFlags(&mut req))
}

fn default_route(sock: BorrowedFd<'_>, gateway: Ipv4Addr) -> io::Result<()> {
    let mut rt = RtEntry {
        pad1: 0,
        dst: sockaddr(Ipv4Addr::UNSPECIFIED),
        gateway: sockaddr(gateway),
        genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
        flags: libc::RTF_UP | libc::RTF_GATEWAY,
        pad2: 0,
        pad3: 0,
        pad4: 0,
        metric: 0,
        dev: 0,
        mtu: 0,
        window: 0,
        irtt: 0,
    };
    match ioctl(sock, Request::AddRoute(&mut rt)) {
        // Already there (a re-attach): the same route, as `route replace` leaves it.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The structs match the C ones the kernel reads, field for field.
    #[test]
    fn request_structs_have_the_kernel_layout() {
        assert_eq!(size_of::<IfReq>(), size_of::<libc::ifreq>());
        assert_eq!(size_of::<RtEntry>(), size_of::<libc::rtentry>());
        assert_eq!(std::mem::offset_of!(RtEntry, flags), std::mem::offset_of!(libc::rtentry, rt_flags));
        assert_eq!(std::mem::offset_of!(RtEntry, metric), std::mem::offset_of!(libc::rtentry, rt_metric));
        assert_eq!(std::mem::offset_of!(RtEntry, dev), std::mem::offset_of!(libc::rtentry, rt_dev));
        assert_eq!(std::mem::offset_of!(RtEntry, irtt), std::mem::offset_of!(libc::rtentry, rt_irtt));
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes([10, 1, 2, 3]) },
            sin_zero: [0; 8],
        };
        let mut c = [0u8; 16];
        c[..2].copy_from_slice(&sin.sin_family.to_ne_bytes());
        c[4..8].copy_from_slice(&sin.sin_addr.s_addr.to_ne_bytes());
        assert_eq!(sockaddr(Ipv4Addr::new(10, 1, 2, 3)), c);
    }

    #[test]
    fn interface_names_must_fit() {
        assert!(IfReq::new("eth0").is_ok_and(|r| &r.name[..5] == b"eth0\0"));
        assert!(IfReq::new("fifteen-chars-x").is_ok());
        assert!(IfReq::new("sixteen-chars-xx").is_err());
        assert!(IfReq::new("nul\0").is_err());
    }
}
