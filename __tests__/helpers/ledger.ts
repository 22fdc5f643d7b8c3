import { withClient } from './postgres';

/** One account whose ledger does not add up to its balance. */
export interface LedgerMismatch {
  account: string;
  balance: number | null;
  ledger_sum: number | null;
  last_balance_after: number | null;
}

/**
 * Every account whose balance differs from the sum of its ledger's deltas, or from the
 * `balance_after` of its newest ledger row (an account with ledger rows and no balance, or the
 * reverse, counts too). Empty when the books balance: what a month-end reconciliation checks.
 */
export async function ledgerMismatches(url: string, prefix = 'perimeter_'): Promise<LedgerMismatch[]> {
  return withClient(url, async (client) => {
    const { rows } = await client.query<{ account: string; balance: string | null; ledger_sum: string | null; last_balance_after: string | null }>(`
      WITH sums AS (
        SELECT account, sum(delta) AS ledger_sum,
               (array_agg(balance_after ORDER BY id DESC))[1] AS last_balance_after
        FROM ${prefix}credit_ledger GROUP BY account
      )
      SELECT coalesce(b.account, s.account) AS account, b.balance, s.ledger_sum, s.last_balance_after
      FROM ${prefix}credit_balances b FULL JOIN sums s ON s.account = b.account
      WHERE b.balance IS DISTINCT FROM s.ledger_sum OR b.balance IS DISTINCT FROM s.last_balance_after
      ORDER BY 1`);
    const n = (v: string | null) => (v === null ? null : Number(v));
    return rows.map((r) => ({ account: r.account, balance: n(r.balance), ledger_sum: n(r.ledger_sum), last_balance_after: n(r.last_balance_after) }));
  });
}

/** Asserts the books balance for every account (see {@link ledgerMismatches}). */
export async function expectLedgerBalanced(url: string, prefix = 'perimeter_'): Promise<void> {
  expect(await ledgerMismatches(url, prefix)).toEqual([]);
}
