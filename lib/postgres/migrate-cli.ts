import { eachArg, type CliIo } from '../audit/cli';
import { checkCliTablePrefix, cliClient, cliUrl } from './cli-client';
import { migrate, schemaStatements, sqlOn } from './schema';

const USAGE = `Usage: express-perimeter migrate --postgres <url> [options]

Creates the tables of the postgres option (credits ledger, audit) when missing, for deploys whose
application role may not run DDL. Safe to run again, and from several places at once.

Options:
  --postgres <url>       database URL (default: $DATABASE_URL)
  --table-prefix <p>     prefix of the table names (default: perimeter_)
  --statement-timeout <ms>  longest the migration may run (default: 60000)
  --print                print the SQL instead of running it
  --json                 print the result as JSON

Exit status: 0 when the schema is in place, 1 when the database refused or could not be reached,
2 on a usage error.
`;

interface MigrateArgs {
  url?: string;
  prefix: string;
  timeoutMs: number;
  print: boolean;
  json: boolean;
}

/** Runs `express-perimeter migrate <args>`; resolves to the exit status. */
export async function migrateMain(args: string[], io: CliIo, env: NodeJS.ProcessEnv = process.env): Promise<number> {
  if (args.includes('--help') || args.includes('-h')) {
    io.stdout.write(USAGE);
    return 0;
  }
  let parsed: MigrateArgs;
  try {
    parsed = parseArgs(args, env);
  } catch (err) {
    io.stderr.write(`express-perimeter migrate: ${(err as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (parsed.print) {
    io.stdout.write(`${schemaStatements(parsed.prefix).map((s) => `${s};\n`).join('\n')}`);
    return 0;
  }
  const client = cliClient(parsed.url as string, parsed.timeoutMs, 'express-perimeter migrate');
  try {
    await client.connect();
    await client.query('BEGIN');
    const result = await migrate(sqlOn(client), parsed.prefix);
    await client.query('COMMIT');
    if (parsed.json) {
      io.stdout.write(`${JSON.stringify({ ok: true, table_prefix: parsed.prefix, from: result.from, to: result.to })}\n`);
    } else if (result.from === result.to) {
      io.stdout.write(`OK: schema '${parsed.prefix}' already at version ${result.to}\n`);
    } else {
      io.stdout.write(`OK: schema '${parsed.prefix}' migrated from version ${result.from} to ${result.to}\n`);
    }
    return 0;
  } catch (err) {
    // The driver's message, never the URL (it carries the password).
    const e = err as Error & { code?: string };
    if (parsed.json) {
      io.stdout.write(`${JSON.stringify({ ok: false, table_prefix: parsed.prefix, error: e.message, code: e.code })}\n`);
    } else {
      io.stderr.write(`express-perimeter migrate: FAILED: ${e.message}${e.code ? ` (${e.code})` : ''}; nothing was changed\n`);
    }
    return 1;
  } finally {
    await client.end().catch(() => undefined);
  }
}

function parseArgs(args: string[], env: NodeJS.ProcessEnv): MigrateArgs {
  const out: MigrateArgs = { url: undefined, prefix: 'perimeter_', timeoutMs: 60_000, print: false, json: false };
  eachArg(args, (arg, value) => {
    if (arg === '--postgres') out.url = value();
    else if (arg === '--table-prefix') out.prefix = value();
    else if (arg === '--statement-timeout') out.timeoutMs = Number(value());
    else if (arg === '--print') out.print = true;
    else if (arg === '--json') out.json = true;
    else throw new Error(`unknown option ${arg}`);
  });
  out.url ??= env.DATABASE_URL || undefined;
  if (!out.print) {
    if (out.url === undefined) throw new Error('missing --postgres <url> (or DATABASE_URL)');
    cliUrl(out.url);
  }
  if (!Number.isSafeInteger(out.timeoutMs) || out.timeoutMs <= 0) throw new Error('--statement-timeout: expected a number of milliseconds > 0');
  checkCliTablePrefix(out.prefix);
  return out;
}

