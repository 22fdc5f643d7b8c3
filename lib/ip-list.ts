import ipaddr from 'ipaddr.js';
import { ConfigError } from './errors';

type Parsed = ipaddr.IPv4 | ipaddr.IPv6;

/**
 * A list of IPv4/IPv6 addresses and CIDR ranges, parsed once at setup. Matching normalises
 * IPv4-mapped IPv6 (`::ffff:10.0.0.1`, what a server bound to `::` sees) to IPv4, so IPv4
 * rules apply to it.
 */
export class IpList {
  private readonly v4: Array<[ipaddr.IPv4, number]> = [];
  private readonly v6: Array<[ipaddr.IPv6, number]> = [];
  readonly size: number;

  constructor(entries: readonly string[], option: string) {
    if (!Array.isArray(entries)) throw new ConfigError(option, "expected an array of addresses or CIDRs like ['10.0.0.0/8', '::1']");
    for (const entry of entries) {
      const [addr, bits] = parseEntry(entry, option);
      if (addr.kind() === 'ipv4') this.v4.push([addr as ipaddr.IPv4, bits]);
      else this.v6.push([addr as ipaddr.IPv6, bits]);
    }
    this.size = entries.length;
  }

  /** Whether `ip` (any textual form) falls in the list; unparsable input never matches. */
  has(ip: string | undefined): boolean {
    const addr = parseIp(ip);
    if (addr === undefined) return false;
    if (addr.kind() === 'ipv4') {
      for (const [range, bits] of this.v4) if ((addr as ipaddr.IPv4).match(range, bits)) return true;
      return false;
    }
    for (const [range, bits] of this.v6) if ((addr as ipaddr.IPv6).match(range, bits)) return true;
    return false;
  }
}

/** Parses an address, turning IPv4-mapped IPv6 into IPv4; undefined when it is not an IP. */
export function parseIp(ip: string | undefined): Parsed | undefined {
  if (!ip) return undefined;
  try {
    const addr = ipaddr.parse(ip.includes('%') ? ip.slice(0, ip.indexOf('%')) : ip);
    return addr.kind() === 'ipv6' && (addr as ipaddr.IPv6).isIPv4MappedAddress() ? (addr as ipaddr.IPv6).toIPv4Address() : addr;
  } catch {
    return undefined;
  }
}

/** The canonical text of an address (`::ffff:1.2.3.4` → `1.2.3.4`, IPv6 in its short form), or the input when unparsable. */
export function normalizeIp(ip: string): string {
  return parseIp(ip)?.toString() ?? ip;
}

function parseEntry(entry: unknown, option: string): [Parsed, number] {
  if (typeof entry !== 'string') throw new ConfigError(option, `expected address or CIDR strings, got ${typeof entry}`);
  try {
    if (entry.includes('/')) {
      const [addr, bits] = ipaddr.parseCIDR(entry);
      if (addr.kind() === 'ipv6' && (addr as ipaddr.IPv6).isIPv4MappedAddress()) {
        return [(addr as ipaddr.IPv6).toIPv4Address(), Math.max(0, bits - 96)];
      }
      return [addr, bits];
    }
    const addr = parseIp(entry);
    if (addr === undefined) throw new Error('not an address');
    return [addr, addr.kind() === 'ipv4' ? 32 : 128];
  } catch {
    throw new ConfigError(option, `'${entry}' is not an IPv4/IPv6 address or CIDR (like '10.0.0.0/8' or '2001:db8::/32')`);
  }
}
