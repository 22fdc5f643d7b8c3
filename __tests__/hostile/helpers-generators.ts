import fc from 'fast-check';
import jwt from 'jsonwebtoken';
import { API_KEYS, JWT_SECRET, METRICS_TOKEN, type BodySpec, type FuzzRequest } from './helpers';

/*
 * fast-check arbitraries for hostile requests. Everything here stays within what Node's HTTP
 * client will send (header values: tab, 0x20–0x7e, 0x80–0xff; request targets: 0x21–0xff);
 * what the parser itself must refuse is in the raw generators at the bottom.
 */

const b64url = (value: unknown) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

/** Tokens the target accepts (HS256 with its secret, no expiry so they stay valid). */
const VALID_TOKENS = [
  { sub: 'u-1', roles: ['admin'], tenant: 'acme', is_beta: true },
  { sub: 'u-2', roles: ['user'], tenant: 'globex', plan: 'free' },
  { sub: 'u-3', tenant: 'initech' },
  { sub: 'u-4', email: 'o\'brien@example.com', is_beta: false },
].map((claims) => jwt.sign(claims, JWT_SECRET, { algorithm: 'HS256', noTimestamp: true }));

const [validHeader, validPayload] = VALID_TOKENS[0].split('.');

/** Tokens the target must refuse with 401 (never a 500, never accepted). */
const BAD_TOKENS: string[] = [
  // alg none, with and without a signature.
  `${b64url({ alg: 'none', typ: 'JWT' })}.${validPayload}.`,
  `${b64url({ alg: 'none' })}.${validPayload}.${'A'.repeat(43)}`,
  `${b64url({ alg: 'NONE' })}.${validPayload}.`,
  // Signed with another secret, or another algorithm's name.
  jwt.sign({ sub: 'u-1', roles: ['admin'] }, 'not-the-secret-not-the-secret-123', { algorithm: 'HS256', noTimestamp: true }),
  jwt.sign({ sub: 'u-1' }, JWT_SECRET, { algorithm: 'HS512', noTimestamp: true }),
  `${b64url({ alg: 'RS256', typ: 'JWT' })}.${validPayload}.${VALID_TOKENS[0].split('.')[2]}`,
  // A valid token with its payload swapped.
  `${validHeader}.${b64url({ sub: 'u-1', roles: ['admin', 'root'] })}.${VALID_TOKENS[0].split('.')[2]}`,
  // Expired and not yet valid.
  jwt.sign({ sub: 'u-1', exp: 1_000_000_000 }, JWT_SECRET, { algorithm: 'HS256', noTimestamp: true }),
  jwt.sign({ sub: 'u-1', nbf: 4_000_000_000 }, JWT_SECRET, { algorithm: 'HS256', noTimestamp: true }),
  // Bad base64, bad JSON, wrong shapes.
  '!!!.@@@.###',
  'abc.def.ghi',
  '...',
  'a.b',
  'a.b.c.d',
  `${b64url('not json')}.${validPayload}.sig`,
  `${b64url([1, 2, 3])}.${validPayload}.sig`,
  `${b64url({ alg: 'HS256', kid: '../../../../etc/passwd' })}.${validPayload}.sig`,
  `${b64url({ alg: 'HS256', crit: ['exp'], __proto__: { admin: true } })}.${b64url({ __proto__: { admin: true }, constructor: { prototype: { admin: true } } })}.sig`,
  `${validHeader}.${b64url('null')}.sig`,
  `${validHeader}.${b64url({ sub: { $ne: null } })}.sig`,
  // Huge.
  `${validHeader}.${b64url({ sub: 'x'.repeat(9000) })}.sig`,
  `${'A'.repeat(6000)}.${'B'.repeat(6000)}.${'C'.repeat(100)}`,
];

