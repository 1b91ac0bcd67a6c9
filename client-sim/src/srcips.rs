//! Source addresses for outgoing connections: a range
//! (`127.0.0.2-127.0.0.254`), a comma-separated list, or a CIDR block
//! (`127.0.1.0/24`). Each gives another 64k ephemeral ports towards one
//! server address, which is how a million connections fit through loopback.

use std::net::Ipv4Addr;

/// Parses a source-address spec into addresses, in order.
pub fn parse(spec: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = |why: &str| format!("source addresses '{part}': {why}");
        if let Some((lo, hi)) = part.split_once('-') {
            let lo: Ipv4Addr = lo.trim().parse().map_err(|_| bad("not an IPv4 address"))?;
            let hi: Ipv4Addr = hi.trim().parse().map_err(|_| bad("not an IPv4 address"))?;
            let (lo, hi) = (u32::from(lo), u32::from(hi));
            if hi < lo || hi - lo > 1 << 20 {
                return Err(bad("empty or huge range"));
            }
            out.extend((lo..=hi).map(Ipv4Addr::from));
        } else if let Some((net, bits)) = part.split_once('/') {
            let net: Ipv4Addr = net.trim().parse().map_err(|_| bad("not an IPv4 address"))?;
            let bits: u32 = bits.trim().parse().map_err(|_| bad("bad prefix length"))?;
            if !(12..=32).contains(&bits) {
                return Err(bad("prefix length must be 12..=32"));
            }
            let size = 1u32 << (32 - bits);
            let base = u32::from(net) & !(size - 1);
            // Skip the network and broadcast addresses of real subnets.
            let (first, last) = if size >= 4 {
                (base + 1, base + size - 2)
            } else {
                (base, base + size - 1)
            };
            out.extend((first..=last).map(Ipv4Addr::from));
        } else {
            out.push(part.parse().map_err(|_| bad("not an IPv4 address"))?);
        }
    }
    if out.is_empty() {
        return Err("no source addresses given".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn ranges_lists_and_cidr_blocks() {
        assert_eq!(parse("127.0.0.2-127.0.0.4").unwrap().len(), 3);
        assert_eq!(
            parse("127.0.0.2, 127.0.0.9").unwrap()[1].to_string(),
            "127.0.0.9"
        );
        let block = parse("127.0.1.0/30").unwrap();
        assert_eq!(
            (block.len(), block[0].to_string()),
            (2, "127.0.1.1".to_string())
        );
        assert!(parse("127.0.0.9-127.0.0.2").is_err());
        assert!(parse("localhost").is_err());
    }
}
