//! berth's nftables table: outbound NAT for the pool and isolation between projects.
//!
//! One `inet` table of berth's own, replaced whole in one `nft -f` transaction
//! whenever the set of bridges changes, so it is never seen half-written and never
//! touches another table's rules:
//!
//! - `forward` (filter hook, policy accept, so the host's own forwarding is left
//!   alone): established and related traffic passes; traffic that enters and leaves
//!   the same project bridge passes (it is seen here when `br_netfilter` is loaded,
//!   as Docker hosts have it); any other traffic between two berth bridges is
//!   dropped. nftables cannot compare `iifname` with `oifname`, hence one accept
//!   rule per bridge.
//! - `postrouting` (nat hook): traffic from the pool leaving through anything but a
//!   berth bridge is masqueraded.

use super::addr::Ipv4Net;

/// The script that (re)creates the table for these bridges.
pub(super) fn render(table: &str, pool: Ipv4Net, bridge_prefix: &str, bridges: &[String]) -> String {
    let mut s = teardown(table);
    s.push_str(&format!("table inet {table} {{\n"));
    s.push_str("\tchain forward {\n");
    s.push_str("\t\ttype filter hook forward priority filter; policy accept;\n");
    s.push_str("\t\tct state established,related accept\n");
    for b in bridges {
        s.push_str(&format!("\t\tiifname \"{b}\" oifname \"{b}\" accept\n"));
    }
    s.push_str(&format!("\t\tiifname \"{bridge_prefix}*\" oifname \"{bridge_prefix}*\" drop\n"));
    s.push_str("\t}\n");
    s.push_str("\tchain postrouting {\n");
    s.push_str("\t\ttype nat hook postrouting priority srcnat; policy accept;\n");
    s.push_str(&format!("\t\tip saddr {pool} oifname != \"{bridge_prefix}*\" masquerade\n"));
    s.push_str("\t}\n");
    s.push_str("}\n");
    s
}

/// The script that removes the table; it succeeds whether or not the table exists
/// (declaring an empty table first makes the delete always find one).
pub(super) fn teardown(table: &str) -> String {
    format!("table inet {table} {{}}\ndelete table inet {table}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_isolation_and_nat() {
        let pool: Ipv4Net = "10.213.0.0/16".parse().unwrap();
        let s = render("berth", pool, "berth-", &["berth-0".into(), "berth-3".into()]);
        let expected = "table inet berth {}
delete table inet berth
table inet berth {
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established,related accept
\t\tiifname \"berth-0\" oifname \"berth-0\" accept
\t\tiifname \"berth-3\" oifname \"berth-3\" accept
\t\tiifname \"berth-*\" oifname \"berth-*\" drop
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 10.213.0.0/16 oifname != \"berth-*\" masquerade
\t}
}
";
        assert_eq!(s, expected);
        assert_eq!(teardown("t_x"), "table inet t_x {}\ndelete table inet t_x\n");
    }
}