const ATTACKS = [
  '<script>alert(1)</script>',
  '<img src=x onerror=alert(1)>',
  'javascript:alert(1)',
  '<svg/onload=alert(1)>',
  "' OR '1'='1",
  "' OR<script></script> '1'='1",
  '1; DROP TABLE users--',
  "admin'--",
  'UNION SELECT password FROM users',
  '$where',
  '$ne',
  '$<script></script>ne',
  '../../etc/passwd',
  '..%2f..%2fetc%2fpasswd',
  '%c0%ae%c0%ae/etc/passwd',
  '; rm -rf /',
  '$(id)',
  '`id`',
  '| cat /etc/passwd',
  '&#x3C;script&#x3E;',
  '&lt;script&gt;',
  '%3Cscript%3E',
  '+ADw-script+AD4-alert(1)+ADw-/script+AD4-',
  "O'Brien",
  'a+b@example.com',
  '1 < 2',
  'select the best option from the list',
  '\u0000',
  '\u202e\u0041',
  '𝔘𝔫𝔦𝔠𝔬𝔡𝔢',
];

const POLLUTION_KEYS = ['__proto__', 'constructor', 'prototype', '__proto__.polluted', 'constructor.prototype.polluted', '__defineGetter__', 'hasOwnProperty', 'toString', 'valueOf'];

const weighted = <T>(...entries: Array<[number, fc.Arbitrary<T>]>) => fc.oneof(...entries.map(([weight, arbitrary]) => ({ weight, arbitrary })));

/** Text Node's client accepts in a header value: tab, printable ASCII and obs-text (0x80–0xff). */
const headerText = (maxLength = 40) =>
  fc.string({ unit: fc.oneof(fc.integer({ min: 0x20, max: 0x7e }), fc.integer({ min: 0x80, max: 0xff }), fc.constant(0x09)).map((c) => String.fromCharCode(c)), maxLength });

/** A string of `alphabet`'s characters (fc.stringMatching is ten times slower, and this runs 20,000 times a run). */
const chars = (alphabet: string, minLength: number, maxLength: number) => fc.string({ unit: fc.constantFrom(...alphabet), minLength, maxLength });

/** Any Unicode, percent-encoded so the client sends it. */
const encodedText = (maxLength = 20) => fc.string({ unit: 'grapheme', maxLength }).map((s) => encodeURIComponent(s));

const SEGMENTS = [
  '..', '.', '%2e%2e', '%2E%2e', '%2e', '.%2e', '%2f', '%2F..%2F', '%5c', '..%5c..', '%00', 'a%00b', '%c0%ae%c0%ae', '%e0%80%ae', '%c0%af', '%ff', '%fe%ff', '%', '%zz', '%2', '%u002e',
  ';', ';jsessionid=1', '~', '*', '@', ':', 'a%0d%0aSet-Cookie:%20x=1', '%0a', '%09', '%20', '+', '\u00e9', '\u00ff', 'ÿ', 'ECHO', 'Echo', 'items', 'echo', 'admin', 'metrics', 'boom',
];

const segment = weighted<string>(
  [4, fc.constantFrom(...SEGMENTS)],
  [3, chars('abcdefghijklmnopqrstuvwxyz0123456789_-', 1, 12)],
  [2, encodedText(8)],
  [1, fc.constantFrom(...ATTACKS).map((a) => encodeURIComponent(a))],
);

const BASES = ['/', '/echo', '/echo/', '/ECHO', '/items/42', '/items/%2e%2e', '/items/', '/boom', '/boom-async', '/hang', '/flaky', '/limited', '/paid', '/private', '/beta', '/admin/panel', '/admin/', '/metrics', '/health', '/favicon.ico'];

