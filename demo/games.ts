import { ConflictError, NotFoundError, ValidationError } from '../index';

/** A game of the demo's in-memory catalogue. */
export interface Game {
  id: number;
  name: string;
  genre: string;
}

/** The demo's data: a Map standing in for a database. */
export class GameStore {
  private readonly games = new Map<number, Game>();
  private nextId = 1;

  constructor(seed: Array<Omit<Game, 'id'>> = []) {
    for (const game of seed) this.create(game);
  }

  list(): Game[] {
    return [...this.games.values()];
  }

  get(id: number): Game {
    const game = this.games.get(id);
    if (!game) throw new NotFoundError(`Game ${id} does not exist.`);
    return game;
  }

  create(input: unknown): Game {
    const { name, genre } = validate(input);
    if (this.list().some((g) => g.name.toLowerCase() === name.toLowerCase())) throw new ConflictError(`A game named '${name}' exists already.`);
    const game = { id: this.nextId++, name, genre };
    this.games.set(game.id, game);
    return game;
  }

  update(id: number, input: unknown): Game {
    const game = { ...this.get(id), ...validate(input), id };
    this.games.set(id, game);
    return game;
  }

  delete(id: number): void {
    this.get(id);
    this.games.delete(id);
  }
}

function validate(input: unknown): { name: string; genre: string } {
  const body = (input ?? {}) as Record<string, unknown>;
  const problems: Record<string, string> = {};
  if (typeof body.name !== 'string' || body.name.trim() === '') problems.name = 'required, a non-empty string';
  if (typeof body.genre !== 'string' || body.genre.trim() === '') problems.genre = 'required, a non-empty string';
  if (Object.keys(problems).length > 0) throw new ValidationError('The game is not valid.', problems);
  return { name: (body.name as string).trim(), genre: (body.genre as string).trim() };
}
