import type { Response } from 'express';
import { responseSlots } from './request-slots';

/** Called once the response finished or its connection closed first (then `res.writableFinished` is false). */
export type ResponseDoneListener = (res: Response) => void;

interface DoneState {
  listeners: ResponseDoneListener[];
  dispatched: boolean;
}

/**
 * Runs `listener` once the response is over: sent whole, or cut because the connection closed
 * first. The logger, metrics, audit, cache, credits and breaker each wait for it, through one
 * 'close' listener per response: Node emits 'close' on every ServerResponse in both cases (after
 * 'finish' when it was sent). on-finished did this before, but it adds a property to each
 * response (a new hidden class each time, see lib/request-slots) and an AsyncResource and four
 * listeners per call. Listeners run in the order they were added; one that throws does not keep
 * the others from running (the first error is rethrown after them, as a listener's would be).
 * Added after the end, a listener runs on the next turn.
 */
export function onResponseDone(res: Response, listener: ResponseDoneListener): void {
  const slots = responseSlots(res);
  const state = slots.done as DoneState | undefined;
  if (state !== undefined && !state.dispatched) {
    state.listeners.push(listener);
    return;
  }
  if (state !== undefined || res.closed) {
    setImmediate(listener, res);
    return;
  }
  const created: DoneState = { listeners: [listener], dispatched: false };
  slots.done = created;
  res.once('close', () => dispatch(created, res));
}

function dispatch(state: DoneState, res: Response): void {
  state.dispatched = true;
  const { listeners } = state;
  let failure: { error: unknown } | undefined;
  for (let i = 0; i < listeners.length; i++) {
    try {
      listeners[i](res);
    } catch (error) {
      failure ??= { error };
    }
  }
  if (failure !== undefined) throw failure.error;
}