const pathPart = weighted<string>(
  [24, fc.constantFrom(...BASES)],
  [10, fc.array(segment, { minLength: 1, maxLength: 6 }).map((segs) => `/${segs.join('/')}`)],
  [5, fc.tuple(fc.constantFrom(...BASES), fc.array(segment, { minLength: 1, maxLength: 3 })).map(([b, segs]) => `${b.replace(/\/$/, '')}/${segs.join('/')}`)],
  [3, fc.constantFrom('//echo', '///', '//evil.example/echo', '/./echo', '/echo/..', '/a/../echo', '/%2e%2e/%2e%2e/echo', '/echo%00', '/echo%2f..', '/%65cho')],
  // Long targets: near and over the 16 kB head limit (the parser answers 431 over it).
  [1, fc.integer({ min: 1_000, max: 20_000 }).map((n) => `/echo/${'a'.repeat(n)}`)],
);

const queryKey = weighted<string>(
  [5, chars('abcdefghijklmnopqrstuvwxyz', 1, 6)],
  [2, fc.constantFrom(...POLLUTION_KEYS, '__proto__[polluted]', 'constructor[prototype][polluted]', 'a[__proto__][b]', '%5F%5Fproto%5F%5F', 'a[b][c][d][e][f][g]', 'a[]', 'a[0]', 'a[99999999]', '$where', '$gt', 'a.b', '')],
  [1, encodedText(10)],
);

const queryValue = weighted<string>(
  [5, chars('abcdefghijklmnopqrstuvwxyz0123456789', 0, 8)],
  [2, fc.constantFrom(...ATTACKS).map((a) => encodeURIComponent(a))],
  [1, encodedText(30)],
  [1, fc.constantFrom('%', '%zz', '%c0%ae', '%00', '+', '=', '&', '%26', 'a=b=c')],
  [1, fc.integer({ min: 100, max: 2_000 }).map((n) => 'v'.repeat(n))],
);

const query = weighted<string>(
  [3, fc.constant('')],
  [5, fc.array(fc.tuple(queryKey, queryValue), { minLength: 1, maxLength: 8 }).map((pairs) => `?${pairs.map(([k, v]) => `${k}=${v}`).join('&')}`)],
  // The same name twice, in either order and spelling: ?a=1&%61=2 is not ?%61=2&a=1.
  [1, fc.constantFrom('?a=1&%61=2', '?%61=2&a=1', '?a=1&a=2', '?a=2&a=1', '?a[]=1&a[]=2', '?a=1&a', '?&&&', '?=', '??a=1', '?a=1#frag')],
);

const target = fc.tuple(pathPart, query).map(([p, q]) => p + q);

const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'HEAD', 'OPTIONS'];
const method = weighted<string>(
  [30, fc.constant('GET')],
  [10, fc.constantFrom(...METHODS)],
  // Methods Node's parser knows but the routes do not.
  [2, fc.constantFrom('PROPFIND', 'PURGE', 'SEARCH', 'TRACE', 'LOCK', 'MKCOL', 'M-SEARCH', 'NOTIFY', 'SUBSCRIBE', 'REPORT', 'LINK')],
);

const ip4 = fc.tuple(fc.nat(255), fc.nat(255), fc.nat(255), fc.nat(255)).map((p) => p.join('.'));
/** A small pool of client addresses (bounded state in the limiters), some on the deny list. */
const clientAddress = fc.constantFrom('203.0.113.7', '203.0.113.8', '192.0.2.44', '198.51.100.9', '198.51.100.200', '2001:db8::1', '2001:db8:bad::9', '::ffff:198.51.100.9', '10.1.1.1', '127.0.0.1', '::1');

const forwardedEntry = weighted<string>(
  [6, clientAddress],
  // Forms a proxy may produce: ports, brackets, zones.
  [3, fc.constantFrom('198.51.100.9:1234', '[198.51.100.9]', '[198.51.100.9]:80', '[2001:db8:bad::9]:443', '[2001:db8:bad::9]', 'fe80::1%eth0', '203.0.113.7:1', '2001:db8:bad::9%a')],
  // Not addresses at all.
  [3, fc.constantFrom('unknown', '', ' ', 'garbage', '999.1.1.1', '1.2.3', '1.2.3.4.5', '0x7f.1', '01.02.03.04', '::g', '[::1', 'localhost', '_hidden', '7.7.7.7%a', '1.2.3.4/24', '"1.2.3.4"', 'for=1.2.3.4')],
  [1, ip4],
  [1, headerText(30)],
);

