//! Partitions with nftables: DROP rules between node addresses, in a table
//! of the runner's own (`inet raft_chaos_<subnet>`), which it creates at
//! start, flushes to heal, and deletes at the end, also when the run fails
//! or is interrupted (the [`Drop`] implementation). No other rule of the
//! machine is touched.
//!
//! Rules match source and destination addresses in the `output` hook,
//! which every loopback packet passes: both directions of every cut pair
//! are dropped, QUIC between peers and HTTP forwarded between nodes alike.
//! The chaos clients connect from 127.0.0.1, which is never a node
//! address, so they keep reaching every node and see the partition only
//! through the cluster's behaviour.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Why a firewall operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    /// `nft` is not installed.
    #[error(
        "nft is not available ({0}); install it with `apt-get install -y nftables` or run without partitions"
    )]
    Missing(std::io::Error),
    /// `nft` refused the rules.
    #[error("nft failed: {0}")]
    Refused(String),
}

/// The runner's nftables table.
pub struct Firewall {
    table: String,
}

impl Firewall {
    /// Creates the table (deleting a leftover of an earlier run with the
    /// same subnet first) with an empty `output` chain.
    pub fn new(subnet: u8) -> Result<Firewall, FirewallError> {
        Command::new("nft")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .map_err(FirewallError::Missing)?;
        let firewall = Firewall { table: format!("raft_chaos_{subnet}") };
        firewall.delete_table();
        firewall.apply(&format!(
            "add table inet {table}\n\
             add chain inet {table} output {{ type filter hook output priority 0; policy accept; }}\n",
            table = firewall.table
        ))?;
        Ok(firewall)
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Replaces the rules: traffic between each pair is dropped both ways.
    pub fn cut(&self, pairs: &[(Ipv4Addr, Ipv4Addr)]) -> Result<(), FirewallError> {
        self.apply(&cut_script(&self.table, pairs))
    }

    /// Removes every rule (the table stays).
    pub fn heal(&self) -> Result<(), FirewallError> {
        self.apply(&format!("flush chain inet {} output\n", self.table))
    }

    fn apply(&self, script: &str) -> Result<(), FirewallError> {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(FirewallError::Missing)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes()).map_err(|e| FirewallError::Refused(e.to_string()))?;
        }
        let output = child.wait_with_output().map_err(|e| FirewallError::Refused(e.to_string()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(FirewallError::Refused(format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    }

    fn delete_table(&self) {
        let _ = Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.delete_table();
    }
}

/// The nft script that replaces the chain's rules with drops between pairs.
pub fn cut_script(table: &str, pairs: &[(Ipv4Addr, Ipv4Addr)]) -> String {
    let mut script = format!("flush chain inet {table} output\n");
    for (a, b) in pairs {
        for (from, to) in [(a, b), (b, a)] {
            script.push_str(&format!("add rule inet {table} output ip saddr {from} ip daddr {to} drop\n"));
        }
    }
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_both_directions_after_a_flush() {
        let a = Ipv4Addr::new(127, 9, 0, 1);
        let b = Ipv4Addr::new(127, 9, 0, 2);
        let script = cut_script("raft_chaos_9", &[(a, b)]);
        assert_eq!(
            script,
            "flush chain inet raft_chaos_9 output\n\
             add rule inet raft_chaos_9 output ip saddr 127.9.0.1 ip daddr 127.9.0.2 drop\n\
             add rule inet raft_chaos_9 output ip saddr 127.9.0.2 ip daddr 127.9.0.1 drop\n"
        );
        assert_eq!(cut_script("t", &[]), "flush chain inet t output\n");
    }
}
