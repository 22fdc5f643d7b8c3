import type { Registry } from 'prom-client';

/** The content type of the OpenMetrics text format (prom-client's `Registry.OPENMETRICS_CONTENT_TYPE`). */
export const OPENMETRICS_CONTENT_TYPE = 'application/openmetrics-text; version=1.0.0; charset=utf-8';

/**
 * Whether the scraper prefers OpenMetrics: `application/openmetrics-text` (any version) has a
 * q-value above zero and at least that of the text format (`text/plain`, or a wildcard that
 * covers it). Prometheus asks `application/openmetrics-text;version=1.0.0,…;text/plain;
 * version=0.0.4;q=0.5,*\/*;q=0.1` when OpenMetrics scraping is on; curl's `*\/*` keeps the text.
 */
export function wantsOpenMetrics(accept: string | undefined): boolean {
  if (accept === undefined || !accept.includes('openmetrics')) return false;
  let openMetrics = 0;
  let text = 0;
  for (const part of accept.split(',')) {
    const [range, ...params] = part.split(';');
    const type = range.trim().toLowerCase();
    let q = 1;
    for (const param of params) {
      const [key, value] = param.split('=');
      if (key?.trim().toLowerCase() === 'q') q = Number(value);
    }
    if (!(q >= 0 && q <= 1)) continue;
    if (type === 'application/openmetrics-text') openMetrics = Math.max(openMetrics, q);
    else if (type === 'text/plain' || type === 'text/*' || type === '*/*') text = Math.max(text, q);
  }
  return openMetrics > 0 && openMetrics >= text;
}

/**
 * The registry in the OpenMetrics text format. Not through prom-client's own OpenMetrics mode:
 * a registry in that mode renames every counter it renders (`http_requests_total` becomes
 * `http_requests` on the metric object itself), so the text format served to the next scraper
 * would lose the `_total`. This renders from `getMetricsAsJSON()`, which changes nothing.
 */
export async function openMetricsText(registry: Registry): Promise<string> {
  const families = await registry.getMetricsAsJSON();
  const lines: string[] = [];
  for (const family of families) {
    const counter = String(family.type) === 'counter';
    // OpenMetrics names a counter family without `_total` and each of its samples with it.
    const name = counter ? family.name.replace(/_total$/, '') : family.name;
    lines.push(`# TYPE ${name} ${family.type}`, `# HELP ${name} ${escape(family.help)}`);
    for (const sample of family.values as Array<{ metricName?: string; labels: Record<string, unknown>; value: number }>) {
      const sampleName = counter ? `${name}_total` : (sample.metricName ?? name);
      lines.push(`${sampleName}${labelText(sample.labels)} ${numberText(sample.value)}`);
    }
  }
  lines.push('# EOF');
  return `${lines.join('\n')}\n`;
}

function labelText(labels: Record<string, unknown>): string {
  const parts: string[] = [];
  for (const key of Object.keys(labels)) {
    const value = labels[key];
    if (value === undefined) continue;
    parts.push(`${key}="${escape(typeof value === 'number' ? numberText(value) : String(value))}"`);
  }
  return parts.length === 0 ? '' : `{${parts.join(',')}}`;
}

function numberText(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  return String(value);
}

// OpenMetrics escapes backslash, newline and double quote in label values and help text.
function escape(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}
