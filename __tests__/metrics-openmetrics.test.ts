import request from 'supertest';
import { wantsOpenMetrics } from '../lib/openmetrics';
import { closeStacks, stackApp } from './helpers/app';

afterEach(() => closeStacks());

const PROMETHEUS_ACCEPT = 'application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1';
const OPENMETRICS = 'application/openmetrics-text; version=1.0.0; charset=utf-8';
const TEXT = 'text/plain; version=0.0.4; charset=utf-8';

function app() {
  return stackApp({ metrics: { defaultMetrics: false } }, (a) => a.get('/games', (_req, res) => void res.json([])));
}

describe('/metrics content negotiation', () => {
  it('serves OpenMetrics when Prometheus asks for it: counter families without _total, samples with it, # EOF last', async () => {
    const { app: server } = app();
    await request(server).get('/games').expect(200);
    const res = await request(server).get('/metrics').set('Accept', PROMETHEUS_ACCEPT).expect(200);
    expect(res.headers['content-type']).toBe(OPENMETRICS);
    expect(res.headers.vary).toMatch(/Accept/);
    const lines = res.text.split('\n');
    expect(lines.at(-1)).toBe('');
    expect(lines.at(-2)).toBe('# EOF');
    expect(lines).toContain('# TYPE http_requests counter');
    expect(lines).toContain('http_requests_total{method="GET",route="/games",status_code="200"} 1');
    expect(lines).toContain('# TYPE http_request_duration_seconds histogram');
    expect(lines).toContainEqual(expect.stringMatching(/^http_request_duration_seconds_bucket\{le="\+Inf",method="GET",route="\/games",status_code="200"\} 1$/));
    expect(lines).toContain('http_request_duration_seconds_count{method="GET",route="/games",status_code="200"} 1');
    // Every line is a comment or a sample; no blank line before # EOF (OpenMetrics forbids them).
    for (const line of lines.slice(0, -2)) expect(line).toMatch(/^(# (TYPE|HELP) \w+ .+|[a-zA-Z_:][\w:]*(\{.*\})? \S+)$/);
  });

  it('keeps the text format otherwise, with counter names intact after an OpenMetrics scrape', async () => {
    const { app: server } = app();
    await request(server).get('/games').expect(200);
    await request(server).get('/metrics').set('Accept', PROMETHEUS_ACCEPT).expect(200);
    for (const accept of [undefined, '*/*', 'text/plain', 'application/openmetrics-text;q=0.2,text/plain;q=0.9']) {
      const req = request(server).get('/metrics');
      const res = await (accept === undefined ? req : req.set('Accept', accept)).expect(200);
      expect(res.headers['content-type']).toBe(TEXT);
      expect(res.text).toContain('# TYPE http_requests_total counter');
      expect(res.text).toContain('http_requests_total{method="GET",route="/games",status_code="200"} 1');
      expect(res.text).not.toContain('# EOF');
    }
  });
});

describe('wantsOpenMetrics', () => {
  it.each([
    [undefined, false],
    ['*/*', false],
    ['text/plain;version=0.0.4', false],
    ['application/openmetrics-text', true],
    [PROMETHEUS_ACCEPT, true],
    ['text/plain;q=0.5, application/openmetrics-text;version=1.0.0;q=0.5', true],
    ['application/openmetrics-text;q=0, text/plain', false],
    ['text/plain, application/openmetrics-text;q=0.9', false],
  ])('Accept %s → %s', (accept, expected) => {
    expect(wantsOpenMetrics(accept)).toBe(expected);
  });
});