const forwardedFor = weighted<string>(
  [6, forwardedEntry],
  [3, fc.array(forwardedEntry, { minLength: 2, maxLength: 5 }).map((list) => list.join(', '))],
  [1, fc.constantFrom(',,,', ', ,', '1.2.3.4,,', ',1.2.3.4')],
  [1, fc.integer({ min: 20, max: 100 }).map((n) => Array.from({ length: n }, (_, i) => `10.0.${(i >> 8) & 255}.${i & 255}`).join(', '))],
);

const hex = (n: number) => fc.string({ unit: fc.constantFrom(...'0123456789abcdef'), minLength: n, maxLength: n });
const traceparent = weighted<string>(
  [3, fc.tuple(hex(32), hex(16)).map(([t, p]) => `00-${t}-${p}-01`)],
  [2, fc.constantFrom(
    `00-${'0'.repeat(32)}-${'1'.repeat(16)}-01`,
    `00-${'a'.repeat(32)}-${'0'.repeat(16)}-01`,
    `ff-${'a'.repeat(32)}-${'b'.repeat(16)}-01`,
    `00-${'A'.repeat(32)}-${'b'.repeat(16)}-01`,
    `00-${'a'.repeat(32)}-${'b'.repeat(16)}-01-extra`,
    `cc-${'a'.repeat(32)}-${'b'.repeat(16)}-01-what-the-future-holds`,
    `00-${'a'.repeat(31)}-${'b'.repeat(16)}-01`,
    '00--- -',
  )],
  [1, headerText(60)],
);

const requestIdHeader = weighted<string>(
  [3, chars('ABCXYZabcxyz0123456789._:-', 1, 40)],
  [1, fc.constantFrom('', ' ', 'a b', '<script>', 'x'.repeat(129), '../../etc', '0'.repeat(32), 'id\u00e9')],
  [1, headerText(50)],
);

const contentType = weighted<string>(
  [8, fc.constantFrom('application/json', 'application/json; charset=utf-8')],
  [2, fc.constantFrom('application/x-www-form-urlencoded', 'text/plain')],
  [3, fc.constantFrom(
    'application/json; charset=utf-7',
    'application/json; charset=latin1',
    'application/json; charset=bogus',
    'application/vnd.api+json',
    'application/json, text/plain',
    'multipart/form-data',
    'multipart/form-data; boundary=',
    'multipart/form-data; boundary=x',
    'application/xml',
    'text/html',
    '*/*',
    '',
    'json',
    'application/json;;;',
    'application/x-www-form-urlencoded; charset=utf-16',
  )],
  [1, headerText(40)],
);

