import { isIP } from 'node:net';
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

  /** Whether `ip` (an address as {@link parseIp} reads it) falls in the list; unparsable input never matches. */
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

/**
 * Parses one address (an IPv6 zone id such as `%eth0` is dropped), turning IPv4-mapped IPv6 into
 * IPv4; undefined when it is not an IP. Only the forms Node itself writes and accepts
 * (`net.isIP`) pass: ipaddr.js alone would also read `127.1`, `0x7f.0.0.1` or `010.0.0.1` (as
 * octal), spellings no proxy writes and that would name one host in several ways.
 */
export function parseIp(ip: string | undefined): Parsed | undefined {
  if (!ip) return undefined;
  const zone = ip.indexOf('%');
  if (zone !== -1 && !ZONE_ID.test(ip.slice(zone + 1))) return undefined;
  const host = zone === -1 ? ip : ip.slice(0, zone);
  const family = isIP(host);
  if (family === 0) return undefined;
  if (family === 4) return ipaddr.IPv4.parse(host);
  const addr = ipaddr.IPv6.parse(host);
  return addr.isIPv4MappedAddress() ? addr.toIPv4Address() : addr;
}

/**
 * Parses a client address as proxies forward it: besides {@link parseIp}'s forms, an IPv4 address
 * with a port (`1.2.3.4:5678`) and any address in brackets, with or without a port (`[1.2.3.4]`,
 * `[2001:db8::1]:443`). Undefined for anything else (`unknown`, RFC 7239 obfuscated names, junk).
 */
export function parseClientAddress(raw: string | undefined): Parsed | undefined {
  if (!raw || raw.length > MAX_ADDRESS_LENGTH) return undefined;
  let host = raw;
  if (host.charCodeAt(0) === 91 /* [ */) {
    const close = host.indexOf(']');
    if (close === -1 || !isPortSuffix(host.slice(close + 1))) return undefined;
    host = host.slice(1, close);
  } else {
    // Exactly one colon: an IPv4 address and a port (IPv6 has at least two, and takes brackets for a port).
    const colon = host.indexOf(':');
    if (colon !== -1 && colon === host.lastIndexOf(':')) {
      if (!isPortSuffix(host.slice(colon))) return undefined;
      host = host.slice(0, colon);
    }
  }
  return parseIp(host);
}

/**
 * The canonical text of a client address (`[::FFFF:1.2.3.4]:80` → `1.2.3.4`, IPv6 in its RFC 5952
 * short form, no zone or port), or undefined when it cannot be parsed (see {@link parseClientAddress}).
 */
export function canonicalClientAddress(raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  // A client keeps its address across requests, and one lookup costs less than even the dotted-quad
  // check, so addresses are remembered; junk is not (it cannot push real clients out).
  let canonical = canonicalCache.get(raw);
  if (canonical === undefined) {
    // A dotted quad (what Node reports for most sockets, what proxies forward most) needs no parsing.
    canonical = CANONICAL_V4.test(raw) ? raw : parseClientAddress(raw)?.toString();
    if (canonical === undefined) return undefined;
    if (canonicalCache.size >= CANONICAL_CACHE_SIZE) canonicalCache.clear();
    canonicalCache.set(raw, canonical);
  }
  return canonical;
}

/** The canonical text of an address (`::ffff:1.2.3.4` → `1.2.3.4`, IPv6 in its short form), or the input when unparsable. */
export function normalizeIp(ip: string): string {
  return parseIp(ip)?.toString() ?? ip;
}

// The longest real form, `[ffff:…:255.255.255.255%zone]:65535`, stays far below; longer input is
// refused before any work.
const MAX_ADDRESS_LENGTH = 100;
// RFC 6874's characters of a zone id (an interface name or number).
const ZONE_ID = /^[\w.~-]{1,32}$/;
// Dotted quads without leading zeros: only these may skip parsing.
const CANONICAL_V4 = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;
// Bounded by clearing when full: cheaper than LRU bookkeeping, and a miss only costs one parse.
const CANONICAL_CACHE_SIZE = 10_000;
const canonicalCache = new Map<string, string>();

// '' (no port) or ':' and a port number 0–65535.
function isPortSuffix(suffix: string): boolean {
  return suffix === '' || (/^:\d{1,5}$/.test(suffix) && Number(suffix.slice(1)) <= 65535);
}

function parseEntry(entry: unknown, option: string): [Parsed, number] {
  if (typeof entry !== 'string') throw new ConfigError(option, `expected address or CIDR strings, got ${typeof entry}`);
  try {
    if (entry.includes('/')) {
      if (isIP(entry.slice(0, entry.indexOf('/'))) === 0) throw new Error('not an address');
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
