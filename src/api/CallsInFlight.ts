import { IllegalStateError } from '../core/errors';

/**
 * The calls a service is answering now, each with the way to end it early. A process that must
 * exit before its calls finish (a second signal) ends them all with a status of its own: a call
 * left to the connection's close ends however the client's HTTP/2 stack reads that close (grpc-js
 * reports UNAVAILABLE "Connection dropped" after a FIN, but INTERNAL "Received RST_STREAM with
 * code 0" when the socket is reset after a GOAWAY), not as a status a client can act on.
 */
export class CallsInFlight {
  private readonly ends = new Set<(reason: Error) => void>();

  /** Calls tracked now. */
  get size(): number {
    return this.ends.size;
  }

  /**
   * Tracks a call until the returned function is called, which the call does once it has been
   * answered (by `end` too). `end` answers the call with `reason`.
   */
  track(end: (reason: Error) => void): () => void {
    // a wrapper of its own, so one function tracked twice is still two calls
    const entry = (reason: Error): void => end(reason);
    this.ends.add(entry);
    return () => {
      if (!this.ends.delete(entry)) throw new IllegalStateError('a call in flight was untracked twice');
    };
  }

  /** Ends every call tracked now with `reason`; returns how many there were. */
  endAll(reason: Error): number {
    // each end untracks its call: iterate over a copy
    const ends = [...this.ends];
    for (const end of ends) end(reason);
    return ends.length;
  }
}
