import { AlreadyExistsError } from './errors';
import type { Interpreter } from './Interpreter';
import type { RegistrationIndex } from './RegistrationIndex';
import type { CoreLogger } from './types';

/** Names are per tenant: keys join tenant and name (a newline occurs in neither). */
const scoped = (tenant: string, name: string): string => `${tenant}\n${name}`;

/**
 * Interpreter names (RedisGears' library ids): which interpreter holds each name, the names
 * reserved by requests still creating their interpreter, and the two ways a name moves: an
 * upgrade's swap (the new interpreter takes the name and the old one's registrations go, in one
 * synchronous step) and a replica's claim (the name moves to what the store says holds it).
 */
export class NameTable {
  private readonly holders = new Map<string, Interpreter>();
  private readonly reserved = new Set<string>();

  constructor(
    private readonly index: RegistrationIndex,
    private readonly logger?: CoreLogger,
  ) {}

  holder(tenant: string, name: string): Interpreter | undefined {
    return this.holders.get(scoped(tenant, name));
  }

  /** ALREADY_EXISTS when `name` is held or reserved (a background run checks this before it is accepted). */
  checkFree(tenant: string, name: string): void {
    const key = scoped(tenant, name);
    if (this.holders.has(key) || this.reserved.has(key)) {
      throw new AlreadyExistsError(`an interpreter named "${name}" already exists; set replace to upgrade it`);
    }
  }

  /** Holds `name` for a new interpreter being created; ALREADY_EXISTS when it is held or reserved. */
  reserve(tenant: string, name: string): void {
    this.checkFree(tenant, name);
    const key = scoped(tenant, name);
    this.reserved.add(key);
  }

  /** The reservation ends: with the interpreter that now holds the name, or with nothing (creation failed). */
  settle(tenant: string, name: string, holder?: Interpreter): void {
    const key = scoped(tenant, name);
    this.reserved.delete(key);
    if (holder) this.holders.set(key, holder);
  }

  /** `interp` gives up its name, if it holds one (it is gone, or no longer stored). */
  drop(interp: Interpreter): void {
    const key = scoped(interp.tenant, interp.name);
    if (interp.name && this.holders.get(key) === interp) this.holders.delete(key);
  }

  /** Like drop, and `interp` is unnamed from now on. */
  unname(interp: Interpreter): void {
    const key = scoped(interp.tenant, interp.name);
    if (interp.name && this.holders.get(key) === interp) {
      this.holders.delete(key);
      interp.name = '';
    }
  }

  /** The upgrade commit point: the name moves to `next`, the old holder's registrations go. */
  swap(name: string, next: Interpreter): void {
    const key = scoped(next.tenant, name);
    const old = this.holders.get(key);
    if (old && old !== next) {
      this.holders.delete(key);
      old.name = '';
      old.disposeReason = 'replaced';
      this.index.releaseAll(old);
      this.logger?.warn({ name, from: old.id, to: next.id }, 'interpreter upgraded: the old one is released');
    }
    if (next.registrations.size > 0 && next.accepting) {
      next.name = name;
      this.holders.set(key, next);
    }
  }

  /**
   * The name goes to `interp` (a replica following the store); a holder here that the store no
   * longer has (it was replaced elsewhere) is handed to `dropOld` first.
   */
  claim(interp: Interpreter, name: string, dropOld: (old: Interpreter) => void): void {
    const key = scoped(interp.tenant, name);
    const old = this.holders.get(key);
    if (old === interp) return;
    if (old) {
      old.disposeReason = 'replaced';
      dropOld(old);
    }
    interp.name = name;
    this.holders.set(key, interp);
  }

  clear(): void {
    this.holders.clear();
  }
}