const anyHeader = (): fc.Arbitrary<Array<[string, string]>> =>
  weighted<Array<[string, string]>>(
    [4, weighted<string>([4, fc.constantFrom(...VALID_TOKENS)], [5, fc.constantFrom(...BAD_TOKENS)], [1, headerText(60)]).map((t) => [['Authorization', `Bearer ${t}`]])],
    [1, fc.constantFrom('Bearer', 'Bearer ', 'Basic dXNlcjpwYXNz', 'bearer x', 'Bearer  a.b.c', 'Token abc').map((v) => [['Authorization', v]])],
    [4, weighted<string>([3, fc.constantFrom(...Object.values(API_KEYS))], [2, fc.constantFrom('', 'hk_live_unknown', ' hk_live_plain_0123456789abcdef', 'x'.repeat(5000))], [1, headerText(60)]).map((k) => [['X-API-Key', k]])],
    [3, fc.oneof(fc.constantFrom('acme', 'globex', 'ACME', 'initech', '__proto__', 'constructor', '../acme', 'acme/../globex', '', 'a'.repeat(300)), headerText(20)).map((t) => [['X-Tenant-ID', t]])],
    [5, forwardedFor.map((v) => [['X-Forwarded-For', v]])],
    [1, fc.tuple(forwardedFor, forwardedFor).map(([a, b]) => [['X-Forwarded-For', a], ['X-Forwarded-For', b]])],
    [1, fc.oneof(fc.constantFrom('victim.example/page', 'evil.example', 'a@b', '[::1]', '::1', ''), headerText(30)).map((h) => [['X-Forwarded-Host', h]])],
    [1, fc.constantFrom('https', 'http', 'gopher', 'https, http', '').map((p) => [['X-Forwarded-Proto', p]])],
    [3, traceparent.map((t) => [['traceparent', t]])],
    [1, fc.tuple(traceparent, traceparent).map(([a, b]) => [['traceparent', a], ['traceparent', b]])],
    [2, requestIdHeader.map((id) => [['X-Request-ID', id]])],
    [1, fc.tuple(requestIdHeader, requestIdHeader).map(([a, b]) => [['X-Request-ID', a], ['X-Request-ID', b]])],
    [1, headerText(60).map((v) => [['X-Cloud-Trace-Context', v]])],
    [2, fc.oneof(fc.constantFrom('session_token=abc', 'sid=1; sid=2', '__proto__=x', 'a=%ff', `session_token=${VALID_TOKENS[1]}`, ''), headerText(80)).map((c) => [['Cookie', c]])],
    [2, fc.oneof(fc.constantFrom('https://app.example.com', 'https://evil.example', 'null', 'https://app.example.com.evil.example', ''), headerText(30)).map((o) => [['Origin', o]])],
    [1, fc.constantFrom('GET', 'DELETE', 'FOO', '').map((m) => [['Access-Control-Request-Method', m]])],
    [2, fc.oneof(fc.constantFrom('*', 'W/"x"', '"abc"', '"', 'W/', ',,,'), headerText(40)).map((e) => [['If-None-Match', e]])],
    [1, fc.constantFrom('no-cache', 'no-store', 'max-age=0', 'only-if-cached', 'max-age=-1').map((c) => [['Cache-Control', c]])],
    [1, fc.oneof(fc.constantFrom('Googlebot/2.1', 'curl/8', 'Mozilla/5.0 (iPhone)', ''), headerText(200)).map((u) => [['User-Agent', u]])],
    [1, fc.oneof(fc.constantFrom('US', 'XX', '', '__proto__'), headerText(5)).map((c) => [['CF-IPCountry', c]])],
    [1, fc.constantFrom('gzip', 'br', 'identity;q=0', '*;q=0', 'x'.repeat(1000)).map((a) => [['Accept-Encoding', a]])],
    [1, fc.constantFrom('application/json', 'text/html', '*/*;q=0', 'application/problem+json', '').map((a) => [['Accept', a]])],
    // Big heads: under the 16 kB limit, over it (431 from the parser), and many header lines.
    [1, weighted<Array<[string, string]>>(
      [2, fc.integer({ min: 1_000, max: 12_000 }).map((n) => [['X-Pad', 'p'.repeat(n)]])],
      [1, fc.integer({ min: 17_000, max: 24_000 }).map((n) => [['X-Pad', 'p'.repeat(n)]])],
      [1, fc.integer({ min: 50, max: 300 }).map((n) => Array.from({ length: n }, (_, i) => [`X-Many-${i}`, 'v'] as [string, string]))],
    )],
    [1, fc.tuple(chars('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-', 1, 20), headerText(40)).map(([n, v]) => [[`X-${n}`, v]])],
    [1, fc.oneof(fc.constantFrom('victim.example/page', 'acme.api.example.com', 'localhost:0', '[::1]:80', 'a@b.example', 'api.example.com:99999', 'EXAMPLE.COM'), chars('abcdefghijklmnopqrstuvwxyz0123456789.-', 1, 30)).map((h) => [['Host', h]])],
    [1, fc.constantFrom('close', 'keep-alive', 'Upgrade', 'x-custom').map((c) => [['Connection', c]])],
    [1, fc.constantFrom(METRICS_TOKEN, 'wrong').map((t) => [['Authorization', `Bearer ${t}`]])],
  );

