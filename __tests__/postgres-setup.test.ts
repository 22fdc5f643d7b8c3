import { Client } from 'pg';
import { describePostgres, freshDatabase } from './helpers/postgres';

describePostgres('the tests\' private PostgreSQL', () => {
  it('gives each suite a database of its own that accepts DDL and queries', async () => {
    const url = await freshDatabase();
    const client = new Client({ connectionString: url });
    await client.connect();
    try {
      await client.query('create table t (n int)');
      await client.query('insert into t values (1), (2)');
      const { rows } = await client.query<{ sum: string }>('select sum(n) from t');
      expect(rows[0]?.sum).toBe('3');
      const { rows: db } = await client.query<{ current_database: string }>('select current_database()');
      expect(db[0]?.current_database).toMatch(/^perimeter_test_/);
    } finally {
      await client.end();
    }
  });
});
