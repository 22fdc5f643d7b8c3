import { isbot } from 'isbot';
import { LRUCache } from 'lru-cache';

/** Device class of a user agent. */
export type Device = 'mobile' | 'tablet' | 'desktop' | 'bot' | 'unknown';

const TABLET = /ipad|tablet|kindle|silk|playbook|nexus (?:7|9|10)|sm-t\d|android(?!.*mobile)/i;
const MOBILE = /mobi|iphone|ipod|android|windows phone|blackberry|bb10|opera mini|iemobile|webos/i;

// A service sees a few hundred distinct User-Agent strings, over and over, and a cache lookup is
// an order of magnitude cheaper than isbot's pattern and the two above (docs/benchmarks.md).
// Bounded, so a client that sends a new string every time costs one entry each, never more than `max`.
const known = new LRUCache<string, Device>({ max: 2000 });

/** Classifies a User-Agent header: 'bot' (isbot), 'tablet', 'mobile', 'desktop', or 'unknown' when absent. */
export function detectDevice(userAgent: string | undefined): Device {
  if (!userAgent) return 'unknown';
  let device = known.get(userAgent);
  if (device === undefined) {
    device = classify(userAgent);
    // Very long strings are junk or attacks; they are classified each time rather than kept.
    if (userAgent.length <= 512) known.set(userAgent, device);
  }
  return device;
}

function classify(userAgent: string): Device {
  if (isbot(userAgent)) return 'bot';
  if (TABLET.test(userAgent)) return 'tablet';
  if (MOBILE.test(userAgent)) return 'mobile';
  return 'desktop';
}
