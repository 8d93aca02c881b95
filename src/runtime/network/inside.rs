//! Configuring a container's end of the network from inside its namespace with
//! the classic interface ioctls, from a thread that joined the namespace: no `ip`
//! process on the start path of every container.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Brings `lo` and `ifname` up in the network namespace at `netns`, gives
/// `ifname` `address/prefix_len` and routes everything else via `gateway`:
/// what `ip -n NS` with `link set lo up`, `addr replace`, `link set up` and
/// `route replace default via` does.
pub fn configure(netns: &Path, ifname: &str, address: Ipv4Addr, prefix_len: u8, gateway: Ipv4Addr) -> io::Result<()> {
    let ifname = std::ffi::CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let ifname = ifname.as_c_str();
    let ns = File::open(netns)?;
    // A thread of its own: setns(CLONE_NEWNET) moves only the calling thread, and
    // this one ends with its work, so no other thread ever runs in the namespace.
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: `ns` is an open namespace file; only this thread is moved.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // The socket belongs to the namespace of the thread that makes it.
            // SAFETY: plain socket(2); the result is checked before use.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor that nothing else owns.
            let sock = unsafe { OwnedFd::from_raw_fd(fd) };
            set_up(&sock, c"lo")?;
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
            set_addr(&sock, ifname, libc::SIOCSIFADDR, address)?;
            set_addr(&sock, ifname, libc::SIOCSIFNETMASK, Ipv4Addr::from(mask))?;
            set_up(&sock, ifname)?;
            default_route(&sock, gateway)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

fn ifreq(name: &CStr) -> io::Result<libc::ifreq> {
    let bytes = name.to_bytes_with_nul();
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if bytes.len() > req.ifr_name.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name too long"));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    Ok(req)
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads the
    // family and then the IPv4 fields.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl<T>(sock: &OwnedFd, request: libc::Ioctl, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is the struct this request reads (and may write), valid for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), request, arg as *mut T) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_up(sock: &OwnedFd, name: &CStr) -> io::Result<()> {
    let mut req = ifreq(name)?;
    ioctl(sock, libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(sock, libc::SIOCSIFFLAGS, &mut req)
}

fn set_addr(sock: &OwnedFd, name: &CStr, request: libc::Ioctl, addr: Ipv4Addr) -> io::Result<()> {
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr(addr);
    ioctl(sock, request, &mut req)
}

fn default_route(sock: &OwnedFd, gateway: Ipv4Addr) -> io::Result<()> {
    // SAFETY: rtentry is plain data; all zeroes is a valid value (no device name).
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr(gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    match ioctl(sock, libc::SIOCADDRT, &mut rt) {
        // Already there (a re-attach): the same route, as `route replace` leaves it.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}
