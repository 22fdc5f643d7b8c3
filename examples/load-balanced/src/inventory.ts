/** Stands in for the service's database: something readiness must check and shutdown must close. */
export class Inventory {
  private readonly items = [
    { sku: 'A-1', stock: 12 },
    { sku: 'B-2', stock: 0 },
  ];
  private open = true;

  /** Resolves when the "database" answers; readiness calls it with the probe's AbortSignal. */
  async ping(signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    if (!this.open) throw new Error('inventory connection closed');
  }

  async list(): Promise<Array<{ sku: string; stock: number }>> {
    return this.items;
  }

  async close(): Promise<void> {
    this.open = false;
  }
}