// JSON built as text, so keys like __proto__ are really in it (JSON.stringify of an object would drop them).
const jsonScalar = weighted<string>(
  [3, fc.constantFrom(...ATTACKS).map((a) => JSON.stringify(a))],
  [2, fc.string({ maxLength: 20 }).map((s) => JSON.stringify(s))],
  [1, fc.constantFrom('null', 'true', '0', '-1e309', '1e400', '123456789012345678901234567890', '"\\ud800"', '"\\u0000"')],
);
const jsonKey = weighted<string>([3, chars('abcdefghijklmnopqrstuvwxyz', 1, 6)], [2, fc.constantFrom(...POLLUTION_KEYS, '$where', '$ne', '$gt', '$<script></script>ne', 'a.b', '')], [1, fc.string({ maxLength: 8 })]);
const { json } = fc.letrec<{ json: string }>((tie) => ({
  json: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    jsonScalar,
    fc.array(tie('json'), { maxLength: 4 }).map((items) => `[${items.join(',')}]`),
    fc.array(fc.tuple(jsonKey, tie('json')), { maxLength: 5 }).map((pairs) => `{${pairs.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(',')}}`),
  ),
}));

const body = weighted<{ type?: string; body: BodySpec; encoding?: string }>(
  [10, fc.tuple(json, contentType).map(([text, type]) => ({ type, body: { kind: 'text', text } }))],
  [2, fc.constantFrom(
    '{"__proto__":{"polluted":"yes"}}',
    '{"constructor":{"prototype":{"polluted":"yes"}}}',
    '{"a":{"__proto__":{"polluted":"yes"}},"b":[{"__proto__":{"polluted":"yes"}}]}',
    '[{"constructor":{"prototype":{"polluted":"yes"}}}]',
    '{"__proto__":null}',
    '{"username":{"$ne":null},"password":{"$ne":null}}',
    '{"$where":"sleep(1000)"}',
    '{"q":"\' OR<script></script> \'1\'=\'1"}',
    '{"$<script></script>ne":1}',
  ).map((text) => ({ type: 'application/json', body: { kind: 'text', text } }))],
  [2, fc.constantFrom(
    '__proto__[polluted]=yes',
    'constructor[prototype][polluted]=yes',
    'a[__proto__][polluted]=yes',
    'a[b][c][d][e][f][g][h][i][j][k]=1',
    `${'a'.repeat(100)}[]=1&`.repeat(200),
    'a=%ff&b=%',
    'q=%3Cscript%3Ealert(1)%3C%2Fscript%3E',
  ).map((text) => ({ type: 'application/x-www-form-urlencoded', body: { kind: 'text', text } }))],
  [1, fc.constantFrom('{', '{"a":', '[1,2', 'nul', '"\\x"', '\u0000', '{"a":1}garbage', '\ufeff{"a":1}', '', ' ').map((text) => ({ type: 'application/json', body: { kind: 'text', text } }))],
  // Deeply nested JSON and forms.
  [1, fc.tuple(fc.integer({ min: 50, max: 20_000 }), fc.constantFrom(['[', ']', '1'], ['{"a":', '}', '1'], ['[{"__proto__":', '}]', '{}'])).map(([depth, [open, close, inner]]) => ({ type: 'application/json', body: { kind: 'deep', depth, open, close, inner } }))],
  [1, fc.integer({ min: 10, max: 2_000 }).map((depth) => ({ type: 'application/x-www-form-urlencoded', body: { kind: 'text', text: `a${'[b]'.repeat(depth)}=1` } }))],
  // Over the 64 kB size limit (413), and just under it.
  [1, fc.tuple(fc.integer({ min: 66_000, max: 100_000 }), fc.constantFrom('a', ' ', '[')).map(([bytes, fill]) => ({ type: 'application/json', body: { kind: 'big', bytes, fill } }))],
  [1, fc.tuple(fc.integer({ min: 1_000, max: 16_000 }), fc.constantFrom('&#x0', '%c0%ae', '&lt;', '\\u003c')).map(([n, unit]) => ({ type: 'application/json', body: { kind: 'text', text: JSON.stringify({ s: unit.repeat(Math.floor(n / unit.length)) }) } }))],
  // Encodings: a gzip flag over a plain body, real gzip, unknown codings, utf-7.
  [1, json.map((text) => ({ type: 'application/json', encoding: 'gzip', body: { kind: 'text', text } }))],
  [1, json.map((text) => ({ type: 'application/json', encoding: 'gzip', body: { kind: 'gzip', text } }))],
  [1, fc.tuple(json, fc.constantFrom('deflate', 'br', 'identity', 'gzip, gzip', 'x-unknown', 'compress', 'GZIP', '')).map(([text, encoding]) => ({ type: 'application/json', encoding, body: { kind: 'text', text } }))],
  [1, fc.constant({ type: 'application/json; charset=utf-7', body: { kind: 'text', text: '{"a":"+ADw-script+AD4-alert(1)+ADw-/script+AD4-"}' } })],
  [1, fc.constantFrom('--x\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--x--', 'no boundary at all', '--\r\n\r\n').map((text) => ({ type: 'multipart/form-data', body: { kind: 'text', text } }))],
  [1, fc.constant({ body: { kind: 'text', text: '{"no":"content-type"}' } })],
);

