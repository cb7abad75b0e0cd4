import { IllegalStateError } from './errors';
import type { OwnerKind } from './types';

/** What a Reference needs from the thing it holds. */
export interface ReferenceCounted {
  readonly id: string;
  /** Called exactly once per reference when it is released. */
  dropReference(kind: OwnerKind): void;
}

/**
 * One owner's claim on an interpreter: an execution while it runs, a registration until it is
 * released. Releasing twice is a bug and throws, so counts can never go negative.
 */
export class Reference {
  private released = false;

  constructor(
    readonly kind: OwnerKind,
    private readonly target: ReferenceCounted,
  ) {}

  get isReleased(): boolean {
    return this.released;
  }

  release(): void {
    if (this.released) {
      throw new IllegalStateError(`${this.kind} reference on ${this.target.id} released twice`);
    }
    this.released = true;
    this.target.dropReference(this.kind);
  }
}
