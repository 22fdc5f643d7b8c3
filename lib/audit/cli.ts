import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { ChainVerifier, type VerifyAuditChainOptions } from './verify';

// This module and its imports run from the published bin without the rest of the package:
// keep them to node built-ins and ./verify, ./chain (`migrate` and `verify-audit --postgres` load their modules, and pg, on demand).

/** Where the CLI writes. */
export interface CliIo {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown };
  /** Read for the file name '-'. Defaults to process.stdin. */
  stdin?: NodeJS.ReadableStream;
}

const USAGE = `Usage: express-perimeter verify-audit <file.jsonl | -> [options]
       express-perimeter verify-audit --postgres <url> [--table-prefix <p>]   (see verify-audit --postgres --help)
       express-perimeter migrate --postgres <url> [--table-prefix <p>]   (see migrate --help)

Checks the hash chain of an audit log written with auditLog({ chain: true }).

Options:
  --genesis <hex>   prev_hash of the first record (default: 64 zeros)
  --anchored        trust the first record's prev_hash (a trimmed stream or a rotated file)
  --head <hex>      hash the last record must have (detects records removed from the end)
  --omit <fields>   comma-separated fields a transport added, e.g. level,message for logger lines
  --json            print the result as JSON

Exit status: 0 when the chain is intact, 1 when it is broken, 2 on a usage or read error.
`;

/** Runs `express-perimeter <args>`; resolves to the exit status. */
export async function main(args: string[], io: CliIo = { stdout: process.stdout, stderr: process.stderr }): Promise<number> {
  const [command, ...rest] = args;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    io.stdout.write(USAGE);
    return command === undefined ? 2 : 0;
  }
  if (command === 'migrate') {
    const { migrateMain } = await import('../postgres/migrate-cli');
    return migrateMain(rest, io);
  }
  if (command === 'verify-audit' && rest.includes('--postgres')) {
    const { verifyAuditTableMain } = await import('../postgres/verify-audit-cli');
    return verifyAuditTableMain(rest, io);
  }
  if (command !== 'verify-audit') {
    io.stderr.write(`express-perimeter: unknown command '${command}'\n\n${USAGE}`);
    return 2;
  }
  let parsed: { file: string; options: VerifyAuditChainOptions; json: boolean };
  try {
    parsed = parseArgs(rest);
  } catch (err) {
    io.stderr.write(`express-perimeter verify-audit: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  const { file, options, json } = parsed;

  let verifier: ChainVerifier;
  try {
    verifier = new ChainVerifier(options);
  } catch (err) {
    io.stderr.write(`express-perimeter verify-audit: ${(err as Error).message}\n`);
    return 2;
  }
  // Line numbers of the records, so a break is reported where an editor shows it.
  let line = 0;
  let brokenLine: number | undefined;
  try {
    const input = file === '-' ? (io.stdin ?? process.stdin) : createReadStream(file);
    const lines = createInterface({ input, crlfDelay: Infinity });
    for await (const text of lines) {
      line++;
      if (!verifier.push(text)) {
        brokenLine = line;
        lines.close();
        break;
      }
    }
  } catch (err) {
    io.stderr.write(`express-perimeter verify-audit: cannot read ${file}: ${(err as Error).message}\n`);
    return 2;
  }
  const result = verifier.result();
  if (json) {
    io.stdout.write(`${JSON.stringify({ file, ...result, ...(brokenLine !== undefined ? { line: brokenLine } : {}) })}\n`);
  } else if (result.valid) {
    io.stdout.write(`OK: ${file}: ${result.count} record${result.count === 1 ? '' : 's'}, chain intact (head ${result.head})\n`);
  } else {
    const where = brokenLine !== undefined ? ` (line ${brokenLine})` : '';
    io.stdout.write(`BROKEN: ${file}: record ${result.brokenAt}${where}: ${result.reason}; ${result.count} record${result.count === 1 ? '' : 's'} before it verify\n`);
  }
  return result.valid ? 0 : 1;
}

function parseArgs(args: string[]): { file: string; options: VerifyAuditChainOptions; json: boolean } {
  let file: string | undefined;
  const options: VerifyAuditChainOptions = {};
  let json = false;
  eachArg(args, (arg, value) => {
    if (arg === '--genesis') options.genesis = value();
    else if (arg === '--anchored') options.genesis = false;
    else if (arg === '--head') options.head = value();
    else if (arg === '--omit') options.omit = value().split(',').map((f) => f.trim()).filter((f) => f !== '');
    else if (arg === '--json') json = true;
    else if (arg.startsWith('-') && arg !== '-') throw new Error(`unknown option ${arg}`);
    else if (file === undefined) file = arg;
    else throw new Error(`one file at a time (got ${file} and ${arg})`);
  });
  if (file === undefined) throw new Error('missing the file to verify');
  return { file, options, json };
}

/**
 * Walks a command line: calls `on` with each argument and a `value()` that takes the next one as
 * that option's value (throwing "<option> needs a value" when there is none). Each command keeps
 * its own switch over the names, in order, so a later option can override an earlier one
 * (`--genesis` then `--anchored`). Shared by every command of the bin.
 */
export function eachArg(args: readonly string[], on: (arg: string, value: () => string) => void): void {
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    on(arg, () => {
      const v = args[++i];
      if (v === undefined) throw new Error(`${arg} needs a value`);
      return v;
    });
  }
}