/** One hostile request for the target. */
export const fuzzRequest: fc.Arbitrary<FuzzRequest> = fc
  .tuple(method, target, fc.array(anyHeader(), { maxLength: 6 }), fc.option(body, { freq: 2 }), fc.nat(9))
  .map(([m, path, headerGroups, b, dice]) => {
    const headers = headerGroups.flat();
    // Bodies go with the methods that carry them, and one time in ten with any other.
    const carries = m === 'POST' || m === 'PUT' || m === 'PATCH' || m === 'DELETE';
    if (b === null || (!carries && dice !== 0)) return { method: m, path, headers };
    if (b.type !== undefined) headers.push(['Content-Type', b.type]);
    if (b.encoding !== undefined) headers.push(['Content-Encoding', b.encoding]);
    return { method: m, path, headers, body: b.body };
  });

// ---------------------------------------------------------------------------------------------
// Requests Node's client will not send: built as bytes, for a raw socket.

const CTL = [0x00, 0x01, 0x07, 0x08, 0x0b, 0x0c, 0x0e, 0x1b, 0x1f, 0x7f].map((c) => String.fromCharCode(c));

/** One raw request: its bytes (latin1) and a printable description. */
export interface RawRequest {
  bytes: string;
  /** What it is, for failure messages. */
  what: string;
}

