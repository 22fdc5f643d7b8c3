import { eachArg, type CliIo } from '../audit/cli';
import { verifyAuditTable, type VerifyAuditTableOptions } from './audit-table';
import { checkCliTablePrefix, cliClient, cliUrl } from './cli-client';

const USAGE = `Usage: express-perimeter verify-audit --postgres <url> [options]

Checks the hash chain of the audit table written by the { postgres } sink, a page of rows at a
time (constant memory on a table of any size), and names the seq of the first row that breaks it.

Options:
  --postgres <url>        database URL
  --table-prefix <p>      prefix of the table names (default: perimeter_): verifies <p>audit
  --genesis <hex>         prev_hash of the first row (default: 64 zeros; auditLog's genesis)
  --anchored              trust the first row's prev_hash (older rows were archived)
  --head <hex>            hash the last row must have (detects rows removed from the end)
  --page-size <n>         rows read per query (default: 1000)
  --statement-timeout <ms>  longest one page may take (default: 30000)
  --json                  print the result as JSON

Exit status: 0 when the chain is intact, 1 when it is broken, 2 on a usage or connection error.
`;

interface VerifyArgs {
  url: string;
  options: VerifyAuditTableOptions & { tablePrefix: string };
  timeoutMs: number;
  json: boolean;
}

/** Runs `express-perimeter verify-audit --postgres <url> …`; resolves to the exit status. */
export async function verifyAuditTableMain(args: string[], io: CliIo): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    io.stdout.write(USAGE);
    return 0;
  }
  let parsed: VerifyArgs;
  try {
    parsed = parseArgs(args);
  } catch (err) {
    io.stderr.write(`express-perimeter verify-audit: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const { url, options, timeoutMs, json } = parsed;
  const table = `${options.tablePrefix}audit`;
  const client = cliClient(url, timeoutMs, 'express-perimeter verify-audit');
  try {
    await client.connect();
    const result = await verifyAuditTable(client, options);
    if (json) {
      io.stdout.write(`${JSON.stringify(result)}\n`);
    } else if (result.valid) {
      io.stdout.write(`OK: ${table}: ${result.count} row${result.count === 1 ? '' : 's'}, chain intact (last seq ${result.lastSeq}, head ${result.head})\n`);
    } else {
      const where = result.seq !== undefined ? `seq ${result.seq}` : `after seq ${result.lastSeq}`;
      io.stdout.write(`BROKEN: ${table}: ${where}: ${result.reason}; ${result.count} row${result.count === 1 ? '' : 's'} before it verify\n`);
    }
    return result.valid ? 0 : 1;
  } catch (err) {
    // The driver's message, never the URL (it carries the password).
    const e = err as Error & { code?: string };
    const message = e.code === '42P01' ? `table ${table} does not exist (is --table-prefix right? npx express-perimeter migrate creates it)` : `${e.message}${e.code ? ` (${e.code})` : ''}`;
    if (json) io.stdout.write(`${JSON.stringify({ table, error: message })}\n`);
    io.stderr.write(`express-perimeter verify-audit: cannot read ${table}: ${message}\n`);
    return 2;
  } finally {
    await client.end().catch(() => undefined);
  }
}

function parseArgs(args: string[]): VerifyArgs {
  let url: string | undefined;
  const options: VerifyAuditTableOptions & { tablePrefix: string } = { tablePrefix: 'perimeter_' };
  let timeoutMs = 30_000;
  let json = false;
  eachArg(args, (arg, value) => {
    if (arg === '--postgres') url = value();
    else if (arg === '--table-prefix') options.tablePrefix = value();
    else if (arg === '--genesis') options.genesis = value();
    else if (arg === '--anchored') options.genesis = false;
    else if (arg === '--head') options.head = value();
    else if (arg === '--page-size') options.pageSize = wholeNumber(value(), arg);
    else if (arg === '--statement-timeout') timeoutMs = wholeNumber(value(), arg);
    else if (arg === '--json') json = true;
    else if (arg.startsWith('-')) throw new Error(`unknown option ${arg}`);
    else throw new Error(`with --postgres there is no file to read (got ${arg})`);
  });
  const checkedUrl = cliUrl(url);
  checkCliTablePrefix(options.tablePrefix);
  if (typeof options.genesis === 'string' && !/^[0-9a-f]{64}$/.test(options.genesis)) throw new Error('--genesis: expected 64 lowercase hex characters');
  if (options.head !== undefined && !/^[0-9a-f]{64}$/.test(options.head)) throw new Error('--head: expected 64 lowercase hex characters');
  return { url: checkedUrl, options, timeoutMs, json };
}

function wholeNumber(text: string, option: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`${option}: expected a whole number ≥ 1, got ${text}`);
  return n;
}
