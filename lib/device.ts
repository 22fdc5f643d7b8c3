import { isbot } from 'isbot';

/** Device class of a user agent. */
export type Device = 'mobile' | 'tablet' | 'desktop' | 'bot' | 'unknown';

const TABLET = /ipad|tablet|kindle|silk|playbook|nexus (?:7|9|10)|sm-t\d|android(?!.*mobile)/i;
const MOBILE = /mobi|iphone|ipod|android|windows phone|blackberry|bb10|opera mini|iemobile|webos/i;

/** Classifies a User-Agent header: 'bot' (isbot), 'tablet', 'mobile', 'desktop', or 'unknown' when absent. */
export function detectDevice(userAgent: string | undefined): Device {
  if (!userAgent) return 'unknown';
  if (isbot(userAgent)) return 'bot';
  if (TABLET.test(userAgent)) return 'tablet';
  if (MOBILE.test(userAgent)) return 'mobile';
  return 'desktop';
}