// Each part is usually well-formed, so about half the requests pass the parser with one oddity
// (and reach the stack) and half are refused by it.
const rawMethod = weighted<string>([8, fc.constantFrom('GET', 'POST', 'PUT', 'DELETE', 'OPTIONS')], [1, fc.constantFrom('get', 'G ET', 'FOO', 'GET\u0000', '', 'CONNECT', 'PRI', 'GET\t')]);
const rawTarget = weighted<string>(
  [1, fc.constantFrom('/echo', '/', '*', 'http://evil.example/echo', 'http://127.0.0.1/echo?a=1', '//echo', '/echo?a=1', 'echo', '/echo#x', '/ec ho', '/echo\u0000', '/\u00ff', '/%', '/\u0001', '/echo\u00e9')],
  [3, target],
);
const rawVersion = weighted<string>([8, fc.constant('HTTP/1.1')], [2, fc.constant('HTTP/1.0')], [1, fc.constantFrom('HTTP/2.0', 'HTTP/1.1x', 'HTTP/1', 'http/1.1', 'HTTP/9.9', 'HTTP/1.1 ', '')]);
const rawHeaderLine = fc.oneof(
  fc.tuple(fc.constantFrom('X-Test', 'Authorization', 'X-Forwarded-For', 'Content-Type', 'Cookie', 'X-Request-ID'), fc.constantFrom(...CTL), fc.string({ maxLength: 10 })).map(([n, c, v]) => `${n}: a${c}${v}`),
  fc.constantFrom(
    'X Test: 1',
    'X-Test : 1',
    'X-Test:',
    ': no name',
    'NoColon',
    ' folded: continuation',
    'X-Test: a\r b',
    'X-Test: a\n b',
    'X-\u00e9: v',
    '(x): v',
    'Content-Length: -1',
    'Content-Length: 1x',
    'Content-Length: 99999999999999999999',
    'Transfer-Encoding: chunked\r\nContent-Length: 3',
    'Content-Length: 3\r\nContent-Length: 4',
    'Transfer-Encoding: gzip, chunked',
    'Transfer-Encoding: chunked, identity',
    'Transfer-Encoding: xchunked',
    'Host: a\r\nHost: b',
    'Expect: 100-continue',
    'Upgrade: h2c\r\nConnection: Upgrade',
  ),
  fc.integer({ min: 17_000, max: 30_000 }).map((n) => `X-Huge: ${'h'.repeat(n)}`),
);
// Lines the parser takes: obs-text, tabs, odd but legal names, repeated fields.
const rawGoodLine = fc.constantFrom(
  'X-Test: \u00e9\u00ff\u0080',
  'X-Test: \ta\tb\t',
  "X-Weird!#$%&'*+.^_`|~: v",
  'Cookie: a=1\r\nCookie: b=2',
  'X-Forwarded-For: 198.51.100.9\r\nX-Forwarded-For: 203.0.113.7',
  'X-Forwarded-For: [198.51.100.9]:80',
  'X-Request-ID: a\r\nX-Request-ID: b',
  'traceparent: ff-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-01',
  'Content-Length: 0',
  'Transfer-Encoding: chunked',
  'Expect: 100-continue',
  'Upgrade: h2c\r\nConnection: Upgrade',
  'Upgrade: websocket',
  'Max-Forwards: 0',
);

/** A raw request, often one Node's parser refuses (400 / 431 from handleClientErrors). */
export const rawRequest: fc.Arbitrary<RawRequest> = fc
  .tuple(
    rawMethod,
    rawTarget,
    rawVersion,
    weighted<string[]>([1, fc.array(rawHeaderLine, { minLength: 1, maxLength: 2 })], [1, fc.array(rawGoodLine, { maxLength: 3 })]),
    weighted<boolean>([6, fc.constant(true)], [1, fc.constant(false)]),
    weighted<string>([8, fc.constant('\r\n')], [1, fc.constantFrom('\n', '\r')]),
  )
  .map(([m, t, v, lines, withHost, eol]) => {
    const head = [`${m} ${t} ${v}`.trimEnd(), ...(withHost ? ['Host: 127.0.0.1'] : []), ...lines, 'Connection: close'];
    const chunked = lines.some((l) => /Transfer-Encoding:[^\r\n]*chunked/i.test(l));
    const bodyPart = chunked ? 'zz\r\nnot a chunk\r\n0\r\n\r\n' : lines.some((l) => /Content-Length: 3/.test(l)) ? 'abc' : '';
    return { bytes: head.join(eol) + eol + eol + bodyPart, what: `${JSON.stringify(head.join('\\r\\n').slice(0, 160))}${bodyPart ? ` + ${JSON.stringify(bodyPart)}` : ''}` };
  });
