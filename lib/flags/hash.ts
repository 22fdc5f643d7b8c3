const C1 = 0xcc9e2d51;
const C2 = 0x1b873593;

/**
 * MurmurHash3 (x86, 32-bit) of the UTF-8 bytes of `prefix + text`, as an unsigned integer.
 * The two parts are read in place, so the common case (ASCII ids) hashes without building the
 * joined string.
 */
export function murmur3(prefix: string, text = '', seed = 0): number {
  if (isAscii(prefix) && isAscii(text)) return hashAscii(prefix, text, seed);
  return hashBytes(Buffer.from(prefix + text, 'utf8'), seed);
}

/**
 * The rollout bucket (0–99) of `id` for the flag whose hash prefix is `prefix` (`flagName + ':'`):
 * MurmurHash3 of `flagName:id` modulo 100, as Unleash's `normalizedValue` (which adds 1). The
 * flag name is part of the key, so one user's buckets differ from flag to flag and a 10% rollout
 * of one flag does not pick the same users as a 10% rollout of another.
 */
export function rolloutBucket(prefix: string, id: string): number {
  return murmur3(prefix, id) % 100;
}

function isAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return false;
  return true;
}

function mixBlock(h: number, k: number): number {
  k = Math.imul(k, C1);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, C2);
  h ^= k;
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

function mixTail(h: number, k: number): number {
  k = Math.imul(k, C1);
  k = (k << 15) | (k >>> 17);
  k = Math.imul(k, C2);
  return h ^ k;
}

function finish(h: number, length: number): number {
  h ^= length;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

function hashAscii(a: string, b: string, seed: number): number {
  const al = a.length;
  const length = al + b.length;
  const at = (i: number): number => (i < al ? a.charCodeAt(i) : b.charCodeAt(i - al));
  let h = seed | 0;
  const blocks = length - (length % 4);
  for (let i = 0; i < blocks; i += 4) {
    h = mixBlock(h, at(i) | (at(i + 1) << 8) | (at(i + 2) << 16) | (at(i + 3) << 24));
  }
  const rest = length - blocks;
  if (rest > 0) {
    let k = at(blocks);
    if (rest > 1) k |= at(blocks + 1) << 8;
    if (rest > 2) k |= at(blocks + 2) << 16;
    h = mixTail(h, k);
  }
  return finish(h, length);
}

function hashBytes(bytes: Uint8Array, seed: number): number {
  const length = bytes.length;
  let h = seed | 0;
  const blocks = length - (length % 4);
  for (let i = 0; i < blocks; i += 4) {
    h = mixBlock(h, bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) | (bytes[i + 3] << 24));
  }
  const rest = length - blocks;
  if (rest > 0) {
    let k = bytes[blocks];
    if (rest > 1) k |= bytes[blocks + 1] << 8;
    if (rest > 2) k |= bytes[blocks + 2] << 16;
    h = mixTail(h, k);
  }
  return finish(h, length);
}
