import { UnavailableError } from '../errors';
import { newInterpreterId, newRegistrationPrefix } from '../ids';
import type { Interpreter } from '../Interpreter';
import { IsolateHost, type IsolateDisposeReason } from '../IsolateHost';
import type { SandboxMaker } from '../SandboxMaker';
import type { WarmPool } from '../WarmPool';
import { IsolateTally, type FixedIds, type HostDeathListener, type Placed, type Placement } from './Placement';

/**
 * Isolate mode (RedisGears' sub-interpreter): every interpreter gets a V8 isolate of its own,
 * with the heap limit its request asked for, taken warm from the pool when the limit is the
 * default one. The isolate lives exactly as long as its interpreter, and is disposed the moment
 * the interpreter goes (or when it dies, taking only that interpreter with it).
 */
export class DedicatedPlacement implements Placement {
  readonly mode = 'isolate' as const;
  readonly tally = new IsolateTally('dedicated');
  private readonly live = new Set<IsolateHost>();

  constructor(
    private readonly pool: WarmPool,
    private readonly maker: SandboxMaker,
    private readonly onDeath: HostDeathListener,
    private readonly onCatastrophicError?: (message: string) => void,
  ) {}

  chargeMb(memoryMb: number): number {
    return memoryMb;
  }

  async place(memoryMb: number, fixed?: FixedIds): Promise<Placed> {
    // a warm sandbox has its ids built in: a rebuilt interpreter needs its own
    const warm = fixed ? undefined : this.pool.takeIsolate(memoryMb, this.died);
    const host = warm?.host ?? IsolateHost.create('dedicated', memoryMb, this.died, this.onCatastrophicError);
    this.tally.created += 1;
    this.live.add(host);
    const id = fixed?.id ?? warm?.id ?? newInterpreterId();
    const registrationPrefix = fixed?.prefix ?? warm?.registrationPrefix ?? newRegistrationPrefix();
    host.admit(id);
    try {
      const sandbox = warm?.sandbox ?? (await this.maker.make(host, id, registrationPrefix));
      return { host, sandbox, id, registrationPrefix, dedicatedMemoryMb: memoryMb, warm: warm !== undefined };
    } catch (err) {
      host.vacate(id);
      host.dispose('failed');
      throw new UnavailableError(`could not create an interpreter: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
  }

  abandon(placed: Placed): void {
    placed.sandbox.release();
    placed.host.vacate(placed.id);
    placed.host.dispose('failed');
  }

  vacate(interp: Interpreter): void {
    interp.host.vacate(interp.id);
    interp.host.dispose(interp.disposeReason);
  }

  hosts(): readonly IsolateHost[] {
    return [...this.live];
  }

  /** Live dedicated isolates (one per isolate-mode interpreter). */
  get size(): number {
    return this.live.size;
  }

  destroy(): void {
    for (const host of [...this.live]) host.dispose('shutdown');
  }

  private readonly died = (host: IsolateHost, reason: IsolateDisposeReason): void => {
    this.tally.noteDisposed(reason);
    this.live.delete(host);
    this.onDeath(host, reason);
  };
}
